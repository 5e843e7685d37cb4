// An asynchronous HTTP/1.1 client with a keep-alive connection pool, on its
// own Asio threads (Beast inside). Supports http:// and https:// URLs.
#pragma once

#include "runtime/net/http_types.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

namespace kowalski::net {

struct http_client_options {
  std::size_t max_idle_per_host = 10;
  std::chrono::milliseconds connect_timeout{10'000};
  /// Whole-request deadline, from the start of send() to the last body byte.
  std::chrono::milliseconds request_timeout{300'000};
  unsigned threads = 1;
};

struct client_request {
  std::string method = "GET";
  std::string url;  ///< absolute: http://host:port/path?query or https://...
  header_list headers;
  std::string body;
  /// Overrides http_client_options::request_timeout when non-zero.
  std::chrono::milliseconds timeout{0};
};

/// How a request ended. `error` is empty on success; then `status` holds the
/// HTTP status (which may itself be 4xx/5xx).
struct client_result {
  std::string error;       ///< connect, TLS, timeout or protocol failure, for logs
  bool timed_out = false;  ///< the request or connect deadline passed
  bool connect_failed = false;  ///< no response byte arrived: safe to retry
  int status = 0;
  header_list headers;
  std::string body;  ///< whole body, unless on_data was given
};

/// Callbacks run on a client I/O thread and must not block. on_data sees the
/// body (de-chunked) as it arrives; when it is set, client_result::body stays
/// empty. on_done is called exactly once, also after cancel().
struct client_callbacks {
  std::function<void(int status, const header_list& headers)> on_head;
  std::function<void(std::string_view data)> on_data;
  std::function<void(client_result result)> on_done;
};

class http_client {
public:
  explicit http_client(http_client_options options = {});
  ~http_client();  ///< cancels what is in flight and joins the threads

  http_client(const http_client&) = delete;
  http_client& operator=(const http_client&) = delete;

  /// Starts a request; returns an id for cancel(). Thread-safe.
  uint64_t send(client_request req, client_callbacks callbacks);

  /// Aborts a request in flight; its on_done reports an error. Thread-safe.
  void cancel(uint64_t id);

  /// Ends every request in flight (their on_done report an error), refuses
  /// new ones and joins the threads. Idempotent; the destructor calls it.
  /// Owners whose callbacks reach into shorter-lived objects call it first.
  void shutdown();

  /// Idle pooled connections to all hosts (for tests and /metrics).
  std::size_t idle_connections() const;

  /// Connections opened since start (for tests: reuse keeps this low).
  uint64_t connections_opened() const;

private:
  struct impl;
  std::shared_ptr<impl> impl_;
};

}  // namespace kowalski::net
