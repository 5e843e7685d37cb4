// HTTP routes of the memory tiers: bodies checked on the I/O thread, then
// one short-lived actor per request asks the tier (or all three).
#include "runtime/node/memory_routes.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/node.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include <memory>
#include <set>

namespace kowalski {

namespace {

using namespace gw;

constexpr const char* tiers[] = {"working", "episodic", "semantic"};

bool known_tier(std::string_view t) {
  return t == "working" || t == "episodic" || t == "semantic";
}

bad_input unknown_tier(std::string_view t) {
  return bad_input{400, "tier", "tier must be working, episodic or semantic, got "
                                  + json::quote(std::string{t.substr(0, 64)})};
}

void item_json(json::writer& w, const memory_item& m) {
  w.begin_object()
    .key("id").value(m.id)
    .key("object").value("memory.item")
    .key("tier").value(m.tier)
    .key("kind").value(m.kind)
    .key("text").value(m.text)
    .key("conversation").value(m.conversation)
    .key("role").value(m.role)
    .key("created_ms").value(m.created_ms);
  w.key("expires_ms");
  if (m.expires_ms == 0) {
    w.null();
  } else {
    w.value(m.expires_ms);
  }
  w.key("embedder").value(m.embedder).key("consolidated").value(m.consolidated).end_object();
}

void hit_json(json::writer& w, const memory_hit& h) {
  w.begin_object()
    .key("tier").value(h.item.tier)
    .key("id").value(h.item.id)
    .key("kind").value(h.item.kind)
    .key("text").value(h.item.text)
    .key("conversation").value(h.item.conversation)
    .key("created_ms").value(h.item.created_ms)
    .key("score").value(h.score)
    .key("similarity").value(h.similarity)
    .key("recency").value(h.recency)
    .key("matched_by").value(h.matched_by)
    .end_object();
}

std::optional<bad_input> get_vector(simdjson::dom::element doc, std::vector<float>& out) {
  simdjson::dom::element v;
  if (doc["embedding"].get(v) != simdjson::SUCCESS || v.is_null()) {
    return std::nullopt;
  }
  simdjson::dom::array arr;
  if (v.get(arr) != simdjson::SUCCESS) {
    return bad_input{400, "embedding", "embedding must be an array of numbers, got "
                                         + describe_value(v)};
  }
  std::size_t i = 0;
  for (auto x : arr) {
    if (!x.is_number()) {
      return bad_input{400, "embedding", "embedding[" + std::to_string(i) + "] is "
                                           + describe_value(x) + "; expected a number"};
    }
    out.push_back(static_cast<float>(double(x)));
    ++i;
  }
  return std::nullopt;
}

void add(node& n, const std::string& tier, const net::http_request& req,
         const net::responder_ptr& out) {
  simdjson::dom::element doc;
  add_memory cmd;
  auto& m = cmd.item;
  auto bad = parse_object(req, doc, false);
  if (!bad) {
    bad = get_string(doc, "text", m.text, true, true, 1 << 20);
  }
  if (!bad) {
    bad = get_string(doc, "kind", m.kind, false, true, 32);
  }
  if (!bad) {
    bad = get_string(doc, "conversation", m.conversation, tier == "working", true, 256);
  }
  if (!bad) {
    bad = get_string(doc, "role", m.role, false, true, 32);
  }
  if (!bad) {
    bad = get_string(doc, "embedder", m.embedder, false, true, 256);
  }
  if (!bad) {
    bad = get_vector(doc, m.embedding);
  }
  if (!bad && !m.embedding.empty() && m.embedder.empty()) {
    bad = bad_input{400, "embedder", "embedder is missing; a given embedding must name the "
                                     "embedder that made it"};
  }
  double ttl = 0;
  if (!bad) {
    bad = get_number(doc, "ttl_ms", 1, 1e13, ttl);
  }
  if (bad) {
    return reply_bad(out, *bad);
  }
  if (ttl > 0) {
    m.expires_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count()
                   + static_cast<int64_t>(ttl);
  }
  auto target = n.memory(tier);
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(2), cmd)
      .then(
        [=](memory_item& item) {
          json::writer w;
          item_json(w, item);
          reply_json(out, 201, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

// Every tier asked is answered; duplicates (the same text) are kept once,
// where they scored first. With tier=all, tiers that fail are listed in
// "errors" beside what the others found; the request fails only when
// every tier does.
void search(node& n, const net::http_request& req, const net::responder_ptr& out) {
  search_memory q;
  if (!req.query_param("q", q.query) || q.query.find_first_not_of(" \t\r\n") == std::string::npos) {
    return reply_error(out, 400, "invalid_argument", "q is missing; expected the text to "
                                                     "search for", "q");
  }
  std::string tier = "all";
  req.query_param("tier", tier);
  if (tier != "all" && !known_tier(tier)) {
    return reply_bad(out, unknown_tier(tier));
  }
  req.query_param("conversation", q.conversation);
  uint64_t limit = 3;
  if (auto bad = query_uint(req, "limit", 1, 100, limit)) {
    return reply_bad(out, *bad);
  }
  q.limit = static_cast<uint32_t>(limit);
  std::vector<std::pair<std::string, caf::actor>> asked;
  for (auto t : tiers) {
    if (tier == "all" || tier == t) {
      asked.emplace_back(t, n.memory(t));
    }
  }
  n.system().spawn([=](caf::event_based_actor* self) {
    auto results = std::make_shared<std::vector<std::vector<memory_hit>>>(asked.size());
    auto left = std::make_shared<std::size_t>(asked.size());
    auto failed = std::make_shared<std::vector<caf::error>>(asked.size());
    auto done = [=] {
      std::size_t failures = 0;
      caf::error first;
      for (auto& e : *failed) {
        if (e) {
          ++failures;
          first = first ? first : e;
        }
      }
      if (failures == asked.size()) {
        return reply_error(out, first);
      }
      json::writer w;
      std::set<std::string> seen;
      w.begin_object().key("data").begin_array();
      for (auto& hits : *results) {
        for (auto& h : hits) {
          if (seen.insert(h.item.text).second) {
            hit_json(w, h);
          }
        }
      }
      w.end_array();
      if (failures > 0) {
        w.key("errors").begin_array();
        for (std::size_t i = 0; i < asked.size(); ++i) {
          if (auto& e = (*failed)[i]) {
            auto v = describe(e);
            w.begin_object().key("tier").value(asked[i].first);
            w.key("code").value(to_string(v.code)).key("message").value(v.message);
            if (!v.field.empty()) {
              w.key("field").value(v.field);
            }
            w.end_object();
          }
        }
        w.end_array();
      }
      w.end_object();
      reply_json(out, 200, w.take());
    };
    for (std::size_t i = 0; i < asked.size(); ++i) {
      self->request(asked[i].second, std::chrono::seconds(30), q)
        .then(
          [=](std::vector<memory_hit>& hits) {
            (*results)[i] = std::move(hits);
            if (--*left == 0) {
              done();
            }
          },
          [=](caf::error& e) {
            (*failed)[i] = e;
            if (--*left == 0) {
              done();
            }
          });
    }
  });
}

void stats(node& n, const net::responder_ptr& out) {
  n.system().spawn([=, &n](caf::event_based_actor* self) {
    auto got = std::make_shared<std::vector<memory_tier_stats>>();
    auto left = std::make_shared<std::size_t>(3);
    auto finish = [=] {
      json::writer w;
      w.begin_object().key("tiers").begin_array();
      for (auto& s : *got) {
        w.begin_object()
          .key("tier").value(s.tier)
          .key("items").value(s.items)
          .key("embedder").value(s.embedder)
          .key("dimensions").value(s.dimensions);
        if (s.tier == "semantic") {
          w.key("index_items").value(s.index_items)
            .key("index_source").value(s.index_source)
            .key("index_load_ms").value(s.loaded_ms);
        }
        if (s.tier == "episodic") {
          w.key("pending_vectors").value(s.pending_vectors);
        }
        w.end_object();
      }
      w.end_array().end_object();
      reply_json(out, 200, w.take());
    };
    for (auto t : tiers) {
      self->request(n.memory(t), std::chrono::seconds(10), stats_atom::value)
        .then(
          [=](memory_tier_stats& s) {
            got->push_back(std::move(s));
            if (--*left == 0) {
              finish();
            }
          },
          [=](caf::error&) {
            if (--*left == 0) {
              finish();
            }
          });
    }
  });
}

void triples(node& n, const net::http_request& req, const net::responder_ptr& out) {
  auto target = n.memory("semantic");
  if (req.method == "GET") {
    query_triples q;
    if (!req.query_param("entity", q.entity)
        || q.entity.find_first_not_of(" \t\r\n") == std::string::npos) {
      return reply_error(out, 400, "invalid_argument", "entity is missing", "entity");
    }
    uint64_t limit = 50;
    if (auto bad = query_uint(req, "limit", 1, 1000, limit)) {
      return reply_bad(out, *bad);
    }
    q.limit = static_cast<uint32_t>(limit);
    n.system().spawn([=](caf::event_based_actor* self) {
      self->request(target, std::chrono::seconds(30), q)
        .then(
          [=](std::vector<triple>& ts) {
            json::writer w;
            w.begin_object().key("data").begin_array();
            for (auto& t : ts) {
              w.begin_object().key("subject").value(t.subject).key("predicate")
                .value(t.predicate).key("object").value(t.object).key("source").value(t.source)
                .key("created_ms").value(t.created_ms).end_object();
            }
            w.end_array().end_object();
            reply_json(out, 200, w.take());
          },
          [=](caf::error& e) { reply_error(out, e); });
    });
    return;
  }
  if (req.method != "POST") {
    return not_allowed(req, out, "GET, POST");
  }
  simdjson::dom::element doc;
  if (auto bad = parse_object(req, doc, false)) {
    return reply_bad(out, *bad);
  }
  simdjson::dom::array arr;
  if (doc["triples"].get(arr) != simdjson::SUCCESS) {
    return reply_error(out, 400, "invalid_argument",
                       "triples is missing or not an array; expected [{\"subject\", "
                       "\"predicate\", \"object\"}, ...]",
                       "triples");
  }
  add_triples cmd;
  std::size_t i = 0;
  for (auto e : arr) {
    triple t;
    auto field = "triples[" + std::to_string(i) + "]";
    if (!e.is_object()) {
      return reply_error(out, 400, "invalid_argument", field + " is not an object", field);
    }
    std::optional<bad_input> bad;
    bad = get_string(e, "subject", t.subject, true, true, 4096);
    if (!bad) {
      bad = get_string(e, "predicate", t.predicate, true, true, 4096);
    }
    if (!bad) {
      bad = get_string(e, "object", t.object, true, true, 4096);
    }
    if (!bad) {
      bad = get_string(e, "source", t.source, false, false, 64);
    }
    if (bad) {
      bad->field = field + "." + bad->field;
      return reply_bad(out, *bad);
    }
    cmd.triples.push_back(std::move(t));
    ++i;
  }
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(2), cmd)
      .then(
        [=](uint64_t fresh) {
          json::writer w;
          w.begin_object().key("added").value(fresh).end_object();
          reply_json(out, 201, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

void consolidate(node& n, const net::http_request& req, const net::responder_ptr& out) {
  simdjson::dom::element doc;
  consolidate_memory cmd;
  auto bad = parse_object(req, doc, true);
  if (!bad) {
    bad = get_string(doc, "conversation", cmd.conversation, false, true, 256);
  }
  int32_t max = 0;
  if (!bad) {
    bad = get_positive_int(doc, "max_episodes", 10'000, max);
  }
  if (bad) {
    return reply_bad(out, *bad);
  }
  if (max > 0) {
    cmd.max_episodes = static_cast<uint32_t>(max);
  }
  auto target = n.memory("consolidation");
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(30), cmd)
      .then(
        [=](consolidation_report& r) {
          json::writer w;
          w.begin_object().key("episodes").value(r.episodes).key("summaries").value(r.summaries)
            .key("triples").value(r.triples).key("failed").value(r.failed).key("error");
          if (r.error.empty()) {
            w.null();
          } else {
            w.value(r.error);
          }
          w.end_object();
          reply_json(out, 200, w.take());
        },
        [=](caf::error& e) { reply_error(out, e); });
  });
}

template <class Msg, class Reply>
void by_id(node& n, const std::string& tier, Msg msg, const net::responder_ptr& out,
           Reply reply) {
  auto target = n.memory(tier);
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, std::chrono::minutes(1), msg)
      .then(reply, [=](caf::error& e) { reply_error(out, e); });
  });
}

}  // namespace

void serve_memory(node& n, const net::http_request& req,
                  const std::vector<std::string_view>& parts, const net::responder_ptr& out) {
  if (parts.size() == 3 && parts[2] == "search") {
    return req.method == "GET" ? search(n, req, out) : not_allowed(req, out, "GET");
  }
  if (parts.size() == 3 && parts[2] == "stats") {
    return req.method == "GET" ? stats(n, out) : not_allowed(req, out, "GET");
  }
  if (parts.size() == 4 && parts[2] == "semantic" && parts[3] == "triples") {
    return triples(n, req, out);
  }
  if (parts.size() == 3 && parts[2] == "consolidate") {
    return req.method == "POST" ? consolidate(n, req, out) : not_allowed(req, out, "POST");
  }
  if (parts.size() < 3 || parts.size() > 4) {
    return reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
  }
  auto tier = std::string{parts[2]};
  if (!known_tier(tier)) {
    return reply_bad(out, unknown_tier(tier));
  }
  if (parts.size() == 3) {
    return req.method == "POST" ? add(n, tier, req, out) : not_allowed(req, out, "POST");
  }
  auto id = std::string{parts[3]};
  if (req.method == "GET") {
    return by_id(n, tier, get_memory{id}, out, [out](memory_item& item) {
      json::writer w;
      item_json(w, item);
      reply_json(out, 200, w.take());
    });
  }
  if (req.method == "DELETE") {
    return by_id(n, tier, delete_memory{id}, out, [out, id](bool) {
      json::writer w;
      w.begin_object().key("id").value(id).key("deleted").value(true).end_object();
      reply_json(out, 200, w.take());
    });
  }
  not_allowed(req, out, "GET, DELETE");
}

}  // namespace kowalski
