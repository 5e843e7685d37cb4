// HTTP routes of the REPL workers: code in, the sandboxed result out.
#include "runtime/node/repl_routes.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/node.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include <chrono>

namespace kowalski {

namespace {

using namespace gw;

constexpr std::size_t max_code_bytes = 1 << 20;
constexpr std::size_t max_session_bytes = 128;

std::string result_body(const repl_result& r) {
  json::writer w;
  w.begin_object()
    .key("ok").value(r.ok)
    .key("stdout").value(r.stdout_text)
    .key("stderr").value(r.stderr_text)
    .key("stdout_cut").value(r.stdout_cut)
    .key("stderr_cut").value(r.stderr_cut);
  w.key("error");
  if (r.error.empty()) {
    w.null();
  } else {
    w.value(r.error);
  }
  w.key("error_type");
  if (r.error_type.empty()) {
    w.null();
  } else {
    w.value(r.error_type);
  }
  w.key("exit_status").value(r.exit_status)
    .key("duration_ms").value(static_cast<double>(r.duration_us) / 1000.0)
    .key("state_lost").value(r.state_lost);
  w.key("session");
  if (r.session.empty()) {
    w.null();
  } else {
    w.value(r.session);
  }
  w.key("worker").value(r.worker).end_object();
  return w.take();
}

bool valid_session(const std::string& s) {
  if (s.empty() || s.size() > max_session_bytes) {
    return false;
  }
  for (unsigned char c : s) {
    if (!(std::isalnum(c) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

void execute(node& n, const net::http_request& req, std::string language,
             const net::responder_ptr& out) {
  simdjson::dom::element doc;
  repl_execute cmd;
  cmd.language = std::move(language);
  auto bad = parse_object(req, doc, false);
  if (!bad) {
    bad = get_string(doc, "code", cmd.code, true, false, max_code_bytes);
  }
  if (!bad) {
    bad = get_string(doc, "session", cmd.session, false, false, max_session_bytes);
    if (!bad && !cmd.session.empty() && !valid_session(cmd.session)) {
      bad = bad_input{400, "session", "session must be 1 to 128 letters, digits, '-', '_' "
                                      "or '.', got " + json::quote(cmd.session)};
    }
  }
  int32_t timeout = 0;
  if (!bad) {
    auto max_ms = n.config().repl_max_timeout.count();
    bad = get_positive_int(doc, "timeout_ms", max_ms, timeout);
  }
  if (bad) {
    return reply_bad(out, *bad);
  }
  cmd.timeout_ms = static_cast<uint64_t>(timeout);
  auto wait = std::chrono::milliseconds{cmd.timeout_ms} + n.config().repl_max_timeout
              + std::chrono::minutes(2);
  auto target = n.repl();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, wait, cmd)
      .then([=](repl_result& r) { reply_json(out, 200, result_body(r)); },
            [=](caf::error& e) { reply_error(out, e); });
  });
}

void pools(node& n, const net::responder_ptr& out) {
  auto target = n.repl();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::seconds(20), stats_atom::value)
      .then(
        [=](std::vector<repl_pool_info>& infos) {
          json::writer w;
          w.begin_object().key("data").begin_array();
          for (auto& p : infos) {
            w.begin_object()
              .key("language").value(p.language)
              .key("available").value(p.available)
              .key("detail").value(p.detail)
              .key("sandbox").value(p.sandbox)
              .key("workers").value(p.workers)
              .key("busy").value(p.busy)
              .key("sessions").value(p.sessions)
              .key("queued").value(p.queued)
              .key("executions").value(p.executions)
              .key("restarts").value(p.restarts)
              .end_object();
          }
          w.end_array().end_object();
          reply_json(out, 200, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

void end_session(node& n, std::string session, const net::responder_ptr& out) {
  if (!valid_session(session)) {
    return reply_error(out, 404, "not_found", "no session " + json::quote(session.substr(0, 64)),
                       "session");
  }
  auto target = n.repl();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::seconds(20), end_repl_session{session})
      .then(
        [=](bool ended) {
          if (!ended) {
            return reply_error(out, 404, "not_found", "no session " + json::quote(session),
                               "session");
          }
          json::writer w;
          w.begin_object().key("session").value(session).key("ended").value(true).end_object();
          reply_json(out, 200, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

}  // namespace

void serve_repl(node& n, const net::http_request& req, const std::vector<std::string_view>& parts,
                const net::responder_ptr& out) {
  if (parts.size() == 3 && parts[2] == "pools") {
    return req.method == "GET" ? pools(n, out) : not_allowed(req, out, "GET");
  }
  if (parts.size() == 4 && parts[2] == "sessions") {
    return req.method == "DELETE" ? end_session(n, std::string{parts[3]}, out)
                                  : not_allowed(req, out, "DELETE");
  }
  if (parts.size() == 4 && parts[3] == "execute") {
    return req.method == "POST" ? execute(n, req, std::string{parts[2]}, out)
                                : not_allowed(req, out, "POST");
  }
  reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
}

}  // namespace kowalski
