// Parsing of absolute http(s) URLs and of host[:port] settings.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kowalski::net {

struct url {
  std::string scheme;  ///< "http" or "https"
  std::string host;
  uint16_t port = 0;   ///< explicit or the scheme's default
  std::string target;  ///< path and query, at least "/"
};

/// Parses "http://host[:port][/path]" or "https://...". Returns nullopt when
/// the scheme is missing or unsupported, the host or port is invalid, or the
/// path holds spaces or control bytes (percent-encode them).
std::optional<url> parse_url(std::string_view text);

/// Accepts what OLLAMA_HOST accepts: "host", "host:port", "http://host:port",
/// "https://host"; fills in `default_port`. Returns a base URL without a
/// trailing slash, or nullopt.
std::optional<std::string> normalize_base_url(std::string_view text,
                                              uint16_t default_port);

/// Percent-decodes `text` ('+' stays '+'); nullopt on a broken escape.
std::optional<std::string> percent_decode(std::string_view text);

}  // namespace kowalski::net
