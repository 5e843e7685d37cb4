// JSON writer and UTF-8 validation.
#include "runtime/json/json.hpp"

#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace kowalski::json {

namespace {

// Length of the UTF-8 sequence starting at s[i], or 0 when it is malformed
// (overlong forms, surrogates and code points above U+10FFFF included).
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) {
    return 1;
  }
  std::size_t n;
  uint32_t cp;
  if ((c & 0xE0) == 0xC0) {
    n = 2;
    cp = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    cp = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) {
    return 0;
  }
  for (std::size_t k = 1; k < n; ++k) {
    auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) {
      return 0;
    }
    cp = (cp << 6) | (cc & 0x3F);
  }
  static constexpr uint32_t min_for_length[] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_for_length[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return n;
}

}  // namespace

bool valid_utf8(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    auto n = utf8_sequence(s, i);
    if (n == 0) {
      return false;
    }
    i += n;
  }
  return true;
}

void append_quoted(std::string& out, std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  for (std::size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      auto n = utf8_sequence(s, i);
      if (n == 0) {
        out += "\xEF\xBF\xBD";
        ++i;
      } else {
        out.append(s.data() + i, n);
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 0xF];
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

std::string quote(std::string_view s) {
  std::string out;
  append_quoted(out, s);
  return out;
}

void writer::separate() {
  if (after_key_) {
    after_key_ = false;
    return;
  }
  if (!first_.empty()) {
    if (!first_.back()) {
      out_ += ',';
    }
    first_.back() = false;
  }
}

writer& writer::begin_object() {
  separate();
  out_ += '{';
  first_.push_back(true);
  return *this;
}

writer& writer::end_object() {
  out_ += '}';
  first_.pop_back();
  return *this;
}

writer& writer::begin_array() {
  separate();
  out_ += '[';
  first_.push_back(true);
  return *this;
}

writer& writer::end_array() {
  out_ += ']';
  first_.pop_back();
  return *this;
}

writer& writer::key(std::string_view k) {
  separate();
  append_quoted(out_, k);
  out_ += ':';
  after_key_ = true;
  return *this;
}

writer& writer::value(std::string_view s) {
  separate();
  append_quoted(out_, s);
  return *this;
}

writer& writer::value(bool b) {
  separate();
  out_ += b ? "true" : "false";
  return *this;
}

writer& writer::value_int(int64_t v) {
  separate();
  out_ += std::to_string(v);
  return *this;
}

writer& writer::value_uint(uint64_t v) {
  separate();
  out_ += std::to_string(v);
  return *this;
}

writer& writer::value(double v) {
  separate();
  if (!std::isfinite(v)) {
    out_ += "null";
    return *this;
  }
  char buf[32];
  auto n = std::snprintf(buf, sizeof buf, "%.17g", v);
  // Prefer the shortest form that reads back to the same double.
  for (int prec = 1; prec < 17; ++prec) {
    char tmp[32];
    auto m = std::snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (std::strtod(tmp, nullptr) == v) {
      out_.append(tmp, m);
      return *this;
    }
  }
  out_.append(buf, n);
  return *this;
}

writer& writer::null() {
  separate();
  out_ += "null";
  return *this;
}

writer& writer::raw(std::string_view json) {
  separate();
  out_ += json;
  return *this;
}

}  // namespace kowalski::json
