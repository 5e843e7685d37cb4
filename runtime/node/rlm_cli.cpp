// kowalski rlm: asks a question about a large context through an RLM run.
#include "runtime/node/rlm_cli.hpp"

#include "runtime/json/json.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/cli.hpp"
#include "runtime/node/local_node.hpp"
#include "runtime/node/node_client.hpp"

#include <simdjson.h>

#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

namespace kowalski {

namespace {

void print_rlm_usage() {
  std::cout
    << "usage: kowalski rlm [options] QUESTION\n\n"
       "Answers QUESTION about a context too large for a model's window: the node\n"
       "loads the context into a sandboxed Python REPL and its model writes code\n"
       "against it (a Recursive Language Model run). Progress (turn, tokens, time)\n"
       "goes to stderr, the answer to stdout.\n\n"
       "options:\n"
       "  --context FILE        the context, as text ('-' reads standard input)\n"
       "  --context-json FILE   the context, as JSON (loaded as Python values)\n"
       "  --url URL             node to use (default $KOWALSKI_URL or http://127.0.0.1:8080)\n"
       "  --token TOKEN         bearer token (default $KOWALSKI_HTTP_TOKEN)\n"
       "  --model NAME          root model (default: the node's)\n"
       "  --max-iterations N    turns before the last-answer request (default 30)\n"
       "  --max-tokens N        token budget of the run\n"
       "  --timeout-ms N        wall time of the run\n"
       "  --max-depth N         recursion depth: 2 lets rlm_query start child runs\n"
       "  --local               run on a node in this process; 'kowalski serve'\n"
       "                        settings may follow (--provider, --llm.ollama_url, ...)\n"
       "Exit codes: 0 answered, 1 ended without an answer or failed, 2 usage.\n";
}

struct rlm_args {
  std::string question;
  std::string context_file;
  bool json = false;
  node_endpoint endpoint;
  bool local = false;
  std::vector<std::string> node_flags;
  std::string model;
  uint64_t max_iterations = 0, max_tokens = 0, timeout_ms = 0, max_depth = 0;
};

std::optional<std::string> parse(const std::vector<std::string>& args, rlm_args& out) {
  if (auto v = std::getenv("KOWALSKI_URL")) {
    out.endpoint.url = v;
  }
  if (auto v = std::getenv("KOWALSKI_HTTP_TOKEN")) {
    out.endpoint.token = v;
  }
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto& a = args[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= args.size()) {
        return std::nullopt;
      }
      return args[++i];
    };
    auto number = [&](uint64_t& n) -> bool {
      auto v = value();
      if (!v || v->empty() || v->find_first_not_of("0123456789") != std::string::npos) {
        return false;
      }
      n = std::stoull(*v);
      return n > 0;
    };
    if (a == "--context" || a == "--context-json") {
      auto v = value();
      if (!v) {
        return "option " + a + " needs a file";
      }
      out.context_file = *v;
      out.json = a == "--context-json";
    } else if (a == "--url" || a == "--token" || a == "--model") {
      auto v = value();
      if (!v) {
        return "option " + a + " needs a value";
      }
      (a == "--url" ? out.endpoint.url : a == "--token" ? out.endpoint.token : out.model) = *v;
    } else if (a == "--max-iterations" || a == "--max-tokens" || a == "--timeout-ms"
               || a == "--max-depth") {
      auto& n = a == "--max-iterations" ? out.max_iterations
                : a == "--max-tokens"   ? out.max_tokens
                : a == "--max-depth"    ? out.max_depth
                                        : out.timeout_ms;
      if (!number(n)) {
        return "option " + a + " needs a positive integer";
      }
    } else if (a == "--local") {
      out.local = true;
    } else if (a.rfind("--", 0) == 0 && out.local) {
      out.node_flags.push_back(a);
      if (a.find('=') == std::string::npos && i + 1 < args.size()) {
        out.node_flags.push_back(args[++i]);
      }
    } else if (a.rfind("--", 0) == 0) {
      return "unknown option " + a + " (node settings need --local)";
    } else {
      out.question += (out.question.empty() ? "" : " ") + a;
    }
  }
  if (out.question.empty()) {
    return "no question given";
  }
  if (out.context_file.empty()) {
    return "no context given (--context FILE or --context-json FILE)";
  }
  while (!out.endpoint.url.empty() && out.endpoint.url.back() == '/') {
    out.endpoint.url.pop_back();
  }
  return std::nullopt;
}

struct run_view {
  std::string id, status, answer, reason, error;
  uint64_t turns = 0, prompt_tokens = 0, completion_tokens = 0, sub_calls = 0,
           total_tokens = 0;
  int64_t duration_ms = 0;
};

bool read_view(std::string_view body, run_view& v) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  if (p.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) {
    return false;
  }
  auto str = [&](const char* key, std::string& out) {
    std::string_view s;
    if (doc[key].get(s) == simdjson::SUCCESS) {
      out = std::string{s};
    }
  };
  str("id", v.id);
  str("status", v.status);
  str("answer", v.answer);
  str("reason", v.reason);
  str("error", v.error);
  auto stats = doc["stats"];
  // Missing counts stay zero: progress is shown as far as it is known.
  auto num = [&](const char* key, auto& out) {
    if (stats[key].get(out) != simdjson::SUCCESS) {
      out = 0;
    }
  };
  num("turns", v.turns);
  num("prompt_tokens", v.prompt_tokens);
  num("completion_tokens", v.completion_tokens);
  num("sub_calls", v.sub_calls);
  num("total_tokens", v.total_tokens);
  num("duration_ms", v.duration_ms);
  return !v.id.empty();
}

// A node in this process reads the file where it is; a remote node gets it
// as an upload (the body is the context, the rest goes in the query).
int run(const rlm_args& args, const node_endpoint& node, bool same_host) {
  std::string path = "/v1/rlm/runs";
  std::string body;
  std::string type = "application/json";
  if (same_host) {
    json::writer w;
    w.begin_object().key("question").value(args.question)
      .key("context_file").value(std::filesystem::absolute(args.context_file).string())
      .key("context_kind").value(args.json ? "json" : "text");
    if (!args.model.empty()) {
      w.key("model").value(args.model);
    }
    for (auto [key, n] : {std::pair{"max_iterations", args.max_iterations},
                          std::pair{"max_tokens", args.max_tokens},
                          std::pair{"timeout_ms", args.timeout_ms},
                          std::pair{"max_depth", args.max_depth}}) {
      if (n > 0) {
        w.key(key).value(n);
      }
    }
    w.end_object();
    body = w.take();
  } else {
    std::ostringstream data;
    if (args.context_file == "-") {
      data << std::cin.rdbuf();
    } else {
      std::ifstream in{args.context_file, std::ios::binary};
      if (!in) {
        std::cerr << "kowalski rlm: cannot read " << args.context_file << "\n";
        return exit_usage;
      }
      data << in.rdbuf();
    }
    body = data.str();
    type = "text/plain; charset=utf-8";
    path += "?question=" + query_escape(args.question)
            + "&context_kind=" + (args.json ? "json" : "text");
    if (!args.model.empty()) {
      path += "&model=" + query_escape(args.model);
    }
    for (auto [key, n] : {std::pair{"max_iterations", args.max_iterations},
                          std::pair{"max_tokens", args.max_tokens},
                          std::pair{"timeout_ms", args.timeout_ms},
                          std::pair{"max_depth", args.max_depth}}) {
      if (n > 0) {
        path += std::string{"&"} + key + "=" + std::to_string(n);
      }
    }
  }
  net::http_client client;
  auto res = call_node(client, node, "POST", path, std::move(body), type);
  if (!res.error.empty()) {
    std::cerr << "kowalski rlm: cannot reach the node at " << node.url << ": " << res.error
              << "\n";
    return exit_failure;
  }
  if (res.status != 202) {
    std::cerr << "kowalski rlm: HTTP " << res.status << ": " << error_text(res.body) << "\n";
    return res.status >= 400 && res.status < 500 ? exit_usage : exit_failure;
  }
  run_view v;
  read_view(res.body, v);
  bool tty = isatty(STDERR_FILENO) != 0;
  // Long polls: back at the run's end, or each second with its progress.
  while (v.status == "running") {
    auto poll = call_node(client, node, "GET", "/v1/rlm/runs/" + v.id + "?wait_ms=1000");
    if (!poll.error.empty() || poll.status != 200 || !read_view(poll.body, v)) {
      std::cerr << "kowalski rlm: lost the run " << v.id << "\n";
      return exit_failure;
    }
    std::fprintf(stderr, "%srun %s turn %llu, %llu sub-calls, %llu tokens, %.1f s%s",
                 tty ? "\r" : "", v.id.c_str(), static_cast<unsigned long long>(v.turns),
                 static_cast<unsigned long long>(v.sub_calls),
                 static_cast<unsigned long long>(v.total_tokens), v.duration_ms / 1000.0,
                 tty ? "\033[K" : "\n");
  }
  if (tty) {
    std::cerr << "\n";
  }
  std::cerr << "run " << v.id << " " << v.status << ": " << v.reason << " after " << v.turns
            << " turns" << (v.error.empty() ? "" : " (" + v.error + ")") << "\n";
  bool answered = v.reason == "answer" || v.reason == "final" || v.reason == "final_var"
                  || v.reason == "max_iterations";
  if (!v.answer.empty()) {
    std::cout << v.answer << std::endl;
  }
  return answered ? exit_ok : exit_failure;
}

}  // namespace

int rlm_command(const std::vector<std::string>& argv) {
  for (auto& a : argv) {
    if (a == "--help" || a == "-h") {
      print_rlm_usage();
      return exit_ok;
    }
  }
  rlm_args args;
  if (auto err = parse(argv, args)) {
    std::cerr << "kowalski rlm: " << *err << "\n";
    return exit_usage;
  }
  if (!args.local) {
    return run(args, args.endpoint, false);
  }
  auto flags = args.node_flags;
  bool by_name = args.context_file != "-";
  if (by_name) {
    // The local node may read the file it is given, and nothing else.
    std::error_code ec;
    auto dir = std::filesystem::absolute(args.context_file, ec).parent_path();
    flags.push_back("--rlm.context_dirs=" + dir.string());
  }
  return with_local_node("kowalski rlm", flags,
                         [&](const node_endpoint& local) { return run(args, local, by_name); });
}

}  // namespace kowalski
