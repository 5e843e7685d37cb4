// Parsing of absolute http(s) URLs, base-URL settings and percent-decoding.
#include "runtime/net/url.hpp"

#include <cctype>

namespace kowalski::net {

namespace {

constexpr uint16_t http_port = 80;
constexpr uint16_t https_port = 443;

std::string to_lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') {
    return c - '0';
  }
  if (c >= 'a' && c <= 'f') {
    return c - 'a' + 10;
  }
  if (c >= 'A' && c <= 'F') {
    return c - 'A' + 10;
  }
  return -1;
}

// Registered names and IPv4 literals; anything else (user info, spaces,
// control bytes) is refused rather than passed on to the resolver.
bool valid_reg_name(std::string_view host) {
  if (host.empty() || host.size() > 253) {
    return false;
  }
  for (char c : host) {
    auto u = static_cast<unsigned char>(c);
    if (!std::isalnum(u) && c != '-' && c != '.' && c != '_' && c != '~') {
      return false;
    }
  }
  return true;
}

bool valid_ipv6_literal(std::string_view host) {
  if (host.size() < 2) {
    return false;
  }
  for (char c : host) {
    if (hex_value(c) < 0 && c != ':' && c != '.') {
      return false;
    }
  }
  return host.find(':') != std::string_view::npos;
}

std::optional<uint16_t> parse_port(std::string_view s) {
  if (s.empty() || s.size() > 5) {
    return std::nullopt;
  }
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') {
      return std::nullopt;
    }
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  if (v == 0 || v > 65535) {
    return std::nullopt;
  }
  return static_cast<uint16_t>(v);
}

struct authority {
  std::string host;  // without IPv6 brackets
  std::optional<uint16_t> port;
};

// Splits "host", "host:port", "[v6]" or "[v6]:port".
std::optional<authority> parse_authority(std::string_view text) {
  authority out;
  std::string_view port_text;
  bool has_port = false;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) {
      return std::nullopt;
    }
    auto host = text.substr(1, close - 1);
    if (!valid_ipv6_literal(host)) {
      return std::nullopt;
    }
    out.host = to_lower(host);
    auto rest = text.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return std::nullopt;
      }
      has_port = true;
      port_text = rest.substr(1);
    }
  } else {
    auto colon = text.find(':');
    auto host = text.substr(0, colon);
    if (!valid_reg_name(host)) {
      return std::nullopt;
    }
    out.host = to_lower(host);
    if (colon != std::string_view::npos) {
      has_port = true;
      port_text = text.substr(colon + 1);
    }
  }
  if (has_port) {
    out.port = parse_port(port_text);
    if (!out.port) {
      return std::nullopt;
    }
  }
  return out;
}

std::string host_for_url(const std::string& host) {
  if (host.find(':') != std::string::npos) {
    return "[" + host + "]";
  }
  return host;
}

std::optional<uint16_t> default_port_of(std::string_view scheme) {
  if (scheme == "http") {
    return http_port;
  }
  if (scheme == "https") {
    return https_port;
  }
  return std::nullopt;
}

}  // namespace

std::optional<url> parse_url(std::string_view text) {
  auto sep = text.find("://");
  if (sep == std::string_view::npos) {
    return std::nullopt;
  }
  url out;
  out.scheme = to_lower(text.substr(0, sep));
  auto scheme_port = default_port_of(out.scheme);
  if (!scheme_port) {
    return std::nullopt;
  }

  auto rest = text.substr(sep + 3);
  auto end = rest.find_first_of("/?#");
  auto auth = parse_authority(rest.substr(0, end));
  if (!auth) {
    return std::nullopt;
  }
  out.host = std::move(auth->host);
  out.port = auth->port.value_or(*scheme_port);

  // The fragment never goes on the wire; spaces and control bytes would
  // break the request line.
  auto target = end == std::string_view::npos ? std::string_view{} : rest.substr(end);
  target = target.substr(0, target.find('#'));
  for (char c : target) {
    auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) {
      return std::nullopt;
    }
  }
  if (target.empty() || target.front() != '/') {
    out.target = "/";
  }
  out.target += target;
  return out;
}

std::optional<std::string> normalize_base_url(std::string_view text, uint16_t default_port) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  if (text.empty()) {
    return std::nullopt;
  }

  // Like OLLAMA_HOST: a bare host gets http and `default_port`; an explicit
  // scheme without a port gets that scheme's well-known port.
  std::string scheme = "http";
  uint16_t port = default_port;
  auto sep = text.find("://");
  if (sep != std::string_view::npos) {
    scheme = to_lower(text.substr(0, sep));
    auto scheme_port = default_port_of(scheme);
    if (!scheme_port) {
      return std::nullopt;
    }
    port = *scheme_port;
    text.remove_prefix(sep + 3);
  }

  auto slash = text.find('/');
  auto auth = parse_authority(text.substr(0, slash));
  if (!auth) {
    return std::nullopt;
  }
  std::string_view path = slash == std::string_view::npos ? std::string_view{}
                                                          : text.substr(slash);
  if (path.find_first_of("?#") != std::string_view::npos) {
    return std::nullopt;
  }
  while (!path.empty() && path.back() == '/') {
    path.remove_suffix(1);
  }

  std::string out = scheme + "://" + host_for_url(auth->host) + ":" +
                    std::to_string(auth->port.value_or(port));
  out += path;
  return out;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out += text[i];
      continue;
    }
    if (i + 2 >= text.size()) {
      return std::nullopt;
    }
    auto hi = hex_value(text[i + 1]);
    auto lo = hex_value(text[i + 2]);
    if (hi < 0 || lo < 0) {
      return std::nullopt;
    }
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

}  // namespace kowalski::net
