// The supervisor actor: starts children, watches them through monitors and
// restarts them per strategy, with restart intensity and exponential backoff.
#include "runtime/supervision/supervisor.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"

#include <caf/actor_cast.hpp>
#include <caf/actor_system.hpp>
#include <caf/behavior.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/result.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/system_messages.hpp>

#include <spdlog/spdlog.h>

#include <algorithm>
#include <deque>
#include <exception>
#include <memory>
#include <optional>
#include <random>
#include <utility>

namespace kowalski::supervision {

namespace {

using steady_clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

enum class child_status {
  running,  // started and monitored
  waiting,  // stopped; a restart timer or a restart round will start it
  done,     // stopped for good: temporary, or transient after a clean exit
};

struct child_entry {
  child_spec spec;
  caf::actor handle;  // valid exactly while status == running
  child_status status = child_status::waiting;
  bool started_once = false;
  uint32_t restarts = 0;       // successful starts after the first one
  uint64_t start_seq = 0;      // orders running children by age, for shutdown
  uint64_t pending_gen = 0;    // one_for_one: generation of its restart timer
  milliseconds last_delay{0};  // backoff that preceded the coming restart
};

// Exits that mean "the child meant to stop": no restart for transient children.
bool is_deliberate_exit(const caf::error& reason) {
  return !reason || reason == caf::exit_reason::normal
         || reason == caf::exit_reason::user_shutdown;
}

bool wants_restart(restart_policy policy, const caf::error& reason) {
  switch (policy) {
    case restart_policy::permanent: return true;
    case restart_policy::transient: return !is_deliberate_exit(reason);
    case restart_policy::temporary: return false;
  }
  return false;
}

std::shared_ptr<spdlog::logger> logger() {
  auto log = spdlog::get("supervisor");
  return log ? log : spdlog::default_logger();
}

class supervisor_state;
using supervisor_actor = caf::stateful_actor<supervisor_state>;

class supervisor_state {
 public:
  explicit supervisor_state(supervisor_actor* self)
      : self_(self), rng_(std::random_device{}()) {
  }

  supervisor_state(const supervisor_state&) = delete;
  supervisor_state& operator=(const supervisor_state&) = delete;

  // Runs when the actor terminates for any reason, `kill` included, which
  // skips the exit handler: children must not outlive their supervisor.
  ~supervisor_state() {
    for (auto& child : children_) {
      if (child.status == child_status::running) {
        caf::anon_send_exit(child.handle, caf::exit_reason::user_shutdown);
      }
    }
  }

  /// Starts all children in spec order. Returns false when the supervisor
  /// already gave up (restart intensity exhausted by failed starts).
  bool init(supervisor_options options, std::vector<child_spec> specs) {
    options_ = std::move(options);
    children_.reserve(specs.size());
    for (auto& spec : specs) {
      children_.emplace_back().spec = std::move(spec);
    }
    if (options_.kind == strategy::one_for_all) {
      start_round();
    } else {
      for (std::size_t i = 0; i < children_.size() && !stopped_; ++i) {
        start_one(i);
      }
    }
    return !stopped_;
  }

  std::vector<child_info> running_children() const {
    std::vector<child_info> out;
    for (auto& child : children_) {
      if (child.status == child_status::running) {
        out.push_back(child_info{child.spec.name, child.handle, child.restarts});
      }
    }
    return out;
  }

  caf::result<caf::actor> find_child(const std::string& name) const {
    for (auto& child : children_) {
      if (child.spec.name == name && child.status == child_status::running) {
        return child.handle;
      }
    }
    return make_error(errc::not_found, "no running child named '" + name + "'", "name");
  }

  void subscribe(const caf::actor& listener) {
    if (!listener) {
      return;
    }
    auto known = std::any_of(listeners_.begin(), listeners_.end(),
                             [&](const caf::actor& x) { return x == listener; });
    if (!known) {
      self_->monitor(listener);
      listeners_.push_back(listener);
    }
    for (auto& child : children_) {
      if (child.status == child_status::running) {
        self_->send(listener, started_atom::value, child.spec.name, child.handle);
      }
    }
  }

  void on_down(const caf::down_msg& msg) {
    auto is_source = [&](const child_entry& x) {
      return x.status == child_status::running && x.handle.address() == msg.source;
    };
    auto i = std::find_if(children_.begin(), children_.end(), is_source);
    if (i != children_.end()) {
      on_child_down(static_cast<std::size_t>(i - children_.begin()), msg.reason);
      return;
    }

    // Not a current child (children stopped on purpose are demonitored, but a
    // down message may already have been queued): a listener, or stale.
    listeners_.erase(std::remove_if(listeners_.begin(), listeners_.end(),
                                    [&](const caf::actor& x) {
                                      return x.address() == msg.source;
                                    }),
                     listeners_.end());
  }

  void on_exit(const caf::exit_msg& msg) {
    // Like CAF's default handler: a linked peer that finished cleanly is no
    // reason to tear the tree down.
    if (!msg.reason) {
      return;
    }
    logger()->info("supervisor stopping supervisor={} reason={}", options_.name,
                   self_->system().render(msg.reason));
    shut_down(msg.reason);
  }

  void on_restart_timer(uint64_t gen) {
    // Generations make timers that were overtaken by events harmless.
    if (gen == 0 || stopped_) {
      return;
    }
    if (options_.kind == strategy::one_for_all) {
      if (gen == round_gen_) {
        round_gen_ = 0;
        start_round();
      }
      return;
    }
    for (std::size_t i = 0; i < children_.size(); ++i) {
      if (children_[i].pending_gen == gen) {
        children_[i].pending_gen = 0;
        start_one(i);
        return;
      }
    }
  }

 private:
  void on_child_down(std::size_t index, const caf::error& reason) {
    auto& child = children_[index];
    child.handle = nullptr;
    auto restart = wants_restart(child.spec.policy, reason);
    logger()->debug("child down supervisor={} child={} reason={} restart={}", options_.name,
                    child.spec.name, self_->system().render(reason), restart);
    if (!restart) {
      child.status = child_status::done;
      logger()->info("child stopped supervisor={} child={}", options_.name, child.spec.name);
      return;
    }
    child.status = child_status::waiting;
    if (options_.kind == strategy::one_for_all) {
      restart_all(child.spec.name);
    } else {
      schedule_one(index);
    }
  }

  // one_for_one: starts children_[index] now, or schedules a retry.
  void start_one(std::size_t index) {
    auto& child = children_[index];
    if (try_start(child)) {
      return;
    }
    if (child.spec.policy == restart_policy::temporary) {
      child.status = child_status::done;
      return;
    }
    schedule_one(index);
  }

  void schedule_one(std::size_t index) {
    auto& child = children_[index];
    auto delay = record_restart(child.spec.name);
    if (!delay) {
      return;
    }
    child.status = child_status::waiting;
    child.last_delay = *delay;
    child.pending_gen = ++generation_;
    send_restart_timer(*delay, child.pending_gen);
  }

  // one_for_all: starts every waiting child in spec order; on the first
  // failure the children started in this round are stopped again.
  void start_round() {
    for (auto& child : children_) {
      if (child.status != child_status::waiting) {
        continue;
      }
      if (try_start(child)) {
        continue;
      }
      if (child.spec.policy == restart_policy::temporary) {
        child.status = child_status::done;
        continue;
      }
      restart_all(child.spec.name);
      return;
    }
  }

  // one_for_all: stops the other children and schedules a new round.
  void restart_all(const std::string& culprit) {
    stop_children();
    auto delay = record_restart(culprit);
    if (!delay) {
      return;
    }
    for (auto& child : children_) {
      child.last_delay = *delay;
    }
    round_gen_ = ++generation_;
    send_restart_timer(*delay, round_gen_);
  }

  void send_restart_timer(milliseconds delay, uint64_t gen) {
    // A temporary handle only: a self-handle kept in the state would keep the
    // actor alive and hang ~actor_system.
    self_->delayed_send(caf::actor_cast<caf::actor>(self_), delay, restart_atom::value, gen);
  }

  // Runs the start function; on success the child is monitored, announced
  // and marked running.
  bool try_start(child_entry& child) {
    caf::actor handle;
    std::string failure;
    try {
      handle = child.spec.start(self_->system());
      if (!handle) {
        failure = "start returned an invalid handle";
      }
    } catch (const std::exception& e) {
      failure = std::string{"start threw: "} + e.what();
    } catch (...) {
      failure = "start threw a non-standard exception";
    }
    if (!failure.empty()) {
      logger()->warn("child start failed supervisor={} child={} error={}", options_.name,
                     child.spec.name, failure);
      return false;
    }
    mark_running(child, std::move(handle));
    return true;
  }

  void mark_running(child_entry& child, caf::actor handle) {
    self_->monitor(handle);
    child.handle = std::move(handle);
    child.status = child_status::running;
    child.start_seq = ++start_seq_;
    if (child.started_once) {
      ++child.restarts;
      logger()->warn("child restarted supervisor={} child={} restarts={} delay_ms={}",
                     options_.name, child.spec.name, child.restarts,
                     child.last_delay.count());
    }
    child.started_once = true;
    for (auto& listener : listeners_) {
      self_->send(listener, started_atom::value, child.spec.name, child.handle);
    }
  }

  // Counts one restart against the intensity budget. Returns the backoff to
  // wait, or nothing after escalating.
  std::optional<milliseconds> record_restart(const std::string& culprit) {
    auto now = steady_clock::now();
    while (!restarts_.empty() && now - restarts_.front() > options_.window) {
      restarts_.pop_front();
    }
    restarts_.push_back(now);
    if (restarts_.size() > options_.max_restarts) {
      escalate(culprit);
      return std::nullopt;
    }
    return jittered(backoff(restarts_.size()));
  }

  // backoff_initial * 2^(n-1), capped at backoff_max.
  milliseconds backoff(std::size_t n) const {
    auto delay = options_.backoff_initial;
    for (std::size_t i = 1; i < n && delay.count() > 0 && delay < options_.backoff_max; ++i) {
      delay *= 2;
    }
    return std::min(delay, options_.backoff_max);
  }

  // Jitter in [delay/2, delay], so that siblings restarted together do
  // not retry in lockstep.
  milliseconds jittered(milliseconds delay) {
    if (delay.count() <= 1) {
      return delay;
    }
    std::uniform_int_distribution<milliseconds::rep> pick{delay.count() / 2, delay.count()};
    return milliseconds{pick(rng_)};
  }

  void escalate(const std::string& culprit) {
    auto window_ms = options_.window.count();
    logger()->error("restart limit reached supervisor={} child={} max_restarts={} window_ms={}",
                    options_.name, culprit, options_.max_restarts, window_ms);
    auto text = "supervisor '" + options_.name + "' gave up: child '" + culprit
                + "' needed more than " + std::to_string(options_.max_restarts)
                + " restarts within " + std::to_string(window_ms) + " ms";
    shut_down(make_error(errc::restart_limit, std::move(text)));
  }

  void shut_down(caf::error reason) {
    stopped_ = true;
    stop_children();
    self_->quit(std::move(reason));
  }

  // Sends user_shutdown to the running children, newest first. They are
  // demonitored first so that their down messages do not look like crashes.
  // Limitation: the supervisor does not wait for one child to terminate before
  // signalling the next, so "newest first" orders the signals, not the exits;
  // a child that traps the exit and keeps running is not killed later.
  void stop_children() {
    std::vector<child_entry*> running;
    for (auto& child : children_) {
      if (child.status == child_status::running) {
        running.push_back(&child);
      }
    }
    std::sort(running.begin(), running.end(),
              [](auto* a, auto* b) { return a->start_seq > b->start_seq; });
    for (auto* child : running) {
      self_->demonitor(child->handle);
      self_->send_exit(child->handle, caf::exit_reason::user_shutdown);
      child->handle = nullptr;
      auto temporary = child->spec.policy == restart_policy::temporary;
      child->status = temporary ? child_status::done : child_status::waiting;
    }
  }

  supervisor_actor* self_;
  supervisor_options options_;
  std::vector<child_entry> children_;
  std::vector<caf::actor> listeners_;
  std::deque<steady_clock::time_point> restarts_;  // inside the window
  std::minstd_rand rng_;
  uint64_t generation_ = 0;  // last restart timer issued
  uint64_t round_gen_ = 0;   // one_for_all: the timer of the pending round
  uint64_t start_seq_ = 0;
  bool stopped_ = false;
};

caf::behavior supervisor_impl(supervisor_actor* self, supervisor_options options,
                              std::vector<child_spec> specs) {
  self->set_down_handler([self](caf::down_msg& msg) { self->state.on_down(msg); });
  self->set_exit_handler([self](caf::exit_msg& msg) { self->state.on_exit(msg); });
  if (!self->state.init(std::move(options), std::move(specs))) {
    // Gave up while starting: no behavior, so the actor terminates.
    return {};
  }
  return {
    [self](children_atom) { return self->state.running_children(); },
    [self](child_atom, const std::string& name) { return self->state.find_child(name); },
    [self](subscribe_atom, const caf::actor& listener) { self->state.subscribe(listener); },
    [self](restart_atom, uint64_t gen) { self->state.on_restart_timer(gen); },
  };
}

}  // namespace

caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_options options,
                            std::vector<child_spec> children) {
  return sys.spawn(supervisor_impl, std::move(options), std::move(children));
}

}  // namespace kowalski::supervision
