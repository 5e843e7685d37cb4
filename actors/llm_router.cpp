// LLM router: dispatch to idle workers, interactive first, within rate limits.
#include "actors/llm_router.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <algorithm>
#include <deque>
#include <functional>
#include <map>
#include <unordered_map>
#include <type_traits>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;

struct queued_call {
  llm_request req;
  caf::response_promise rp;
  clock_type::time_point arrived;
  bool batch = false;
};

// A call handed to a worker and not answered yet.
struct running_call {
  caf::actor worker;
  caf::response_promise rp;
  double estimated_tokens = 0;  // charged to the rate limiter at dispatch
  std::string model;
};

double estimate(const llm_request& req) {
  std::size_t bytes = 0;
  for (auto& m : req.messages) {
    bytes += m.content.size();
  }
  return batch::estimate_tokens(bytes, req.options.max_tokens);
}

struct router_state {
  llm_router_options opts;
  std::map<std::string, caf::actor> workers;  // by child name
  std::deque<caf::actor> idle;
  std::size_t busy = 0;
  std::deque<queued_call> interactive;
  std::deque<queued_call> batch_calls;
  batch::rate_limiter limiter;
  std::unordered_map<std::string, uint32_t> model_busy;  // calls at workers, by model
  bool wake_pending = false;  // a tick is on its way for the rate limiter
  uint64_t next_call = 0;
  std::map<uint64_t, running_call> running;

  // Model and readiness queries that came before the first worker.
  std::vector<std::function<void(caf::actor)>> before_workers;
  std::vector<model_info> models;
  clock_type::time_point models_at;
  backend_status ready;
  clock_type::time_point ready_at;
  std::shared_ptr<spdlog::logger> log = logging::get("llm");
  static inline const char* name = "kowalski.llm_router";

  // Calls of `model` that may run at once; 0 = no limit of its own.
  uint32_t model_limit(const std::string& model) const {
    auto i = opts.model_limits.find(model);
    return i != opts.model_limits.end() ? i->second : opts.per_model;
  }

  bool has_room(const std::string& model) const {
    auto limit = model_limit(model);
    if (limit == 0) {
      return true;
    }
    auto i = model_busy.find(model);
    return i == model_busy.end() || i->second < limit;
  }

  void model_done(const std::string& model) {
    auto i = model_busy.find(model);
    if (i != model_busy.end() && --i->second == 0) {
      model_busy.erase(i);
    }
  }

  bool current(const caf::actor& w) const {
    for (auto& [name, h] : workers) {
      if (h == w) {
        return true;
      }
    }
    return false;
  }

  caf::actor any_worker() const {
    return workers.empty() ? caf::actor{} : workers.begin()->second;
  }
};

using router_actor = caf::stateful_actor<router_state>;

void dispatch(router_actor* self);

void release(router_actor* self, const caf::actor& w) {
  auto& st = self->state;
  --st.busy;
  // A replaced worker's late answer must not put the old handle back.
  if (st.current(w)) {
    st.idle.push_back(w);
  }
  dispatch(self);
}

// Settles call `id` unless a worker's down message already did.
template <class Outcome>
void settle(router_actor* self, uint64_t id, Outcome&& outcome) {
  auto& st = self->state;
  auto i = st.running.find(id);
  if (i == st.running.end()) {
    return;
  }
  auto call = std::move(i->second);
  st.running.erase(i);
  double actual = 0;
  if constexpr (std::is_same_v<std::decay_t<Outcome>, llm_reply>) {
    actual = double(outcome.prompt_tokens) + double(outcome.completion_tokens);
    // A backend that counts nothing keeps the estimate.
    if (actual == 0) {
      actual = call.estimated_tokens;
    }
  }
  st.limiter.settle(call.estimated_tokens, actual, clock_type::now());
  st.model_done(call.model);
  call.rp.deliver(std::forward<Outcome>(outcome));
  release(self, call.worker);
}

// Answers calls whose time in the queue ran out (interactive: the caller's
// budget; batch: queue_ms); true when `call` may still go.
bool still_wanted(router_actor* self, queued_call& call, clock_type::time_point now) {
  using std::chrono::milliseconds;
  auto waited = std::chrono::duration_cast<milliseconds>(now - call.arrived);
  if (call.batch) {
    auto limit = call.req.queue_ms > 0 ? milliseconds{call.req.queue_ms}
                                       : self->state.opts.batch_queue_limit;
    if (waited >= limit) {
      call.rp.deliver(make_error(errc::overloaded,
                                 "the batch call waited " + std::to_string(waited.count())
                                   + " ms for a free LLM worker and the rate limit; "
                                     "it was not sent",
                                 "queue"));
      return false;
    }
    return true;
  }
  // The caller's clock started when the call arrived, not now.
  auto total = call.req.timeout_ms > 0 ? milliseconds{call.req.timeout_ms}
                                       : self->state.opts.request_budget;
  if (waited >= total) {
    call.rp.deliver(make_error(errc::timeout, "the call waited "
                                                + std::to_string(waited.count())
                                                + " ms for a free LLM worker; its time ran out"));
    return false;
  }
  return true;
}

// The time a call starting now gets: a batch call its own (from now), an
// interactive call what its caller's budget has left.
uint64_t time_left(const router_state& st, const queued_call& call,
                   clock_type::time_point now) {
  using std::chrono::milliseconds;
  auto own = call.req.timeout_ms > 0 ? milliseconds{call.req.timeout_ms} : st.opts.request_budget;
  if (call.batch) {
    return static_cast<uint64_t>(own.count());
  }
  auto waited = std::chrono::duration_cast<milliseconds>(now - call.arrived);
  return static_cast<uint64_t>(std::max(milliseconds{1}, own - waited).count());
}

// The next call to start: the first interactive call whose model has room,
// else the first such batch call. Stale calls met on the way are answered.
std::pair<std::deque<queued_call>*, std::deque<queued_call>::iterator>
next_call(router_actor* self, clock_type::time_point now) {
  auto& st = self->state;
  for (auto* q : {&st.interactive, &st.batch_calls}) {
    for (auto i = q->begin(); i != q->end();) {
      if (!still_wanted(self, *i, now)) {
        i = q->erase(i);
        continue;
      }
      if (st.has_room(i->req.model)) {
        return {q, i};
      }
      ++i;
    }
  }
  return {nullptr, {}};
}

void dispatch(router_actor* self) {
  auto& st = self->state;
  while (!st.idle.empty()) {
    auto now = clock_type::now();
    auto [q, it] = next_call(self, now);
    if (q == nullptr) {
      return;
    }

    // Over the backend's rate: wake up when the next call may go.
    double tokens = 0;
    auto wait = st.limiter.admit(estimate(it->req), now, tokens);
    if (wait > clock_type::duration::zero()) {
      if (!st.wake_pending) {
        st.wake_pending = true;
        self->delayed_send(self, wait, tick_atom::value);
      }
      return;
    }

    auto call = std::move(*it);
    q->erase(it);
    call.req.timeout_ms = time_left(st, call, now);
    auto w = st.idle.front();
    st.idle.pop_front();
    ++st.busy;
    ++st.model_busy[call.req.model];
    auto id = ++st.next_call;
    st.running.emplace(id, running_call{w, call.rp, tokens, call.req.model});
    // The worker stops the call at its timeout; this is the backstop.
    using std::chrono::milliseconds;
    auto backstop = std::max(st.opts.call_timeout,
                             milliseconds{call.req.timeout_ms} + std::chrono::seconds(10));
    self->request(w, backstop, std::move(call.req))
      .then([=](llm_reply& reply) { settle(self, id, std::move(reply)); },
            [=](caf::error& err) { settle(self, id, std::move(err)); });
  }
}

// A worker that stops mid-call cannot answer: its caller hears it at once
// instead of after the call timeout. The supervisor starts a replacement.
void on_worker_down(router_actor* self, const caf::down_msg& dm) {
  auto& st = self->state;
  st.idle.erase(std::remove_if(st.idle.begin(), st.idle.end(),
                               [&](const caf::actor& w) { return w.address() == dm.source; }),
                st.idle.end());
  for (auto i = st.running.begin(); i != st.running.end();) {
    if (i->second.worker.address() != dm.source) {
      ++i;
      continue;
    }
    i->second.rp.deliver(make_error(errc::backend_error,
                                    "the LLM worker stopped during the call; it is restarted"));
    --st.busy;
    st.model_done(i->second.model);
    i = st.running.erase(i);
  }
}

void on_worker_started(router_actor* self, const std::string& name, caf::actor h) {
  auto& st = self->state;
  auto i = st.workers.find(name);
  if (i != st.workers.end()) {
    auto old = i->second;
    st.idle.erase(std::remove(st.idle.begin(), st.idle.end(), old), st.idle.end());
  }
  st.workers[name] = h;
  self->monitor(h);
  st.idle.push_back(h);
  auto waiting = std::move(st.before_workers);
  st.before_workers.clear();
  for (auto& fetch : waiting) {
    fetch(h);
  }
  dispatch(self);
}

template <class T, class Fetch>
caf::response_promise cached(router_actor* self, T& value, clock_type::time_point& at,
                             std::chrono::milliseconds ttl, Fetch fetch) {
  auto rp = self->make_response_promise();
  if (at != clock_type::time_point{} && clock_type::now() - at < ttl) {
    rp.deliver(value);
    return rp;
  }
  auto w = self->state.any_worker();
  if (!w) {
    // Right after start the workers are on their way; the caller's own
    // timeout bounds the wait.
    self->state.before_workers.push_back([fetch, rp](caf::actor w) { fetch(w, rp); });
    return rp;
  }
  fetch(w, rp);
  return rp;
}

caf::result<llm_reply> enqueue(router_actor* self, llm_request&& req, bool batch) {
  auto& st = self->state;
  auto& q = batch ? st.batch_calls : st.interactive;
  if (q.size() >= st.opts.queue_limit) {
    return make_error(errc::overloaded,
                      "the LLM queue is full (" + std::to_string(st.opts.queue_limit)
                        + " calls waiting)");
  }
  auto rp = self->make_response_promise();
  q.push_back(queued_call{std::move(req), rp, clock_type::now(), batch});
  dispatch(self);
  return caf::delegated<llm_reply>{};
}

caf::behavior router(router_actor* self, caf::actor sup, llm_router_options opts) {
  self->state.opts = opts;
  self->state.limiter = batch::rate_limiter{opts.rates, clock_type::now()};
  self->set_down_handler([=](caf::down_msg& dm) { on_worker_down(self, dm); });
  self->send(sup, subscribe_atom::value, caf::actor_cast<caf::actor>(self));
  return {
    [=](llm_request& req) -> caf::result<llm_reply> {
      return enqueue(self, std::move(req), false);
    },
    [=](batch_atom, llm_request& req) -> caf::result<llm_reply> {
      return enqueue(self, std::move(req), true);
    },
    [=](tick_atom) {
      self->state.wake_pending = false;
      dispatch(self);
    },
    [=](started_atom, const std::string& name, caf::actor h) {
      on_worker_started(self, name, std::move(h));
    },
    [=](models_atom) {
      auto& st = self->state;
      return cached(self, st.models, st.models_at, st.opts.models_ttl,
                    [=](caf::actor w, caf::response_promise rp) {
                      self->request(w, self->state.opts.call_timeout, models_atom::value)
                        .then(
                          [=](std::vector<model_info>& models) mutable {
                            self->state.models = models;
                            self->state.models_at = clock_type::now();
                            rp.deliver(std::move(models));
                          },
                          [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
                    });
    },
    [=](ready_atom) {
      auto& st = self->state;
      return cached(self, st.ready, st.ready_at, st.opts.ready_ttl,
                    [=](caf::actor w, caf::response_promise rp) {
                      self->request(w, self->state.opts.call_timeout, ready_atom::value)
                        .then(
                          [=](backend_status& status) mutable {
                            self->state.ready = status;
                            self->state.ready_at = clock_type::now();
                            rp.deliver(std::move(status));
                          },
                          [=](caf::error& err) mutable {
                            rp.deliver(backend_status{false, "", describe(err).message});
                          });
                    });
    },
    [=](stats_atom) {
      auto& st = self->state;
      return caf::make_message(uint64_t{st.workers.size()}, uint64_t{st.busy},
                               uint64_t{st.interactive.size() + st.batch_calls.size()});
    },
  };
}

}  // namespace

caf::actor spawn_llm_router(caf::actor_system& sys, caf::actor worker_supervisor,
                            llm_router_options options) {
  return sys.spawn(router, std::move(worker_supervisor), options);
}

}  // namespace kowalski
