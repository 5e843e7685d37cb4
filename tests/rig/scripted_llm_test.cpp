// Tests for the scripted LLM server, through a blocking Beast client on 127.0.0.1.
#define BOOST_TEST_MODULE scripted_llm_test
#include <boost/test/unit_test.hpp>

#include "tests/rig/scripted_llm.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <simdjson.h>

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;
using kowalski::testing::behaviour;
using kowalski::testing::scripted_llm;

// Bounds every socket operation, so a broken server fails a test, not hangs it.
constexpr auto io_timeout = 5s;

struct http_reply {
  unsigned status = 0;
  std::string content_type;
  std::string retry_after;
  bool chunked = false;
  std::string body;      // as much as arrived
  bool complete = false;  // the body ended the way its framing announced
};

// A blocking HTTP/1.1 client on one keep-alive connection.
class test_client {
public:
  explicit test_client(uint16_t port) : stream_(ioc_) {
    stream_.expires_after(io_timeout);
    stream_.connect(tcp::endpoint(net::ip::make_address_v4("127.0.0.1"), port));
  }

  http_reply send(http::verb verb, std::string_view target, std::string body = {},
                  std::string_view authorization = {}) {
    write_request(verb, target, std::move(body), authorization);
    http::response_parser<http::string_body> parser;
    parser.body_limit(64u << 20);
    beast::error_code ec;
    http::read(stream_, buffer_, parser, ec);

    http_reply reply;
    if (!parser.is_header_done()) {
      return reply;
    }
    auto& res = parser.get();
    reply.status = res.result_int();
    reply.content_type = std::string(res[http::field::content_type]);
    reply.retry_after = std::string(res[http::field::retry_after]);
    reply.chunked = res.chunked();
    reply.body = res.body();
    reply.complete = !ec && parser.is_done();
    return reply;
  }

  http_reply post(std::string_view target, std::string body) {
    return send(http::verb::post, target, std::move(body));
  }

  http_reply get(std::string_view target) { return send(http::verb::get, target); }

  /// Sends a request and reads only the response head.
  unsigned send_and_read_head(std::string_view target, std::string body) {
    write_request(http::verb::post, target, std::move(body), {});
    http::response_parser<http::string_body> parser;
    http::read_header(stream_, buffer_, parser);
    return parser.get().result_int();
  }

  /// Sends a request without waiting for any of the reply.
  void send_only(std::string_view target, std::string body) {
    write_request(http::verb::post, target, std::move(body), {});
  }

  /// True when the server has closed the connection: a read finds its end.
  bool closed_by_server() {
    stream_.expires_after(io_timeout);
    char byte;
    beast::error_code ec;
    stream_.read_some(net::buffer(&byte, 1), ec);
    return ec == net::error::eof || ec == net::error::connection_reset;
  }

  void hang_up() { stream_.socket().close(); }

private:
  void write_request(http::verb verb, std::string_view target, std::string body,
                     std::string_view authorization) {
    http::request<http::string_body> req{verb, target, 11};
    req.set(http::field::host, "127.0.0.1");
    if (!authorization.empty()) {
      req.set(http::field::authorization, authorization);
    }
    if (verb == http::verb::post) {
      req.set(http::field::content_type, "application/json");
      req.body() = std::move(body);
    }
    req.prepare_payload();
    stream_.expires_after(io_timeout);
    http::write(stream_, req);
  }

  net::io_context ioc_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
};

std::string chat_body(std::string_view content, std::string_view extra = "",
                      std::string_view model = "test-model") {
  return std::string(R"({"model":")") + std::string(model) +
         R"(","messages":[{"role":"system","content":"be brief"},)" +
         R"({"role":"user","content":)" + std::string(content) + "}]" + std::string(extra) + "}";
}

std::vector<std::string> split(std::string_view text, std::string_view separator) {
  std::vector<std::string> out;
  while (!text.empty()) {
    auto at = text.find(separator);
    out.emplace_back(text.substr(0, at));
    text = at == std::string_view::npos ? std::string_view{} : text.substr(at + separator.size());
  }
  return out;
}

// Payloads of an SSE body's `data:` events, in order.
std::vector<std::string> sse_data(std::string_view body) {
  std::vector<std::string> out;
  for (auto& event : split(body, "\n\n")) {
    BOOST_REQUIRE_MESSAGE(event.rfind("data: ", 0) == 0, "not a data event: " << event);
    out.push_back(event.substr(6));
  }
  return out;
}

int64_t ms_since(std::chrono::steady_clock::time_point start) {
  auto elapsed = std::chrono::steady_clock::now() - start;
  return std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count();
}

// Parses JSON the tests then read; each call gets its own document.
struct json_doc {
  explicit json_doc(std::string_view text) {
    auto error = parser.parse(text.data(), text.size()).get(root);
    BOOST_REQUIRE_MESSAGE(!error, "invalid JSON: " << text);
  }
  simdjson::dom::parser parser;
  simdjson::dom::element root;
};

std::string_view str(simdjson::simdjson_result<simdjson::dom::element> e) {
  std::string_view s;
  BOOST_REQUIRE(!e.get(s));
  return s;
}

int64_t num(simdjson::simdjson_result<simdjson::dom::element> e) {
  int64_t v = 0;
  BOOST_REQUIRE(!e.get(v));
  return v;
}

bool is_json(std::string_view text) {
  simdjson::dom::parser parser;
  simdjson::dom::element e;
  return !parser.parse(text.data(), text.size()).get(e);
}

behaviour fault(behaviour::fault kind) {
  behaviour b;
  b.kind = kind;
  return b;
}

struct server_fixture {
  scripted_llm llm;
  test_client client{llm.port()};
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(scripted_llm_suite, server_fixture)

BOOST_AUTO_TEST_CASE(ollama_stream_lines_concatenate_to_the_echo) {
  auto reply = client.post("/api/chat", chat_body(R"("hi")"));

  BOOST_TEST(reply.status == 200u);
  BOOST_TEST(reply.complete);
  BOOST_TEST(reply.chunked);
  BOOST_TEST(reply.content_type == "application/x-ndjson");
  auto lines = split(reply.body, "\n");
  BOOST_REQUIRE_EQUAL(lines.size(), 3u);
  std::string text;
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    json_doc line(lines[i]);
    BOOST_TEST(str(line.root["model"]) == "test-model");
    BOOST_TEST(str(line.root["message"]["role"]) == "assistant");
    BOOST_TEST(line.root["done"].get_bool().value() == false);
    text += str(line.root["message"]["content"]);
  }
  BOOST_TEST(text == "echo: hi");

  json_doc last(lines.back());
  BOOST_TEST(last.root["done"].get_bool().value());
  BOOST_TEST(str(last.root["done_reason"]) == "stop");
  BOOST_TEST(str(last.root["message"]["content"]) == "");
  // "be brief" + "hi" = 10 characters: 10 / 4 + 1.
  BOOST_TEST(num(last.root["prompt_eval_count"]) == 3);
  BOOST_TEST(num(last.root["eval_count"]) == 2);
  BOOST_TEST(num(last.root["eval_duration"]) > 0);
  BOOST_TEST(num(last.root["total_duration"]) > 0);
  BOOST_TEST(llm.requests() == 1u);
}

BOOST_AUTO_TEST_CASE(ollama_whole_reply_and_num_predict_limit) {
  auto whole = client.post("/api/chat", chat_body(R"("hi there")", R"(,"stream":false)"));
  BOOST_TEST(whole.status == 200u);
  BOOST_TEST(!whole.chunked);
  json_doc doc(whole.body);
  BOOST_TEST(str(doc.root["message"]["content"]) == "echo: hi there");
  BOOST_TEST(doc.root["done"].get_bool().value());
  BOOST_TEST(str(doc.root["done_reason"]) == "stop");
  BOOST_TEST(num(doc.root["eval_count"]) == 3);

  auto limited = client.post("/api/chat",
                             chat_body(R"("hi there")", R"(,"options":{"num_predict":2})"));
  auto lines = split(limited.body, "\n");
  BOOST_REQUIRE_EQUAL(lines.size(), 3u);
  json_doc last(lines.back());
  BOOST_TEST(str(last.root["done_reason"]) == "length");
  BOOST_TEST(num(last.root["eval_count"]) == 2);
}

BOOST_AUTO_TEST_CASE(json_special_characters_survive_the_echo) {
  auto reply = client.post("/api/chat", chat_body(R"("say \"x\"\n\\ \u00e9 \u0001")",
                                                  R"(,"stream":false)"));
  json_doc doc(reply.body);
  BOOST_TEST(str(doc.root["message"]["content"]) == "echo: say \"x\"\n\\ \xC3\xA9 \x01");
}

BOOST_AUTO_TEST_CASE(openai_stream_carries_role_content_and_usage) {
  auto reply = client.post(
      "/v1/chat/completions",
      chat_body(R"("hi")", R"(,"stream":true,"stream_options":{"include_usage":true})"));

  BOOST_TEST(reply.status == 200u);
  BOOST_TEST(reply.complete);
  BOOST_TEST(reply.content_type == "text/event-stream");
  auto events = sse_data(reply.body);
  BOOST_REQUIRE_EQUAL(events.size(), 6u);  // role, 2 contents, finish, usage, [DONE]
  BOOST_TEST(events.back() == "[DONE]");

  json_doc role(events[0]);
  BOOST_TEST(str(role.root["object"]) == "chat.completion.chunk");
  BOOST_TEST(str(role.root["choices"].at(0)["delta"]["role"]) == "assistant");
  BOOST_TEST(role.root["usage"].is_null());
  std::string text;
  for (std::size_t i = 1; i <= 2; ++i) {
    json_doc chunk(events[i]);
    BOOST_TEST(chunk.root["choices"].at(0)["finish_reason"].is_null());
    BOOST_TEST(chunk.root["usage"].is_null());
    text += str(chunk.root["choices"].at(0)["delta"]["content"]);
  }
  BOOST_TEST(text == "echo: hi");

  json_doc finish(events[3]);
  BOOST_TEST(str(finish.root["choices"].at(0)["finish_reason"]) == "stop");
  json_doc usage(events[4]);
  simdjson::dom::array choices;
  BOOST_REQUIRE(!usage.root["choices"].get(choices));
  BOOST_TEST(choices.size() == 0u);
  BOOST_TEST(num(usage.root["usage"]["prompt_tokens"]) == 3);
  BOOST_TEST(num(usage.root["usage"]["completion_tokens"]) == 2);
  BOOST_TEST(num(usage.root["usage"]["total_tokens"]) == 5);
}

BOOST_AUTO_TEST_CASE(openai_stream_without_usage_and_with_max_tokens) {
  auto reply = client.post("/v1/chat/completions",
                           chat_body(R"("a b c")", R"(,"stream":true,"max_tokens":2)"));
  auto events = sse_data(reply.body);
  BOOST_REQUIRE_EQUAL(events.size(), 5u);  // role, 2 contents, finish, [DONE]
  json_doc finish(events[3]);
  BOOST_TEST(str(finish.root["choices"].at(0)["finish_reason"]) == "length");
  BOOST_TEST(finish.root["usage"].error() == simdjson::NO_SUCH_FIELD);
}

BOOST_AUTO_TEST_CASE(openai_whole_reply_has_usage) {
  behaviour b;
  b.reply = "fixed words";
  b.prompt_tokens = 11;
  b.completion_tokens = 7;
  llm.set_default(b);

  auto reply = client.post("/v1/chat/completions", chat_body(R"("hi")"));
  BOOST_TEST(reply.status == 200u);
  json_doc doc(reply.body);
  BOOST_TEST(str(doc.root["object"]) == "chat.completion");
  BOOST_TEST(str(doc.root["model"]) == "test-model");
  BOOST_TEST(str(doc.root["choices"].at(0)["message"]["role"]) == "assistant");
  BOOST_TEST(str(doc.root["choices"].at(0)["message"]["content"]) == "fixed words");
  BOOST_TEST(str(doc.root["choices"].at(0)["finish_reason"]) == "stop");
  BOOST_TEST(num(doc.root["usage"]["prompt_tokens"]) == 11);
  BOOST_TEST(num(doc.root["usage"]["completion_tokens"]) == 7);
  BOOST_TEST(num(doc.root["usage"]["total_tokens"]) == 18);
}

BOOST_AUTO_TEST_CASE(unknown_model_gets_the_protocol_404) {
  auto ollama = client.post("/api/chat", chat_body(R"("hi")", "", "nope"));
  BOOST_TEST(ollama.status == 404u);
  json_doc o(ollama.body);
  BOOST_TEST(str(o.root["error"]) == "model \"nope\" not found, try pulling it first");

  auto openai = client.post("/v1/chat/completions", chat_body(R"("hi")", "", "nope"));
  BOOST_TEST(openai.status == 404u);
  json_doc a(openai.body);
  BOOST_TEST(str(a.root["error"]["message"]) == "The model `nope` does not exist");
  BOOST_TEST(str(a.root["error"]["type"]) == "invalid_request_error");
  BOOST_TEST(str(a.root["error"]["param"]) == "model");
  BOOST_TEST(str(a.root["error"]["code"]) == "model_not_found");
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(lists_models_in_both_protocols) {
  json_doc tags(client.get("/api/tags").body);
  BOOST_TEST(str(tags.root["models"].at(0)["name"]) == "test-model");
  BOOST_TEST(str(tags.root["models"].at(1)["model"]) == "other-model");
  BOOST_TEST(str(tags.root["models"].at(0)["digest"]).rfind("sha256:", 0) == 0u);

  json_doc models(client.get("/v1/models").body);
  BOOST_TEST(str(models.root["object"]) == "list");
  BOOST_TEST(str(models.root["data"].at(1)["id"]) == "other-model");
  BOOST_TEST(str(models.root["data"].at(0)["owned_by"]) == "scripted");
}

BOOST_AUTO_TEST_CASE(malformed_request_json_gets_400) {
  auto ollama = client.post("/api/chat", R"({"model":"test-model","messages":[)");
  BOOST_TEST(ollama.status == 400u);
  BOOST_TEST(is_json(ollama.body));

  auto openai = client.post("/v1/chat/completions", R"({"model":"test-model","stream":3})");
  BOOST_TEST(openai.status == 400u);
  json_doc doc(openai.body);
  BOOST_TEST(str(doc.root["error"]["message"]) == "stream must be a boolean");
}

BOOST_AUTO_TEST_CASE(rate_limit_sends_retry_after_then_recovers) {
  auto limit = fault(behaviour::fault::http_error);
  limit.status = 429;
  limit.retry_after_s = 7;
  llm.enqueue(limit);
  llm.enqueue(limit);

  auto ollama = client.post("/api/chat", chat_body(R"("hi")"));
  BOOST_TEST(ollama.status == 429u);
  BOOST_TEST(ollama.retry_after == "7");
  json_doc o(ollama.body);
  BOOST_TEST(!str(o.root["error"]).empty());

  auto openai = client.post("/v1/chat/completions", chat_body(R"("hi")"));
  BOOST_TEST(openai.status == 429u);
  BOOST_TEST(openai.retry_after == "7");
  json_doc a(openai.body);
  BOOST_TEST(str(a.root["error"]["code"]) == "rate_limit_exceeded");

  // The queue is used up: the default answers again.
  auto ok = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)"));
  BOOST_TEST(ok.status == 200u);
  BOOST_TEST(ok.retry_after.empty());
}

BOOST_AUTO_TEST_CASE(server_error_has_no_retry_after) {
  auto failure = fault(behaviour::fault::http_error);
  failure.status = 503;
  llm.enqueue(failure);
  auto reply = client.post("/v1/chat/completions", chat_body(R"("hi")"));
  BOOST_TEST(reply.status == 503u);
  BOOST_TEST(reply.retry_after.empty());
  json_doc doc(reply.body);
  BOOST_TEST(str(doc.root["error"]["type"]) == "server_error");
}

BOOST_AUTO_TEST_CASE(cut_stream_closes_before_the_end) {
  auto cut = fault(behaviour::fault::cut_stream);
  cut.reply = "one two three four five";
  cut.cut_after_chunks = 2;
  llm.enqueue(cut);

  auto start = std::chrono::steady_clock::now();
  auto reply = client.post("/api/chat", chat_body(R"("hi")"));
  // The read ends because the server closed, not because the client timed out.
  BOOST_TEST(ms_since(start) < 1000);
  BOOST_TEST(reply.status == 200u);
  BOOST_TEST(!reply.complete);
  BOOST_TEST(client.closed_by_server());
  auto lines = split(reply.body, "\n");
  BOOST_REQUIRE_EQUAL(lines.size(), 2u);
  for (auto& line : lines) {
    json_doc doc(line);
    BOOST_TEST(doc.root["done"].get_bool().value() == false);
  }
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(cut_openai_stream_never_sends_done) {
  auto cut = fault(behaviour::fault::cut_stream);
  cut.cut_after_chunks = 1;
  llm.enqueue(cut);
  auto reply = client.post("/v1/chat/completions", chat_body(R"("hi")", R"(,"stream":true)"));
  BOOST_TEST(!reply.complete);
  auto events = sse_data(reply.body);
  BOOST_REQUIRE_EQUAL(events.size(), 2u);  // role, one content
  BOOST_TEST(is_json(events[1]));
  BOOST_TEST(reply.body.find("[DONE]") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(cut_whole_reply_is_shorter_than_announced) {
  llm.enqueue(fault(behaviour::fault::cut_stream));
  auto reply = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)"));
  BOOST_TEST(reply.status == 200u);
  BOOST_TEST(!reply.complete);
  BOOST_TEST(!is_json(reply.body));
}

BOOST_AUTO_TEST_CASE(malformed_fault_sends_broken_json) {
  llm.enqueue(fault(behaviour::fault::malformed));
  llm.enqueue(fault(behaviour::fault::malformed));
  llm.enqueue(fault(behaviour::fault::malformed));

  auto lines = split(client.post("/api/chat", chat_body(R"("hi")")).body, "\n");
  BOOST_REQUIRE(!lines.empty());
  BOOST_TEST(!is_json(lines[0]));

  auto events = sse_data(
      client.post("/v1/chat/completions", chat_body(R"("hi")", R"(,"stream":true)")).body);
  BOOST_REQUIRE(!events.empty());
  BOOST_TEST(!is_json(events[0]));

  auto whole = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)"));
  BOOST_TEST(whole.status == 200u);
  BOOST_TEST(whole.complete);
  BOOST_TEST(!is_json(whole.body));
}

BOOST_AUTO_TEST_CASE(garbage_fault_sends_non_json_bytes) {
  llm.enqueue(fault(behaviour::fault::garbage));
  auto reply = client.post("/api/chat", chat_body(R"("hi")"));
  BOOST_TEST(reply.status == 200u);
  BOOST_TEST(reply.complete);
  BOOST_TEST(reply.content_type == "text/html");
  BOOST_TEST(!reply.body.empty());
  BOOST_TEST(!is_json(reply.body));
}

BOOST_AUTO_TEST_CASE(stream_error_fault_ends_with_the_error_record) {
  auto failing = fault(behaviour::fault::stream_error);
  failing.reply = "a b c d e";
  llm.enqueue(failing);
  llm.enqueue(failing);

  auto lines = split(client.post("/api/chat", chat_body(R"("hi")")).body, "\n");
  BOOST_REQUIRE_EQUAL(lines.size(), 3u);
  json_doc first(lines[0]);
  BOOST_TEST(str(first.root["message"]["content"]) == "a");
  json_doc error(lines[2]);
  BOOST_TEST(!str(error.root["error"]).empty());

  auto reply = client.post("/v1/chat/completions", chat_body(R"("hi")", R"(,"stream":true)"));
  BOOST_TEST(reply.complete);
  auto events = sse_data(reply.body);
  BOOST_REQUIRE_EQUAL(events.size(), 5u);  // role, 2 contents, error, [DONE]
  json_doc oerror(events[3]);
  BOOST_TEST(str(oerror.root["error"]["type"]) == "server_error");
  BOOST_TEST(num(oerror.root["error"]["code"]) == 500);
  BOOST_TEST(events[4] == "[DONE]");
}

BOOST_AUTO_TEST_CASE(chunk_chars_never_split_utf8) {
  behaviour b;
  b.reply = "h\xC3\xA9llo w\xC3\xB6rld \xF0\x9F\x98\x80!";  // héllo wörld 😀!
  b.chunk_chars = 2;
  llm.set_default(b);

  auto lines = split(client.post("/api/chat", chat_body(R"("hi")")).body, "\n");
  std::string text;
  for (std::size_t i = 0; i + 1 < lines.size(); ++i) {
    json_doc line(lines[i]);
    auto piece = str(line.root["message"]["content"]);
    BOOST_TEST(piece.find("\xEF\xBF\xBD") == std::string_view::npos);  // no U+FFFD
    text += piece;
  }
  BOOST_TEST(text == b.reply);
  BOOST_TEST(lines.size() == 8u);  // 14 characters in pairs, then the final line
}

BOOST_AUTO_TEST_CASE(words_keep_their_whitespace) {
  behaviour b;
  b.reply = "  two  words\nand more  ";
  llm.set_default(b);
  auto events = sse_data(
      client.post("/v1/chat/completions", chat_body(R"("hi")", R"(,"stream":true)")).body);
  std::string text;
  std::size_t pieces = 0;
  for (std::size_t i = 1; i + 2 < events.size(); ++i) {
    json_doc chunk(events[i]);
    text += str(chunk.root["choices"].at(0)["delta"]["content"]);
    ++pieces;
  }
  BOOST_TEST(text == b.reply);
  BOOST_TEST(pieces == 4u);
}

BOOST_AUTO_TEST_CASE(queue_goes_before_script_and_script_before_default) {
  behaviour fallback;
  fallback.reply = "default";
  llm.set_default(fallback);
  llm.set_script([](const std::string& body) {
    behaviour b;
    b.reply = body.find("other-model") != std::string::npos ? "other" : "scripted";
    return b;
  });
  behaviour queued;
  queued.reply = "queued";
  llm.enqueue(queued);

  auto reply_text = [&](std::string_view model) {
    auto r = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)", model));
    json_doc doc(r.body);
    return std::string(str(doc.root["message"]["content"]));
  };
  BOOST_TEST(reply_text("test-model") == "queued");
  BOOST_TEST(reply_text("test-model") == "scripted");
  BOOST_TEST(reply_text("other-model") == "other");

  llm.set_script(nullptr);
  BOOST_TEST(reply_text("test-model") == "default");
}

BOOST_AUTO_TEST_CASE(records_requests_with_authorization) {
  auto body = chat_body(R"("hi")");
  client.send(http::verb::post, "/v1/chat/completions", body, "Bearer sk-test");
  client.get("/v1/models");
  client.get("/_stats");  // control traffic is not recorded

  auto received = llm.received();
  BOOST_REQUIRE_EQUAL(received.size(), 2u);
  BOOST_TEST(received[0].method == "POST");
  BOOST_TEST(received[0].path == "/v1/chat/completions");
  BOOST_TEST(received[0].body == body);
  BOOST_TEST(received[0].authorization == "Bearer sk-test");
  BOOST_TEST(received[1].path == "/v1/models");
  BOOST_TEST(received[1].authorization.empty());

  llm.reset_counters();
  BOOST_TEST(llm.received().empty());
  BOOST_TEST(llm.requests() == 0u);
}

BOOST_AUTO_TEST_CASE(keep_alive_serves_many_requests_on_one_connection) {
  for (int i = 0; i < 200; ++i) {
    auto reply = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)"));
    BOOST_REQUIRE(reply.complete);
  }
  BOOST_TEST(llm.requests() == 200u);
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(control_endpoints_drive_the_server) {
  auto set = client.post("/_behaviour", R"({"reply":"from control","latency_ms":0})");
  BOOST_TEST(set.status == 200u);
  auto queued = client.post(
      "/_enqueue", R"([{"kind":"http_error","status":429,"retry_after_s":3},{"reply":"q"}])");
  BOOST_TEST(queued.status == 200u);
  BOOST_TEST(client.post("/_behaviour", R"({"kind":"explode"})").status == 400u);
  BOOST_TEST(client.post("/_enqueue", R"({"latency_ms":-1})").status == 400u);

  auto limited = client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)"));
  BOOST_TEST(limited.status == 429u);
  BOOST_TEST(limited.retry_after == "3");
  json_doc q(client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)")).body);
  BOOST_TEST(str(q.root["message"]["content"]) == "q");
  json_doc d(client.post("/api/chat", chat_body(R"("hi")", R"(,"stream":false)")).body);
  BOOST_TEST(str(d.root["message"]["content"]) == "from control");

  json_doc stats(client.get("/_stats").body);
  BOOST_TEST(num(stats.root["requests"]) == 3);
  BOOST_TEST(num(stats.root["max_in_flight"]) == 1);
  BOOST_TEST(client.post("/_reset", "").status == 200u);
  json_doc after(client.get("/_stats").body);
  BOOST_TEST(num(after.root["requests"]) == 0);
}

BOOST_AUTO_TEST_CASE(latency_waits_on_timers_not_threads) {
  behaviour slow;
  slow.latency = 200ms;
  llm.set_default(slow);

  // Three clients at once against two server threads: only timers let all
  // three wait at the same time.
  auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> clients;
  std::vector<unsigned> statuses(3, 0);
  for (std::size_t i = 0; i < 3; ++i) {
    clients.emplace_back([&, i] {
      try {
        test_client own(llm.port());
        statuses[i] = own.post("/api/chat", chat_body(R"("hi")")).status;
      } catch (const std::exception&) {
        statuses[i] = 0;  // reported by the status check below
      }
    });
  }
  for (auto& t : clients) {
    t.join();
  }
  auto elapsed = ms_since(start);

  for (auto status : statuses) {
    BOOST_TEST(status == 200u);
  }
  BOOST_TEST(elapsed >= 200);
  BOOST_TEST(elapsed < 500);
  BOOST_TEST(llm.max_in_flight() == 3u);
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(chunk_delay_spaces_the_chunks) {
  behaviour b;
  b.reply = "a b c d";
  b.chunk_delay = 40ms;
  llm.set_default(b);

  auto start = std::chrono::steady_clock::now();
  auto reply = client.post("/api/chat", chat_body(R"("hi")"));
  auto elapsed = ms_since(start);
  BOOST_TEST(reply.complete);
  BOOST_TEST(split(reply.body, "\n").size() == 5u);
  BOOST_TEST(elapsed >= 160);  // four gaps between five records
}

BOOST_AUTO_TEST_CASE(hanging_up_during_latency_frees_the_slot) {
  behaviour slow;
  slow.latency = 10s;
  llm.set_default(slow);

  client.send_only("/api/chat", chat_body(R"("hi")"));
  BOOST_REQUIRE(llm.wait_in_flight(1, 2s));
  client.hang_up();
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(hanging_up_mid_stream_frees_the_slot) {
  behaviour slow;
  slow.reply = "one two three four five six seven eight nine ten";
  slow.chunk_delay = 1s;
  llm.set_default(slow);

  BOOST_TEST(client.send_and_read_head("/api/chat", chat_body(R"("hi")")) == 200u);
  BOOST_TEST(llm.in_flight() == 1u);
  client.hang_up();
  BOOST_TEST(llm.wait_in_flight(0, 2s));
}

BOOST_AUTO_TEST_CASE(count_waits_return_when_met_and_give_up_at_their_timeout) {
  behaviour slow;
  slow.latency = 500ms;
  llm.set_default(slow);

  client.send_only("/api/chat", chat_body(R"("hi")"));
  BOOST_REQUIRE(llm.wait_requests(1, 2s));
  BOOST_REQUIRE(llm.wait_in_flight(1, 2s));

  // Unmet conditions wait out their timeout and report false.
  auto start = std::chrono::steady_clock::now();
  BOOST_TEST(!llm.wait_requests(2, 50ms));
  BOOST_TEST(!llm.wait_in_flight(0, 50ms));
  BOOST_TEST(ms_since(start) >= 100);

  // The reply leaves after its latency and the wait wakes up for it.
  BOOST_TEST(llm.wait_in_flight(0, 2s));
  BOOST_TEST(ms_since(start) < 1000);
  BOOST_TEST(llm.requests() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_CASE(stops_promptly_with_requests_pending) {
  auto llm = std::make_unique<scripted_llm>();
  behaviour slow;
  slow.latency = 10s;
  llm->set_default(slow);
  test_client client(llm->port());
  client.send_only("/api/chat", chat_body(R"("hi")"));
  BOOST_REQUIRE(llm->wait_in_flight(1, 2s));

  auto start = std::chrono::steady_clock::now();
  llm.reset();
  BOOST_TEST(ms_since(start) < 1000);
  BOOST_TEST(client.closed_by_server());
}
