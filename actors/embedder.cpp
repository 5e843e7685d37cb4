#include "actors/embedder.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <deque>
#include <map>

namespace kowalski {

namespace {

// One embed_texts request; its texts may travel in several batches.
struct job {
  std::vector<std::string> texts;
  std::vector<std::vector<float>> vectors;
  std::size_t handed_out = 0;  // texts given to batches so far
  std::size_t answered = 0;
  bool failed = false;
  caf::typed_response_promise<embeddings> rp;
};

struct piece {
  std::shared_ptr<job> owner;
  std::size_t offset = 0;
  std::size_t count = 0;
};

struct embedder_state {
  memory::embedder_spec spec;
  std::string embedder_name;
  std::shared_ptr<net::http_client> client;
  std::deque<std::shared_ptr<job>> waiting;  // jobs with texts not handed out
  std::map<uint64_t, std::vector<piece>> in_flight;
  uint64_t next_batch = 1;
  std::shared_ptr<spdlog::logger> log = logging::get("memory");
  static inline const char* name = "kowalski.embedder";
};

using embedder_actor = caf::stateful_actor<embedder_state>;

caf::error classify(const net::client_result& res, const memory::embed_answer& answer) {
  if (!res.error.empty()) {
    if (res.timed_out) {
      return make_error(errc::timeout, "the embedder did not answer in time", "embedder");
    }
    return make_error(errc::backend_unavailable, "the embedder cannot be reached: " + res.error,
                      "embedder");
  }
  using kind = memory::embed_answer::failure_kind;
  if (answer.kind == kind::status) {
    return make_backend_error(errc::backend_error, answer.failure, res.status, 0, "embedder");
  }
  return make_backend_error(errc::backend_protocol, answer.failure, res.status, 0, "embedder");
}

void pump(embedder_actor* self);

void finish_batch(embedder_actor* self, uint64_t id, embeddings& got, caf::error& err) {
  auto& st = self->state;
  auto i = st.in_flight.find(id);
  if (i == st.in_flight.end()) {
    return;
  }
  auto pieces = std::move(i->second);
  st.in_flight.erase(i);
  std::size_t at = 0;
  for (auto& p : pieces) {
    auto& j = *p.owner;
    if (j.failed) {
      at += p.count;
      continue;
    }
    if (err) {
      j.failed = true;
      j.rp.deliver(err);
      continue;
    }
    for (std::size_t k = 0; k < p.count; ++k) {
      j.vectors[p.offset + k] = std::move(got.vectors[at + k]);
    }
    at += p.count;
    j.answered += p.count;
    if (j.answered == j.texts.size()) {
      j.rp.deliver(embeddings{st.embedder_name, std::move(j.vectors)});
    }
  }
  pump(self);
}

// Sends batches while calls are free: each takes texts from the oldest
// waiting requests, up to spec.batch.
void pump(embedder_actor* self) {
  auto& st = self->state;
  while (st.in_flight.size() < st.spec.concurrency && !st.waiting.empty()) {
    std::vector<piece> pieces;
    std::vector<std::string> texts;
    while (texts.size() < st.spec.batch && !st.waiting.empty()) {
      auto j = st.waiting.front();
      if (j->failed) {
        st.waiting.pop_front();
        continue;
      }
      auto n = std::min(st.spec.batch - texts.size(), j->texts.size() - j->handed_out);
      pieces.push_back(piece{j, j->handed_out, n});
      for (std::size_t k = 0; k < n; ++k) {
        texts.push_back(j->texts[j->handed_out + k]);
      }
      j->handed_out += n;
      if (j->handed_out == j->texts.size()) {
        st.waiting.pop_front();
      }
    }
    if (texts.empty()) {
      return;
    }
    auto id = st.next_batch++;
    st.in_flight.emplace(id, std::move(pieces));
    auto count = texts.size();
    auto req = memory::embed_request(st.spec, texts);
    st.log->debug("embed batch={} texts={} bytes={}", id, count, req.body.size());
    auto me = caf::actor_cast<caf::actor>(self);
    auto spec = st.spec;
    auto started = std::chrono::steady_clock::now();
    auto log = st.log;
    net::client_callbacks cb;
    cb.on_done = [me, id, count, spec, started, log](net::client_result res) {
      memory::embed_answer answer;
      if (res.error.empty()) {
        answer = memory::read_embed_answer(spec, res.status, res.body, count);
      }
      caf::error err;
      if (!res.error.empty() || answer.kind != memory::embed_answer::failure_kind::none) {
        err = classify(res, answer);
        log->warn("embed batch={} texts={} failed: {}", id, count,
                  res.error.empty() ? answer.failure : res.error);
      } else {
        log->debug("embed batch={} texts={} ms={}", id, count,
                   std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - started)
                     .count());
      }
      caf::anon_send(me, done_atom::value, id, embeddings{{}, std::move(answer.vectors)},
                     std::move(err));
    };
    st.client->send(std::move(req), std::move(cb));
  }
}

caf::behavior embedder(embedder_actor* self, memory::embedder_spec spec,
                       std::shared_ptr<net::http_client> client) {
  auto& st = self->state;
  st.spec = std::move(spec);
  st.spec.batch = std::max<std::size_t>(st.spec.batch, 1);
  st.spec.concurrency = std::max(st.spec.concurrency, 1u);
  st.embedder_name = memory::embedder_name(st.spec);
  st.client = std::move(client);
  st.log->info("embedder ready name={} batch={} concurrency={}", st.embedder_name, st.spec.batch,
               st.spec.concurrency);
  return {
    [=](embed_texts& req) -> caf::result<embeddings> {
      auto& st = self->state;
      if (req.texts.empty()) {
        return embeddings{st.embedder_name, {}};
      }
      auto j = std::make_shared<job>();
      j->vectors.resize(req.texts.size());
      j->texts = std::move(req.texts);
      j->rp = self->make_response_promise<embeddings>();
      auto rp = j->rp;
      st.waiting.push_back(std::move(j));
      pump(self);
      return rp;
    },
    [=](done_atom, uint64_t id, embeddings& got, caf::error& err) {
      finish_batch(self, id, got, err);
    },
  };
}

}  // namespace

caf::actor spawn_embedder(caf::actor_system& sys, memory::embedder_spec spec,
                          std::shared_ptr<net::http_client> client) {
  return sys.spawn(embedder, std::move(spec), std::move(client));
}

}  // namespace kowalski
