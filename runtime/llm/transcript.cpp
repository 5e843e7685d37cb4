// Replay transcripts.
#include "runtime/llm/transcript.hpp"

#include "runtime/json/json.hpp"

#include <algorithm>
#include <cctype>
#include <fstream>

#include <simdjson.h>

namespace kowalski::llm {

namespace {

std::string lower(std::string_view s) {
  std::string out{s};
  for (auto& c : out) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return out;
}

}  // namespace

std::shared_ptr<const transcript> transcript::load(const std::string& path,
                                                   std::string& error) {
  std::ifstream in{path};
  if (!in) {
    error = "cannot read transcript " + path;
    return nullptr;
  }
  auto out = std::make_shared<transcript>();
  simdjson::dom::parser parser;
  std::string line;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    auto first = line.find_first_not_of(" \t\r");
    if (first == std::string::npos || line[first] == '#') {
      continue;
    }
    auto where = path + ":" + std::to_string(lineno);
    simdjson::dom::element doc;
    std::string_view reply, match, model = "replay";
    if (parser.parse(line).get(doc) != simdjson::SUCCESS || !doc.is_object()) {
      error = "transcript line is not a JSON object at " + where;
      return nullptr;
    }
    if (doc["reply"].get(reply) != simdjson::SUCCESS || reply.empty()) {
      error = "transcript line needs a non-empty string \"reply\" at " + where;
      return nullptr;
    }
    if (doc["match"].error() != simdjson::NO_SUCH_FIELD
        && doc["match"].get(match) != simdjson::SUCCESS) {
      error = "transcript \"match\" must be a string at " + where;
      return nullptr;
    }
    if (doc["model"].error() != simdjson::NO_SUCH_FIELD
        && doc["model"].get(model) != simdjson::SUCCESS) {
      error = "transcript \"model\" must be a string at " + where;
      return nullptr;
    }
    out->entries_.push_back(entry{lower(match), std::string{reply}, std::string{model}});
    if (!out->serves(std::string{model})) {
      out->models_.emplace_back(model);
    }
  }
  if (out->entries_.empty()) {
    error = "transcript " + path + " has no entries";
    return nullptr;
  }
  return out;
}

const std::string* transcript::answer(const llm_request& req) const {
  std::string last;
  std::size_t user_messages = 0;
  for (auto& m : req.messages) {
    if (m.role == "user") {
      last = m.content;
      ++user_messages;
    }
  }
  auto needle = lower(last);
  std::vector<const entry*> fallbacks;
  for (auto& e : entries_) {
    if (e.model != req.model) {
      continue;
    }
    if (e.match.empty()) {
      fallbacks.push_back(&e);
    } else if (needle.find(e.match) != std::string::npos) {
      return &e.reply;
    }
  }
  if (fallbacks.empty()) {
    return nullptr;
  }
  auto turn = user_messages == 0 ? 0 : user_messages - 1;
  return &fallbacks[turn % fallbacks.size()]->reply;
}

std::vector<model_info> transcript::models() const {
  std::vector<model_info> out;
  for (auto& m : models_) {
    out.push_back(model_info{m, "replay", 0});
  }
  return out;
}

bool transcript::serves(const std::string& model) const {
  return std::find(models_.begin(), models_.end(), model) != models_.end();
}

}  // namespace kowalski::llm
