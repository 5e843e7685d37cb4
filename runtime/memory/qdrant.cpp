#include "runtime/memory/qdrant.hpp"

#include "runtime/json/json.hpp"

#include <simdjson.h>

#include <cstdio>

namespace kowalski::memory {

namespace {

std::string base(const qdrant_spec& spec) {
  auto b = spec.url;
  while (!b.empty() && b.back() == '/') {
    b.pop_back();
  }
  // Collection names are checked at configuration: no escaping needed.
  return b + "/collections/" + spec.collection;
}

net::client_request make(const qdrant_spec& spec, const char* method, std::string url,
                         std::string body) {
  net::client_request req;
  req.method = method;
  req.url = std::move(url);
  req.timeout = spec.timeout;
  if (!body.empty()) {
    req.headers.push_back({"Content-Type", "application/json"});
  }
  if (!spec.api_key.empty()) {
    req.headers.push_back({"api-key", spec.api_key});
  }
  req.body = std::move(body);
  return req;
}

// Nine significant digits read back to the same float.
void put_vector(json::writer& w, const std::vector<float>& v) {
  w.begin_array();
  char buf[32];
  for (auto x : v) {
    std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
    w.raw(buf);
  }
  w.end_array();
}

// Qdrant's own words for a failure: {"status":{"error":"..."}}.
std::string failure(int status, std::string_view body) {
  std::string why = "Qdrant answered HTTP " + std::to_string(status);
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view message;
  if (parser.parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS
      && doc["status"]["error"].get(message) == simdjson::SUCCESS) {
    why += ": " + std::string{message.substr(0, 500)};
  }
  return why;
}

bool parse(simdjson::dom::parser& parser, std::string_view body, simdjson::dom::element& doc) {
  return parser.parse(body.data(), body.size()).get(doc) == simdjson::SUCCESS && doc.is_object();
}

}  // namespace

net::client_request qdrant_get_collection(const qdrant_spec& spec) {
  return make(spec, "GET", base(spec), {});
}

net::client_request qdrant_create_collection(const qdrant_spec& spec) {
  json::writer w;
  w.begin_object().key("vectors").begin_object();
  w.key("size").value(static_cast<unsigned long long>(spec.dims)).key("distance").value("Cosine");
  w.end_object().end_object();
  return make(spec, "PUT", base(spec), w.take());
}

net::client_request qdrant_upsert(const qdrant_spec& spec,
                                  const std::vector<qdrant_point>& pts) {
  json::writer w;
  w.begin_object().key("points").begin_array();
  for (auto& p : pts) {
    w.begin_object().key("id").value(static_cast<unsigned long long>(p.seq));
    w.key("vector");
    put_vector(w, p.vector);
    w.key("payload").begin_object();
    w.key("kowalski_id").value(p.id).key("conversation").value(p.conversation);
    w.key("embedder").value(p.embedder).key("store").value(p.store).end_object();
    w.end_object();
  }
  w.end_array().end_object();
  return make(spec, "PUT", base(spec) + "/points?wait=true", w.take());
}

net::client_request qdrant_delete(const qdrant_spec& spec, const std::vector<uint64_t>& seqs) {
  json::writer w;
  w.begin_object().key("points").begin_array();
  for (auto s : seqs) {
    w.value(static_cast<unsigned long long>(s));
  }
  w.end_array().end_object();
  return make(spec, "POST", base(spec) + "/points/delete?wait=true", w.take());
}

net::client_request qdrant_search(const qdrant_spec& spec, const std::vector<float>& vector,
                                  std::size_t limit, const std::string& conversation) {
  json::writer w;
  w.begin_object().key("vector");
  put_vector(w, vector);
  w.key("limit").value(static_cast<unsigned long long>(limit));
  w.key("with_payload").value(false);
  if (!conversation.empty()) {
    w.key("filter").begin_object().key("must").begin_array().begin_object();
    w.key("key").value("conversation").key("match").begin_object().key("value").value(conversation);
    w.end_object().end_object().end_array().end_object();
  }
  w.end_object();
  return make(spec, "POST", base(spec) + "/points/search", w.take());
}

net::client_request qdrant_scroll(const qdrant_spec& spec, std::optional<uint64_t> offset,
                                  std::size_t limit) {
  json::writer w;
  w.begin_object().key("limit").value(static_cast<unsigned long long>(limit));
  if (offset) {
    w.key("offset").value(static_cast<unsigned long long>(*offset));
  }
  w.key("with_payload").begin_array().value("embedder").value("store").end_array();
  w.key("with_vector").value(false).end_object();
  return make(spec, "POST", base(spec) + "/points/scroll", w.take());
}

net::client_request qdrant_index_conversation(const qdrant_spec& spec) {
  json::writer w;
  w.begin_object().key("field_name").value("conversation").key("field_schema").value("keyword");
  w.end_object();
  return make(spec, "PUT", base(spec) + "/index?wait=true", w.take());
}

std::string read_qdrant_collection(int status, std::string_view body, qdrant_collection& out) {
  if (status == 404) {
    out.missing = true;
    return {};
  }
  if (status < 200 || status >= 300) {
    return failure(status, body);
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse(parser, body, doc)) {
    return "Qdrant's collection info is not a JSON object";
  }
  simdjson::dom::object vectors;
  if (doc["result"]["config"]["params"]["vectors"].get(vectors) != simdjson::SUCCESS) {
    return "Qdrant's collection info has no result.config.params.vectors";
  }
  uint64_t size = 0;
  std::string_view distance;
  if (vectors["size"].get(size) != simdjson::SUCCESS) {
    return "the Qdrant collection has named vectors; the semantic tier needs one unnamed "
           "vector per point";
  }
  if (vectors["distance"].get(distance) == simdjson::SUCCESS) {
    out.distance = std::string{distance};
  }
  out.dims = static_cast<std::size_t>(size);
  return {};
}

std::string read_qdrant_ok(int status, std::string_view body) {
  if (status < 200 || status >= 300) {
    return failure(status, body);
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  if (!parse(parser, body, doc)) {
    return "Qdrant's answer is not a JSON object";
  }
  std::string_view state;
  if (doc["status"].get(state) != simdjson::SUCCESS || state != "ok") {
    return "Qdrant's answer does not say \"status\":\"ok\"";
  }
  if (doc["result"]["status"].get(state) == simdjson::SUCCESS && state != "completed") {
    return "Qdrant took the write but has not applied it (status " + std::string{state} + ")";
  }
  return {};
}

std::string read_qdrant_search(int status, std::string_view body,
                               std::vector<std::pair<uint64_t, float>>& out) {
  if (status < 200 || status >= 300) {
    return failure(status, body);
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  simdjson::dom::array result;
  if (!parse(parser, body, doc) || doc["result"].get(result) != simdjson::SUCCESS) {
    return "Qdrant's search answer has no \"result\" array";
  }
  for (auto hit : result) {
    uint64_t id = 0;
    double score = 0;
    if (hit["id"].get(id) != simdjson::SUCCESS || hit["score"].get(score) != simdjson::SUCCESS) {
      return "a Qdrant search hit lacks a numeric id or score";
    }
    out.emplace_back(id, static_cast<float>(score));
  }
  return {};
}

std::string read_qdrant_scroll(int status, std::string_view body, qdrant_page& out) {
  if (status < 200 || status >= 300) {
    return failure(status, body);
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  simdjson::dom::array points;
  if (!parse(parser, body, doc) || doc["result"]["points"].get(points) != simdjson::SUCCESS) {
    return "Qdrant's scroll answer has no result.points array";
  }
  for (auto p : points) {
    uint64_t id = 0;
    if (p["id"].get(id) != simdjson::SUCCESS) {
      return "the Qdrant collection holds a point whose id is not a number: it is not this "
             "node's";
    }
    qdrant_page::entry e;
    e.id = id;
    std::string_view text;
    if (p["payload"]["embedder"].get(text) == simdjson::SUCCESS) {
      e.embedder = std::string{text};
    }
    if (p["payload"]["store"].get(text) == simdjson::SUCCESS) {
      e.store = std::string{text};
    }
    out.points.push_back(std::move(e));
  }
  uint64_t next = 0;
  if (doc["result"]["next_page_offset"].get(next) == simdjson::SUCCESS) {
    out.next = next;
  }
  return {};
}

}  // namespace kowalski::memory
