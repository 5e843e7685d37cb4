// Tests for the supervisor: strategies, restart policies, intensity, backoff
// and shutdown, with real actors in a real actor system.
#define BOOST_TEST_MODULE supervisor_test
#include <boost/test/unit_test.hpp>

#include "runtime/supervision/supervisor.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/registry.hpp"
#include "messages/types.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/after.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/system_messages.hpp>
#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace sv = kowalski::supervision;
using kowalski::child_atom;
using kowalski::child_info;
using kowalski::children_atom;
using kowalski::done_atom;
using kowalski::errc;
using kowalski::ping_atom;
using kowalski::started_atom;
using kowalski::subscribe_atom;
using namespace std::chrono_literals;

namespace {

constexpr auto wait_timeout = std::chrono::seconds(5);

// A child that answers pings and stops cleanly when told it is done.
caf::behavior worker(caf::event_based_actor* self) {
  return {
    [](ping_atom) { return ping_atom::value; },
    [self](done_atom) { self->quit(); },
  };
}

sv::child_spec worker_spec(std::string name,
                           sv::restart_policy policy = sv::restart_policy::permanent) {
  return {std::move(name), [](caf::actor_system& sys) { return sys.spawn(worker); }, policy};
}

// Fast restarts, a generous budget: tests that need more set their own.
sv::supervisor_options fast_options(sv::strategy kind = sv::strategy::one_for_one) {
  sv::supervisor_options opts;
  opts.name = "test_supervisor";
  opts.kind = kind;
  opts.max_restarts = 20;
  opts.window = 10s;
  opts.backoff_initial = 1ms;
  opts.backoff_max = 10ms;
  return opts;
}

caf::actor_system_config& configure(caf::actor_system_config& cfg) {
  kowalski::register_message_types(cfg);
  cfg.set("scheduler.max-threads", 2);
  return cfg;
}

bool is_restart_limit(const caf::error& err) {
  auto view = kowalski::describe(err);
  return view.ours && view.code == errc::restart_limit;
}

// Takes over the "supervisor" logger while it lives, keeping its lines.
struct captured_log {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink =
    std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(1000);

  captured_log() {
    spdlog::drop("supervisor");
    auto log = std::make_shared<spdlog::logger>("supervisor", sink);
    log->set_pattern("%v");
    log->set_level(spdlog::level::trace);
    spdlog::register_logger(log);
  }

  ~captured_log() { spdlog::drop("supervisor"); }

  // The delay_ms of every "child restarted" line, oldest first.
  std::vector<long> restart_delays() const {
    std::vector<long> out;
    const std::string key = "delay_ms=";
    for (auto& line : sink->last_formatted()) {
      auto at = line.find(key);
      if (line.rfind("child restarted", 0) == 0 && at != std::string::npos) {
        out.push_back(std::stol(line.substr(at + key.size())));
      }
    }
    return out;
  }
};

struct started_event {
  std::string name;
  caf::actor handle;
};

struct fixture {
  caf::actor_system_config cfg;
  caf::actor_system sys{configure(cfg)};
  caf::scoped_actor self{sys};
  std::vector<caf::actor> supervisors;

  // Supervisors still running would keep ~actor_system waiting forever.
  ~fixture() {
    for (auto& sup : supervisors) {
      caf::anon_send_exit(sup, caf::exit_reason::user_shutdown);
    }
  }

  caf::actor spawn(sv::supervisor_options opts, std::vector<sv::child_spec> specs) {
    auto sup = sv::spawn_supervisor(sys, std::move(opts), std::move(specs));
    supervisors.push_back(sup);
    return sup;
  }

  void subscribe(const caf::actor& sup) {
    self->send(sup, subscribe_atom::value, caf::actor_cast<caf::actor>(self));
  }

  started_event next_started() {
    started_event out;
    self->receive(
      [&](started_atom, const std::string& name, const caf::actor& handle) {
        out = {name, handle};
      },
      caf::after(wait_timeout) >> [&] { BOOST_FAIL("timeout waiting for a started message"); });
    return out;
  }

  // Collects `n` started messages by child name; a later one for the same
  // name overwrites an earlier one.
  std::map<std::string, caf::actor> next_started(std::size_t n) {
    std::map<std::string, caf::actor> out;
    for (std::size_t i = 0; i < n; ++i) {
      auto ev = next_started();
      out[ev.name] = ev.handle;
    }
    return out;
  }

  std::vector<child_info> children(const caf::actor& sup) {
    std::vector<child_info> out;
    self->request(sup, wait_timeout, children_atom::value)
      .receive([&](std::vector<child_info>& xs) { out = std::move(xs); },
               [&](caf::error& err) { BOOST_FAIL("children query failed: " << sys.render(err)); });
    return out;
  }

  std::optional<child_info> find(const caf::actor& sup, const std::string& name) {
    for (auto& x : children(sup)) {
      if (x.name == name) {
        return x;
      }
    }
    return std::nullopt;
  }

  // Asks for one child; an error comes back as the second member.
  std::pair<caf::actor, caf::error> child(const caf::actor& sup, const std::string& name) {
    std::pair<caf::actor, caf::error> out;
    self->request(sup, wait_timeout, child_atom::value, name)
      .receive([&](caf::actor& handle) { out.first = std::move(handle); },
               [&](caf::error& err) { out.second = std::move(err); });
    return out;
  }

  // Waits until the supervisor no longer lists `name`, i.e. it has handled
  // the child's down message. Polls with requests: there is no event to await.
  void await_gone(const caf::actor& sup, const std::string& name) {
    auto deadline = std::chrono::steady_clock::now() + wait_timeout;
    while (find(sup, name)) {
      if (std::chrono::steady_clock::now() > deadline) {
        BOOST_FAIL("child " << name << " still listed");
      }
    }
  }

  caf::error next_down(const caf::actor& who) {
    caf::error reason;
    self->receive(
      [&](caf::down_msg& msg) {
        BOOST_TEST((msg.source == who.address()));
        reason = std::move(msg.reason);
      },
      caf::after(wait_timeout) >> [&] { BOOST_FAIL("timeout waiting for a down message"); });
    return reason;
  }

  // Receives one down message per actor in `whos`, in any order.
  std::map<caf::actor_addr, caf::error> next_downs(const std::vector<caf::actor>& whos) {
    std::map<caf::actor_addr, caf::error> out;
    while (out.size() < whos.size()) {
      self->receive(
        [&](caf::down_msg& msg) { out.emplace(msg.source, std::move(msg.reason)); },
        caf::after(wait_timeout) >> [&] { BOOST_FAIL("timeout waiting for down messages"); });
    }
    return out;
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(supervisor, fixture)

BOOST_AUTO_TEST_CASE(starts_children_in_order_and_answers_queries) {
  auto sup = spawn(fast_options(), {worker_spec("a"), worker_spec("b")});

  auto xs = children(sup);
  BOOST_REQUIRE_EQUAL(xs.size(), 2u);
  BOOST_TEST(xs[0].name == "a");
  BOOST_TEST(xs[1].name == "b");
  BOOST_TEST(xs[0].restarts == 0u);

  auto [a, err] = child(sup, "a");
  BOOST_TEST(!err);
  BOOST_TEST((a == xs[0].handle));
  auto pong = self->request(a, wait_timeout, ping_atom::value);
  pong.receive([](ping_atom) {}, [&](caf::error& e) { BOOST_FAIL(sys.render(e)); });

  auto [none, missing] = child(sup, "nope");
  BOOST_TEST(!none);
  BOOST_TEST((kowalski::describe(missing).code == errc::not_found));
}

BOOST_AUTO_TEST_CASE(subscriber_sees_running_children_and_restarts) {
  auto sup = spawn(fast_options(), {worker_spec("a"), worker_spec("b")});
  subscribe(sup);

  auto first = next_started(2);
  BOOST_REQUIRE_EQUAL(first.size(), 2u);
  BOOST_TEST((first["a"] == child(sup, "a").first));

  caf::anon_send_exit(first["b"], caf::exit_reason::kill);
  auto ev = next_started();
  BOOST_TEST(ev.name == "b");
  BOOST_TEST((ev.handle != first["b"]));
  BOOST_TEST((ev.handle == child(sup, "b").first));
}

BOOST_AUTO_TEST_CASE(one_for_one_restarts_only_the_dead_child) {
  auto sup = spawn(fast_options(), {worker_spec("a"), worker_spec("b")});
  subscribe(sup);
  auto before = next_started(2);

  caf::anon_send_exit(before["a"], caf::exit_reason::kill);
  auto ev = next_started();
  BOOST_TEST(ev.name == "a");
  BOOST_TEST((ev.handle != before["a"]));

  auto a = find(sup, "a");
  auto b = find(sup, "b");
  BOOST_REQUIRE(a && b);
  BOOST_TEST((a->handle == ev.handle));
  BOOST_TEST(a->restarts == 1u);
  BOOST_TEST((b->handle == before["b"]));
  BOOST_TEST(b->restarts == 0u);
}

BOOST_AUTO_TEST_CASE(one_for_all_restarts_every_child) {
  auto sup = spawn(fast_options(sv::strategy::one_for_all),
                   {worker_spec("a"), worker_spec("b"), worker_spec("c")});
  subscribe(sup);
  auto before = next_started(3);
  self->monitor(before["a"]);
  self->monitor(before["c"]);

  caf::anon_send_exit(before["b"], caf::exit_reason::kill);

  // The siblings are stopped on purpose, then all come back in spec order.
  auto downs = next_downs({before["a"], before["c"]});
  BOOST_TEST((downs[before["a"].address()] == caf::exit_reason::user_shutdown));
  BOOST_TEST((downs[before["c"].address()] == caf::exit_reason::user_shutdown));
  std::vector<std::string> order;
  for (int i = 0; i < 3; ++i) {
    auto ev = next_started();
    order.push_back(ev.name);
    BOOST_TEST((ev.handle != before[ev.name]));
  }
  BOOST_TEST((order == std::vector<std::string>{"a", "b", "c"}));

  for (auto& x : children(sup)) {
    BOOST_TEST(x.restarts == 1u);
    BOOST_TEST((x.handle != before[x.name]));
  }
}

BOOST_AUTO_TEST_CASE(transient_child_restarts_after_crash_but_not_after_clean_exit) {
  auto opts = fast_options();
  opts.backoff_initial = 10ms;
  opts.backoff_max = 100ms;
  auto sup = spawn(opts, {worker_spec("t", sv::restart_policy::transient), worker_spec("p")});
  subscribe(sup);
  auto before = next_started(2);

  caf::anon_send_exit(before["t"], caf::exit_reason::kill);
  auto again = next_started();
  BOOST_TEST(again.name == "t");
  BOOST_TEST((again.handle != before["t"]));

  // A clean exit: once the supervisor has seen it, a crash of "p" must be
  // the next start. Had "t" been scheduled, its shorter backoff would fire
  // first and its notification would come first.
  self->send(again.handle, done_atom::value);
  await_gone(sup, "t");
  caf::anon_send_exit(before["p"], caf::exit_reason::kill);
  auto next = next_started();
  BOOST_TEST(next.name == "p");
  BOOST_TEST((kowalski::describe(child(sup, "t").second).code == errc::not_found));
}

BOOST_AUTO_TEST_CASE(transient_child_is_not_restarted_after_user_shutdown) {
  auto opts = fast_options();
  opts.backoff_initial = 10ms;
  opts.backoff_max = 100ms;
  auto sup = spawn(opts, {worker_spec("t", sv::restart_policy::transient), worker_spec("p")});
  subscribe(sup);
  auto before = next_started(2);

  // As above: a wrongly scheduled restart of "t" would be announced before "p".
  caf::anon_send_exit(before["t"], caf::exit_reason::user_shutdown);
  await_gone(sup, "t");
  caf::anon_send_exit(before["p"], caf::exit_reason::kill);
  BOOST_TEST(next_started().name == "p");
  BOOST_TEST(!find(sup, "t"));
}

BOOST_AUTO_TEST_CASE(temporary_child_is_never_restarted) {
  auto opts = fast_options();
  opts.backoff_initial = 10ms;
  opts.backoff_max = 100ms;
  auto sup = spawn(opts, {worker_spec("tmp", sv::restart_policy::temporary), worker_spec("p")});
  subscribe(sup);
  auto before = next_started(2);

  caf::anon_send_exit(before["tmp"], caf::exit_reason::kill);
  await_gone(sup, "tmp");
  caf::anon_send_exit(before["p"], caf::exit_reason::kill);
  BOOST_TEST(next_started().name == "p");
  BOOST_TEST(children(sup).size() == 1u);
  BOOST_TEST((kowalski::describe(child(sup, "tmp").second).code == errc::not_found));
}

BOOST_AUTO_TEST_CASE(too_many_restarts_escalate_with_restart_limit) {
  auto opts = fast_options();
  opts.max_restarts = 2;
  opts.window = 10s;
  auto sup = spawn(opts, {worker_spec("flaky"), worker_spec("sibling")});
  self->monitor(sup);
  subscribe(sup);
  auto current = next_started(2);
  self->monitor(current["sibling"]);

  // Two restarts fit the budget; the third crash exceeds it.
  auto flaky = current["flaky"];
  for (int i = 0; i < 2; ++i) {
    caf::anon_send_exit(flaky, caf::exit_reason::kill);
    auto ev = next_started();
    BOOST_REQUIRE(ev.name == "flaky");
    flaky = ev.handle;
  }
  caf::anon_send_exit(flaky, caf::exit_reason::kill);

  auto downs = next_downs({sup, current["sibling"]});
  auto sup_reason = downs[sup.address()];
  BOOST_TEST(is_restart_limit(sup_reason));
  BOOST_TEST(kowalski::describe(sup_reason).message.find("flaky") != std::string::npos);
  BOOST_TEST((downs[current["sibling"].address()] == caf::exit_reason::user_shutdown));
}

BOOST_AUTO_TEST_CASE(restarts_outside_the_window_do_not_count) {
  auto opts = fast_options();
  opts.max_restarts = 1;
  opts.window = 1ms;
  opts.backoff_initial = 5ms;
  auto sup = spawn(opts, {worker_spec("a")});
  subscribe(sup);
  auto a = next_started().handle;

  // Every restart waits at least 2.5 ms, longer than the window, so the
  // budget of one restart is never exceeded.
  for (int i = 0; i < 4; ++i) {
    caf::anon_send_exit(a, caf::exit_reason::kill);
    auto ev = next_started();
    BOOST_REQUIRE(ev.name == "a");
    a = ev.handle;
  }
  BOOST_TEST(find(sup, "a")->restarts == 4u);
}

BOOST_AUTO_TEST_CASE(failed_starts_are_retried_with_backoff) {
  auto attempts = std::make_shared<std::atomic<int>>(0);
  sv::child_spec flaky{"flaky", [attempts](caf::actor_system& sys) -> caf::actor {
                         auto n = ++*attempts;
                         if (n == 1) {
                           throw std::runtime_error("not yet");
                         }
                         if (n == 2) {
                           return caf::actor{};
                         }
                         return sys.spawn(worker);
                       }};
  auto sup = spawn(fast_options(), {std::move(flaky)});
  subscribe(sup);

  auto ev = next_started();
  BOOST_TEST(ev.name == "flaky");
  BOOST_TEST(attempts->load() == 3);
  BOOST_TEST((ev.handle == child(sup, "flaky").first));
}

BOOST_AUTO_TEST_CASE(start_that_always_fails_exhausts_the_intensity) {
  auto attempts = std::make_shared<std::atomic<int>>(0);
  sv::child_spec broken{"broken", [attempts](caf::actor_system&) -> caf::actor {
                          ++*attempts;
                          throw std::runtime_error("no luck");
                        }};
  auto opts = fast_options(sv::strategy::one_for_all);
  opts.max_restarts = 3;
  auto sup = spawn(opts, {worker_spec("ok"), std::move(broken)});
  self->monitor(sup);

  auto reason = next_down(sup);
  BOOST_TEST(is_restart_limit(reason));
  BOOST_TEST(kowalski::describe(reason).message.find("broken") != std::string::npos);
  // The first start plus three retries; the fourth retry is over budget.
  BOOST_TEST(attempts->load() == 4);
}

BOOST_AUTO_TEST_CASE(restart_delays_grow_exponentially) {
  auto opts = fast_options();
  opts.backoff_initial = 30ms;
  opts.backoff_max = 1s;
  auto sup = spawn(opts, {worker_spec("a")});
  subscribe(sup);
  auto a = next_started().handle;

  // Delays are drawn from [15, 30] ms, then [30, 60], then [60, 120].
  std::vector<std::chrono::steady_clock::duration> delays;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    caf::anon_send_exit(a, caf::exit_reason::kill);
    a = next_started().handle;
    delays.push_back(std::chrono::steady_clock::now() - t0);
  }
  BOOST_TEST((delays[2] > delays[0]));
  BOOST_TEST((delays[2] >= 59ms));
  BOOST_TEST((delays[0] >= 14ms));
  BOOST_TEST(find(sup, "a")->restarts == 3u);
}

BOOST_AUTO_TEST_CASE(restart_delays_are_jittered_between_half_and_all_of_the_backoff) {
  captured_log log;
  auto opts = fast_options();
  opts.backoff_initial = 8ms;
  opts.backoff_max = 32ms;
  auto sup = spawn(opts, {worker_spec("a")});
  subscribe(sup);
  auto a = next_started().handle;

  // Backoffs 8, 16, then 32 ms (capped); each delay is drawn from [b/2, b].
  constexpr int restarts = 10;
  std::vector<std::chrono::steady_clock::duration> waited;
  for (int i = 0; i < restarts; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    caf::anon_send_exit(a, caf::exit_reason::kill);
    a = next_started().handle;
    waited.push_back(std::chrono::steady_clock::now() - t0);
  }

  auto delays = log.restart_delays();
  BOOST_REQUIRE_EQUAL(delays.size(), static_cast<std::size_t>(restarts));
  for (int i = 0; i < restarts; ++i) {
    long backoff = std::min(8L << i, 32L);
    BOOST_TEST(delays[i] >= backoff / 2, "restart " << i + 1 << " delay " << delays[i]);
    BOOST_TEST(delays[i] <= backoff, "restart " << i + 1 << " delay " << delays[i]);
    BOOST_TEST((waited[i] >= std::chrono::milliseconds(delays[i])));
  }

  // Eight restarts share the capped backoff; without jitter their delays
  // would all be 32 ms (all equal by chance: odds about 1 in 17^7).
  std::set<long> capped(delays.begin() + 2, delays.end());
  BOOST_TEST(capped.size() >= 2u);
}

// A supervisor whose children are workers, to nest under another one.
sv::child_spec nested_spec(std::string name, uint32_t max_restarts) {
  auto start = [max_restarts](caf::actor_system& sys) {
    auto opts = fast_options();
    opts.name = "inner";
    opts.max_restarts = max_restarts;
    return sv::spawn_supervisor(sys, opts, {worker_spec("worker")});
  };
  return {std::move(name), start, sv::restart_policy::permanent};
}

// Kills the inner supervisor's worker until the inner one gives up; returns
// the reason it stopped with.
caf::error exhaust(fixture& f, const caf::actor& inner, uint32_t max_restarts) {
  f.self->monitor(inner);
  f.subscribe(inner);
  auto worker = f.next_started().handle;
  for (uint32_t i = 0; i < max_restarts; ++i) {
    caf::anon_send_exit(worker, caf::exit_reason::kill);
    auto ev = f.next_started();
    BOOST_REQUIRE(ev.name == "worker");
    worker = ev.handle;
  }
  caf::anon_send_exit(worker, caf::exit_reason::kill);
  return f.next_down(inner);
}

BOOST_AUTO_TEST_CASE(parent_restarts_a_nested_supervisor_that_gave_up) {
  auto outer = spawn(fast_options(), {nested_spec("inner", 1), worker_spec("sibling")});
  self->monitor(outer);
  subscribe(outer);
  auto first = next_started(2);
  auto inner = first["inner"];

  auto reason = exhaust(*this, inner, 1);
  BOOST_TEST(is_restart_limit(reason));
  BOOST_TEST(kowalski::describe(reason).message.find("'inner'") != std::string::npos);

  // one_for_one: the parent starts a fresh inner supervisor, with a fresh
  // budget and a working child, and leaves the sibling alone.
  auto ev = next_started();
  BOOST_TEST(ev.name == "inner");
  BOOST_TEST((ev.handle != inner));
  auto restarted = find(outer, "inner");
  BOOST_REQUIRE(restarted);
  BOOST_TEST(restarted->restarts == 1u);
  BOOST_TEST((find(outer, "sibling")->handle == first["sibling"]));
  auto [worker, err] = child(ev.handle, "worker");
  BOOST_REQUIRE(!err);
  self->request(worker, wait_timeout, ping_atom::value)
    .receive([](ping_atom) {}, [&](caf::error& e) { BOOST_FAIL(sys.render(e)); });
  auto inner_children = children(ev.handle);
  BOOST_REQUIRE_EQUAL(inner_children.size(), 1u);
  BOOST_TEST(inner_children[0].restarts == 0u);
}

BOOST_AUTO_TEST_CASE(parent_escalates_when_a_nested_supervisor_exceeds_its_budget) {
  auto opts = fast_options();
  opts.name = "outer";
  opts.max_restarts = 1;
  auto outer = spawn(opts, {nested_spec("inner", 1), worker_spec("sibling")});
  self->monitor(outer);
  subscribe(outer);
  auto first = next_started(2);
  self->monitor(first["sibling"]);

  // The parent's budget allows one restart of the inner supervisor.
  BOOST_TEST(is_restart_limit(exhaust(*this, first["inner"], 1)));
  auto ev = next_started();
  BOOST_REQUIRE(ev.name == "inner");
  BOOST_TEST(is_restart_limit(exhaust(*this, ev.handle, 1)));

  // The second give-up exceeds it: the parent stops its children and
  // escalates to whoever watches it, naming the inner supervisor.
  auto downs = next_downs({outer, first["sibling"]});
  auto reason = downs[outer.address()];
  BOOST_TEST(is_restart_limit(reason));
  auto text = kowalski::describe(reason).message;
  BOOST_TEST(text.find("supervisor 'outer'") != std::string::npos, text);
  BOOST_TEST(text.find("child 'inner'") != std::string::npos, text);
  BOOST_TEST((downs[first["sibling"].address()] == caf::exit_reason::user_shutdown));
}

BOOST_AUTO_TEST_CASE(user_shutdown_stops_children_and_supervisor) {
  auto sup = spawn(fast_options(), {worker_spec("a"), worker_spec("b"), worker_spec("c")});
  subscribe(sup);
  auto kids = next_started(3);
  std::vector<caf::actor> watched{sup, kids["a"], kids["b"], kids["c"]};
  for (auto& x : watched) {
    self->monitor(x);
  }

  caf::anon_send_exit(sup, caf::exit_reason::user_shutdown);
  auto downs = next_downs(watched);
  for (auto& x : watched) {
    BOOST_TEST((downs[x.address()] == caf::exit_reason::user_shutdown));
  }
}

BOOST_AUTO_TEST_CASE(killed_supervisor_still_stops_its_children) {
  auto sup = spawn(fast_options(), {worker_spec("a")});
  subscribe(sup);
  auto a = next_started().handle;
  self->monitor(a);

  caf::anon_send_exit(sup, caf::exit_reason::kill);
  BOOST_TEST((next_down(a) == caf::exit_reason::user_shutdown));
}

BOOST_AUTO_TEST_CASE(keeps_notifying_after_a_subscriber_died) {
  auto sup = spawn(fast_options(), {worker_spec("a")});
  auto a = child(sup, "a").first;

  // A short-lived subscriber; once it is gone the supervisor keeps working.
  {
    caf::scoped_actor listener{sys};
    listener->send(sup, subscribe_atom::value, caf::actor_cast<caf::actor>(listener));
    listener->receive([](started_atom, const std::string&, const caf::actor&) {},
                      caf::after(wait_timeout) >> [] { BOOST_FAIL("no started message"); });
  }
  subscribe(sup);
  BOOST_TEST((next_started().handle == a));
  caf::anon_send_exit(a, caf::exit_reason::kill);
  BOOST_TEST((next_started().handle != a));
}

BOOST_AUTO_TEST_SUITE_END()

// Outside the fixture: this case owns its actor system to time its teardown.
BOOST_AUTO_TEST_CASE(system_shuts_down_promptly_with_a_restart_pending) {
  caf::actor_system_config cfg;
  std::optional<caf::actor_system> sys;
  sys.emplace(configure(cfg));
  auto opts = fast_options();
  opts.backoff_initial = 30s;
  opts.backoff_max = 30s;
  auto sup = sv::spawn_supervisor(*sys, opts, {worker_spec("a")});
  {
    caf::scoped_actor self{*sys};
    self->monitor(sup);
    caf::actor a;
    self->request(sup, wait_timeout, child_atom::value, std::string{"a"})
      .receive([&](caf::actor& h) { a = h; },
               [&](caf::error& err) { BOOST_FAIL(sys->render(err)); });
    self->monitor(a);
    caf::anon_send_exit(a, caf::exit_reason::kill);
    self->receive([&](caf::down_msg& msg) { BOOST_TEST((msg.source == a.address())); },
                  caf::after(wait_timeout) >> [] { BOOST_FAIL("child did not die"); });

    // The restart timer (15-30 s) is now pending; stopping must not wait
    // for it.
    caf::anon_send_exit(sup, caf::exit_reason::user_shutdown);
    self->receive([&](caf::down_msg& msg) { BOOST_TEST((msg.source == sup.address())); },
                  caf::after(wait_timeout) >> [] { BOOST_FAIL("supervisor did not stop"); });
  }
  sup = nullptr;

  auto t0 = std::chrono::steady_clock::now();
  sys.reset();
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < 5s));
}
