// RLM benchmarks, each against a reference measured in the same run:
//   turn:    what the engine adds to a turn besides the model's time (a
//            scripted root model at zero latency, trivial code), against a
//            hand-written loop doing the least a durable turn needs: one
//            REPL execution and one durable commit;
//   load:    loading a 100 MB context into a run's REPL, inline (written to
//            disk first) and from a file, against python3 reading the same
//            file in a plain process;
//   batched: llm_query_batched of 200 prompts with 50 ms backend latency at
//            the run's concurrency of 16, against the ideal (13 waves of
//            50 ms) and against the same prompts one after another, as the
//            reference implementation runs them.
// Usage: rlm_bench all|turn|load|batched
#include "messages/atoms.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"
#include "tests/rig/scripted_llm.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

extern char** environ;

using namespace kowalski;
using clock_type = std::chrono::steady_clock;
using std::chrono::seconds;

namespace {

double pct(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

bool is_root(const std::string& body) {
  return body.find("root model of a Recursive Language Model") != std::string::npos;
}

struct bench_node {
  std::filesystem::path dir;
  settings cfg;
  std::unique_ptr<node> n;

  bench_node(const std::string& backend, unsigned workers) {
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-rlm-bench-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir / "files");
    cfg.data_dir = (dir / "data").string();
    cfg.http_port = 0;
    cfg.log_level = "error";
    cfg.llm_provider = "ollama";
    cfg.ollama_url = backend;
    cfg.llm_model = "test-model";
    cfg.llm_workers = workers;
    cfg.client_max_idle_per_host = workers;
    cfg.store_map_size = std::size_t{1} << 30;
    cfg.rlm_system_prompt_file = std::string{KOWALSKI_SOURCE_DIR}
                                 + "/config/prompts/rlm_system.md";
    cfg.rlm_context_dirs = (dir / "files").string();
    std::string error;
    n = node::start(cfg, error);
    if (!n) {
      std::cerr << "rlm_bench: node did not start: " << error << "\n";
      std::exit(1);
    }
  }

  ~bench_node() {
    n.reset();
    std::filesystem::remove_all(dir);
  }

  // Starts a run and waits for its end; returns its record.
  rlm_run_info run(rlm_start start) {
    caf::scoped_actor self{n->system()};
    rlm_run_info info;
    self->request(n->rlm(), seconds(600), submit_rlm_run{std::move(start)})
      .receive([&](rlm_run_info& i) { info = std::move(i); },
               [&](caf::error& e) {
                 std::cerr << "rlm_bench: submit failed: " << caf::to_string(e) << "\n";
                 std::exit(1);
               });
    while (info.status == "running") {
      self->request(n->rlm(), seconds(700), get_rlm_run{info.id, 600'000})
        .receive([&](rlm_run_info& i) { info = std::move(i); },
                 [&](caf::error& e) {
                   std::cerr << "rlm_bench: " << caf::to_string(e) << "\n";
                   std::exit(1);
                 });
    }
    return info;
  }

  std::vector<rlm_turn> turns(const std::string& id) {
    caf::scoped_actor self{n->system()};
    std::vector<rlm_turn> out;
    self->request(n->rlm(), seconds(60), get_rlm_turns{id, 0, 0, 0})
      .receive([&](rlm_turn_page& p) { out = std::move(p.turns); },
               [&](caf::error& e) { std::cerr << caf::to_string(e) << "\n"; });
    return out;
  }
};

rlm_start start_of(std::string question, std::string context, uint32_t iterations = 0) {
  rlm_start s;
  s.question = std::move(question);
  s.context = std::move(context);
  s.max_iterations = iterations;
  return s;
}

void turn_bench() {
  testing::scripted_llm server;
  server.set_script([](const std::string& body) {
    testing::behaviour b;
    if (is_root(body)) {
      b.reply = body.find("Give your final answer now") != std::string::npos
                  ? "FINAL(done)"
                  : "```repl\nx = 1\n```";
    }
    return b;
  });
  bench_node bn(server.base_url(), 4);
  constexpr uint32_t turns = 300;
  std::vector<double> engine;
  for (int round = 0; round < 2; ++round) {
    auto info = bn.run(start_of("time the turns", "ctx", turns));
    auto ts = bn.turns(info.id);
    // Turn 1 also loads the context: left out.
    for (std::size_t i = 1; i < ts.size(); ++i) {
      auto between = ts[i].duration_us - ts[i - 1].duration_us;
      engine.push_back(static_cast<double>(between - ts[i].model_us) / 1000.0);
    }
  }
  // The reference: one execution and one durable commit per turn.
  caf::scoped_actor self{bn.n->system()};
  std::vector<double> direct;
  for (uint32_t i = 0; i < 2 * turns; ++i) {
    auto t = clock_type::now();
    self->request(bn.n->repl(), seconds(30), repl_execute{"python3", "x = 1", "bench", 0, {}, {}})
      .receive([](repl_result&) {}, [](caf::error& e) { std::cerr << caf::to_string(e) << "\n"; });
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "meta", "bench-turn", std::string(600, 'x')});
    self->request(bn.n->writer(), seconds(30), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { std::cerr << caf::to_string(e) << "\n"; });
    direct.push_back(ms_since(t));
  }
  std::printf("rlm turn engine_ms p50=%.3f p90=%.3f p99=%.3f (n=%zu, model time excluded) "
              "direct_ms p50=%.3f p90=%.3f ratio_p50=%.2f\n",
              pct(engine, 0.5), pct(engine, 0.9), pct(engine, 0.99), engine.size(),
              pct(direct, 0.5), pct(direct, 0.9), pct(engine, 0.5) / pct(direct, 0.5));
}

double python_read_ms(const std::string& path) {
  auto code = "open('" + path + "', encoding='utf-8').read()";
  const char* argv[] = {"/usr/bin/python3", "-I", "-B", "-c", code.c_str(), nullptr};
  auto t = clock_type::now();
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, const_cast<char**>(argv), environ) != 0) {
    std::perror("posix_spawn");
    std::exit(1);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return ms_since(t);
}

void load_bench() {
  testing::scripted_llm server;
  server.set_script([](const std::string& body) {
    testing::behaviour b;
    if (is_root(body)) {
      b.reply = "FINAL(loaded)";
    }
    return b;
  });
  bench_node bn(server.base_url(), 4);
  std::string context;
  context.reserve(100u << 20);
  const std::string line = "a line of a large context, one of very many of them.\n";
  while (context.size() + line.size() <= (100u << 20)) {
    context += line;
  }
  auto path = (bn.dir / "files" / "big.txt").string();
  std::ofstream{path, std::ios::binary} << context;
  auto measure = [&](rlm_start s) {
    server.reset_counters();
    auto t = clock_type::now();
    caf::scoped_actor self{bn.n->system()};
    std::string id;
    self->request(bn.n->rlm(), seconds(600), submit_rlm_run{std::move(s)})
      .receive([&](rlm_run_info& i) { id = i.id; },
               [](caf::error& e) { std::cerr << caf::to_string(e) << "\n"; });
    // The first root request goes out once the REPL holds the context.
    if (!server.wait_requests(1, std::chrono::minutes(2))) {
      std::cerr << "rlm_bench: the context never loaded\n";
      std::exit(1);
    }
    auto ms = ms_since(t);
    self->request(bn.n->rlm(), seconds(120), get_rlm_run{id, 60'000})
      .receive([](rlm_run_info&) {}, [](caf::error&) {});
    return ms;
  };
  for (int round = 0; round < 3; ++round) {
    auto inline_ms = measure(start_of("load it", context));
    auto s = start_of("load it", {});
    s.context_file = path;
    auto file_ms = measure(std::move(s));
    auto py_ms = python_read_ms(path);
    std::printf("rlm load 100 MB: inline_ms=%.0f file_ms=%.0f python_read_ms=%.0f "
                "file/python=%.2f\n",
                inline_ms, file_ms, py_ms, file_ms / py_ms);
  }
}

double inner_seconds(const rlm_turn& t) {
  // The code printed "elapsed <seconds> <ok answers>".
  auto& out = t.outputs.empty() ? std::string{} : t.outputs[0];
  auto at = out.find("elapsed ");
  return at == std::string::npos ? -1 : std::stod(out.substr(at + 8));
}

void batched_bench() {
  testing::scripted_llm server({0, 4, {"test-model"}});
  bool sequential = false;
  server.set_script([&sequential](const std::string& body) {
    testing::behaviour b;
    if (!is_root(body)) {
      b.latency = std::chrono::milliseconds(50);
      return b;
    }
    if (body.find("REPL output") != std::string::npos) {
      b.reply = "FINAL(done)";
    } else if (sequential) {
      b.reply = "```repl\nimport time\nt = time.perf_counter()\n"
                "r = [llm_query('p%d' % i) for i in range(200)]\n"
                "print('elapsed', time.perf_counter() - t, "
                "sum(x.startswith('echo') for x in r))\n```";
    } else {
      b.reply = "```repl\nimport time\nt = time.perf_counter()\n"
                "r = llm_query_batched(['p%d' % i for i in range(200)])\n"
                "print('elapsed', time.perf_counter() - t, "
                "sum(x.startswith('echo') for x in r))\n```";
    }
    return b;
  });
  bench_node bn(server.base_url(), 32);
  const double ideal = 13 * 0.050;  // ceil(200 / 16) waves of 50 ms
  double seq = 0;
  for (int round = 0; round < 3; ++round) {
    sequential = false;
    auto info = bn.run(start_of("fan out", "ctx"));
    auto par = inner_seconds(bn.turns(info.id).at(0));
    if (round == 0) {
      sequential = true;
      auto sinfo = bn.run(start_of("one by one", "ctx"));
      seq = inner_seconds(bn.turns(sinfo.id).at(0));
    }
    std::printf("rlm llm_query_batched 200 x 50 ms at 16: wall_s=%.3f ideal_s=%.3f "
                "wall/ideal=%.3f sequential_s=%.3f speedup=%.1fx max_in_flight=%zu\n",
                par, ideal, par / ideal, seq, seq / par, server.max_in_flight());
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = argc > 1 ? argv[1] : "all";
  if (which == "all" || which == "turn") {
    turn_bench();
  }
  if (which == "all" || which == "load") {
    load_bench();
  }
  if (which == "all" || which == "batched") {
    batched_bench();
  }
  return 0;
}
