// The wire side of the remote embedders: Ollama's POST /api/embed and
// OpenAI's POST {base}/embeddings, both taking a batch of texts per request.
// Building requests and reading answers only; the embedder actor sends them.
#pragma once

#include "runtime/net/http_client.hpp"

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::memory {

struct embedder_spec {
  std::string kind = "hash";  ///< hash | ollama | openai
  std::string url;            ///< Ollama base URL, or OpenAI base ending in /v1
  std::string model;
  std::string api_key;  ///< OpenAI bearer key; a secret, never logged
  std::size_t dims = 384;
  std::size_t batch = 64;    ///< texts per request at most
  unsigned concurrency = 2;  ///< requests in flight at most
  std::chrono::milliseconds timeout{30'000};
  /// Texts are cut to this many bytes before they are sent (0 = never).
  /// OpenAI refuses inputs over its models' 8,191 tokens rather than cut
  /// them; Ollama cuts on its own (truncate). A cut text is embedded by its
  /// beginning, which beats not being embedded at all.
  std::size_t max_text_bytes = 0;
  /// OpenAI: ask for `dims` numbers ("dimensions"); text-embedding-3
  /// models shorten their vectors to it, others refuse the field.
  bool send_dims = false;
};

/// `text` cut to at most `limit` bytes at a UTF-8 boundary (0 = whole).
std::string_view cut_text(std::string_view text, std::size_t limit);

/// The name stored with every vector the embedder makes: "hash-v1-<dims>",
/// "ollama/<model>/<dims>" or "openai/<model>/<dims>". Two vectors can be
/// compared only when their names are equal.
std::string embedder_name(const embedder_spec& spec);

/// The request embedding `texts` (not empty, at most spec.batch).
net::client_request embed_request(const embedder_spec& spec,
                                  const std::vector<std::string>& texts);

/// How an answer was read. `failure` is empty on success.
struct embed_answer {
  enum class failure_kind { none, status, protocol };
  failure_kind kind = failure_kind::none;
  std::string failure;  ///< for the caller and the log; never holds the texts
  std::vector<std::vector<float>> vectors;  ///< one per text, scaled to unit length
};

/// Reads the answer to a request for `count` texts: the vectors in the
/// order of the texts, each of spec.dims finite numbers. A non-2xx status,
/// a body that is not the protocol's JSON, a wrong count or a wrong size
/// is a failure that says which.
embed_answer read_embed_answer(const embedder_spec& spec, int status, std::string_view body,
                               std::size_t count);

}  // namespace kowalski::memory
