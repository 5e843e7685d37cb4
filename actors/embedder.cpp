#include "actors/embedder.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <cstdlib>
#include <deque>
#include <map>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr unsigned max_attempts = 3;

// One embed_texts request; its texts may travel in several batches.
struct job {
  std::vector<std::string> texts;
  std::vector<std::vector<float>> vectors;
  std::size_t handed_out = 0;  // texts given to batches so far
  std::size_t answered = 0;
  bool failed = false;
  clock_type::time_point deadline = clock_type::time_point::max();
  caf::typed_response_promise<embeddings> rp;

  void fail(const caf::error& e) {
    if (!failed) {
      failed = true;
      rp.deliver(e);
    }
  }
};

struct piece {
  std::shared_ptr<job> owner;
  std::size_t offset = 0;
  std::size_t count = 0;
};

struct batch {
  std::vector<piece> pieces;
  unsigned attempt = 1;
  bool alone = false;  // one request's texts only, after a shared batch was refused
};

struct embedder_state {
  memory::embedder_spec spec;
  std::string embedder_name;
  std::shared_ptr<net::http_client> client;
  std::deque<std::shared_ptr<job>> waiting;  // jobs with texts not handed out
  std::deque<batch> resend;                  // batches to send before new ones
  std::map<uint64_t, batch> in_flight;       // sent, or waiting to be sent again
  uint64_t next_batch = 1;
  std::shared_ptr<spdlog::logger> log = logging::get("memory");
  static inline const char* name = "kowalski.embedder";
};

using embedder_actor = caf::stateful_actor<embedder_state>;

// How one call ended, as the client thread saw it.
struct call_end {
  caf::error err;
  int32_t status = 0;
  bool retryable = false;  // no answer, 429 or 5xx
  uint64_t retry_after_ms = 0;
};

call_end classify(const net::client_result& res, const memory::embed_answer& answer) {
  call_end out;
  out.status = res.status;
  if (!res.error.empty()) {
    out.retryable = true;
    out.err = res.timed_out
                ? make_error(errc::timeout, "the embedder did not answer in time", "embedder")
                : make_error(errc::backend_unavailable,
                             "the embedder cannot be reached: " + res.error, "embedder");
    return out;
  }
  using kind = memory::embed_answer::failure_kind;
  if (answer.kind == kind::status) {
    out.retryable = res.status == 429 || res.status >= 500;
    if (auto* after = net::find_header(res.headers, "retry-after")) {
      out.retry_after_ms = std::strtoull(after->c_str(), nullptr, 10) * 1000;
    }
    out.err = make_backend_error(errc::backend_error, answer.failure, res.status,
                                 out.retry_after_ms, "embedder");
  } else {
    out.err = make_backend_error(errc::backend_protocol, answer.failure, res.status, 0,
                                 "embedder");
  }
  return out;
}

bool alive(const batch& b) {
  for (auto& p : b.pieces) {
    if (!p.owner->failed) {
      return true;
    }
  }
  return false;
}

void pump(embedder_actor* self);

void send_batch(embedder_actor* self, uint64_t id) {
  auto& st = self->state;
  auto& b = st.in_flight.at(id);
  std::vector<std::string> texts;
  for (auto& p : b.pieces) {
    for (std::size_t k = 0; k < p.count; ++k) {
      texts.push_back(p.owner->texts[p.offset + k]);
    }
  }
  auto count = texts.size();
  auto req = memory::embed_request(st.spec, texts);
  st.log->debug("embed batch={} attempt={} texts={} bytes={}", id, b.attempt, count,
                req.body.size());
  auto me = caf::actor_cast<caf::actor>(self);
  auto spec = st.spec;
  auto started = clock_type::now();
  auto log = st.log;
  net::client_callbacks cb;
  cb.on_done = [me, id, count, spec, started, log](net::client_result res) {
    memory::embed_answer answer;
    if (res.error.empty()) {
      answer = memory::read_embed_answer(spec, res.status, res.body, count);
    }
    call_end end;
    if (!res.error.empty() || answer.kind != memory::embed_answer::failure_kind::none) {
      end = classify(res, answer);
      log->warn("embed batch={} texts={} failed: {}", id, count,
                res.error.empty() ? answer.failure : res.error);
    } else {
      log->debug("embed batch={} texts={} ms={}", id, count,
                 std::chrono::duration_cast<milliseconds>(clock_type::now() - started).count());
    }
    caf::anon_send(me, done_atom::value, id, embeddings{{}, std::move(answer.vectors)},
                   std::move(end.err), end.status, end.retryable, end.retry_after_ms);
  };
  st.client->send(std::move(req), std::move(cb));
}

void finish_batch(embedder_actor* self, uint64_t id, embeddings& got, caf::error& err,
                  int32_t status, bool retryable, uint64_t retry_after_ms) {
  auto& st = self->state;
  auto i = st.in_flight.find(id);
  if (i == st.in_flight.end()) {
    return;
  }
  auto& b = i->second;
  if (err && retryable && b.attempt < max_attempts && alive(b)) {
    // Overloaded or down for a moment: the same batch again, later. It
    // keeps its slot, so the backend is not pressed harder meanwhile.
    auto wait = retry_after_ms > 0 ? milliseconds(std::min<uint64_t>(retry_after_ms, 30'000))
                                   : milliseconds(250 << (b.attempt - 1));
    ++b.attempt;
    self->delayed_send(self, wait, tick_atom::value, id);
    return;
  }
  auto done = std::move(b);
  st.in_flight.erase(i);
  if (err && status >= 400 && status < 500 && status != 429 && done.pieces.size() > 1) {
    // Refused for what it holds (a text too long, say): each request's
    // texts go again on their own, so one bad text fails only its request.
    for (auto& p : done.pieces) {
      st.resend.push_back(batch{{p}, 1, true});
    }
    return pump(self);
  }
  std::size_t at = 0;
  for (auto& p : done.pieces) {
    auto& j = *p.owner;
    if (err) {
      j.fail(err);
      continue;
    }
    if (!j.failed) {
      for (std::size_t k = 0; k < p.count; ++k) {
        j.vectors[p.offset + k] = std::move(got.vectors[at + k]);
      }
      j.answered += p.count;
      if (j.answered == j.texts.size()) {
        j.rp.deliver(embeddings{st.embedder_name, std::move(j.vectors)});
      }
    }
    at += p.count;
  }
  pump(self);
}

// Sends batches while calls are free: batches to send again first, then
// new ones, each taking texts from the oldest waiting requests up to
// spec.batch. Requests whose requester has stopped waiting are dropped.
void pump(embedder_actor* self) {
  auto& st = self->state;
  auto now = clock_type::now();
  while (st.in_flight.size() < st.spec.concurrency) {
    batch b;
    if (!st.resend.empty()) {
      b = std::move(st.resend.front());
      st.resend.pop_front();
      if (!alive(b)) {
        continue;
      }
    } else {
      std::size_t texts = 0;
      while (texts < st.spec.batch && !st.waiting.empty()) {
        auto j = st.waiting.front();
        if (!j->failed && j->handed_out == 0 && j->deadline <= now) {
          j->fail(make_error(errc::timeout, "the embedder was busy: no call was free in time",
                             "embedder"));
        }
        if (j->failed) {
          st.waiting.pop_front();
          continue;
        }
        auto n = std::min(st.spec.batch - texts, j->texts.size() - j->handed_out);
        b.pieces.push_back(piece{j, j->handed_out, n});
        texts += n;
        j->handed_out += n;
        if (j->handed_out == j->texts.size()) {
          st.waiting.pop_front();
        }
      }
      if (b.pieces.empty()) {
        return;
      }
    }
    auto id = st.next_batch++;
    st.in_flight.emplace(id, std::move(b));
    send_batch(self, id);
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
  st.log->info("embedder ready name={} batch={} concurrency={}", st.embedder_name,
               st.spec.batch, st.spec.concurrency);
  return {
    [=](embed_texts& req) -> caf::result<embeddings> {
      auto& st = self->state;
      if (req.texts.empty()) {
        return embeddings{st.embedder_name, {}};
      }
      auto j = std::make_shared<job>();
      j->vectors.resize(req.texts.size());
      j->texts = std::move(req.texts);
      if (req.timeout_ms > 0) {
        j->deadline = clock_type::now() + milliseconds(req.timeout_ms);
      }
      j->rp = self->make_response_promise<embeddings>();
      auto rp = j->rp;
      st.waiting.push_back(std::move(j));
      pump(self);
      return rp;
    },
    [=](done_atom, uint64_t id, embeddings& got, caf::error& err, int32_t status,
        bool retryable, uint64_t retry_after_ms) {
      finish_batch(self, id, got, err, status, retryable, retry_after_ms);
    },
    [=](tick_atom, uint64_t id) {
      // A batch's time to be sent again, unless nobody waits for it now.
      auto& st = self->state;
      auto i = st.in_flight.find(id);
      if (i == st.in_flight.end()) {
        return;
      }
      if (!alive(i->second)) {
        st.in_flight.erase(i);
        return pump(self);
      }
      send_batch(self, id);
    },
  };
}

}  // namespace

caf::actor spawn_embedder(caf::actor_system& sys, memory::embedder_spec spec,
                          std::shared_ptr<net::http_client> client) {
  return sys.spawn(embedder, std::move(spec), std::move(client));
}

}  // namespace kowalski
