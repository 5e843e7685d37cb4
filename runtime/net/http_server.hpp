// An asynchronous HTTP/1.1 server on its own Asio threads (Beast inside).
#pragma once

#include "runtime/net/http_types.hpp"

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <system_error>

namespace kowalski::net {

/// Answers one request. Thread-safe: any thread may call it, any number of
/// times, but exactly one of respond() or begin_stream() takes effect; later
/// calls are ignored. Dropping the last reference without answering sends a
/// 500, so a lost request never hangs the client.
class responder {
public:
  virtual ~responder();

  /// Sends a whole response.
  virtual void respond(http_response res) = 0;

  /// Starts a chunked response; write() then sends one chunk per call and
  /// end() finishes it. Writes are queued and sent in order.
  virtual void begin_stream(int status, std::string content_type,
                            header_list headers = {}) = 0;
  virtual void write(std::string chunk) = 0;
  virtual void end() = 0;

  /// True once the connection is gone; streaming producers may stop early.
  virtual bool closed() const = 0;

  /// Runs `fn` once every chunk written so far has gone to the socket, on a
  /// server thread: a producer of a large stream writes a part, then waits
  /// for this before the next, so the stream is never held in memory. `fn`
  /// is dropped if the connection closes first. One callback at a time.
  virtual void when_drained(std::function<void()> fn) = 0;
};

using responder_ptr = std::shared_ptr<responder>;

/// Called on a server thread for every complete request. Must not block:
/// hand work to actors and answer later through the responder.
using request_handler = std::function<void(http_request&&, responder_ptr)>;

struct http_server_options {
  std::string address = "127.0.0.1";
  uint16_t port = 0;  ///< 0 picks a free port; see http_server::port()
  unsigned threads = 2;
  /// Bodies above this get 413 without being read to the end.
  std::size_t body_limit = 1 << 20;
  /// When set, chooses the limit per request from its method and target
  /// once the header is read (routes that take uploads allow more).
  std::function<std::size_t(const std::string& method, const std::string& target)>
    body_limit_for;
  /// Time allowed to receive one whole request, header and body.
  std::chrono::milliseconds request_timeout{30'000};
  /// Time a keep-alive connection may sit idle between requests.
  std::chrono::milliseconds idle_timeout{60'000};
  /// Connections beyond this are closed right after accept.
  std::size_t max_connections = 10'000;
};

class http_server {
public:
  http_server(http_server_options options, request_handler handler);
  ~http_server();

  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// Binds, listens and starts the I/O threads. Returns the bind error, if any.
  std::error_code start();

  /// The bound port (after start()).
  uint16_t port() const;

  /// Stops accepting, closes connections and joins the threads. Idempotent.
  void stop();

  /// Connections currently open.
  std::size_t connections() const;

  /// Waits until connections() == n; false if `timeout` passed first. A
  /// connection counts as closed once its responders report closed().
  bool wait_connections(std::size_t n, std::chrono::milliseconds timeout) const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kowalski::net
