// HTTP routes of RLM runs: start one, follow it, read its turns, cancel it.
#include "runtime/node/rlm_routes.hpp"

#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/node.hpp"
#include "messages/atoms.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include <functional>
#include <memory>

namespace kowalski {

namespace {

using namespace gw;

bool is_run_id(std::string_view id) {
  return is_hex_id(id, "run_", 20);
}

void stats(json::writer& w, const rlm_outcome& o) {
  w.key("stats").begin_object()
    .key("turns").value(o.turns)
    .key("sub_calls").value(o.sub_calls)
    .key("prompt_tokens").value(o.prompt_tokens)
    .key("completion_tokens").value(o.completion_tokens)
    .key("sub_prompt_tokens").value(o.sub_prompt_tokens)
    .key("sub_completion_tokens").value(o.sub_completion_tokens)
    .key("total_tokens").value(o.prompt_tokens + o.completion_tokens + o.sub_prompt_tokens
                               + o.sub_completion_tokens)
    .key("compactions").value(o.compactions)
    .key("replayed_turns").value(o.replayed_turns)
    .key("duration_ms").value(o.duration_ms)
    .end_object();
}

void null_or(json::writer& w, const char* key, const std::string& v) {
  w.key(key);
  if (v.empty()) {
    w.null();
  } else {
    w.value(v);
  }
}

std::string info_body(const rlm_run_info& r) {
  json::writer w;
  w.begin_object()
    .key("id").value(r.id)
    .key("object").value("rlm.run")
    .key("status").value(r.status)
    .key("question").value(r.question)
    .key("model").value(r.model)
    .key("created_ms").value(r.created_ms);
  w.key("finished_ms");
  if (r.finished_ms == 0) {
    w.null();
  } else {
    w.value(r.finished_ms);
  }
  auto& o = r.outcome;
  w.key("answer");
  if (r.status == "running") {
    w.null();
  } else {
    w.value(o.answer);
  }
  null_or(w, "reason", o.reason);
  null_or(w, "error", o.error);
  w.key("resumes").value(r.resumes);
  stats(w, o);
  w.end_object();
  return w.take();
}

void turn_json(json::writer& w, const rlm_turn& t, const std::vector<rlm_sub_call>& calls) {
  w.begin_object()
    .key("index").value(t.index)
    .key("complete").value(t.complete)
    .key("reply").value(t.reply);
  w.key("blocks").begin_array();
  for (std::size_t i = 0; i < t.blocks.size(); ++i) {
    w.begin_object().key("code").value(t.blocks[i]).key("output");
    if (i < t.outputs.size()) {
      w.value(t.outputs[i]);
    } else {
      w.null();
    }
    w.end_object();
  }
  w.end_array();
  w.key("sub_calls").begin_array();
  for (auto& c : calls) {
    if (c.turn != t.index) {
      continue;
    }
    w.begin_object()
      .key("seq").value(c.seq)
      .key("kind").value(c.kind)
      .key("model").value(c.model)
      .key("prompt_chars").value(c.prompt_chars)
      .key("ok").value(c.ok)
      .key("answer").value(c.answer)
      .key("prompt_tokens").value(c.prompt_tokens)
      .key("completion_tokens").value(c.completion_tokens)
      .key("elapsed_ms").value(static_cast<double>(c.duration_us) / 1000.0);
    null_or(w, "child", c.child);
    null_or(w, "note", c.note);
    w.end_object();
  }
  w.end_array();
  null_or(w, "summary", t.summary);
  w.key("prompt_tokens").value(t.prompt_tokens)
    .key("completion_tokens").value(t.completion_tokens)
    .key("sub_prompt_tokens").value(t.sub_prompt_tokens)
    .key("sub_completion_tokens").value(t.sub_completion_tokens)
    .key("elapsed_ms").value(static_cast<double>(t.duration_us) / 1000.0)
    .key("model_ms").value(static_cast<double>(t.model_us) / 1000.0)
    .end_object();
}

// Reads the run's limits, shared by the JSON body and the query of an upload.
struct limits_in {
  uint64_t iterations = 0, tokens = 0, timeout = 0, depth = 0;
};

void apply(rlm_start& s, const limits_in& in) {
  s.max_iterations = static_cast<uint32_t>(in.iterations);
  s.max_tokens = in.tokens;
  s.timeout_ms = in.timeout;
  s.max_depth = static_cast<uint32_t>(in.depth);
}

constexpr double max_timeout_ms = 30.0 * 86'400'000;

std::optional<bad_input> from_json(const net::http_request& req, rlm_start& s) {
  simdjson::dom::element doc;
  auto bad = parse_object(req, doc, false);
  if (!bad) {
    bad = get_string(doc, "question", s.question, true, true, 1 << 20);
  }
  if (!bad) {
    bad = get_string(doc, "context_file", s.context_file, false, true, 4096);
  }
  simdjson::dom::element context;
  bool inline_context = !bad && doc["context"].get(context) == simdjson::SUCCESS;
  if (!bad && inline_context && !s.context_file.empty()) {
    bad = bad_input{400, "context_file", "give context or context_file, not both"};
  }
  if (!bad && !inline_context && s.context_file.empty()) {
    bad = bad_input{400, "context", "context is missing; expected a string or JSON value, "
                                    "a context_file on the node, or an upload"};
  }
  if (!bad && inline_context) {
    if (context.is_string()) {
      s.context = std::string{std::string_view(context)};
      s.context_kind = "text";
    } else {
      // JSON values reach the REPL as Python values.
      s.context = simdjson::minify(context);
      s.context_kind = "json";
    }
  }
  std::string kind;
  if (!bad) {
    bad = get_string(doc, "context_kind", kind, false, true, 16);
  }
  if (!bad && !kind.empty()) {
    if (kind != "text" && kind != "json") {
      bad = bad_input{400, "context_kind", "context_kind must be text or json, got "
                                             + json::quote(kind)};
    } else if (inline_context && kind != s.context_kind) {
      bad = bad_input{400, "context_kind", "context_kind is " + json::quote(kind)
                                             + " but context is a "
                                             + (s.context_kind == "text" ? "string"
                                                                         : "JSON value")};
    } else {
      s.context_kind = kind;
    }
  }
  if (!bad) {
    bad = get_string(doc, "model", s.model, false, true, 256);
  }
  int32_t iterations = 0;
  int32_t depth = 0;
  double tokens = 0;
  double timeout = 0;
  if (!bad) {
    bad = get_positive_int(doc, "max_iterations", 10'000, iterations);
  }
  if (!bad) {
    bad = get_positive_int(doc, "max_depth", 64, depth);
  }
  if (!bad) {
    bad = get_number(doc, "max_tokens", 1, 1e12, tokens);
  }
  if (!bad) {
    bad = get_number(doc, "timeout_ms", 1, max_timeout_ms, timeout);
  }
  if (!bad) {
    apply(s, limits_in{static_cast<uint64_t>(iterations), static_cast<uint64_t>(tokens),
                       static_cast<uint64_t>(timeout), static_cast<uint64_t>(depth)});
  }
  return bad;
}

// An upload: the body is the context; the rest comes in the query.
std::optional<bad_input> from_upload(const net::http_request& req, rlm_start& s) {
  if (!req.query_param("question", s.question)
      || s.question.find_first_not_of(" \t\r\n") == std::string::npos) {
    return bad_input{400, "question", "question is missing; an upload (a body that is not "
                                      "JSON) takes it as the query parameter question"};
  }
  std::string kind = "text";
  req.query_param("context_kind", kind);
  if (kind != "text" && kind != "json") {
    return bad_input{400, "context_kind", "context_kind must be text or json, got "
                                            + json::quote(kind.substr(0, 32))};
  }
  s.context_kind = kind;
  req.query_param("model", s.model);
  limits_in in;
  std::optional<bad_input> bad;
  bad = query_uint(req, "max_iterations", 1, 10'000, in.iterations);
  if (!bad) {
    bad = query_uint(req, "max_depth", 1, 64, in.depth);
  }
  if (!bad) {
    bad = query_uint(req, "max_tokens", 1, 1'000'000'000'000, in.tokens);
  }
  if (!bad) {
    bad = query_uint(req, "timeout_ms", 1, static_cast<uint64_t>(max_timeout_ms), in.timeout);
  }
  if (!bad && !json::valid_utf8(req.body)) {
    bad = bad_input{400, "context", "the uploaded context is not valid UTF-8; expected UTF-8 "
                                    "text or JSON"};
  }
  if (!bad) {
    apply(s, in);
    s.context = req.body;
  }
  return bad;
}

bool is_json(const net::http_request& req) {
  auto type = req.header("Content-Type");
  if (type == nullptr) {
    return true;
  }
  auto t = std::string_view{*type}.substr(0, type->find(';'));
  while (!t.empty() && t.back() == ' ') {
    t.remove_suffix(1);
  }
  return net::iequals(t, "application/json");
}

void start(node& n, const net::http_request& req, const net::responder_ptr& out) {
  // Moved, not copied, into the message: a context may be a gigabyte.
  auto cmd = std::make_shared<submit_rlm_run>();
  auto bad = is_json(req) ? from_json(req, cmd->start) : from_upload(req, cmd->start);
  if (bad) {
    return reply_bad(out, *bad);
  }
  auto target = n.rlm();
  n.system().spawn([=](caf::event_based_actor* self) {
    // A gigabyte is written and synced before the reply: allow for a slow disk.
    self->request(target, std::chrono::minutes(15), std::move(*cmd))
      .then(
        [=](rlm_run_info& info) {
          net::http_response res;
          res.status = 202;
          res.headers.emplace_back("Location", "/v1/rlm/runs/" + info.id);
          res.body = info_body(info);
          out->respond(std::move(res));
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

void trajectory(node& n, const std::string& id, const net::responder_ptr& out) {
  auto target = n.rlm();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(1), get_rlm_turns{id, 0, 0, 0})
      .then(
        [=](rlm_turn_page& page) {
          json::writer w;
          w.begin_object().key("id").value(id).key("status").value(page.run.status);
          w.key("turns").begin_array();
          for (auto& t : page.turns) {
            turn_json(w, t, page.sub_calls);
          }
          w.end_array().end_object();
          reply_json(out, 200, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

// Server-Sent Events: "reply" when a turn's model reply is stored, "turn"
// when its code has run, "end" with the run's record when it has ended.
// Turns committed before the request come first, so a late follower sees
// the whole run.
void follow(node& n, const std::string& id, const net::responder_ptr& out) {
  auto target = n.rlm();
  n.system().spawn([=](caf::event_based_actor* self) {
    struct cursor {
      bool started = false;
      uint32_t after = 0;
      uint32_t partial = 0;
    };
    auto cur = std::make_shared<cursor>();
    auto poll = std::make_shared<std::function<void()>>();
    *poll = [=] {
      if (out->closed()) {
        self->quit();
        return;
      }
      get_rlm_turns cmd{id, cur->after, 15'000, cur->partial};
      using clock = std::chrono::steady_clock;
      auto asked = clock::now();
      self->request(target, std::chrono::seconds(75), cmd)
        .then(
          [=](rlm_turn_page& page) {
            if (!cur->started) {
              cur->started = true;
              out->begin_stream(200, "text/event-stream",
                                {{"Cache-Control", "no-cache"}, {"X-Accel-Buffering", "no"}});
            }
            std::string chunk;
            for (auto& t : page.turns) {
              json::writer w;
              turn_json(w, t, page.sub_calls);
              if (t.complete) {
                chunk += "event: turn\ndata: " + w.take() + "\n\n";
                cur->after = t.index;
              } else if (t.index != cur->partial) {
                chunk += "event: reply\ndata: " + w.take() + "\n\n";
                cur->partial = t.index;
              }
            }
            if (page.run.status != "running") {
              out->write(chunk + "event: end\ndata: " + info_body(page.run) + "\n\n");
              out->end();
              self->quit();
              return;
            }
            // A comment keeps proxies from closing a quiet stream.
            out->write(chunk.empty() ? std::string{": waiting\n\n"} : chunk);
            // Events are small: the next long poll starts at once, and
            // notices a closed connection within its wait. An answer with
            // nothing new before the wait was up (a run the manager no
            // longer holds, whose record is not final yet) waits a second.
            if (chunk.empty() && clock::now() - asked < std::chrono::seconds(1)) {
              self->delayed_send(self, std::chrono::seconds(1), tick_atom::value);
            } else {
              self->send(self, tick_atom::value);
            }
          },
          [=](caf::error& e) {
            if (!cur->started) {
              reply_error(out, e);
            } else {
              out->write(sse_error_event(e));
              out->end();
            }
            self->quit();
          });
    };
    (*poll)();
    return caf::behavior{
      [=](tick_atom) { (*poll)(); },
    };
  });
}

bool wants_events(const net::http_request& req) {
  std::string follow;
  if (req.query_param("follow", follow)) {
    return follow == "true" || follow == "1";
  }
  auto accept = req.header("Accept");
  return accept != nullptr && accept->find("text/event-stream") != std::string::npos;
}

template <class Msg>
void ask(node& n, const net::responder_ptr& out, Msg msg,
         std::chrono::milliseconds timeout = std::chrono::minutes(2)) {
  auto target = n.rlm();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, timeout, msg)
      .then([=](rlm_run_info& info) { reply_json(out, 200, info_body(info)); },
            [=](caf::error& e) { reply_error(out, e); });
  });
}

}  // namespace

void serve_rlm(node& n, const net::http_request& req, const std::vector<std::string_view>& parts,
               const net::responder_ptr& out) {
  if (parts.size() < 3 || parts[2] != "runs") {
    return reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
  }
  if (parts.size() == 3) {
    return req.method == "POST" ? start(n, req, out) : not_allowed(req, out, "POST");
  }
  auto id = std::string{parts[3]};
  if (!is_run_id(id)) {
    return reply_error(out, 404, "not_found",
                       "no run " + json::quote(id.substr(0, 64))
                         + "; ids look like run_ and 20 hex digits",
                       "id");
  }
  if (parts.size() == 4) {
    if (req.method == "GET") {
      get_rlm_run cmd{id, 0};
      if (auto bad = query_wait_ms(req, cmd.wait_ms)) {
        return reply_bad(out, *bad);
      }
      return ask(n, out, cmd, std::chrono::milliseconds{cmd.wait_ms} + std::chrono::minutes(1));
    }
    if (req.method == "DELETE") {
      return ask(n, out, cancel_rlm_run{id});
    }
    return not_allowed(req, out, "GET, DELETE");
  }
  if (parts.size() == 5 && parts[4] == "trajectory") {
    if (req.method != "GET") {
      return not_allowed(req, out, "GET");
    }
    return wants_events(req) ? follow(n, id, out) : trajectory(n, id, out);
  }
  reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
}

}  // namespace kowalski
