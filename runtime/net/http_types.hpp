// Plain HTTP request/response values shared by the server and the client;
// no Beast types, so that callers do not pay for Beast's headers.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kowalski::net {

/// Header list in arrival order; names as sent (compare case-insensitively).
using header_list = std::vector<std::pair<std::string, std::string>>;

/// ASCII case-insensitive equality, for header names and tokens.
bool iequals(std::string_view a, std::string_view b);

/// Returns the first value of header `name` (case-insensitive), or nullptr.
const std::string* find_header(const header_list& headers, std::string_view name);

/// An HTTP request as the server hands it to its handler.
struct http_request {
  std::string method;  ///< upper case: "GET", "POST", ...
  std::string target;  ///< as sent: path and query
  std::string path;    ///< target up to '?', percent-decoding not applied
  std::string query;   ///< after '?', or empty
  header_list headers;
  std::string body;
  std::string remote_address;

  const std::string* header(std::string_view name) const {
    return find_header(headers, name);
  }

  /// True when query parameter `key` is present; its percent-decoded value
  /// is then stored in `value` (a value with a broken escape is stored as sent).
  bool query_param(std::string_view key, std::string& value) const;
};

/// A whole (non-streamed) response.
struct http_response {
  int status = 200;
  std::string content_type = "application/json";
  header_list headers;
  std::string body;
};

/// Body of an error reply, shared by every part of the node:
/// {"error":{"code":..., "message":..., "field":..., "status":...}}.
std::string error_body(int status, std::string_view code, std::string_view message,
                       std::string_view field = {});

}  // namespace kowalski::net
