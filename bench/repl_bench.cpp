// REPL benchmarks, each against its peer in the same run:
//   latency:    a trivial snippet on a warm Python worker against spawning
//               `python3 -c` for each snippet;
//   throughput: executions per second through a pool of 8 workers, in the
//               bubblewrap sandbox and with rlimits only.
#include "actors/repl_pool.hpp"
#include "actors/repl_worker.hpp"
#include "messages/atoms.hpp"
#include "messages/registry.hpp"
#include "messages/types.hpp"
#include "runtime/process/drivers.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

extern char** environ;

using namespace kowalski;
using clock_type = std::chrono::steady_clock;

namespace {

struct bench_config : caf::actor_system_config {
  bench_config() {
    register_message_types(*this);
    set("scheduler.max-threads", size_t{2});
    set("scheduler.policy", caf::atom("sharing"));
  }
};

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * (v.size() - 1))];
}

repl_worker_options worker_options(process::sandbox_mode mode, const std::string& tmp) {
  repl_worker_options o;
  o.id = "bench";
  o.command = {"/usr/bin/python3", "-I", "-B", "-u", "-c", process::python_driver()};
  o.sandbox = mode;
  o.temp_root = tmp;
  return o;
}

// Milliseconds of one `python3 -c` run, start to exit.
double spawn_once() {
  const char* argv[] = {"/usr/bin/python3", "-I", "-B", "-c", "x = 1", nullptr};
  auto start = clock_type::now();
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
    std::perror("posix_spawn");
    std::exit(1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return std::chrono::duration<double, std::milli>(clock_type::now() - start).count();
}

int latency(caf::actor_system& sys, const std::string& tmp, int warm_runs, int spawn_runs) {
  caf::scoped_actor self{sys};
  auto w = spawn_repl_worker(sys, worker_options(process::sandbox_mode::bubblewrap, tmp));
  std::vector<double> warm;
  for (int i = 0; i < warm_runs + 50; ++i) {
    auto start = clock_type::now();
    bool ok = false;
    self->request(w, std::chrono::seconds(30), repl_execute{"python3", "x = 1", "s", 0, {}, {}})
      .receive([&](repl_result& r) { ok = r.ok; }, [&](caf::error&) {});
    if (!ok) {
      std::cerr << "warm execution failed\n";
      return 1;
    }
    if (i >= 50) {  // the first ones warm caches
      warm.push_back(std::chrono::duration<double, std::milli>(clock_type::now() - start).count());
    }
  }
  self->send_exit(w, caf::exit_reason::user_shutdown);
  std::vector<double> spawned;
  for (int i = 0; i < spawn_runs; ++i) {
    spawned.push_back(spawn_once());
  }
  auto w50 = pct(warm, 0.5), w99 = pct(warm, 0.99), s50 = pct(spawned, 0.5);
  std::printf("repl_latency warm_runs=%d warm_p50_ms=%.3f warm_p99_ms=%.3f spawn_runs=%d "
              "spawn_p50_ms=%.3f spawn_p99_ms=%.3f speedup_p50=%.1f\n",
              warm_runs, w50, w99, spawn_runs, s50, pct(spawned, 0.99), s50 / w50);
  return 0;
}

double pool_rate(caf::actor_system& sys, process::sandbox_mode mode, const std::string& tmp,
                 int executions, int workers) {
  repl_pool_options o;
  o.worker = worker_options(mode, tmp);
  o.min_workers = o.max_workers = static_cast<uint32_t>(workers);
  auto pool = spawn_repl_pool(sys, o);
  caf::scoped_actor self{sys};
  // Warm every worker once.
  for (int i = 0; i < workers * 2; ++i) {
    self->send(pool, repl_execute{"python3", "x = 1", "", 0, {}, {}});
  }
  for (int i = 0; i < workers * 2; ++i) {
    self->receive([](repl_result&) {}, [](caf::error&) {});
  }
  auto start = clock_type::now();
  int sent = 0, done = 0, failed = 0;
  constexpr int window = 64;
  for (; sent < std::min(window, executions); ++sent) {
    self->send(pool, repl_execute{"python3", "x = 1", "", 0, {}, {}});
  }
  while (done < executions) {
    self->receive([&](repl_result& r) { failed += !r.ok; },
                  [&](caf::error&) { ++failed; });
    ++done;
    if (sent < executions) {
      self->send(pool, repl_execute{"python3", "x = 1", "", 0, {}, {}});
      ++sent;
    }
  }
  auto secs = std::chrono::duration<double>(clock_type::now() - start).count();
  self->send_exit(pool, caf::exit_reason::user_shutdown);
  if (failed > 0) {
    std::cerr << failed << " executions failed\n";
  }
  return executions / secs;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "all";
  auto tmp = std::filesystem::temp_directory_path().string();
  bench_config cfg;
  caf::actor_system sys{cfg};
  int rc = 0;
  if (mode == "all" || mode == "latency") {
    rc |= latency(sys, tmp, 2000, 200);
  }
  if (mode == "all" || mode == "throughput") {
    for (int run = 0; run < 2; ++run) {
      auto sandboxed = pool_rate(sys, process::sandbox_mode::bubblewrap, tmp, 5000, 8);
      auto bare = pool_rate(sys, process::sandbox_mode::rlimits_only, tmp, 5000, 8);
      std::printf("repl_throughput workers=8 bubblewrap_per_s=%.0f rlimits_only_per_s=%.0f "
                  "sandbox_cost=%.1f%%\n",
                  sandboxed, bare, (bare - sandboxed) / bare * 100.0);
    }
  }
  return rc;
}
