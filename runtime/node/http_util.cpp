// Shared pieces of the gateway's routes: error replies and input validation.
#include "runtime/node/http_util.hpp"

#include <algorithm>
#include <cerrno>

#include "messages/errors.hpp"
#include "runtime/json/json.hpp"

#include <caf/error.hpp>

#include <cctype>
#include <cstdlib>

namespace kowalski::gw {

using simdjson::dom::element;
using simdjson::dom::element_type;

// -- replies -----------------------------------------------------------------

void reply_json(const net::responder_ptr& out, int status, std::string body) {
  net::http_response res;
  res.status = status;
  res.body = std::move(body);
  out->respond(std::move(res));
}

void reply_error(const net::responder_ptr& out, int status, std::string_view code,
                 std::string_view message, std::string_view field) {
  reply_json(out, status, net::error_body(status, code, message, field));
}

void reply_error(const net::responder_ptr& out, const caf::error& err) {
  auto view = kowalski::describe(err);
  auto status = http_status(view.code);
  net::http_response res;
  res.status = status;
  res.body = net::error_body(status, to_string(view.code), view.message, view.field);
  out->respond(std::move(res));
}

std::string sse_error_event(const caf::error& err) {
  auto view = describe(err);
  return "event: error\ndata: "
         + net::error_body(http_status(view.code), to_string(view.code), view.message,
                           view.field)
         + "\n\n";
}

void not_allowed(const net::http_request& req, const net::responder_ptr& out,
                 const char* allowed) {
  net::http_response res;
  res.status = 405;
  res.headers.emplace_back("Allow", allowed);
  res.body = net::error_body(405, "method_not_allowed",
                             req.method + " is not allowed on " + req.path + "; expected "
                               + allowed);
  out->respond(std::move(res));
}

// -- input validation ----------------------------------------------------------

std::string describe_value(element e) {
  switch (e.type()) {
    case element_type::ARRAY: return "an array";
    case element_type::OBJECT: return "an object";
    case element_type::STRING: {
      auto s = std::string{std::string_view(e)};
      if (s.empty()) {
        return "an empty string";
      }
      return s.size() > 40 ? "a string of " + std::to_string(s.size()) + " bytes"
                           : "the string " + json::quote(s);
    }
    case element_type::INT64:
    case element_type::UINT64:
    case element_type::DOUBLE: return "the number " + simdjson::to_string(e);
    case element_type::BOOL: return bool(e) ? "true" : "false";
    case element_type::NULL_VALUE: return "null";
  }
  return "an unknown value";
}

simdjson::dom::parser& parser() {
  thread_local simdjson::dom::parser instance;
  return instance;
}

// Parses a body that must be a JSON object; an empty body counts as {} when
// `empty_ok`.
std::optional<bad_input> parse_object(const net::http_request& req, element& doc,
                                      bool empty_ok) {
  auto body = std::string_view{req.body};
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    if (!empty_ok) {
      return bad_input{400, "body", "the request body is empty; expected a JSON object"};
    }
    body = "{}";
  }
  if (!json::valid_utf8(body)) {
    return bad_input{400, "body", "the request body is not valid UTF-8; expected UTF-8 JSON"};
  }
  // A parser keeps buffers as large as the largest document it read: after
  // an upload of hundreds of MB, the next small body gives them back.
  constexpr std::size_t keep = std::size_t{64} << 20;
  auto& p = parser();
  if (p.capacity() > keep && body.size() < keep) {
    // On failure the parser keeps its large buffers, which still work.
    auto shrunk = p.allocate(std::max<std::size_t>(body.size(), std::size_t{1} << 20));
    static_cast<void>(shrunk == simdjson::SUCCESS);
  }
  auto err = p.parse(body.data(), body.size()).get(doc);
  if (err != simdjson::SUCCESS) {
    return bad_input{400, "body", std::string{"the request body is malformed JSON ("}
                                    + simdjson::error_message(err)
                                    + "); expected a JSON object"};
  }
  if (!doc.is_object()) {
    return bad_input{400, "body", "the request body is " + describe_value(doc)
                                    + "; expected a JSON object"};
  }
  return std::nullopt;
}

// Reads optional string `key`; refuses other types and, if `non_empty`,
// empty strings.
std::optional<bad_input> get_string(element obj, const char* key, std::string& out,
                                    bool required, bool non_empty, std::size_t max_bytes) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS) {
    if (required) {
      return bad_input{400, key, std::string{key} + " is missing; expected a string"};
    }
    return std::nullopt;
  }
  if (!v.is_string()) {
    return bad_input{400, key, std::string{key} + " must be a string, got " + describe_value(v)};
  }
  auto s = std::string_view(v);
  if (non_empty && s.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return bad_input{400, key, std::string{key} + " must be a non-empty string, got "
                                 + describe_value(v)};
  }
  if (s.size() > max_bytes) {
    return bad_input{413, key, std::string{key} + " is " + std::to_string(s.size())
                                 + " bytes; expected at most " + std::to_string(max_bytes)};
  }
  out = std::string{s};
  return std::nullopt;
}

std::optional<bad_input> get_number(element obj, const char* key, double min, double max,
                                    double& out) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS || v.is_null()) {
    return std::nullopt;
  }
  if (!v.is_number()) {
    return bad_input{400, key, std::string{key} + " must be a number, got " + describe_value(v)};
  }
  auto d = double(v);
  if (d < min || d > max) {
    auto range = json::writer{}.value(min).str() + " and " + json::writer{}.value(max).str();
    return bad_input{400, key, std::string{key} + " must be between " + range + ", got "
                                 + describe_value(v)};
  }
  out = d;
  return std::nullopt;
}

std::optional<bad_input> get_positive_int(element obj, const char* key, int64_t max,
                                          int32_t& out) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS || v.is_null()) {
    return std::nullopt;
  }
  int64_t n = 0;
  if (!(v.is_int64() || v.is_uint64()) || v.get(n) != simdjson::SUCCESS || n < 1 || n > max) {
    return bad_input{400, key, std::string{key} + " must be a positive integer up to "
                                 + std::to_string(max) + ", got " + describe_value(v)};
  }
  out = static_cast<int32_t>(n);
  return std::nullopt;
}

std::optional<bad_input> get_bool(element obj, const char* key, bool& out) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS || v.is_null()) {
    return std::nullopt;
  }
  if (!v.is_bool()) {
    return bad_input{400, key, std::string{key} + " must be true or false, got "
                                 + describe_value(v)};
  }
  out = bool(v);
  return std::nullopt;
}

// Reads the optional "limit" query parameter (1..max) into `limit`.
std::optional<bad_input> query_limit(const net::http_request& req, uint32_t max,
                                     uint32_t& limit) {
  std::string value;
  if (!req.query_param("limit", value)) {
    return std::nullopt;
  }
  char* end = nullptr;
  auto n = std::strtol(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || n < 1 || n > static_cast<long>(max)) {
    return bad_input{400, "limit", "limit must be an integer from 1 to " + std::to_string(max)
                                     + ", got " + json::quote(value.substr(0, 32))};
  }
  limit = static_cast<uint32_t>(n);
  return std::nullopt;
}

std::optional<bad_input> query_uint(const net::http_request& req, const char* key,
                                    uint64_t min, uint64_t max, uint64_t& out) {
  std::string value;
  if (!req.query_param(key, value)) {
    return std::nullopt;
  }
  char* end = nullptr;
  errno = 0;
  auto n = std::strtoull(value.c_str(), &end, 10);
  if (value.empty() || *end != '\0' || value[0] == '-' || errno == ERANGE || n < min
      || n > max) {
    return bad_input{400, key, std::string{key} + " must be an integer from "
                                 + std::to_string(min) + " to " + std::to_string(max)
                                 + ", got " + json::quote(value.substr(0, 32))};
  }
  out = n;
  return std::nullopt;
}

std::optional<bad_input> query_wait_ms(const net::http_request& req, uint64_t& ms) {
  return query_uint(req, "wait_ms", 0, 600'000, ms);
}

bool is_hex_id(std::string_view id, std::string_view prefix, std::size_t digits) {
  if (id.size() != prefix.size() + digits || id.substr(0, prefix.size()) != prefix) {
    return false;
  }
  for (auto c : id.substr(prefix.size())) {
    if (!std::isxdigit(static_cast<unsigned char>(c)) || std::isupper(c)) {
      return false;
    }
  }
  return true;
}

void reply_bad(const net::responder_ptr& out, const bad_input& bad) {
  reply_error(out, bad.status, bad.status == 413 ? "payload_too_large" : "invalid_argument",
              bad.message, bad.field);
}

}  // namespace kowalski::gw
