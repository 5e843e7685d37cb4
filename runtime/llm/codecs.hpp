// Request bodies and incremental stream decoders for the Ollama and
// OpenAI-compatible chat protocols. Pure functions: no I/O, no actors.
#pragma once

#include "messages/types.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::llm {

enum class provider { ollama, openai, replay };

/// Body of POST /api/chat: sampling options go in "options", where Ollama
/// reads them (temperature, num_predict).
std::string ollama_chat_body(const llm_request& req, bool stream);

/// Body of POST {base}/chat/completions, streaming with include_usage.
std::string openai_chat_body(const llm_request& req, bool stream);

/// What a decoder has gathered so far.
struct stream_result {
  std::string content;
  std::string model;
  std::string finish_reason;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  bool done = false;   ///< the protocol's end marker arrived
  std::string error;   ///< set when the stream carried an error or garbage
  bool backend_reported = false;  ///< error came from the backend, not parsing
};

/// Reassembles a streamed reply from arbitrary byte chunks: bytes are
/// buffered and split on the protocol's record delimiter, and only whole
/// records are parsed. on_delta sees each piece of generated text.
class stream_decoder {
public:
  using delta_fn = std::function<void(std::string_view text)>;

  virtual ~stream_decoder();

  /// Feeds the next bytes of the body.
  virtual void feed(std::string_view bytes) = 0;

  /// Call at the end of the body; a stream without its end marker becomes an
  /// error ("stream ended before ...").
  virtual void finish() = 0;

  const stream_result& result() const { return result_; }
  bool failed() const { return !result_.error.empty(); }

protected:
  explicit stream_decoder(delta_fn on_delta) : on_delta_(std::move(on_delta)) {}

  stream_result result_;
  delta_fn on_delta_;
};

/// Ollama NDJSON: one JSON object per line; a line with "error" ends it.
std::unique_ptr<stream_decoder> make_ollama_decoder(stream_decoder::delta_fn on_delta);

/// OpenAI SSE: "data: {json}" events separated by blank lines, ending with
/// "data: [DONE]"; comment lines (":") are skipped; usage may ride on the
/// finish chunk or on a trailing chunk with empty or missing choices.
std::unique_ptr<stream_decoder> make_openai_decoder(stream_decoder::delta_fn on_delta);

/// Decodes a whole non-streamed reply of either protocol.
stream_result decode_whole(provider p, std::string_view body);

/// The human-readable message of an error body ({"error":"..."} or
/// {"error":{"message":"..."}}), or a cleaned prefix of the body.
std::string error_message(std::string_view body);

/// Parses GET /api/tags or GET {base}/models into model names.
bool parse_models(provider p, std::string_view body, std::vector<model_info>& out,
                  std::string& error);

}  // namespace kowalski::llm
