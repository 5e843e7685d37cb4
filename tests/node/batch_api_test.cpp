// The batch HTTP API of a node on 127.0.0.1 against the scripted LLM server:
// JSON and OpenAI JSONL submissions, progress, results in OpenAI's output
// format, cancel, and a precise 4xx for every kind of bad input.
#define BOOST_TEST_MODULE batch_api_test
#include <boost/test/unit_test.hpp>

#include "runtime/net/http_client.hpp"
#include "runtime/node/node.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <simdjson.h>

#include <sstream>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::fetch;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;

namespace {

const net::header_list jsonl = {{"Content-Type", "application/jsonl"}};

std::string line(const std::string& custom_id, const std::string& content,
                 const std::string& model = "test-model") {
  return R"({"custom_id":")" + custom_id
         + R"(","method":"POST","url":"/v1/chat/completions","body":{"model":")" + model
         + R"(","messages":[{"role":"user","content":")" + content + R"("}],"max_tokens":8}})"
         + "\n";
}

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;
  net::http_client client;
  simdjson::dom::parser parser;

  fixture() : test_node("batchapi", scripted_llm::base_url()) {
    cfg.batch_retry_base = std::chrono::milliseconds{5};
    cfg.log_level = "error";
  }

  std::string url(const std::string& path) {
    return "http://127.0.0.1:" + std::to_string(n->http_port()) + path;
  }

  net::client_result call(const std::string& method, const std::string& path,
                          std::string body = {}, net::header_list headers = {}) {
    return fetch(client, method, url(path), std::move(body), std::move(headers));
  }

  simdjson::dom::element json(const std::string& body) {
    simdjson::dom::element doc;
    auto err = parser.parse(body).get(doc);
    BOOST_REQUIRE_MESSAGE(err == simdjson::SUCCESS, "not JSON: " << body);
    return doc;
  }

  std::string field(const net::client_result& r) {
    std::string_view f;
    auto doc = json(r.body);
    if (doc["error"]["field"].get(f) != simdjson::SUCCESS) {
      return "<none>";
    }
    return std::string{f};
  }

  std::string message(const net::client_result& r) {
    std::string_view m;
    auto doc = json(r.body);
    if (doc["error"]["message"].get(m) != simdjson::SUCCESS) {
      return "<none>";
    }
    return std::string{m};
  }

  // Submits and returns the new batch's id.
  std::string submit(std::string body, net::header_list headers = {}) {
    auto r = call("POST", "/v1/batches", std::move(body), std::move(headers));
    BOOST_REQUIRE_MESSAGE(r.status == 201, r.status << " " << r.body);
    std::string_view id;
    BOOST_REQUIRE(json(r.body)["id"].get(id) == simdjson::SUCCESS);
    return std::string{id};
  }

  // Long-polls until the batch ends.
  std::string wait(const std::string& id) {
    auto r = call("GET", "/v1/batches/" + id + "?wait_ms=20000");
    BOOST_REQUIRE_MESSAGE(r.status == 200, r.body);
    std::string_view status;
    BOOST_REQUIRE(json(r.body)["status"].get(status) == simdjson::SUCCESS);
    return std::string{status};
  }

  std::vector<std::string> result_lines(const std::string& id) {
    auto r = call("GET", "/v1/batches/" + id + "/results");
    BOOST_REQUIRE_MESSAGE(r.status == 200, r.body);
    std::vector<std::string> out;
    std::istringstream in{r.body};
    for (std::string l; std::getline(in, l);) {
      out.push_back(l);
    }
    return out;
  }

  std::size_t listed() {
    auto r = call("GET", "/v1/batches");
    BOOST_REQUIRE(r.status == 200);
    simdjson::dom::array data;
    BOOST_REQUIRE(json(r.body)["data"].get(data) == simdjson::SUCCESS);
    return data.size();
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(batch_api, fixture)

BOOST_AUTO_TEST_CASE(a_jsonl_batch_runs_and_its_results_use_openai_output_lines) {
  start();
  std::string body;
  for (int i = 0; i < 5; ++i) {
    body += line("req-" + std::to_string(i), "question " + std::to_string(i));
  }
  // A byte order mark and CRLF line ends, as some editors write them.
  std::string crlf = "\xEF\xBB\xBF";
  for (auto c : body) {
    crlf += c == '\n' ? std::string{"\r\n"} : std::string(1, c);
  }
  auto id = submit(crlf, jsonl);
  BOOST_TEST(wait(id) == "completed");

  auto lines = result_lines(id);
  BOOST_REQUIRE(lines.size() == 5u);
  for (int i = 0; i < 5; ++i) {
    BOOST_TEST_CONTEXT("line " << i) {
      auto doc = json(lines[i]);
      std::string_view custom_id, content;
      int64_t status = 0;
      BOOST_REQUIRE(doc["custom_id"].get(custom_id) == simdjson::SUCCESS);
      BOOST_TEST(custom_id == "req-" + std::to_string(i));
      BOOST_REQUIRE(doc["response"]["status_code"].get(status) == simdjson::SUCCESS);
      BOOST_TEST(status == 200);
      BOOST_REQUIRE(doc["response"]["body"]["choices"].at(0)["message"]["content"].get(content)
                    == simdjson::SUCCESS);
      BOOST_TEST(content == "echo: question " + std::to_string(i));
      BOOST_TEST(doc["error"].is_null());
      int64_t total = 0;
      BOOST_REQUIRE(doc["response"]["body"]["usage"]["total_tokens"].get(total)
                    == simdjson::SUCCESS);
      BOOST_TEST(total > 0);
    }
  }
  // max_tokens reached the backend as Ollama's num_predict.
  auto got = server.received();
  BOOST_TEST(got.back().body.find("\"num_predict\":8") != std::string::npos);

  auto info = json(call("GET", "/v1/batches/" + id).body);
  int64_t completed = 0;
  BOOST_REQUIRE(info["request_counts"]["completed"].get(completed) == simdjson::SUCCESS);
  BOOST_TEST(completed == 5);
}

BOOST_AUTO_TEST_CASE(a_json_list_of_prompts_runs_with_defaults) {
  start();
  auto id = submit(R"({"prompts":["a","b","c"],"system":"be brief","temperature":0.2})");
  BOOST_TEST(wait(id) == "completed");
  auto lines = result_lines(id);
  BOOST_REQUIRE(lines.size() == 3u);
  std::string_view custom_id;
  BOOST_REQUIRE(json(lines[2])["custom_id"].get(custom_id) == simdjson::SUCCESS);
  BOOST_TEST(custom_id == "item-2");
  auto got = server.received();
  BOOST_TEST(got.back().body.find("be brief") != std::string::npos);
  BOOST_TEST(got.back().body.find("\"temperature\":0.2") != std::string::npos);

  auto list = json(call("GET", "/v1/batches").body);
  std::string_view listed_id;
  BOOST_REQUIRE(list["data"].at(0)["id"].get(listed_id) == simdjson::SUCCESS);
  BOOST_TEST(listed_id == id);
}

BOOST_AUTO_TEST_CASE(failed_items_keep_their_status_and_error_in_the_results) {
  server.set_script([](const std::string& body) {
    behaviour b;
    if (body.find("refuse") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    } else if (body.find("cut") != std::string::npos) {
      b.kind = behaviour::fault::cut_stream;
    }
    return b;
  });
  start();
  auto id = submit(line("ok", "fine") + line("bad", "refuse this") + line("cut", "cut me"),
                   jsonl);
  BOOST_TEST(wait(id) == "completed");
  auto lines = result_lines(id);
  BOOST_REQUIRE(lines.size() == 3u);

  auto refused = json(lines[1]);
  int64_t status = 0;
  BOOST_REQUIRE(refused["response"]["status_code"].get(status) == simdjson::SUCCESS);
  BOOST_TEST(status == 400);
  int64_t attempts = 0;
  BOOST_REQUIRE(refused["kowalski"]["attempts"].get(attempts) == simdjson::SUCCESS);
  BOOST_TEST(attempts == 1);

  // A cut stream every time: no HTTP status to report, an error instead.
  auto cut = json(lines[2]);
  BOOST_TEST(cut["response"].is_null());
  std::string_view code;
  BOOST_REQUIRE(cut["error"]["code"].get(code) == simdjson::SUCCESS);
  BOOST_TEST(code == "backend_protocol");
  BOOST_REQUIRE(cut["kowalski"]["attempts"].get(attempts) == simdjson::SUCCESS);
  BOOST_TEST(attempts == 3);
}

BOOST_AUTO_TEST_CASE(delete_cancels_and_pending_items_end_as_cancelled) {
  cfg.llm_workers = 1;
  behaviour slow;
  slow.latency = std::chrono::milliseconds{150};
  server.set_default(slow);
  start();
  std::string body;
  for (int i = 0; i < 20; ++i) {
    body += line("r" + std::to_string(i), "q");
  }
  auto id = submit(body, jsonl);
  auto r = call("DELETE", "/v1/batches/" + id);
  BOOST_REQUIRE_MESSAGE(r.status == 200, r.body);
  BOOST_TEST(wait(id) == "cancelled");
  auto lines = result_lines(id);
  BOOST_REQUIRE(lines.size() == 20u);
  std::string_view code;
  BOOST_REQUIRE(json(lines.back())["error"]["code"].get(code) == simdjson::SUCCESS);
  BOOST_TEST(code == "batch_cancelled");
  BOOST_TEST(call("POST", "/v1/batches/" + id + "/cancel").status == 409);
}

BOOST_AUTO_TEST_CASE(large_result_sets_stream_in_order) {
  cfg.llm_workers = 16;
  start();
  std::string body = R"({"prompts":[)";
  for (int i = 0; i < 3000; ++i) {
    body += (i ? ",\"p" : "\"p") + std::to_string(i) + "\"";
  }
  body += "]}";
  auto id = submit(body);
  BOOST_TEST(wait(id) == "completed");
  auto lines = result_lines(id);
  BOOST_REQUIRE(lines.size() == 3000u);
  for (int i : {0, 255, 256, 257, 2999}) {
    std::string_view content;
    BOOST_REQUIRE(json(lines[i])["response"]["body"]["choices"].at(0)["message"]["content"]
                    .get(content) == simdjson::SUCCESS);
    BOOST_TEST(content == "echo: p" + std::to_string(i));
  }
}

BOOST_AUTO_TEST_CASE(bad_submissions_get_a_clear_400_and_create_nothing) {
  cfg.batch_max_body = 4096;
  start();
  struct bad_case {
    std::string body;
    bool as_jsonl;
    int status;
    std::string field;
    std::string says;
  };
  std::vector<bad_case> cases = {
    {"", true, 400, "body", "no requests"},
    {R"({"prompts":[]})", false, 400, "prompts", "empty"},
    {R"({"prompts":"hello"})", false, 400, "prompts", "must be an array"},
    {R"({"prompts":["a", 3]})", false, 400, "prompts[1]", "the number 3"},
    {R"({"requests":[{"messages":[{"role":"king","content":"x"}]}]})", false, 400,
     "requests[0].messages[0].role", "\"king\""},
    {R"({"prompts":["a"],"max_attempts":"three"})", false, 400, "max_attempts", "three"},
    {R"({"model":"gpt-17","prompts":["a"]})", false, 400, "prompts[0].model", "gpt-17"},
    {line("a", "x") + "{not json}\n", true, 400, "line 2", "malformed JSON"},
    {line("a", "x") + "\n" + line("a", "y"), true, 400, "line 3: custom_id", "line 1"},
    {line("a", "x") + line("b", "y", "gpt-17"), true, 400, "line 2: body.model", "gpt-17"},
    {R"({"custom_id":"e","url":"/v1/embeddings","body":{"model":"test-model"}})", true, 400,
     "line 1: url", "/v1/embeddings"},
    {R"({"custom_id":"e","body":{"model":"test-model","messages":[{"role":"user"}]}})", true,
     400, "line 1: body.messages[0].content", "missing"},
    {"{\"custom_id\":\"\xff\xfe\"}\n", true, 400, "body", "UTF-8"},
    {std::string(5000, ' ') + line("a", "x"), true, 413, "body", "over the limit of 4096"},
  };
  for (auto& c : cases) {
    BOOST_TEST_CONTEXT("body " << c.body.substr(0, 80)) {
      auto r = call("POST", "/v1/batches", c.body, c.as_jsonl ? jsonl : net::header_list{});
      BOOST_TEST(r.status == c.status);
      BOOST_TEST(field(r) == c.field);
      BOOST_TEST(message(r).find(c.says) != std::string::npos, message(r));
    }
  }
  BOOST_TEST(listed() == 0u);

  // Unknown ids and malformed parameters.
  BOOST_TEST(call("GET", "/v1/batches/batch_00000000000000000000").status == 404);
  BOOST_TEST(call("GET", "/v1/batches/../etc").status == 404);
  BOOST_TEST(call("GET", "/v1/batches/batch_00000000000000000000/results").status == 404);
  BOOST_TEST(call("DELETE", "/v1/batches/batch_00000000000000000000").status == 404);
  BOOST_TEST(call("GET", "/v1/batches?limit=0").status == 400);
  auto id = submit(line("ok", "fine"), jsonl);
  auto r = call("GET", "/v1/batches/" + id + "?wait_ms=soon");
  BOOST_TEST(r.status == 400);
  BOOST_TEST(field(r) == "wait_ms");
  BOOST_TEST(call("PUT", "/v1/batches").status == 405);
  // The node still serves.
  BOOST_TEST(wait(id) == "completed");
}

BOOST_AUTO_TEST_SUITE_END()
