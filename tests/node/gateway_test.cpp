// The HTTP API of a node on 127.0.0.1, against the scripted LLM server: the
// chat path, SSE streaming, and a precise 4xx/5xx for every kind of bad input.
#define BOOST_TEST_MODULE gateway_test
#include <boost/test/unit_test.hpp>

#include "runtime/net/http_client.hpp"
#include "runtime/node/node.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <simdjson.h>

#include <filesystem>
#include <future>
#include <sstream>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::fetch;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;

namespace {

struct parsed {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;

  explicit parsed(const std::string& body) {
    auto err = parser.parse(body).get(doc);
    BOOST_REQUIRE_MESSAGE(err == simdjson::SUCCESS, "not JSON: " << body);
  }

  std::string str(const char* a, const char* b = nullptr, const char* c = nullptr) {
    auto e = doc[a];
    if (b) e = e[b];
    if (c) e = e[c];
    std::string_view v;
    if (e.get(v) != simdjson::SUCCESS) {
      return "<missing>";
    }
    return std::string{v};
  }

  int64_t num(const char* a, const char* b = nullptr) {
    auto e = doc[a];
    if (b) e = e[b];
    int64_t v = -1;
    if (e.get(v) != simdjson::SUCCESS) {
      uint64_t u = 0;
      if (e.get(u) == simdjson::SUCCESS) {
        return static_cast<int64_t>(u);
      }
    }
    return v;
  }
};

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;
  net::http_client client;
  std::string base;

  fixture() : test_node("gw", scripted_llm::base_url()) {
    cfg.http_body_limit = 64 * 1024;
    cfg.conversations_max_message_bytes = 8 * 1024;
    cfg.client_request_timeout = std::chrono::seconds(5);
  }

  void start() {
    test_node::start();
    base = "http://127.0.0.1:" + std::to_string(n->http_port());
  }

  net::client_result call(const std::string& method, const std::string& path,
                          std::string body = {}, net::header_list headers = {}) {
    return fetch(client, method, base + path, std::move(body), std::move(headers));
  }

  std::string create() {
    auto res = call("POST", "/v1/conversations", "{}");
    BOOST_REQUIRE_MESSAGE(res.status == 201, res.status << " " << res.body);
    return parsed{res.body}.str("id");
  }

  // Checks an error reply: status, code, field, and that the message
  // mentions each fragment.
  void expect_error(const net::client_result& res, int status, const std::string& field,
                    std::vector<std::string> fragments = {}) {
    BOOST_TEST_MESSAGE(res.body);
    BOOST_TEST(res.error == "");
    BOOST_TEST(res.status == status);
    parsed p{res.body};
    BOOST_TEST(p.num("error", "status") == status);
    if (!field.empty()) {
      BOOST_TEST(p.str("error", "field") == field);
    }
    auto message = p.str("error", "message");
    for (auto& f : fragments) {
      BOOST_TEST(message.find(f) != std::string::npos, "'" << f << "' in: " << message);
    }
    auto ct = net::find_header(res.headers, "content-type");
    BOOST_REQUIRE(ct != nullptr);
    BOOST_TEST(ct->find("application/json") != std::string::npos);
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(gateway, fixture)

BOOST_AUTO_TEST_CASE(healthz_and_readyz_tell_the_truth) {
  start();
  auto res = call("GET", "/healthz");
  BOOST_TEST(res.status == 200);
  BOOST_TEST(parsed{res.body}.str("status") == "ok");
  res = call("GET", "/readyz");
  BOOST_TEST(res.status == 200);
  parsed p{res.body};
  BOOST_TEST(p.doc["ready"].get_bool().value());
  BOOST_TEST(p.doc["backend"]["ok"].get_bool().value());
  BOOST_TEST(p.doc["store"]["ok"].get_bool().value());
}

BOOST_AUTO_TEST_CASE(readyz_is_503_when_the_backend_is_down) {
  cfg.ollama_url = "http://127.0.0.1:1";
  start();
  auto res = call("GET", "/readyz");
  BOOST_TEST(res.status == 503);
  parsed p{res.body};
  BOOST_TEST(!p.doc["ready"].get_bool().value());
  BOOST_TEST(!p.doc["backend"]["ok"].get_bool().value());
  BOOST_TEST(p.doc["store"]["ok"].get_bool().value());
  BOOST_TEST(call("GET", "/healthz").status == 200);
}

BOOST_AUTO_TEST_CASE(conversations_are_created_listed_read_and_deleted) {
  start();
  auto res = call("POST", "/v1/conversations",
                  R"({"model":"test-model","system_prompt":"be brief",)"
                  R"("role":{"name":"Ada","description":"an engineer"}})");
  BOOST_REQUIRE(res.status == 201);
  parsed created{res.body};
  auto id = created.str("id");
  BOOST_TEST(id.size() == 36u);
  BOOST_TEST(created.str("model") == "test-model");
  BOOST_TEST(created.str("role", "name") == "Ada");
  BOOST_TEST(created.num("created_ms") > 0);

  auto other = create();
  res = call("GET", "/v1/conversations?limit=1");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.status << " " << res.error << " " << res.body);
  parsed page{res.body};
  BOOST_TEST(page.doc["data"].get_array().size() == 1u);
  auto next = page.str("next_after");
  res = call("GET", "/v1/conversations?limit=1&after=" + next);
  parsed page2{res.body};
  BOOST_TEST(page2.doc["data"].get_array().size() == 1u);
  BOOST_TEST(page2.doc["next_after"].is_null());

  res = call("GET", "/v1/conversations/" + id);
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(parsed{res.body}.str("conversation", "system_prompt") == "be brief");

  res = call("DELETE", "/v1/conversations/" + id);
  BOOST_TEST(res.status == 200);
  expect_error(call("GET", "/v1/conversations/" + id), 404, "id", {id});
  BOOST_TEST(call("GET", "/v1/conversations/" + other).status == 200);
}

BOOST_AUTO_TEST_CASE(a_message_gets_a_whole_reply_with_usage) {
  behaviour b;
  b.prompt_tokens = 11;
  b.completion_tokens = 5;
  server.set_default(b);
  start();
  auto id = create();
  auto res = call("POST", "/v1/conversations/" + id + "/messages",
                  R"({"content":"hello node","temperature":0.2,"max_tokens":50})");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.body);
  parsed p{res.body};
  BOOST_TEST(p.str("message", "content") == "echo: hello node");
  BOOST_TEST(p.str("message", "role") == "assistant");
  BOOST_TEST(p.num("usage", "prompt_tokens") == 11);
  BOOST_TEST(p.num("usage", "completion_tokens") == 5);
  BOOST_TEST(p.num("user", "seq") == 1);
  auto sent = server.received().back().body;
  BOOST_TEST(sent.find("\"num_predict\":50") != std::string::npos);

  res = call("GET", "/v1/conversations/" + id);
  parsed d{res.body};
  BOOST_TEST(d.doc["messages"].get_array().size() == 2u);
  BOOST_TEST(d.doc["next_after_seq"].is_null());
}

BOOST_AUTO_TEST_CASE(the_openai_provider_sends_the_key_and_reports_usage) {
  const std::string key = "sk-test-secret-123";
  cfg.llm_provider = "openai";
  cfg.openai_url = server.base_url() + "/v1";
  cfg.openai_api_key = key;
  start();
  auto id = create();
  auto msgs = "/v1/conversations/" + id + "/messages";

  auto res = call("POST", msgs, R"({"content":"hello openai"})");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.status << " " << res.body);
  parsed whole{res.body};
  BOOST_TEST(whole.str("message", "content") == "echo: hello openai");
  BOOST_TEST(whole.num("usage", "prompt_tokens") > 0);
  BOOST_TEST(whole.num("usage", "completion_tokens") > 0);

  // Streamed, usage comes from the final chunk OpenAI sends on request.
  res = call("POST", msgs, R"({"content":"and streamed","stream":true})");
  BOOST_REQUIRE(res.status == 200);
  auto at = res.body.find("event: done\ndata: ");
  BOOST_REQUIRE_MESSAGE(at != std::string::npos, res.body);
  auto start = at + std::string_view("event: done\ndata: ").size();
  parsed done{res.body.substr(start, res.body.find('\n', start) - start)};
  BOOST_TEST(done.str("message", "content") == "echo: and streamed");
  BOOST_TEST(done.num("usage", "prompt_tokens") > 0);
  BOOST_TEST(done.num("usage", "completion_tokens") > 0);

  // Every request the backend saw spoke OpenAI and carried the key.
  auto seen = server.received();
  int chats = 0;
  for (auto& r : seen) {
    BOOST_TEST(r.path.rfind("/v1/", 0) == 0, r.path);
    BOOST_TEST(r.authorization == "Bearer " + key, r.path);
    chats += r.path == "/v1/chat/completions" ? 1 : 0;
  }
  BOOST_TEST(chats == 2);
}

BOOST_AUTO_TEST_CASE(messages_of_a_conversation_come_in_pages) {
  start();
  auto id = create();
  for (int i = 0; i < 3; ++i) {
    BOOST_REQUIRE(call("POST", "/v1/conversations/" + id + "/messages",
                       R"({"content":"m)" + std::to_string(i) + R"("})")
                    .status
                  == 200);
  }
  auto res = call("GET", "/v1/conversations/" + id + "?limit=4");
  parsed first{res.body};
  BOOST_TEST(first.doc["messages"].get_array().size() == 4u);
  BOOST_TEST(first.num("next_after_seq") == 4);
  BOOST_TEST(first.num("conversation", "message_count") == 6);
  res = call("GET", "/v1/conversations/" + id + "?limit=4&after_seq=4");
  parsed second{res.body};
  auto rest = second.doc["messages"].get_array();
  BOOST_REQUIRE(rest.size() == 2u);
  BOOST_TEST(int64_t(rest.at(0)["seq"]) == 5);
  BOOST_TEST(second.doc["next_after_seq"].is_null());
  expect_error(call("GET", "/v1/conversations/" + id + "?limit=0"), 400, "limit");
  expect_error(call("GET", "/v1/conversations/" + id + "?after_seq=-1"), 400, "after_seq");
}

BOOST_AUTO_TEST_CASE(a_streamed_reply_arrives_as_server_sent_events) {
  behaviour b;
  b.reply = "one two three four five";
  server.set_default(b);
  start();
  auto id = create();
  auto res = call("POST", "/v1/conversations/" + id + "/messages",
                  R"({"content":"count","stream":true})");
  BOOST_REQUIRE(res.status == 200);
  auto ct = net::find_header(res.headers, "content-type");
  BOOST_REQUIRE(ct != nullptr);
  BOOST_TEST(*ct == "text/event-stream");

  // Concatenated deltas equal the stored reply; "done" comes last.
  std::string text, done, event;
  std::istringstream lines{res.body};
  std::string line;
  int deltas = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("event: ", 0) == 0) {
      event = line.substr(7);
    } else if (line.rfind("data: ", 0) == 0) {
      if (event == "delta") {
        ++deltas;
        text += parsed{line.substr(6)}.str("content");
      } else if (event == "done") {
        done = line.substr(6);
      }
    }
  }
  BOOST_TEST(deltas == 5);
  BOOST_TEST(text == "one two three four five");
  BOOST_REQUIRE(!done.empty());
  BOOST_TEST(parsed{done}.str("message", "content") == text);
  BOOST_TEST(res.body.rfind("event: done") > res.body.rfind("event: delta"));
}

BOOST_AUTO_TEST_CASE(bad_input_gets_a_precise_error_and_the_node_keeps_serving) {
  start();
  auto id = create();
  auto msgs = "/v1/conversations/" + id + "/messages";

  expect_error(call("POST", msgs, "{\"content\": \"unterminated"), 400, "body",
               {"malformed JSON", "expected a JSON object"});
  expect_error(call("POST", msgs, "[1,2]"), 400, "body", {"an array", "JSON object"});
  expect_error(call("POST", msgs, ""), 400, "body", {"empty"});
  expect_error(call("POST", msgs, R"({"content":3})"), 400, "content",
               {"must be a string", "the number 3"});
  expect_error(call("POST", msgs, R"({"text":"hi"})"), 400, "content", {"missing"});
  expect_error(call("POST", msgs, R"({"content":"   "})"), 400, "content", {"non-empty"});
  expect_error(call("POST", msgs, R"({"content":"hi","stream":"yes"})"), 400, "stream",
               {"true or false", "\"yes\""});
  expect_error(call("POST", msgs, R"({"content":"hi","temperature":"hot"})"), 400,
               "temperature", {"must be a number"});
  expect_error(call("POST", msgs, R"({"content":"hi","temperature":9})"), 400, "temperature",
               {"between 0 and 2", "9"});
  expect_error(call("POST", msgs, R"({"content":"hi","max_tokens":-3})"), 400, "max_tokens",
               {"positive integer", "-3"});
  expect_error(call("POST", msgs, "{\"content\":\"bad \xC3\x28 bytes\"}"), 400, "body",
               {"UTF-8"});
  expect_error(call("POST", msgs, "{\"content\":\"" + std::string(9000, 'x') + "\"}"), 413,
               "content", {"9000 bytes", "at most 8192"});
  expect_error(call("POST", msgs, "{\"content\":\"" + std::string(70 * 1024, 'x') + "\"}"),
               413, "body", {"over the limit of 65536"});
  expect_error(call("POST", "/v1/conversations/00000000-0000-4000-8000-000000000000/messages",
                    R"({"content":"hi"})"),
               404, "id", {"00000000-0000-4000-8000-000000000000"});
  expect_error(call("POST", "/v1/conversations/not-a-uuid/messages", R"({"content":"hi"})"),
               404, "id", {"not-a-uuid", "UUID"});
  expect_error(call("POST", "/v1/conversations", R"({"model":"gpt-17"})"), 400, "model",
               {"\"gpt-17\"", "serves", "\"test-model\""});
  expect_error(call("POST", "/v1/conversations", R"({"model":""})"), 400, "model",
               {"non-empty"});
  expect_error(call("POST", "/v1/conversations", R"({"role":"pirate"})"), 400, "role",
               {"object", "\"pirate\""});
  expect_error(call("POST", "/v1/conversations", R"({"role":{"description":"x"}})"), 400,
               "role.name", {"missing"});
  expect_error(call("GET", "/v1/conversations?limit=0"), 400, "limit", {"1 to 1000"});
  expect_error(call("GET", "/v1/conversations?after=zzz"), 400, "after", {"zzz"});
  expect_error(call("PUT", "/v1/conversations"), 405, "", {"PUT"});
  expect_error(call("GET", "/v2/nothing"), 404, "", {"/v2/nothing"});

  // Nothing above broke the node or the conversation.
  BOOST_TEST(call("GET", "/healthz").status == 200);
  auto res = call("POST", msgs, R"({"content":"still fine?"})");
  BOOST_TEST(res.status == 200);
  BOOST_TEST(parsed{res.body}.num("user", "seq") == 1);
}

BOOST_AUTO_TEST_CASE(backend_failures_are_502_and_the_user_message_is_kept) {
  start();
  auto id = create();
  auto msgs = "/v1/conversations/" + id + "/messages";
  std::vector<std::pair<behaviour::fault, std::string>> faults = {
    {behaviour::fault::http_error, "HTTP 500"},
    {behaviour::fault::garbage, "bad stream"},
    {behaviour::fault::malformed, "bad stream"},
    {behaviour::fault::cut_stream, "broke mid-reply"},
  };
  int sent = 0;
  for (auto& [kind, fragment] : faults) {
    behaviour b;
    b.kind = kind;
    b.status = 500;
    b.cut_after_chunks = 1;
    server.enqueue(b);
    auto res = call("POST", msgs, R"({"content":"first second third fourth"})");
    ++sent;
    expect_error(res, 502, "", {fragment});
  }
  auto res = call("GET", "/v1/conversations/" + id);
  parsed d{res.body};
  BOOST_TEST(d.doc["messages"].get_array().size() == static_cast<size_t>(sent));

  res = call("POST", msgs, R"({"content":"recovered?"})");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(parsed{res.body}.num("message", "seq") == sent + 2);
}

BOOST_AUTO_TEST_CASE(a_dead_backend_is_502_keeps_the_message_and_recovers_when_back) {
  // A port that refuses connections now and can be served on later.
  uint16_t port = 0;
  {
    scripted_llm gone;
    port = gone.port();
  }
  auto where = "127.0.0.1:" + std::to_string(port);
  cfg.ollama_url = "http://" + where;
  start();
  auto id = create();  // model list unavailable: creation still works
  auto msgs = "/v1/conversations/" + id + "/messages";
  auto res = call("POST", msgs, R"({"content":"first try"})");
  expect_error(res, 502, "", {"cannot reach", where});
  // Streamed: the failure comes before any text, so it is a plain 502 too.
  res = call("POST", msgs, R"({"content":"second try","stream":true})");
  expect_error(res, 502, "", {"cannot reach"});
  expect_error(call("POST", "/v1/conversations/00000000-0000-4000-8000-000000000000/messages",
                    R"({"content":"hi","stream":true})"),
               404, "id");

  // Both user messages were stored although no reply came.
  res = call("GET", "/v1/conversations/" + id);
  BOOST_REQUIRE(res.status == 200);
  parsed d{res.body};
  auto stored = d.doc["messages"].get_array();
  BOOST_REQUIRE_EQUAL(stored.size(), 2u);
  BOOST_TEST(std::string{std::string_view(stored.at(0)["content"])} == "first try");
  BOOST_TEST(std::string{std::string_view(stored.at(1)["content"])} == "second try");
  BOOST_TEST(std::string{std::string_view(stored.at(1)["role"])} == "user");

  // The backend comes back on the same port: the conversation goes on, and
  // the model sees the messages that found no answer before.
  scripted_llm::options o;
  o.port = port;
  scripted_llm back{o};
  res = call("POST", msgs, R"({"content":"third try"})");
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.status << " " << res.body);
  parsed reply{res.body};
  BOOST_TEST(reply.num("user", "seq") == 3);
  BOOST_TEST(reply.num("message", "seq") == 4);
  BOOST_TEST(reply.str("message", "content") == "echo: third try");
  BOOST_REQUIRE(back.requests() == 1u);
  for (auto& sent : back.received()) {
    if (sent.path == "/api/chat") {
      BOOST_TEST(sent.body.find("first try") != std::string::npos);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_stream_cut_after_text_ends_with_an_error_event) {
  start();
  auto id = create();
  behaviour b;
  b.kind = behaviour::fault::cut_stream;
  b.cut_after_chunks = 2;
  b.reply = "one two three four";
  server.enqueue(b);
  auto res = call("POST", "/v1/conversations/" + id + "/messages",
                  R"({"content":"go","stream":true})");
  BOOST_TEST(res.status == 200);
  BOOST_TEST(res.body.find("event: delta") != std::string::npos);
  BOOST_TEST(res.body.find("event: error") != std::string::npos);
  BOOST_TEST(res.body.find("event: done") == std::string::npos);
  BOOST_TEST(res.body.find("\"status\":502") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(stopping_the_node_with_a_turn_in_flight_is_prompt) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(5000);
  server.set_default(slow);
  start();
  auto id = create();
  auto done = std::make_shared<std::promise<net::client_result>>();
  net::client_request req;
  req.method = "POST";
  req.url = base + "/v1/conversations/" + id + "/messages";
  req.body = R"({"content":"slow"})";
  net::client_callbacks cb;
  cb.on_done = [done](net::client_result r) { done->set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  BOOST_REQUIRE(server.wait_in_flight(1, std::chrono::seconds(5)));

  auto t0 = std::chrono::steady_clock::now();
  n.reset();
  BOOST_TEST((std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)));
  auto future = done->get_future();
  BOOST_REQUIRE(future.wait_for(std::chrono::seconds(5)) == std::future_status::ready);
  auto res = future.get();
  BOOST_TEST(res.status != 200);  // told, not left hanging
}

BOOST_AUTO_TEST_CASE(a_token_guards_the_api_but_not_health) {
  cfg.http_token = "t0ken";
  start();
  expect_error(call("GET", "/v1/conversations"), 401, "authorization", {"bearer token"});
  expect_error(call("GET", "/v1/conversations", {}, {{"Authorization", "Bearer wrong"}}), 401,
               "authorization");
  BOOST_TEST(call("GET", "/v1/conversations", {}, {{"Authorization", "Bearer t0ken"}}).status
             == 200);
  BOOST_TEST(call("GET", "/healthz").status == 200);
}

BOOST_AUTO_TEST_CASE(models_lists_what_the_backend_serves) {
  start();
  auto res = call("GET", "/v1/models");
  BOOST_REQUIRE(res.status == 200);
  parsed p{res.body};
  auto data = p.doc["data"].get_array();
  BOOST_REQUIRE(data.size() == 2u);
  BOOST_TEST(std::string{std::string_view(data.at(0)["id"])} == "test-model");
}

BOOST_AUTO_TEST_SUITE_END()
