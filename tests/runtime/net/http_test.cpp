// Tests for runtime/net: URL helpers, the HTTP server and the HTTP client,
// run against each other and against raw sockets on 127.0.0.1.
#define BOOST_TEST_MODULE http_test
#include <boost/test/unit_test.hpp>

#include "runtime/net/http_client.hpp"
#include "runtime/net/http_server.hpp"
#include "runtime/net/http_types.hpp"
#include "runtime/net/url.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace kowalski::net;
using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

namespace {

/// The first value of header `name`, or "" when it is missing.
std::string header_value(const header_list& headers, std::string_view name) {
  auto v = find_header(headers, name);
  return v ? *v : std::string{};
}

/// Upper bound for anything that should happen "now"; a hang fails the test.
constexpr std::chrono::milliseconds wait_limit{5'000};

int elapsed_ms(clock_type::time_point since) {
  return static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - since).count());
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

struct read_result {
  std::string data;
  bool closed = false;  ///< the peer closed (EOF or reset)
};

/// Reads from `fd` until `enough(data)` holds, the peer closes, or `limit`
/// passes. Waits with poll(), so a quiet peer costs the limit, not forever.
read_result read_fd(int fd, std::chrono::milliseconds limit,
                    const std::function<bool(const std::string&)>& enough = {}) {
  read_result out;
  auto deadline = clock_type::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                      clock_type::now());
    if (left.count() <= 0) {
      return out;
    }
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) {
      return out;
    }
    char buf[4096];
    auto n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) {
      out.closed = true;
      return out;
    }
    out.data.append(buf, static_cast<std::size_t>(n));
    if (enough && enough(out.data)) {
      return out;
    }
  }
}

bool send_fd(int fd, std::string_view s) {
  while (!s.empty()) {
    auto n = ::send(fd, s.data(), s.size(), MSG_NOSIGNAL);
    if (n <= 0) {
      return false;
    }
    s.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

bool has_header_end(const std::string& s) { return s.find("\r\n\r\n") != std::string::npos; }

/// A blocking TCP client that sends exactly the bytes a test needs.
class raw_client {
public:
  explicit raw_client(uint16_t port) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    auto a = loopback(port);
    BOOST_REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  }
  ~raw_client() { ::close(fd_); }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  void send(std::string_view s) { BOOST_REQUIRE(send_fd(fd_, s)); }

  read_result read(std::chrono::milliseconds limit,
                   const std::function<bool(const std::string&)>& enough = {}) {
    return read_fd(fd_, limit, enough);
  }

private:
  int fd_;
};

/// A listening socket on 127.0.0.1 for servers scripted byte by byte.
class raw_listener {
public:
  explicit raw_listener(int backlog = 16) : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
    auto a = loopback(0);
    BOOST_REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    BOOST_REQUIRE(::listen(fd_, backlog) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~raw_listener() { ::close(fd_); }
  raw_listener(const raw_listener&) = delete;
  raw_listener& operator=(const raw_listener&) = delete;

  uint16_t port() const { return port_; }

  /// The next connection, or -1 when none arrives within `limit`.
  int accept_within(std::chrono::milliseconds limit) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(limit.count())) <= 0) {
      return -1;
    }
    return ::accept(fd_, nullptr, nullptr);
  }

private:
  int fd_;
  uint16_t port_ = 0;
};

/// A port on 127.0.0.1 that refuses connections (bound once, then released).
uint16_t closed_port() {
  raw_listener l;
  return l.port();
}

/// The server under test, started on 127.0.0.1 and a free port.
struct test_server {
  explicit test_server(request_handler h, http_server_options o = {})
      : server(std::move(o), std::move(h)) {
    auto ec = server.start();
    BOOST_REQUIRE_MESSAGE(!ec, "start failed: " << ec.message());
    BOOST_REQUIRE(server.port() != 0);
  }

  std::string url(std::string_view path) const {
    return "http://127.0.0.1:" + std::to_string(server.port()) + std::string{path};
  }

  http_server server;
};

http_response text_response(std::string body, int status = 200) {
  http_response res;
  res.status = status;
  res.content_type = "text/plain";
  res.body = std::move(body);
  return res;
}

/// What one client call reported, gathered from its callbacks.
struct exchange {
  client_result result;
  std::vector<std::string> chunks;
  int head_status = 0;
  int head_calls = 0;
  std::shared_ptr<std::atomic<int>> done_calls;
  uint64_t id = 0;
};

struct pending_exchange {
  std::shared_ptr<exchange> state = std::make_shared<exchange>();
  std::shared_ptr<std::promise<void>> done = std::make_shared<std::promise<void>>();
  std::future<void> ready = done->get_future();
};

/// Starts a request whose callbacks fill an exchange; `stream` sets on_data.
pending_exchange start_call(http_client& c, client_request req, bool stream = false) {
  pending_exchange p;
  p.state->done_calls = std::make_shared<std::atomic<int>>(0);
  client_callbacks cb;
  auto st = p.state;
  cb.on_head = [st](int status, const header_list&) {
    st->head_status = status;
    ++st->head_calls;
  };
  if (stream) {
    cb.on_data = [st](std::string_view data) { st->chunks.emplace_back(data); };
  }
  cb.on_done = [st, done = p.done](client_result r) {
    // A second call would break the promise; count it to report it instead.
    if (st->done_calls->fetch_add(1) == 0) {
      st->result = std::move(r);
      done->set_value();
    }
  };
  p.state->id = c.send(std::move(req), std::move(cb));
  return p;
}

/// Waits (bounded) for the call to finish and returns what it reported.
exchange finish_call(pending_exchange& p, std::chrono::milliseconds limit = wait_limit) {
  BOOST_REQUIRE_MESSAGE(p.ready.wait_for(limit) == std::future_status::ready,
                        "on_done not called within " << limit.count() << " ms");
  return *p.state;
}

exchange call(http_client& c, client_request req, bool stream = false) {
  auto p = start_call(c, std::move(req), stream);
  return finish_call(p);
}

client_request get(std::string url) {
  client_request r;
  r.url = std::move(url);
  return r;
}

/// Keeps responders a test wants to answer late (or never) alive.
struct held_responders {
  void add(responder_ptr r) {
    std::lock_guard<std::mutex> lk(mtx);
    list.push_back(std::move(r));
    arrived.notify_all();
  }
  bool wait_for_count(std::size_t n, std::chrono::milliseconds limit = wait_limit) {
    std::unique_lock<std::mutex> lk(mtx);
    return arrived.wait_for(lk, limit, [&] { return list.size() >= n; });
  }
  void clear() {
    std::lock_guard<std::mutex> lk(mtx);
    list.clear();
  }
  std::mutex mtx;
  std::condition_variable arrived;
  std::vector<responder_ptr> list;
};

/// A self-signed certificate for "localhost" only (no IP address), written
/// to a temporary PEM file that can be trusted through SSL_CERT_FILE.
struct test_certificate {
  test_certificate() {
    key = EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256");
    cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    auto name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
    auto san = X509V3_EXT_conf_nid(nullptr, &ctx, NID_subject_alt_name, "DNS:localhost");
    X509_add_ext(cert, san, -1);
    X509_EXTENSION_free(san);
    X509_sign(cert, key, EVP_sha256());

    char path_template[] = "/tmp/http_test_cert_XXXXXX";
    int fd = ::mkstemp(path_template);
    path = path_template;
    FILE* f = ::fdopen(fd, "w");
    PEM_write_X509(f, cert);
    std::fclose(f);
  }
  ~test_certificate() {
    ::unlink(path.c_str());
    X509_free(cert);
    EVP_PKEY_free(key);
  }
  test_certificate(const test_certificate&) = delete;
  test_certificate& operator=(const test_certificate&) = delete;

  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  std::string path;
};

/// Trusts `path` (and nothing else) for clients created while it lives:
/// set_default_verify_paths() reads SSL_CERT_FILE.
struct trusted_ca_file {
  explicit trusted_ca_file(const std::string& path) { ::setenv("SSL_CERT_FILE", path.c_str(), 1); }
  ~trusted_ca_file() { ::unsetenv("SSL_CERT_FILE"); }
};

/// A blocking OpenSSL server on 127.0.0.1 that answers one HTTPS request.
/// Results are read after join(), which orders them for the test thread.
class tls_test_server {
public:
  explicit tls_test_server(const test_certificate& c) : ctx_(SSL_CTX_new(TLS_server_method())) {
    SSL_CTX_use_certificate(ctx_, c.cert);
    SSL_CTX_use_PrivateKey(ctx_, c.key);
    thread_ = std::thread([this] { serve_one(); });
  }
  ~tls_test_server() {
    join();
    SSL_CTX_free(ctx_);
  }
  tls_test_server(const tls_test_server&) = delete;
  tls_test_server& operator=(const tls_test_server&) = delete;

  uint16_t port() const { return listener_.port(); }
  void join() {
    if (thread_.joinable()) {
      thread_.join();
    }
  }

  bool handshake_ok = false;
  std::string server_name;  ///< SNI as received
  std::string request;

private:
  void serve_one() {
    int fd = listener_.accept_within(wait_limit);
    if (fd < 0) {
      return;
    }
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL* ssl = SSL_new(ctx_);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
      handshake_ok = true;
      if (auto sn = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name)) {
        server_name = sn;
      }
      char buf[4096];
      while (!has_header_end(request)) {
        int n = SSL_read(ssl, buf, sizeof buf);
        if (n <= 0) {
          break;
        }
        request.append(buf, static_cast<std::size_t>(n));
      }
      std::string_view reply = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecure";
      SSL_write(ssl, reply.data(), static_cast<int>(reply.size()));
      SSL_shutdown(ssl);
    }
    SSL_free(ssl);
    ::close(fd);
  }

  raw_listener listener_;
  SSL_CTX* ctx_;
  std::thread thread_;
};

}  // namespace

// --- URL helpers and shared types -----------------------------------------

BOOST_AUTO_TEST_SUITE(url_helpers)

BOOST_AUTO_TEST_CASE(parses_absolute_urls_with_default_and_explicit_ports) {
  auto u = parse_url("http://example.com/api/chat?x=1#frag");
  BOOST_REQUIRE(u);
  BOOST_TEST(u->scheme == "http");
  BOOST_TEST(u->host == "example.com");
  BOOST_TEST(u->port == 80);
  BOOST_TEST(u->target == "/api/chat?x=1");

  auto s = parse_url("HTTPS://Example.com:8443");
  BOOST_REQUIRE(s);
  BOOST_TEST(s->scheme == "https");
  BOOST_TEST(s->host == "example.com");
  BOOST_TEST(s->port == 8443);
  BOOST_TEST(s->target == "/");

  auto v6 = parse_url("http://[::1]:11434?q");
  BOOST_REQUIRE(v6);
  BOOST_TEST(v6->host == "::1");
  BOOST_TEST(v6->port == 11434);
  BOOST_TEST(v6->target == "/?q");
}

BOOST_AUTO_TEST_CASE(rejects_bad_schemes_hosts_and_ports) {
  BOOST_TEST(!parse_url("ftp://example.com/"));
  BOOST_TEST(!parse_url("example.com/x"));
  BOOST_TEST(!parse_url("http:///path"));
  BOOST_TEST(!parse_url("http://host:0/"));
  BOOST_TEST(!parse_url("http://host:65536/"));
  BOOST_TEST(!parse_url("http://host:/"));
  BOOST_TEST(!parse_url("http://user@host/"));
  BOOST_TEST(!parse_url("http://[::1/"));
  BOOST_TEST(!parse_url("http://host/a b"));
  BOOST_TEST(!parse_url("http://host/a\r\nX-Injected: 1"));
}

BOOST_AUTO_TEST_CASE(normalizes_base_urls_like_ollama_host) {
  BOOST_TEST(normalize_base_url("localhost", 11434).value_or("") == "http://localhost:11434");
  BOOST_TEST(normalize_base_url(" 10.0.0.5:8080 ", 11434).value_or("") ==
             "http://10.0.0.5:8080");
  BOOST_TEST(normalize_base_url("http://host:9000/", 11434).value_or("") ==
             "http://host:9000");
  BOOST_TEST(normalize_base_url("https://host", 11434).value_or("") == "https://host:443");
  BOOST_TEST(normalize_base_url("https://api.example.com/v1/", 443).value_or("") ==
             "https://api.example.com:443/v1");
  BOOST_TEST(normalize_base_url("[::1]:5000", 1).value_or("") == "http://[::1]:5000");
  BOOST_TEST(!normalize_base_url("", 11434));
  BOOST_TEST(!normalize_base_url("gopher://host", 11434));
  BOOST_TEST(!normalize_base_url("host:notaport", 11434));
}

BOOST_AUTO_TEST_CASE(percent_decodes_and_rejects_broken_escapes) {
  BOOST_TEST(percent_decode("a%20b%2Fc+d").value_or("") == "a b/c+d");
  BOOST_TEST(!percent_decode("bad%2"));
  BOOST_TEST(!percent_decode("bad%zz"));
}

BOOST_AUTO_TEST_CASE(finds_headers_case_insensitively) {
  header_list h{{"Content-Type", "text/plain"}, {"X-Id", "1"}, {"x-id", "2"}};
  auto v = find_header(h, "content-type");
  BOOST_REQUIRE(v);
  BOOST_TEST(*v == "text/plain");
  BOOST_TEST(header_value(h, "X-ID") == "1");
  BOOST_TEST(!find_header(h, "accept"));
}

BOOST_AUTO_TEST_CASE(query_param_decodes_values_and_reports_presence) {
  http_request req;
  req.query = "model=llama%203&flag&empty=&x=%zz";
  std::string v;
  BOOST_TEST(req.query_param("model", v));
  BOOST_TEST(v == "llama 3");
  BOOST_TEST(req.query_param("flag", v));
  BOOST_TEST(v.empty());
  BOOST_TEST(req.query_param("empty", v));
  BOOST_TEST(v.empty());
  BOOST_TEST(req.query_param("x", v));
  BOOST_TEST(v == "%zz");
  BOOST_TEST(!req.query_param("missing", v));
}

BOOST_AUTO_TEST_CASE(error_body_names_the_field_only_when_given) {
  BOOST_TEST(error_body(400, "bad_request", "max_tokens must be positive", "max_tokens") ==
             R"({"error":{"code":"bad_request","message":"max_tokens must be positive",)"
             R"("field":"max_tokens","status":400}})");
  BOOST_TEST(error_body(500, "internal_error", "say \"hi\"") ==
             R"({"error":{"code":"internal_error","message":"say \"hi\"","status":500}})");
}

BOOST_AUTO_TEST_SUITE_END()

// --- server and client together ----------------------------------------------

BOOST_AUTO_TEST_SUITE(round_trips)

BOOST_AUTO_TEST_CASE(post_round_trip_carries_method_path_query_headers_and_body) {
  std::promise<http_request> seen;
  test_server srv([&](http_request&& req, responder_ptr r) {
    http_response res = text_response("got " + req.body, 201);
    res.headers.emplace_back("X-Echo", req.header("x-token") ? *req.header("x-token") : "");
    seen.set_value(std::move(req));
    r->respond(std::move(res));
  });
  http_client client;

  client_request req;
  req.method = "POST";
  req.url = srv.url("/v1/echo?model=a%20b");
  req.headers.emplace_back("X-Token", "t-1");
  req.body = "payload";
  auto ex = call(client, std::move(req));

  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 201);
  BOOST_TEST(ex.head_status == 201);
  BOOST_TEST(ex.head_calls == 1);
  BOOST_TEST(ex.result.body == "got payload");
  BOOST_REQUIRE(find_header(ex.result.headers, "x-echo"));
  BOOST_TEST(header_value(ex.result.headers, "x-echo") == "t-1");
  BOOST_TEST(header_value(ex.result.headers, "content-type") == "text/plain");

  auto f = seen.get_future();
  BOOST_REQUIRE(f.wait_for(wait_limit) == std::future_status::ready);
  auto got = f.get();
  BOOST_TEST(got.method == "POST");
  BOOST_TEST(got.target == "/v1/echo?model=a%20b");
  BOOST_TEST(got.path == "/v1/echo");
  BOOST_TEST(got.query == "model=a%20b");
  std::string model;
  BOOST_TEST(got.query_param("model", model));
  BOOST_TEST(model == "a b");
  BOOST_TEST(got.remote_address == "127.0.0.1");
  BOOST_TEST(got.body == "payload");
  BOOST_REQUIRE(got.header("HOST"));
  BOOST_TEST(*got.header("host") == "127.0.0.1:" + std::to_string(srv.server.port()));
}

BOOST_AUTO_TEST_CASE(keep_alive_reuses_one_connection) {
  std::atomic<int> served{0};
  test_server srv([&](http_request&& req, responder_ptr r) {
    r->respond(text_response(std::to_string(++served)));
  });
  http_client client;

  for (int i = 1; i <= 20; ++i) {
    auto ex = call(client, get(srv.url("/n")));
    BOOST_REQUIRE(ex.result.error.empty());
    BOOST_TEST(ex.result.body == std::to_string(i));
  }
  BOOST_TEST(client.connections_opened() == 1u);
  BOOST_TEST(client.idle_connections() == 1u);
  BOOST_TEST(srv.server.connections() == 1u);
}

BOOST_AUTO_TEST_CASE(pool_keeps_at_most_max_idle_per_host_connections) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  http_client_options o;
  o.max_idle_per_host = 2;
  http_client client(o);

  // Five calls held open at once need five connections.
  std::vector<pending_exchange> calls;
  for (int i = 0; i < 5; ++i) {
    calls.push_back(start_call(client, get(srv.url("/held"))));
  }
  BOOST_REQUIRE(held.wait_for_count(5));
  BOOST_TEST(client.connections_opened() == 5u);
  BOOST_TEST(client.idle_connections() == 0u);
  for (auto& r : held.list) {
    r->respond(text_response("ok"));
  }
  for (auto& p : calls) {
    BOOST_TEST(finish_call(p).result.body == "ok");
  }

  // Two go back to the pool; the client closes the other three.
  BOOST_TEST(client.idle_connections() == 2u);
  BOOST_TEST(srv.server.wait_connections(2, wait_limit));
  held.clear();

  // The pooled ones are reused: two calls at once open nothing new.
  calls.clear();
  for (int i = 0; i < 2; ++i) {
    calls.push_back(start_call(client, get(srv.url("/again"))));
  }
  BOOST_REQUIRE(held.wait_for_count(2));
  for (auto& r : held.list) {
    r->respond(text_response("again"));
  }
  for (auto& p : calls) {
    BOOST_TEST(finish_call(p).result.body == "again");
  }
  BOOST_TEST(client.connections_opened() == 5u);
  BOOST_TEST(client.idle_connections() == 2u);
  held.clear();
}

BOOST_AUTO_TEST_CASE(head_request_gets_headers_without_body) {
  test_server srv([](http_request&& req, responder_ptr r) {
    r->respond(text_response("twelve bytes"));
  });
  http_client client;

  client_request req = get(srv.url("/"));
  req.method = "HEAD";
  auto ex = call(client, std::move(req));
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 200);
  BOOST_TEST(ex.result.body.empty());
  BOOST_TEST(header_value(ex.result.headers, "content-length") == "12");

  // The connection stayed in sync: the next answer is whole.
  auto next = call(client, get(srv.url("/")));
  BOOST_TEST(next.result.body == "twelve bytes");
  BOOST_TEST(client.connections_opened() == 1u);
}

BOOST_AUTO_TEST_CASE(dropped_responder_answers_500) {
  test_server srv([](http_request&& req, responder_ptr r) { r.reset(); });
  http_client client;

  auto ex = call(client, get(srv.url("/lost")));
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 500);
  BOOST_TEST(ex.result.body.find(R"("code":"internal_error")") != std::string::npos);
  BOOST_TEST(ex.result.body.find(R"("status":500)") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(responder_dropped_on_another_thread_answers_500) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  http_client client;

  auto p = start_call(client, get(srv.url("/later")));
  BOOST_REQUIRE(held.wait_for_count(1));
  std::thread([&] { held.clear(); }).join();
  auto ex = finish_call(p);
  BOOST_TEST(ex.result.status == 500);
}

BOOST_AUTO_TEST_CASE(only_the_first_answer_takes_effect) {
  test_server srv([](http_request&& req, responder_ptr r) {
    // Racing answers from several threads: exactly one may win. Writes go
    // to the stream if a stream won, and are ignored otherwise.
    std::vector<std::thread> racers;
    for (int i = 0; i < 4; ++i) {
      racers.emplace_back([r, i] {
        if (i % 2 == 0) {
          r->respond(text_response("whole " + std::to_string(i)));
        } else {
          r->begin_stream(200, "text/plain", {{"X-Racer", std::to_string(i)}});
        }
      });
    }
    for (auto& t : racers) {
      t.join();
    }
    r->respond(text_response("too late"));
    r->write("streamed");
    r->end();
  });
  http_client client;

  for (int round = 0; round < 5; ++round) {
    auto ex = call(client, get(srv.url("/race")));
    BOOST_REQUIRE(ex.result.error.empty());
    auto& b = ex.result.body;
    bool whole = b == "whole 0" || b == "whole 2";
    auto racer = find_header(ex.result.headers, "x-racer");
    bool streamed = b == "streamed" && racer && (*racer == "1" || *racer == "3");
    BOOST_TEST((whole != streamed), "body was: " << b);
  }
  BOOST_TEST(client.connections_opened() == 1u);
}

BOOST_AUTO_TEST_CASE(handler_exception_answers_500) {
  test_server srv([](http_request&& req, responder_ptr r) {
    throw std::runtime_error("handler bug");
  });
  http_client client;
  auto ex = call(client, get(srv.url("/throw")));
  BOOST_TEST(ex.result.status == 500);

  // The server keeps serving after it.
  auto again = call(client, get(srv.url("/throw")));
  BOOST_TEST(again.result.status == 500);
  BOOST_TEST(client.connections_opened() == 1u);
}

BOOST_AUTO_TEST_SUITE_END()

// --- server limits and timeouts (raw sockets) ---------------------------------

BOOST_AUTO_TEST_SUITE(server_limits)

BOOST_AUTO_TEST_CASE(body_over_limit_gets_413_naming_the_body_field) {
  std::atomic<int> handled{0};
  http_server_options o;
  o.body_limit = 1024;
  test_server srv([&](http_request&& req, responder_ptr r) {
    ++handled;
    r->respond(text_response("ok"));
  },
                  o);
  http_client client;

  client_request req;
  req.method = "POST";
  req.url = srv.url("/upload");
  req.body.assign(4096, 'x');
  auto ex = call(client, std::move(req));
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 413);
  BOOST_TEST(ex.result.body ==
             error_body(413, "payload_too_large",
                        "the request body is 4096 bytes, over the limit of 1024 bytes", "body"));
  BOOST_TEST(header_value(ex.result.headers, "connection") == "close");
  BOOST_TEST(handled.load() == 0);

  // A body at the limit is accepted.
  client_request ok;
  ok.method = "POST";
  ok.url = srv.url("/upload");
  ok.body.assign(1024, 'y');
  BOOST_TEST(call(client, std::move(ok)).result.status == 200);
}

BOOST_AUTO_TEST_CASE(a_route_may_choose_a_larger_body_limit) {
  http_server_options o;
  o.body_limit = 1024;
  o.body_limit_for = [](const std::string& method, const std::string& target) {
    return method == "POST" && target.rfind("/big", 0) == 0 ? std::size_t{8192}
                                                             : std::size_t{1024};
  };
  test_server srv([](http_request&& req, responder_ptr r) {
    r->respond(text_response(std::to_string(req.body.size())));
  },
                  o);
  http_client client;
  auto post = [&](const std::string& path, std::size_t n) {
    client_request req;
    req.method = "POST";
    req.url = srv.url(path);
    req.body.assign(n, 'z');
    return call(client, std::move(req)).result;
  };
  auto big = post("/big/upload", 8000);
  BOOST_TEST(big.status == 200);
  BOOST_TEST(big.body == "8000");
  auto too_big = post("/big/upload", 9000);
  BOOST_TEST(too_big.status == 413);
  BOOST_TEST(too_big.body.find("9000 bytes, over the limit of 8192") != std::string::npos);
  BOOST_TEST(post("/small", 2000).status == 413);
}

BOOST_AUTO_TEST_CASE(large_body_over_limit_still_lets_client_read_413) {
  http_server_options o;
  o.body_limit = 1024;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);
  http_client client;

  // Far more than socket buffers hold: the server must drain, not reset.
  client_request req;
  req.method = "POST";
  req.url = srv.url("/upload");
  req.body.assign(8 << 20, 'x');
  auto ex = call(client, std::move(req));
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 413);
}

BOOST_AUTO_TEST_CASE(partial_request_gets_408_within_request_timeout) {
  http_server_options o;
  o.request_timeout = 300ms;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);

  raw_client c(srv.server.port());
  auto start = clock_type::now();
  c.send("GET /slow HTTP/1.1\r\nHost: x\r\n");
  auto got = c.read(wait_limit);
  auto ms = elapsed_ms(start);

  BOOST_TEST(got.data.rfind("HTTP/1.1 408 ", 0) == 0, "got: " << got.data);
  BOOST_TEST(got.data.find(R"("code":"request_timeout")") != std::string::npos);
  BOOST_TEST(got.closed);
  BOOST_TEST(ms >= 250);
  BOOST_TEST(ms < 3000);
}

BOOST_AUTO_TEST_CASE(silent_connection_is_closed_without_a_reply) {
  http_server_options o;
  o.request_timeout = 300ms;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);

  raw_client c(srv.server.port());
  auto start = clock_type::now();
  auto got = c.read(wait_limit);
  BOOST_TEST(got.closed);
  BOOST_TEST(got.data.empty());
  BOOST_TEST(elapsed_ms(start) < 3000);
  BOOST_TEST(srv.server.wait_connections(0, wait_limit));
}

BOOST_AUTO_TEST_CASE(idle_keep_alive_connection_is_closed_after_idle_timeout) {
  http_server_options o;
  o.idle_timeout = 300ms;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);

  raw_client c(srv.server.port());
  c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  auto first = c.read(wait_limit, [](const std::string& s) {
    return s.size() >= 2 && s.compare(s.size() - 2, 2, "ok") == 0;
  });
  BOOST_TEST(first.data.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
  BOOST_TEST(!first.closed);

  auto start = clock_type::now();
  auto rest = c.read(wait_limit);
  BOOST_TEST(rest.closed);
  BOOST_TEST(rest.data.empty());
  BOOST_TEST(elapsed_ms(start) >= 250);
  BOOST_TEST(elapsed_ms(start) < 3000);
}

BOOST_AUTO_TEST_CASE(malformed_request_gets_400_and_close) {
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); });

  raw_client c(srv.server.port());
  c.send("NOT HTTP AT ALL\r\n\r\n");
  auto got = c.read(wait_limit);
  BOOST_TEST(got.data.rfind("HTTP/1.1 400 Bad Request\r\n", 0) == 0, "got: " << got.data);
  BOOST_TEST(got.data.find(R"("code":"bad_request")") != std::string::npos);
  BOOST_TEST(got.closed);
}

BOOST_AUTO_TEST_CASE(pipelined_requests_are_answered_in_order) {
  test_server srv([](http_request&& req, responder_ptr r) {
    // The first answer comes late, from another thread; order must hold.
    if (req.path == "/a") {
      std::thread([r] {
        r->respond(text_response("A"));
      }).detach();
      return;
    }
    r->respond(text_response(req.path == "/b" ? "B" : "C"));
  });

  raw_client c(srv.server.port());
  c.send(
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
      "GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
  auto got = c.read(wait_limit);
  BOOST_TEST(got.closed);
  auto a = got.data.find("\r\n\r\nA");
  auto b = got.data.find("\r\n\r\nB");
  auto cc = got.data.find("\r\n\r\nC");
  BOOST_REQUIRE(a != std::string::npos);
  BOOST_REQUIRE(b != std::string::npos);
  BOOST_REQUIRE(cc != std::string::npos);
  BOOST_TEST(a < b);
  BOOST_TEST(b < cc);
}

// Regression: bytes that arrive while a request is answered are buffered,
// and parsing them may empty the buffer while the next read is pending. The
// bytes of that read must land after what was parsed, not over it.
BOOST_AUTO_TEST_CASE(requests_after_a_pipelined_one_are_not_replaced_by_stale_bytes) {
  held_responders held;
  std::mutex mtx;
  std::vector<std::string> seen;
  test_server srv([&](http_request&& req, responder_ptr r) {
    {
      std::lock_guard<std::mutex> lk(mtx);
      seen.push_back(req.path + ":" + req.body);
    }
    if (req.path == "/first") {
      held.add(std::move(r));  // answered later, from the test thread
      return;
    }
    r->respond(text_response("ok " + req.path));
  });

  raw_client c(srv.server.port());
  auto post = [](std::string path, std::string body) {
    return "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Length: "
           + std::to_string(body.size()) + "\r\n\r\n" + body;
  };
  c.send(post("/first", "one") + post("/second", "two"));
  BOOST_REQUIRE(held.wait_for_count(1));
  held.list.front()->respond(text_response("ok /first"));
  auto got = c.read(wait_limit, [](const std::string& d) {
    return d.find("ok /second") != std::string::npos;
  });
  BOOST_REQUIRE(got.data.find("ok /second") != std::string::npos);

  for (int i = 0; i < 3; ++i) {
    auto path = "/next" + std::to_string(i);
    c.send(post(path, "body" + std::to_string(i)));
    auto reply = c.read(wait_limit, [&](const std::string& d) {
      return d.find("ok " + path) != std::string::npos;
    });
    BOOST_TEST(reply.data.find("ok " + path) != std::string::npos);
  }
  std::lock_guard<std::mutex> lk(mtx);
  BOOST_TEST((seen == std::vector<std::string>{"/first:one", "/second:two", "/next0:body0",
                                               "/next1:body1", "/next2:body2"}));
}

BOOST_AUTO_TEST_CASE(expect_continue_gets_100_before_the_body) {
  test_server srv([](http_request&& req, responder_ptr r) {
    r->respond(text_response("len " + std::to_string(req.body.size())));
  });

  raw_client c(srv.server.port());
  c.send("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  auto interim = c.read(wait_limit, has_header_end);
  BOOST_TEST(interim.data == "HTTP/1.1 100 Continue\r\n\r\n");
  c.send("hello");
  auto final_reply = c.read(wait_limit, [](const std::string& s) {
    return s.find("len 5") != std::string::npos;
  });
  BOOST_TEST(final_reply.data.rfind("HTTP/1.1 200 OK\r\n", 0) == 0);
}

BOOST_AUTO_TEST_CASE(http10_stream_is_delimited_by_close) {
  test_server srv([](http_request&& req, responder_ptr r) {
    r->begin_stream(200, "application/x-ndjson");
    r->write("{\"a\":1}\n");
    r->write("{\"b\":2}\n");
    r->end();
  });

  raw_client c(srv.server.port());
  c.send("GET /s HTTP/1.0\r\n\r\n");
  auto got = c.read(wait_limit);
  BOOST_TEST(got.closed);
  BOOST_TEST(got.data.find("Transfer-Encoding") == std::string::npos);
  auto body_at = got.data.find("\r\n\r\n");
  BOOST_REQUIRE(body_at != std::string::npos);
  BOOST_TEST(got.data.substr(body_at + 4) == "{\"a\":1}\n{\"b\":2}\n");
}

BOOST_AUTO_TEST_CASE(max_connections_closes_extra_connections) {
  http_server_options o;
  o.max_connections = 1;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);

  raw_client first(srv.server.port());
  BOOST_REQUIRE(srv.server.wait_connections(1, wait_limit));
  raw_client second(srv.server.port());
  auto got = second.read(wait_limit);
  BOOST_TEST(got.closed);
  BOOST_TEST(got.data.empty());

  // The admitted connection still works.
  first.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  auto reply = first.read(wait_limit, [](const std::string& s) {
    return s.find("\r\n\r\nok") != std::string::npos;
  });
  BOOST_TEST(reply.data.rfind("HTTP/1.1 200 OK", 0) == 0);
}

BOOST_AUTO_TEST_CASE(stop_is_idempotent_and_closes_open_connections) {
  held_responders held;
  http_server srv({}, [&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  BOOST_REQUIRE(!srv.start());

  raw_client idle(srv.port());
  raw_client busy(srv.port());
  busy.send("GET /wait HTTP/1.1\r\nHost: x\r\n\r\n");
  BOOST_REQUIRE(held.wait_for_count(1));

  srv.stop();
  srv.stop();
  BOOST_TEST(idle.read(wait_limit).closed);
  BOOST_TEST(busy.read(wait_limit).closed);

  // A responder that outlives the server is inert.
  BOOST_TEST(held.list.front()->closed());
  held.list.front()->respond(text_response("after stop"));
  held.clear();
}

BOOST_AUTO_TEST_CASE(start_reports_bind_errors) {
  raw_listener taken;
  http_server_options o;
  o.port = taken.port();
  http_server srv(o, [](http_request&&, responder_ptr) {});
  // The port is in use by a listening socket without SO_REUSEPORT.
  BOOST_TEST(static_cast<bool>(srv.start()));

  http_server_options bad;
  bad.address = "not-an-address";
  http_server srv2(bad, [](http_request&&, responder_ptr) {});
  BOOST_TEST(static_cast<bool>(srv2.start()));
}

BOOST_AUTO_TEST_SUITE_END()

// --- bodies: streaming, framing -------------------------------------------------

BOOST_AUTO_TEST_SUITE(bodies)

BOOST_AUTO_TEST_CASE(streamed_response_arrives_in_order_through_on_data) {
  test_server srv([](http_request&& req, responder_ptr r) {
    r->begin_stream(200, "application/x-ndjson", {{"X-Stream", "yes"}});
    // The producer runs on its own thread, as an actor would.
    std::thread([r] {
      for (int i = 0; i < 50; ++i) {
        r->write("{\"i\":" + std::to_string(i) + "}\n");
      }
      r->end();
    }).detach();
  });
  http_client client;

  auto ex = call(client, get(srv.url("/stream")), true);
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 200);
  BOOST_TEST(ex.result.body.empty());
  BOOST_TEST(header_value(ex.result.headers, "transfer-encoding") == "chunked");
  BOOST_TEST(header_value(ex.result.headers, "x-stream") == "yes");

  std::string expected;
  for (int i = 0; i < 50; ++i) {
    expected += "{\"i\":" + std::to_string(i) + "}\n";
  }
  std::string joined;
  for (auto& c : ex.chunks) {
    joined += c;
  }
  BOOST_TEST(joined == expected);
  BOOST_TEST(!ex.chunks.empty());

  // The connection is reusable after the last chunk.
  BOOST_TEST(call(client, get(srv.url("/stream")), true).result.status == 200);
  BOOST_TEST(client.connections_opened() == 1u);
}

BOOST_AUTO_TEST_CASE(large_content_length_and_chunked_bodies_arrive_whole) {
  std::string big(300'000, '\0');
  for (std::size_t i = 0; i < big.size(); ++i) {
    big[i] = static_cast<char>('a' + i % 26);
  }
  test_server srv([&big](http_request&& req, responder_ptr r) {
    if (req.path == "/length") {
      r->respond(text_response(big));
      return;
    }
    r->begin_stream(200, "text/plain");
    r->write(big.substr(0, 100'000));  // one chunk larger than a client read
    r->write("x");
    r->write(big.substr(100'000));
    r->end();
  });
  http_client client;

  auto whole = call(client, get(srv.url("/length")));
  BOOST_TEST(whole.result.body.size() == big.size());
  BOOST_TEST((whole.result.body == big));

  auto pieces = call(client, get(srv.url("/length")), true);
  std::string joined;
  for (auto& c : pieces.chunks) {
    joined += c;
  }
  BOOST_TEST((joined == big));
  BOOST_TEST(pieces.chunks.size() > 1u);

  auto chunked = call(client, get(srv.url("/chunked")));
  auto expected = big.substr(0, 100'000) + "x" + big.substr(100'000);
  BOOST_TEST(header_value(chunked.result.headers, "transfer-encoding") == "chunked");
  BOOST_TEST((chunked.result.body == expected));
  BOOST_TEST(client.connections_opened() == 1u);
}

BOOST_AUTO_TEST_CASE(close_delimited_body_is_read_to_eof_and_not_pooled) {
  raw_listener l;
  std::string request_seen;
  std::thread server([&] {
    int fd = l.accept_within(wait_limit);
    if (fd < 0) {
      return;
    }
    request_seen = read_fd(fd, wait_limit, has_header_end).data;
    send_fd(fd, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello ");
    send_fd(fd, "until close");
    ::close(fd);
  });
  http_client client;

  auto ex = call(client, get("http://127.0.0.1:" + std::to_string(l.port()) + "/eof"), true);
  server.join();
  BOOST_TEST(ex.result.error == "");
  std::string joined;
  for (auto& c : ex.chunks) {
    joined += c;
  }
  BOOST_TEST(joined == "hello until close");
  BOOST_TEST(client.idle_connections() == 0u);
  BOOST_TEST(request_seen.rfind("GET /eof HTTP/1.1\r\n", 0) == 0);
}

BOOST_AUTO_TEST_CASE(truncated_body_is_an_error_after_the_head) {
  raw_listener l;
  std::thread server([&] {
    int fd = l.accept_within(wait_limit);
    if (fd < 0) {
      return;
    }
    read_fd(fd, wait_limit, has_header_end);
    send_fd(fd, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
    ::close(fd);
  });
  http_client client;

  auto ex = call(client, get("http://127.0.0.1:" + std::to_string(l.port()) + "/cut"));
  server.join();
  BOOST_TEST(!ex.result.error.empty());
  BOOST_TEST(!ex.result.connect_failed);
  BOOST_TEST(ex.head_status == 200);
}

BOOST_AUTO_TEST_SUITE_END()

// --- client failures, timeouts, cancel, retry ---------------------------------

BOOST_AUTO_TEST_SUITE(client_failures)

BOOST_AUTO_TEST_CASE(refused_connection_reports_connect_failed) {
  http_client client;
  auto ex = call(client, get("http://127.0.0.1:" + std::to_string(closed_port()) + "/"));
  BOOST_TEST(!ex.result.error.empty());
  BOOST_TEST(ex.result.connect_failed);
  BOOST_TEST(!ex.result.timed_out);
  BOOST_TEST(ex.result.status == 0);
  BOOST_TEST(ex.head_calls == 0);
  BOOST_TEST(client.connections_opened() == 0u);
}

BOOST_AUTO_TEST_CASE(invalid_url_reports_an_error) {
  http_client client;
  auto ex = call(client, get("ftp://127.0.0.1/"));
  BOOST_TEST(!ex.result.error.empty());
  BOOST_TEST(ex.result.connect_failed);
}

BOOST_AUTO_TEST_CASE(invalid_method_or_header_is_refused_before_sending) {
  std::atomic<int> handled{0};
  test_server srv([&](http_request&& req, responder_ptr r) {
    ++handled;
    r->respond(text_response("ok"));
  });
  http_client client;

  client_request bad_method = get(srv.url("/"));
  bad_method.method = "GET /x HTTP/1.1\r\n";
  BOOST_TEST(!call(client, std::move(bad_method)).result.error.empty());

  client_request bad_header = get(srv.url("/"));
  bad_header.headers.emplace_back("X-A", "1\r\nX-Injected: 2");
  BOOST_TEST(!call(client, std::move(bad_header)).result.error.empty());

  BOOST_TEST(handled.load() == 0);
  BOOST_TEST(client.connections_opened() == 0u);
}

BOOST_AUTO_TEST_CASE(unanswered_connect_times_out) {
  // A listener whose accept queue is full drops new SYNs, so connect hangs.
  raw_listener l(0);
  std::vector<int> fillers;
  bool queue_full = false;
  for (int i = 0; i < 16 && !queue_full; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    fillers.push_back(fd);
    auto a = loopback(l.port());
    ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
    pollfd p{fd, POLLOUT, 0};
    queue_full = ::poll(&p, 1, 200) == 0;
  }
  BOOST_REQUIRE(queue_full);

  http_client_options o;
  o.connect_timeout = 300ms;
  http_client client(o);
  auto start = clock_type::now();
  auto ex = call(client, get("http://127.0.0.1:" + std::to_string(l.port()) + "/"));
  auto ms = elapsed_ms(start);
  for (int fd : fillers) {
    ::close(fd);
  }

  BOOST_TEST(ex.result.timed_out);
  BOOST_TEST(ex.result.connect_failed);
  BOOST_TEST(ex.result.error.find("timed out") != std::string::npos);
  BOOST_TEST(ms >= 250);
  BOOST_TEST(ms < 3000);
}

BOOST_AUTO_TEST_CASE(request_timeout_fires_when_no_answer_comes) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  http_client client;

  client_request req = get(srv.url("/never"));
  req.timeout = 300ms;
  auto start = clock_type::now();
  auto ex = call(client, std::move(req));
  auto ms = elapsed_ms(start);
  BOOST_TEST(ex.result.timed_out);
  BOOST_TEST(ex.result.connect_failed);  // not a byte of the answer arrived
  BOOST_TEST(ex.result.status == 0);
  BOOST_TEST(ms >= 250);
  BOOST_TEST(ms < 3000);
  BOOST_TEST(client.idle_connections() == 0u);

  // The server notices the client hung up; a producer would stop here.
  BOOST_REQUIRE(held.wait_for_count(1));
  auto r = held.list.front();
  BOOST_REQUIRE(srv.server.wait_connections(0, wait_limit));
  BOOST_TEST(r->closed());
  held.clear();
}

BOOST_AUTO_TEST_CASE(request_timeout_fires_mid_stream) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) {
    r->begin_stream(200, "text/plain");
    r->write("first");
    held.add(std::move(r));
  });
  http_client client;

  client_request req = get(srv.url("/stall"));
  req.timeout = 300ms;
  auto ex = call(client, std::move(req), true);
  BOOST_TEST(ex.result.timed_out);
  BOOST_TEST(!ex.result.connect_failed);
  BOOST_TEST(ex.head_status == 200);
  BOOST_REQUIRE(ex.chunks.size() == 1u);
  BOOST_TEST(ex.chunks[0] == "first");
  held.clear();
}

BOOST_AUTO_TEST_CASE(request_without_own_timeout_uses_the_client_request_timeout) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  http_client_options o;
  o.request_timeout = 300ms;
  http_client client(o);

  // Two unanswered calls: one relies on the client's timeout, one sets its own.
  auto start = clock_type::now();
  auto fallback = start_call(client, get(srv.url("/fallback")));
  client_request own = get(srv.url("/own"));
  own.timeout = 10s;
  auto overridden = start_call(client, std::move(own));
  BOOST_REQUIRE(held.wait_for_count(2));

  auto ex = finish_call(fallback);
  auto ms = elapsed_ms(start);
  BOOST_TEST(ex.result.timed_out);
  BOOST_TEST(ex.result.error.find("300 ms") != std::string::npos, ex.result.error);
  BOOST_TEST(ms >= 250);
  BOOST_TEST(ms < 3000);

  // The other call outlived the client's timeout and still gets its answer.
  BOOST_TEST((overridden.ready.wait_for(0ms) == std::future_status::timeout));
  for (auto& r : held.list) {
    r->respond(text_response("late but fine"));  // the timed-out one is gone
  }
  auto late = finish_call(overridden);
  BOOST_TEST(late.result.error == "");
  BOOST_TEST(late.result.body == "late but fine");
  held.clear();
}

BOOST_AUTO_TEST_CASE(cancel_ends_the_call_once_with_an_error) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) {
    if (req.path == "/hold") {
      held.add(std::move(r));
      return;
    }
    r->respond(text_response("ok"));
  });
  http_client client;

  auto p = start_call(client, get(srv.url("/hold")));
  BOOST_REQUIRE(held.wait_for_count(1));
  client.cancel(p.state->id);
  auto ex = finish_call(p);
  BOOST_TEST(ex.result.error == "cancelled");
  BOOST_TEST(ex.result.status == 0);

  // Cancelling a finished call is harmless; a later call completes first,
  // and on_done of the cancelled one was not repeated.
  client.cancel(p.state->id);
  auto after = call(client, get(srv.url("/ok")));
  BOOST_TEST(after.result.body == "ok");
  BOOST_TEST(p.state->done_calls->load() == 1);
  held.clear();
}

BOOST_AUTO_TEST_CASE(client_destructor_ends_calls_in_flight) {
  held_responders held;
  test_server srv([&](http_request&& req, responder_ptr r) { held.add(std::move(r)); });
  pending_exchange p;
  {
    http_client client;
    p = start_call(client, get(srv.url("/hold")));
    BOOST_REQUIRE(held.wait_for_count(1));
  }
  auto ex = finish_call(p);
  BOOST_TEST(!ex.result.error.empty());
  BOOST_TEST(p.state->done_calls->load() == 1);
  held.clear();
}

BOOST_AUTO_TEST_CASE(client_destroyed_from_its_own_callback_does_not_deadlock) {
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); });
  auto client = std::make_unique<http_client>();
  std::promise<std::string> destroyed;
  client_callbacks cb;
  cb.on_done = [&](client_result r) {
    client.reset();
    destroyed.set_value(r.body);
  };
  client->send(get(srv.url("/")), std::move(cb));
  auto f = destroyed.get_future();
  BOOST_REQUIRE(f.wait_for(wait_limit) == std::future_status::ready);
  BOOST_TEST(f.get() == "ok");
  BOOST_TEST(!client);
}

BOOST_AUTO_TEST_CASE(stale_pooled_connection_is_retried_on_a_fresh_one) {
  // First connection: answers one request keep-alive, then reads the second
  // and closes without a byte. Second connection: answers normally.
  raw_listener l;
  std::atomic<int> second_request_seen{0};
  std::thread server([&] {
    int a = l.accept_within(wait_limit);
    if (a < 0) {
      return;
    }
    read_fd(a, wait_limit, has_header_end);
    send_fd(a, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none");
    if (read_fd(a, wait_limit, has_header_end).data.size() > 0) {
      ++second_request_seen;
    }
    ::close(a);
    int b = l.accept_within(wait_limit);
    if (b < 0) {
      return;
    }
    read_fd(b, wait_limit, has_header_end);
    send_fd(b, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
    read_fd(b, wait_limit);  // until the client closes
    ::close(b);
  });

  auto base = "http://127.0.0.1:" + std::to_string(l.port());
  {
    http_client client;
    auto first = call(client, get(base + "/1"));
    BOOST_TEST(first.result.body == "one");
    BOOST_TEST(client.idle_connections() == 1u);
    auto second = call(client, get(base + "/2"));
    BOOST_TEST(second.result.error == "");
    BOOST_TEST(second.result.body == "two");
    BOOST_TEST(client.connections_opened() == 2u);
  }
  server.join();
  BOOST_TEST(second_request_seen.load() == 1);
}

BOOST_AUTO_TEST_CASE(connection_closed_by_server_idle_timeout_is_not_reused) {
  http_server_options o;
  o.idle_timeout = 200ms;
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); },
                  o);
  http_client client;

  BOOST_TEST(call(client, get(srv.url("/"))).result.body == "ok");
  BOOST_REQUIRE(srv.server.wait_connections(0, wait_limit));
  auto ex = call(client, get(srv.url("/")));
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.body == "ok");
  BOOST_TEST(client.connections_opened() == 2u);
}

BOOST_AUTO_TEST_CASE(https_round_trip_verifies_the_certificate_and_sends_sni) {
  test_certificate cert;
  tls_test_server tls(cert);
  trusted_ca_file trust(cert.path);
  http_client client;

  auto ex = call(client, get("https://localhost:" + std::to_string(tls.port()) + "/secure"));
  tls.join();
  BOOST_TEST(ex.result.error == "");
  BOOST_TEST(ex.result.status == 200);
  BOOST_TEST(ex.result.body == "secure");
  BOOST_TEST(tls.handshake_ok);
  BOOST_TEST(tls.server_name == "localhost");
  BOOST_TEST(tls.request.rfind("GET /secure HTTP/1.1\r\n", 0) == 0);
  BOOST_TEST(client.connections_opened() >= 1u);
}

BOOST_AUTO_TEST_CASE(https_rejects_an_untrusted_certificate) {
  test_certificate cert;
  tls_test_server tls(cert);
  http_client client;  // default trust store: the test CA is not in it

  auto ex = call(client, get("https://localhost:" + std::to_string(tls.port()) + "/"));
  tls.join();
  BOOST_TEST(ex.result.error.find("certificate verify failed") != std::string::npos,
             ex.result.error);
  BOOST_TEST(ex.result.connect_failed);
  BOOST_TEST(!tls.handshake_ok);
}

BOOST_AUTO_TEST_CASE(https_rejects_a_certificate_for_another_host_name) {
  test_certificate cert;  // valid for "localhost" only, not for 127.0.0.1
  tls_test_server tls(cert);
  trusted_ca_file trust(cert.path);
  http_client client;

  auto ex = call(client, get("https://127.0.0.1:" + std::to_string(tls.port()) + "/"));
  tls.join();
  BOOST_TEST(ex.result.error.find("certificate verify failed") != std::string::npos,
             ex.result.error);
  BOOST_TEST(ex.result.connect_failed);
  BOOST_TEST(!tls.handshake_ok);
}

BOOST_AUTO_TEST_CASE(https_to_a_plain_http_server_fails_the_handshake) {
  test_server srv([](http_request&& req, responder_ptr r) { r->respond(text_response("ok")); });
  http_client client;
  auto ex = call(client, get("https://127.0.0.1:" + std::to_string(srv.server.port()) + "/"));
  BOOST_TEST(!ex.result.error.empty());
  BOOST_TEST(ex.result.error.find("TLS") != std::string::npos, ex.result.error);
  BOOST_TEST(ex.result.connect_failed);
  BOOST_TEST(ex.result.status == 0);
}

BOOST_AUTO_TEST_SUITE_END()
