// Recorded transcripts for the replay provider: answers chosen by matching
// the last user message, so a node can be tried without a model server.
#pragma once

#include "messages/types.hpp"

#include <memory>
#include <string>
#include <vector>

namespace kowalski::llm {

/// A transcript file is JSON Lines; each line is
///   {"match": "hello", "reply": "Hi! ...", "model": "demo"}
/// "match" is a case-insensitive substring of the last user message; lines
/// without it are fallbacks, taken in turn by the number of user messages.
/// "model" is optional (default "replay"). Blank lines and lines starting
/// with '#' are skipped.
class transcript {
public:
  /// Loads `path`; nullptr and `error` (naming the line) on failure.
  static std::shared_ptr<const transcript> load(const std::string& path, std::string& error);

  /// The recorded reply for this prompt, or nullptr if none applies.
  const std::string* answer(const llm_request& req) const;

  /// Models named in the transcript.
  std::vector<model_info> models() const;

  bool serves(const std::string& model) const;

private:
  struct entry {
    std::string match;  // lower case; empty for fallbacks
    std::string reply;
    std::string model;
  };
  std::vector<entry> entries_;
  std::vector<std::string> models_;
};

}  // namespace kowalski::llm
