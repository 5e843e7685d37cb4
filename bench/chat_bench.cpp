// Chat benchmarks against a running node and the scripted backend:
//   latency: a chat turn through the node against the same call made
//            directly to the backend, interleaved, one at a time;
//   memory:  many live conversations with several turns each, then the
//            node's resident memory.
#include "runtime/json/json.hpp"
#include "runtime/net/http_client.hpp"
#include "bench/bench_util.hpp"

#include <simdjson.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

using namespace kowalski;
using namespace kowalski::bench;
using clock_type = std::chrono::steady_clock;

namespace {

std::string create_conversation(net::http_client& client, const std::string& node) {
  auto res = call(client, "POST", node + "/v1/conversations", "{}");
  if (res.status != 201) {
    std::cerr << "create failed: " << res.status << " " << res.error << " " << res.body << "\n";
    std::exit(1);
  }
  return field(res.body, "id");
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  auto idx = static_cast<std::size_t>(p * (v.size() - 1));
  return v[idx];
}

// One turn through the node, and one equivalent call made straight to the
// backend, alternately, so that both see the same machine conditions.
int latency(const args& a) {
  auto node = a.get("node");
  auto backend = a.get("backend");
  auto turns = a.num("turns", 2000);
  auto conversations = a.num("conversations", 200);
  auto model = a.get("model", "test-model");
  net::http_client client;

  std::vector<std::string> ids;
  for (long i = 0; i < conversations; ++i) {
    ids.push_back(create_conversation(client, node));
  }
  auto warmup = std::min<long>(200, turns / 10);
  std::vector<double> via_node, direct;
  for (long i = 0; i < turns + warmup; ++i) {
    auto text = "short question number " + std::to_string(i);

    json::writer w;
    w.begin_object().key("model").value(model).key("stream").value(true);
    w.key("messages").begin_array().begin_object().key("role").value("user")
      .key("content").value(text).end_object().end_array().end_object();
    auto t0 = clock_type::now();
    auto d = call(client, "POST", backend + "/api/chat", w.take());
    auto t1 = clock_type::now();
    auto n = call(client, "POST", node + "/v1/conversations/" + ids[i % ids.size()] + "/messages",
                  "{\"content\":" + json::quote(text) + "}");
    auto t2 = clock_type::now();
    if (d.status != 200 || n.status != 200) {
      std::cerr << "call failed: direct=" << d.status << " node=" << n.status << " " << n.body
                << "\n";
      return 1;
    }
    if (i >= warmup) {
      direct.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      via_node.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
  }
  auto p50d = percentile(direct, 0.5), p99d = percentile(direct, 0.99);
  auto p50n = percentile(via_node, 0.5), p99n = percentile(via_node, 0.99);
  std::printf("latency turns=%ld direct_p50_ms=%.3f direct_p99_ms=%.3f node_p50_ms=%.3f "
              "node_p99_ms=%.3f added_p50_ms=%.3f added_p99_ms=%.3f\n",
              turns, p50d, p99d, p50n, p99n, p50n - p50d, p99n - p99d);
  return 0;
}

// Creates `conversations` conversations and sends `turns` messages to each,
// `concurrency` at a time, then reads the node's resident memory.
int memory(const args& a) {
  auto node = a.get("node");
  auto pid = a.num("pid", 0);
  auto conversations = a.num("conversations", 10000);
  auto turns = a.num("turns", 10);
  auto concurrency = a.num("concurrency", 64);
  net::http_client_options opts;
  opts.max_idle_per_host = static_cast<std::size_t>(concurrency);
  net::http_client client{opts};

  auto before = rss_kib(pid);
  std::vector<std::string> ids;
  ids.reserve(conversations);
  for (long i = 0; i < conversations; ++i) {
    ids.push_back(create_conversation(client, node));
  }

  // Each conversation gets its turns in order; `concurrency` conversations
  // are in flight at once.
  std::mutex mtx;
  std::condition_variable cv;
  long next = 0, finished = 0, failed = 0;
  auto t0 = clock_type::now();
  std::function<void(long, long)> send_turn = [&](long conv, long turn) {
    net::client_request req;
    req.method = "POST";
    req.url = node + "/v1/conversations/" + ids[conv] + "/messages";
    req.body = "{\"content\":\"turn " + std::to_string(turn) + " of a short chat\"}";
    req.headers.emplace_back("Content-Type", "application/json");
    net::client_callbacks cb;
    cb.on_done = [&, conv, turn](net::client_result r) {
      if (r.status != 200) {
        std::lock_guard<std::mutex> g{mtx};
        ++failed;
      }
      if (turn + 1 < turns) {
        send_turn(conv, turn + 1);
        return;
      }
      long start = -1;
      {
        std::lock_guard<std::mutex> g{mtx};
        ++finished;
        if (next < conversations) {
          start = next++;
        }
        cv.notify_all();
      }
      if (start >= 0) {
        send_turn(start, 0);
      }
    };
    client.send(std::move(req), std::move(cb));
  };
  {
    std::lock_guard<std::mutex> g{mtx};
    next = std::min(concurrency, conversations);
  }
  for (long i = 0; i < std::min(concurrency, conversations); ++i) {
    send_turn(i, 0);
  }
  std::unique_lock<std::mutex> lock{mtx};
  cv.wait(lock, [&] { return finished == conversations; });
  auto secs = std::chrono::duration<double>(clock_type::now() - t0).count();
  auto after = rss_kib(pid);
  std::printf("memory conversations=%ld turns_each=%ld failed=%ld seconds=%.1f "
              "turns_per_s=%.0f rss_before_mib=%.1f rss_after_mib=%.1f anon_mib=%.1f "
              "file_mib=%.1f\n",
              conversations, turns, failed, secs, conversations * turns / secs,
              before / 1024.0, after / 1024.0, status_kib(pid, "RssAnon") / 1024.0,
              status_kib(pid, "RssFile") / 1024.0);
  return failed == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: chat_bench latency|memory --key value ...\n";
    return 2;
  }
  auto a = parse_args(argc, argv);
  std::string mode = argv[1];
  if (mode == "latency") {
    return latency(a);
  }
  if (mode == "memory") {
    return memory(a);
  }
  std::cerr << "unknown mode " << mode << "\n";
  return 2;
}
