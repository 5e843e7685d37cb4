#include "tests/rig/fake_qdrant.hpp"

#include "runtime/json/json.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/net/http_server.hpp"

#include <simdjson.h>

#include <algorithm>
#include <condition_variable>
#include <map>
#include <mutex>
#include <stdexcept>

namespace kowalski::testing {

namespace {

struct point {
  std::vector<float> vector;
  std::string conversation;
  std::string embedder;
  std::string store;
};

struct collection {
  std::size_t dims = 0;
  std::string distance = "Cosine";
  std::map<uint64_t, point> points;
  bool conversation_index = false;
};

net::http_response reply(int status, std::string body) {
  net::http_response res;
  res.status = status;
  res.body = std::move(body);
  return res;
}

net::http_response ok(const std::string& result) {
  return reply(200, R"({"result":)" + result + R"(,"status":"ok","time":0.0001})");
}

net::http_response error(int status, const std::string& message) {
  return reply(status, R"({"status":{"error":)" + json::quote(message) + R"(},"time":0.0})");
}

}  // namespace

struct fake_qdrant::impl {
  mutable std::mutex mtx;
  mutable std::condition_variable changed;
  std::map<std::string, collection> collections;
  bool down = false;
  bool writes_down = false;
  uint64_t requests = 0;
  uint64_t upserts = 0;
  uint64_t searches = 0;
  std::string api_key;
  std::unique_ptr<net::http_server> server;

  net::http_response handle(const net::http_request& req) {
    std::lock_guard<std::mutex> lock(mtx);
    ++requests;
    changed.notify_all();
    auto key = req.header("api-key");
    api_key = key != nullptr ? *key : "";
    if (down) {
      return error(503, "Service Unavailable (scripted)");
    }
    const std::string prefix = "/collections/";
    if (req.path.compare(0, prefix.size(), prefix) != 0) {
      return error(404, "no such route");
    }
    auto rest = req.path.substr(prefix.size());
    auto slash = rest.find('/');
    auto name = rest.substr(0, slash);
    auto action = slash == std::string::npos ? std::string{} : rest.substr(slash);
    auto c = collections.find(name);
    if (action.empty() && req.method == "PUT") {
      return create_collection(name, req.body);
    }
    if (c == collections.end()) {
      return error(404, "Not found: Collection `" + name + "` doesn't exist!");
    }
    if (action.empty() && req.method == "GET") {
      json::writer w;
      w.begin_object().key("status").value("green").key("points_count")
        .value(static_cast<unsigned long long>(c->second.points.size()));
      w.key("config").begin_object().key("params").begin_object().key("vectors").begin_object();
      w.key("size").value(static_cast<unsigned long long>(c->second.dims));
      w.key("distance").value(c->second.distance);
      w.end_object().end_object().end_object().end_object();
      return ok(w.take());
    }
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (parser.parse(req.body).get(doc) || !doc.is_object()) {
      return error(400, "Format error in JSON body");
    }
    bool write = (action == "/points" && req.method == "PUT") || action == "/points/delete";
    if (write && writes_down) {
      return error(503, "Service Unavailable (scripted: writes down)");
    }
    if (action == "/index" && req.method == "PUT") {
      std::string_view field;
      if (doc["field_name"].get(field) || field != "conversation") {
        return error(400, "only the conversation index is scripted");
      }
      c->second.conversation_index = true;
      return ok(R"({"operation_id":1,"status":"completed"})");
    }
    if (action == "/points" && req.method == "PUT") {
      return upsert(c->second, doc);
    }
    if (action == "/points/delete" && req.method == "POST") {
      simdjson::dom::array ids;
      if (doc["points"].get(ids)) {
        return error(400, "points must be an array of ids");
      }
      for (auto id : ids) {
        uint64_t v = 0;
        if (!id.get(v)) {
          c->second.points.erase(v);
        }
      }
      changed.notify_all();
      return ok(R"({"operation_id":1,"status":"completed"})");
    }
    if (action == "/points/search" && req.method == "POST") {
      return search(c->second, doc);
    }
    if (action == "/points/scroll" && req.method == "POST") {
      return scroll(c->second, doc);
    }
    return error(404, "no such route");
  }

  net::http_response create_collection(const std::string& name, const std::string& body) {
    if (collections.count(name) > 0) {
      return error(409, "Wrong input: Collection `" + name + "` already exists!");
    }
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    uint64_t size = 0;
    std::string_view distance;
    if (parser.parse(body).get(doc) || doc["vectors"]["size"].get(size)
        || doc["vectors"]["distance"].get(distance)) {
      return error(400, "vectors.size and vectors.distance are required");
    }
    collections[name] = collection{static_cast<std::size_t>(size), std::string{distance}, {}};
    return ok("true");
  }

  net::http_response upsert(collection& c, simdjson::dom::element doc) {
    ++upserts;
    simdjson::dom::array pts;
    if (doc["points"].get(pts)) {
      return error(400, "points must be an array");
    }
    std::vector<std::pair<uint64_t, point>> batch;
    for (auto p : pts) {
      uint64_t id = 0;
      simdjson::dom::array values;
      if (p["id"].get(id) || p["vector"].get(values)) {
        return error(400, "each point needs an id and a vector");
      }
      point pt;
      for (auto v : values) {
        double d = 0;
        if (v.get(d)) {
          return error(400, "vector values must be numbers");
        }
        pt.vector.push_back(static_cast<float>(d));
      }
      if (pt.vector.size() != c.dims) {
        return error(400, "Wrong input: Vector dimension error: expected dim: "
                            + std::to_string(c.dims) + ", got "
                            + std::to_string(pt.vector.size()));
      }
      std::string_view s;
      if (!p["payload"]["conversation"].get(s)) {
        pt.conversation = std::string{s};
      }
      if (!p["payload"]["embedder"].get(s)) {
        pt.embedder = std::string{s};
      }
      if (!p["payload"]["store"].get(s)) {
        pt.store = std::string{s};
      }
      memory::normalize(pt.vector);  // as Qdrant does for cosine
      batch.emplace_back(id, std::move(pt));
    }
    for (auto& [id, pt] : batch) {
      c.points[id] = std::move(pt);
    }
    changed.notify_all();
    return ok(R"({"operation_id":1,"status":"completed"})");
  }

  net::http_response search(collection& c, simdjson::dom::element doc) {
    ++searches;
    simdjson::dom::array values;
    uint64_t limit = 10;
    if (doc["vector"].get(values) || doc["limit"].get(limit)) {
      return error(400, "vector and limit are required");
    }
    std::vector<float> q;
    for (auto v : values) {
      double d = 0;
      if (v.get(d)) {
        return error(400, "vector values must be numbers");
      }
      q.push_back(static_cast<float>(d));
    }
    if (q.size() != c.dims) {
      return error(400, "Wrong input: Vector dimension error: expected dim: "
                          + std::to_string(c.dims) + ", got " + std::to_string(q.size()));
    }
    memory::normalize(q);
    std::string conversation;
    bool filtered = false;
    simdjson::dom::array must;
    if (!doc["filter"]["must"].get(must)) {
      for (auto cond : must) {
        std::string_view key;
        std::string_view value;
        if (cond["key"].get(key) || cond["match"]["value"].get(value) || key != "conversation") {
          return error(400, "only conversation match filters are scripted");
        }
        filtered = true;
        conversation = std::string{value};
      }
    }
    std::vector<std::pair<float, uint64_t>> scored;
    for (auto& [id, p] : c.points) {
      if (filtered && p.conversation != conversation) {
        continue;
      }
      scored.emplace_back(memory::dot(q.data(), p.vector.data(), c.dims), id);
    }
    std::sort(scored.begin(), scored.end(), [](auto& a, auto& b) { return a.first > b.first; });
    if (scored.size() > limit) {
      scored.resize(limit);
    }
    json::writer w;
    w.begin_array();
    for (auto [score, id] : scored) {
      w.begin_object().key("id").value(static_cast<unsigned long long>(id));
      w.key("version").value(1).key("score").value(static_cast<double>(score)).end_object();
    }
    w.end_array();
    return ok(w.take());
  }

  net::http_response scroll(collection& c, simdjson::dom::element doc) {
    uint64_t limit = 10;
    uint64_t offset = 0;
    if (doc["limit"].get(limit)) {
      limit = 10;
    }
    if (doc["offset"].get(offset)) {
      offset = 0;
    }
    json::writer w;
    w.begin_object().key("points").begin_array();
    auto it = c.points.lower_bound(offset);
    for (uint64_t n = 0; it != c.points.end() && n < limit; ++it, ++n) {
      w.begin_object().key("id").value(static_cast<unsigned long long>(it->first));
      w.key("payload").begin_object().key("embedder").value(it->second.embedder);
      w.key("store").value(it->second.store).end_object();
      w.end_object();
    }
    w.end_array().key("next_page_offset");
    if (it != c.points.end()) {
      w.value(static_cast<unsigned long long>(it->first));
    } else {
      w.null();
    }
    w.end_object();
    return ok(w.take());
  }
};

fake_qdrant::fake_qdrant() : impl_(std::make_unique<impl>()) {
  net::http_server_options opts;
  opts.body_limit = 64 << 20;
  auto* p = impl_.get();
  impl_->server = std::make_unique<net::http_server>(
    opts, [p](net::http_request&& req, net::responder_ptr out) { out->respond(p->handle(req)); });
  if (auto ec = impl_->server->start()) {
    throw std::runtime_error("fake Qdrant cannot listen: " + ec.message());
  }
}

fake_qdrant::~fake_qdrant() {
  impl_->server->stop();
}

std::string fake_qdrant::base_url() const {
  return "http://127.0.0.1:" + std::to_string(impl_->server->port());
}

void fake_qdrant::set_down(bool down) {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  impl_->down = down;
}

void fake_qdrant::set_writes_down(bool down) {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  impl_->writes_down = down;
}

uint64_t fake_qdrant::requests() const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  return impl_->requests;
}

bool fake_qdrant::wait_requests(uint64_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mtx);
  return impl_->changed.wait_for(lock, timeout, [&] { return impl_->requests >= n; });
}

bool fake_qdrant::has_conversation_index(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  auto c = impl_->collections.find(name);
  return c != impl_->collections.end() && c->second.conversation_index;
}

void fake_qdrant::create(const std::string& name, std::size_t dims, const std::string& distance) {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  impl_->collections[name] = collection{dims, distance, {}};
}

void fake_qdrant::put(const std::string& name, uint64_t id, std::vector<float> vector,
                      const std::string& embedder, const std::string& store) {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  impl_->collections[name].points[id] = point{std::move(vector), {}, embedder, store};
}

bool fake_qdrant::has_collection(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  return impl_->collections.count(name) > 0;
}

std::size_t fake_qdrant::dims(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  auto c = impl_->collections.find(name);
  return c == impl_->collections.end() ? 0 : c->second.dims;
}

std::size_t fake_qdrant::points(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  auto c = impl_->collections.find(name);
  return c == impl_->collections.end() ? 0 : c->second.points.size();
}

std::vector<uint64_t> fake_qdrant::ids(const std::string& name) const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  std::vector<uint64_t> out;
  auto c = impl_->collections.find(name);
  if (c != impl_->collections.end()) {
    for (auto& [id, p] : c->second.points) {
      out.push_back(id);
    }
  }
  return out;
}

bool fake_qdrant::wait_points(const std::string& name, std::size_t n,
                              std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(impl_->mtx);
  return impl_->changed.wait_for(lock, timeout, [&] {
    auto c = impl_->collections.find(name);
    return c != impl_->collections.end() && c->second.points.size() == n;
  });
}

uint64_t fake_qdrant::upsert_requests() const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  return impl_->upserts;
}

uint64_t fake_qdrant::search_requests() const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  return impl_->searches;
}

std::string fake_qdrant::last_api_key() const {
  std::lock_guard<std::mutex> lock(impl_->mtx);
  return impl_->api_key;
}

}  // namespace kowalski::testing
