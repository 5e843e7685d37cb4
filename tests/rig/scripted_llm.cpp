// Scripted LLM server: one Beast session per connection on its own strand;
// each chat reply is planned as ready-framed bytes, then written with timers.
#include "tests/rig/scripted_llm.hpp"

#include "runtime/json/json.hpp"
#include "runtime/memory/embedding.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <simdjson.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <string_view>
#include <thread>
#include <utility>

namespace kowalski::testing {

namespace {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;
using error_code = boost::system::error_code;
using script_fn = std::function<behaviour(const std::string&)>;

constexpr std::size_t max_recorded_requests = 10'000;
constexpr std::size_t max_request_body = 64u << 20;
constexpr std::string_view fixed_created_at = "2024-01-01T00:00:00Z";
constexpr long long fixed_created_unix = 1704067200;  // 2024-01-01T00:00:00Z
constexpr std::string_view scripted_error_text = "scripted stream error";

enum class protocol { ollama, openai };

// The bytes of one response in writing order. chunk_delay separates the
// entries of `chunks`; everything else goes out in the first write.
struct response_plan {
  std::string head;                 // status line and header fields, no blank line
  std::string body;                 // sent right after the head
  std::vector<std::string> chunks;  // each an already framed HTTP chunk
  std::string tail;                 // sent with the last chunk
  std::chrono::milliseconds latency{0};
  std::chrono::milliseconds chunk_delay{0};
  bool close = false;  // close the connection once written (cut_stream)
  bool chat = false;   // holds an in_flight slot until written or closed
};

// ---------------------------------------------------------------- framing

void append_status(std::string& out, unsigned status, std::string_view content_type) {
  out += "HTTP/1.1 ";
  out += std::to_string(status);
  out += ' ';
  out += http::obsolete_reason(static_cast<http::status>(status));
  out += "\r\nServer: scripted-llm\r\nContent-Type: ";
  out += content_type;
  out += "\r\n";
}

response_plan sized_reply(unsigned status, std::string_view content_type, std::string body) {
  response_plan plan;
  append_status(plan.head, status, content_type);
  plan.head += "Content-Length: ";
  plan.head += std::to_string(body.size());
  plan.head += "\r\n";
  plan.body = std::move(body);
  return plan;
}

// Limitation: HTTP/1.0 clients get chunked streams too; every client we test speaks 1.1.
response_plan chunked_reply(std::string_view content_type) {
  response_plan plan;
  append_status(plan.head, 200, content_type);
  plan.head += "Transfer-Encoding: chunked\r\n";
  plan.tail = "0\r\n\r\n";
  return plan;
}

std::string framed_chunk(std::string_view data) {
  static constexpr char hex[] = "0123456789abcdef";
  char size[2 * sizeof(std::size_t)];
  std::size_t n = 0;
  for (auto v = data.size(); v != 0 || n == 0; v >>= 4) {
    size[n++] = hex[v & 0xF];
  }
  std::string out;
  out.reserve(n + data.size() + 4);
  while (n > 0) {
    out += size[--n];
  }
  out += "\r\n";
  out += data;
  out += "\r\n";
  return out;
}

// ---------------------------------------------------------------- text

bool is_utf8_lead(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) != 0x80;
}

std::size_t count_chars(std::string_view s) {
  std::size_t n = 0;
  for (char c : s) {
    n += is_utf8_lead(c) ? 1 : 0;
  }
  return n;
}

bool is_space(char c) {
  return c == ' ' || c == '\n' || c == '\t' || c == '\r';
}

// Pieces of `text` whose concatenation is `text`: `chunk_chars` characters
// each (never splitting a UTF-8 sequence), or one word each with the
// whitespace before it, the way tokenizers hand out " word".
std::vector<std::string_view> split_reply(std::string_view text, std::size_t chunk_chars) {
  std::vector<std::string_view> pieces;
  std::size_t start = 0;
  if (chunk_chars > 0) {
    std::size_t chars = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
      if (!is_utf8_lead(text[i])) {
        continue;
      }
      if (chars == chunk_chars) {
        pieces.push_back(text.substr(start, i - start));
        start = i;
        chars = 0;
      }
      ++chars;
    }
  } else {
    // Leading whitespace stays with the first word, trailing with the last.
    std::size_t i = 0;
    while (i < text.size() && is_space(text[i])) {
      ++i;
    }
    while (i < text.size()) {
      while (i < text.size() && !is_space(text[i])) {
        ++i;
      }
      auto gap = i;
      while (i < text.size() && is_space(text[i])) {
        ++i;
      }
      if (i == text.size()) {
        break;
      }
      pieces.push_back(text.substr(start, gap - start));
      start = gap;
    }
  }
  if (start < text.size()) {
    pieces.push_back(text.substr(start));
  }
  return pieces;
}

// ---------------------------------------------------------------- requests

struct chat_request {
  std::string model;
  bool stream = true;
  bool include_usage = false;
  int64_t max_chunks = 0;  // num_predict or max_tokens; 0 = no limit
  std::string last_user;
  std::size_t content_chars = 0;
};

std::optional<int64_t> integer_field(simdjson::dom::object obj, std::string_view key) {
  simdjson::dom::element e;
  if (obj[key].get(e)) {
    return std::nullopt;
  }
  int64_t i;
  if (!e.get(i)) {
    return i;
  }
  double d;
  if (!e.get(d)) {
    return static_cast<int64_t>(d);
  }
  return std::nullopt;
}

// Text of a message content: a string, or OpenAI's list of typed parts.
std::string content_text(simdjson::dom::element content) {
  std::string_view s;
  if (!content.get(s)) {
    return std::string(s);
  }
  std::string out;
  simdjson::dom::array parts;
  if (!content.get(parts)) {
    for (auto part : parts) {
      std::string_view text;
      if (!part["text"].get(text)) {
        out += text;
      }
    }
  }
  return out;
}

// Reads a chat body into `out`; returns a message naming the bad field.
std::optional<std::string> parse_chat(protocol proto, const std::string& body,
                                      chat_request& out) {
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc)) {
    return "request body is not valid JSON";
  }
  simdjson::dom::object root;
  if (doc.get(root)) {
    return "request body must be a JSON object";
  }

  std::string_view model;
  if (root["model"].get(model) || model.empty()) {
    return "model is required";
  }
  out.model = std::string(model);

  out.stream = proto == protocol::ollama;
  simdjson::dom::element stream;
  if (!root["stream"].get(stream) && !stream.is_null() && stream.get(out.stream)) {
    return "stream must be a boolean";
  }

  simdjson::dom::element messages;
  if (!root["messages"].get(messages) && !messages.is_null()) {
    simdjson::dom::array list;
    if (messages.get(list)) {
      return "messages must be an array";
    }
    for (auto message : list) {
      simdjson::dom::element content;
      if (message["content"].get(content)) {
        continue;
      }
      auto text = content_text(content);
      out.content_chars += count_chars(text);
      std::string_view role;
      if (!message["role"].get(role) && role == "user") {
        out.last_user = std::move(text);
      }
    }
  }

  std::optional<int64_t> limit;
  if (proto == protocol::ollama) {
    simdjson::dom::object options;
    if (!root["options"].get(options)) {
      limit = integer_field(options, "num_predict");
    }
  } else {
    limit = integer_field(root, "max_tokens");
    if (!limit) {
      limit = integer_field(root, "max_completion_tokens");
    }
    simdjson::dom::object stream_options;
    if (!root["stream_options"].get(stream_options)) {
      bool include = false;
      if (!stream_options["include_usage"].get(include)) {
        out.include_usage = include;
      }
    }
  }
  // Ollama's -1 and -2 mean "no limit"; zero limits nothing either.
  out.max_chunks = limit && *limit > 0 ? *limit : 0;
  return std::nullopt;
}

std::optional<behaviour::fault> fault_from_name(std::string_view name) {
  using f = behaviour::fault;
  static constexpr std::pair<std::string_view, f> names[] = {
      {"none", f::none},           {"http_error", f::http_error},
      {"malformed", f::malformed}, {"cut_stream", f::cut_stream},
      {"garbage", f::garbage},     {"stream_error", f::stream_error}};
  for (auto& [n, kind] : names) {
    if (n == name) {
      return kind;
    }
  }
  return std::nullopt;
}

// Reads a behaviour sent to the control endpoints; absent fields keep their
// defaults. Returns a message naming the bad field.
std::optional<std::string> parse_behaviour(simdjson::dom::element e, behaviour& b) {
  simdjson::dom::object obj;
  if (e.get(obj)) {
    return "a behaviour must be a JSON object";
  }
  simdjson::dom::element kind;
  if (!obj["kind"].get(kind)) {
    std::string_view name;
    std::optional<behaviour::fault> fault;
    if (!kind.get(name)) {
      fault = fault_from_name(name);
    }
    if (!fault) {
      return "kind must be one of none, http_error, malformed, cut_stream, garbage, "
             "stream_error";
    }
    b.kind = *fault;
  }
  simdjson::dom::element reply;
  if (!obj["reply"].get(reply)) {
    std::string_view text;
    if (reply.get(text)) {
      return "reply must be a string";
    }
    b.reply = std::string(text);
  }

  static constexpr std::string_view numeric[] = {
      "status",      "retry_after_s", "latency_ms",    "chunk_delay_ms",
      "chunk_chars", "prompt_tokens", "completion_tokens", "cut_after_chunks"};
  for (auto key : numeric) {
    simdjson::dom::element present;
    if (obj[key].get(present)) {
      continue;
    }
    auto v = integer_field(obj, key);
    if (!v || *v < 0 || *v > UINT32_MAX) {
      return std::string(key) + " must be a non-negative integer";
    }
    if (key == "status") {
      b.status = static_cast<int>(*v);
    } else if (key == "retry_after_s") {
      b.retry_after_s = static_cast<int>(*v);
    } else if (key == "latency_ms") {
      b.latency = std::chrono::milliseconds(*v);
    } else if (key == "chunk_delay_ms") {
      b.chunk_delay = std::chrono::milliseconds(*v);
    } else if (key == "chunk_chars") {
      b.chunk_chars = static_cast<std::size_t>(*v);
    } else if (key == "prompt_tokens") {
      b.prompt_tokens = static_cast<uint32_t>(*v);
    } else if (key == "completion_tokens") {
      b.completion_tokens = static_cast<uint32_t>(*v);
    } else {
      b.cut_after_chunks = static_cast<std::size_t>(*v);
    }
  }
  if (b.kind == behaviour::fault::http_error && (b.status < 100 || b.status > 999)) {
    return "status must be an HTTP status code";
  }
  return std::nullopt;
}

// ---------------------------------------------------------------- replies

struct reply_context {
  protocol proto = protocol::ollama;
  std::string_view model;
  std::string id;  // OpenAI completion id
  bool include_usage = false;
  std::vector<std::string_view> pieces;  // the chunks that will be sent
  std::string_view text;                 // their concatenation
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  const char* finish_reason = "stop";
};

std::string_view stream_content_type(protocol proto) {
  return proto == protocol::ollama ? "application/x-ndjson" : "text/event-stream";
}

// What a stream record looks like on the wire: an NDJSON line or an SSE event.
std::string framed_record(protocol proto, std::string_view json) {
  std::string record;
  if (proto == protocol::ollama) {
    record.reserve(json.size() + 1);
    record += json;
    record += '\n';
  } else {
    record.reserve(json.size() + 8);
    record += "data: ";
    record += json;
    record += "\n\n";
  }
  return framed_chunk(record);
}

std::string error_body(protocol proto, int status, std::string_view message) {
  json::writer w;
  w.begin_object().key("error");
  if (proto == protocol::ollama) {
    w.value(message);
  } else {
    const char* type = status >= 500 ? "server_error" : "invalid_request_error";
    const char* code = nullptr;
    if (status == 401) {
      code = "invalid_api_key";
    } else if (status == 429) {
      type = "requests";
      code = "rate_limit_exceeded";
    }
    w.begin_object().key("message").value(message).key("type").value(type);
    w.key("param").null().key("code");
    code ? w.value(code) : w.null();
    w.end_object();
  }
  return w.end_object().take();
}

response_plan error_reply(protocol proto, int status, std::string_view message) {
  return sized_reply(status, "application/json", error_body(proto, status, message));
}

std::string ollama_piece(const reply_context& ctx, std::string_view piece) {
  std::string line;
  line.reserve(ctx.model.size() + piece.size() + 112);
  line += "{\"model\":";
  json::append_quoted(line, ctx.model);
  line += ",\"created_at\":\"";
  line += fixed_created_at;
  line += "\",\"message\":{\"role\":\"assistant\",\"content\":";
  json::append_quoted(line, piece);
  line += "},\"done\":false}";
  return line;
}

// Ollama's closing object; `content` is empty when streaming.
std::string ollama_final(const reply_context& ctx, std::string_view content) {
  // Fixed rates (1 ms per prompt token, 10 ms per generated one) keep the
  // durations plausible and non-zero, so tokens/s never divides by zero.
  uint64_t prompt_ns = (ctx.prompt_tokens + 1ull) * 1'000'000ull;
  uint64_t eval_ns = (ctx.completion_tokens + 1ull) * 10'000'000ull;
  json::writer w;
  w.begin_object().key("model").value(ctx.model).key("created_at").value(fixed_created_at);
  w.key("message").begin_object().key("role").value("assistant");
  w.key("content").value(content).end_object();
  w.key("done").value(true).key("done_reason").value(ctx.finish_reason);
  w.key("total_duration").value(prompt_ns + eval_ns).key("load_duration").value(0);
  w.key("prompt_eval_count").value(ctx.prompt_tokens);
  w.key("prompt_eval_duration").value(prompt_ns);
  w.key("eval_count").value(ctx.completion_tokens).key("eval_duration").value(eval_ns);
  return w.end_object().take();
}

// One chat.completion.chunk; `delta` and `finish_reason` are raw JSON.
std::string openai_chunk(const reply_context& ctx, std::string_view delta,
                         std::string_view finish_reason) {
  std::string out;
  out.reserve(ctx.model.size() + delta.size() + 160);
  out += "{\"id\":";
  json::append_quoted(out, ctx.id);
  out += ",\"object\":\"chat.completion.chunk\",\"created\":";
  out += std::to_string(fixed_created_unix);
  out += ",\"model\":";
  json::append_quoted(out, ctx.model);
  out += ",\"choices\":[{\"index\":0,\"delta\":";
  out += delta;
  out += ",\"finish_reason\":";
  out += finish_reason;
  out += "}]";
  if (ctx.include_usage) {
    out += ",\"usage\":null";
  }
  out += '}';
  return out;
}

void write_usage(json::writer& w, const reply_context& ctx) {
  w.key("usage").begin_object().key("prompt_tokens").value(ctx.prompt_tokens);
  w.key("completion_tokens").value(ctx.completion_tokens);
  w.key("total_tokens").value(ctx.prompt_tokens + ctx.completion_tokens);
  w.end_object();
}

std::string openai_usage_chunk(const reply_context& ctx) {
  json::writer w;
  w.begin_object().key("id").value(ctx.id).key("object").value("chat.completion.chunk");
  w.key("created").value(fixed_created_unix).key("model").value(ctx.model);
  w.key("choices").begin_array().end_array();
  write_usage(w, ctx);
  return w.end_object().take();
}

std::string openai_completion(const reply_context& ctx) {
  json::writer w;
  w.begin_object().key("id").value(ctx.id).key("object").value("chat.completion");
  w.key("created").value(fixed_created_unix).key("model").value(ctx.model);
  w.key("choices").begin_array().begin_object().key("index").value(0);
  w.key("message").begin_object().key("role").value("assistant");
  w.key("content").value(ctx.text).end_object();
  w.key("finish_reason").value(ctx.finish_reason).end_object().end_array();
  write_usage(w, ctx);
  return w.end_object().take();
}

// Stream records carrying the first `n` pieces (OpenAI opens with a role delta).
std::vector<std::string> content_records(const reply_context& ctx, std::size_t n) {
  std::vector<std::string> out;
  out.reserve(n + 4);
  if (ctx.proto == protocol::openai) {
    auto role = openai_chunk(ctx, R"({"role":"assistant","content":""})", "null");
    out.push_back(framed_record(ctx.proto, role));
  }
  for (std::size_t i = 0; i < n && i < ctx.pieces.size(); ++i) {
    if (ctx.proto == protocol::ollama) {
      out.push_back(framed_record(ctx.proto, ollama_piece(ctx, ctx.pieces[i])));
      continue;
    }
    std::string delta = "{\"content\":";
    json::append_quoted(delta, ctx.pieces[i]);
    delta += '}';
    out.push_back(framed_record(ctx.proto, openai_chunk(ctx, delta, "null")));
  }
  return out;
}

response_plan reply_normal(const reply_context& ctx, bool stream) {
  if (!stream) {
    auto body = ctx.proto == protocol::ollama ? ollama_final(ctx, ctx.text)
                                              : openai_completion(ctx);
    return sized_reply(200, "application/json", std::move(body));
  }
  auto plan = chunked_reply(stream_content_type(ctx.proto));
  plan.chunks = content_records(ctx, ctx.pieces.size());
  if (ctx.proto == protocol::ollama) {
    plan.chunks.push_back(framed_record(ctx.proto, ollama_final(ctx, "")));
    return plan;
  }
  std::string reason = "\"";
  reason += ctx.finish_reason;
  reason += '"';
  plan.chunks.push_back(framed_record(ctx.proto, openai_chunk(ctx, "{}", reason)));
  if (ctx.include_usage) {
    plan.chunks.push_back(framed_record(ctx.proto, openai_usage_chunk(ctx)));
  }
  plan.chunks.push_back(framed_chunk("data: [DONE]\n\n"));
  return plan;
}

response_plan reply_malformed(const reply_context& ctx, bool stream) {
  // Cut-off objects: they start like the real thing but never close.
  std::string broken = ctx.proto == protocol::ollama
                           ? R"({"model":"m","message":{"role":"assistant","content":"x")"
                           : R"({"id":"x","object":"chat.completion","choices":[{"index":0,)"
                             R"("delta":{"content":"x"})";
  if (!stream) {
    return sized_reply(200, "application/json", std::move(broken));
  }
  auto plan = chunked_reply(stream_content_type(ctx.proto));
  plan.chunks.push_back(framed_record(ctx.proto, broken));
  if (ctx.proto == protocol::openai) {
    plan.chunks.push_back(framed_chunk("data: [DONE]\n\n"));
  }
  return plan;
}

response_plan reply_garbage(uint64_t seed) {
  std::string body = "<html>\x01\x02 scripted garbage ";
  // A xorshift sequence: varied bytes, mostly invalid UTF-8, yet repeatable.
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (int i = 0; i < 48; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    body += static_cast<char>(0x80 | (x & 0x7F));
  }
  body += "\n";
  return sized_reply(200, "text/html", std::move(body));
}

response_plan reply_cut(const reply_context& ctx, bool stream, std::size_t after) {
  if (!stream) {
    // Announce the whole body, deliver half of it.
    auto plan = reply_normal(ctx, false);
    plan.body.resize(plan.body.size() / 2);
    plan.close = true;
    return plan;
  }
  auto plan = chunked_reply(stream_content_type(ctx.proto));
  plan.chunks = content_records(ctx, after);
  plan.tail.clear();
  plan.close = true;
  return plan;
}

response_plan reply_stream_error(const reply_context& ctx, bool stream, std::size_t after) {
  if (!stream) {
    return sized_reply(200, "application/json",
                       error_body(ctx.proto, 500, scripted_error_text));
  }
  auto plan = chunked_reply(stream_content_type(ctx.proto));
  plan.chunks = content_records(ctx, after);
  if (ctx.proto == protocol::ollama) {
    plan.chunks.push_back(framed_record(ctx.proto, error_body(ctx.proto, 500,
                                                              scripted_error_text)));
    return plan;
  }
  json::writer w;
  w.begin_object().key("error").begin_object().key("message").value(scripted_error_text);
  w.key("type").value("server_error").key("code").value(500).end_object().end_object();
  plan.chunks.push_back(framed_record(ctx.proto, w.str()));
  plan.chunks.push_back(framed_chunk("data: [DONE]\n\n"));
  return plan;
}

response_plan chat_reply(protocol proto, const chat_request& req, const behaviour& b,
                         uint64_t seq) {
  const std::string text = b.reply.empty() ? "echo: " + req.last_user : b.reply;

  reply_context ctx;
  ctx.proto = proto;
  ctx.model = req.model;
  ctx.include_usage = req.include_usage;
  ctx.pieces = split_reply(text, b.chunk_chars);
  if (req.max_chunks > 0 && static_cast<uint64_t>(req.max_chunks) < ctx.pieces.size()) {
    ctx.pieces.resize(static_cast<std::size_t>(req.max_chunks));
    ctx.finish_reason = "length";
  }
  std::size_t sent_bytes = 0;
  for (auto piece : ctx.pieces) {
    sent_bytes += piece.size();
  }
  ctx.text = std::string_view(text).substr(0, sent_bytes);
  ctx.prompt_tokens = b.prompt_tokens != 0 ? b.prompt_tokens
                                           : static_cast<uint32_t>(req.content_chars / 4 + 1);
  ctx.completion_tokens = b.completion_tokens != 0
                              ? b.completion_tokens
                              : static_cast<uint32_t>(ctx.pieces.size());
  ctx.id = "chatcmpl-scripted-" + std::to_string(seq);

  response_plan plan;
  switch (b.kind) {
    case behaviour::fault::none:
      plan = reply_normal(ctx, req.stream && !b.ignore_stream);
      break;
    case behaviour::fault::http_error: {
      auto reason = http::obsolete_reason(static_cast<http::status>(b.status));
      plan = error_reply(proto, b.status, "scripted error: " + std::string(reason));
      if (b.status == 429) {
        plan.head += "Retry-After: " + std::to_string(b.retry_after_s) + "\r\n";
      }
      break;
    }
    case behaviour::fault::malformed:
      plan = reply_malformed(ctx, req.stream);
      break;
    case behaviour::fault::cut_stream:
      plan = reply_cut(ctx, req.stream, b.cut_after_chunks);
      break;
    case behaviour::fault::garbage:
      plan = reply_garbage(seq);
      break;
    case behaviour::fault::stream_error:
      plan = reply_stream_error(ctx, req.stream, b.cut_after_chunks);
      break;
  }
  plan.latency = b.latency;
  plan.chunk_delay = b.chunk_delay;
  return plan;
}

// A deterministic fake digest so /api/tags looks like Ollama's.
std::string fake_digest(std::string_view name) {
  static constexpr char hex[] = "0123456789abcdef";
  uint64_t h = 1469598103934665603ull;
  for (char c : name) {
    h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
  }
  std::string out = "sha256:";
  for (int i = 0; i < 64; ++i) {
    h = h * 6364136223846793005ull + 1442695040888963407ull;
    out += hex[(h >> 60) & 0xF];
  }
  return out;
}

// ---------------------------------------------------------------- server

class session;

class llm_server {
public:
  explicit llm_server(scripted_llm::options opts);
  ~llm_server();

  uint16_t port() const { return port_; }

  void set_default(behaviour b) {
    std::lock_guard<std::mutex> lock(mutex_);
    default_ = std::move(b);
  }

  void enqueue(behaviour b) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(b));
  }

  void set_script(script_fn script) {
    auto shared = script ? std::make_shared<const script_fn>(std::move(script)) : nullptr;
    std::lock_guard<std::mutex> lock(mutex_);
    script_ = std::move(shared);
  }

  std::size_t in_flight() const { return in_flight_.load(); }
  std::size_t max_in_flight() const { return max_in_flight_.load(); }
  uint64_t requests() const { return requests_.load(); }
  uint64_t embed_requests() const { return embed_requests_.load(); }
  uint64_t embed_texts() const { return embed_texts_.load(); }
  std::size_t max_embed_batch() const { return max_embed_batch_.load(); }

  template <class Predicate>
  bool wait_counts(std::chrono::milliseconds timeout, Predicate done) const {
    std::unique_lock<std::mutex> lock(count_mtx_);
    return counts_changed_.wait_for(lock, timeout, done);
  }

  std::vector<recorded_request> received() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return {received_.begin(), received_.end()};
  }

  void reset_counters() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      requests_ = 0;
      embed_requests_ = 0;
      embed_texts_ = 0;
      max_embed_batch_ = 0;
      max_in_flight_ = in_flight_.load();
      received_.clear();
    }
    notify_counts();
  }

  /// Answers one request; called on the connection's strand.
  response_plan handle(http::request<http::string_body>& req);

  /// Releases an in_flight slot taken by handle().
  void leave() {
    in_flight_.fetch_sub(1);
    notify_counts();
  }

private:
  void accept();
  void enter();
  void notify_counts();
  response_plan route(http::request<http::string_body>& req, std::string_view path);
  response_plan chat(protocol proto, const std::string& body);
  response_plan embed(protocol proto, const std::string& body);
  response_plan answer_chat(protocol proto, const std::string& body, uint64_t seq);
  behaviour select(const std::string& body);
  response_plan control(std::string_view path, const std::string& body);
  response_plan stats() const;
  response_plan ollama_tags() const;
  response_plan openai_models() const;
  bool known_model(std::string_view model) const;
  void record(http::request<http::string_body>& req);

  const scripted_llm::options opts_;

  mutable std::mutex mutex_;
  behaviour default_;
  std::deque<behaviour> queue_;
  std::shared_ptr<const script_fn> script_;
  std::deque<recorded_request> received_;

  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> embed_requests_{0};
  std::atomic<uint64_t> embed_texts_{0};
  std::atomic<std::size_t> max_embed_batch_{0};
  std::atomic<uint64_t> sequence_{0};
  std::atomic<std::size_t> in_flight_{0};
  std::atomic<std::size_t> max_in_flight_{0};
  // Waiters check the counters under count_mtx_; changing a counter and then
  // taking the lock before notifying means no change goes unseen.
  mutable std::mutex count_mtx_;
  mutable std::condition_variable counts_changed_;

  // Declared after the state above: destroying the io_context destroys the
  // pending handlers, and with them sessions that still call leave().
  net::io_context ioc_;
  tcp::acceptor acceptor_;
  net::steady_timer accept_retry_;
  std::vector<std::thread> threads_;
  uint16_t port_ = 0;
};

// One connection. All its handlers run on its strand, so members need no lock.
class session : public std::enable_shared_from_this<session> {
public:
  session(tcp::socket socket, llm_server& server)
      : socket_(std::move(socket)), server_(server), timer_(socket_.get_executor()) {}

  ~session() { release_slot(); }

  void start() {
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] { self->do_read(); });
  }

private:
  void do_read() {
    parser_.emplace();
    parser_->body_limit(max_request_body);
    http::async_read(socket_, buffer_, *parser_,
                     [self = shared_from_this()](error_code ec, std::size_t) {
                       self->on_read(ec);
                     });
  }

  void on_read(error_code ec) {
    // End of stream, resets and unparsable requests all end the connection.
    if (ec) {
      close();
      return;
    }

    auto req = parser_->release();
    keep_alive_ = req.keep_alive();
    plan_ = server_.handle(req);
    counted_ = plan_.chat;
    start_reply();
  }

  void start_reply() {
    // A reply that waits watches the socket, so a client that gives up
    // frees its in_flight slot now rather than when the timers run out.
    bool waits = plan_.latency.count() > 0 ||
                 (plan_.chunk_delay.count() > 0 && plan_.chunks.size() > 1);
    if (waits) {
      watch();
    }

    if (plan_.latency.count() > 0) {
      timer_.expires_after(plan_.latency);
      timer_.async_wait([self = shared_from_this()](error_code ec) {
        if (!ec && !self->closed_) {
          self->write_first();
        }
      });
      return;
    }
    write_first();
  }

  void write_first() {
    out_ = std::move(plan_.head);
    if (!keep_alive_ || plan_.close) {
      out_ += "Connection: close\r\n";
    }
    out_ += "\r\n";
    out_ += plan_.body;

    // Without a delay the whole reply leaves in one write.
    auto& chunks = plan_.chunks;
    next_chunk_ = plan_.chunk_delay.count() == 0 ? chunks.size() : std::min<std::size_t>(
                                                                       1, chunks.size());
    for (std::size_t i = 0; i < next_chunk_; ++i) {
      out_ += chunks[i];
    }
    if (next_chunk_ == chunks.size()) {
      out_ += plan_.tail;
    }
    write_out();
  }

  void write_next() {
    out_ = std::move(plan_.chunks[next_chunk_++]);
    if (next_chunk_ == plan_.chunks.size()) {
      out_ += plan_.tail;
    }
    write_out();
  }

  void write_out() {
    net::async_write(socket_, net::buffer(out_),
                     [self = shared_from_this()](error_code ec, std::size_t) {
                       self->on_written(ec);
                     });
  }

  void on_written(error_code ec) {
    if (ec || closed_) {
      close();
      return;
    }

    if (next_chunk_ < plan_.chunks.size()) {
      timer_.expires_after(plan_.chunk_delay);
      timer_.async_wait([self = shared_from_this()](error_code ec) {
        if (!ec && !self->closed_) {
          self->write_next();
        }
      });
      return;
    }
    finish_reply();
  }

  void finish_reply() {
    release_slot();
    if (plan_.close || !keep_alive_) {
      close();
      return;
    }

    // Only one read may be outstanding: a pending watch resumes reading.
    if (watching_) {
      resume_read_ = true;
      return;
    }
    do_read();
  }

  void watch() {
    watching_ = true;
    socket_.async_read_some(buffer_.prepare(4096),
                            [self = shared_from_this()](error_code ec, std::size_t n) {
                              self->on_watch(ec, n);
                            });
  }

  void on_watch(error_code ec, std::size_t n) {
    watching_ = false;
    if (closed_) {
      return;
    }
    if (ec) {
      close();
      return;
    }

    // Bytes of a pipelined request wait in the buffer for the next parse.
    buffer_.commit(n);
    if (resume_read_) {
      resume_read_ = false;
      do_read();
    }
  }

  void close() {
    if (closed_) {
      return;
    }
    closed_ = true;
    release_slot();
    error_code ignored;
    timer_.cancel();
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  void release_slot() {
    if (counted_) {
      counted_ = false;
      server_.leave();
    }
  }

  tcp::socket socket_;
  llm_server& server_;
  net::steady_timer timer_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  response_plan plan_;
  std::string out_;
  std::size_t next_chunk_ = 0;
  bool keep_alive_ = true;
  bool counted_ = false;      // this reply holds an in_flight slot
  bool watching_ = false;     // a read that notices hang-ups is outstanding
  bool resume_read_ = false;  // the reply ended while watching
  bool closed_ = false;
};

llm_server::llm_server(scripted_llm::options opts)
    : opts_(std::move(opts)),
      ioc_(static_cast<int>(std::max(1u, opts_.threads))),
      acceptor_(ioc_),
      accept_retry_(ioc_) {
  tcp::endpoint endpoint(net::ip::make_address_v4("127.0.0.1"), opts_.port);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(net::socket_base::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen(net::socket_base::max_listen_connections);
  port_ = acceptor_.local_endpoint().port();
  accept();

  for (unsigned i = 0; i < std::max(1u, opts_.threads); ++i) {
    threads_.emplace_back([this] { ioc_.run(); });
  }
}

llm_server::~llm_server() {
  ioc_.stop();
  for (auto& t : threads_) {
    t.join();
  }
  error_code ignored;
  acceptor_.close(ignored);
}

void llm_server::accept() {
  acceptor_.async_accept(net::make_strand(ioc_), [this](error_code ec, tcp::socket socket) {
    if (ec == net::error::operation_aborted) {
      return;
    }
    // Out of descriptors and the like: pause instead of spinning.
    if (ec) {
      accept_retry_.expires_after(std::chrono::milliseconds(10));
      accept_retry_.async_wait([this](error_code wait_ec) {
        if (!wait_ec) {
          accept();
        }
      });
      return;
    }

    // Stream chunks must leave at once, not wait for Nagle.
    error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<session>(std::move(socket), *this)->start();
    accept();
  });
}

void llm_server::enter() {
  auto now = in_flight_.fetch_add(1) + 1;
  auto seen = max_in_flight_.load();
  while (seen < now && !max_in_flight_.compare_exchange_weak(seen, now)) {
  }
  notify_counts();
}

void llm_server::notify_counts() {
  { std::lock_guard<std::mutex> lock(count_mtx_); }
  counts_changed_.notify_all();
}

response_plan llm_server::handle(http::request<http::string_body>& req) {
  std::string_view target = req.target();
  auto path = target.substr(0, target.find('?'));

  response_plan plan;
  try {
    plan = route(req, path);
  } catch (const std::exception& e) {
    plan = sized_reply(500, "application/json", R"({"error":)" + json::quote(e.what()) + "}");
  }

  // Control requests are the rig talking to itself, not traffic under test.
  if (path.substr(0, 2) != "/_") {
    record(req);
  }
  return plan;
}

response_plan llm_server::route(http::request<http::string_body>& req, std::string_view path) {
  auto method = req.method();
  bool get = method == http::verb::get;
  bool post = method == http::verb::post;

  if (path == "/api/chat" || path == "/v1/chat/completions") {
    if (!post) {
      return sized_reply(405, "application/json", R"({"error":"use POST"})");
    }
    return chat(path == "/api/chat" ? protocol::ollama : protocol::openai, req.body());
  }
  if (path == "/api/embed" || path == "/v1/embeddings") {
    if (!post) {
      return sized_reply(405, "application/json", R"({"error":"use POST"})");
    }
    return embed(path == "/api/embed" ? protocol::ollama : protocol::openai, req.body());
  }
  if (get && path == "/api/tags") {
    return ollama_tags();
  }
  if (get && path == "/v1/models") {
    return openai_models();
  }
  if (get && path == "/_stats") {
    return stats();
  }
  if (get && path == "/") {
    return sized_reply(200, "text/plain; charset=utf-8", "Ollama is running");
  }
  if (post && (path == "/_behaviour" || path == "/_enqueue" || path == "/_reset")) {
    return control(path, req.body());
  }
  return sized_reply(404, "application/json", R"({"error":"not found"})");
}

response_plan llm_server::chat(protocol proto, const std::string& body) {
  // The slot is taken before anything can fail; the session releases it.
  requests_.fetch_add(1);
  enter();
  auto seq = sequence_.fetch_add(1);

  response_plan plan;
  try {
    plan = answer_chat(proto, body, seq);
  } catch (const std::exception& e) {
    // A throwing script must not take a server thread down with it.
    plan = error_reply(proto, 500, std::string("scripted server failed: ") + e.what());
  }
  plan.chat = true;
  return plan;
}

response_plan llm_server::answer_chat(protocol proto, const std::string& body, uint64_t seq) {
  chat_request req;
  response_plan plan;
  if (auto bad = parse_chat(proto, body, req)) {
    plan = error_reply(proto, 400, *bad);
  } else if (!known_model(req.model)) {
    if (proto == protocol::ollama) {
      plan = error_reply(proto, 404, "model \"" + req.model +
                                         "\" not found, try pulling it first");
    } else {
      json::writer w;
      w.begin_object().key("error").begin_object();
      w.key("message").value("The model `" + req.model + "` does not exist");
      w.key("type").value("invalid_request_error").key("param").value("model");
      w.key("code").value("model_not_found").end_object().end_object();
      plan = sized_reply(404, "application/json", w.take());
    }
  } else {
    plan = chat_reply(proto, req, select(body), seq);
  }
  return plan;
}

response_plan llm_server::embed(protocol proto, const std::string& body) {
  embed_requests_.fetch_add(1);
  enter();
  response_plan plan;
  plan.chat = true;  // holds an in_flight slot like a chat call
  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view model;
  std::vector<std::string> texts;
  if (parser.parse(body).get(doc) || !doc.is_object()) {
    plan = error_reply(proto, 400, "request body is not a JSON object");
  } else if (doc["model"].get(model) || model.empty()) {
    plan = error_reply(proto, 400, "model is required");
  } else if (!known_model(model)) {
    plan = error_reply(proto, 404, "model \"" + std::string(model) + "\" not found");
  } else {
    simdjson::dom::element input;
    std::string_view one;
    simdjson::dom::array many;
    bool ok = !doc["input"].get(input);
    if (ok && !input.get(one)) {
      texts.emplace_back(one);
    } else if (ok && !input.get(many)) {
      for (auto t : many) {
        if (t.get(one)) {
          ok = false;
          break;
        }
        texts.emplace_back(one);
      }
    } else {
      ok = false;
    }
    if (!ok) {
      plan = error_reply(proto, 400, "input must be a string or an array of strings");
    }
  }
  plan.chat = true;
  if (plan.head.empty()) {
    auto b = select(body);
    embed_texts_.fetch_add(texts.size());
    auto seen = max_embed_batch_.load();
    while (seen < texts.size() && !max_embed_batch_.compare_exchange_weak(seen, texts.size())) {
    }
    auto dims = b.embed_dims != 0 ? b.embed_dims : opts_.embed_dims;
    json::writer w;
    w.begin_object();
    if (proto == protocol::ollama) {
      w.key("model").value(model).key("embeddings").begin_array();
    } else {
      w.key("object").value("list").key("data").begin_array();
    }
    for (std::size_t n = 0; n < texts.size(); ++n) {
      // OpenAI entries go last first: clients must follow "index", not
      // the order (the API does not promise one).
      auto i = proto == protocol::openai ? texts.size() - 1 - n : n;
      auto v = kowalski::memory::hash_embed(texts[i], dims);
      if (proto == protocol::openai) {
        w.begin_object().key("object").value("embedding").key("index").value(i);
        w.key("embedding");
      }
      w.begin_array();
      for (auto x : v) {
        w.value(static_cast<double>(x));
      }
      w.end_array();
      if (proto == protocol::openai) {
        w.end_object();
      }
    }
    w.end_array();
    if (proto == protocol::openai) {
      w.key("model").value(model).key("usage").begin_object();
      w.key("prompt_tokens").value(texts.size()).key("total_tokens").value(texts.size());
      w.end_object();
    } else {
      w.key("prompt_eval_count").value(texts.size());
    }
    w.end_object();
    switch (b.kind) {
      case behaviour::fault::none:
        plan = sized_reply(200, "application/json", w.take());
        break;
      case behaviour::fault::http_error:
        plan = error_reply(proto, b.status, "scripted embedding error");
        break;
      case behaviour::fault::garbage:
        plan = reply_garbage(texts.size());
        break;
      default: {
        // Cut in the middle: not JSON.
        auto text = w.take();
        plan = sized_reply(200, "application/json", text.substr(0, text.size() / 2));
        break;
      }
    }
    plan.latency = b.latency;
  }
  plan.chat = true;
  return plan;
}

behaviour llm_server::select(const std::string& body) {
  std::shared_ptr<const script_fn> script;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!queue_.empty()) {
      auto b = std::move(queue_.front());
      queue_.pop_front();
      return b;
    }
    if (!script_) {
      return default_;
    }
    script = script_;
  }
  // Called unlocked: a script may itself enqueue or read counters.
  return (*script)(body);
}

bool llm_server::known_model(std::string_view model) const {
  // Ollama treats a name without a tag as name:latest.
  constexpr std::string_view latest = ":latest";
  for (const auto& m : opts_.models) {
    if (model == m) {
      return true;
    }
    if (model.size() == m.size() + latest.size() && model.substr(0, m.size()) == m &&
        model.substr(m.size()) == latest) {
      return true;
    }
  }
  return false;
}

response_plan llm_server::control(std::string_view path, const std::string& body) {
  if (path == "/_reset") {
    reset_counters();
    return sized_reply(200, "application/json", R"({"ok":true})");
  }

  thread_local simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (parser.parse(body).get(doc)) {
    return sized_reply(400, "application/json", R"({"error":"body is not valid JSON"})");
  }

  // /_enqueue also takes an array, queued in order.
  std::vector<behaviour> parsed;
  simdjson::dom::array list;
  bool many = path == "/_enqueue" && !doc.get(list);
  std::vector<simdjson::dom::element> items;
  if (many) {
    for (auto e : list) {
      items.push_back(e);
    }
  } else {
    items.push_back(doc);
  }
  for (auto e : items) {
    behaviour b;
    if (auto bad = parse_behaviour(e, b)) {
      return sized_reply(400, "application/json", R"({"error":)" + json::quote(*bad) + "}");
    }
    parsed.push_back(std::move(b));
  }

  if (path == "/_behaviour") {
    set_default(std::move(parsed.front()));
  } else {
    for (auto& b : parsed) {
      enqueue(std::move(b));
    }
  }
  return sized_reply(200, "application/json", R"({"ok":true})");
}

response_plan llm_server::stats() const {
  json::writer w;
  w.begin_object().key("requests").value(static_cast<unsigned long long>(requests()));
  w.key("in_flight").value(static_cast<unsigned long long>(in_flight()));
  w.key("max_in_flight").value(static_cast<unsigned long long>(max_in_flight()));
  return sized_reply(200, "application/json", w.end_object().take());
}

response_plan llm_server::ollama_tags() const {
  json::writer w;
  w.begin_object().key("models").begin_array();
  for (const auto& m : opts_.models) {
    w.begin_object().key("name").value(m).key("model").value(m);
    w.key("modified_at").value(fixed_created_at).key("size").value(123);
    w.key("digest").value(fake_digest(m));
    w.key("details").begin_object().key("parent_model").value("");
    w.key("format").value("gguf").key("family").value("scripted");
    w.key("families").begin_array().value("scripted").end_array();
    w.key("parameter_size").value("1B").key("quantization_level").value("Q4_0");
    w.end_object().end_object();
  }
  return sized_reply(200, "application/json", w.end_array().end_object().take());
}

response_plan llm_server::openai_models() const {
  json::writer w;
  w.begin_object().key("object").value("list").key("data").begin_array();
  for (const auto& m : opts_.models) {
    w.begin_object().key("id").value(m).key("object").value("model");
    w.key("created").value(0).key("owned_by").value("scripted").end_object();
  }
  return sized_reply(200, "application/json", w.end_array().end_object().take());
}

void llm_server::record(http::request<http::string_body>& req) {
  recorded_request r;
  r.method = std::string(req.method_string());
  r.path = std::string(req.target());
  r.body = std::move(req.body());
  r.authorization = std::string(req[http::field::authorization]);

  std::lock_guard<std::mutex> lock(mutex_);
  if (received_.size() == max_recorded_requests) {
    received_.pop_front();
  }
  received_.push_back(std::move(r));
}

}  // namespace

struct scripted_llm::impl {
  explicit impl(options opts) : server(std::move(opts)) {}
  llm_server server;
};

scripted_llm::scripted_llm() : scripted_llm(options{}) {}

scripted_llm::scripted_llm(options opts) : impl_(std::make_unique<impl>(std::move(opts))) {}

scripted_llm::~scripted_llm() = default;

uint16_t scripted_llm::port() const {
  return impl_->server.port();
}

std::string scripted_llm::base_url() const {
  return "http://127.0.0.1:" + std::to_string(port());
}

void scripted_llm::set_default(behaviour b) {
  impl_->server.set_default(std::move(b));
}

void scripted_llm::enqueue(behaviour b) {
  impl_->server.enqueue(std::move(b));
}

void scripted_llm::set_script(std::function<behaviour(const std::string& body)> script) {
  impl_->server.set_script(std::move(script));
}

std::size_t scripted_llm::in_flight() const {
  return impl_->server.in_flight();
}

std::size_t scripted_llm::max_in_flight() const {
  return impl_->server.max_in_flight();
}

uint64_t scripted_llm::requests() const {
  return impl_->server.requests();
}

uint64_t scripted_llm::embed_requests() const {
  return impl_->server.embed_requests();
}

uint64_t scripted_llm::embed_texts() const {
  return impl_->server.embed_texts();
}

std::size_t scripted_llm::max_embed_batch() const {
  return impl_->server.max_embed_batch();
}

bool scripted_llm::wait_in_flight(std::size_t n, std::chrono::milliseconds timeout) const {
  auto& s = impl_->server;
  return s.wait_counts(timeout, [&] { return s.in_flight() == n; });
}

bool scripted_llm::wait_embed_requests(uint64_t n, std::chrono::milliseconds timeout) const {
  auto& s = impl_->server;
  return s.wait_counts(timeout, [&] { return s.embed_requests() >= n; });
}

bool scripted_llm::wait_requests(uint64_t n, std::chrono::milliseconds timeout) const {
  auto& s = impl_->server;
  return s.wait_counts(timeout, [&] { return s.requests() >= n; });
}

std::vector<recorded_request> scripted_llm::received() const {
  return impl_->server.received();
}

void scripted_llm::reset_counters() {
  impl_->server.reset_counters();
}

}  // namespace kowalski::testing
