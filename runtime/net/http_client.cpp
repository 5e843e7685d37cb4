// Beast HTTP/1.1 client: each request runs on its own strand, connections are
// pooled per scheme, host and port, and bodies are delivered as they arrive.
#include "runtime/net/http_client.hpp"

#include "runtime/net/url.hpp"

#include <boost/asio/bind_executor.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/buffer_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>

#include <openssl/ssl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

namespace kowalski::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using strand_type = asio::strand<asio::io_context::executor_type>;

namespace {

/// Largest piece of body handed to on_data at once.
constexpr std::size_t body_chunk = 16 * 1024;

constexpr std::string_view user_agent = "kowalski";

// RFC 9110 token: what a method (or header name) may consist of.
bool is_token(std::string_view s) {
  static constexpr std::string_view extra = "!#$%&'*+-.^_`|~";
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || extra.find(c) != std::string_view::npos;
  });
}

/// One connection, plain or TLS. Never destroyed while an operation on it is
/// pending: a failed request only closes the socket.
struct connection {
  explicit connection(tcp::socket s) : plain(std::move(s)) {}

  tcp::socket& socket() { return tls ? tls->next_layer() : *plain; }

  template <class F>
  void visit(F&& f) {
    if (tls) {
      f(*tls);
    } else {
      f(*plain);
    }
  }

  void close() {
    error_code ec;
    socket().shutdown(tcp::socket::shutdown_both, ec);
    socket().close(ec);
  }

  std::optional<tcp::socket> plain;
  std::optional<ssl::stream<tcp::socket>> tls;
};

// Checks an idle pooled connection without blocking: the server may have
// closed it while it sat in the pool.
bool still_usable(connection& c) {
  char byte;
  auto r = ::recv(c.socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  if (r == 0) {
    return false;
  }
  if (r > 0) {
    // Stray bytes on a plain connection break the framing of the next
    // response; under TLS they may be a post-handshake record (tickets).
    return c.tls.has_value();
  }
  return errno == EAGAIN || errno == EWOULDBLOCK;
}

struct call;

// Everything the client's requests share; http_client::impl is this.
struct client_core {
  explicit client_core(http_client_options opts)
      : options(opts),
        ioc(static_cast<int>(std::max(1u, opts.threads))),
        tls_ctx(ssl::context::tls_client) {
    error_code ec;
    tls_ctx.set_default_verify_paths(ec);
    tls_ctx.set_verify_mode(ssl::verify_peer);
  }

  uint64_t send(client_request req, client_callbacks callbacks);
  void cancel(uint64_t id);
  void shutdown();

  std::unique_ptr<connection> take_idle(const std::string& key);
  void put_idle(const std::string& key, std::unique_ptr<connection> c);
  void forget(uint64_t id);

  http_client_options options;
  asio::io_context ioc;
  ssl::context tls_ctx;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;

  std::mutex mtx;  // guards pool, calls and stopping
  std::unordered_map<std::string, std::vector<std::unique_ptr<connection>>> pool;
  std::unordered_map<uint64_t, std::weak_ptr<call>> calls;
  bool stopping = false;

  std::atomic<uint64_t> next_id{0};
  std::atomic<uint64_t> opened{0};
};

/// One request from send() to on_done; every handler runs on `strand_`.
struct call : std::enable_shared_from_this<call> {
  call(client_core& owner, uint64_t id, client_request req, client_callbacks cb)
      : strand_(asio::make_strand(owner.ioc)),
        owner_(owner),
        id_(id),
        req_(std::move(req)),
        cb_(std::move(cb)),
        deadline_(strand_),
        connect_deadline_(strand_),
        resolver_(strand_),
        chunk_(new char[body_chunk]) {}

  void start();
  void fail(std::string error, bool timed_out = false);

  strand_type strand_;

private:
  template <class F>
  auto bind(F&& f) {
    return asio::bind_executor(strand_, std::forward<F>(f));
  }

  bool build_request();
  void connect();
  void on_resolve(const error_code& ec, const tcp::resolver::results_type& results);
  void on_connect(const error_code& ec);
  void on_handshake(const error_code& ec);
  void send_request();
  void reset_parser();
  void read_some();
  void on_read(error_code ec);
  bool deliver_head();
  void connection_lost(std::string_view what, const error_code& ec);
  void succeed();
  void complete();
  std::string endpoint_text() const;

  client_core& owner_;
  const uint64_t id_;
  client_request req_;
  client_callbacks cb_;
  asio::steady_timer deadline_;
  asio::steady_timer connect_deadline_;
  tcp::resolver resolver_;
  std::chrono::milliseconds timeout_{0};

  url url_;
  std::string pool_key_;
  http::request<http::string_body> out_;
  std::unique_ptr<connection> conn_;
  std::unique_ptr<connection> retired_;  // the stale pooled one, kept until we die
  std::optional<http::response_parser<http::buffer_body>> parser_;
  beast::flat_buffer in_;
  std::unique_ptr<char[]> chunk_;
  client_result result_;

  bool done_ = false;
  bool reused_ = false;
  bool retried_ = false;
  bool connecting_ = false;
  bool got_byte_ = false;
  bool head_seen_ = false;
};

void call::start() {
  if (done_) {
    return;
  }
  timeout_ = req_.timeout.count() > 0 ? req_.timeout : owner_.options.request_timeout;
  deadline_.expires_after(timeout_);
  deadline_.async_wait(bind([self = shared_from_this()](const error_code& ec) {
    if (ec == asio::error::operation_aborted || self->done_) {
      return;
    }
    self->fail("request timed out after " + std::to_string(self->timeout_.count()) + " ms",
               true);
  }));

  // The URL may carry credentials in its query, so it is not echoed.
  auto parsed = parse_url(req_.url);
  if (!parsed) {
    fail("invalid or unsupported URL (expected http:// or https://)");
    return;
  }
  url_ = std::move(*parsed);
  pool_key_ = url_.scheme + "://" + url_.host + ":" + std::to_string(url_.port);
  if (!build_request()) {
    return;
  }

  conn_ = owner_.take_idle(pool_key_);
  if (conn_) {
    reused_ = true;
    send_request();
    return;
  }
  connect();
}

bool call::build_request() {
  if (!is_token(req_.method)) {
    fail("request method must be a non-empty token, got \"" + req_.method + "\"");
    return false;
  }
  out_.version(11);
  out_.method_string(req_.method);
  out_.target(url_.target);

  for (const auto& [name, value] : req_.headers) {
    // Framing is ours: a caller's Content-Length could contradict the body.
    if (iequals(name, "content-length") || iequals(name, "transfer-encoding")) {
      continue;
    }
    if (!is_token(name) || value.find_first_of("\r\n") != std::string::npos) {
      fail("header \"" + name + "\" has an invalid name or a line break in its value");
      return false;
    }
    out_.insert(name, value);
  }
  if (out_.find(http::field::host) == out_.end()) {
    bool v6 = url_.host.find(':') != std::string::npos;
    std::string host = v6 ? "[" + url_.host + "]" : url_.host;
    bool default_port = (url_.scheme == "http" && url_.port == 80) ||
                        (url_.scheme == "https" && url_.port == 443);
    if (!default_port) {
      host += ":" + std::to_string(url_.port);
    }
    out_.set(http::field::host, host);
  }
  if (out_.find(http::field::user_agent) == out_.end()) {
    out_.set(http::field::user_agent, user_agent);
  }

  out_.body() = std::move(req_.body);
  auto m = out_.method();
  if (!out_.body().empty() || m == http::verb::post || m == http::verb::put ||
      m == http::verb::patch) {
    out_.content_length(out_.body().size());
  }
  return true;
}

std::string call::endpoint_text() const {
  return url_.host + ":" + std::to_string(url_.port);
}

void call::connect() {
  connecting_ = true;
  connect_deadline_.expires_after(owner_.options.connect_timeout);
  connect_deadline_.async_wait(bind([self = shared_from_this()](const error_code& ec) {
    if (ec == asio::error::operation_aborted || self->done_ || !self->connecting_) {
      return;
    }
    auto ms = std::to_string(self->owner_.options.connect_timeout.count());
    self->fail("connect to " + self->endpoint_text() + " timed out after " + ms + " ms", true);
  }));

  resolver_.async_resolve(
      url_.host, std::to_string(url_.port),
      bind([self = shared_from_this()](const error_code& ec,
                                       const tcp::resolver::results_type& results) {
        self->on_resolve(ec, results);
      }));
}

void call::on_resolve(const error_code& ec, const tcp::resolver::results_type& results) {
  if (done_) {
    return;
  }
  if (ec) {
    fail("resolve " + url_.host + ": " + ec.message());
    return;
  }
  conn_ = std::make_unique<connection>(tcp::socket(owner_.ioc));
  asio::async_connect(conn_->socket(), results,
                      bind([self = shared_from_this()](const error_code& ec,
                                                       const tcp::endpoint&) {
                        self->on_connect(ec);
                      }));
}

void call::on_connect(const error_code& ec) {
  if (done_) {
    return;
  }
  if (ec) {
    fail("connect to " + endpoint_text() + ": " + ec.message());
    return;
  }
  owner_.opened.fetch_add(1);
  error_code ignored;
  conn_->socket().set_option(tcp::no_delay(true), ignored);

  if (url_.scheme != "https") {
    connecting_ = false;
    connect_deadline_.cancel();
    send_request();
    return;
  }

  auto socket = std::move(*conn_->plain);
  conn_->plain.reset();
  conn_->tls.emplace(std::move(socket), owner_.tls_ctx);
  auto& tls = *conn_->tls;

  // SNI carries names only; IP literals are checked against the certificate.
  error_code not_ip;
  asio::ip::make_address(url_.host, not_ip);
  if (not_ip && !SSL_set_tlsext_host_name(tls.native_handle(), url_.host.c_str())) {
    fail("TLS: cannot set server name " + url_.host);
    return;
  }
  tls.set_verify_mode(ssl::verify_peer);
  tls.set_verify_callback(ssl::host_name_verification(url_.host));
  tls.async_handshake(ssl::stream_base::client,
                      bind([self = shared_from_this()](const error_code& ec) {
                        self->on_handshake(ec);
                      }));
}

void call::on_handshake(const error_code& ec) {
  if (done_) {
    return;
  }
  if (ec) {
    fail("TLS handshake with " + endpoint_text() + ": " + ec.message());
    return;
  }
  connecting_ = false;
  connect_deadline_.cancel();
  send_request();
}

void call::send_request() {
  reset_parser();
  in_.clear();

  conn_->visit([&](auto& stream) {
    http::async_write(stream, out_,
                      bind([self = shared_from_this()](const error_code& ec, std::size_t) {
                        if (self->done_) {
                          return;
                        }
                        if (ec) {
                          self->connection_lost("send request to", ec);
                          return;
                        }
                        self->read_some();
                      }));
  });
}

void call::reset_parser() {
  parser_.emplace();
  // The caller decides how much body it wants; streams can be long. (Beast
  // 1.74 treats body_limit(boost::none) as a zero limit for Content-Length
  // bodies, hence the largest value instead.)
  parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
  if (out_.method() == http::verb::head) {
    parser_->skip(true);
  }
}

void call::read_some() {
  auto& body = parser_->get().body();
  body.data = chunk_.get();
  body.size = body_chunk;
  conn_->visit([&](auto& stream) {
    http::async_read_some(stream, in_, *parser_,
                          bind([self = shared_from_this()](const error_code& ec, std::size_t) {
                            self->on_read(ec);
                          }));
  });
}

void call::on_read(error_code ec) {
  if (done_) {
    return;
  }
  // need_buffer only says our chunk is full: deliver it and read on.
  if (ec == http::error::need_buffer) {
    ec = {};
  }
  got_byte_ = got_byte_ || parser_->got_some() || in_.size() > 0;

  // A TLS peer that closes without close_notify ends a close-delimited body.
  if (ec == ssl::error::stream_truncated && parser_->got_some() && parser_->need_eof()) {
    ec = {};
    parser_->put_eof(ec);
  }
  if (ec) {
    if (!got_byte_) {
      connection_lost("read response from", ec);
      return;
    }
    fail("read response from " + endpoint_text() + ": " + ec.message());
    return;
  }

  if (!deliver_head()) {
    return;
  }
  auto produced = body_chunk - parser_->get().body().size;
  if (produced > 0) {
    if (cb_.on_data) {
      cb_.on_data(std::string_view{chunk_.get(), produced});
    } else {
      result_.body.append(chunk_.get(), produced);
    }
  }

  if (!parser_->is_done()) {
    read_some();
    return;
  }
  // Interim responses (103 Early Hints and the like) precede the real one.
  auto status = parser_->get().result_int();
  if (status >= 100 && status < 200 && status != 101) {
    head_seen_ = false;
    reset_parser();
    read_some();
    return;
  }
  succeed();
}

// Reports the head once; returns false when the call ended meanwhile.
bool call::deliver_head() {
  if (head_seen_ || !parser_->is_header_done()) {
    return true;
  }
  head_seen_ = true;
  const auto& msg = parser_->get();
  auto status = msg.result_int();
  if (status >= 100 && status < 200 && status != 101) {
    return true;
  }
  result_.status = static_cast<int>(status);
  result_.headers.clear();
  for (const auto& f : msg) {
    result_.headers.emplace_back(f.name_string(), f.value());
  }
  if (cb_.on_head) {
    cb_.on_head(result_.status, result_.headers);
  }
  return !done_;
}

void call::connection_lost(std::string_view what, const error_code& ec) {
  // A pooled connection that the server closed while it was idle fails
  // before any byte of the answer arrives; one attempt on a fresh connection
  // hides that race from the caller.
  if (reused_ && !retried_) {
    retried_ = true;
    reused_ = false;
    conn_->close();
    retired_ = std::move(conn_);
    connect();
    return;
  }
  fail(std::string{what} + " " + endpoint_text() + ": " + ec.message());
}

void call::fail(std::string error, bool timed_out) {
  if (done_) {
    return;
  }
  done_ = true;
  result_.error = std::move(error);
  result_.timed_out = timed_out;
  result_.connect_failed = !got_byte_;
  // Closing cancels what is pending; the connection itself lives on with
  // this call until those handlers have run.
  if (conn_) {
    conn_->close();
  }
  complete();
}

void call::succeed() {
  done_ = true;
  // Only a complete exchange that both sides keep alive may be reused.
  bool reusable = parser_->keep_alive() && in_.size() == 0;
  if (reusable) {
    owner_.put_idle(pool_key_, std::move(conn_));
  } else {
    conn_->close();
  }
  complete();
}

void call::complete() {
  deadline_.cancel();
  connect_deadline_.cancel();
  resolver_.cancel();
  owner_.forget(id_);

  auto on_done = std::move(cb_.on_done);
  cb_ = {};
  if (on_done) {
    on_done(std::move(result_));
  }
}

uint64_t client_core::send(client_request req, client_callbacks callbacks) {
  auto id = next_id.fetch_add(1) + 1;
  auto c = std::make_shared<call>(*this, id, std::move(req), std::move(callbacks));
  {
    std::lock_guard<std::mutex> lk(mtx);
    if (!stopping) {
      calls.emplace(id, c);
      asio::post(c->strand_, [c] { c->start(); });
      return id;
    }
  }
  // Racing the destructor is a caller bug; still answer exactly once.
  c->fail("client is shutting down");
  return id;
}

void client_core::cancel(uint64_t id) {
  std::shared_ptr<call> c;
  {
    std::lock_guard<std::mutex> lk(mtx);
    auto it = calls.find(id);
    if (it == calls.end()) {
      return;
    }
    c = it->second.lock();
  }
  if (c) {
    asio::post(c->strand_, [c] { c->fail("cancelled"); });
  }
}

void client_core::forget(uint64_t id) {
  std::lock_guard<std::mutex> lk(mtx);
  calls.erase(id);
}

std::unique_ptr<connection> client_core::take_idle(const std::string& key) {
  std::vector<std::unique_ptr<connection>> stale;
  std::unique_ptr<connection> found;
  {
    std::lock_guard<std::mutex> lk(mtx);
    auto it = pool.find(key);
    if (it == pool.end()) {
      return nullptr;
    }
    // Most recently used first: the least likely to have been closed.
    auto& idle = it->second;
    while (!idle.empty() && !found) {
      auto c = std::move(idle.back());
      idle.pop_back();
      if (still_usable(*c)) {
        found = std::move(c);
      } else {
        stale.push_back(std::move(c));
      }
    }
  }
  return found;
}

void client_core::put_idle(const std::string& key, std::unique_ptr<connection> c) {
  {
    std::lock_guard<std::mutex> lk(mtx);
    auto& idle = pool[key];
    if (!stopping && idle.size() < options.max_idle_per_host) {
      idle.push_back(std::move(c));
      return;
    }
  }
  c->close();
}

void client_core::shutdown() {
  std::vector<std::shared_ptr<call>> live;
  std::unordered_map<std::string, std::vector<std::unique_ptr<connection>>> idle;
  {
    std::lock_guard<std::mutex> lk(mtx);
    stopping = true;
    for (auto& [id, weak] : calls) {
      if (auto c = weak.lock()) {
        live.push_back(std::move(c));
      }
    }
    idle.swap(pool);
  }
  // Idle connections have nothing pending, so they can go from here.
  idle.clear();
  for (auto& c : live) {
    asio::post(c->strand_, [c] { c->fail("client shut down"); });
  }
  live.clear();

  // Destroyed from its own callback, the calling thread cannot join itself;
  // it is detached and keeps the client state alive until it returns.
  work.reset();
  for (auto& t : threads) {
    if (t.get_id() == std::this_thread::get_id()) {
      t.detach();
    } else {
      t.join();
    }
  }
  threads.clear();
}

}  // namespace

struct http_client::impl : client_core {
  using client_core::client_core;
};

http_client::http_client(http_client_options options)
    : impl_(std::make_shared<impl>(options)) {
  impl_->work.emplace(impl_->ioc.get_executor());
  auto n = std::max(1u, options.threads);
  for (unsigned i = 0; i < n; ++i) {
    impl_->threads.emplace_back([p = impl_] {
      for (;;) {
        try {
          p->ioc.run();
          return;
        } catch (...) {
          // A throwing callback must not take the client's thread with it.
        }
      }
    });
  }
}

http_client::~http_client() { impl_->shutdown(); }

uint64_t http_client::send(client_request req, client_callbacks callbacks) {
  return impl_->send(std::move(req), std::move(callbacks));
}

void http_client::cancel(uint64_t id) { impl_->cancel(id); }

void http_client::shutdown() { impl_->shutdown(); }

std::size_t http_client::idle_connections() const {
  std::lock_guard<std::mutex> lk(impl_->mtx);
  std::size_t n = 0;
  for (const auto& [key, idle] : impl_->pool) {
    n += idle.size();
  }
  return n;
}

uint64_t http_client::connections_opened() const { return impl_->opened.load(); }

}  // namespace kowalski::net
