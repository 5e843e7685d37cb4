// Code blocks, final answers and cut feedback of RLM replies.
#include "runtime/rlm/reply.hpp"

#include <cctype>

namespace kowalski::rlm {

namespace {

// One line of the reply and where the next one starts.
struct line_view {
  std::string_view text;  // without the newline
  std::size_t next = 0;
};

line_view line_at(std::string_view s, std::size_t pos) {
  auto nl = s.find('\n', pos);
  if (nl == std::string_view::npos) {
    return {s.substr(pos), s.size()};
  }
  return {s.substr(pos, nl - pos), nl + 1};
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) {
    s.remove_prefix(1);
  }
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) {
    s.remove_suffix(1);
  }
  return s;
}

// A fence opens or closes with three or more backticks or tildes, after at
// most three spaces of indentation (as CommonMark has it).
bool fence(std::string_view line, char& ch, std::size_t& len, std::string_view& info) {
  std::size_t i = 0;
  while (i < line.size() && i < 3 && line[i] == ' ') {
    ++i;
  }
  if (i >= line.size() || (line[i] != '`' && line[i] != '~')) {
    return false;
  }
  ch = line[i];
  std::size_t n = 0;
  while (i + n < line.size() && line[i + n] == ch) {
    ++n;
  }
  if (n < 3) {
    return false;
  }
  len = n;
  info = trim(line.substr(i + n));
  return true;
}

bool is_repl(std::string_view info) {
  // The first word of the info string names the language.
  auto word = info.substr(0, info.find_first_of(" \t{"));
  if (word.size() != 4) {
    return false;
  }
  const char* repl = "repl";
  for (std::size_t i = 0; i < 4; ++i) {
    if (std::tolower(static_cast<unsigned char>(word[i])) != repl[i]) {
      return false;
    }
  }
  return true;
}

// Walks the reply, calling `on_block(is_repl, body)` for each fenced block
// and `on_text(line)` for each line outside blocks.
template <class OnBlock, class OnText>
void walk(std::string_view reply, OnBlock on_block, OnText on_text) {
  std::size_t pos = 0;
  while (pos < reply.size()) {
    auto l = line_at(reply, pos);
    char ch = 0;
    std::size_t len = 0;
    std::string_view info;
    if (!fence(l.text, ch, len, info)) {
      on_text(l.text);
      pos = l.next;
      continue;
    }
    // The block runs to a closing fence of the same kind, at least as long
    // and with no info string, or to the end of the reply.
    std::string body;
    pos = l.next;
    while (pos < reply.size()) {
      auto b = line_at(reply, pos);
      char c2 = 0;
      std::size_t len2 = 0;
      std::string_view info2;
      pos = b.next;
      if (fence(b.text, c2, len2, info2) && c2 == ch && len2 >= len && info2.empty()) {
        break;
      }
      body.append(b.text);
      body.push_back('\n');
    }
    on_block(is_repl(info), std::move(body));
  }
}

}  // namespace

std::vector<std::string> repl_blocks(std::string_view reply) {
  std::vector<std::string> out;
  walk(
    reply,
    [&](bool repl, std::string body) {
      if (repl) {
        out.push_back(std::move(body));
      }
    },
    [](std::string_view) {});
  return out;
}

std::string prose(std::string_view reply) {
  std::string out;
  walk(
    reply, [](bool, const std::string&) {},
    [&](std::string_view line) {
      out.append(line);
      out.push_back('\n');
    });
  return out;
}

final_answer find_final(std::string_view reply) {
  auto text = prose(reply);
  std::string_view s = text;
  final_answer found;
  std::size_t pos = 0;
  std::size_t final_at = std::string_view::npos;
  while (pos < s.size()) {
    auto l = line_at(s, pos);
    auto t = l.text;
    auto lead = t.find_first_not_of(" \t");
    if (lead != std::string_view::npos) {
      auto rest = t.substr(lead);
      if (rest.rfind("FINAL_VAR(", 0) == 0) {
        auto close = rest.find(')');
        if (close != std::string_view::npos) {
          auto name = trim(rest.substr(10, close - 10));
          // A quoted name is accepted too: FINAL_VAR("answer").
          if (name.size() >= 2 && (name.front() == '"' || name.front() == '\'')
              && name.back() == name.front()) {
            name = name.substr(1, name.size() - 2);
          }
          return final_answer{final_answer::variable, std::string{name}};
        }
      } else if (rest.rfind("FINAL(", 0) == 0 && final_at == std::string_view::npos) {
        final_at = pos + lead;
      }
    }
    pos = l.next;
  }
  if (final_at == std::string_view::npos) {
    return found;
  }
  // Greedy: up to the last ")" that ends a line from here on.
  auto body = s.substr(final_at + 6);
  std::size_t end = std::string_view::npos;
  std::size_t p = 0;
  while (p < body.size()) {
    auto l = line_at(body, p);
    auto t = l.text;
    auto last = t.find_last_not_of(" \t\r");
    if (last != std::string_view::npos && t[last] == ')') {
      end = p + last;
    }
    p = l.next;
  }
  if (end == std::string_view::npos) {
    return found;
  }
  found.kind = final_answer::text;
  found.value = std::string{trim(body.substr(0, end))};
  return found;
}

std::string cut(std::string_view text, std::size_t cap, uint64_t already) {
  std::size_t chars = 0;
  std::size_t i = 0;
  for (; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (chars == cap) {
        break;
      }
      ++chars;
    }
  }
  if (i == text.size() && already == 0) {
    return std::string{text};
  }
  uint64_t dropped = already;
  for (auto j = i; j < text.size(); ++j) {
    dropped += (static_cast<unsigned char>(text[j]) & 0xC0) != 0x80;
  }
  return std::string{text.substr(0, i)} + "... + [" + std::to_string(dropped) + " chars...]";
}

}  // namespace kowalski::rlm
