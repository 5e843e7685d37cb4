// Reading a root model's reply in a Recursive Language Model run: the code
// blocks to execute, the final answer it may announce, and the feedback of
// executed blocks cut to size. Plain C++, tested on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::rlm {

/// Every fenced block whose info string is `repl` (``` or ~~~ fences, the
/// info string trimmed and compared case-insensitively), in reply order.
/// An unclosed fence runs to the end of the reply. Other fences are skipped.
std::vector<std::string> repl_blocks(std::string_view reply);

/// The reply without any fenced block, so that FINAL written inside code
/// is not taken for an announcement.
std::string prose(std::string_view reply);

/// A final answer announced in prose, at the start of a line:
/// FINAL_VAR(name) names a REPL variable; FINAL(text) carries the answer,
/// up to the last ")" that ends a line (so nested parentheses and several
/// lines survive). FINAL_VAR wins when both appear.
struct final_answer {
  enum kinds { none, text, variable };
  kinds kind = none;
  std::string value;  ///< the answer, or the variable's name
};

final_answer find_final(std::string_view reply);

/// `text` cut to at most `cap` characters (UTF-8 code points), with the
/// marker "... + [N chars...]" telling how many were dropped; `dropped`
/// counts characters already dropped before `text` reached here.
std::string cut(std::string_view text, std::size_t cap, uint64_t dropped = 0);

}  // namespace kowalski::rlm
