// LLM worker actor: streams one chat completion at a time from its backend.
#include "actors/llm_worker.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/batch/policy.hpp"
#include "runtime/llm/transcript.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/net/http_client.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <cctype>
#include <ctime>
#include <unordered_map>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;

// Everything one HTTP call gathers on the client's I/O thread.
struct call_context {
  int status = 0;
  std::string retry_after;
  std::string error_body;  // non-2xx bodies, capped
  std::unique_ptr<llm::stream_decoder> decoder;
  // Some servers ignore "stream": true and send one JSON reply.
  bool whole = false;
  std::string whole_body;
  llm::stream_result whole_result;

  const llm::stream_result& result() const {
    return whole ? whole_result : decoder->result();
  }
};

constexpr std::size_t max_whole_body = 64 << 20;

constexpr std::size_t max_error_body = 64 * 1024;

struct worker_state {
  std::shared_ptr<const llm_backend> backend;
  uint64_t next_id = 0;
  std::unordered_map<uint64_t, std::pair<caf::response_promise, std::string>> calls;
  std::shared_ptr<spdlog::logger> log = logging::get("llm");
  static inline const char* name = "kowalski.llm_worker";
};

using worker_actor = caf::stateful_actor<worker_state>;

std::string chat_url(const llm_backend& b) {
  return b.kind == llm::provider::ollama ? b.base_url + "/api/chat"
                                         : b.base_url + "/chat/completions";
}

std::string models_url(const llm_backend& b) {
  return b.kind == llm::provider::ollama ? b.base_url + "/api/tags"
                                         : b.base_url + "/models";
}

net::client_request make_request(const llm_backend& b, std::string method,
                                 std::string url, std::string body) {
  net::client_request req;
  req.method = std::move(method);
  req.url = std::move(url);
  req.body = std::move(body);
  if (!req.body.empty()) {
    req.headers.emplace_back("Content-Type", "application/json");
  }
  if (!b.api_key.empty()) {
    req.headers.emplace_back("Authorization", "Bearer " + b.api_key);
  }
  return req;
}

// Turns the outcome of a call into a reply or one of our errors.
caf::error classify(const llm_backend& b, const std::string& model,
                    const net::client_result& res, const call_context& ctx) {
  auto where = std::string{to_string(b.kind)} + " at " + b.base_url;
  if (!res.error.empty()) {
    if (res.timed_out) {
      return make_error(errc::timeout, "the backend " + where + " did not finish in time");
    }
    if (res.connect_failed) {
      return make_error(errc::backend_unavailable,
                        "cannot reach the backend " + where + ": " + res.error);
    }
    return make_error(errc::backend_protocol,
                      "the connection to " + where + " broke mid-reply: " + res.error);
  }
  // A 404 that does not speak of a model is a wrong base URL, not a model.
  auto says_model = [&] {
    auto text = llm::error_message(ctx.error_body);
    for (auto& c : text) {
      c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    }
    return text.find("model") != std::string::npos;
  };
  if (ctx.status == 404 && says_model()) {
    return make_backend_error(errc::unknown_model,
                              "the backend does not serve model \"" + model
                                + "\": " + llm::error_message(ctx.error_body),
                              ctx.status, 0, "model");
  }
  if (ctx.status == 429) {
    auto wait = ctx.retry_after.empty() ? "" : " (retry after " + ctx.retry_after + " s)";
    auto ms = batch::parse_retry_after(ctx.retry_after, std::time(nullptr));
    return make_backend_error(errc::overloaded,
                              "the backend " + where + " is rate limiting" + wait, 429,
                              ms.value_or(0));
  }
  if (ctx.status < 200 || ctx.status >= 300) {
    // 503 may carry Retry-After too.
    auto ms = batch::parse_retry_after(ctx.retry_after, std::time(nullptr));
    return make_backend_error(errc::backend_error,
                              "the backend " + where + " answered HTTP "
                                + std::to_string(ctx.status) + ": "
                                + llm::error_message(ctx.error_body),
                              ctx.status, ms.value_or(0));
  }
  auto& r = ctx.result();
  if (!r.error.empty()) {
    return make_error(r.backend_reported ? errc::backend_error : errc::backend_protocol,
                      "the backend " + where + " sent a bad stream: " + r.error);
  }
  return caf::error{};
}

void start_replay(worker_actor* self, llm_request& req, caf::response_promise rp) {
  auto& b = *self->state.backend;
  auto reply = b.transcript->answer(req);
  if (reply == nullptr) {
    if (!b.transcript->serves(req.model)) {
      rp.deliver(make_error(errc::unknown_model,
                            "the replay transcript has no model \"" + req.model + "\"",
                            "model"));
    } else {
      rp.deliver(make_error(errc::backend_error,
                            "the replay transcript has no reply for this prompt"));
    }
    return;
  }

  // Stream it word by word, as a model would.
  llm_reply out;
  out.content = *reply;
  out.model = req.model;
  out.finish_reason = "stop";
  out.replayed = true;
  if (req.sink) {
    std::size_t start = 0;
    while (start < reply->size()) {
      auto end = reply->find(' ', start + 1);
      end = end == std::string::npos ? reply->size() : end;
      self->send(req.sink, delta_atom::value, reply->substr(start, end - start));
      start = end;
    }
  }
  rp.deliver(std::move(out));
}

void start_call(worker_actor* self, llm_request& req, caf::response_promise rp) {
  auto backend = self->state.backend;
  auto id = ++self->state.next_id;
  self->state.calls.emplace(id, std::make_pair(rp, req.model));
  auto started = clock_type::now();

  auto stream = backend->kind == llm::provider::ollama ? llm::ollama_chat_body(req, true)
                                                       : llm::openai_chat_body(req, true);
  auto http = make_request(*backend, "POST", chat_url(*backend), std::move(stream));
  if (req.timeout_ms > 0) {
    http.timeout = std::chrono::milliseconds{req.timeout_ms};
  }

  // The callbacks run on the client's I/O thread; they only decode bytes
  // and send messages, never touch this actor's state.
  auto ctx = std::make_shared<call_context>();
  auto sink = req.sink;
  auto on_delta = [sink](std::string_view text) {
    if (sink) {
      caf::anon_send(sink, delta_atom::value, std::string{text});
    }
  };
  ctx->decoder = backend->kind == llm::provider::ollama ? llm::make_ollama_decoder(on_delta)
                                                        : llm::make_openai_decoder(on_delta);
  auto me = caf::actor_cast<caf::actor>(self);
  auto model = req.model;
  net::client_callbacks cb;
  cb.on_head = [ctx](int status, const net::header_list& headers) {
    ctx->status = status;
    if (auto v = net::find_header(headers, "retry-after")) {
      ctx->retry_after = *v;
    }
    auto type = net::find_header(headers, "content-type");
    ctx->whole = type != nullptr && type->find("application/json") != std::string::npos;
  };
  cb.on_data = [ctx](std::string_view data) {
    if (ctx->status >= 200 && ctx->status < 300 && ctx->whole) {
      if (ctx->whole_body.size() + data.size() <= max_whole_body) {
        ctx->whole_body.append(data);
      }
    } else if (ctx->status >= 200 && ctx->status < 300) {
      ctx->decoder->feed(data);
    } else if (ctx->error_body.size() < max_error_body) {
      ctx->error_body.append(data.substr(0, max_error_body - ctx->error_body.size()));
    }
  };
  cb.on_done = [ctx, me, id, started, backend, model, sink](net::client_result res) {
    if (res.error.empty() && ctx->status >= 200 && ctx->status < 300) {
      if (ctx->whole) {
        ctx->whole_result = llm::decode_whole(backend->kind, ctx->whole_body);
        if (ctx->whole_result.error.empty() && sink && !ctx->whole_result.content.empty()) {
          caf::anon_send(sink, delta_atom::value, ctx->whole_result.content);
        }
      } else {
        ctx->decoder->finish();
      }
    }
    auto err = classify(*backend, model, res, *ctx);
    llm_reply reply;
    if (!err) {
      auto& r = ctx->result();
      reply.content = r.content;
      reply.model = r.model.empty() ? model : r.model;
      reply.finish_reason = r.finish_reason;
      reply.prompt_tokens = r.prompt_tokens;
      reply.completion_tokens = r.completion_tokens;
    }
    reply.latency_us = std::chrono::duration_cast<std::chrono::microseconds>(
                         clock_type::now() - started)
                         .count();
    caf::anon_send(me, done_atom::value, id, std::move(reply), std::move(err));
  };
  backend->client->send(std::move(http), std::move(cb));
}

void finish_call(worker_actor* self, uint64_t id, llm_reply& reply, caf::error& err) {
  auto i = self->state.calls.find(id);
  if (i == self->state.calls.end()) {
    return;
  }
  auto rp = i->second.first;
  self->state.calls.erase(i);
  if (err) {
    auto view = describe(err);
    self->state.log->warn("llm call failed provider={} code={} latency_ms={}",
                          to_string(self->state.backend->kind), to_string(view.code),
                          reply.latency_us / 1000);
    rp.deliver(std::move(err));
    return;
  }
  self->state.log->debug("llm call done model={} prompt_tokens={} completion_tokens={} "
                         "bytes={} latency_ms={}",
                         reply.model, reply.prompt_tokens, reply.completion_tokens,
                         reply.content.size(), reply.latency_us / 1000);
  rp.deliver(std::move(reply));
}

// Fetches the model list; `then` runs in this actor with the outcome.
void fetch_models(worker_actor* self, std::chrono::milliseconds timeout,
                  caf::response_promise rp, bool as_status) {
  auto& b = *self->state.backend;
  if (b.kind == llm::provider::replay) {
    if (as_status) {
      rp.deliver(backend_status{true, "replay", "transcript loaded"});
    } else {
      rp.deliver(b.transcript->models());
    }
    return;
  }
  auto backend = self->state.backend;
  auto id = ++self->state.next_id;
  self->state.calls.emplace(id, std::make_pair(rp, as_status ? "status" : "models"));
  auto req = make_request(b, "GET", models_url(b), {});
  req.timeout = timeout;
  auto me = caf::actor_cast<caf::actor>(self);
  net::client_callbacks cb;
  cb.on_done = [me, id, backend](net::client_result res) {
    std::vector<model_info> models;
    caf::error err;
    std::string parse_error;
    auto where = std::string{to_string(backend->kind)} + " at " + backend->base_url;
    if (!res.error.empty()) {
      err = make_error(res.timed_out ? errc::timeout : errc::backend_unavailable,
                       "cannot reach the backend " + where + ": " + res.error);
    } else if (res.status != 200) {
      err = make_error(errc::backend_error, "the backend " + where + " answered HTTP "
                                              + std::to_string(res.status));
    } else if (!llm::parse_models(backend->kind, res.body, models, parse_error)) {
      err = make_error(errc::backend_protocol, parse_error);
    }
    caf::anon_send(me, done_atom::value, id, std::move(models), std::move(err));
  };
  b.client->send(std::move(req), std::move(cb));
}

void finish_models(worker_actor* self, uint64_t id, std::vector<model_info>& models,
                   caf::error& err) {
  auto i = self->state.calls.find(id);
  if (i == self->state.calls.end()) {
    return;
  }
  auto [rp, kind] = i->second;
  self->state.calls.erase(i);
  if (kind == "status") {
    auto provider = to_string(self->state.backend->kind);
    rp.deliver(err ? backend_status{false, provider, describe(err).message}
                   : backend_status{true, provider,
                                    std::to_string(models.size()) + " models"});
    return;
  }
  if (err) {
    rp.deliver(std::move(err));
  } else {
    rp.deliver(std::move(models));
  }
}

caf::behavior worker(worker_actor* self, std::shared_ptr<const llm_backend> backend) {
  self->state.backend = std::move(backend);
  return {
    [=](llm_request& req) {
      auto rp = self->make_response_promise();
      if (self->state.backend->kind == llm::provider::replay) {
        start_replay(self, req, rp);
      } else {
        start_call(self, req, rp);
      }
      return rp;
    },
    [=](done_atom, uint64_t id, llm_reply& reply, caf::error& err) {
      finish_call(self, id, reply, err);
    },
    [=](done_atom, uint64_t id, std::vector<model_info>& models, caf::error& err) {
      finish_models(self, id, models, err);
    },
    [=](models_atom) {
      auto rp = self->make_response_promise();
      fetch_models(self, self->state.backend->request_timeout, rp, false);
      return rp;
    },
    [=](ready_atom) {
      auto rp = self->make_response_promise();
      fetch_models(self, self->state.backend->probe_timeout, rp, true);
      return rp;
    },
  };
}

}  // namespace

const char* to_string(llm::provider p) {
  switch (p) {
    case llm::provider::ollama: return "ollama";
    case llm::provider::openai: return "openai";
    case llm::provider::replay: return "replay";
  }
  return "unknown";
}

caf::actor spawn_llm_worker(caf::actor_system& sys, std::shared_ptr<const llm_backend> backend) {
  return sys.spawn(worker, std::move(backend));
}

}  // namespace kowalski
