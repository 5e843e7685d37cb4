// kowalski batch: submits a JSONL batch to a node (or to one started in this
// process), shows its progress, and writes the results file.
#include "runtime/node/batch_cli.hpp"

#include "config/settings.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/cli.hpp"
#include "runtime/node/local_node.hpp"
#include "runtime/node/node.hpp"
#include "runtime/node/node_client.hpp"

#include <simdjson.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace kowalski {

namespace {

void print_batch_usage() {
  std::cout
    << "usage: kowalski batch [options] INPUT.jsonl [-o OUTPUT.jsonl]\n\n"
       "Runs an OpenAI Batch API input file (one {custom_id, method, url, body}\n"
       "per line; '-' reads standard input) on a node and writes one OpenAI output\n"
       "line per request, in input order. Shows a progress bar on a terminal and\n"
       "plain progress lines otherwise. Ctrl-C cancels the batch (the results of\n"
       "what ran are still written); a second Ctrl-C exits at once.\n"
       "Exit code 1 when any request failed or did not run.\n\n"
       "options:\n"
       "  -o, --output PATH     results file (default: INPUT with .out.jsonl)\n"
       "  --url URL             node to use (default $KOWALSKI_URL or http://127.0.0.1:8080)\n"
       "  --token TOKEN         bearer token (default $KOWALSKI_HTTP_TOKEN)\n"
       "  --local               run on a node started in this process instead; any\n"
       "                        'kowalski serve' setting may follow (--provider,\n"
       "                        --llm.ollama_url, ...); its store is a temporary\n"
       "                        directory unless --data-dir is given\n"
       "  --max-attempts N      attempts per request (node default 3)\n"
       "  --call-timeout-ms N   time one attempt may take\n"
       "  --deadline-ms N       time the whole batch may take\n"
       "  --concurrency N       requests of this batch at once (at most the node's workers)\n"
       "  --quiet               no progress output\n";
}

struct batch_args {
  std::string input;
  std::string output;
  node_endpoint endpoint;
  bool local = false;
  bool quiet = false;
  std::string query;                   // options for POST /v1/batches
  std::vector<std::string> node_flags;  // settings of a --local node
};

std::optional<std::string> parse_args(const std::vector<std::string>& args, batch_args& out) {
  if (auto v = std::getenv("KOWALSKI_URL")) {
    out.endpoint.url = v;
  }
  if (auto v = std::getenv("KOWALSKI_HTTP_TOKEN")) {
    out.endpoint.token = v;
  }
  auto add_query = [&](const char* key, const std::string& value) -> bool {
    if (value.empty() || value.find_first_not_of("0123456789") != std::string::npos) {
      return false;
    }
    out.query += (out.query.empty() ? "?" : "&") + std::string{key} + "=" + value;
    return true;
  };
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto& a = args[i];
    auto next = [&](std::string& v) {
      if (i + 1 >= args.size()) {
        return false;
      }
      v = args[++i];
      return true;
    };
    std::string v;
    if (a == "-o" || a == "--output") {
      if (!next(out.output)) {
        return "option " + a + " needs a path";
      }
    } else if (a == "--url") {
      if (!next(out.endpoint.url)) {
        return "option --url needs a value";
      }
    } else if (a == "--token") {
      if (!next(out.endpoint.token)) {
        return "option --token needs a value";
      }
    } else if (a == "--local") {
      out.local = true;
    } else if (a == "--quiet") {
      out.quiet = true;
    } else if (a == "--max-attempts" || a == "--call-timeout-ms" || a == "--deadline-ms"
               || a == "--concurrency") {
      auto key = a.substr(2);
      for (auto& c : key) {
        c = c == '-' ? '_' : c;
      }
      if (!next(v) || !add_query(key.c_str(), v)) {
        return "option " + a + " needs a non-negative integer, got '" + v + "'";
      }
    } else if (a == "-" || a.rfind("-", 0) != 0) {
      if (!out.input.empty()) {
        return "one input file only; got '" + out.input + "' and '" + a + "'";
      }
      out.input = a;
    } else if (out.local) {
      // Node settings: the flag and, unless it has '=', its value.
      out.node_flags.push_back(a);
      if (a.find('=') == std::string::npos && i + 1 < args.size()) {
        out.node_flags.push_back(args[++i]);
      }
    } else {
      return "unknown option " + a + " (node settings need --local)";
    }
  }
  if (out.input.empty()) {
    return "no input file given";
  }
  if (out.output.empty()) {
    if (out.input == "-") {
      return "reading standard input needs -o OUTPUT";
    }
    auto p = std::filesystem::path{out.input};
    out.output = (p.parent_path() / p.stem()).string() + ".out.jsonl";
  }
  while (!out.endpoint.url.empty() && out.endpoint.url.back() == '/') {
    out.endpoint.url.pop_back();
  }
  return std::nullopt;
}

bool read_input(const std::string& path, std::string& out) {
  std::ostringstream ss;
  if (path == "-") {
    ss << std::cin.rdbuf();
  } else {
    std::ifstream in{path, std::ios::binary};
    if (!in) {
      return false;
    }
    ss << in.rdbuf();
  }
  out = ss.str();
  return true;
}

// The fields of a batch object the client shows.
struct progress {
  std::string id;
  std::string status;
  uint64_t total = 0, queued = 0, running = 0, done = 0, failed = 0, not_run = 0;
  uint64_t prompt_tokens = 0, completion_tokens = 0;
  double rate = 0, eta = -1;
  bool finished = false;
};

bool parse_progress(std::string_view body, progress& p) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) {
    return false;
  }
  std::string_view s;
  if (doc["id"].get(s) != simdjson::SUCCESS) {
    return false;
  }
  p.id = std::string{s};
  if (doc["status"].get(s) == simdjson::SUCCESS) {
    p.status = std::string{s};
  }
  auto u = [&](simdjson::dom::element e, uint64_t& out) {
    uint64_t v = 0;
    if (e.get(v) == simdjson::SUCCESS) {
      out = v;
    }
  };
  u(doc["request_counts"]["total"], p.total);
  auto c = doc["counts"];
  u(c["queued"], p.queued);
  u(c["running"], p.running);
  u(c["done"], p.done);
  u(c["failed"], p.failed);
  u(c["not_run"], p.not_run);
  u(doc["usage"]["prompt_tokens"], p.prompt_tokens);
  u(doc["usage"]["completion_tokens"], p.completion_tokens);
  double d = 0;
  if (doc["rate_per_s"].get(d) == simdjson::SUCCESS) {
    p.rate = d;
  }
  p.eta = doc["eta_s"].get(d) == simdjson::SUCCESS ? d : -1;
  p.finished = !doc["finished_ms"].is_null();
  return true;
}

std::string eta_text(double eta) {
  if (eta < 0) {
    return "?";
  }
  auto s = static_cast<long>(eta + 0.5);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, (s / 60) % 60);
  } else if (s >= 60) {
    std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%lds", s);
  }
  return buf;
}

void show(const progress& p, bool tty) {
  auto finished = p.done + p.failed + p.not_run;
  double share = p.total ? double(finished) / double(p.total) : 0;
  char counts[200];
  std::snprintf(counts, sizeof counts,
                "%3.0f%% %llu/%llu done=%llu failed=%llu rate=%.1f/s eta=%s", share * 100,
                static_cast<unsigned long long>(finished),
                static_cast<unsigned long long>(p.total),
                static_cast<unsigned long long>(p.done),
                static_cast<unsigned long long>(p.failed + p.not_run), p.rate,
                eta_text(p.eta).c_str());
  if (!tty) {
    std::cerr << "batch " << p.id << " " << p.status << " " << counts << std::endl;
    return;
  }
  constexpr int width = 30;
  auto filled = static_cast<int>(share * width);
  std::string bar(static_cast<std::size_t>(filled), '#');
  bar.append(static_cast<std::size_t>(width - filled), '.');
  std::cerr << "\r[" << bar << "] " << counts << "\033[K" << std::flush;
}

std::atomic<int> interrupts{0};

extern "C" void on_interrupt(int) {
  if (interrupts.fetch_add(1) > 0) {
    std::_Exit(128 + SIGINT);
  }
}

// Downloads the results into `path` as they arrive.
bool fetch_results(net::http_client& client, const node_endpoint& node, const std::string& id,
                   const std::string& path, uint64_t& lines) {
  auto tmp = path + ".part";
  std::ofstream out{tmp, std::ios::binary | std::ios::trunc};
  if (!out) {
    std::cerr << "kowalski batch: cannot write " << tmp << "\n";
    return false;
  }
  net::client_request req;
  req.url = node.url + "/v1/batches/" + id + "/results";
  if (!node.token.empty()) {
    req.headers.emplace_back("Authorization", "Bearer " + node.token);
  }
  int status = 0;
  std::string error_body;
  std::promise<net::client_result> done;
  net::client_callbacks cb;
  cb.on_head = [&](int s, const net::header_list&) { status = s; };
  cb.on_data = [&](std::string_view data) {
    if (status == 200) {
      out.write(data.data(), static_cast<std::streamsize>(data.size()));
      for (auto c : data) {
        lines += c == '\n';
      }
    } else if (error_body.size() < 4096) {
      error_body.append(data);
    }
  };
  cb.on_done = [&](net::client_result r) { done.set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  auto res = done.get_future().get();
  out.close();
  if (!res.error.empty() || status != 200 || !out) {
    std::cerr << "kowalski batch: downloading results failed: "
              << (!res.error.empty() ? res.error : error_text(error_body)) << "\n";
    std::filesystem::remove(tmp);
    return false;
  }
  std::filesystem::rename(tmp, path);
  return true;
}

int run_batch(const batch_args& args, const node_endpoint& node) {
  std::string body;
  if (!read_input(args.input, body)) {
    std::cerr << "kowalski batch: cannot read " << args.input << "\n";
    return exit_usage;
  }
  net::http_client client;
  auto res = call_node(client, node, "POST", "/v1/batches" + args.query, std::move(body),
                       "application/jsonl");
  if (!res.error.empty()) {
    std::cerr << "kowalski batch: cannot reach the node at " << node.url << ": " << res.error
              << "\n";
    return exit_failure;
  }
  if (res.status != 201) {
    std::cerr << "kowalski batch: HTTP " << res.status << ": " << error_text(res.body) << "\n";
    return res.status >= 400 && res.status < 500 ? exit_usage : exit_failure;
  }
  progress p;
  if (!parse_progress(res.body, p)) {
    std::cerr << "kowalski batch: the node's reply is not a batch object\n";
    return exit_failure;
  }
  bool tty = isatty(STDERR_FILENO) != 0;
  if (!args.quiet) {
    std::cerr << "batch " << p.id << ": " << p.total << " requests" << std::endl;
  }

  // Long polls: each returns when the batch ends, or after a second (a
  // terminal's bar) or five (plain lines) with the progress so far.
  auto started = std::chrono::steady_clock::now();
  bool cancel_sent = false;
  auto wait_ms = tty ? 1000 : 5000;
  while (!p.finished) {
    if (interrupts.load() > 0 && !cancel_sent) {
      cancel_sent = true;
      std::cerr << (tty ? "\n" : "") << "kowalski batch: cancelling " << p.id << std::endl;
      call_node(client, node, "DELETE", "/v1/batches/" + p.id);
    }
    auto poll = call_node(client, node, "GET",
                          "/v1/batches/" + p.id + "?wait_ms=" + std::to_string(wait_ms));
    if (!poll.error.empty() || poll.status != 200 || !parse_progress(poll.body, p)) {
      std::cerr << (tty ? "\n" : "") << "kowalski batch: lost the batch " << p.id << ": "
                << (poll.error.empty() ? error_text(poll.body) : poll.error) << "\n";
      return exit_failure;
    }
    if (!args.quiet) {
      show(p, tty);
    }
  }
  if (!args.quiet && tty) {
    std::cerr << "\n";
  }

  uint64_t lines = 0;
  if (!fetch_results(client, node, p.id, args.output, lines)) {
    return exit_failure;
  }
  if (lines != p.total) {
    std::cerr << "kowalski batch: the results hold " << lines << " lines for " << p.total
              << " requests; " << args.output << " is incomplete\n";
    return exit_failure;
  }
  auto secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::fprintf(stderr,
               "batch %s %s: %llu done, %llu failed, %llu not run; %llu prompt + %llu "
               "completion tokens; %.1f s; %llu lines in %s\n",
               p.id.c_str(), p.status.c_str(), static_cast<unsigned long long>(p.done),
               static_cast<unsigned long long>(p.failed),
               static_cast<unsigned long long>(p.not_run),
               static_cast<unsigned long long>(p.prompt_tokens),
               static_cast<unsigned long long>(p.completion_tokens), secs,
               static_cast<unsigned long long>(lines), args.output.c_str());
  return p.failed + p.not_run > 0 || p.status != "completed" ? exit_failure : exit_ok;
}

}  // namespace

int batch_command(const std::vector<std::string>& argv) {
  for (auto& a : argv) {
    if (a == "--help" || a == "-h") {
      print_batch_usage();
      return exit_ok;
    }
  }
  batch_args args;
  if (auto err = parse_args(argv, args)) {
    std::cerr << "kowalski batch: " << *err << "\n";
    return exit_usage;
  }
  std::signal(SIGINT, on_interrupt);
  if (!args.local) {
    return run_batch(args, args.endpoint);
  }

  return with_local_node("kowalski batch", args.node_flags,
                         [&](const node_endpoint& local) { return run_batch(args, local); });
}

}  // namespace kowalski
