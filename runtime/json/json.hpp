// A small JSON writer and UTF-8 check; parsing uses simdjson in the .cpp files
// that need it, so that its large header stays out of ours.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::json {

/// Appends `s` as a JSON string literal, quotes included. Invalid UTF-8
/// bytes are replaced by U+FFFD so the output is always valid JSON.
void append_quoted(std::string& out, std::string_view s);

/// `s` as a JSON string literal.
std::string quote(std::string_view s);

/// True when `s` is well-formed UTF-8.
bool valid_utf8(std::string_view s);

/// Builds one JSON document left to right; commas are placed for you.
///
///   writer w;
///   w.begin_object().key("id").value(id).key("n").value(3).end_object();
///   send(w.take());
class writer {
public:
  writer& begin_object();
  writer& end_object();
  writer& begin_array();
  writer& end_array();
  writer& key(std::string_view k);
  writer& value(std::string_view s);
  writer& value(const char* s) { return value(std::string_view{s}); }
  writer& value(const std::string& s) { return value(std::string_view{s}); }
  writer& value(bool b);
  writer& value(int v) { return value_int(v); }
  writer& value(unsigned v) { return value_uint(v); }
  writer& value(long v) { return value_int(v); }
  writer& value(unsigned long v) { return value_uint(v); }
  writer& value(long long v) { return value_int(v); }
  writer& value(unsigned long long v) { return value_uint(v); }
  writer& value(double v);
  writer& null();
  /// Inserts an already serialized JSON value.
  writer& raw(std::string_view json);

  const std::string& str() const { return out_; }
  std::string take() { return std::move(out_); }

private:
  writer& value_int(int64_t v);
  writer& value_uint(uint64_t v);
  void separate();

  std::string out_;
  std::vector<bool> first_;  // one entry per open container
  bool after_key_ = false;
};

}  // namespace kowalski::json
