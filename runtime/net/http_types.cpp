// Header lookup, query parameters and the shared JSON error body.
#include "runtime/net/http_types.hpp"

#include "runtime/json/json.hpp"
#include "runtime/net/url.hpp"

namespace kowalski::net {

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) {
    return false;
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    auto x = static_cast<unsigned char>(a[i]);
    auto y = static_cast<unsigned char>(b[i]);
    // ASCII folding only: header names are tokens, never UTF-8.
    if (x >= 'A' && x <= 'Z') {
      x = static_cast<unsigned char>(x + ('a' - 'A'));
    }
    if (y >= 'A' && y <= 'Z') {
      y = static_cast<unsigned char>(y + ('a' - 'A'));
    }
    if (x != y) {
      return false;
    }
  }
  return true;
}

const std::string* find_header(const header_list& headers, std::string_view name) {
  for (const auto& [key, value] : headers) {
    if (iequals(key, name)) {
      return &value;
    }
  }
  return nullptr;
}

bool http_request::query_param(std::string_view key, std::string& value) const {
  std::string_view rest = query;
  while (!rest.empty()) {
    auto amp = rest.find('&');
    auto pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);

    auto eq = pair.find('=');
    auto raw_key = pair.substr(0, eq);
    auto raw_value = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);

    // Keys are compared decoded so that "a%5Fb" matches "a_b".
    auto decoded_key = percent_decode(raw_key);
    if (!decoded_key || *decoded_key != key) {
      continue;
    }

    // A broken escape is handed over as sent, so that the caller's validation
    // can name what arrived instead of reporting the parameter as missing.
    auto decoded = percent_decode(raw_value);
    value = decoded ? std::move(*decoded) : std::string{raw_value};
    return true;
  }
  return false;
}

std::string error_body(int status, std::string_view code, std::string_view message,
                       std::string_view field) {
  json::writer w;
  w.begin_object().key("error").begin_object();
  w.key("code").value(code);
  w.key("message").value(message);
  if (!field.empty()) {
    w.key("field").value(field);
  }
  w.key("status").value(status);
  w.end_object().end_object();
  return w.take();
}

}  // namespace kowalski::net
