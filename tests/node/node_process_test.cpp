// The kowalski binary as users run it: exit codes, the chat CLI, the replay
// transcript, and kill -9 while chats run (every acknowledged turn survives).
#define BOOST_TEST_MODULE node_process_test
#include <boost/test/unit_test.hpp>

#include "runtime/net/http_client.hpp"
#include "tests/rig/child_process.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "runtime/store/store.hpp"
#include "messages/types.hpp"

#include <simdjson.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <map>
#include <set>
#include <sstream>
#include <thread>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::child_process;
using kowalski::testing::fetch;
using kowalski::testing::scripted_llm;
using namespace std::chrono_literals;

namespace {

const std::string binary = KOWALSKI_BINARY;
const std::string source_dir = KOWALSKI_SOURCE_DIR;

struct fixture {
  std::filesystem::path dir;

  fixture() {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-proc-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::create_directories(dir);
  }

  ~fixture() {
    std::filesystem::remove_all(dir);
  }

  // Environment that keeps the shipped config file and host settings out.
  std::map<std::string, std::string> env() {
    return {{"KOWALSKI_CONFIG_FILE", "/dev/null"}, {"KOWALSKI_NODE_LOG_LEVEL", "warn"}};
  }

  std::unique_ptr<child_process> serve(std::vector<std::string> extra,
                                       std::map<std::string, std::string> extra_env = {}) {
    std::vector<std::string> argv = {binary, "serve", "--port", "0", "--data-dir",
                                     (dir / "data").string()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto e = env();
    for (auto& [k, v] : extra_env) {
      e[k] = v;
    }
    auto child = std::make_unique<child_process>(argv, e);
    BOOST_REQUIRE_MESSAGE(child->wait_for_output("\n", 20s),
                          "node did not start: " << child->err());
    return child;
  }

  static std::string url_of(const child_process& c) {
    auto at = c.out().find("http://");
    return c.out().substr(at, c.out().find('\n', at) - at);
  }

  int run(std::vector<std::string> args, std::string* out = nullptr, std::string* err = nullptr,
          std::map<std::string, std::string> extra_env = {}) {
    args.insert(args.begin(), binary);
    auto e = env();
    e.insert(extra_env.begin(), extra_env.end());
    child_process c{args, e};
    auto rc = c.wait(60s);
    if (out) *out = c.out();
    if (err) *err = c.err();
    return rc;
  }
};

int64_t number(const std::string& body, const char* a, const char* b) {
  simdjson::dom::parser p;
  simdjson::dom::element e;
  int64_t v = -1;
  if (p.parse(body).get(e) == simdjson::SUCCESS && e[a][b].get(v) == simdjson::SUCCESS) {
    return v;
  }
  return -1;
}

std::string field(const std::string& body, const char* a, const char* b = nullptr) {
  simdjson::dom::parser p;
  simdjson::dom::element e;
  if (p.parse(body).get(e) != simdjson::SUCCESS) {
    return {};
  }
  auto r = e[a];
  if (b) r = r[b];
  std::string_view v;
  return r.get(v) == simdjson::SUCCESS ? std::string{v} : std::string{};
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(process, fixture)

BOOST_AUTO_TEST_CASE(help_is_everywhere_and_exit_codes_follow_the_rules) {
  std::string out, err;
  BOOST_TEST(run({"--help"}, &out) == 0);
  BOOST_TEST(out.find("serve") != std::string::npos);
  BOOST_TEST(run({"serve", "--help"}, &out) == 0);
  BOOST_TEST(out.find("--http.port") != std::string::npos);
  BOOST_TEST(run({"chat", "--help"}, &out) == 0);
  BOOST_TEST(out.find("--conversation") != std::string::npos);
  BOOST_TEST(run({}) == 2);
  BOOST_TEST(run({"frobnicate"}, nullptr, &err) == 2);
  BOOST_TEST(err.find("frobnicate") != std::string::npos);
  BOOST_TEST(run({"chat", "--bogus"}, nullptr, &err) == 2);
}

BOOST_AUTO_TEST_CASE(bad_configuration_exits_2_naming_key_value_and_expectation) {
  std::string err;
  BOOST_TEST(run({"serve", "--http.port=abc"}, nullptr, &err) == 2);
  BOOST_TEST(err.find("http.port") != std::string::npos);
  BOOST_TEST(err.find("abc") != std::string::npos);
  BOOST_TEST(err.find("expected an integer") != std::string::npos);

  BOOST_TEST(run({"serve"}, nullptr, &err, {{"KOWALSKI_LLM_PROVIDER", "claude"}}) == 2);
  BOOST_TEST(err.find("KOWALSKI_LLM_PROVIDER") != std::string::npos);
  BOOST_TEST(err.find("claude") != std::string::npos);

  BOOST_TEST(run({"serve"}, nullptr, &err, {{"OLLAMA_HOST", "gpu-box:notaport"}}) == 2);
  BOOST_TEST(err.find("OLLAMA_HOST") != std::string::npos, err);
  BOOST_TEST(err.find("llm.ollama_url") != std::string::npos, err);
  BOOST_TEST(err.find("gpu-box:notaport") != std::string::npos, err);
  BOOST_TEST(err.find("expected a URL") != std::string::npos, err);

  BOOST_TEST(run({"serve", "--http.address", "0.0.0.0"}, nullptr, &err) == 2);
  BOOST_TEST(err.find("http.token") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_port_in_use_is_a_runtime_failure) {
  scripted_llm server;
  std::string err;
  BOOST_TEST(run({"serve", "--port", std::to_string(server.port()), "--data-dir",
                  (dir / "d").string(), "--provider", "replay", "--model", "demo",
                  "--llm.replay_transcript", source_dir + "/config/demo-transcript.jsonl"},
                 nullptr, &err)
             == 1);
  BOOST_TEST(err.find("listen") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(chat_talks_to_a_node_backed_by_the_scripted_server) {
  scripted_llm server;
  auto node = serve({"--provider", "ollama", "--llm.ollama_url", server.base_url(), "--model",
                     "test-model"});
  auto url = url_of(*node);
  std::string out, err;
  BOOST_TEST(run({"chat", "--url", url, "hello", "world"}, &out, &err) == 0);
  BOOST_TEST(out.find("echo: hello world") != std::string::npos);
  BOOST_TEST(err.find("conversation ") != std::string::npos);

  BOOST_TEST(run({"chat", "--url", url, "--no-stream", "whole"}, &out) == 0);
  BOOST_TEST(out.find("echo: whole") != std::string::npos);

  // Interactive: one message per line of standard input, one conversation.
  child_process interactive{{"/bin/sh", "-c",
                             "printf 'first line\\n\\nsecond line\\n/exit\\nnot sent\\n' | "
                             + binary + " chat --url " + url},
                            env()};
  BOOST_TEST(interactive.wait(60s) == 0);
  BOOST_TEST(interactive.out().find("echo: first line") != std::string::npos);
  BOOST_TEST(interactive.out().find("echo: second line") != std::string::npos);
  BOOST_TEST(interactive.out().find("not sent") == std::string::npos);
  auto last = server.received().back().body;
  BOOST_TEST(last.find("first line") != std::string::npos);  // same conversation

  BOOST_TEST(run({"chat", "--url", url, "--model", "missing-model", "hi"}, nullptr, &err) == 1);
  BOOST_TEST(err.find("missing-model") != std::string::npos);

  node->signal(SIGTERM);
  BOOST_TEST(node->wait(20s) == 0);
  BOOST_TEST(run({"chat", "--url", url, "anyone?"}, nullptr, &err) == 1);
  BOOST_TEST(err.find("cannot reach") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_openai_key_reaches_the_backend_but_never_the_log) {
  const std::string key = "sk-test-secret-123";
  scripted_llm server;
  auto node = serve({"--provider", "openai", "--llm.openai_url", server.base_url() + "/v1",
                     "--model", "test-model"},
                    {{"OPENAI_API_KEY", key}, {"KOWALSKI_NODE_LOG_LEVEL", "debug"}});
  net::http_client client;
  auto base = url_of(*node);
  auto res = fetch(client, "POST", base + "/v1/conversations", "{}");
  BOOST_REQUIRE_MESSAGE(res.status == 201, res.status << " " << res.body);
  auto msgs = base + "/v1/conversations/" + field(res.body, "id") + "/messages";

  res = fetch(client, "POST", msgs, R"({"content":"hello"})");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.status << " " << res.body);
  BOOST_TEST(field(res.body, "message", "content") == "echo: hello");
  BOOST_TEST(number(res.body, "usage", "prompt_tokens") > 0);
  BOOST_TEST(number(res.body, "usage", "completion_tokens") > 0);

  // A refused key takes the error paths, which log the most.
  behaviour refused;
  refused.kind = behaviour::fault::http_error;
  refused.status = 401;
  server.enqueue(refused);
  res = fetch(client, "POST", msgs, R"({"content":"again","stream":true})");
  BOOST_TEST(res.status == 502);

  node->signal(SIGTERM);
  BOOST_TEST(node->wait(20s) == 0);

  auto seen = server.received();
  BOOST_REQUIRE(server.requests() == 2u);
  for (auto& r : seen) {
    BOOST_TEST(r.authorization == "Bearer " + key, r.path);
  }
  // Debug lines were written, and none of them, nor anything else, has the key.
  BOOST_TEST(node->err().find(" debug ") != std::string::npos, node->err());
  for (auto* output : {&node->out(), &node->err()}) {
    BOOST_TEST(output->find(key) == std::string::npos);
    BOOST_TEST(output->find("secret-123") == std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(replay_transcript_answers_without_a_model_server) {
  auto node = serve({"--provider", "replay", "--model", "demo", "--llm.replay_transcript",
                     source_dir + "/config/demo-transcript.jsonl"});
  net::http_client client;
  auto base = url_of(*node);
  auto res = fetch(client, "POST", base + "/v1/conversations", "{}");
  BOOST_REQUIRE(res.status == 201);
  auto id = field(res.body, "id");
  res = fetch(client, "POST", base + "/v1/conversations/" + id + "/messages",
              R"({"content":"Hello there"})");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(res.body.find("\"replayed\":true") != std::string::npos);
  BOOST_TEST(field(res.body, "message", "content").find("recorded transcript")
             != std::string::npos);
  BOOST_TEST(fetch(client, "GET", base + "/readyz").status == 200);
}

BOOST_AUTO_TEST_CASE(kill_9_during_chats_loses_no_acknowledged_turn) {
  scripted_llm server;
  behaviour b;
  b.latency = 5ms;
  server.set_default(b);
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--model", "test-model"};
  auto node = serve(flags);
  auto base = url_of(*node);
  net::http_client client;

  constexpr int conversations = 8;
  std::vector<std::string> ids;
  for (int i = 0; i < conversations; ++i) {
    auto res = fetch(client, "POST", base + "/v1/conversations", "{}");
    BOOST_REQUIRE(res.status == 201);
    ids.push_back(field(res.body, "id"));
  }

  // Each conversation sends messages back to back; replies are recorded as
  // acknowledged. The node is killed while messages are in flight.
  std::mutex mtx;
  std::set<std::string> acknowledged;
  std::atomic<int> acked{0};
  std::atomic<bool> stop{false};
  std::condition_variable progress;
  std::vector<std::thread> senders;
  for (int c = 0; c < conversations; ++c) {
    senders.emplace_back([&, c] {
      for (int i = 0; !stop; ++i) {
        auto text = "c" + std::to_string(c) + "-m" + std::to_string(i);
        net::client_result res;
        try {
          res = fetch(client, "POST", base + "/v1/conversations/" + ids[c] + "/messages",
                      "{\"content\":\"" + text + "\"}", {}, 10s);
        } catch (const std::exception&) {
          return;
        }
        if (res.status != 200) {
          return;
        }
        std::lock_guard<std::mutex> guard{mtx};
        acknowledged.insert(text);
        ++acked;
        progress.notify_all();
      }
    });
  }
  {
    std::unique_lock<std::mutex> lock{mtx};
    progress.wait_for(lock, 30s, [&] { return acked >= 200; });
  }
  node->signal(SIGKILL);
  BOOST_TEST(node->wait(10s) == 128 + SIGKILL);
  stop = true;
  for (auto& t : senders) {
    t.join();
  }
  BOOST_TEST_MESSAGE("acknowledged before kill: " << acknowledged.size());
  BOOST_REQUIRE(acknowledged.size() >= 50u);

  // Restart on the same data directory: the store opens and holds every
  // acknowledged user message together with the reply to it.
  node = serve(flags);
  base = url_of(*node);
  BOOST_TEST(fetch(client, "GET", base + "/readyz").status == 200);
  std::set<std::string> stored;
  for (auto& id : ids) {
    auto res = fetch(client, "GET", base + "/v1/conversations/" + id);
    BOOST_REQUIRE(res.status == 200);
    simdjson::dom::parser p;
    simdjson::dom::element doc = p.parse(res.body);
    std::string last_user;
    std::string trace;
    for (auto m : doc["messages"].get_array()) {
      auto role = std::string{std::string_view(m["role"])};
      auto content = std::string{std::string_view(m["content"])};
      trace += std::to_string(int64_t(m["seq"])) + ":" + content + " | ";
      if (role == "user") {
        last_user = content;
      } else if (content == "echo: " + last_user) {
        stored.insert(last_user);
      }
    }
    BOOST_TEST_MESSAGE("conversation " << id << ": " << trace);
  }
  for (auto& text : acknowledged) {
    BOOST_TEST(stored.count(text) == 1u, "acknowledged turn lost: " << text);
  }

  // And the conversations go on.
  auto res = fetch(client, "POST", base + "/v1/conversations/" + ids[0] + "/messages",
                   R"({"content":"after the crash"})");
  BOOST_TEST(res.status == 200);
}


// A node killed mid-batch resumes it on restart: every item appears exactly
// once in the results, and no item whose result was committed runs again.
BOOST_AUTO_TEST_CASE(kill_9_mid_batch_resumes_without_repeating_finished_items) {
  scripted_llm server;
  behaviour b;
  b.latency = 10ms;
  server.set_default(b);
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--model", "test-model",
                                    "--llm.workers", "4"};
  auto node = serve(flags);
  auto base = url_of(*node);
  net::http_client client;

  constexpr int items = 300;
  std::string body;
  for (int i = 0; i < items; ++i) {
    body += R"({"custom_id":"c)" + std::to_string(i)
            + R"(","method":"POST","url":"/v1/chat/completions","body":{"model":"test-model",)"
            + R"("messages":[{"role":"user","content":"item-)" + std::to_string(i) + R"("}]}})"
            + "\n";
  }
  auto res = fetch(client, "POST", base + "/v1/batches", body,
                   {{"Content-Type", "application/jsonl"}});
  BOOST_REQUIRE_MESSAGE(res.status == 201, res.body);
  auto id = field(res.body, "id");

  BOOST_REQUIRE(server.wait_requests(100, 30s));
  node->signal(SIGKILL);
  BOOST_TEST(node->wait(10s) == 128 + SIGKILL);

  // What the store held at the kill.
  std::set<uint64_t> finished;
  {
    std::string error;
    auto env = store::environment::open((dir / "data").string(), std::size_t{1} << 30, error);
    BOOST_REQUIRE_MESSAGE(env, error);
    env->scan("batch_results", id, "", [&](std::string_view, std::string_view v) {
      batch_item_result r;
      BOOST_REQUIRE(store::decode(v, r));
      finished.insert(r.index);
      return true;
    }, error);
  }
  BOOST_TEST_MESSAGE("results committed before the kill: " << finished.size());
  BOOST_REQUIRE(finished.size() >= 50u);
  BOOST_REQUIRE(finished.size() < std::size_t{items});
  server.reset_counters();

  node = serve(flags);
  base = url_of(*node);
  res = fetch(client, "GET", base + "/v1/batches/" + id + "?wait_ms=60000", {}, {}, 90s);
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(field(res.body, "status") == "completed");
  res = fetch(client, "GET", base + "/v1/batches/" + id + "/results");
  BOOST_REQUIRE(res.status == 200);
  std::map<std::string, int> seen;
  std::istringstream in{res.body};
  for (std::string line; std::getline(in, line);) {
    ++seen[field(line, "custom_id")];
  }
  BOOST_TEST(seen.size() == std::size_t{items});
  for (int i = 0; i < items; ++i) {
    BOOST_TEST(seen["c" + std::to_string(i)] == 1);
  }
  for (auto& r : server.received()) {
    for (auto index : finished) {
      auto needle = "\"item-" + std::to_string(index) + "\"";
      BOOST_TEST(r.body.find(needle) == std::string::npos,
                 "item " << index << " ran again after the restart");
    }
  }
  BOOST_TEST(server.requests() <= uint64_t(items) - finished.size());
}

BOOST_AUTO_TEST_CASE(batch_cli_writes_results_and_exits_non_zero_on_failures) {
  scripted_llm server;
  server.set_script([](const std::string& body) {
    behaviour b;
    if (body.find("refuse") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--model", "test-model"};
  auto node = serve(flags);
  auto base = url_of(*node);

  auto write = [&](const std::string& name, const std::vector<std::string>& prompts) {
    std::ofstream out{dir / name};
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      out << R"({"custom_id":"r)" << i << R"(","method":"POST","url":"/v1/chat/completions",)"
          << R"("body":{"model":"test-model","messages":[{"role":"user","content":")"
          << prompts[i] << "\"}]}}\n";
    }
    return (dir / name).string();
  };
  auto good = write("good.jsonl", {"one", "two", "three"});
  std::string out, err;
  BOOST_TEST(run({"batch", good, "--url", base}, &out, &err) == 0, err);
  // Not a terminal: plain progress lines and a summary.
  BOOST_TEST(err.find("completed: 3 done, 0 failed, 0 not run") != std::string::npos, err);
  std::ifstream results{dir / "good.out.jsonl"};
  std::vector<std::string> lines;
  for (std::string l; std::getline(results, l);) {
    lines.push_back(l);
  }
  BOOST_REQUIRE(lines.size() == 3u);
  BOOST_TEST(field(lines[2], "custom_id") == "r2");

  auto mixed = write("mixed.jsonl", {"fine", "refuse me"});
  auto output = (dir / "mixed-results.jsonl").string();
  BOOST_TEST(run({"batch", mixed, "-o", output, "--url", base}, &out, &err) == 1, err);
  BOOST_TEST(err.find("1 done, 1 failed") != std::string::npos, err);
  BOOST_TEST(std::filesystem::exists(output));

  // Bad input is a usage error with the line named; a dead node a failure.
  std::ofstream{dir / "bad.jsonl"} << "{\"custom_id\": 7}\n";
  BOOST_TEST(run({"batch", (dir / "bad.jsonl").string(), "--url", base}, &out, &err) == 2);
  BOOST_TEST(err.find("line 1") != std::string::npos, err);
  BOOST_TEST(run({"batch", good, "--url", "http://127.0.0.1:1"}, &out, &err) == 1);
  BOOST_TEST(run({"batch"}, &out, &err) == 2);

  // On a terminal (script(1) gives the CLI one) progress is a bar redrawn
  // in place.
  if (std::filesystem::exists("/usr/bin/script")) {
    auto cmd = binary + " batch " + good + " -o " + (dir / "tty.jsonl").string() + " --url "
               + base;
    BOOST_TEST(run({"batch", "--help"}, &out, &err) == 0);
    child_process tty{{"/usr/bin/script", "-qec", cmd, "/dev/null"}, env()};
    BOOST_TEST(tty.wait(60s) == 0);
    BOOST_TEST(tty.out().find("\r[##############################] 100%") != std::string::npos,
               tty.out());
  }

  // --local runs the same file on a node inside the CLI process.
  BOOST_TEST(run({"batch", good, "-o", (dir / "local.jsonl").string(), "--local", "--provider",
                  "ollama", "--llm.ollama_url", server.base_url(), "--model", "test-model"},
                 &out, &err) == 0, err);
  BOOST_TEST(std::filesystem::file_size(dir / "local.jsonl") > 0u);
}

// Interpreters die with the node, even with kill -9 and a child of their
// own; the next node removes the private directories the killed one left.
BOOST_AUTO_TEST_CASE(kill_9_leaves_no_repl_child_and_a_restart_sweeps_its_directories) {
  scripted_llm server;
  auto tmp = dir / "repltmp";
  std::filesystem::create_directories(tmp);
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--repl.temp_dir", tmp.string()};
  auto node = serve(flags);
  auto base = url_of(*node);
  net::http_client client;
  auto res = fetch(client, "POST", base + "/v1/repl/python3/execute",
                   R"J({"session": "s", "code": "import subprocess\n)J"
                   R"J(p = subprocess.Popen(['/usr/bin/sleep', '987654'])\nprint('started')"})J");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.body);
  BOOST_REQUIRE(res.body.find("started") != std::string::npos);

  auto sleepers = [] {
    int n = 0;
    for (auto& p : std::filesystem::directory_iterator("/proc")) {
      std::ifstream cmd{p.path() / "cmdline"};
      std::string prog, arg;
      std::getline(cmd, prog, '\0');
      std::getline(cmd, arg, '\0');
      n += prog == "/usr/bin/sleep" && arg == "987654";
    }
    return n;
  };
  // Bounded, like the wait below: only the process table tells.
  auto seen_by = std::chrono::steady_clock::now() + 5s;
  while (sleepers() == 0 && std::chrono::steady_clock::now() < seen_by) {
    std::this_thread::sleep_for(10ms);
  }
  BOOST_TEST(sleepers() == 1);
  std::size_t dirs = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp)) {
    dirs += e.path().filename().string().rfind("kowalski-repl-", 0) == 0;
  }
  BOOST_TEST(dirs >= 1u);

  node->signal(SIGKILL);
  BOOST_TEST(node->wait(10s) == 128 + SIGKILL);
  // The kernel tears the sandbox down as its parent dies; give it a
  // bounded moment (this polls the process table, nothing else can tell).
  auto deadline = std::chrono::steady_clock::now() + 5s;
  while (sleepers() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(10ms);
  }
  BOOST_TEST(sleepers() == 0);

  node = serve(flags);
  dirs = 0;
  for (auto& e : std::filesystem::directory_iterator(tmp)) {
    auto name = e.path().filename().string();
    // The new node's own warm worker may already have one.
    dirs += name.rfind("kowalski-repl-", 0) == 0
            && name.rfind("kowalski-repl-" + std::to_string(node->pid()) + "-", 0) != 0;
  }
  BOOST_TEST(dirs == 0u);
}

BOOST_AUTO_TEST_CASE(kill_9_mid_rlm_run_resumes_without_repeating_a_sub_call) {
  scripted_llm server;
  std::atomic<bool> hang{true};
  server.set_script([&hang](const std::string& body) {
    behaviour b;
    if (body.find("root model of a Recursive Language Model") == std::string::npos) {
      // A sub-call: echoed; B2 hangs in the first node's life.
      if (hang && body.find("\"content\":\"B2\"") != std::string::npos) {
        b.latency = 60s;
      }
      return b;
    }
    auto outputs = 0;
    for (auto p = body.find("REPL output"); p != std::string::npos;
         p = body.find("REPL output", p + 1)) {
      ++outputs;
    }
    b.reply = outputs == 0 ? "```repl\na = llm_query_batched(['A0', 'A1', 'A2'])\nprint(a)\n```"
                           : "```repl\nb = llm_query_batched(['B0', 'B1', 'B2'])\n"
                             "found = ' '.join(a + b)\nprint(found)\n```\nFINAL_VAR(found)";
    return b;
  });
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--model", "test-model",
                                    "--rlm.system_prompt_file",
                                    source_dir + "/config/prompts/rlm_system.md"};
  auto node = serve(flags);
  auto base = url_of(*node);
  net::http_client client;
  auto res = fetch(client, "POST", base + "/v1/rlm/runs",
                   R"({"question": "join the answers", "context": "some context"})");
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  auto id = field(res.body, "id");

  // Two root turns and six sub-calls sent; B2 is hanging.
  BOOST_REQUIRE(server.wait_requests(8, 30s));
  auto deadline = std::chrono::steady_clock::now() + 20s;
  int64_t committed = 0;
  while (committed < 5 && std::chrono::steady_clock::now() < deadline) {
    // The node answers after 100 ms or at the run's end: a bounded wait.
    res = fetch(client, "GET", base + "/v1/rlm/runs/" + id + "?wait_ms=100");
    committed = number(res.body, "stats", "sub_calls");
  }
  BOOST_REQUIRE_MESSAGE(committed == 5, res.body);
  node->signal(SIGKILL);
  BOOST_TEST(node->wait(10s) == 128 + SIGKILL);

  // What the store held at the kill: turn 1 done, turn 2's reply, 5 answers.
  {
    std::string error;
    auto env = store::environment::open((dir / "data").string(), std::size_t{1} << 30, error);
    BOOST_REQUIRE_MESSAGE(env, error);
    std::vector<rlm_turn> turns;
    env->scan("rlm_turns", store::items_of(id), "", [&](std::string_view, std::string_view v) {
      rlm_turn t;
      BOOST_REQUIRE(store::decode(v, t));
      turns.push_back(t);
      return true;
    }, error);
    BOOST_REQUIRE(turns.size() == 2u);
    BOOST_TEST(turns[0].complete);
    BOOST_TEST(!turns[1].complete);
  }

  hang = false;
  server.reset_counters();
  node = serve(flags);
  base = url_of(*node);
  res = fetch(client, "GET", base + "/v1/rlm/runs/" + id + "?wait_ms=60000", {}, {}, 90s);
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(field(res.body, "status") == "finished", res.body);
  BOOST_TEST(field(res.body, "reason") == "final_var", res.body);
  BOOST_TEST(field(res.body, "answer") == "echo: A0 echo: A1 echo: A2 echo: B0 echo: B1 echo: B2",
             res.body);
  BOOST_TEST(number(res.body, "stats", "replayed_turns") == 1, res.body);
  BOOST_TEST(number(res.body, "stats", "sub_calls") == 6, res.body);
  BOOST_TEST(res.body.find("\"resumes\":1") != std::string::npos, res.body);
  // After the restart only the one unanswered sub-call went out: no root
  // turn was asked again, no answered sub-call repeated.
  auto after = server.received();
  BOOST_REQUIRE(after.size() == 1u);
  BOOST_TEST(after[0].body.find("\"content\":\"B2\"") != std::string::npos, after[0].body);
}

BOOST_AUTO_TEST_CASE(kill_9_during_memory_appends_loses_no_acknowledged_item) {
  scripted_llm server;
  std::vector<std::string> flags = {"--provider", "ollama", "--llm.ollama_url",
                                    server.base_url(), "--model", "test-model"};
  auto node = serve(flags);
  auto base = url_of(*node);
  net::http_client client;
  std::mutex mtx;
  std::condition_variable cv;
  std::vector<std::string> acked;
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0};
  std::atomic<int> open{0};
  // 16 appends in flight, each followed by the next, until the node dies.
  std::function<void()> next = [&] {
    if (stop) {
      return;
    }
    auto i = sent++;
    net::client_request req;
    req.method = "POST";
    req.url = base + "/v1/memory/" + (i % 2 == 0 ? "episodic" : "semantic");
    req.headers.emplace_back("Content-Type", "application/json");
    req.body = R"({"text": "append number )" + std::to_string(i) + R"( of the stream"})";
    ++open;
    net::client_callbacks cb;
    cb.on_done = [&](net::client_result r) {
      if (r.error.empty() && r.status == 201) {
        std::lock_guard<std::mutex> guard{mtx};
        acked.push_back(field(r.body, "tier") + "/" + field(r.body, "id"));
      }
      {
        std::lock_guard<std::mutex> guard{mtx};
        --open;
      }
      cv.notify_all();
      if (r.error.empty()) {
        next();
      }
    };
    client.send(std::move(req), std::move(cb));
  };
  for (int i = 0; i < 16; ++i) {
    next();
  }
  {
    std::unique_lock<std::mutex> lock{mtx};
    BOOST_REQUIRE(cv.wait_for(lock, 30s, [&] { return acked.size() >= 500; }));
  }
  node->signal(SIGKILL);
  BOOST_TEST(node->wait(10s) == 128 + SIGKILL);
  stop = true;
  {
    std::unique_lock<std::mutex> lock{mtx};
    BOOST_REQUIRE(cv.wait_for(lock, 30s, [&] { return open == 0; }));
  }
  auto ids = acked;
  BOOST_TEST_MESSAGE("appends acknowledged before the kill: " << ids.size());
  node = serve(flags);
  base = url_of(*node);
  int missing = 0;
  for (auto& id : ids) {
    auto res = fetch(client, "GET", base + "/v1/memory/" + id);
    missing += res.status == 200 ? 0 : 1;
  }
  BOOST_TEST(missing == 0);
  // The index of the semantic tier was not saved by the killed node: it was
  // built again, and holds every acknowledged fact.
  auto res = fetch(client, "GET", base + "/v1/memory/stats");
  BOOST_TEST(res.body.find("\"index_source\":\"rebuilt\"") != std::string::npos, res.body);
}

BOOST_AUTO_TEST_CASE(memory_cli_adds_searches_and_reports_errors) {
  scripted_llm server;
  auto node = serve({"--provider", "ollama", "--llm.ollama_url", server.base_url()});
  std::map<std::string, std::string> env{{"KOWALSKI_URL", url_of(*node)}};
  std::string out, err;
  BOOST_TEST(run({"memory", "add", "Ada Lovelace wrote the first program"}, &out, &err, env)
               == 0,
             err);
  BOOST_TEST(out.rfind("sem_", 0) == 0u, out);
  BOOST_TEST(run({"memory", "search", "--tier", "semantic", "who", "wrote", "the", "first",
                  "program"},
                 &out, &err, env)
               == 0,
             err);
  BOOST_TEST(out.rfind("semantic", 0) == 0u, out);
  BOOST_TEST(out.find("Ada Lovelace wrote the first program") != std::string::npos, out);
  BOOST_TEST(run({"memory", "search", "--tier", "deep", "x"}, &out, &err, env) == 2);
  BOOST_TEST(err.find("tier must be") != std::string::npos, err);
  BOOST_TEST(run({"memory", "stats"}, &out, &err, env) == 0);
  BOOST_TEST(out.find("\"tier\":\"semantic\",\"items\":1") != std::string::npos, out);
  BOOST_TEST(run({"memory", "search", "x"}, &out, &err,
                 {{"KOWALSKI_URL", "http://127.0.0.1:9"}})
             == 1);
  BOOST_TEST(run({"memory", "--help"}, &out, &err) == 0);
}

BOOST_AUTO_TEST_CASE(rlm_cli_prints_the_answer_and_progress) {
  scripted_llm server;
  server.set_script([](const std::string& body) {
    behaviour b;
    if (body.find("root model of a Recursive Language Model") == std::string::npos) {
      return b;
    }
    b.reply = body.find("REPL output") == std::string::npos
                ? "```repl\nat = context.find('NEEDLE')\nprint(at)\n```"
                : "FINAL(it is at 4)";
    return b;
  });
  std::ofstream{dir / "ctx.txt"} << "abc NEEDLE def";
  std::vector<std::string> args = {
    "rlm", "--local", "--provider", "ollama", "--llm.ollama_url", server.base_url(),
    "--model", "test-model", "--rlm.system_prompt_file",
    source_dir + "/config/prompts/rlm_system.md", "--context", (dir / "ctx.txt").string(),
    "Where is the needle?"};
  std::string out, err;
  BOOST_TEST(run(args, &out, &err) == 0, err);
  BOOST_TEST(out == "it is at 4\n", out);
  BOOST_TEST(err.find("final after 2 turns") != std::string::npos, err);
  BOOST_TEST(run({"rlm", "a question"}, &out, &err) == 2);
  BOOST_TEST(err.find("no context given") != std::string::npos);
  BOOST_TEST(run({"rlm", "--help"}, &out, &err) == 0);
}

BOOST_AUTO_TEST_SUITE_END()
