// A scripted LLM server for tests and benchmarks: a real HTTP server on
// 127.0.0.1 that speaks Ollama's and OpenAI's chat protocols (streamed and
// whole) and their embedding endpoints, with injectable latency and faults
// and a count of requests in flight.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace kowalski::testing {

/// What the server does with one chat request.
struct behaviour {
  enum class fault {
    none,
    http_error,     ///< answer `status` with the protocol's error body
    malformed,      ///< 200 with a stream/body that is not valid JSON
    cut_stream,     ///< send `cut_after_chunks` chunks, then close the socket
    garbage,        ///< 200 with random non-JSON bytes and a wrong content type
    stream_error,   ///< 200, a few chunks, then the protocol's in-stream error
  };
  fault kind = fault::none;
  int status = 200;               ///< for http_error; 429 adds Retry-After
  int retry_after_s = 1;          ///< Retry-After value sent with 429
  std::chrono::milliseconds latency{0};      ///< before the response head
  std::chrono::milliseconds chunk_delay{0};  ///< between stream chunks
  /// Content chunks sent before cut_stream closes or stream_error fails.
  std::size_t cut_after_chunks = 2;
  /// Reply text; empty = "echo: " + the last user message's content.
  std::string reply;
  /// Characters per streamed chunk (0 = one chunk per whitespace-separated word).
  std::size_t chunk_chars = 0;
  uint32_t prompt_tokens = 0;      ///< 0 = derived from the prompt size
  uint32_t completion_tokens = 0;  ///< 0 = number of chunks sent
  /// Answer with one whole JSON reply even when the request asked to stream,
  /// as some OpenAI-compatible servers do.
  bool ignore_stream = false;
  /// Embedding requests: vectors of this size instead of options::embed_dims.
  std::size_t embed_dims = 0;
};

/// A request as the server received it.
struct recorded_request {
  std::string method;
  std::string path;
  std::string body;
  std::string authorization;  ///< the Authorization header, if any
};

class scripted_llm {
public:
  struct options {
    uint16_t port = 0;
    unsigned threads = 2;
    /// Models both protocols list and accept; others get the protocol's 404.
    std::vector<std::string> models = {"test-model", "other-model"};
    /// Size of the vectors /api/embed and /v1/embeddings return: the
    /// built-in hashing embedder's vectors of the text at this size, so
    /// similar texts get similar vectors.
    std::size_t embed_dims = 64;
  };

  scripted_llm();
  explicit scripted_llm(options opts);
  ~scripted_llm();

  scripted_llm(const scripted_llm&) = delete;
  scripted_llm& operator=(const scripted_llm&) = delete;

  uint16_t port() const;
  std::string base_url() const;  ///< "http://127.0.0.1:<port>"

  /// Behaviour for requests with no queued behaviour and no script.
  void set_default(behaviour b);
  /// Queues behaviours consumed one per chat request, in arrival order.
  void enqueue(behaviour b);
  /// Chooses the behaviour from the request itself (model and messages as the
  /// raw JSON body); queued behaviours still go first.
  void set_script(std::function<behaviour(const std::string& body)> script);

  std::size_t in_flight() const;      ///< chat requests being answered now
  std::size_t max_in_flight() const;  ///< highest in_flight() seen
  uint64_t requests() const;          ///< chat requests received
  uint64_t embed_requests() const;    ///< embedding requests received
  uint64_t embed_texts() const;       ///< texts in them
  std::size_t max_embed_batch() const;  ///< most texts in one embedding request
  /// Waits until embed_requests() >= n; false if `timeout` passed first.
  bool wait_embed_requests(uint64_t n, std::chrono::milliseconds timeout) const;
  /// Waits until in_flight() == n; false if `timeout` passed first.
  bool wait_in_flight(std::size_t n, std::chrono::milliseconds timeout) const;
  /// Waits until requests() >= n; false if `timeout` passed first.
  bool wait_requests(uint64_t n, std::chrono::milliseconds timeout) const;
  /// The last 10000 requests, oldest first; control requests (/_*) are left out.
  std::vector<recorded_request> received() const;
  /// Zeroes requests(), lowers max_in_flight() to in_flight(), clears received().
  void reset_counters();

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kowalski::testing
