// HTTP routes of RLM runs: start one, follow it, read its turns, cancel it.
#include "runtime/node/rlm_routes.hpp"

#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

namespace kowalski {

namespace {

using namespace gw;

bool is_run_id(std::string_view id) {
  return is_hex_id(id, "run_", 20);
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
  w.key("reason");
  if (o.reason.empty()) {
    w.null();
  } else {
    w.value(o.reason);
  }
  w.key("error");
  if (o.error.empty()) {
    w.null();
  } else {
    w.value(o.error);
  }
  w.key("stats").begin_object()
    .key("turns").value(o.turns)
    .key("prompt_tokens").value(o.prompt_tokens)
    .key("completion_tokens").value(o.completion_tokens)
    .key("duration_ms").value(o.duration_ms)
    .end_object();
  w.end_object();
  return w.take();
}

void start(node& n, const net::http_request& req, const net::responder_ptr& out) {
  simdjson::dom::element doc;
  submit_rlm_run cmd;
  auto& s = cmd.start;
  auto bad = parse_object(req, doc, false);
  if (!bad) {
    bad = get_string(doc, "question", s.question, true, true, 1 << 20);
  }
  simdjson::dom::element context;
  if (!bad) {
    if (doc["context"].get(context) != simdjson::SUCCESS) {
      bad = bad_input{400, "context", "context is missing; expected a string or JSON value"};
    } else if (context.is_string()) {
      s.context = std::string{std::string_view(context)};
      s.context_kind = "text";
    } else {
      // JSON values reach the REPL as Python values.
      s.context = simdjson::minify(context);
      s.context_kind = "json";
    }
  }
  if (!bad) {
    bad = get_string(doc, "model", s.model, false, true, 256);
  }
  int32_t iterations = 0;
  if (!bad) {
    bad = get_positive_int(doc, "max_iterations", 10'000, iterations);
  }
  double tokens = 0;
  if (!bad) {
    bad = get_number(doc, "max_tokens", 1, 1e12, tokens);
  }
  double timeout = 0;
  if (!bad) {
    bad = get_number(doc, "timeout_ms", 1, 30.0 * 86'400'000, timeout);
  }
  if (bad) {
    return reply_bad(out, *bad);
  }
  s.max_iterations = static_cast<uint32_t>(iterations);
  s.max_tokens = static_cast<uint64_t>(tokens);
  s.timeout_ms = static_cast<uint64_t>(timeout);
  auto target = n.rlm();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(3), cmd)
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
  std::string bytes;
  std::string error;
  auto env = n.store();
  if (!env->get("rlm_runs", id, bytes, error)) {
    return reply_error(out, 404, "not_found", "no run " + json::quote(id), "id");
  }
  json::writer w;
  w.begin_object().key("id").value(id).key("turns").begin_array();
  env->scan("rlm_turns", id, "", [&](std::string_view, std::string_view v) {
    rlm_turn t;
    if (!store::decode(v, t)) {
      return true;
    }
    w.begin_object().key("index").value(t.index).key("reply").value(t.reply);
    w.key("blocks").begin_array();
    for (std::size_t i = 0; i < t.blocks.size(); ++i) {
      w.begin_object().key("code").value(t.blocks[i]).key("output")
        .value(i < t.outputs.size() ? t.outputs[i] : std::string{}).end_object();
    }
    w.end_array()
      .key("prompt_tokens").value(t.prompt_tokens)
      .key("completion_tokens").value(t.completion_tokens)
      .key("elapsed_ms").value(static_cast<double>(t.duration_us) / 1000.0)
      .end_object();
    return true;
  }, error);
  w.end_array().end_object();
  reply_json(out, 200, w.take());
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
    return req.method == "GET" ? trajectory(n, id, out) : not_allowed(req, out, "GET");
  }
  reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
}

}  // namespace kowalski
