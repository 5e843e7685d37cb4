// Memory tiers: working memory in the actor's state, episodic and semantic
// memory in LMDB (the source of truth), the semantic tier's vectors in an
// HNSW index that is saved between starts and checked against LMDB.
#include "actors/memory_tiers.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/memory/vector_index.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <list>
#include <map>
#include <unordered_map>

namespace kowalski {

namespace {

using std::chrono::milliseconds;

int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::string make_id(const char* prefix, uint64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s_%016llx", prefix, static_cast<unsigned long long>(seq));
  return buf;
}

// The sequence number inside an id of this tier, or 0.
uint64_t seq_of(const std::string& id, const char* prefix) {
  std::string p = std::string{prefix} + "_";
  if (id.size() != p.size() + 16 || id.compare(0, p.size(), p) != 0) {
    return 0;
  }
  uint64_t v = 0;
  for (auto c : id.substr(p.size())) {
    v <<= 4;
    if (c >= '0' && c <= '9') {
      v |= static_cast<uint64_t>(c - '0');
    } else if (c >= 'a' && c <= 'f') {
      v |= static_cast<uint64_t>(c - 'a' + 10);
    } else {
      return 0;
    }
  }
  return v;
}

caf::error not_found(const std::string& tier, const std::string& id) {
  return make_error(errc::not_found, "no " + tier + " memory \"" + id + "\"", "id");
}

bool zero(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return x == 0.0f; });
}

// Checks an item to add and gives it a vector: the caller's, when it comes
// from the node's embedder and has the right size, or the built-in one's.
caf::error prepare(memory_item& item, const memory_options& opts, const std::string& tier) {
  if (item.text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return make_error(errc::invalid_argument, "text is empty; expected what to remember",
                      "text");
  }
  auto name = memory::hash_embedder_name(opts.dims);
  if (item.embedder == "none") {
    // Asked for no vector (e.g. a remote embedder was down): keywords only.
    item.embedding.clear();
    item.embedder.clear();
  } else if (!item.embedding.empty()) {
    if (item.embedding.size() != opts.dims) {
      return make_error(errc::invalid_argument,
                        "embedding has " + std::to_string(item.embedding.size())
                          + " dimensions; this node's " + tier + " memory uses "
                          + std::to_string(opts.dims),
                        "embedding");
    }
    for (std::size_t i = 0; i < item.embedding.size(); ++i) {
      if (!std::isfinite(item.embedding[i])) {
        return make_error(errc::invalid_argument,
                          "embedding[" + std::to_string(i) + "] is not a finite number",
                          "embedding");
      }
    }
    if (item.embedder != name) {
      return make_error(errc::conflict,
                        "embedding was made by \"" + item.embedder + "\"; this node's vectors "
                          "come from \"" + name + "\", and vectors of two embedders cannot be "
                          "compared",
                        "embedder");
    }
    memory::normalize(item.embedding);
  } else {
    item.embedding = memory::hash_embed(item.text, opts.dims);
    item.embedder = name;
  }
  if (!item.embedding.empty() && zero(item.embedding)) {
    // No words to embed: found by keywords only.
    item.embedding.clear();
    item.embedder.clear();
  }
  item.tier = tier;
  if (item.kind.empty()) {
    item.kind = tier == "semantic" ? "fact" : "turn";
  }
  if (item.created_ms == 0) {
    item.created_ms = now_ms();
  }
  return caf::error{};
}

// The embedder a durable tier's vectors come from, as its meta record says;
// a node configured for another one refuses to mix them.
caf::error check_embedder(store::environment& env, const std::string& tier,
                          const std::string& name, write_batch& first) {
  std::string stored;
  std::string error;
  if (env.get("memory_meta", tier + "/embedder", stored, error)) {
    if (stored != name) {
      return make_error(errc::conflict, "the " + tier + " memory holds vectors of \"" + stored
                                          + "\"; this node embeds with \"" + name
                                          + "\". Vectors of two embedders cannot be compared: "
                                            "keep the embedder, or start a new store");
    }
    return caf::error{};
  }
  first.ops.push_back(kv_op{kv_op::put, "memory_meta", tier + "/embedder", name});
  return caf::error{};
}

double recency(const memory_options& opts, int64_t created_ms, int64_t now) {
  auto horizon = static_cast<double>(opts.recency_horizon.count());
  if (horizon <= 0) {
    return 0;
  }
  auto age = static_cast<double>(std::max<int64_t>(0, now - created_ms));
  return std::max(0.0, 1.0 - age / horizon);
}

std::vector<memory_hit> best(std::vector<memory_hit> hits, std::size_t limit) {
  std::stable_sort(hits.begin(), hits.end(),
                   [](const memory_hit& a, const memory_hit& b) { return a.score > b.score; });
  if (hits.size() > limit) {
    hits.resize(limit);
  }
  return hits;
}

// -- working memory -----------------------------------------------------------

struct working_state {
  memory_options opts;
  uint64_t next_seq = 1;
  // conversation -> its items, newest last; conversations in LRU order.
  std::list<std::string> lru;
  std::unordered_map<std::string,
                     std::pair<std::deque<memory_item>, std::list<std::string>::iterator>>
    convs;
  static inline const char* name = "kowalski.working_memory";
};

using working_actor = caf::stateful_actor<working_state>;

// Keeps a prepared item in its conversation's buffer.
memory_item remember_working(working_state& st, memory_item item) {
  item.id = make_id("wrk", st.next_seq++);
  auto i = st.convs.find(item.conversation);
  if (i == st.convs.end()) {
    if (st.convs.size() >= st.opts.working_conversations && !st.lru.empty()) {
      st.convs.erase(st.lru.front());
      st.lru.pop_front();
    }
    st.lru.push_back(item.conversation);
    i = st.convs.emplace(item.conversation,
                         std::make_pair(std::deque<memory_item>{}, std::prev(st.lru.end())))
          .first;
  } else {
    st.lru.splice(st.lru.end(), st.lru, i->second.second);
  }
  auto& items = i->second.first;
  items.push_back(item);
  while (items.size() > st.opts.working_items) {
    items.pop_front();
  }
  return item;
}

caf::behavior working(working_actor* self, memory_options opts) {
  self->state.opts = std::move(opts);
  auto find = [=](const std::string& id) -> memory_item* {
    for (auto& [conv, entry] : self->state.convs) {
      for (auto& item : entry.first) {
        if (item.id == id) {
          return &item;
        }
      }
    }
    return nullptr;
  };
  return {
    [=](add_memory& cmd) -> caf::result<memory_item> {
      auto& item = cmd.item;
      if (auto err = prepare(item, self->state.opts, "working")) {
        return err;
      }
      return remember_working(self->state, std::move(item));
    },
    [=](add_memories& cmd) -> caf::result<std::vector<memory_item>> {
      std::vector<memory_item> out;
      for (auto& item : cmd.items) {
        if (auto err = prepare(item, self->state.opts, "working")) {
          return err;
        }
      }
      for (auto& item : cmd.items) {
        out.push_back(remember_working(self->state, std::move(item)));
      }
      return out;
    },
    [=](search_memory& q) -> std::vector<memory_hit> {
      auto& st = self->state;
      auto i = st.convs.find(q.conversation);
      if (i == st.convs.end()) {
        return {};
      }
      auto keys = memory::keywords(q.query);
      auto& items = i->second.first;
      std::vector<memory_hit> hits;
      auto n = items.size();
      for (std::size_t k = 0; k < n; ++k) {
        auto& item = items[k];
        // Recency by position: the newest item 1, the oldest kept near 0.
        auto rec = static_cast<double>(k + 1) / static_cast<double>(n);
        auto share = memory::keyword_share(keys, item.text);
        if (!keys.empty() && share == 0) {
          continue;
        }
        hits.push_back(memory_hit{item, 0.5 * share + 0.5 * rec, share, rec,
                                  keys.empty() ? "recent" : "keyword"});
      }
      return best(std::move(hits), q.limit);
    },
    [=](get_memory& cmd) -> caf::result<memory_item> {
      if (auto* item = find(cmd.id)) {
        return *item;
      }
      return not_found("working", cmd.id);
    },
    [=](delete_memory& cmd) -> caf::result<bool> {
      for (auto& [conv, entry] : self->state.convs) {
        auto& items = entry.first;
        auto it = std::find_if(items.begin(), items.end(),
                               [&](const memory_item& m) { return m.id == cmd.id; });
        if (it != items.end()) {
          items.erase(it);
          return true;
        }
      }
      return not_found("working", cmd.id);
    },
    [=](stats_atom) {
      memory_tier_stats s;
      s.tier = "working";
      for (auto& [conv, entry] : self->state.convs) {
        s.items += entry.first.size();
      }
      s.embedder = memory::hash_embedder_name(self->state.opts.dims);
      s.dimensions = static_cast<uint32_t>(self->state.opts.dims);
      return s;
    },
  };
}

// -- episodic memory ----------------------------------------------------------

// What search needs of an episode, kept in memory; its text stays in LMDB.
struct episode_ref {
  uint64_t seq = 0;
  std::string conversation;
  int64_t created_ms = 0;
  int64_t expires_ms = 0;
  std::vector<float> embedding;  // empty: found by keywords
  bool consolidated = false;
  bool deleting = false;  // its erase is on the way: nothing may write it again
};

struct episodic_state {
  std::shared_ptr<store::environment> env;
  memory_options opts;
  caf::error refused;  // the store's vectors come from another embedder
  uint64_t next_seq = 1;
  std::map<uint64_t, episode_ref> refs;
  std::shared_ptr<spdlog::logger> log = logging::get("memory");
  static inline const char* name = "kowalski.episodic_memory";
};

using episodic_actor = caf::stateful_actor<episodic_state>;

caf::expected<memory_item> read_item(store::environment& env, const char* db, uint64_t seq,
                                     const std::string& tier, const std::string& id) {
  std::string bytes;
  std::string error;
  if (!env.get(db, store::encode_seq(seq), bytes, error)) {
    if (!error.empty()) {
      return make_error(errc::store_failure, "reading " + id + ": " + error);
    }
    return not_found(tier, id);
  }
  memory_item item;
  if (!store::decode(bytes, item)) {
    return make_error(errc::store_failure, id + " cannot be decoded");
  }
  return item;
}

void purge_expired(episodic_actor* self) {
  auto& st = self->state;
  auto now = now_ms();
  write_batch wb;
  std::vector<uint64_t> gone;
  for (auto& [seq, ref] : st.refs) {
    if (ref.expires_ms > 0 && ref.expires_ms <= now && !ref.deleting) {
      ref.deleting = true;
      wb.ops.push_back(kv_op{kv_op::erase, "episodes", store::encode_seq(seq), {}});
      gone.push_back(seq);
    }
  }
  if (!gone.empty()) {
    self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
      .then([=](uint64_t) {
              for (auto seq : gone) {
                self->state.refs.erase(seq);
              }
            },
            [](caf::error&) {});
  }
  self->delayed_send(self, std::chrono::minutes(1), tick_atom::value);
}

// Appends items in one write batch. Not waited for here: appends that
// arrive meanwhile share the writer's next commit.
template <class Then, class Failed>
void append_episodes(episodic_actor* self, std::vector<memory_item> items, Then then,
                     Failed failed) {
  auto& st = self->state;
  if (st.refused) {
    auto e = st.refused;
    return failed(e);
  }
  for (auto& item : items) {
    if (auto err = prepare(item, st.opts, "episodic")) {
      return failed(err);
    }
  }
  write_batch wb;
  std::vector<uint64_t> seqs;
  for (auto& item : items) {
    // Ids come from a counter that only grows, whatever the clock does.
    auto seq = st.next_seq++;
    seqs.push_back(seq);
    item.id = make_id("epi", seq);
    wb.ops.push_back(kv_op{kv_op::put, "episodes", store::encode_seq(seq), store::encode(item)});
  }
  // The counter is stored too: an id of a deleted item is never given again.
  wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "episodic/next_seq",
                         store::encode_seq(st.next_seq)});
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then(
      [=](uint64_t) mutable {
        for (std::size_t i = 0; i < items.size(); ++i) {
          auto& item = items[i];
          self->state.refs.emplace(seqs[i], episode_ref{seqs[i], item.conversation,
                                                        item.created_ms, item.expires_ms,
                                                        item.embedding});
        }
        then(items);
      },
      [=](caf::error& e) mutable { failed(e); });
}

caf::behavior episodic(episodic_actor* self, std::shared_ptr<store::environment> env,
                       memory_options opts) {
  auto& st = self->state;
  st.env = std::move(env);
  st.opts = std::move(opts);
  write_batch first;
  st.refused = check_embedder(*st.env, "episodic", memory::hash_embedder_name(st.opts.dims),
                              first);
  std::string error;
  st.env->scan("episodes", "", "", [&](std::string_view key, std::string_view v) {
    memory_item item;
    auto seq = store::decode_seq(key);
    st.next_seq = std::max(st.next_seq, seq + 1);
    if (store::decode(v, item)) {
      st.refs.emplace(seq, episode_ref{seq, item.conversation, item.created_ms, item.expires_ms,
                                       std::move(item.embedding), item.consolidated});
    }
    return true;
  }, error);
  if (!first.ops.empty() && !st.refused) {
    self->request(st.opts.writer, std::chrono::minutes(2), std::move(first))
      .then([](uint64_t) {}, [](caf::error&) {});
  }
  std::string counter;
  if (st.env->get("memory_meta", "episodic/next_seq", counter, error) && counter.size() == 8) {
    st.next_seq = std::max(st.next_seq, store::decode_seq(counter));
  }
  st.log->info("episodic memory loaded episodes={}", st.refs.size());
  self->delayed_send(self, std::chrono::minutes(1), tick_atom::value);
  return {
    [=](add_memory& cmd) -> caf::result<memory_item> {
      auto rp = self->make_response_promise<memory_item>();
      std::vector<memory_item> one;
      one.push_back(std::move(cmd.item));
      append_episodes(self, std::move(one), [rp](std::vector<memory_item>& stored) mutable {
        rp.deliver(std::move(stored.front()));
      }, [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](add_memories& cmd) -> caf::result<std::vector<memory_item>> {
      auto rp = self->make_response_promise<std::vector<memory_item>>();
      append_episodes(self, std::move(cmd.items), [rp](std::vector<memory_item>& stored) mutable {
        rp.deliver(std::move(stored));
      }, [rp](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](search_memory& q) -> caf::result<std::vector<memory_hit>> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      auto now = now_ms();
      auto qv = memory::hash_embed(q.query, st.opts.dims);
      bool has_vector = !zero(qv);
      auto keys = memory::keywords(q.query);
      auto w = st.opts.similarity_weight;
      // Scores first; texts are read for the best only.
      std::vector<std::pair<double, std::tuple<uint64_t, double, double, bool>>> scored;
      for (auto& [seq, ref] : st.refs) {
        if ((!q.conversation.empty() && ref.conversation != q.conversation)
            || (ref.expires_ms > 0 && ref.expires_ms <= now)) {
          continue;
        }
        auto rec = recency(st.opts, ref.created_ms, now);
        if (!ref.embedding.empty() && has_vector) {
          auto sim = memory::dot(qv.data(), ref.embedding.data(), st.opts.dims);
          scored.push_back({w * sim + (1 - w) * rec, {seq, sim, rec, true}});
        } else {
          scored.push_back({-1, {seq, -1.0, rec, false}});  // keywords, below
        }
      }
      std::vector<memory_hit> hits;
      std::sort(scored.begin(), scored.end(),
                [](auto& a, auto& b) { return a.first > b.first; });
      std::size_t vector_hits = 0;
      for (auto& [score, what] : scored) {
        auto [seq, sim, rec, by_vector] = what;
        if (by_vector && vector_hits >= q.limit) {
          continue;
        }
        auto item = read_item(*st.env, "episodes", seq, "episodic", make_id("epi", seq));
        if (!item) {
          continue;
        }
        if (by_vector) {
          ++vector_hits;
          item->embedding.clear();
          hits.push_back(memory_hit{std::move(*item), score, sim, rec, "vector"});
          continue;
        }
        // Without a vector: the share of the query's keywords it holds.
        auto share = memory::keyword_share(keys, item->text);
        if (share > 0) {
          item->embedding.clear();
          hits.push_back(memory_hit{std::move(*item), w * share + (1 - w) * rec, share, rec,
                                    "keyword"});
        }
      }
      return best(std::move(hits), q.limit);
    },
    [=](get_memory& cmd) -> caf::result<memory_item> {
      auto seq = seq_of(cmd.id, "epi");
      if (seq == 0) {
        return not_found("episodic", cmd.id);
      }
      auto item = read_item(*self->state.env, "episodes", seq, "episodic", cmd.id);
      if (!item) {
        return std::move(item.error());
      }
      return std::move(*item);
    },
    [=](delete_memory& cmd) -> caf::result<bool> {
      auto& st = self->state;
      auto seq = seq_of(cmd.id, "epi");
      auto ref = st.refs.find(seq);
      if (seq == 0 || ref == st.refs.end() || ref->second.deleting) {
        return not_found("episodic", cmd.id);
      }
      ref->second.deleting = true;
      write_batch wb;
      wb.ops.push_back(kv_op{kv_op::erase, "episodes", store::encode_seq(seq), {}});
      auto rp = self->make_response_promise<bool>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            self->state.refs.erase(seq);
            rp.deliver(true);
          },
          [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](stats_atom) {
      memory_tier_stats s;
      s.tier = "episodic";
      s.items = self->state.refs.size();
      s.embedder = memory::hash_embedder_name(self->state.opts.dims);
      s.dimensions = static_cast<uint32_t>(self->state.opts.dims);
      return s;
    },
    [=](tick_atom) { purge_expired(self); },
    [=](list_unconsolidated& q) -> std::vector<memory_item> {
      auto& st = self->state;
      std::vector<memory_item> out;
      for (auto& [seq, ref] : st.refs) {
        if (out.size() >= q.limit) {
          break;
        }
        if (ref.consolidated || ref.deleting
            || (!q.conversation.empty() && ref.conversation != q.conversation)) {
          continue;
        }
        auto item = read_item(*st.env, "episodes", seq, "episodic", make_id("epi", seq));
        if (item) {
          item->embedding.clear();
          out.push_back(std::move(*item));
        }
      }
      return out;
    },
    [=](mark_consolidated& cmd) -> caf::result<uint64_t> {
      auto& st = self->state;
      write_batch wb;
      std::vector<uint64_t> marked;
      for (auto& id : cmd.ids) {
        auto seq = seq_of(id, "epi");
        auto ref = st.refs.find(seq);
        if (seq == 0 || ref == st.refs.end() || ref->second.consolidated
            || ref->second.deleting) {
          continue;
        }
        auto item = read_item(*st.env, "episodes", seq, "episodic", id);
        if (!item) {
          continue;
        }
        item->consolidated = true;
        wb.ops.push_back(kv_op{kv_op::put, "episodes", store::encode_seq(seq),
                               store::encode(*item)});
        marked.push_back(seq);
      }
      if (marked.empty()) {
        return uint64_t{0};
      }
      auto rp = self->make_response_promise<uint64_t>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            for (auto seq : marked) {
              auto ref = self->state.refs.find(seq);
              if (ref != self->state.refs.end()) {
                ref->second.consolidated = true;
              }
            }
            rp.deliver(static_cast<uint64_t>(marked.size()));
          },
          [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
  };
}

// -- semantic memory ----------------------------------------------------------

struct semantic_state {
  std::shared_ptr<store::environment> env;
  memory_options opts;
  caf::error refused;
  uint64_t next_seq = 1;
  uint64_t items = 0;
  std::shared_ptr<memory::vector_index> index;
  uint64_t unsaved = 0;  // changes since the index was last saved
  int64_t loaded_ms = 0;
  std::string index_source;
  std::shared_ptr<spdlog::logger> log = logging::get("memory");
  static inline const char* name = "kowalski.semantic_memory";
};

using semantic_actor = caf::stateful_actor<semantic_state>;

memory::index_options index_options_of(const memory_options& o) {
  memory::index_options io;
  io.dims = o.dims;
  io.m = o.index_m;
  io.ef_construction = o.index_ef_construction;
  io.ef_search = o.index_ef_search;
  return io;
}

// Saves the index and the sequence number it is complete up to.
void save_index(semantic_state& st) {
  if (st.opts.index_path.empty() || !st.index) {
    return;
  }
  std::string error;
  if (!st.index->save(st.opts.index_path, error)) {
    st.log->warn("semantic index not saved path={} error=\"{}\"", st.opts.index_path, error);
    return;
  }
  std::ofstream meta{st.opts.index_path + ".meta", std::ios::trunc};
  meta << memory::hash_embedder_name(st.opts.dims) << "\n" << st.next_seq << "\n";
  st.unsaved = 0;
}

// Loads the saved index and brings it up to date with LMDB (the source of
// truth), or builds it again from LMDB when there is none or it does not fit.
void open_index(semantic_state& st) {
  auto started = std::chrono::steady_clock::now();
  auto io = index_options_of(st.opts);
  std::map<uint64_t, std::vector<float>> stored;
  std::string error;
  st.env->scan("facts", "", "", [&](std::string_view key, std::string_view v) {
    memory_item item;
    auto seq = store::decode_seq(key);
    st.next_seq = std::max(st.next_seq, seq + 1);
    ++st.items;
    // Vectors of other dimensions (a changed memory.dims) never reach the index.
    if (store::decode(v, item) && item.embedding.size() == st.opts.dims) {
      stored.emplace(seq, std::move(item.embedding));
    }
    return true;
  }, error);
  std::string counter;
  if (st.env->get("memory_meta", "semantic/next_seq", counter, error) && counter.size() == 8) {
    st.next_seq = std::max(st.next_seq, store::decode_seq(counter));
  }
  uint64_t watermark = 0;
  std::string embedder;
  {
    std::ifstream meta{st.opts.index_path + ".meta"};
    meta >> embedder >> watermark;
  }
  std::unique_ptr<memory::vector_index> loaded;
  if (!st.opts.index_path.empty() && embedder == memory::hash_embedder_name(st.opts.dims)) {
    loaded = memory::vector_index::load(st.opts.index_path, io, error);
  }
  std::size_t added = 0;
  std::size_t dropped = 0;
  if (loaded) {
    // Deleted since the save: out. Added since: in.
    for (auto label : loaded->labels()) {
      if (stored.count(label) == 0) {
        loaded->remove(label);
        ++dropped;
      }
    }
    for (auto& [seq, v] : stored) {
      if (!loaded->contains(seq)) {
        loaded->add(seq, v.data(), error);
        ++added;
      }
    }
    st.index = std::move(loaded);
    st.index_source = "loaded";
  } else {
    st.index = std::make_shared<memory::vector_index>(io);
    for (auto& [seq, v] : stored) {
      st.index->add(seq, v.data(), error);
    }
    st.index_source = stored.empty() ? "empty" : "rebuilt";
    added = stored.size();
  }
  st.loaded_ms = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now()
                                                           - started)
                   .count();
  st.unsaved = added + dropped;
  st.log->info("semantic index ready source={} vectors={} added={} dropped={} ms={}",
               st.index_source, st.index->size(), added, dropped, st.loaded_ms);
}

// Triples are keyed by their lower-cased text, so "Ada" and "ada" are one.
std::string lower(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

std::string triple_key(const triple& t) {
  return lower(t.subject) + std::string(1, '\0') + lower(t.predicate) + std::string(1, '\0')
         + lower(t.object);
}

caf::behavior semantic(semantic_actor* self, std::shared_ptr<store::environment> env,
                       memory_options opts) {
  auto& st = self->state;
  st.env = std::move(env);
  st.opts = std::move(opts);
  write_batch first;
  st.refused = check_embedder(*st.env, "semantic", memory::hash_embedder_name(st.opts.dims),
                              first);
  if (!first.ops.empty() && !st.refused) {
    self->request(st.opts.writer, std::chrono::minutes(2), std::move(first))
      .then([](uint64_t) {}, [](caf::error&) {});
  }
  open_index(st);
  // The index is saved when the tier stops, so the next start loads it.
  auto index = st.index;
  auto path = st.opts.index_path;
  auto dims = st.opts.dims;
  self->attach_functor([index, path, dims](const caf::error&) {
    if (path.empty()) {
      return;
    }
    std::string error;
    if (index->save(path, error)) {
      // The watermark is not known here; the next start checks every vector.
      std::ofstream meta{path + ".meta", std::ios::trunc};
      meta << memory::hash_embedder_name(dims) << "\n0\n";
    }
  });
  return {
    [=](add_memory& cmd) -> caf::result<memory_item> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      auto item = std::move(cmd.item);
      if (auto err = prepare(item, st.opts, "semantic")) {
        return err;
      }
      if (!item.dedup_key.empty()) {
        std::string existing;
        std::string error;
        if (st.env->get("memory_meta", "dedup/" + item.dedup_key, existing, error)) {
          auto found = read_item(*st.env, "facts", seq_of(existing, "sem"), "semantic", existing);
          if (found) {
            found->embedding.clear();
            return std::move(*found);
          }
        }
      }
      auto seq = st.next_seq++;
      item.id = make_id("sem", seq);
      write_batch wb;
      wb.ops.push_back(kv_op{kv_op::put, "facts", store::encode_seq(seq), store::encode(item)});
      wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "semantic/next_seq",
                             store::encode_seq(st.next_seq)});
      if (!item.dedup_key.empty()) {
        // In the fact's own commit: a retry after a stop finds it.
        wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "dedup/" + item.dedup_key, item.id});
      }
      auto rp = self->make_response_promise<memory_item>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            auto& st = self->state;
            ++st.items;
            std::string error;
            if (!item.embedding.empty() && !st.index->add(seq, item.embedding.data(), error)) {
              st.log->error("semantic index add failed id={} error=\"{}\"", item.id, error);
            }
            if (++st.unsaved >= st.opts.save_every) {
              save_index(st);
            }
            rp.deliver(std::move(item));
          },
          [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](search_memory& q) -> caf::result<std::vector<memory_hit>> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      auto qv = memory::hash_embed(q.query, st.opts.dims);
      std::vector<memory_hit> hits;
      if (zero(qv) || q.limit == 0) {
        return hits;
      }
      auto now = now_ms();
      // Some found may be expired or in another conversation: ask for more.
      auto want = q.conversation.empty() ? q.limit : q.limit * 4;
      for (auto [seq, sim] : st.index->search(qv.data(), want)) {
        auto item = read_item(*st.env, "facts", seq, "semantic", make_id("sem", seq));
        if (!item || (item->expires_ms > 0 && item->expires_ms <= now)
            || (!q.conversation.empty() && item->conversation != q.conversation)) {
          continue;
        }
        item->embedding.clear();
        hits.push_back(memory_hit{std::move(*item), sim, sim, 0, "vector"});
      }
      return best(std::move(hits), q.limit);
    },
    [=](get_memory& cmd) -> caf::result<memory_item> {
      auto seq = seq_of(cmd.id, "sem");
      if (seq == 0) {
        return not_found("semantic", cmd.id);
      }
      auto item = read_item(*self->state.env, "facts", seq, "semantic", cmd.id);
      if (!item) {
        return std::move(item.error());
      }
      return std::move(*item);
    },
    [=](delete_memory& cmd) -> caf::result<bool> {
      auto& st = self->state;
      auto seq = seq_of(cmd.id, "sem");
      auto item = seq == 0 ? caf::expected<memory_item>{not_found("semantic", cmd.id)}
                           : read_item(*st.env, "facts", seq, "semantic", cmd.id);
      if (!item) {
        return std::move(item.error());
      }
      write_batch wb;
      wb.ops.push_back(kv_op{kv_op::erase, "facts", store::encode_seq(seq), {}});
      auto rp = self->make_response_promise<bool>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            auto& st = self->state;
            st.index->remove(seq);
            if (st.items > 0) {
              --st.items;
            }
            ++st.unsaved;
            rp.deliver(true);
          },
          [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](add_triples& cmd) -> caf::result<uint64_t> {
      auto& st = self->state;
      write_batch wb;
      uint64_t fresh = 0;
      for (std::size_t i = 0; i < cmd.triples.size(); ++i) {
        auto& t = cmd.triples[i];
        for (auto* part : {&t.subject, &t.predicate, &t.object}) {
          if (part->find_first_not_of(" \t\r\n") == std::string::npos) {
            return make_error(errc::invalid_argument,
                              "triple " + std::to_string(i)
                                + " has an empty subject, predicate or object",
                              "triples[" + std::to_string(i) + "]");
          }
        }
        auto key = triple_key(t);
        std::string existing;
        std::string error;
        if (st.env->get("triples", key, existing, error)) {
          continue;
        }
        if (t.created_ms == 0) {
          t.created_ms = now_ms();
        }
        ++fresh;
        wb.ops.push_back(kv_op{kv_op::put, "triples", key, store::encode(t)});
        for (auto& entity : {lower(t.subject), lower(t.object)}) {
          wb.ops.push_back(kv_op{kv_op::put, "triples_by_entity",
                                 entity + std::string(1, '\0') + key, {}});
        }
      }
      if (wb.ops.empty()) {
        return uint64_t{0};
      }
      auto rp = self->make_response_promise<uint64_t>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then([=](uint64_t) mutable { rp.deliver(fresh); },
              [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](query_triples& q) -> caf::result<std::vector<triple>> {
      auto& st = self->state;
      if (q.entity.find_first_not_of(" \t\r\n") == std::string::npos) {
        return make_error(errc::invalid_argument, "entity is empty", "entity");
      }
      std::vector<triple> out;
      std::string error;
      auto prefix = lower(q.entity) + std::string(1, '\0');
      st.env->scan("triples_by_entity", prefix, "", [&](std::string_view key, std::string_view) {
        std::string bytes;
        std::string e;
        triple t;
        if (st.env->get("triples", key.substr(prefix.size()), bytes, e)
            && store::decode(bytes, t)) {
          out.push_back(std::move(t));
        }
        return out.size() < q.limit;
      }, error);
      return out;
    },
    [=](stats_atom) {
      auto& st = self->state;
      memory_tier_stats s;
      s.tier = "semantic";
      s.items = st.items;
      s.embedder = memory::hash_embedder_name(st.opts.dims);
      s.dimensions = static_cast<uint32_t>(st.opts.dims);
      s.index_items = st.index->size();
      s.loaded_ms = st.loaded_ms;
      s.index_source = st.index_source;
      return s;
    },
  };
}

}  // namespace

caf::actor spawn_working_memory(caf::actor_system& sys, memory_options opts) {
  return sys.spawn(working, std::move(opts));
}

caf::actor spawn_episodic_memory(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                                 memory_options opts) {
  // Loading every episode at start and scanning them per search take time:
  // not on the shared scheduler.
  return sys.spawn<caf::detached>(episodic, std::move(env), std::move(opts));
}

caf::actor spawn_semantic_memory(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                                 memory_options opts) {
  // Loading or building the index at start takes a while: its own thread.
  return sys.spawn<caf::detached>(semantic, std::move(env), std::move(opts));
}

}  // namespace kowalski
