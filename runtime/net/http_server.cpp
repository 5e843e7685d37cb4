// Beast HTTP/1.1 server: one strand per connection, requests read and answered
// strictly in order, all deadlines driven by one lazily re-armed timer.
#include "runtime/net/http_server.hpp"

#include <boost/asio/dispatch.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/chunk_encode.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <limits>
#include <cctype>
#include <charconv>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace kowalski::net {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using clock_type = std::chrono::steady_clock;
using error_code = boost::system::error_code;
using strand_type = asio::strand<asio::io_context::executor_type>;
// Concrete executor types spare every completion the type-erased dispatch.
using socket_type = asio::basic_stream_socket<tcp, strand_type>;
using timer_type = asio::basic_waitable_timer<clock_type, asio::wait_traits<clock_type>,
                                              strand_type>;

responder::~responder() = default;

namespace {

/// Bytes asked of the socket per read; the buffer keeps its capacity.
constexpr std::size_t read_chunk = 16 * 1024;

/// Longest wait for the peer to close after an error reply (lingering close).
constexpr std::chrono::milliseconds max_linger{2'000};

/// Pause before accepting again after accept() failed (e.g. out of fds).
constexpr std::chrono::milliseconds accept_retry_delay{50};

/// Bodies above this are released after the reply instead of being kept.
constexpr std::size_t max_kept_capacity = 64 * 1024;

/// Pipelined bytes buffered while a request is answered; beyond this the
/// server stops reading until the answer is out (back-pressure).
constexpr std::size_t max_pipelined = 64 * 1024;

constexpr std::string_view continue_reply = "HTTP/1.1 100 Continue\r\n\r\n";

// Header text that would split the response is dropped, never sent.
bool safe_header_text(std::string_view s) {
  return s.find_first_of("\r\n") == std::string_view::npos;
}

void append_number(std::string& out, std::size_t v) {
  char buf[24];
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

/// Timeouts are clamped into this range: zero would make the deadline timer
/// spin, and huge values would overflow the clock's arithmetic.
constexpr std::chrono::milliseconds min_timeout_setting{1};
constexpr std::chrono::milliseconds max_timeout_setting{std::chrono::hours{24 * 365}};

http_server_options clamped(http_server_options o) {
  o.request_timeout = std::clamp(o.request_timeout, min_timeout_setting, max_timeout_setting);
  o.idle_timeout = std::clamp(o.idle_timeout, min_timeout_setting, max_timeout_setting);
  return o;
}

struct session;

// Shared by the server object and its sessions. A handler may keep a
// responder after the server is gone, so the io_context lives here, with the
// session that still refers to it.
struct server_core {
  explicit server_core(http_server_options opts, request_handler h)
      : options(clamped(std::move(opts))),
        handler(std::move(h)),
        ioc(static_cast<int>(std::max(1u, options.threads))),
        acceptor(asio::make_strand(ioc)),
        accept_timer(acceptor.get_executor()),
        min_timeout(std::min(options.request_timeout, options.idle_timeout)) {}

  http_server_options options;
  request_handler handler;
  asio::io_context ioc;
  tcp::acceptor acceptor;
  asio::steady_timer accept_timer;
  std::chrono::milliseconds min_timeout;

  // Foreign threads post under a shared lock, so nothing is posted once the
  // threads are being joined. `stopped` is written with both mutexes held
  // and read with either one.
  std::shared_mutex post_mtx;
  std::mutex reg_mtx;
  bool stopped = false;
  std::unordered_map<uint64_t, std::weak_ptr<session>> sessions;
  uint64_t next_id = 0;
  std::atomic<std::size_t> open{0};
  // Changes of `open` are announced here for wait_connections().
  std::mutex open_mtx;
  std::condition_variable open_changed;

  void connection_opened() {
    open.fetch_add(1);
    announce_open();
  }

  void connection_closed() {
    open.fetch_sub(1);
    announce_open();
  }

  void announce_open() {
    // Taking the lock orders the change before a waiter's next check.
    { std::lock_guard<std::mutex> lk(open_mtx); }
    open_changed.notify_all();
  }
};

struct session : std::enable_shared_from_this<session> {
  enum class phase { waiting, reading, handling, writing, lingering, closed };
  enum class in_flight { none, head, chunk, last };

  session(std::shared_ptr<server_core> core, socket_type socket, strand_type strand,
          uint64_t id)
      : core_(std::move(core)),
        id_(id),
        strand_(std::move(strand)),
        socket_(std::move(socket)),
        timer_(strand_) {}

  ~session() {
    if (!closed_.exchange(true)) {
      core_->connection_closed();
    }
    std::lock_guard<std::mutex> lk(core_->reg_mtx);
    core_->sessions.erase(id_);
  }

  void start();
  void close();

  // Called through the responder, on the strand.
  void send_response(http_response&& res);
  void begin_stream(int status, std::string content_type, header_list headers);
  void write_chunk(std::string chunk);
  void set_drained(std::function<void()> fn);
  void end_stream();
  void abort_stream();

  std::shared_ptr<server_core> core_;
  const uint64_t id_;
  strand_type strand_;
  std::atomic<bool> closed_{false};
  /// Responder calls posted to the strand and not yet run.
  std::atomic<unsigned> queued_{0};

private:
  enum class framing { length, chunked, until_close };

  void begin_request();
  void parse_buffered();
  void start_read();
  void on_read(const error_code& ec, std::size_t n);
  bool expects_continue() const;
  void send_continue();
  void on_parse_error(const error_code& ec);
  void reply_timeout();
  void dispatch_request();
  void send_error(int status, std::string body);
  void write_whole(bool no_body);
  void on_whole_written(const error_code& ec);
  void next_request();
  void pump();
  void on_stream_written(const error_code& ec);
  void finish_stream();
  void linger_close();
  void format_head(int status, std::string_view content_type, const header_list& headers,
                   framing f, std::size_t length);

  clock_type::time_point deadline() const;
  void enter(phase p);
  void arm_timer(clock_type::time_point now);
  void on_timer(const error_code& ec);
  void expire();

  socket_type socket_;
  timer_type timer_;
  clock_type::time_point timer_expiry_ = clock_type::time_point::max();
  beast::flat_buffer buffer_;
  std::unique_ptr<char[]> read_buf_{new char[read_chunk]};
  std::optional<http::request_parser<http::string_body>> parser_;
  std::string remote_;

  phase phase_ = phase::reading;
  clock_type::time_point phase_start_;
  bool timed_out_ = false;
  bool continue_sent_ = false;
  bool limit_chosen_ = false;  // body_limit_for consulted for this request
  std::size_t body_limit_ = 0;
  bool read_pending_ = false;
  // From dispatch until the answer is written: reads only watch for a
  // disconnect and buffer pipelined requests.
  bool active_ = false;

  // The request being answered.
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool head_only_ = false;

  // The response being written.
  std::string head_;
  std::string body_;
  bool streaming_ = false;
  bool chunked_ = false;
  bool end_pending_ = false;
  bool abort_pending_ = false;
  in_flight writing_ = in_flight::none;
  std::deque<std::string> chunks_;
  std::function<void()> drained_;  // to run once chunks_ is written out
};

// The handler's side of one request. Every call hops onto the session strand;
// the atomics decide which calls take effect.
class session_responder final : public responder {
public:
  explicit session_responder(std::shared_ptr<session> s) : session_(std::move(s)) {}

  ~session_responder() override {
    if (!started_.load()) {
      http_response res;
      res.status = 500;
      res.body = error_body(500, "internal_error", "the request was dropped without an answer");
      run([res = std::move(res)](session& s) mutable { s.send_response(std::move(res)); });
    } else if (streaming_.load() && !ended_.load()) {
      run([](session& s) { s.abort_stream(); });
    }
  }

  void respond(http_response res) override {
    if (started_.exchange(true)) {
      return;
    }
    run([res = std::move(res)](session& s) mutable { s.send_response(std::move(res)); });
  }

  void begin_stream(int status, std::string content_type, header_list headers) override {
    if (started_.exchange(true)) {
      return;
    }
    streaming_.store(true);
    run([status, ct = std::move(content_type), hs = std::move(headers)](session& s) mutable {
      s.begin_stream(status, std::move(ct), std::move(hs));
    });
  }

  void write(std::string chunk) override {
    // An empty chunk would read as the end of the body on the wire.
    if (chunk.empty() || !streaming_.load() || ended_.load()) {
      return;
    }
    run([c = std::move(chunk)](session& s) mutable { s.write_chunk(std::move(c)); });
  }

  void end() override {
    if (!streaming_.load() || ended_.exchange(true)) {
      return;
    }
    run([](session& s) { s.end_stream(); });
  }

  bool closed() const override { return session_->closed_.load(); }

  void when_drained(std::function<void()> fn) override {
    if (!streaming_.load() || ended_.load()) {
      return;
    }
    run([f = std::move(fn)](session& s) mutable { s.set_drained(std::move(f)); });
  }

private:
  // A handler answering on the strand (the common, fast case) runs inline,
  // unless calls made earlier from other threads are still queued: running
  // ahead of them would reorder the stream.
  template <class F>
  void run(F&& f) {
    auto& s = *session_;
    if (s.queued_.load() == 0 && s.strand_.running_in_this_thread()) {
      f(s);
      return;
    }
    std::shared_lock<std::shared_mutex> lk(s.core_->post_mtx);
    if (s.core_->stopped) {
      return;
    }
    s.queued_.fetch_add(1);
    asio::post(s.strand_, [sp = session_, f = std::forward<F>(f)]() mutable {
      f(*sp);
      sp->queued_.fetch_sub(1);
    });
  }

  std::shared_ptr<session> session_;
  std::atomic<bool> started_{false};
  std::atomic<bool> streaming_{false};
  std::atomic<bool> ended_{false};
};

void session::start() {
  error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);
  auto ep = socket_.remote_endpoint(ec);
  if (!ec) {
    remote_ = ep.address().to_string();
  }

  // The first request's clock starts at accept: a silent new connection is
  // closed after request_timeout, not idle_timeout.
  phase_ = phase::reading;
  phase_start_ = clock_type::now();
  arm_timer(phase_start_);
  begin_request();
}

void session::close() {
  if (closed_.exchange(true)) {
    return;
  }
  phase_ = phase::closed;
  error_code ec;
  socket_.shutdown(socket_type::shutdown_both, ec);
  socket_.close(ec);
  timer_.cancel();
  chunks_.clear();
  drained_ = nullptr;
  core_->connection_closed();
}

void session::begin_request() {
  parser_.emplace();
  body_limit_ = core_->options.body_limit;
  // With a per-route limit the parser's own check, made when the header
  // completes, must not refuse what the route allows; it is made below.
  // (Beast 1.74 compares lengths against an empty optional as if it were
  // smaller than any length, so "no limit" is the largest value instead.)
  if (core_->options.body_limit_for) {
    parser_->body_limit(std::numeric_limits<std::uint64_t>::max());
  } else {
    parser_->body_limit(body_limit_);
  }
  limit_chosen_ = false;
  continue_sent_ = false;
  timed_out_ = false;
  parse_buffered();
}

// Feeds buffered bytes (pipelined or just read) to the parser, then reads
// more if the request is not complete yet.
void session::parse_buffered() {
  while (buffer_.size() > 0) {
    error_code ec;
    auto used = parser_->put(buffer_.data(), ec);
    buffer_.consume(used);
    if (ec == http::error::need_more) {
      break;
    }
    if (ec) {
      on_parse_error(ec);
      return;
    }
    // The parser stops after the header: the route may allow a larger body.
    if (!limit_chosen_ && parser_->is_header_done()) {
      limit_chosen_ = true;
      if (core_->options.body_limit_for) {
        auto& head = parser_->get();
        body_limit_ = core_->options.body_limit_for(std::string{head.method_string()},
                                                    std::string{head.target()});
        parser_->body_limit(body_limit_);
        auto length = parser_->content_length();
        if (length && *length > body_limit_) {
          on_parse_error(http::error::body_limit);
          return;
        }
      }
    }
    if (parser_->is_done()) {
      dispatch_request();
      return;
    }
    if (used == 0) {
      break;
    }
  }

  if (timed_out_) {
    reply_timeout();
    return;
  }

  if (!continue_sent_ && parser_->is_header_done() && expects_continue()) {
    send_continue();
    return;
  }

  start_read();
}

// At most one read is pending; whoever needs one while it is out waits for
// its completion, which on_read routes by the session's state.
void session::start_read() {
  if (read_pending_ || closed_) {
    return;
  }
  read_pending_ = true;
  // The read lands in its own buffer: buffer_ may be consumed while the read
  // is pending (a request parsed from pipelined bytes), and flat_buffer moves
  // its storage when fully consumed, so a region prepared earlier would be
  // committed at the wrong place.
  socket_.async_read_some(asio::buffer(read_buf_.get(), read_chunk),
                          [self = shared_from_this()](const error_code& ec, std::size_t n) {
                            self->on_read(ec, n);
                          });
}

void session::on_read(const error_code& ec, std::size_t n) {
  read_pending_ = false;
  if (closed_) {
    return;
  }
  buffer_.commit(asio::buffer_copy(buffer_.prepare(n), asio::buffer(read_buf_.get(), n)));

  // After the last reply: discard input until the client closes.
  if (phase_ == phase::lingering) {
    if (ec) {
      close();
      return;
    }
    buffer_.clear();
    start_read();
    return;
  }

  // End of stream, a reset or a stop. A client that hangs up while its
  // request is answered is gone: closed() tells the producer to stop.
  if (ec) {
    if (timed_out_ && !active_) {
      reply_timeout();
      return;
    }
    close();
    return;
  }

  if (active_) {
    if (buffer_.size() < max_pipelined) {
      start_read();
    }
    return;
  }

  if (n > 0 && phase_ == phase::waiting) {
    enter(phase::reading);
  }
  parse_buffered();
}

bool session::expects_continue() const {
  auto& fields = parser_->get();
  auto it = fields.find(http::field::expect);
  return it != fields.end() && iequals(it->value(), "100-continue");
}

// Clients that sent "Expect: 100-continue" wait for this before the body.
void session::send_continue() {
  continue_sent_ = true;
  asio::async_write(socket_, asio::buffer(continue_reply.data(), continue_reply.size()),
                    [self = shared_from_this()](const error_code& ec, std::size_t) {
                      if (self->closed_) {
                        return;
                      }
                      if (ec) {
                        self->close();
                        return;
                      }
                      self->start_read();
                    });
}

void session::on_parse_error(const error_code& ec) {
  if (ec == http::error::body_limit) {
    auto limit = std::to_string(body_limit_);
    auto length = parser_->content_length();
    auto sent = length ? "the request body is " + std::to_string(*length) + " bytes"
                       : std::string{"the chunked request body grew"};
    send_error(413, error_body(413, "payload_too_large",
                               sent + ", over the limit of " + limit + " bytes",
                               "body"));
    return;
  }
  if (ec == http::error::header_limit) {
    send_error(431, error_body(431, "headers_too_large", "request header exceeds 8192 bytes"));
    return;
  }
  send_error(400, error_body(400, "bad_request", "malformed HTTP request: " + ec.message()));
}

void session::reply_timeout() {
  // A connection that never sent a byte is just closed; a client stuck
  // halfway through a request learns why.
  bool partial = buffer_.size() > 0 || (parser_ && parser_->got_some());
  if (!partial) {
    close();
    return;
  }
  auto ms = std::to_string(core_->options.request_timeout.count());
  send_error(408, error_body(408, "request_timeout",
                             "request not received completely within " + ms + " ms"));
}

void session::dispatch_request() {
  auto& msg = parser_->get();
  version_ = msg.version();
  keep_alive_ = msg.keep_alive();
  head_only_ = msg.method() == http::verb::head;

  http_request req;
  req.method.assign(msg.method_string());
  req.target.assign(msg.target());
  auto q = req.target.find('?');
  req.path.assign(req.target, 0, q);
  if (q != std::string::npos) {
    req.query.assign(req.target, q + 1, std::string::npos);
  }
  for (const auto& f : msg) {
    req.headers.emplace_back(f.name_string(), f.value());
  }
  req.body = std::move(msg.body());
  req.remote_address = remote_;
  parser_.reset();

  enter(phase::handling);
  active_ = true;
  auto r = std::make_shared<session_responder>(shared_from_this());
  try {
    core_->handler(std::move(req), std::move(r));
  } catch (...) {
    // The handler's copy of the responder is gone by now; if it had not
    // answered, its destructor sent the 500.
  }

  // Notices a client that hangs up early; also the read for the next request.
  start_read();
}

void session::format_head(int status, std::string_view content_type,
                          const header_list& headers, framing f, std::size_t length) {
  head_.clear();
  head_ += "HTTP/1.1 ";
  append_number(head_, static_cast<std::size_t>(status));
  head_ += ' ';
  auto reason = http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status)));
  head_ += reason == "<unknown-status>" ? std::string_view{"Unknown"} : reason;
  head_ += "\r\n";

  bool own_type = !content_type.empty() && safe_header_text(content_type);
  if (own_type) {
    head_ += "Content-Type: ";
    head_ += content_type;
    head_ += "\r\n";
  }
  for (const auto& [name, value] : headers) {
    // Framing headers are ours to set; a second Content-Type would conflict.
    if (name.empty() || !safe_header_text(name) || !safe_header_text(value) ||
        iequals(name, "content-length") || iequals(name, "transfer-encoding") ||
        iequals(name, "connection") || (own_type && iequals(name, "content-type"))) {
      continue;
    }
    head_ += name;
    head_ += ": ";
    head_ += value;
    head_ += "\r\n";
  }

  bool bodiless_status = status < 200 || status == 204 || status == 304;
  if (f == framing::length && !bodiless_status) {
    head_ += "Content-Length: ";
    append_number(head_, length);
    head_ += "\r\n";
  } else if (f == framing::chunked) {
    head_ += "Transfer-Encoding: chunked\r\n";
  }
  if (!keep_alive_) {
    head_ += "Connection: close\r\n";
  } else if (version_ < 11) {
    head_ += "Connection: keep-alive\r\n";
  }
  head_ += "\r\n";
}

void session::send_response(http_response&& res) {
  if (closed_ || phase_ != phase::handling || streaming_) {
    return;
  }
  if (res.status < 100 || res.status > 999) {
    res = http_response{};
    res.status = 500;
    res.body = error_body(500, "internal_error", "handler produced an invalid status code");
  }
  bool no_body = head_only_ || res.status < 200 || res.status == 204 || res.status == 304;
  format_head(res.status, res.content_type, res.headers, framing::length, res.body.size());
  body_ = std::move(res.body);
  write_whole(no_body);
}

// Replies to a request that could not be read; the connection closes after.
void session::send_error(int status, std::string body) {
  keep_alive_ = false;
  head_only_ = false;
  format_head(status, "application/json", {}, framing::length, body.size());
  body_ = std::move(body);
  write_whole(false);
}

void session::write_whole(bool no_body) {
  enter(phase::writing);
  std::array<asio::const_buffer, 2> bufs{
      asio::buffer(head_), no_body ? asio::const_buffer{} : asio::buffer(body_)};
  asio::async_write(socket_, bufs,
                    [self = shared_from_this()](const error_code& ec, std::size_t) {
                      self->on_whole_written(ec);
                    });
}

void session::on_whole_written(const error_code& ec) {
  if (closed_) {
    return;
  }
  if (ec) {
    close();
    return;
  }
  if (body_.capacity() > max_kept_capacity) {
    std::string{}.swap(body_);
  } else {
    body_.clear();
  }
  active_ = false;
  if (!keep_alive_) {
    linger_close();
    return;
  }
  next_request();
}

void session::next_request() {
  // Pipelined bytes already count as a request being received.
  enter(buffer_.size() > 0 ? phase::reading : phase::waiting);
  begin_request();
}

void session::begin_stream(int status, std::string content_type, header_list headers) {
  if (closed_ || phase_ != phase::handling || streaming_) {
    return;
  }
  streaming_ = true;
  end_pending_ = false;
  abort_pending_ = false;

  // HTTP/1.0 has no chunked encoding: the body ends where the connection does.
  chunked_ = version_ >= 11;
  if (!chunked_) {
    keep_alive_ = false;
  }
  if (status < 100 || status > 999) {
    status = 500;
  }
  format_head(status, content_type, headers, chunked_ ? framing::chunked : framing::until_close,
              0);

  enter(phase::writing);
  writing_ = in_flight::head;
  asio::async_write(socket_, asio::buffer(head_),
                    [self = shared_from_this()](const error_code& ec, std::size_t) {
                      self->on_stream_written(ec);
                    });
}

void session::write_chunk(std::string chunk) {
  if (closed_ || !streaming_ || head_only_) {
    return;
  }
  chunks_.push_back(std::move(chunk));
  pump();
}

void session::set_drained(std::function<void()> fn) {
  if (closed_ || !streaming_) {
    return;
  }
  drained_ = std::move(fn);
  pump();
}

void session::end_stream() {
  if (closed_ || !streaming_) {
    return;
  }
  end_pending_ = true;
  pump();
}

void session::abort_stream() {
  if (closed_ || !streaming_) {
    return;
  }
  abort_pending_ = true;
  pump();
}

// Starts the next queued write, if none is in flight.
void session::pump() {
  if (closed_ || writing_ != in_flight::none) {
    return;
  }

  auto done = [self = shared_from_this()](const error_code& ec, std::size_t) {
    self->on_stream_written(ec);
  };
  if (!chunks_.empty()) {
    enter(phase::writing);
    writing_ = in_flight::chunk;
    auto data = asio::buffer(chunks_.front());
    if (chunked_) {
      asio::async_write(socket_, http::make_chunk(data), std::move(done));
    } else {
      asio::async_write(socket_, data, std::move(done));
    }
    return;
  }

  // Without the last chunk the client sees a truncated body, not a short one.
  if (abort_pending_) {
    close();
    return;
  }

  if (end_pending_) {
    if (!chunked_ || head_only_) {
      finish_stream();
      return;
    }
    enter(phase::writing);
    writing_ = in_flight::last;
    asio::async_write(socket_, http::make_chunk_last(), std::move(done));
    return;
  }

  // Waiting for the producer: no deadline applies.
  enter(phase::handling);
  if (drained_) {
    auto fn = std::move(drained_);
    drained_ = nullptr;
    fn();
  }
}

void session::on_stream_written(const error_code& ec) {
  auto was = writing_;
  writing_ = in_flight::none;
  if (closed_) {
    return;
  }
  if (ec) {
    close();
    return;
  }
  if (was == in_flight::chunk) {
    chunks_.pop_front();
  }
  if (was == in_flight::last) {
    finish_stream();
    return;
  }
  pump();
}

void session::finish_stream() {
  streaming_ = false;
  active_ = false;
  end_pending_ = false;
  chunks_.clear();
  if (!keep_alive_) {
    linger_close();
    return;
  }
  next_request();
}

// Half-closes and discards what the client still sends, so that it reads the
// reply before it sees a reset (unread input makes close() send RST).
void session::linger_close() {
  error_code ec;
  socket_.shutdown(socket_type::shutdown_send, ec);
  if (ec) {
    close();
    return;
  }
  enter(phase::lingering);
  buffer_.clear();
  start_read();
}

// Deadlines: the timer is always armed no later than (arm time + the smallest
// timeout), and every phase that starts later ends no earlier than that, so
// entering a phase never has to re-arm the timer. Only lingering, whose limit
// may be shorter, re-arms. A firing timer checks the phase's real deadline.
clock_type::time_point session::deadline() const {
  const auto& o = core_->options;
  switch (phase_) {
    case phase::waiting:
      return phase_start_ + o.idle_timeout;
    case phase::reading:
    case phase::writing:
      return phase_start_ + o.request_timeout;
    case phase::lingering:
      return phase_start_ + std::min(o.request_timeout, max_linger);
    default:
      return clock_type::time_point::max();
  }
}

void session::enter(phase p) {
  phase_ = p;
  phase_start_ = clock_type::now();
  if (deadline() < timer_expiry_) {
    arm_timer(phase_start_);
  }
}

void session::arm_timer(clock_type::time_point now) {
  timer_expiry_ = std::min(deadline(), now + core_->min_timeout);
  timer_.expires_at(timer_expiry_);
  timer_.async_wait([self = shared_from_this()](const error_code& ec) { self->on_timer(ec); });
}

void session::on_timer(const error_code& ec) {
  if (ec == asio::error::operation_aborted || closed_) {
    return;
  }
  auto now = clock_type::now();
  if (now >= deadline()) {
    expire();
  }
  if (closed_) {
    return;
  }
  arm_timer(now);
}

void session::expire() {
  switch (phase_) {
    case phase::reading: {
      // The pending read completes with operation_aborted and answers 408.
      timed_out_ = true;
      error_code ec;
      socket_.cancel(ec);
      break;
    }
    case phase::waiting:
    case phase::writing:
    case phase::lingering:
      close();
      break;
    default:
      break;
  }
}

void do_accept(const std::shared_ptr<server_core>& core);

void on_accept(const std::shared_ptr<server_core>& core, strand_type strand,
               const error_code& ec, socket_type socket) {
  if (ec == asio::error::operation_aborted || !core->acceptor.is_open()) {
    return;
  }
  if (ec) {
    // Typically out of file descriptors: back off instead of spinning.
    core->accept_timer.expires_after(accept_retry_delay);
    core->accept_timer.async_wait([core](const error_code& wait_ec) {
      if (!wait_ec) {
        do_accept(core);
      }
    });
    return;
  }

  if (core->open.load() >= core->options.max_connections) {
    error_code ignored;
    socket.close(ignored);
    do_accept(core);
    return;
  }

  std::shared_ptr<session> s;
  {
    std::lock_guard<std::mutex> lk(core->reg_mtx);
    if (core->stopped) {
      return;
    }
    auto id = ++core->next_id;
    core->connection_opened();
    s = std::make_shared<session>(core, std::move(socket), strand, id);
    core->sessions.emplace(id, s);
  }
  asio::post(strand, [s] { s->start(); });
  do_accept(core);
}

void do_accept(const std::shared_ptr<server_core>& core) {
  auto strand = asio::make_strand(core->ioc);
  core->acceptor.async_accept(strand, [core, strand](const error_code& ec,
                                                     socket_type socket) mutable {
    on_accept(core, std::move(strand), ec, std::move(socket));
  });
}

}  // namespace

struct http_server::impl {
  std::shared_ptr<server_core> core;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work;
  std::vector<std::thread> threads;
  std::mutex life_mtx;  // serializes start() and stop()
  bool started = false;
  bool stopped = false;
  uint16_t port = 0;
};

http_server::http_server(http_server_options options, request_handler handler)
    : impl_(std::make_unique<impl>()) {
  impl_->core = std::make_shared<server_core>(std::move(options), std::move(handler));
}

http_server::~http_server() { stop(); }

std::error_code http_server::start() {
  std::lock_guard<std::mutex> lk(impl_->life_mtx);
  if (impl_->started || impl_->stopped) {
    return std::make_error_code(std::errc::operation_not_permitted);
  }
  auto& core = *impl_->core;

  error_code ec;
  auto address = asio::ip::make_address(core.options.address, ec);
  if (ec) {
    return ec;
  }
  tcp::endpoint ep{address, core.options.port};
  core.acceptor.open(ep.protocol(), ec);
  if (ec) {
    return ec;
  }
  core.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  core.acceptor.bind(ep, ec);
  if (ec) {
    core.acceptor.close();
    return ec;
  }
  core.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    core.acceptor.close();
    return ec;
  }
  impl_->port = core.acceptor.local_endpoint(ec).port();

  impl_->started = true;
  impl_->work.emplace(core.ioc.get_executor());
  do_accept(impl_->core);
  auto n = std::max(1u, core.options.threads);
  for (unsigned i = 0; i < n; ++i) {
    impl_->threads.emplace_back([c = impl_->core] {
      for (;;) {
        try {
          c->ioc.run();
          return;
        } catch (...) {
          // Handlers catch their own errors; keep the thread serving if one
          // slips through.
        }
      }
    });
  }
  return {};
}

uint16_t http_server::port() const { return impl_->port; }

std::size_t http_server::connections() const { return impl_->core->open.load(); }

bool http_server::wait_connections(std::size_t n, std::chrono::milliseconds timeout) const {
  auto& core = *impl_->core;
  std::unique_lock<std::mutex> lk(core.open_mtx);
  return core.open_changed.wait_for(lk, timeout, [&] { return core.open.load() == n; });
}

void http_server::stop() {
  std::lock_guard<std::mutex> lk(impl_->life_mtx);
  if (impl_->stopped) {
    return;
  }
  impl_->stopped = true;
  auto core = impl_->core;

  // From here on no responder posts and no new session registers.
  std::vector<std::shared_ptr<session>> live;
  {
    std::lock_guard<std::mutex> reg(core->reg_mtx);
    std::unique_lock<std::shared_mutex> post(core->post_mtx);
    core->stopped = true;
    for (auto& [id, weak] : core->sessions) {
      if (auto s = weak.lock()) {
        live.push_back(std::move(s));
      }
    }
  }
  if (!impl_->started) {
    return;
  }

  asio::post(core->acceptor.get_executor(), [core] {
    error_code ec;
    core->acceptor.close(ec);
    core->accept_timer.cancel();
  });
  for (auto& s : live) {
    asio::post(s->strand_, [s] { s->close(); });
  }
  live.clear();

  // With every socket and timer closed the threads run out of work. Called
  // from a handler, the calling thread cannot join itself: it is detached
  // and finishes once the handler returns (it holds the core).
  impl_->work.reset();
  bool joined_all = true;
  for (auto& t : impl_->threads) {
    if (t.get_id() == std::this_thread::get_id()) {
      t.detach();
      joined_all = false;
    } else {
      t.join();
    }
  }
  impl_->threads.clear();
  if (joined_all) {
    core->handler = nullptr;  // releases what the handler captured
  }
}

}  // namespace kowalski::net
