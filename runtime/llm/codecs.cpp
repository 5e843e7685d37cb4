// Ollama and OpenAI chat wire formats.
#include "runtime/llm/codecs.hpp"

#include "runtime/json/json.hpp"

#include <simdjson.h>

namespace kowalski::llm {

namespace {

using simdjson::dom::element;

simdjson::dom::parser& parser() {
  thread_local simdjson::dom::parser instance;
  return instance;
}

void write_messages(json::writer& w, const llm_request& req) {
  w.key("messages").begin_array();
  for (auto& m : req.messages) {
    w.begin_object().key("role").value(m.role).key("content").value(m.content).end_object();
  }
  w.end_array();
}

// Takes a result, not an element: a missing parent ("delta", "message") then
// yields the fallback instead of a simdjson exception on an I/O thread.
std::string_view string_or(simdjson::simdjson_result<element> e, const char* key,
                           std::string_view fallback = {}) {
  std::string_view out;
  if (e[key].get(out) != simdjson::SUCCESS) {
    return fallback;
  }
  return out;
}

std::string_view string_or(element e, const char* key, std::string_view fallback = {}) {
  return string_or(simdjson::simdjson_result<element>{std::move(e)}, key, fallback);
}

uint32_t count_or_zero(element e, const char* key) {
  uint64_t n = 0;
  if (e[key].get(n) != simdjson::SUCCESS) {
    int64_t signed_n = 0;
    if (e[key].get(signed_n) != simdjson::SUCCESS || signed_n < 0) {
      return 0;
    }
    n = static_cast<uint64_t>(signed_n);
  }
  return static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX));
}

// An "error" member is either a string (Ollama) or an object with "message".
bool read_error(element doc, std::string& out) {
  element err;
  if (doc["error"].get(err) != simdjson::SUCCESS || err.is_null()) {
    return false;
  }
  std::string_view text;
  if (err.get(text) == simdjson::SUCCESS) {
    out = std::string{text};
  } else if (err["message"].get(text) == simdjson::SUCCESS) {
    out = std::string{text};
  } else {
    out = "backend reported an error without a message";
  }
  return true;
}

std::string clip(std::string_view s, std::size_t n = 200) {
  std::string out{s.substr(0, n)};
  for (auto& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) {
      c = ' ';
    }
  }
  return json::valid_utf8(out) ? out : std::string{"<binary data>"};
}

// Splits buffered bytes into lines; the tail without '\n' stays buffered.
template <class F>
void for_each_line(std::string& buffer, std::string_view bytes, F&& fn) {
  buffer.append(bytes.data(), bytes.size());
  std::size_t start = 0;
  for (;;) {
    auto nl = buffer.find('\n', start);
    if (nl == std::string::npos) {
      break;
    }
    auto line = std::string_view{buffer}.substr(start, nl - start);
    if (!line.empty() && line.back() == '\r') {
      line.remove_suffix(1);
    }
    fn(line);
    start = nl + 1;
  }
  buffer.erase(0, start);
}

class ollama_decoder : public stream_decoder {
public:
  explicit ollama_decoder(delta_fn f) : stream_decoder(std::move(f)) {
  }

  void feed(std::string_view bytes) override {
    for_each_line(buffer_, bytes, [this](std::string_view line) { on_line(line); });
  }

  void finish() override {
    if (!buffer_.empty()) {
      on_line(buffer_);
      buffer_.clear();
    }
    if (!result_.done && result_.error.empty()) {
      result_.error = "stream ended before the final record (done:true)";
    }
  }

private:
  void on_line(std::string_view line) {
    if (!result_.error.empty() || result_.done || line.find_first_not_of(" \t") ==
                                                      std::string_view::npos) {
      return;
    }
    element doc;
    if (parser().parse(line.data(), line.size()).get(doc) != simdjson::SUCCESS
        || !doc.is_object()) {
      result_.error = "malformed stream record: " + clip(line);
      return;
    }
    if (read_error(doc, result_.error)) {
      result_.backend_reported = true;
      return;
    }
    auto text = string_or(doc["message"], "content");
    if (!text.empty()) {
      result_.content.append(text.data(), text.size());
      on_delta_(text);
    }
    if (result_.model.empty()) {
      result_.model = std::string{string_or(doc, "model")};
    }
    bool done = false;
    if (doc["done"].get(done) == simdjson::SUCCESS && done) {
      result_.done = true;
      result_.finish_reason = std::string{string_or(doc, "done_reason", "stop")};
      result_.prompt_tokens = count_or_zero(doc, "prompt_eval_count");
      result_.completion_tokens = count_or_zero(doc, "eval_count");
    }
  }

  std::string buffer_;
};

class openai_decoder : public stream_decoder {
public:
  explicit openai_decoder(delta_fn f) : stream_decoder(std::move(f)) {
  }

  void feed(std::string_view bytes) override {
    for_each_line(buffer_, bytes, [this](std::string_view line) { on_line(line); });
  }

  void finish() override {
    if (!buffer_.empty()) {
      on_line(buffer_);
      buffer_.clear();
    }
    dispatch();
    // Servers that close right after the finish chunk still gave a whole reply.
    if (!result_.done && result_.error.empty()) {
      if (!result_.finish_reason.empty()) {
        result_.done = true;
      } else {
        result_.error = "stream ended before finish_reason or [DONE]";
      }
    }
  }

private:
  void on_line(std::string_view line) {
    if (line.empty()) {
      dispatch();
      return;
    }
    if (line.front() == ':') {
      return;
    }
    if (line.substr(0, 5) != "data:") {
      return;  // event:, id:, retry: carry nothing we use
    }
    auto payload = line.substr(5);
    if (!payload.empty() && payload.front() == ' ') {
      payload.remove_prefix(1);
    }
    if (!data_.empty()) {
      data_ += '\n';
    }
    data_.append(payload.data(), payload.size());
  }

  void dispatch() {
    if (data_.empty()) {
      return;
    }
    std::string data = std::move(data_);
    data_.clear();
    if (!result_.error.empty() || result_.done) {
      return;
    }
    if (data == "[DONE]") {
      result_.done = true;
      return;
    }
    element doc;
    if (parser().parse(data.data(), data.size()).get(doc) != simdjson::SUCCESS
        || !doc.is_object()) {
      result_.error = "malformed stream event: " + clip(data);
      return;
    }
    if (read_error(doc, result_.error)) {
      result_.backend_reported = true;
      return;
    }
    if (result_.model.empty()) {
      result_.model = std::string{string_or(doc, "model")};
    }
    simdjson::dom::array choices;
    if (doc["choices"].get(choices) == simdjson::SUCCESS) {
      for (element choice : choices) {
        auto text = string_or(choice["delta"], "content");
        if (!text.empty()) {
          result_.content.append(text.data(), text.size());
          on_delta_(text);
        }
        auto reason = string_or(choice, "finish_reason");
        if (!reason.empty()) {
          result_.finish_reason = std::string{reason};
        }
        break;  // we ask for one choice
      }
    }
    element usage;
    if (doc["usage"].get(usage) == simdjson::SUCCESS && usage.is_object()) {
      result_.prompt_tokens = count_or_zero(usage, "prompt_tokens");
      result_.completion_tokens = count_or_zero(usage, "completion_tokens");
    }
  }

  std::string buffer_;
  std::string data_;
};

}  // namespace

stream_decoder::~stream_decoder() = default;

std::string ollama_chat_body(const llm_request& req, bool stream) {
  json::writer w;
  w.begin_object().key("model").value(req.model);
  write_messages(w, req);
  w.key("stream").value(stream);
  w.key("options").begin_object();
  if (req.options.temperature >= 0) {
    w.key("temperature").value(req.options.temperature);
  }
  if (req.options.max_tokens > 0) {
    w.key("num_predict").value(req.options.max_tokens);
  }
  w.end_object();
  w.end_object();
  return w.take();
}

std::string openai_chat_body(const llm_request& req, bool stream) {
  json::writer w;
  w.begin_object().key("model").value(req.model);
  write_messages(w, req);
  w.key("stream").value(stream);
  if (stream) {
    w.key("stream_options").begin_object().key("include_usage").value(true).end_object();
  }
  if (req.options.temperature >= 0) {
    w.key("temperature").value(req.options.temperature);
  }
  if (req.options.max_tokens > 0) {
    w.key("max_tokens").value(req.options.max_tokens);
  }
  w.end_object();
  return w.take();
}

std::unique_ptr<stream_decoder> make_ollama_decoder(stream_decoder::delta_fn on_delta) {
  return std::make_unique<ollama_decoder>(std::move(on_delta));
}

std::unique_ptr<stream_decoder> make_openai_decoder(stream_decoder::delta_fn on_delta) {
  return std::make_unique<openai_decoder>(std::move(on_delta));
}

stream_result decode_whole(provider p, std::string_view body) {
  stream_result out;
  element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS
      || !doc.is_object()) {
    out.error = "malformed reply: " + clip(body);
    return out;
  }
  if (read_error(doc, out.error)) {
    out.backend_reported = true;
    return out;
  }
  out.model = std::string{string_or(doc, "model")};
  if (p == provider::ollama) {
    out.content = std::string{string_or(doc["message"], "content")};
    out.finish_reason = std::string{string_or(doc, "done_reason", "stop")};
    out.prompt_tokens = count_or_zero(doc, "prompt_eval_count");
    out.completion_tokens = count_or_zero(doc, "eval_count");
    out.done = true;
    return out;
  }
  simdjson::dom::array choices;
  element first;
  if (doc["choices"].get(choices) != simdjson::SUCCESS
      || choices.at(0).get(first) != simdjson::SUCCESS) {
    out.error = "reply has no choices";
    return out;
  }
  out.content = std::string{string_or(first["message"], "content")};
  out.finish_reason = std::string{string_or(first, "finish_reason", "stop")};
  element usage;
  if (doc["usage"].get(usage) == simdjson::SUCCESS && usage.is_object()) {
    out.prompt_tokens = count_or_zero(usage, "prompt_tokens");
    out.completion_tokens = count_or_zero(usage, "completion_tokens");
  }
  out.done = true;
  return out;
}

std::string error_message(std::string_view body) {
  element doc;
  std::string out;
  if (parser().parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS
      && doc.is_object() && read_error(doc, out)) {
    return clip(out, 500);
  }
  return body.empty() ? std::string{"empty body"} : clip(body);
}

bool parse_models(provider p, std::string_view body, std::vector<model_info>& out,
                  std::string& error) {
  element doc;
  if (parser().parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS) {
    error = "model list is not JSON: " + clip(body);
    return false;
  }
  simdjson::dom::array list;
  auto field = p == provider::ollama ? "models" : "data";
  if (doc[field].get(list) != simdjson::SUCCESS) {
    error = std::string{"model list has no \""} + field + "\" array";
    return false;
  }
  for (element m : list) {
    model_info info;
    info.provider = p == provider::ollama ? "ollama" : "openai";
    info.name = std::string{string_or(m, p == provider::ollama ? "name" : "id")};
    uint64_t size = 0;
    if (m["size"].get(size) == simdjson::SUCCESS) {
      info.size_bytes = size;
    }
    if (!info.name.empty()) {
      out.push_back(std::move(info));
    }
  }
  return true;
}

}  // namespace kowalski::llm
