// REPL pool: hands executions to workers, pins sessions, grows to max,
// reaps idle workers and sessions, replaces workers that stop.
#include "actors/repl_pool.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <deque>
#include <set>
#include <map>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct pending {
  repl_execute req;
  caf::response_promise rp;
};

struct slot {
  caf::actor handle;
  bool busy = false;
  bool dirty = false;  // ran code since its last fresh interpreter
  std::string session;          // pinned to it; empty = free for anyone
  std::deque<pending> own;      // executions of its session waiting for it
  clock_type::time_point used = clock_type::now();
};

struct pool_state {
  repl_pool_options opts;
  std::map<std::string, slot> slots;            // by worker id
  std::map<std::string, std::string> sessions;  // session -> worker id
  std::map<std::string, clock_type::time_point> session_used;
  std::deque<pending> queue;  // waiting for any worker
  /// Sessions ended for idleness: their next execution says its state is
  /// gone (state_lost), so that the caller knows to rebuild it.
  std::set<std::string> reaped;
  uint64_t next_id = 0;
  uint64_t executions = 0;
  uint64_t restarts = 0;
  uint32_t deaths = 0;  // workers lost in a row; an execution's success resets it
  bool tick_armed = false;
  std::shared_ptr<spdlog::logger> log = logging::get("repl");
  static inline const char* name = "kowalski.repl_pool";
};

using pool_actor = caf::stateful_actor<pool_state>;

void pump(pool_actor* self, const std::string& id);

// Gives worker `id` to `session`: a fresh interpreter first if anything ran
// on it, and every execution of the session already waiting in the queue.
void pin(pool_actor* self, const std::string& id, const std::string& session) {
  auto& st = self->state;
  auto& s = st.slots.at(id);
  s.session = session;
  st.sessions[session] = id;
  st.session_used[session] = clock_type::now();
  if (s.dirty) {
    self->request(s.handle, std::chrono::minutes(1), reset_atom::value)
      .then([](bool) {}, [](caf::error&) {});
    s.dirty = false;
  }
  for (auto q = st.queue.begin(); q != st.queue.end();) {
    if (q->req.session == session) {
      s.own.push_back(std::move(*q));
      q = st.queue.erase(q);
    } else {
      ++q;
    }
  }
}

std::string add_worker(pool_actor* self) {
  auto& st = self->state;
  auto o = st.opts.worker;
  o.id = st.opts.language + "-" + std::to_string(++st.next_id);
  auto h = spawn_repl_worker(self->system(), o);
  self->monitor(h);
  st.slots[o.id].handle = h;
  st.log->debug("repl worker started language={} worker={}", st.opts.language, o.id);
  return o.id;
}

void arm_tick(pool_actor* self) {
  auto& st = self->state;
  if (st.tick_armed) {
    return;
  }
  if (st.slots.size() <= st.opts.min_workers && st.sessions.empty()) {
    return;
  }
  st.tick_armed = true;
  auto every = std::min(st.opts.idle_timeout, st.opts.session_idle) / 2;
  self->delayed_send(self, std::max(every, milliseconds{50}), tick_atom::value);
}

void run(pool_actor* self, const std::string& id, pending p) {
  auto& st = self->state;
  auto& s = st.slots.at(id);
  s.busy = true;
  s.dirty = true;
  s.used = clock_type::now();
  if (!p.req.session.empty()) {
    st.session_used[p.req.session] = s.used;
  }
  auto timeout = milliseconds{p.req.timeout_ms > 0 ? p.req.timeout_ms : 0}
                 + st.opts.worker.max_timeout + std::chrono::seconds(60);
  auto rp = p.rp;
  auto session = p.req.session;
  // Idle time counts from an execution's end, not its start: code that
  // waited an hour on sub-calls has not left its session idle.
  auto touch = [=] {
    auto used = self->state.session_used.find(session);
    if (used != self->state.session_used.end()) {
      used->second = clock_type::now();
    }
  };
  self->request(s.handle, timeout, std::move(p.req))
    .then(
      [=](repl_result& r) mutable {
        auto& st = self->state;
        touch();
        if (st.reaped.erase(session) > 0) {
          r.state_lost = true;
        }
        ++st.executions;
        st.deaths = 0;
        if (r.state_lost && (r.error_type == "timeout" || r.error_type == "crash")) {
          ++st.restarts;
        }
        rp.deliver(std::move(r));
        auto i = st.slots.find(id);
        if (i != st.slots.end()) {
          i->second.busy = false;
          i->second.used = clock_type::now();
          pump(self, id);
        }
      },
      [=](caf::error& e) mutable {
        touch();
        rp.deliver(std::move(e));
        auto i = self->state.slots.find(id);
        if (i != self->state.slots.end()) {
          i->second.busy = false;
          pump(self, id);
        }
      });
}

// Gives worker `id` its next execution: its session's first, else one from
// the common queue (pinning a new session to it).
void pump(pool_actor* self, const std::string& id) {
  auto& st = self->state;
  auto i = st.slots.find(id);
  if (i == st.slots.end() || i->second.busy) {
    return;
  }
  auto& s = i->second;
  if (!s.own.empty()) {
    auto p = std::move(s.own.front());
    s.own.pop_front();
    return run(self, id, std::move(p));
  }
  if (!s.session.empty()) {
    return;
  }
  for (auto q = st.queue.begin(); q != st.queue.end(); ++q) {
    auto& session = q->req.session;
    if (!session.empty()) {
      auto pinned = st.sessions.find(session);
      if (pinned != st.sessions.end()) {
        // Its session found a worker meanwhile.
        st.slots.at(pinned->second).own.push_back(std::move(*q));
        st.queue.erase(q);
        pump(self, pinned->second);
        return pump(self, id);
      }
      auto p = std::move(*q);
      st.queue.erase(q);
      pin(self, id, session);
      arm_tick(self);
      s.own.push_front(std::move(p));
      return pump(self, id);
    }
    auto p = std::move(*q);
    st.queue.erase(q);
    return run(self, id, std::move(p));
  }
}

caf::result<repl_result> execute(pool_actor* self, repl_execute& req) {
  auto& st = self->state;
  if (!st.opts.available) {
    return make_error(errc::unavailable, st.opts.language + " is unavailable on this node: "
                                           + st.opts.detail, "language");
  }
  auto rp = self->make_response_promise();
  auto session = req.session;
  if (!session.empty()) {
    auto pinned = st.sessions.find(session);
    if (pinned != st.sessions.end()) {
      st.slots.at(pinned->second).own.push_back(pending{std::move(req), rp});
      pump(self, pinned->second);
      return caf::delegated<repl_result>{};
    }
  }
  // A free worker, or a new one while below max.
  std::string free;
  for (auto& [id, s] : st.slots) {
    if (!s.busy && s.session.empty() && s.own.empty()) {
      free = id;
      break;
    }
  }
  if (free.empty() && st.slots.size() < st.opts.max_workers) {
    free = add_worker(self);
  }
  if (free.empty()) {
    if (st.queue.size() >= st.opts.queue_limit) {
      rp.deliver(make_error(errc::overloaded,
                            "all " + std::to_string(st.opts.max_workers) + " " + st.opts.language
                              + " workers are busy and " + std::to_string(st.queue.size())
                              + " executions wait; retry later"));
      return caf::delegated<repl_result>{};
    }
    st.queue.push_back(pending{std::move(req), rp});
    return caf::delegated<repl_result>{};
  }
  if (!session.empty()) {
    pin(self, free, session);
    st.slots.at(free).own.push_back(pending{std::move(req), rp});
    pump(self, free);
  } else {
    run(self, free, pending{std::move(req), rp});
  }
  arm_tick(self);
  return caf::delegated<repl_result>{};
}

// The worker's next user must not see this session's state.
// Answers the executions of `session` in `q` with an error, and removes them.
bool drop_waiting(std::deque<pending>& q, const std::string& session) {
  bool any = false;
  for (auto p = q.begin(); p != q.end();) {
    if (p->req.session == session) {
      p->rp.deliver(make_error(errc::cancelled, "the session " + session
                                                  + " ended before this execution ran"));
      p = q.erase(p);
      any = true;
    } else {
      ++p;
    }
  }
  return any;
}

bool end_session(pool_actor* self, const std::string& session, bool abort = false) {
  auto& st = self->state;
  auto i = st.sessions.find(session);
  if (i == st.sessions.end()) {
    // Not on a worker yet: with abort, what waits for one never runs (else
    // an ended session would take a worker later, and nobody would end it).
    return abort && drop_waiting(st.queue, session);
  }
  auto id = i->second;
  st.sessions.erase(i);
  st.session_used.erase(session);
  auto& s = st.slots.at(id);
  if (abort) {
    drop_waiting(s.own, session);
    drop_waiting(st.queue, session);
    if (s.busy) {
      self->send(s.handle, cancel_atom::value, session);
    }
  }
  s.session.clear();
  s.dirty = false;
  // The worker resets before anything sent after this, so the slot is free.
  self->request(s.handle, std::chrono::minutes(1), reset_atom::value)
    .then([](bool) {}, [](caf::error&) {});
  st.log->debug("repl session ended language={} worker={}", st.opts.language, id);
  pump(self, id);
  return true;
}

void on_tick(pool_actor* self) {
  auto& st = self->state;
  st.tick_armed = false;
  auto now = clock_type::now();
  std::vector<std::string> stale;
  for (auto& [session, used] : st.session_used) {
    auto w = st.sessions.find(session);
    bool busy = w != st.sessions.end() && st.slots.at(w->second).busy;
    if (!busy && now - used > st.opts.session_idle) {
      stale.push_back(session);
    }
  }
  for (auto& session : stale) {
    end_session(self, session);
    // Bounded: past 10,000 names, one is forgotten.
    if (st.reaped.size() >= 10'000) {
      st.reaped.erase(st.reaped.begin());
    }
    st.reaped.insert(session);
  }
  for (auto i = st.slots.begin(); i != st.slots.end() && st.slots.size() > st.opts.min_workers;) {
    auto& s = i->second;
    if (!s.busy && s.session.empty() && s.own.empty() && now - s.used > st.opts.idle_timeout) {
      self->demonitor(s.handle);
      self->send_exit(s.handle, caf::exit_reason::user_shutdown);
      i = st.slots.erase(i);
    } else {
      ++i;
    }
  }
  arm_tick(self);
}

void on_down(pool_actor* self, const caf::down_msg& dm) {
  auto& st = self->state;
  for (auto i = st.slots.begin(); i != st.slots.end(); ++i) {
    if (i->second.handle.address() != dm.source) {
      continue;
    }
    st.log->warn("repl worker stopped language={} worker={} reason=\"{}\"", st.opts.language,
                 i->first, caf::to_string(dm.reason));
    auto gone = make_error(errc::unavailable, "the " + st.opts.language + " worker stopped: "
                                                + caf::to_string(dm.reason));
    for (auto& p : i->second.own) {
      p.rp.deliver(gone);
    }
    if (!i->second.session.empty()) {
      st.sessions.erase(i->second.session);
      st.session_used.erase(i->second.session);
    }
    st.slots.erase(i);
    ++st.restarts;
    break;
  }
  // A worker that cannot keep an interpreter up is replaced after a pause
  // that doubles with each death in a row (100 ms to 10 s), not at once.
  auto delay = std::min(milliseconds{10'000},
                        milliseconds{int64_t{100} << std::min(st.deaths, 7u)});
  ++st.deaths;
  self->delayed_send(self, delay, restart_atom::value);
}

void refill(pool_actor* self) {
  auto& st = self->state;
  while (st.slots.size() < st.opts.min_workers) {
    add_worker(self);
  }
  if (!st.queue.empty() && st.slots.size() < st.opts.max_workers) {
    pump(self, add_worker(self));
  }
}

caf::behavior pool(pool_actor* self, repl_pool_options opts) {
  auto& st = self->state;
  st.opts = std::move(opts);
  st.opts.max_workers = std::max(st.opts.max_workers, std::max(st.opts.min_workers, 1u));
  self->set_down_handler([=](caf::down_msg& dm) { on_down(self, dm); });
  self->set_exit_handler([=](caf::exit_msg& msg) {
    for (auto& [id, s] : self->state.slots) {
      self->send_exit(s.handle, msg.reason);
    }
    self->quit(msg.reason);
  });
  if (st.opts.available) {
    for (uint32_t i = 0; i < st.opts.min_workers; ++i) {
      add_worker(self);
    }
  }
  return {
    [=](repl_execute& req) { return execute(self, req); },
    [=](end_repl_session& cmd) { return end_session(self, cmd.session, cmd.abort); },
    [=](tick_atom) { on_tick(self); },
    [=](restart_atom) { refill(self); },
    [=](stats_atom) {
      auto& st = self->state;
      repl_pool_info info;
      info.language = st.opts.language;
      info.available = st.opts.available;
      info.detail = st.opts.detail;
      info.sandbox = process::to_string(st.opts.worker.sandbox);
      info.workers = static_cast<uint32_t>(st.slots.size());
      for (auto& [id, s] : st.slots) {
        info.busy += s.busy;
        info.queued += static_cast<uint32_t>(s.own.size());
      }
      info.sessions = static_cast<uint32_t>(st.sessions.size());
      info.queued += static_cast<uint32_t>(st.queue.size());
      info.executions = st.executions;
      info.restarts = st.restarts;
      return info;
    },
  };
}

}  // namespace

caf::actor spawn_repl_pool(caf::actor_system& sys, repl_pool_options options) {
  return sys.spawn(pool, std::move(options));
}

}  // namespace kowalski
