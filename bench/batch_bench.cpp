// Batch benchmarks against a running node:
//   run:    submits N prompts as one batch and times it from the submission
//           to the last result (the node's own created/finished times too);
//   memory: submits N prompts, reads the node's resident memory while they
//           wait, then after the run, then streams the results to a file.
#include "bench/bench_util.hpp"
#include "runtime/json/json.hpp"
#include "runtime/net/http_client.hpp"

#include <simdjson.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>

using namespace kowalski;
using namespace kowalski::bench;
using clock_type = std::chrono::steady_clock;

namespace {

std::string prompts_body(long n, const std::string& model) {
  json::writer w;
  w.begin_object().key("model").value(model).key("max_tokens").value(16);
  w.key("prompts").begin_array();
  for (long i = 0; i < n; ++i) {
    w.value("prompt number " + std::to_string(i));
  }
  w.end_array().end_object();
  return w.take();
}

int64_t number(const std::string& body, const char* a, const char* b = nullptr) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  if (p.parse(body).get(doc) != simdjson::SUCCESS) {
    return -1;
  }
  auto e = doc[a];
  if (b != nullptr) {
    e = e[b];
  }
  int64_t v = -1;
  uint64_t u = 0;
  if (e.get(v) == simdjson::SUCCESS) {
    return v;
  }
  return e.get(u) == simdjson::SUCCESS ? static_cast<int64_t>(u) : -1;
}

// Submits and returns the batch id, or exits.
std::string submit(net::http_client& client, const std::string& node, const std::string& body) {
  auto res = call(client, "POST", node + "/v1/batches", body);
  if (res.status != 201) {
    std::cerr << "submit failed: " << res.status << " " << res.error << " " << res.body << "\n";
    std::exit(1);
  }
  return field(res.body, "id");
}

// Long-polls until the batch has ended; returns its last batch object.
std::string wait_done(net::http_client& client, const std::string& node, const std::string& id) {
  for (;;) {
    auto res = call(client, "GET", node + "/v1/batches/" + id + "?wait_ms=600000", {});
    if (res.status != 200) {
      std::cerr << "poll failed: " << res.status << " " << res.error << "\n";
      std::exit(1);
    }
    if (number(res.body, "finished_ms") > 0) {
      return res.body;
    }
  }
}

int run(const args& a) {
  auto node = a.get("node");
  auto items = a.num("items", 10000);
  auto body = prompts_body(items, a.get("model", "test-model"));
  net::http_client client;

  auto started = clock_type::now();
  auto id = submit(client, node, body);
  auto done = wait_done(client, node, id);
  auto secs = std::chrono::duration<double>(clock_type::now() - started).count();
  auto node_ms = number(done, "finished_ms") - number(done, "created_ms");
  auto ok = number(done, "counts", "done");
  std::printf("batch items=%ld done=%lld wall_s=%.3f node_s=%.3f items_per_s=%.0f\n", items,
              static_cast<long long>(ok), secs, node_ms / 1000.0, items / secs);
  return ok == items ? 0 : 1;
}

int memory(const args& a) {
  auto node = a.get("node");
  auto pid = a.num("pid", 0);
  auto items = a.num("items", 100000);
  auto out_path = a.get("out", "/tmp/kowalski-bench-results.jsonl");
  net::http_client client;

  auto before = rss_kib(pid);
  auto id = submit(client, node, prompts_body(items, a.get("model", "test-model")));
  auto queued = call(client, "GET", node + "/v1/batches/" + id, {});
  auto queued_rss = rss_kib(pid);
  auto waiting = number(queued.body, "counts", "queued");
  auto done = wait_done(client, node, id);
  auto after_rss = rss_kib(pid);

  // The results go to disk as they arrive.
  std::FILE* out = std::fopen(out_path.c_str(), "wb");
  uint64_t bytes = 0;
  std::promise<net::client_result> finished;
  net::client_request req;
  req.url = node + "/v1/batches/" + id + "/results";
  net::client_callbacks cb;
  cb.on_data = [&](std::string_view d) {
    bytes += d.size();
    std::fwrite(d.data(), 1, d.size(), out);
  };
  cb.on_done = [&](net::client_result r) { finished.set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  finished.get_future().get();
  std::fclose(out);
  auto streamed_rss = rss_kib(pid);
  std::printf("memory items=%ld queued_at_check=%lld rss_before_mib=%.1f rss_queued_mib=%.1f "
              "rss_done_mib=%.1f rss_after_results_mib=%.1f peak_mib=%.1f heap_mib=%.1f "
              "mapped_mib=%.1f results_mib=%.1f done=%lld\n",
              items, static_cast<long long>(waiting), before / 1024.0, queued_rss / 1024.0,
              after_rss / 1024.0, streamed_rss / 1024.0, status_kib(pid, "VmHWM") / 1024.0,
              status_kib(pid, "RssAnon") / 1024.0, status_kib(pid, "RssFile") / 1024.0,
              bytes / 1048576.0, static_cast<long long>(number(done, "counts", "done")));
  std::filesystem::remove(out_path);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: batch_bench run|memory --node URL [--items N] [--pid PID]\n";
    return 2;
  }
  auto a = parse_args(argc, argv);
  std::string mode = argv[1];
  if (mode == "run") {
    return run(a);
  }
  if (mode == "memory") {
    return memory(a);
  }
  std::cerr << "unknown mode " << mode << "\n";
  return 2;
}
