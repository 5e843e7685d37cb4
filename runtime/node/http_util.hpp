// Shared pieces of the gateway's routes: JSON error replies and the
// validation of JSON bodies and query parameters, each refusal naming the
// field, what arrived and what was expected.
#pragma once

#include "runtime/net/http_server.hpp"

#include <caf/fwd.hpp>
#include <simdjson.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kowalski::gw {

void reply_json(const net::responder_ptr& out, int status, std::string body);

void reply_error(const net::responder_ptr& out, int status, std::string_view code,
                 std::string_view message, std::string_view field = {});

/// Replies with the HTTP status and JSON body an actor's error maps to.
void reply_error(const net::responder_ptr& out, const caf::error& err);

/// An SSE "error" event carrying the JSON error body `err` maps to, for a
/// stream that has begun (its status line is sent already).
std::string sse_error_event(const caf::error& err);

/// 405 with an Allow header listing `allowed`.
void not_allowed(const net::http_request& req, const net::responder_ptr& out,
                 const char* allowed);

/// Why a request was refused: HTTP status, field, sentence.
struct bad_input {
  int status = 400;
  std::string field;
  std::string message;
};

void reply_bad(const net::responder_ptr& out, const bad_input& bad);

/// How a JSON value reads in an error message: "the string \"x\"", "an array".
std::string describe_value(simdjson::dom::element e);

/// A parser for this thread (handlers run on several I/O threads).
simdjson::dom::parser& parser();

/// Parses a body that must be a JSON object; an empty body counts as {}
/// when `empty_ok`. Refuses invalid UTF-8.
std::optional<bad_input> parse_object(const net::http_request& req,
                                      simdjson::dom::element& doc, bool empty_ok);

/// Reads string `key` of `obj`; refuses other types, empty strings when
/// `non_empty`, and strings over `max_bytes` (413).
std::optional<bad_input> get_string(simdjson::dom::element obj, const char* key,
                                    std::string& out, bool required, bool non_empty,
                                    std::size_t max_bytes);

/// Reads an optional number within [min, max].
std::optional<bad_input> get_number(simdjson::dom::element obj, const char* key, double min,
                                    double max, double& out);

/// Reads an optional integer from 1 to max.
std::optional<bad_input> get_positive_int(simdjson::dom::element obj, const char* key,
                                          int64_t max, int32_t& out);

std::optional<bad_input> get_bool(simdjson::dom::element obj, const char* key, bool& out);

/// Reads the optional integer query parameter `key` within [min, max].
std::optional<bad_input> query_uint(const net::http_request& req, const char* key,
                                    uint64_t min, uint64_t max, uint64_t& out);

/// Reads the optional "wait_ms" query parameter of a long poll (0..600000).
std::optional<bad_input> query_wait_ms(const net::http_request& req, uint64_t& ms);

/// True for ids made of `prefix` and then `digits` lower-case hex digits.
bool is_hex_id(std::string_view id, std::string_view prefix, std::size_t digits);

/// Reads the optional "limit" query parameter (1..max) into `limit`.
std::optional<bad_input> query_limit(const net::http_request& req, uint32_t max,
                                     uint32_t& limit);

}  // namespace kowalski::gw
