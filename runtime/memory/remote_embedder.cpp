#include "runtime/memory/remote_embedder.hpp"

#include "runtime/json/json.hpp"
#include "runtime/memory/embedding.hpp"

#include <simdjson.h>

#include <cmath>
#include <map>

namespace kowalski::memory {

namespace {

std::string join(const std::string& base, const char* path) {
  auto b = base;
  while (!b.empty() && b.back() == '/') {
    b.pop_back();
  }
  return b + path;
}

embed_answer fail(embed_answer::failure_kind kind, std::string why) {
  embed_answer a;
  a.kind = kind;
  a.failure = std::move(why);
  return a;
}

// One vector of the answer, checked and scaled to unit length.
bool read_vector(simdjson::dom::element e, const embedder_spec& spec, std::size_t index,
                 std::vector<float>& out, std::string& why) {
  simdjson::dom::array values;
  if (e.get(values) != simdjson::SUCCESS) {
    why = "embedding " + std::to_string(index) + " is not an array of numbers";
    return false;
  }
  out.clear();
  out.reserve(spec.dims);
  for (auto v : values) {
    double d = 0;
    if (v.get(d) != simdjson::SUCCESS) {
      // Integers (a zero written as 0) are numbers too.
      int64_t i = 0;
      if (v.get(i) != simdjson::SUCCESS) {
        why = "embedding " + std::to_string(index) + " holds a value that is not a number";
        return false;
      }
      d = static_cast<double>(i);
    }
    if (!std::isfinite(d)) {
      why = "embedding " + std::to_string(index) + " holds a value that is not finite";
      return false;
    }
    out.push_back(static_cast<float>(d));
  }
  if (out.size() != spec.dims) {
    why = "the embedder returned vectors of " + std::to_string(out.size())
          + " dimensions; memory.dims is " + std::to_string(spec.dims)
          + " (set memory.dims to the model's size; a store keeps one size)";
    return false;
  }
  normalize(out);
  return true;
}

}  // namespace

std::string embedder_name(const embedder_spec& spec) {
  if (spec.kind == "ollama" || spec.kind == "openai") {
    return spec.kind + "/" + spec.model + "/" + std::to_string(spec.dims);
  }
  return hash_embedder_name(spec.dims);
}

std::string_view cut_text(std::string_view text, std::size_t limit) {
  if (limit == 0 || text.size() <= limit) {
    return text;
  }
  auto n = limit;
  // Back to the start of a UTF-8 sequence, so the cut text stays valid.
  while (n > 0 && (static_cast<unsigned char>(text[n]) & 0xC0) == 0x80) {
    --n;
  }
  return text.substr(0, n);
}

net::client_request embed_request(const embedder_spec& spec,
                                  const std::vector<std::string>& texts) {
  net::client_request req;
  req.method = "POST";
  req.timeout = spec.timeout;
  req.headers.push_back({"Content-Type", "application/json"});
  json::writer w;
  w.begin_object().key("model").value(spec.model).key("input").begin_array();
  for (auto& t : texts) {
    w.value(cut_text(t, spec.max_text_bytes));
  }
  w.end_array();
  if (spec.kind == "openai") {
    req.url = join(spec.url, "/embeddings");
    w.key("encoding_format").value("float");
    if (spec.send_dims) {
      w.key("dimensions").value(static_cast<unsigned long long>(spec.dims));
    }
    if (!spec.api_key.empty()) {
      req.headers.push_back({"Authorization", "Bearer " + spec.api_key});
    }
  } else {
    req.url = join(spec.url, "/api/embed");
    // Over-long texts are cut by the server rather than refused: a memory
    // item is better found by its beginning than not embedded at all.
    w.key("truncate").value(true);
  }
  w.end_object();
  req.body = w.take();
  return req;
}

embed_answer read_embed_answer(const embedder_spec& spec, int status, std::string_view body,
                               std::size_t count) {
  using kind = embed_answer::failure_kind;
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (status < 200 || status >= 300) {
    // Only the error's own message: some servers echo the input in other
    // fields, and texts stay out of errors and logs.
    std::string_view message;
    std::string why = "the embedder answered HTTP " + std::to_string(status);
    if (parser.parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS
        && (doc["error"].get(message) == simdjson::SUCCESS
            || doc["error"]["message"].get(message) == simdjson::SUCCESS)) {
      why += ": " + std::string{message.substr(0, 300)};
    } else {
      why += " (a body of " + std::to_string(body.size()) + " bytes)";
    }
    return fail(kind::status, why);
  }
  if (parser.parse(body.data(), body.size()).get(doc) != simdjson::SUCCESS
      || !doc.is_object()) {
    return fail(kind::protocol, "the embedder's answer is not a JSON object");
  }
  embed_answer out;
  std::string why;
  if (spec.kind == "openai") {
    simdjson::dom::array data;
    if (doc["data"].get(data) != simdjson::SUCCESS) {
      return fail(kind::protocol, "the embedder's answer has no \"data\" array");
    }
    // Entries carry their index; servers need not keep the order.
    std::map<uint64_t, std::vector<float>> by_index;
    uint64_t position = 0;
    for (auto entry : data) {
      uint64_t index = position++;
      if (entry["index"].get(index) != simdjson::SUCCESS) {
        index = position - 1;
      }
      simdjson::dom::element e;
      std::vector<float> v;
      if (entry["embedding"].get(e) != simdjson::SUCCESS) {
        return fail(kind::protocol, "entry " + std::to_string(index) + " of \"data\" has no "
                                      "\"embedding\"");
      }
      if (!read_vector(e, spec, index, v, why)) {
        return fail(kind::protocol, why);
      }
      if (index >= count || !by_index.emplace(index, std::move(v)).second) {
        return fail(kind::protocol, "the embedder's answer has a wrong or repeated index "
                                      + std::to_string(index));
      }
    }
    for (auto& [index, v] : by_index) {
      out.vectors.push_back(std::move(v));
    }
  } else {
    simdjson::dom::array list;
    if (doc["embeddings"].get(list) != simdjson::SUCCESS) {
      return fail(kind::protocol, "the embedder's answer has no \"embeddings\" array");
    }
    std::size_t index = 0;
    for (auto e : list) {
      std::vector<float> v;
      if (!read_vector(e, spec, index++, v, why)) {
        return fail(kind::protocol, why);
      }
      out.vectors.push_back(std::move(v));
    }
  }
  if (out.vectors.size() != count) {
    return fail(kind::protocol, "the embedder returned " + std::to_string(out.vectors.size())
                                  + " vectors for " + std::to_string(count) + " texts");
  }
  return out;
}

}  // namespace kowalski::memory
