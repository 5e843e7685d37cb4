// HTTP routes of a node. Handlers run on server threads and never block:
// each request becomes a short-lived actor that asks the node's actors and
// answers through the responder.
#include "runtime/node/gateway.hpp"

#include "actors/conversation_manager.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/node/batch_routes.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/repl_routes.hpp"
#include "runtime/node/memory_routes.hpp"
#include "runtime/node/rlm_routes.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>

#include <simdjson.h>

#include <atomic>
#include <chrono>
#include <optional>

namespace kowalski {

namespace {

using namespace gw;
using simdjson::dom::element;
using simdjson::dom::element_type;
using std::chrono::milliseconds;

void write_turn(json::writer& w, const turn& t) {
  w.begin_object()
    .key("seq").value(t.seq)
    .key("role").value(t.role)
    .key("content").value(t.content)
    .key("created_ms").value(t.created_ms);
  if (t.role == "assistant") {
    w.key("model").value(t.model)
      .key("prompt_tokens").value(t.prompt_tokens)
      .key("completion_tokens").value(t.completion_tokens)
      .key("replayed").value(t.replayed);
    // What memory added to its prompt; the texts are in the tiers.
    w.key("memory").begin_array();
    for (auto& m : t.memory) {
      w.begin_object().key("tier").value(m.tier).key("id").value(m.id)
        .key("score").value(m.score).key("matched_by").value(m.matched_by).end_object();
    }
    w.end_array();
  }
  w.end_object();
}

void write_info(json::writer& w, const conversation_info& c) {
  w.begin_object()
    .key("id").value(c.id)
    .key("model").value(c.model)
    .key("system_prompt").value(c.system_prompt);
  w.key("role");
  if (c.role.name.empty()) {
    w.null();
  } else {
    w.begin_object().key("name").value(c.role.name)
      .key("description").value(c.role.description).end_object();
  }
  w.key("created_ms").value(c.created_ms)
    .key("updated_ms").value(c.updated_ms)
    .key("message_count").value(c.message_count)
    .end_object();
}

std::string reply_body(const chat_reply& r) {
  json::writer w;
  w.begin_object().key("conversation_id").value(r.conversation_id);
  w.key("user");
  write_turn(w, r.user);
  w.key("message");
  write_turn(w, r.assistant);
  w.key("usage").begin_object()
    .key("prompt_tokens").value(r.assistant.prompt_tokens)
    .key("completion_tokens").value(r.assistant.completion_tokens)
    .end_object();
  w.key("replayed").value(r.assistant.replayed);
  // What memory added to this turn's prompt.
  w.key("memory").begin_array();
  for (auto& h : r.memory) {
    w.begin_object().key("tier").value(h.item.tier).key("id").value(h.item.id)
      .key("text").value(h.item.text).key("score").value(h.score)
      .key("matched_by").value(h.matched_by).end_object();
  }
  w.end_array().end_object();
  return w.take();
}

// -- routing -------------------------------------------------------------------

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  while (!path.empty()) {
    if (path.front() == '/') {
      path.remove_prefix(1);
      continue;
    }
    auto slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) {
      break;
    }
    path.remove_prefix(slash);
  }
  return parts;
}

bool tokens_equal(std::string_view a, std::string_view b) {
  // Constant time in the length of the expected token.
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff |= static_cast<unsigned char>(b[i] ^ (i < a.size() ? a[i] : 0));
  }
  return diff == 0;
}

// Logs one summary line per request when its answer starts: method, path,
// status, time taken, body size. Never the body itself.
class logged_responder : public net::responder {
public:
  logged_responder(net::responder_ptr inner, const net::http_request& req,
                   std::shared_ptr<spdlog::logger> log, spdlog::level::level_enum level)
    : inner_(std::move(inner)), method_(req.method), path_(req.path),
      started_(std::chrono::steady_clock::now()), log_(std::move(log)), level_(level) {
  }

  void respond(net::http_response res) override {
    summarize(res.status, res.body.size());
    inner_->respond(std::move(res));
  }

  void begin_stream(int status, std::string content_type, net::header_list headers) override {
    summarize(status, 0);
    inner_->begin_stream(status, std::move(content_type), std::move(headers));
  }

  void write(std::string chunk) override { inner_->write(std::move(chunk)); }
  void end() override { inner_->end(); }
  bool closed() const override { return inner_->closed(); }
  void when_drained(std::function<void()> fn) override { inner_->when_drained(std::move(fn)); }

private:
  void summarize(int status, std::size_t bytes) {
    if (logged_.exchange(true)) {
      return;
    }
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(
                std::chrono::steady_clock::now() - started_).count();
    log_->log(status >= 500 ? spdlog::level::warn : level_,
              "request method={} path={} status={} duration_us={} bytes={}", method_, path_,
              status, us, bytes);
  }

  net::responder_ptr inner_;
  std::string method_;
  std::string path_;
  std::chrono::steady_clock::time_point started_;
  std::shared_ptr<spdlog::logger> log_;
  spdlog::level::level_enum level_;
  std::atomic<bool> logged_{false};
};

class gateway {
public:
  explicit gateway(node& n) : node_(n), started_(std::chrono::steady_clock::now()) {
  }

  void operator()(net::http_request&& req, net::responder_ptr out) {
    auto parts = split_path(req.path);

    // Probes are frequent: their lines go to debug, the API's to info.
    auto probe = parts.size() == 1 && (parts[0] == "healthz" || parts[0] == "readyz");
    auto level = probe ? spdlog::level::debug : spdlog::level::info;
    if (log_->should_log(level)) {
      out = std::make_shared<logged_responder>(std::move(out), req, log_, level);
    }

    if (parts.size() == 1 && parts[0] == "healthz") {
      return healthz(req, out);
    }
    if (parts.size() == 1 && parts[0] == "readyz") {
      return readyz(req, out);
    }
    if (parts.empty() || parts[0] != "v1") {
      return not_found(req, out);
    }
    if (!authorized(req)) {
      net::http_response res;
      res.status = 401;
      res.headers.emplace_back("WWW-Authenticate", "Bearer");
      res.body = net::error_body(401, "unauthorized",
                                 "a valid bearer token is required", "authorization");
      return out->respond(std::move(res));
    }
    if (parts.size() == 2 && parts[1] == "models") {
      return req.method == "GET" ? models(out) : not_allowed(req, out, "GET");
    }
    if (parts.size() >= 2 && parts[1] == "conversations") {
      return conversations(req, parts, out);
    }
    if (parts.size() >= 2 && parts[1] == "batches") {
      return serve_batches(node_, req, parts, out);
    }
    if (parts.size() >= 2 && parts[1] == "repl") {
      return serve_repl(node_, req, parts, out);
    }
    if (parts.size() >= 2 && parts[1] == "rlm") {
      return serve_rlm(node_, req, parts, out);
    }
    if (parts.size() >= 2 && parts[1] == "memory") {
      return serve_memory(node_, req, parts, out);
    }
    not_found(req, out);
  }

private:
  bool authorized(const net::http_request& req) const {
    auto& token = node_.config().http_token;
    if (token.empty()) {
      return true;
    }
    auto h = req.header("authorization");
    if (h == nullptr || h->rfind("Bearer ", 0) != 0) {
      return false;
    }
    return tokens_equal(std::string_view{*h}.substr(7), token);
  }

  void not_found(const net::http_request& req, const net::responder_ptr& out) {
    reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
  }

  void healthz(const net::http_request& req, const net::responder_ptr& out) {
    auto up = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_);
    json::writer w;
    w.begin_object().key("status").value("ok").key("uptime_s").value(up.count()).end_object();
    reply_json(out, 200, w.take());
  }

  // Ready means: the store answers a read, its writer answers in turn, and
  // the backend answers a probe. Each part is reported.
  void readyz(const net::http_request&, const net::responder_ptr& out) {
    std::string store_error;
    bool store_ok = node_.store()->healthy(store_error);
    auto writer = node_.writer();
    auto router = node_.router();
    auto sandbox = node_.repl_sandbox();
    auto sandbox_detail = node_.repl_sandbox_detail();
    node_.system().spawn([=](caf::event_based_actor* self) {
      auto state = std::make_shared<std::pair<int, backend_status>>(0, backend_status{});
      auto writer_ok = std::make_shared<bool>(false);
      auto finish = [=] {
        if (++state->first < 2) {
          return;
        }
        auto& b = state->second;
        bool ready = store_ok && *writer_ok && b.reachable;
        json::writer w;
        w.begin_object().key("ready").value(ready);
        w.key("store").begin_object().key("ok").value(store_ok && *writer_ok);
        if (!store_ok) {
          w.key("detail").value(store_error);
        } else if (!*writer_ok) {
          w.key("detail").value("the store writer did not answer");
        }
        w.end_object();
        w.key("backend").begin_object().key("ok").value(b.reachable)
          .key("provider").value(b.provider).key("detail").value(b.detail).end_object();
        // REPLs do not decide readiness; the mode in force is reported.
        w.key("repl").begin_object().key("sandbox").value(sandbox)
          .key("detail").value(sandbox_detail).end_object();
        w.end_object();
        reply_json(out, ready ? 200 : 503, w.take());
      };
      self->request(writer, std::chrono::seconds(3), ping_atom::value)
        .then([=](uint64_t) { *writer_ok = true; finish(); },
              [=](caf::error&) { finish(); });
      self->request(router, std::chrono::seconds(5), ready_atom::value)
        .then([=](backend_status& b) { state->second = std::move(b); finish(); },
              [=](caf::error& err) {
                state->second = backend_status{false, "", describe(err).message};
                finish();
              });
    });
  }

  void models(const net::responder_ptr& out) {
    auto router = node_.router();
    node_.system().spawn([=](caf::event_based_actor* self) {
      self->request(router, std::chrono::seconds(30), models_atom::value)
        .then(
          [=](std::vector<model_info>& list) {
            json::writer w;
            w.begin_object().key("object").value("list").key("data").begin_array();
            for (auto& m : list) {
              w.begin_object().key("id").value(m.name).key("object").value("model")
                .key("provider").value(m.provider).key("size_bytes").value(m.size_bytes)
                .end_object();
            }
            w.end_array().end_object();
            reply_json(out, 200, w.take());
          },
          [=](caf::error& err) { reply_error(out, err); });
    });
  }

  void conversations(const net::http_request& req,
                     const std::vector<std::string_view>& parts,
                     const net::responder_ptr& out) {
    if (parts.size() == 2) {
      if (req.method == "POST") {
        return create(req, out);
      }
      if (req.method == "GET") {
        return list(req, out);
      }
      return not_allowed(req, out, "GET, POST");
    }
    auto id = std::string{parts[2]};
    if (!is_uuid(id)) {
      return reply_error(out, 404, "not_found",
                         "no conversation " + json::quote(id.substr(0, 64))
                           + "; ids are lower-case UUIDs",
                         "id");
    }
    if (parts.size() == 3) {
      if (req.method == "GET") {
        return read(req, id, out);
      }
      if (req.method == "DELETE") {
        return ask<bool>(out, std::chrono::seconds(30),
                   [id](const bool&) {
                     json::writer w;
                     w.begin_object().key("id").value(id).key("deleted").value(true)
                       .end_object();
                     return std::make_pair(200, w.take());
                   },
          delete_atom::value, id);
      }
      return not_allowed(req, out, "GET, DELETE");
    }
    if (parts.size() == 4 && parts[3] == "messages") {
      if (req.method != "POST") {
        return not_allowed(req, out, "POST");
      }
      return post_message(req, id, out);
    }
    not_found(req, out);
  }

  // Sends `msg` to the manager and renders the reply with `render`.
  template <class Reply, class Render, class... Ts>
  void ask(const net::responder_ptr& out, milliseconds timeout, Render render, Ts... xs) {
    auto manager = node_.manager();
    node_.system().spawn([=](caf::event_based_actor* self) {
      self->request(manager, timeout, xs...)
        .then(
          [=](Reply& reply) {
            auto [status, body] = render(reply);
            reply_json(out, status, std::move(body));
          },
          [=](caf::error& err) { reply_error(out, err); });
    });
  }

  // GET /v1/conversations/{id}?after_seq=N&limit=M: one page of messages.
  void read(const net::http_request& req, const std::string& id,
            const net::responder_ptr& out) {
    read_conversation cmd;
    cmd.id = id;
    if (auto bad = query_limit(req, 10'000, cmd.limit)) {
      return reply_bad(out, *bad);
    }
    std::string value;
    if (req.query_param("after_seq", value)) {
      char* end = nullptr;
      auto n = std::strtoull(value.c_str(), &end, 10);
      if (value.empty() || *end != '\0' || value[0] == '-') {
        return reply_error(out, 400, "invalid_argument",
                           "after_seq must be a non-negative integer, got "
                             + json::quote(value.substr(0, 32)),
                           "after_seq");
      }
      cmd.after_seq = n;
    }
    ask<conversation_detail>(
      out, std::chrono::seconds(30),
      [](const conversation_detail& d) {
        json::writer w;
        w.begin_object().key("conversation");
        write_info(w, d.info);
        w.key("messages").begin_array();
        for (auto& t : d.turns) {
          write_turn(w, t);
        }
        w.end_array().key("next_after_seq");
        if (d.next_after_seq == 0) {
          w.null();
        } else {
          w.value(d.next_after_seq);
        }
        w.end_object();
        return std::make_pair(200, w.take());
      },
      std::move(cmd));
  }

  void create(const net::http_request& req, const net::responder_ptr& out) {
    element doc;
    create_conversation cmd;
    std::optional<bad_input> bad = parse_object(req, doc, true);
    if (!bad) {
      bad = get_string(doc, "model", cmd.model, false, true, 256);
    }
    if (!bad) {
      bad = get_string(doc, "system_prompt", cmd.system_prompt, false, false, 64 * 1024);
    }
    element role;
    if (!bad && doc["role"].get(role) == simdjson::SUCCESS && !role.is_null()) {
      if (!role.is_object()) {
        bad = bad_input{400, "role", "role must be an object {name, description}, got "
                                       + describe_value(role)};
      } else {
        bad = get_string(role, "name", cmd.role.name, true, true, 256);
        if (!bad) {
          bad = get_string(role, "description", cmd.role.description, false, false, 16 * 1024);
        }
        if (bad) {
          bad->field = "role." + bad->field;
        }
      }
    }
    if (bad) {
      return reply_bad(out, *bad);
    }
    ask<conversation_info>(
      out, std::chrono::seconds(30),
      [](const conversation_info& info) {
        json::writer w;
        write_info(w, info);
        return std::make_pair(201, w.take());
      },
      std::move(cmd));
  }

  void list(const net::http_request& req, const net::responder_ptr& out) {
    list_conversations cmd;
    if (auto bad = query_limit(req, 1000, cmd.limit)) {
      return reply_bad(out, *bad);
    }
    std::string value;
    if (req.query_param("after", value)) {
      if (!is_uuid(value)) {
        return reply_error(out, 400, "invalid_argument",
                           "after must be a conversation id (UUID), got "
                             + json::quote(value.substr(0, 64)),
                           "after");
      }
      cmd.after = value;
    }
    ask<conversation_page>(out, std::chrono::seconds(30), [](const conversation_page& page) {
      json::writer w;
      w.begin_object().key("data").begin_array();
      for (auto& c : page.items) {
        write_info(w, c);
      }
      w.end_array().key("next_after");
      if (page.next_after.empty()) {
        w.null();
      } else {
        w.value(page.next_after);
      }
      w.end_object();
      return std::make_pair(200, w.take());
    }, cmd);
  }

  void post_message(const net::http_request& req, const std::string& id,
                    const net::responder_ptr& out) {
    element doc;
    user_message msg;
    msg.conversation_id = id;
    bool stream = false;
    auto limit = node_.config().conversations_max_message_bytes;
    std::optional<bad_input> bad = parse_object(req, doc, false);
    if (!bad) {
      bad = get_string(doc, "content", msg.content, true, true, limit);
    }
    if (!bad) {
      bad = get_bool(doc, "stream", stream);
    }
    if (!bad) {
      bad = get_number(doc, "temperature", 0, 2, msg.options.temperature);
    }
    if (!bad) {
      bad = get_positive_int(doc, "max_tokens", 1'000'000, msg.options.max_tokens);
    }
    if (bad) {
      return reply_bad(out, *bad);
    }
    auto timeout = node_.config().client_request_timeout + std::chrono::seconds(60);
    if (stream) {
      return stream_message(std::move(msg), timeout, out);
    }
    ask<chat_reply>(
      out, timeout,
      [](const chat_reply& reply) { return std::make_pair(200, reply_body(reply)); },
      std::move(msg));
  }

  // Server-Sent Events: "delta" events as text arrives, then one "done" event
  // with the stored turns. The stream starts with the first piece of text,
  // so an error before it (unknown conversation, dead backend) is a plain
  // HTTP error with its status; an error after it is one "error" event.
  void stream_message(user_message msg, milliseconds timeout,
                      const net::responder_ptr& out) {
    auto manager = node_.manager();
    node_.system().spawn([=](caf::event_based_actor* self) mutable {
      auto started = std::make_shared<bool>(false);
      auto begin = [=] {
        if (!*started) {
          *started = true;
          out->begin_stream(200, "text/event-stream",
                            {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
        }
      };
      msg.sink = caf::actor_cast<caf::actor>(self);
      self->request(manager, timeout, std::move(msg))
        .then(
          [=](chat_reply& reply) {
            begin();
            out->write("event: done\ndata: " + reply_body(reply) + "\n\n");
            out->end();
            self->quit();
          },
          [=](caf::error& err) {
            if (!*started) {
              reply_error(out, err);
            } else {
              out->write(sse_error_event(err));
              out->end();
            }
            self->quit();
          });
      return caf::behavior{
        [=](delta_atom, std::string& text) {
          begin();
          json::writer w;
          w.begin_object().key("content").value(text).end_object();
          out->write("event: delta\ndata: " + w.take() + "\n\n");
        },
      };
    });
  }

  node& node_;
  std::chrono::steady_clock::time_point started_;
  std::shared_ptr<spdlog::logger> log_ = logging::get("gateway");
};

}  // namespace

net::request_handler make_gateway(node& n) {
  auto g = std::make_shared<gateway>(n);
  return [g](net::http_request&& req, net::responder_ptr out) {
    (*g)(std::move(req), std::move(out));
  };
}

}  // namespace kowalski
