// Memory benchmarks, each against a reference measured in the same run:
//   index:   HNSW search over 100,000 vectors of 384 dimensions (clustered,
//            as embeddings are), p50/p99 latency and recall@10, against
//            exact search over the same vectors;
//   appends: durable episodic appends per second with many in flight (they
//            share commits), against one append at a time (a commit each);
//   reload:  start-up of a node holding 100,000 facts: loading the saved
//            index, against building it again from LMDB;
//   embed:   durable appends through a remote (Ollama-protocol) embedder
//            that takes 5 ms per request, texts of concurrent adds batched,
//            against one text per request, both with 2 requests in flight;
//   recall:  episodic search over 100,000 episodes in 50 conversations,
//            within one conversation (what a chat turn asks), against the
//            whole tier.
// Usage: memory_bench all|index|appends|reload|embed|recall
#include "messages/atoms.hpp"
#include "messages/types.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/memory/vector_index.hpp"
#include "runtime/node/node.hpp"
#include "tests/rig/scripted_llm.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <iostream>
#include <random>
#include <set>
#include <string>
#include <vector>

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

// Vectors around 1,000 centres, scaled to unit length: neighbours exist,
// as they do among the embeddings of real texts.
std::vector<std::vector<float>> clustered(std::size_t n, std::size_t dims, uint64_t seed) {
  std::mt19937_64 rng{seed};
  std::normal_distribution<float> g{0, 1};
  std::vector<std::vector<float>> centres(1000, std::vector<float>(dims));
  for (auto& c : centres) {
    for (auto& x : c) {
      x = g(rng);
    }
  }
  std::vector<std::vector<float>> out(n, std::vector<float>(dims));
  for (std::size_t i = 0; i < n; ++i) {
    auto& c = centres[rng() % centres.size()];
    for (std::size_t d = 0; d < dims; ++d) {
      out[i][d] = c[d] + 0.6f * g(rng);
    }
    memory::normalize(out[i]);
  }
  return out;
}

void index_bench() {
  constexpr std::size_t n = 100'000, dims = 384, queries = 1000, k = 10;
  auto data = clustered(n + queries, dims, 42);
  memory::index_options io;
  io.dims = dims;
  auto t = clock_type::now();
  memory::vector_index index{io};
  std::string error;
  for (std::size_t i = 0; i < n; ++i) {
    index.add(i, data[i].data(), error);
  }
  auto build_s = ms_since(t) / 1000;
  // Exact answers, and how long exact search takes.
  std::vector<std::set<uint64_t>> truth(queries);
  std::vector<double> exact_ms;
  for (std::size_t q = 0; q < queries; ++q) {
    auto& v = data[n + q];
    auto s = clock_type::now();
    std::vector<std::pair<float, uint64_t>> all(n);
    for (std::size_t i = 0; i < n; ++i) {
      all[i] = {memory::dot(v.data(), data[i].data(), dims), i};
    }
    std::partial_sort(all.begin(), all.begin() + k, all.end(),
                      [](auto& a, auto& b) { return a.first > b.first; });
    exact_ms.push_back(ms_since(s));
    for (std::size_t j = 0; j < k; ++j) {
      truth[q].insert(all[j].second);
    }
  }
  std::printf("memory index build: %zu vectors x %zu dims in %.1f s (M=16, ef_construction=200)\n",
              n, dims, build_s);
  for (std::size_t ef : {32, 64, 128}) {
    io.ef_search = ef;
    std::string path = "/tmp/kowalski-memory-bench-" + std::to_string(::getpid()) + ".hnsw";
    index.save(path, error);
    auto tuned = memory::vector_index::load(path, io, error);
    std::filesystem::remove(path);
    std::vector<double> lat;
    std::size_t found = 0;
    for (std::size_t q = 0; q < queries; ++q) {
      auto s = clock_type::now();
      auto hits = tuned->search(data[n + q].data(), k);
      lat.push_back(ms_since(s));
      for (auto& [label, sim] : hits) {
        found += truth[q].count(label);
      }
    }
    std::printf("memory index search ef=%zu: p50=%.3f ms p99=%.3f ms recall@10=%.4f; "
                "exact p50=%.3f ms; speedup p50=%.0fx\n",
                ef, pct(lat, 0.5), pct(lat, 0.99),
                static_cast<double>(found) / static_cast<double>(queries * k),
                pct(exact_ms, 0.5), pct(exact_ms, 0.5) / pct(lat, 0.5));
  }
}

struct bench_node {
  std::filesystem::path dir;
  settings cfg;
  std::unique_ptr<node> n;

  explicit bench_node(bool start_now = true) {
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-memory-bench-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir);
    cfg.data_dir = dir.string();
    cfg.http_port = 0;
    cfg.log_level = "error";
    cfg.llm_provider = "ollama";
    cfg.ollama_url = "http://127.0.0.1:9";  // never called
    cfg.store_map_size = std::size_t{4} << 30;
    cfg.repl_min_workers = 0;
    if (start_now) {
      start();
    }
  }

  void start() {
    std::string error;
    n = node::start(cfg, error);
    if (!n) {
      std::cerr << "memory_bench: node did not start: " << error << "\n";
      std::exit(1);
    }
  }

  ~bench_node() {
    n.reset();
    std::filesystem::remove_all(dir);
  }

  // Adds `count` items to `tier`, at most `in_flight` at once; seconds taken.
  double add(const std::string& tier, std::size_t count, std::size_t in_flight,
             std::size_t offset = 0) {
    auto target = n->memory(tier);
    auto done = std::make_shared<std::promise<void>>();
    auto future = done->get_future();
    auto t = clock_type::now();
    n->system().spawn([=](caf::event_based_actor* self) {
      auto next = std::make_shared<std::size_t>(0);
      auto left = std::make_shared<std::size_t>(count);
      auto send = std::make_shared<std::function<void()>>();
      *send = [=] {
        auto i = (*next)++;
        memory_item item;
        item.text = "episode " + std::to_string(offset + i) + " about topic "
                    + std::to_string((offset + i) % 977) + " and the detail "
                    + std::to_string((offset + i) * 31 % 1013);
        item.conversation = "c" + std::to_string(i % 50);
        self->request(target, seconds(600), add_memory{std::move(item)})
          .then(
            [=](memory_item&) {
              if (--*left == 0) {
                done->set_value();
                *send = nullptr;  // the cycle through the closure ends
              } else if (*next < count) {
                (*send)();
              }
            },
            [=](caf::error& e) {
              std::cerr << "memory_bench: " << caf::to_string(e) << "\n";
              std::exit(1);
            });
      };
      for (std::size_t i = 0; i < std::min(in_flight, count); ++i) {
        (*send)();
      }
    });
    future.wait();
    return ms_since(t) / 1000;
  }

  memory_tier_stats stats(const std::string& tier) {
    caf::scoped_actor self{n->system()};
    memory_tier_stats s;
    // Long: a tier that is building its index answers when it is done.
    self->request(n->memory(tier), seconds(900), stats_atom::value)
      .receive([&](memory_tier_stats& x) { s = x; }, [](caf::error&) {});
    return s;
  }
};

void appends_bench() {
  bench_node bn;
  for (int round = 0; round < 2; ++round) {
    constexpr std::size_t grouped = 40'000, single = 2'000;
    auto g = bn.add("episodic", grouped, 512, round * 100'000);
    auto s = bn.add("episodic", single, 1, round * 100'000 + 50'000);
    std::printf("memory episodic appends (durable): %zu with 512 in flight in %.2f s = %.0f/s; "
                "one at a time: %zu in %.2f s = %.0f/s; ratio %.1fx\n",
                grouped, g, grouped / g, single, s, single / s, (grouped / g) / (single / s));
  }
}

void reload_bench() {
  bench_node bn;
  constexpr std::size_t facts = 100'000;
  auto t = bn.add("semantic", facts, 512);
  std::printf("memory semantic: %zu facts added in %.1f s\n", facts, t);
  for (int round = 0; round < 2; ++round) {
    bn.n.reset();  // saves the index
    auto s = clock_type::now();
    bn.start();
    auto st = bn.stats("semantic");
    auto loaded = ms_since(s);
    bn.n.reset();
    std::filesystem::remove(bn.dir / "semantic.hnsw");
    s = clock_type::now();
    bn.start();
    auto st2 = bn.stats("semantic");
    auto rebuilt = ms_since(s);
    std::printf("memory semantic start with %llu vectors: index %s in %lld ms (node up in "
                "%.0f ms); without the file: %s in %lld ms (node up in %.0f ms); "
                "ratio %.1fx\n",
                static_cast<unsigned long long>(st.index_items), st.index_source.c_str(),
                static_cast<long long>(st.loaded_ms), loaded, st2.index_source.c_str(),
                static_cast<long long>(st2.loaded_ms), rebuilt,
                static_cast<double>(st2.loaded_ms) / std::max<int64_t>(1, st.loaded_ms));
  }
}

void embed_bench() {
  testing::scripted_llm::options o;
  o.models = {"embed-model"};
  o.embed_dims = 384;
  o.threads = 2;
  testing::scripted_llm backend{o};
  testing::behaviour b;
  b.latency = std::chrono::milliseconds(5);
  backend.set_default(b);
  for (int round = 0; round < 2; ++round) {
    double rate[2] = {0, 0};
    uint64_t requests[2] = {0, 0};
    for (int batched = 1; batched >= 0; --batched) {
      bench_node bn{false};
      bn.cfg.memory_embedder = "ollama";
      bn.cfg.memory_embed_model = "embed-model";
      bn.cfg.ollama_url = backend.base_url();
      bn.cfg.memory_embed_batch = batched != 0 ? 64 : 1;
      bn.cfg.memory_embed_concurrency = 2;
      bn.start();
      backend.reset_counters();
      constexpr std::size_t count = 4'000;
      auto t = bn.add("episodic", count, 256, round * 10'000);
      rate[batched] = count / t;
      requests[batched] = backend.embed_requests();
    }
    std::printf("memory remote embedder (5 ms a request, 2 in flight): batched %.0f appends/s "
                "in %llu requests; one text a request %.0f/s in %llu; ratio %.1fx\n",
                rate[1], static_cast<unsigned long long>(requests[1]), rate[0],
                static_cast<unsigned long long>(requests[0]), rate[1] / rate[0]);
  }
}

void recall_bench() {
  bench_node bn;
  constexpr std::size_t episodes = 100'000;
  auto t = bn.add("episodic", episodes, 512);
  std::printf("memory episodic: %zu episodes added in %.1f s\n", episodes, t);
  // No handle may outlive the node (the tier's thread waits for the last).
  auto tier = std::make_unique<caf::actor>(bn.n->memory("episodic"));
  auto run = [&](const std::string& conversation) {
    std::vector<double> lat;
    caf::scoped_actor self{bn.n->system()};
    for (int i = 0; i < 300; ++i) {
      auto s = clock_type::now();
      self->request(*tier, seconds(60),
                    search_memory{"the detail " + std::to_string(i * 7 % 1013) + " of topic "
                                    + std::to_string(i % 977),
                                  conversation, 3})
        .receive([](std::vector<memory_hit>&) {},
                 [](caf::error& e) {
                   std::cerr << "memory_bench: " << caf::to_string(e) << "\n";
                   std::exit(1);
                 });
      lat.push_back(ms_since(s));
    }
    return lat;
  };
  for (int round = 0; round < 2; ++round) {
    auto one = run("c7");
    auto all = run("");
    std::printf("memory episodic search, 100,000 episodes: within one conversation (2,000) "
                "p50 %.3f ms p99 %.3f ms; the whole tier p50 %.3f ms p99 %.3f ms; ratio %.1fx\n",
                pct(one, 0.5), pct(one, 0.99), pct(all, 0.5), pct(all, 0.99),
                pct(all, 0.5) / pct(one, 0.5));
  }
  // What the tier holds for its episodes: the heap in use after a start
  // that loaded them, against the same node stopped.
  tier.reset();
  bn.n.reset();
  // Blocks glibc mapped apart (hblkhd) are in use too, not in uordblks.
  auto in_use = [] {
    auto m = mallinfo2();
    return m.uordblks + m.hblkhd;
  };
  auto stopped = in_use();
  bn.start();
  {
    caf::scoped_actor self{bn.n->system()};
    self->request(bn.n->memory("episodic"), seconds(120), stats_atom::value)
      .receive([](memory_tier_stats&) {}, [](caf::error& e) {
        std::cerr << "memory_bench: " << caf::to_string(e) << "\n";
        std::exit(1);
      });
  }
  auto started = in_use();
  auto per = static_cast<double>(started - std::min(started, stopped)) / episodes;
  std::printf("memory episodic: heap in use after a start with %zu episodes %.1f MB more than "
              "stopped = %.0f bytes an episode (their 384 floats alone: %zu bytes)\n",
              episodes, (started - std::min(started, stopped)) / 1048576.0, per,
              std::size_t{384} * sizeof(float));
}

}  // namespace

int main(int argc, char** argv) {
  std::string which = argc > 1 ? argv[1] : "all";
  if (which == "all" || which == "index") {
    index_bench();
  }
  if (which == "all" || which == "appends") {
    appends_bench();
  }
  if (which == "all" || which == "reload") {
    reload_bench();
  }
  if (which == "all" || which == "embed") {
    embed_bench();
  }
  if (which == "all" || which == "recall") {
    recall_bench();
  }
  return 0;
}
