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
  call.rp.deliver(std::forward<Outcome>(outcome));
  release(self, call.worker);
}

// Fails interactive calls whose time ran out while they waited; true when
// `call` may still go.
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
    if (call.req.timeout_ms == 0) {
      call.req.timeout_ms = static_cast<uint64_t>(self->state.opts.request_budget.count());
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
  call.req.timeout_ms = static_cast<uint64_t>((total - waited).count());
  return true;
}

void dispatch(router_actor* self) {
  auto& st = self->state;
  while (!st.idle.empty()) {
    auto& q = !st.interactive.empty() ? st.interactive : st.batch_calls;
    if (q.empty()) {
      return;
    }
    auto now = clock_type::now();
    if (!still_wanted(self, q.front(), now)) {
      q.pop_front();
      continue;
    }

    // Over the backend's rate: wake up when the next call may go.
    double tokens = 0;
    auto wait = st.limiter.admit(estimate(q.front().req), now, tokens);
    if (wait > clock_type::duration::zero()) {
      if (!st.wake_pending) {
        st.wake_pending = true;
        self->delayed_send(self, wait, tick_atom::value);
      }
      return;
    }

    auto call = std::move(q.front());
    q.pop_front();
    auto w = st.idle.front();
    st.idle.pop_front();
    ++st.busy;
    auto id = ++st.next_call;
    st.running.emplace(id, running_call{w, call.rp, tokens});
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
