// Blocking HTTP calls for tests, on top of the asynchronous client.
#pragma once

#include "runtime/net/http_client.hpp"

#include <chrono>
#include <future>
#include <stdexcept>
#include <string>

namespace kowalski::testing {

/// Sends one request and waits for it (at most `timeout`).
inline net::client_result fetch(net::http_client& client, std::string method, std::string url,
                                std::string body = {}, net::header_list headers = {},
                                std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  net::client_request req;
  req.method = std::move(method);
  req.url = std::move(url);
  req.body = std::move(body);
  req.headers = std::move(headers);
  if (!req.body.empty() && net::find_header(req.headers, "content-type") == nullptr) {
    req.headers.emplace_back("Content-Type", "application/json");
  }
  auto done = std::make_shared<std::promise<net::client_result>>();
  auto future = done->get_future();
  net::client_callbacks cb;
  cb.on_done = [done](net::client_result r) { done->set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  if (future.wait_for(timeout) != std::future_status::ready) {
    throw std::runtime_error("HTTP call did not finish in time");
  }
  return future.get();
}

}  // namespace kowalski::testing
