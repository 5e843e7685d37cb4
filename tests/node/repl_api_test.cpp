// The REPL HTTP API of a node on 127.0.0.1: sessions, llm_query through the
// scripted LLM server, pools, the sandbox mode, and bad input.
#define BOOST_TEST_MODULE repl_api_test
#include <boost/test/unit_test.hpp>

#include "runtime/net/http_client.hpp"
#include "runtime/node/node.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <simdjson.h>

#include <unistd.h>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::fetch;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;

namespace {

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;
  net::http_client client;
  simdjson::dom::parser parser;

  fixture() : test_node("replapi", scripted_llm::base_url()) {
    cfg.repl_min_workers = 1;
    cfg.repl_max_workers = 3;
  }

  net::client_result call(const std::string& method, const std::string& path,
                          std::string body = {}) {
    return fetch(client, method, "http://127.0.0.1:" + std::to_string(n->http_port()) + path,
                 std::move(body));
  }

  simdjson::dom::element json(const std::string& body) {
    simdjson::dom::element doc;
    BOOST_REQUIRE_MESSAGE(parser.parse(body).get(doc) == simdjson::SUCCESS, body);
    return doc;
  }

  std::string str(const std::string& body, const char* key) {
    std::string_view v;
    if (json(body)[key].get(v) != simdjson::SUCCESS) {
      return "<none>";
    }
    return std::string{v};
  }

  // Runs code; returns the reply body (status 200 required).
  std::string run(const std::string& code, const std::string& session = {}) {
    std::string body = "{\"code\":" + json_string(code);
    if (!session.empty()) {
      body += ",\"session\":\"" + session + "\"";
    }
    body += "}";
    auto r = call("POST", "/v1/repl/python3/execute", body);
    BOOST_REQUIRE_MESSAGE(r.status == 200, r.status << " " << r.body);
    return r.body;
  }

  static std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') {
        out += '\\';
        out += c;
      } else if (c == '\n') {
        out += "\\n";
      } else {
        out += c;
      }
    }
    return out + "\"";
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(repl_api, fixture)

BOOST_AUTO_TEST_CASE(state_persists_in_a_session_and_not_across_sessions) {
  start();
  BOOST_TEST(str(run("secret = 'a-only'", "alpha"), "stdout") == "");
  BOOST_TEST(str(run("print(secret)", "alpha"), "stdout") == "a-only\n");
  auto other = run("print(secret)", "beta");
  BOOST_TEST(str(other, "error_type") == "NameError");
  BOOST_TEST(str(run("print(secret)"), "error_type") == "NameError");

  // The sessions hold a worker each.
  auto pools = json(call("GET", "/v1/repl/pools").body);
  bool found = false;
  for (auto p : pools["data"].get_array()) {
    std::string_view language;
    if (p["language"].get(language) != simdjson::SUCCESS || language != "python3") {
      continue;
    }
    found = true;
    uint64_t sessions = 0;
    BOOST_REQUIRE(p["sessions"].get(sessions) == simdjson::SUCCESS);
    BOOST_TEST(sessions == 2u);
    std::string_view sandbox;
    BOOST_REQUIRE(p["sandbox"].get(sandbox) == simdjson::SUCCESS);
    BOOST_TEST(!sandbox.empty());
  }
  BOOST_TEST(found);

  // Ending a session drops its state; the name may be used again.
  auto r = call("DELETE", "/v1/repl/sessions/alpha");
  BOOST_TEST(r.status == 200);
  BOOST_TEST(str(run("print(secret)", "alpha"), "error_type") == "NameError");
  BOOST_TEST(call("DELETE", "/v1/repl/sessions/nobody").status == 404);
}

BOOST_AUTO_TEST_CASE(llm_query_answers_from_code_with_errors_as_strings) {
  server.set_script([](const std::string& body) {
    behaviour b;
    if (body.find("refuse") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  start();
  auto out = run("print(llm_query('hello model'))\n"
                 "r = llm_query_batched(['one', 'refuse this', 'three'])\n"
                 "print(r[0]); print(r[1].startswith('Error:')); print(r[2])\n"
                 "print(llm_query(42))");
  auto text = str(out, "stdout");
  BOOST_TEST(text.find("echo: hello model\n") == 0u, text);
  BOOST_TEST(text.find("echo: one\nTrue\necho: three\n") != std::string::npos, text);
  BOOST_TEST(text.find("Error: llm_query takes a string") != std::string::npos, text);
  // The calls reached the backend with the node's model.
  std::size_t seen = 0;
  for (auto& r : server.received()) {
    seen += r.path == "/api/chat" && r.body.find("test-model") != std::string::npos;
  }
  BOOST_TEST(seen == 4u);
}

BOOST_AUTO_TEST_CASE(node_bash_java_and_rust_run_or_say_why_not) {
  start();
  auto exec = [&](const std::string& language, const std::string& code,
                  const std::string& session = {}) {
    std::string body = "{\"code\":" + json_string(code);
    if (!session.empty()) {
      body += ",\"session\":\"" + session + "\"";
    }
    return call("POST", "/v1/repl/" + language + "/execute", body + "}");
  };
  auto available = [](const char* path) { return ::access(path, X_OK) == 0; };

  if (available("/usr/bin/node")) {
    BOOST_TEST(str(exec("node", "let a = 6; console.log(a * 7)", "n").body, "stdout") == "42\n");
    BOOST_TEST(str(exec("node", "console.log(typeof a)", "m").body, "stdout") == "undefined\n");
    BOOST_TEST(str(exec("node", "console.log(a + 1)", "n").body, "stdout") == "7\n");
    auto r = exec("node", "throw new TypeError('bad')", "n");
    BOOST_TEST(str(r.body, "error_type") == "TypeError");
    BOOST_TEST(str(r.body, "error").find("Script.runInContext") == std::string::npos);
  }

  // bash keeps variables and the directory; exit ends the shell, and says so.
  BOOST_TEST(str(exec("bash", "X=5; cd /tmp; echo hi", "b").body, "stdout") == "hi\n");
  BOOST_TEST(str(exec("bash", "echo $X $PWD", "b").body, "stdout") == "5 /tmp\n");
  BOOST_TEST(str(exec("bash", "echo ${X:-unset}", "other").body, "stdout") == "unset\n");
  // Without a session nothing is kept; input is not the driver's.
  BOOST_TEST(str(exec("bash", "Y=1; read -r line; echo read=$?").body, "stdout") == "read=1\n");
  BOOST_TEST(str(exec("bash", "echo ${Y:-none}").body, "stdout") == "none\n");
  BOOST_TEST(str(exec("bash", "echo 'unterminated", "b").body, "error_type") == "exit");
  BOOST_TEST(str(exec("bash", "echo $X", "b").body, "stdout") == "5\n");
  auto r = exec("bash", "false", "b");
  BOOST_TEST(r.body.find("\"exit_status\":1") != std::string::npos, r.body);
  r = exec("bash", "exit 4", "b");
  BOOST_TEST(str(r.body, "error").find("status 4") != std::string::npos, r.body);
  r = exec("bash", "echo ${X:-gone}", "b");
  BOOST_TEST(str(r.body, "stdout") == "gone\n");
  BOOST_TEST(r.body.find("\"state_lost\":true") != std::string::npos, r.body);

  if (available("/usr/bin/javac")) {
    r = exec("java", "System.out.println(6 * 7);");
    BOOST_TEST(str(r.body, "stdout") == "42\n", r.body);
    r = exec("java", "int x = ;");
    BOOST_TEST(str(r.body, "error_type") == "compile", r.body);
  } else {
    BOOST_TEST(exec("java", "x").status == 503);
  }
  if (available("/usr/bin/rustc")) {
    r = exec("rust", "println!(\"{}\", 6 * 7);");
    BOOST_TEST(str(r.body, "stdout") == "42\n", r.body);
  } else {
    r = exec("rust", "x");
    BOOST_TEST(r.status == 503);
    BOOST_TEST(r.body.find("rustc is not installed") != std::string::npos, r.body);
  }
  auto pools = call("GET", "/v1/repl/pools").body;
  for (auto lang : {"python3", "node", "bash", "java", "rust"}) {
    BOOST_TEST(pools.find(std::string{"\"language\":\""} + lang + "\"") != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(bad_requests_get_a_clear_4xx) {
  start();
  struct bad_case {
    std::string path;
    std::string body;
    int status;
    std::string field;
  };
  std::vector<bad_case> cases = {
    {"/v1/repl/python3/execute", "", 400, "body"},
    {"/v1/repl/python3/execute", "{}", 400, "code"},
    {"/v1/repl/python3/execute", R"({"code": 7})", 400, "code"},
    {"/v1/repl/python3/execute", R"({"code": "1", "session": "../x"})", 400, "session"},
    {"/v1/repl/python3/execute", R"({"code": "1", "timeout_ms": -5})", 400, "timeout_ms"},
    {"/v1/repl/python3/execute", R"({"code": "1", "timeout_ms": 99999999})", 400, "timeout_ms"},
    {"/v1/repl/cobol/execute", R"({"code": "1"})", 404, "language"},
  };
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT(c.path << " " << c.body) {
      auto r = call("POST", c.path, c.body);
      BOOST_TEST(r.status == c.status);
      std::string_view f;
      BOOST_REQUIRE(json(r.body)["error"]["field"].get(f) == simdjson::SUCCESS);
      BOOST_TEST(f == c.field);
    }
  }
  BOOST_TEST(call("GET", "/v1/repl/python3/execute").status == 405);
  BOOST_TEST(str(run("print('still serving')"), "stdout") == "still serving\n");
}

BOOST_AUTO_TEST_CASE(without_a_working_sandbox_repls_refuse_unless_allowed) {
  cfg.repl_bubblewrap = "/nonexistent/bwrap";
  start();
  auto r = call("POST", "/v1/repl/python3/execute", R"J({"code": "print(1)"})J");
  BOOST_TEST(r.status == 503);
  BOOST_TEST(r.body.find("repl.allow_unsandboxed") != std::string::npos, r.body);
  auto ready = json(call("GET", "/readyz").body);
  std::string_view mode;
  BOOST_REQUIRE(ready["repl"]["sandbox"].get(mode) == simdjson::SUCCESS);
  BOOST_TEST(mode == "off");

  n.reset();
  cfg.repl_allow_unsandboxed = true;
  start();
  BOOST_TEST(str(run("print(6 * 7)"), "stdout") == "42\n");
  ready = json(call("GET", "/readyz").body);
  BOOST_REQUIRE(ready["repl"]["sandbox"].get(mode) == simdjson::SUCCESS);
  BOOST_TEST(mode == "rlimits_only");
}

BOOST_AUTO_TEST_SUITE_END()
