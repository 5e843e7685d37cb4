// Subcommands: serve (run a node) and chat (talk to a node over HTTP).
#include "runtime/node/cli.hpp"

#include "config/settings.hpp"
#include "runtime/json/json.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/batch_cli.hpp"
#include "runtime/node/memory_cli.hpp"
#include "runtime/node/rlm_cli.hpp"
#include "runtime/node/node.hpp"
#include "runtime/node/node_client.hpp"

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <future>
#include <mutex>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

namespace kowalski {

namespace {

constexpr const char* version = "0.1.0";

void print_usage() {
  std::cout << "usage: kowalski <command> [options]\n\n"
               "commands:\n"
               "  serve     run a node: HTTP gateway, actors, store\n"
               "  chat      talk to a running node (one message or interactive)\n"
               "  batch     run a JSONL batch file on a node and write its results\n"
               "  rlm       answer a question about a large context (an RLM run)\n"
               "  memory    search, add to and describe a node's memory tiers\n"
               "  version   print the version\n"
               "  help      show this text\n\n"
               "Run 'kowalski <command> --help' for the options of a command.\n"
               "Exit codes: 0 ok, 1 runtime failure, 2 usage or configuration error.\n";
}

void print_serve_usage() {
  std::cout << "usage: kowalski serve [--config-file PATH] [--key value ...]\n\n"
               "Runs a node until SIGINT or SIGTERM. Settings come from defaults, then\n"
               "the config file (config/kowalski.conf if present), then the environment\n"
               "(KOWALSKI_*, OLLAMA_HOST, OPENAI_BASE_URL, OPENAI_API_KEY), then flags.\n"
               "Short flags: --port, --address, --data-dir, --provider, --model, --log-level.\n\n"
               "settings:\n"
            << describe_settings();
}

void print_chat_usage() {
  std::cout
    << "usage: kowalski chat [options] [message ...]\n\n"
       "With a message: sends it, prints the reply and exits. Without: reads one\n"
       "message per line from standard input until EOF or /exit.\n\n"
       "options:\n"
       "  --url URL            node to talk to (default $KOWALSKI_URL or "
       "http://127.0.0.1:8080)\n"
       "  --token TOKEN        bearer token (default $KOWALSKI_HTTP_TOKEN)\n"
       "  --conversation ID    continue a conversation instead of starting one\n"
       "  --model NAME         model of a new conversation\n"
       "  --system TEXT        system prompt of a new conversation\n"
       "  --no-stream          wait for whole replies instead of streaming\n";
}

bool wants_help(const std::vector<std::string>& args) {
  for (auto& a : args) {
    if (a == "--help" || a == "-h") {
      return true;
    }
  }
  return false;
}

// -- serve -----------------------------------------------------------------------

int serve(const std::vector<std::string>& args) {
  if (wants_help(args)) {
    print_serve_usage();
    return exit_ok;
  }
  auto loaded = load_settings(args, process_environment());
  if (loaded.error) {
    std::cerr << "kowalski: " << loaded.error->message() << "\n";
    return exit_usage;
  }

  // Signals are taken by one thread with sigwait; every other thread,
  // including those the node starts, has them blocked.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  std::string error;
  auto n = node::start(*loaded.value, error);
  if (!n) {
    std::cerr << "kowalski: " << error << "\n";
    return exit_failure;
  }
  std::cout << "kowalski listening on http://" << loaded.value->http_address << ":"
            << n->http_port() << std::endl;

  // The first signal asks for an orderly stop; a second one during a slow
  // stop ends the process at once. The node is reached only through the
  // guarded pointer, which is cleared before the node goes away.
  static std::mutex target_mtx;
  static node* target = nullptr;
  {
    std::lock_guard<std::mutex> guard{target_mtx};
    target = n.get();
  }
  std::thread([signals] {
    for (int count = 0;; ++count) {
      int sig = 0;
      sigwait(&signals, &sig);
      if (count > 0) {
        std::_Exit(128 + sig);
      }
      std::lock_guard<std::mutex> guard{target_mtx};
      if (target != nullptr) {
        target->request_stop();
      }
    }
  }).detach();
  auto rc = n->wait();
  {
    std::lock_guard<std::mutex> guard{target_mtx};
    target = nullptr;
  }
  n.reset();
  spdlog::shutdown();
  return rc;
}

// -- chat ------------------------------------------------------------------------

struct chat_options {
  std::string url = "http://127.0.0.1:8080";
  std::string token;
  std::string conversation;
  std::string model;
  std::string system;
  bool stream = true;
  std::vector<std::string> words;
};

std::optional<std::string> parse_chat_args(const std::vector<std::string>& args,
                                           chat_options& opts) {
  if (auto v = std::getenv("KOWALSKI_URL")) {
    opts.url = v;
  }
  if (auto v = std::getenv("KOWALSKI_HTTP_TOKEN")) {
    opts.token = v;
  }
  for (std::size_t i = 0; i < args.size(); ++i) {
    auto& a = args[i];
    auto value = [&](std::string& out) -> bool {
      if (i + 1 >= args.size()) {
        return false;
      }
      out = args[++i];
      return true;
    };
    bool ok = true;
    if (a == "--url") {
      ok = value(opts.url);
    } else if (a == "--token") {
      ok = value(opts.token);
    } else if (a == "--conversation") {
      ok = value(opts.conversation);
    } else if (a == "--model") {
      ok = value(opts.model);
    } else if (a == "--system") {
      ok = value(opts.system);
    } else if (a == "--no-stream") {
      opts.stream = false;
    } else if (a.rfind("--", 0) == 0) {
      return "unknown option " + a;
    } else {
      opts.words.push_back(a);
    }
    if (!ok) {
      return "option " + a + " needs a value";
    }
  }
  while (!opts.url.empty() && opts.url.back() == '/') {
    opts.url.pop_back();
  }
  return std::nullopt;
}

class chat_client {
public:
  explicit chat_client(chat_options opts) : opts_(std::move(opts)) {
  }

  // Sends one request and waits for it; on_data (optional) sees the body.
  net::client_result call(std::string method, std::string path, std::string body,
                          std::function<void(std::string_view)> on_data = {}) {
    return call_node(client_, node_endpoint{opts_.url, opts_.token}, std::move(method), path,
                     std::move(body), "application/json", std::move(on_data));
  }

  // Creates a conversation unless one was named; returns false on failure.
  bool open() {
    if (!opts_.conversation.empty()) {
      return true;
    }
    json::writer w;
    w.begin_object();
    if (!opts_.model.empty()) {
      w.key("model").value(opts_.model);
    }
    if (!opts_.system.empty()) {
      w.key("system_prompt").value(opts_.system);
    }
    w.end_object();
    auto res = call("POST", "/v1/conversations", w.take());
    if (!check(res, 201)) {
      return false;
    }
    opts_.conversation = field(res.body, "id");
    std::cerr << "conversation " << opts_.conversation << "\n";
    return true;
  }

  bool send(const std::string& text) {
    json::writer w;
    w.begin_object().key("content").value(text).key("stream").value(opts_.stream).end_object();
    auto path = "/v1/conversations/" + opts_.conversation + "/messages";
    if (!opts_.stream) {
      auto res = call("POST", path, w.take());
      if (!check(res, 200)) {
        return false;
      }
      auto content = message_content(res.body);
      if (content.empty()) {
        std::cerr << "kowalski: the node's reply has no message content\n";
        return false;
      }
      std::cout << content << std::endl;
      return true;
    }

    // Parse the SSE stream as it arrives and print each delta at once.
    std::string buffer, event, error;
    bool done = false;
    auto res = call("POST", path, w.take(), [&](std::string_view data) {
      buffer.append(data);
      std::size_t nl;
      while ((nl = buffer.find('\n')) != std::string::npos) {
        auto line = buffer.substr(0, nl);
        buffer.erase(0, nl + 1);
        if (line.rfind("event: ", 0) == 0) {
          event = line.substr(7);
        } else if (line.rfind("data: ", 0) == 0) {
          auto payload = line.substr(6);
          if (event == "delta") {
            std::cout << field(payload, "content") << std::flush;
          } else if (event == "error") {
            error = error_text(payload);
          } else if (event == "done") {
            done = true;
          }
        }
      }
    });
    if (!check(res, 200)) {
      return false;
    }
    std::cout << std::endl;
    if (!error.empty()) {
      std::cerr << "kowalski: " << error << "\n";
      return false;
    }
    if (!done) {
      std::cerr << "kowalski: the reply stream ended before it was complete\n";
      return false;
    }
    return true;
  }

private:
  bool check(const net::client_result& res, int expected) {
    if (!res.error.empty()) {
      std::cerr << "kowalski: cannot reach the node at " << opts_.url << ": " << res.error
                << " (start one with 'kowalski serve')\n";
      return false;
    }
    if (res.status != expected) {
      std::cerr << "kowalski: HTTP " << res.status << ": " << error_text(res.body) << "\n";
      return false;
    }
    return true;
  }

  static std::string field(std::string_view body, const char* key) {
    simdjson::dom::parser p;
    simdjson::dom::element doc;
    std::string_view v;
    if (p.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS
        || doc[key].get(v) != simdjson::SUCCESS) {
      return {};
    }
    return std::string{v};
  }

  static std::string message_content(std::string_view body) {
    simdjson::dom::parser p;
    simdjson::dom::element doc;
    std::string_view v;
    if (p.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS
        || doc["message"]["content"].get(v) != simdjson::SUCCESS) {
      return {};
    }
    return std::string{v};
  }

  chat_options opts_;
  net::http_client client_;
};

int chat(const std::vector<std::string>& args) {
  if (wants_help(args)) {
    print_chat_usage();
    return exit_ok;
  }
  chat_options opts;
  if (auto err = parse_chat_args(args, opts)) {
    std::cerr << "kowalski chat: " << *err << "\n";
    return exit_usage;
  }
  auto words = opts.words;
  chat_client client{std::move(opts)};
  if (!client.open()) {
    return exit_failure;
  }

  if (!words.empty()) {
    std::string text;
    for (auto& w : words) {
      text += (text.empty() ? "" : " ") + w;
    }
    return client.send(text) ? exit_ok : exit_failure;
  }

  bool tty = isatty(STDIN_FILENO) != 0;
  std::string line;
  int rc = exit_ok;
  for (;;) {
    if (tty) {
      std::cout << "you> " << std::flush;
    }
    if (!std::getline(std::cin, line) || line == "/exit") {
      break;
    }
    if (line.find_first_not_of(" \t") == std::string::npos) {
      continue;
    }
    if (!client.send(line)) {
      rc = exit_failure;
    }
  }
  return rc;
}

}  // namespace

int run_cli(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    print_usage();
    return exit_usage;
  }
  auto command = args.front();
  args.erase(args.begin());
  if (command == "serve") {
    return serve(args);
  }
  if (command == "chat") {
    return chat(args);
  }
  if (command == "batch") {
    return batch_command(args);
  }
  if (command == "rlm") {
    return rlm_command(args);
  }
  if (command == "memory") {
    return memory_command(args);
  }
  if (command == "version" || command == "--version") {
    std::cout << "kowalski " << version << "\n";
    return exit_ok;
  }
  if (command == "help" || command == "--help" || command == "-h") {
    print_usage();
    return exit_ok;
  }
  std::cerr << "kowalski: unknown command '" << command << "'\n";
  print_usage();
  return exit_usage;
}

}  // namespace kowalski
