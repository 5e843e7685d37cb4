// Blocking calls to a node's HTTP API for the command-line clients (chat,
// batch); they run on the client's own I/O thread and wait here.
#pragma once

#include "runtime/net/http_client.hpp"

#include <simdjson.h>

#include <functional>
#include <future>
#include <string>
#include <string_view>

namespace kowalski {

struct node_endpoint {
  std::string url = "http://127.0.0.1:8080";  ///< no trailing slash
  std::string token;                          ///< bearer token, if the node wants one
};

/// `text` percent-encoded for a URL's query (unreserved characters kept).
inline std::string query_escape(std::string_view text) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : text) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                 || c == '-' || c == '_' || c == '.' || c == '~';
    if (plain) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

/// Sends one request to the node and waits for the answer. `on_data`, when
/// set, sees the body as it arrives (and the result then holds none of it).
inline net::client_result call_node(net::http_client& client, const node_endpoint& node,
                                    std::string method, const std::string& path,
                                    std::string body = {},
                                    std::string content_type = "application/json",
                                    std::function<void(std::string_view)> on_data = {}) {
  net::client_request req;
  req.method = std::move(method);
  req.url = node.url + path;
  req.body = std::move(body);
  req.headers.emplace_back("Content-Type", std::move(content_type));
  if (!node.token.empty()) {
    req.headers.emplace_back("Authorization", "Bearer " + node.token);
  }
  std::promise<net::client_result> done;
  net::client_callbacks cb;
  if (on_data) {
    cb.on_data = std::move(on_data);
  }
  cb.on_done = [&](net::client_result r) { done.set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  return done.get_future().get();
}

/// The message of a node's JSON error body, or the start of the body when it
/// is not one.
inline std::string error_text(std::string_view body) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  std::string_view v;
  if (p.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS
      || doc["error"]["message"].get(v) != simdjson::SUCCESS) {
    return std::string{body.substr(0, 300)};
  }
  return std::string{v};
}

}  // namespace kowalski
