// Memory tiers: working memory in the actor's state, episodic and semantic
// memory in LMDB (the source of truth), the semantic tier's vectors in an
// HNSW index that is saved between starts and checked against LMDB.
#include "actors/memory_tiers.hpp"

#include "actors/conversation_manager.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/memory/vector_index.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <list>
#include <limits>
#include <map>
#include <optional>
#include <set>
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

// A vector of zeros (a text without words) cannot be compared: the item is
// found by its keywords.
// Such an item, and one added with "none", keeps "none" as its embedder: an
// episode with neither vector nor embedder is one the embedder failed, to
// be embedded later.
caf::error finish_vector(memory_item& item) {
  if (!item.embedding.empty() && zero(item.embedding)) {
    item.embedding.clear();
    item.embedder = "none";
  }
  return caf::error{};
}

std::string node_embedder(const memory_options& opts) {
  return opts.embedder_name.empty() ? memory::hash_embedder_name(opts.dims) : opts.embedder_name;
}

// Checks an item to add. A vector the caller brings must come from the
// node's embedder and have the right size; `needs_vector` says whether the
// node's embedder must make one.
caf::error check_item(memory_item& item, const memory_options& opts, const std::string& tier,
                      bool& needs_vector) {
  needs_vector = false;
  if (item.text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return make_error(errc::invalid_argument, "text is empty; expected what to remember",
                      "text");
  }
  auto name = node_embedder(opts);
  if (item.embedder == "none" || tier == "working") {
    // Asked for no vector, or a tier that needs none: keywords only.
    item.embedding.clear();
    item.embedder = tier == "working" ? std::string{} : std::string{"none"};
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
  } else if (!item.embedder.empty() && item.embedder != name) {
    return make_error(errc::conflict,
                      "embedder \"" + item.embedder + "\" was asked for; this node's vectors "
                        "come from \"" + name + "\". Leave embedder out, or set it to "
                        "\"none\" for no vector",
                      "embedder");
  } else {
    needs_vector = true;
  }
  item.tier = tier;
  if (item.kind.empty()) {
    item.kind = tier == "semantic" ? "fact" : "turn";
  }
  if (item.created_ms == 0) {
    item.created_ms = now_ms();
  }
  return finish_vector(item);
}

// The embedder a durable tier's vectors come from, as its meta record says;
// a node configured for another one refuses to mix them.
caf::error check_embedder(store::environment& env, const std::string& tier, const char* db,
                          const std::string& name, write_batch& first) {
  std::string stored;
  std::string error;
  if (env.get("memory_meta", tier + "/embedder", stored, error)) {
    // A tier that holds no vector yet may change embedders (a model name
    // mistyped at the first start, say): it is named again.
    bool has_vectors = false;
    if (stored != name) {
      env.scan(db, "", "", [&](std::string_view, std::string_view v) {
        memory_item item;
        has_vectors = store::decode(v, item) && !item.embedding.empty();
        return !has_vectors;
      }, error);
      if (!error.empty()) {
        return make_error(errc::store_failure, "the " + tier + " memory cannot be read: " + error);
      }
    }
    if (stored != name && !has_vectors) {
      first.ops.push_back(kv_op{kv_op::put, "memory_meta", tier + "/embedder", name});
    } else if (stored != name) {
      return make_error(errc::conflict, "the " + tier + " memory holds vectors of \"" + stored
                                          + "\"; this node embeds with \"" + name
                                          + "\". Vectors of two embedders cannot be compared: "
                                            "keep the embedder, or start a new store");
    }
    return caf::error{};
  }
  if (!error.empty()) {
    return make_error(errc::store_failure, "the " + tier + " memory's embedder record cannot be "
                                           "read: " + error);
  }
  first.ops.push_back(kv_op{kv_op::put, "memory_meta", tier + "/embedder", name});
  return caf::error{};
}

// Writes a tier's first records (its embedder, its store id); a failure
// is logged, and the next start tries again.
template <class Self>
void write_first(Self* self, const caf::actor& writer, write_batch first, const char* tier) {
  if (first.ops.empty()) {
    return;
  }
  auto log = self->state.log;
  self->request(writer, std::chrono::minutes(2), std::move(first))
    .then([](uint64_t) {},
          [log, tier](caf::error& e) {
            log->error("{} memory: its embedder record was not written: {}", tier,
                       describe(e).message);
          });
}

// Vectors for `texts` from the node's embedder, then `then(vectors)` or
// `failed(error)`. The built-in embedder answers at once, in place.
template <class Self, class Then, class Failed>
void embed(Self* self, const memory_options& opts, std::vector<std::string> texts, Then then,
           Failed failed, bool for_search = false) {
  if (!opts.embedder || texts.empty()) {
    std::vector<std::vector<float>> out;
    out.reserve(texts.size());
    for (auto& t : texts) {
      out.push_back(memory::hash_embed(t, opts.dims));
    }
    return then(out);
  }
  auto patience = for_search ? opts.embed_search_timeout : opts.embed_timeout;
  embed_texts req{std::move(texts), static_cast<uint32_t>(patience.count())};
  // The embedder gives up on a request still queued at `patience`; one on
  // the way may take its calls and retries, up to `wait` in all, after
  // which the tier goes on without it.
  auto wait = for_search ? opts.embed_search_wait : opts.embed_wait;
  self->request(opts.embedder, wait, std::move(req))
    .then([=](embeddings& e) mutable { then(e.vectors); },
          [=](caf::error& e) mutable { failed(e); });
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
  auto now = now_ms();
  items.erase(std::remove_if(items.begin(), items.end(),
                             [now](const memory_item& m) {
                               return m.expires_ms > 0 && m.expires_ms <= now;
                             }),
              items.end());
  items.push_back(item);
  while (items.size() > st.opts.working_items) {
    items.pop_front();
  }
  return item;
}

caf::behavior working(working_actor* self, memory_options opts) {
  self->state.opts = std::move(opts);
  // Nothing of this tier is stored, so its ids start from the clock: an id
  // a client kept from before a restart names nothing rather than a newer
  // item (4,096 ids per millisecond of uptime before the ranges could meet).
  self->state.next_seq = std::max<uint64_t>(1, static_cast<uint64_t>(now_ms()) << 12);
  auto find = [=](const std::string& id) -> memory_item* {
    auto now = now_ms();
    for (auto& [conv, entry] : self->state.convs) {
      for (auto& item : entry.first) {
        if (item.id == id && (item.expires_ms == 0 || item.expires_ms > now)) {
          return &item;
        }
      }
    }
    return nullptr;
  };
  return {
    [=](add_memory& cmd) -> caf::result<memory_item> {
      auto& item = cmd.item;
      bool needs_vector = false;
      if (auto err = check_item(item, self->state.opts, "working", needs_vector)) {
        return err;
      }
      return remember_working(self->state, std::move(item));
    },
    [=](add_memories& cmd) -> caf::result<std::vector<memory_item>> {
      std::vector<memory_item> out;
      for (auto& item : cmd.items) {
        bool needs_vector = false;
        if (auto err = check_item(item, self->state.opts, "working", needs_vector)) {
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
      auto now = now_ms();
      for (std::size_t k = 0; k < n; ++k) {
        auto& item = items[k];
        if (item.expires_ms > 0 && item.expires_ms <= now) {
          continue;
        }
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
    [=](forget_conversation& cmd) -> uint64_t {
      auto& st = self->state;
      auto i = st.convs.find(cmd.conversation);
      if (i == st.convs.end()) {
        return 0;
      }
      uint64_t count = i->second.first.size();
      st.lru.erase(i->second.second);
      st.convs.erase(i);
      return count;
    },
    [=](stats_atom) {
      memory_tier_stats s;
      s.tier = "working";
      for (auto& [conv, entry] : self->state.convs) {
        s.items += entry.first.size();
      }
      // No vectors here: searched by keywords and recency.
      return s;
    },
  };
}

// -- episodic memory ----------------------------------------------------------

// The 8-bit codes of the episodes that have vectors, one slot each in one
// array, with the times a search reads beside them. A search of the whole
// tier walks the slots in order, as the prefetcher expects; a map node and
// a code allocation per episode had it waiting on memory most of the time.
class episode_codes {
public:
  static constexpr uint32_t none = std::numeric_limits<uint32_t>::max();

  void reset(std::size_t dims) {
    dims_ = dims;
  }

  std::size_t dims() const {
    return dims_;
  }

  // Puts `code` (of dims() components) in `slot`, or in a free slot when
  // `slot` is none; returns the slot.
  uint32_t put(uint32_t slot, uint64_t seq, int64_t created_ms, int64_t expires_ms,
               const memory::code8& code) {
    if (slot == none) {
      if (!free_.empty()) {
        slot = free_.back();
        free_.pop_back();
      } else {
        if (seq_.size() == seq_.capacity()) {
          // An eighth more each time, not twice as much: at most 12.5% of
          // the codes' memory unused (growth costs a copy of the arrays).
          grow(seq_.size() + seq_.size() / 8 + 256);
        }
        slot = static_cast<uint32_t>(seq_.size());
        seq_.push_back(0);
        created_.push_back(0);
        expires_.push_back(0);
        scale_.push_back(0);
        codes_.resize(codes_.size() + dims_);
      }
    }
    seq_[slot] = seq;
    created_[slot] = created_ms;
    expires_[slot] = expires_ms;
    scale_[slot] = code.scale;
    std::copy(code.code.begin(), code.code.end(), codes_.begin() + slot * dims_);
    return slot;
  }

  void drop(uint32_t slot) {
    seq_[slot] = 0;  // sequence numbers start at 1: 0 is a free slot
    free_.push_back(slot);
  }

  std::size_t slots() const {
    return seq_.size();
  }

  uint64_t seq(uint32_t slot) const {
    return seq_[slot];
  }

  int64_t created_ms(uint32_t slot) const {
    return created_[slot];
  }

  int64_t expires_ms(uint32_t slot) const {
    return expires_[slot];
  }

  float dot(uint32_t slot, const memory::code8& q) const {
    auto raw = memory::dot8_exact(codes_.data() + std::size_t{slot} * dims_, q.code.data(), dims_);
    return static_cast<float>(raw) * scale_[slot] * q.scale;
  }

private:
  void grow(std::size_t slots) {
    codes_.reserve(slots * dims_);
    scale_.reserve(slots);
    seq_.reserve(slots);
    created_.reserve(slots);
    expires_.reserve(slots);
  }

  std::size_t dims_ = 0;
  std::vector<int8_t> codes_;
  std::vector<float> scale_;
  std::vector<uint64_t> seq_;
  std::vector<int64_t> created_;
  std::vector<int64_t> expires_;
  std::vector<uint32_t> free_;
};

// What search needs of an episode, kept in memory; its text stays in LMDB.
struct episode_ref {
  uint64_t seq = 0;
  std::string conversation;
  int64_t created_ms = 0;
  int64_t expires_ms = 0;
  // Its 8-bit code's slot in episode_codes: searches score every episode of
  // their scope with it, then the best few again with the floats from
  // LMDB. none: found by keywords.
  uint32_t slot = episode_codes::none;
  bool consolidated = false;
  bool deleting = false;  // its erase is on the way: nothing may write it again
  bool wants_vector = false;  // stored while the embedder failed: embedded later
};

struct episodic_state {
  std::shared_ptr<store::environment> env;
  memory_options opts;
  caf::error refused;  // the store's vectors come from another embedder
  uint64_t next_seq = 1;
  std::map<uint64_t, episode_ref> refs;
  episode_codes codes;
  std::set<uint64_t> uncoded;  // episodes without a code: found by keywords
  // Conversations erased lately (deleted), with the erase's number: an add
  // that started before it refuses their items. Kept 10 minutes, longer
  // than an add can wait for its vectors and its commit.
  struct forgotten_at {
    uint64_t epoch = 0;
    std::chrono::steady_clock::time_point at;
  };
  uint64_t forget_epoch = 0;
  std::unordered_map<std::string, forgotten_at> forgotten;
  // Episodes of adds whose commit is on its way, by conversation: a
  // conversation's erase that runs meanwhile erases them too.
  std::unordered_map<std::string, std::set<uint64_t>> committing;
  // Each conversation's episodes: a search within one (every chat turn's)
  // scores only those, not the whole tier. The pointers are into `refs`
  // (whose nodes stay put) and go with their entries there (`forget`):
  // looking each episode up in `refs` instead cost most of such a search.
  std::unordered_map<std::string, std::map<uint64_t, episode_ref*>> by_conversation;
  std::set<std::string> replaying;  // outbox records being archived now
  std::size_t wanting = 0;    // refs that want a vector
  bool catching_up = false;   // a pass of late vectors is on the way
  milliseconds late_backoff{0};
  std::chrono::steady_clock::time_point late_not_before{};
  unsigned late_single = 0;  // passes left that take one episode each
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

// An episode stored while the embedder failed is named "pending" (items of
// older stores without a vector have no name: they are left alone).
constexpr const char* pending_embedder = "pending";

bool wants_vector(const memory_item& item, const memory_options& opts) {
  return opts.embedder && item.embedding.empty() && item.embedder == pending_embedder;
}

// Gives the episode the code of `v` (a vector of the tier's size), or
// leaves it to keywords.
void code_episode(episodic_state& st, episode_ref& ref, const std::vector<float>& v) {
  if (v.size() != st.opts.dims || v.empty()) {
    if (ref.slot == episode_codes::none) {
      st.uncoded.insert(ref.seq);
    }
    return;
  }
  ref.slot = st.codes.put(ref.slot, ref.seq, ref.created_ms, ref.expires_ms, memory::quantize(v));
  st.uncoded.erase(ref.seq);
}

// Enters an episode into the tier's view.
episode_ref& remember_episode(episodic_state& st, uint64_t seq, const memory_item& item) {
  auto& ref = st.refs[seq];
  if (ref.slot != episode_codes::none) {
    st.codes.drop(ref.slot);
  }
  if (ref.seq == seq && ref.conversation != item.conversation) {
    // Entered again under another conversation: out of the old one's list.
    if (auto c = st.by_conversation.find(ref.conversation); c != st.by_conversation.end()) {
      c->second.erase(seq);
      if (c->second.empty()) {
        st.by_conversation.erase(c);
      }
    }
  }
  ref = episode_ref{seq, item.conversation, item.created_ms, item.expires_ms};
  ref.consolidated = item.consolidated;
  code_episode(st, ref, item.embedding);
  st.by_conversation[item.conversation][seq] = &ref;
  return ref;
}

// The writes that erase an episode: its record and its late vector.
void erase_episode(write_batch& wb, uint64_t seq) {
  wb.ops.push_back(kv_op{kv_op::erase, "episodes", store::encode_seq(seq), {}});
  wb.ops.push_back(kv_op{kv_op::erase, "episode_vectors", store::encode_seq(seq), {}});
}

void forget(episodic_state& st, uint64_t seq) {
  auto i = st.refs.find(seq);
  if (i != st.refs.end()) {
    if (i->second.slot != episode_codes::none) {
      st.codes.drop(i->second.slot);
    }
    st.uncoded.erase(seq);
    st.wanting -= i->second.wants_vector ? 1 : 0;
    auto c = st.by_conversation.find(i->second.conversation);
    if (c != st.by_conversation.end()) {
      c->second.erase(seq);
      if (c->second.empty()) {
        st.by_conversation.erase(c);
      }
    }
    st.refs.erase(i);
  }
}

// A vector made after its episode was stored lives beside it, in
// "episode_vectors", with the embedder's name: episode records are
// rewritten by other writes (consolidation marks), which must not race it.
// The floats are in the machine's byte order, as LMDB's own pages are: an
// environment does not move between architectures anyway.
std::string encode_late(const std::string& name, const std::vector<float>& v) {
  std::string out = name;
  out.push_back('\0');
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  return out;
}

// A record without floats: the text has no words, and no vector.
bool decode_late(std::string_view bytes, const std::string& name, std::size_t dims,
                 std::vector<float>& out) {
  auto nul = bytes.find('\0');
  if (nul == std::string_view::npos || bytes.substr(0, nul) != name) {
    return false;
  }
  auto size = bytes.size() - nul - 1;
  if (size == 0) {
    out.clear();
    return true;
  }
  if (size != dims * sizeof(float)) {
    return false;
  }
  out.resize(dims);
  std::memcpy(out.data(), bytes.data() + nul + 1, dims * sizeof(float));
  return true;
}

using late_atom = caf::atom_constant<caf::atom("kw_late")>;

// Embeds up to 64 episodes that want a vector and commits the vectors; the
// next pass is a message to itself, so searches and adds go between. A
// failing embedder ends the passes for a while (5 s, doubling to 5 min);
// an add that gets its vector, or the tick after that while, starts again.
void catch_up(episodic_actor* self) {
  auto& st = self->state;
  if (st.catching_up || st.wanting == 0 || !st.opts.embedder || st.refused
      || std::chrono::steady_clock::now() < st.late_not_before) {
    return;
  }
  std::vector<uint64_t> seqs;
  std::vector<std::string> texts;
  std::size_t take = st.late_single > 0 ? 1 : 64;
  if (st.late_single > 0) {
    --st.late_single;
  }
  for (auto& [seq, ref] : st.refs) {
    if (seqs.size() == take) {
      break;
    }
    if (!ref.wants_vector || ref.deleting) {
      continue;
    }
    auto item = read_item(*st.env, "episodes", seq, "episodic", make_id("epi", seq));
    if (item) {
      seqs.push_back(seq);
      texts.push_back(std::move(item->text));
    }
  }
  if (seqs.empty()) {
    return;
  }
  st.catching_up = true;
  auto name = node_embedder(st.opts);
  auto failed = [=](const caf::error& e) {
    auto& st = self->state;
    auto v = describe(e);
    // Only what says the input itself was refused; a bad key or model
    // (401, 403, 404) waits like any failure.
    bool refused = v.code == errc::backend_error
                   && (v.http_status == 400 || v.http_status == 413 || v.http_status == 422);
    if (refused && seqs.size() > 1) {
      // One text the backend will not take fails the whole pass: the next
      // passes go one episode at a time, so the others get through.
      st.catching_up = false;
      st.late_single = 64;
      self->send(self, late_atom::value);
      return;
    }
    if (refused) {
      // Refused on its own: kept without a vector for good (a record with
      // no numbers), so it no longer holds the others up. The pass lasts
      // until that record is written.
      auto seq = seqs.front();
      auto ref = st.refs.find(seq);
      if (ref == st.refs.end() || ref->second.deleting) {
        st.catching_up = false;
        self->send(self, late_atom::value);
        return;
      }
      st.log->warn("episode {} refused by the embedder: kept without a vector",
                   make_id("epi", seq));
      write_batch wb;
      wb.ops.push_back(kv_op{kv_op::put, "episode_vectors", store::encode_seq(seq),
                             encode_late(node_embedder(st.opts), {})});
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) {
            auto& st = self->state;
            st.catching_up = false;
            auto ref = st.refs.find(seq);
            if (ref != st.refs.end() && ref->second.wants_vector) {
              ref->second.wants_vector = false;
              --st.wanting;
            }
            self->send(self, late_atom::value);
          },
          [=](caf::error&) {
            self->state.catching_up = false;
            self->send(self, late_atom::value);
          });
      return;
    }
    st.catching_up = false;
    st.late_backoff = std::min<milliseconds>(
      std::max<milliseconds>(st.late_backoff * 2, milliseconds(5'000)), milliseconds(300'000));
    st.late_not_before = std::chrono::steady_clock::now() + st.late_backoff;
  };
  embed(self, st.opts, std::move(texts),
        [=](std::vector<std::vector<float>>& vectors) mutable {
          auto& st = self->state;
          write_batch wb;
          std::vector<std::pair<uint64_t, std::vector<float>>> made;
          for (std::size_t k = 0; k < seqs.size(); ++k) {
            // Deleted (or on the way) while the call was out: no record
            // may outlive it. Writes go to the writer in order, so a delete
            // sent after this put erases it.
            auto ref = st.refs.find(seqs[k]);
            if (ref == st.refs.end() || ref->second.deleting) {
              continue;
            }
            memory_item probe;
            probe.embedding = std::move(vectors[k]);
            finish_vector(probe);  // empty when the text has no words
            wb.ops.push_back(kv_op{kv_op::put, "episode_vectors", store::encode_seq(seqs[k]),
                                   encode_late(name, probe.embedding)});
            made.emplace_back(seqs[k], std::move(probe.embedding));
          }
          auto done = [=]() mutable {
            auto& st = self->state;
            st.catching_up = false;
            st.late_backoff = milliseconds(0);
            for (auto& [seq, v] : made) {
              auto ref = st.refs.find(seq);
              if (ref == st.refs.end() || !ref->second.wants_vector) {
                continue;
              }
              code_episode(st, ref->second, v);
              ref->second.wants_vector = false;
              --st.wanting;
            }
            st.log->info("episodes embedded late count={} still_wanting={}", made.size(),
                         st.wanting);
            self->send(self, late_atom::value);
          };
          if (wb.ops.empty()) {
            return done();
          }
          self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
            .then([=](uint64_t) mutable { done(); },
                  [=](caf::error& e) mutable { failed(e); });
        },
        [=](caf::error& e) mutable { failed(e); });
}

template <class Then, class Failed>
void append_episodes(episodic_actor* self, std::vector<memory_item> items, Then then,
                     Failed failed, std::string outbox = {});

// Archives the chat turns of one outbox record, once: a second archive of
// the same record (the turn's own and a replay) answers with no items, and
// the commit is skipped when the record has gone meanwhile.
template <class Then, class Failed>
void archive_turns(episodic_actor* self, const std::string& key, std::vector<memory_item> items,
                   Then then, Failed failed) {
  auto& st = self->state;
  if (!st.replaying.insert(key).second) {
    std::vector<memory_item> none;
    return then(none);
  }
  append_episodes(
    self, std::move(items),
    [self, key, then](std::vector<memory_item>& stored) mutable {
      self->state.replaying.erase(key);
      then(stored);
    },
    [self, key, failed](caf::error& e) mutable {
      self->state.replaying.erase(key);
      failed(e);
    },
    key);
}

// Archives the chat turns whose outbox records are still there: at start
// (the node stopped between a turn's commit and its archive) and, on the
// tick, those older than 5 minutes (their archive failed; any request for
// them has ended by then). Each record is erased with its episodes. At
// most 256 records a round; at start, a full round that archived some is
// followed by another, so a node stopped under load archives all its
// records at once rather than 256 a tick.
void replay_outbox(episodic_actor* self, bool at_start) {
  auto& st = self->state;
  if (st.refused) {
    return;
  }
  auto now = now_ms();
  std::vector<std::pair<std::string, add_memories>> due;
  std::string error;
  st.env->scan("memory_meta", "archive/", "", [&](std::string_view key, std::string_view v) {
    add_memories cmd;
    std::string k{key};
    if (st.replaying.count(k) > 0) {
      return true;  // being archived now
    }
    if (!store::decode(v, cmd) || cmd.items.empty()) {
      st.log->warn("an outbox record cannot be decoded: dropped key={}", k);
      write_batch drop;
      drop.ops.push_back(kv_op{kv_op::erase, "memory_meta", k, {}});
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(drop))
        .then([](uint64_t) {}, [](caf::error&) {});
      return true;
    }
    int64_t newest = 0;
    for (auto& item : cmd.items) {
      newest = std::max(newest, item.created_ms);
    }
    if (at_start || now - newest > 5 * 60 * 1000) {
      due.emplace_back(std::move(k), std::move(cmd));
    }
    return due.size() < 256;
  }, error);
  if (!error.empty()) {
    st.log->warn("the outbox of chat turns cannot be read: {}", error);
  }
  struct round_state {
    std::size_t left = 0;
    bool progress = false;
  };
  auto round = std::make_shared<round_state>();
  round->left = due.size();
  bool full = due.size() == 256;
  auto settled = [self, round, full, at_start](bool archived) {
    round->progress = round->progress || archived;
    if (--round->left == 0 && full && at_start && round->progress) {
      replay_outbox(self, true);
    }
  };
  for (auto& [key, cmd] : due) {
    archive_turns(
      self, key, std::move(cmd.items),
      [self, settled](std::vector<memory_item>& stored) {
        self->state.log->info("chat turns archived from the outbox count={}", stored.size());
        settled(true);
      },
      [self, settled, key = key](caf::error& e) {
        settled(false);
        auto why = describe(e);
        if (why.ours && why.code == errc::invalid_argument) {
          // Never storable (the tier's limits changed since): dropped, not
          // retried on every tick.
          self->state.log->warn("chat turns in the outbox refused, dropped key={}: {}", key,
                                why.message);
          write_batch drop;
          drop.ops.push_back(kv_op{kv_op::erase, "memory_meta", key, {}});
          self->request(self->state.opts.writer, std::chrono::minutes(2), std::move(drop))
            .then([](uint64_t) {}, [](caf::error&) {});
          return;
        }
        // Tried again on a later tick.
        self->state.log->warn("chat turns not archived from the outbox: {}", why.message);
      });
  }
}

// Erases every episode of a deleted conversation, and the record the
// delete left (`forget/<conversation>` in memory_meta) with them; `then`
// gets how many, or the store's error (the record stays: tried again on
// the tick).
template <class Then>
void forget_episodes(episodic_actor* self, const std::string& conversation, Then then) {
  auto& st = self->state;
  st.forgotten[conversation] =
    episodic_state::forgotten_at{++st.forget_epoch, std::chrono::steady_clock::now()};
  write_batch wb;
  std::vector<uint64_t> seqs;  // all of the conversation's episodes
  std::vector<uint64_t> marked;  // those this erase marked (others were marked already)
  if (auto c = st.by_conversation.find(conversation); c != st.by_conversation.end()) {
    for (auto [seq, ref] : c->second) {
      // One whose single delete is on the way is erased here too: that
      // delete may fail, and the record goes with this commit.
      if (!ref->deleting) {
        ref->deleting = true;
        marked.push_back(seq);
      }
      seqs.push_back(seq);
      erase_episode(wb, seq);
    }
  }
  // Adds at the writer now: their puts land first (the writer keeps the
  // order), these erases after; their replies then see the conversation
  // forgotten and refuse them.
  if (auto c = st.committing.find(conversation); c != st.committing.end()) {
    for (auto seq : c->second) {
      erase_episode(wb, seq);
    }
  }
  wb.ops.push_back(kv_op{kv_op::erase, "memory_meta", "forget/" + conversation, {}});
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then(
      [=](uint64_t) mutable {
        for (auto seq : seqs) {
          forget(self->state, seq);
        }
        self->state.log->info("a deleted conversation's episodes erased conversation_id={} "
                              "count={}",
                              conversation, seqs.size());
        then(caf::expected<uint64_t>{seqs.size()});
      },
      [=](caf::error& e) mutable {
        for (auto seq : marked) {
          if (auto ref = self->state.refs.find(seq); ref != self->state.refs.end()) {
            ref->second.deleting = false;
          }
        }
        then(caf::expected<uint64_t>{std::move(e)});
      });
}

// The records of deleted conversations whose episodes are not erased yet
// (the node stopped, or the erase failed): at start and on every tick.
void replay_forgets(episodic_actor* self) {
  auto& st = self->state;
  if (st.refused) {
    return;
  }
  std::vector<std::string> conversations;
  std::string error;
  st.env->scan("memory_meta", "forget/", "", [&](std::string_view key, std::string_view) {
    conversations.emplace_back(key.substr(7));
    return conversations.size() < 256;
  }, error);
  if (!error.empty()) {
    st.log->warn("the records of deleted conversations cannot be read: {}", error);
  }
  for (auto& c : conversations) {
    forget_episodes(self, c, [self, c](caf::expected<uint64_t> done) {
      if (!done) {
        self->state.log->warn("a deleted conversation's episodes are not erased yet "
                              "conversation_id={} error=\"{}\"",
                              c, describe(done.error()).message);
      }
    });
  }
}

void purge_expired(episodic_actor* self) {
  auto& st = self->state;
  auto now = now_ms();
  write_batch wb;
  std::vector<uint64_t> gone;
  for (auto& [seq, ref] : st.refs) {
    if (ref.expires_ms > 0 && ref.expires_ms <= now && !ref.deleting) {
      ref.deleting = true;
      erase_episode(wb, seq);
      gone.push_back(seq);
    }
  }
  if (!gone.empty()) {
    self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
      .then([=](uint64_t) {
              for (auto seq : gone) {
                forget(self->state, seq);
              }
            },
            [=](caf::error&) {
              // Tried again at the next tick.
              for (auto seq : gone) {
                auto ref = self->state.refs.find(seq);
                if (ref != self->state.refs.end()) {
                  ref->second.deleting = false;
                }
              }
            });
  }
  auto aged = std::chrono::steady_clock::now() - std::chrono::minutes(10);
  for (auto i = st.forgotten.begin(); i != st.forgotten.end();) {
    i = i->second.at < aged ? st.forgotten.erase(i) : std::next(i);
  }
  catch_up(self);
  replay_outbox(self, false);
  replay_forgets(self);
  self->delayed_send(self, st.opts.purge_every, tick_atom::value);
}

template <class Then, class Failed>
void commit_episodes(episodic_actor* self, std::vector<memory_item> items, Then then,
                     Failed failed, bool embedded, std::string outbox, uint64_t since);

// Appends items in one write batch, once their vectors are made. Not
// waited for here: appends that arrive meanwhile share the writer's next
// commit.
template <class Then, class Failed>
void append_episodes(episodic_actor* self, std::vector<memory_item> items, Then then,
                     Failed failed, std::string outbox) {
  auto& st = self->state;
  if (st.refused) {
    auto e = st.refused;
    return failed(e);
  }
  std::vector<std::size_t> need;
  std::vector<std::string> texts;
  for (std::size_t i = 0; i < items.size(); ++i) {
    bool needs_vector = false;
    if (auto err = check_item(items[i], st.opts, "episodic", needs_vector)) {
      return failed(err);
    }
    if (needs_vector) {
      need.push_back(i);
      texts.push_back(items[i].text);
    }
  }
  auto name = node_embedder(st.opts);
  auto since = st.forget_epoch;  // conversations deleted after this refuse the items
  embed(self, st.opts, std::move(texts),
        [=](std::vector<std::vector<float>>& vectors) mutable {
          for (std::size_t k = 0; k < need.size(); ++k) {
            auto& item = items[need[k]];
            item.embedding = std::move(vectors[k]);
            item.embedder = name;
            finish_vector(item);
          }
          // Only an answer of the embedder says it is back.
          commit_episodes(self, std::move(items), then, failed, !need.empty(), outbox,
                          since);
        },
        [=](caf::error& e) mutable {
          // The turn is kept without a vector rather than lost: it is found
          // by its keywords until the embedder answers again.
          self->state.log->warn("episodes stored without vectors count={} error=\"{}\"",
                                need.size(), describe(e).message);
          for (auto i : need) {
            items[i].embedder = pending_embedder;
          }
          commit_episodes(self, std::move(items), then, failed, false, outbox, since);
        });
}

template <class Then, class Failed>
void commit_episodes(episodic_actor* self, std::vector<memory_item> items, Then then,
                     Failed failed, bool embedded, std::string outbox, uint64_t since) {
  auto& st = self->state;
  if (st.refused) {
    auto e = st.refused;
    return failed(e);
  }
  if (!outbox.empty()) {
    std::string value, error;
    if (!st.env->get("memory_meta", outbox, value, error) && error.empty()) {
      // Archived already (by a replay that finished first), or its
      // conversation deleted: not (again).
      std::vector<memory_item> none;
      return then(none);
    }
  }
  // A conversation deleted since this add arrived: its erase has run, so
  // the items would outlive it. (A chat turn's archive is stopped by its
  // outbox record instead, which the delete erased.)
  auto deleted_since = [self, since, archive = !outbox.empty()](
                         const std::vector<memory_item>& items) -> caf::error {
    if (archive) {
      return {};
    }
    for (auto& item : items) {
      auto& st = self->state;
      auto f = st.forgotten.find(item.conversation);
      if (!item.conversation.empty() && f != st.forgotten.end() && f->second.epoch > since) {
        return make_error(errc::conflict, "conversation " + item.conversation
                                            + " was deleted while this add was in progress",
                          "conversation");
      }
    }
    return {};
  };
  if (auto e = deleted_since(items)) {
    return failed(e);
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
  if (!outbox.empty()) {
    // The turn's outbox record goes in the episodes' own commit, which
    // fails (conflict) if another archive of it or the conversation's
    // delete has taken the record meanwhile.
    wb.ops.push_back(kv_op{kv_op::erase_existing, "memory_meta", outbox, {}});
  }
  for (std::size_t i = 0; i < items.size(); ++i) {
    st.committing[items[i].conversation].insert(seqs[i]);
  }
  auto settled = [self, seqs, conversations = [&] {
                    std::vector<std::string> c;
                    for (auto& item : items) {
                      c.push_back(item.conversation);
                    }
                    return c;
                  }()] {
    auto& st = self->state;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      if (auto c = st.committing.find(conversations[i]); c != st.committing.end()) {
        c->second.erase(seqs[i]);
        if (c->second.empty()) {
          st.committing.erase(c);
        }
      }
    }
  };
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then(
      [=](uint64_t) mutable {
        settled();
        // Deleted while the commit was on its way: the erase that ran
        // meanwhile takes these episodes from the store too, and so does
        // this one, should that erase fail.
        if (auto e = deleted_since(items)) {
          write_batch undo;
          for (auto seq : seqs) {
            erase_episode(undo, seq);
          }
          self->request(self->state.opts.writer, std::chrono::minutes(2), std::move(undo))
            .then([](uint64_t) {}, [](caf::error&) {});
          return failed(e);
        }
        for (std::size_t i = 0; i < items.size(); ++i) {
          auto& item = items[i];
          auto& ref = remember_episode(self->state, seqs[i], item);
          ref.wants_vector = wants_vector(item, self->state.opts);
          self->state.wanting += ref.wants_vector ? 1 : 0;
        }
        then(items);
        // The embedder is back: episodes stored while it failed get their
        // vectors now.
        if (embedded) {
          self->state.late_backoff = milliseconds(0);
          self->state.late_not_before = {};
          catch_up(self);
        }
      },
      [=](caf::error& e) mutable {
        settled();
        auto why = describe(e);
        if (!outbox.empty() && why.ours && why.code == errc::conflict) {
          std::vector<memory_item> none;  // archived already, or not wanted
          return then(none);
        }
        failed(e);
      });
}

// The floats of an episode's vector: in its record, or (made late) in
// "episode_vectors". Empty when neither holds one of the tier's size.
std::vector<float> episode_floats(const episodic_state& st, uint64_t seq, memory_item& item) {
  if (item.embedding.size() == st.opts.dims) {
    return std::move(item.embedding);
  }
  std::string bytes, error;
  std::vector<float> late;
  if (st.env->get("episode_vectors", store::encode_seq(seq), bytes, error)
      && decode_late(bytes, node_embedder(st.opts), st.opts.dims, late)) {
    return late;
  }
  return {};
}

// Scores every episode of the search's scope: by vector and recency where
// both sides have a vector (`qv` empty: none), by keywords and recency
// otherwise. Vectors are compared in 8 bits first; the best few are read
// and scored again with their floats, which give the scores returned.
std::vector<memory_hit> search_episodes(episodic_state& st, const search_memory& q,
                                        const std::vector<float>& qv) {
  if (q.limit == 0) {
    return {};
  }
  auto now = now_ms();
  bool has_vector = qv.size() == st.opts.dims && !qv.empty() && !zero(qv);
  auto q8 = has_vector ? memory::quantize(qv) : memory::code8{};
  auto keys = memory::keywords(q.query);
  auto w = st.opts.similarity_weight;
  struct rough_hit {
    float score;
    float sim;  // from the codes
    uint64_t seq;
  };
  std::vector<rough_hit> rough;
  std::vector<std::pair<uint64_t, double>> plain;  // seq, recency: by keywords
  auto score = [&](uint64_t seq, const episode_ref& ref) {
    if (ref.expires_ms > 0 && ref.expires_ms <= now) {
      return;
    }
    auto rec = recency(st.opts, ref.created_ms, now);
    if (ref.slot != episode_codes::none && has_vector) {
      auto sim = st.codes.dot(ref.slot, q8);
      rough.push_back({static_cast<float>(w * sim + (1 - w) * rec), sim, seq});
    } else {
      plain.emplace_back(seq, rec);
    }
  };
  if (q.conversation.empty() && has_vector) {
    // Every code in slot order, then the episodes without one.
    rough.reserve(st.refs.size() - st.uncoded.size());
    for (uint32_t slot = 0; slot < st.codes.slots(); ++slot) {
      auto seq = st.codes.seq(slot);
      auto expires = st.codes.expires_ms(slot);
      if (seq == 0 || (expires > 0 && expires <= now)) {
        continue;
      }
      auto rec = recency(st.opts, st.codes.created_ms(slot), now);
      auto sim = st.codes.dot(slot, q8);
      rough.push_back({static_cast<float>(w * sim + (1 - w) * rec), sim, seq});
    }
    for (auto seq : st.uncoded) {
      if (auto ref = st.refs.find(seq); ref != st.refs.end()) {
        score(seq, ref->second);
      }
    }
  } else if (q.conversation.empty()) {
    for (auto& [seq, ref] : st.refs) {
      score(seq, ref);
    }
  } else if (auto c = st.by_conversation.find(q.conversation); c != st.by_conversation.end()) {
    for (auto [seq, ref] : c->second) {
      score(seq, *ref);
    }
  }
  std::vector<memory_hit> hits;
  // The 8-bit similarities are off by about 0.002 at 384 dimensions: the
  // true best `limit` are among the rough best `limit` and those within
  // 0.01 of the last of them. Those are read and scored again, the best
  // 256 of them when more are that close.
  std::size_t pool = 0;
  auto want = std::min<std::size_t>(q.limit, rough.size());
  if (want > 0) {
    auto higher = [](const rough_hit& a, const rough_hit& b) { return a.score > b.score; };
    auto kth = rough.begin() + static_cast<std::ptrdiff_t>(want - 1);
    std::nth_element(rough.begin(), kth, rough.end(), higher);
    auto cut = kth->score - 0.01f;
    auto close = std::partition(kth + 1, rough.end(),
                                [cut](const rough_hit& r) { return r.score >= cut; });
    pool = static_cast<std::size_t>(close - rough.begin());
    auto most = std::max<std::size_t>(256, want);
    if (pool > most) {
      std::partial_sort(rough.begin(), rough.begin() + most, close, higher);
      pool = most;
    }
  }
  for (std::size_t i = 0; i < pool; ++i) {
    auto seq = rough[i].seq;
    auto item = read_item(*st.env, "episodes", seq, "episodic", make_id("epi", seq));
    if (!item) {
      continue;
    }
    auto floats = episode_floats(st, seq, *item);
    auto rec = recency(st.opts, item->created_ms, now);
    double sim = floats.empty() ? rough[i].sim
                                : memory::dot(qv.data(), floats.data(), st.opts.dims);
    item->embedding.clear();
    hits.push_back(memory_hit{std::move(*item), w * sim + (1 - w) * rec, sim, rec, "vector"});
  }
  for (auto [seq, rec] : plain) {
    auto item = read_item(*st.env, "episodes", seq, "episodic", make_id("epi", seq));
    if (!item) {
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
}

// Reads the store into the tier's view and archives what the outbox holds.
void load_episodes(episodic_actor* self) {
  auto& st = self->state;
  write_batch first;
  st.refused = check_embedder(*st.env, "episodic", "episodes", node_embedder(st.opts),
                              first);
  std::string error;
  st.env->scan("episodes", "", "", [&](std::string_view key, std::string_view v) {
    memory_item item;
    auto seq = store::decode_seq(key);
    st.next_seq = std::max(st.next_seq, seq + 1);
    if (store::decode(v, item)) {
      auto& ref = remember_episode(st, seq, item);
      ref.wants_vector = wants_vector(item, st.opts);
    }
    return true;
  }, error);
  if (!error.empty() && !st.refused) {
    // A partial view would miss episodes in searches and purges.
    st.refused = make_error(errc::store_failure, "the episodes cannot be read: " + error);
    st.log->error("episodic memory refuses to work: {}", error);
  }
  // Vectors made late, for episodes that were stored without one. A record
  // whose episode is gone (a stop between the two writes) is erased.
  auto name = node_embedder(st.opts);
  std::string late_error;
  st.env->scan("episode_vectors", "", "", [&](std::string_view key, std::string_view v) {
    auto ref = st.refs.find(store::decode_seq(key));
    if (ref == st.refs.end()) {
      first.ops.push_back(kv_op{kv_op::erase, "episode_vectors", std::string{key}, {}});
    } else if (std::vector<float> late; ref->second.slot == episode_codes::none
               && decode_late(v, name, st.opts.dims, late)) {
      code_episode(st, ref->second, late);
      ref->second.wants_vector = false;
    }
    return true;
  }, late_error);
  if (!late_error.empty()) {
    st.log->error("episodic memory: late vectors cannot be read: {}", late_error);
  }
  for (auto& [seq, ref] : st.refs) {
    st.wanting += ref.wants_vector ? 1 : 0;
  }
  if (!st.refused) {
    write_first(self, st.opts.writer, std::move(first), "episodic");
  }
  std::string counter;
  if (st.env->get("memory_meta", "episodic/next_seq", counter, error) && counter.size() == 8) {
    st.next_seq = std::max(st.next_seq, store::decode_seq(counter));
  }
  st.log->info("episodic memory loaded episodes={}", st.refs.size());
  replay_outbox(self, true);
  replay_forgets(self);
  self->delayed_send(self, st.opts.purge_every, tick_atom::value);
}

caf::behavior episodic(episodic_actor* self, std::shared_ptr<store::environment> env,
                       memory_options opts) {
  auto& st = self->state;
  st.env = std::move(env);
  st.opts = std::move(opts);
  st.codes.reset(st.opts.dims);
  // A tier restarted by its supervisor reads the store only once the writer
  // has committed what the previous actor handed it (its ping answers after
  // a flush): else the counter read would be stale, new episodes would take
  // the ids of those, and the outbox would still list what they archive.
  // Awaited: no other message is handled before.
  self->request(st.opts.writer, std::chrono::minutes(2), ping_atom::value)
    .await([=](uint64_t) { load_episodes(self); },
           [=](caf::error& e) {
             self->state.log->warn("episodic memory: the writer did not answer: {}",
                                   describe(e).message);
             load_episodes(self);
           });
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
      auto then = [rp](std::vector<memory_item>& stored) mutable {
        rp.deliver(std::move(stored));
      };
      auto failed = [rp](caf::error& e) mutable { rp.deliver(std::move(e)); };
      if (cmd.outbox_key.empty()) {
        append_episodes(self, std::move(cmd.items), then, failed);
      } else {
        archive_turns(self, cmd.outbox_key, std::move(cmd.items), then, failed);
      }
      return rp;
    },
    [=](search_memory& q) -> caf::result<std::vector<memory_hit>> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      auto rp = self->make_response_promise<std::vector<memory_hit>>();
      embed(self, st.opts, {q.query},
            [=](std::vector<std::vector<float>>& v) mutable {
              rp.deliver(search_episodes(self->state, q, v.front()));
            },
            [=](caf::error& e) mutable {
              // Without a query vector, episodes are still found by keywords.
              self->state.log->warn("episodic search by keywords only: {}",
                                    describe(e).message);
              rp.deliver(search_episodes(self->state, q, {}));
            },
            true);
      return rp;
    },
    [=](get_memory& cmd) -> caf::result<memory_item> {
      auto seq = seq_of(cmd.id, "epi");
      if (seq == 0) {
        return not_found("episodic", cmd.id);
      }
      auto& st = self->state;
      auto item = read_item(*st.env, "episodes", seq, "episodic", cmd.id);
      if (!item) {
        return std::move(item.error());
      }
      std::string late;
      std::string error;
      if (item->embedding.empty()
          && st.env->get("episode_vectors", store::encode_seq(seq), late, error)
          && decode_late(late, node_embedder(st.opts), st.opts.dims, item->embedding)) {
        item->embedder = item->embedding.empty() ? "none" : node_embedder(st.opts);
      }
      if (!error.empty()) {
        return make_error(errc::store_failure, "reading the vector of " + cmd.id + ": " + error);
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
      erase_episode(wb, seq);
      auto rp = self->make_response_promise<bool>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            forget(self->state, seq);
            rp.deliver(true);
          },
          [=](caf::error& e) mutable {
            auto ref = self->state.refs.find(seq);
            if (ref != self->state.refs.end()) {
              ref->second.deleting = false;
            }
            rp.deliver(std::move(e));
          });
      return rp;
    },
    [=](forget_conversation& cmd) -> caf::result<uint64_t> {
      if (self->state.refused) {
        return self->state.refused;
      }
      auto rp = self->make_response_promise<uint64_t>();
      forget_episodes(self, cmd.conversation, [rp](caf::expected<uint64_t> done) mutable {
        if (done) {
          rp.deliver(*done);
        } else {
          rp.deliver(std::move(done.error()));
        }
      });
      return rp;
    },
    [=](stats_atom) {
      memory_tier_stats s;
      s.tier = "episodic";
      s.pending_vectors = self->state.wanting;
      s.items = self->state.refs.size();
      s.embedder = node_embedder(self->state.opts);
      s.dimensions = static_cast<uint32_t>(self->state.opts.dims);
      return s;
    },
    [=](tick_atom) { purge_expired(self); },
    [=](late_atom) { catch_up(self); },
    [=](list_unconsolidated& q) -> std::vector<memory_item> {
      auto& st = self->state;
      std::vector<memory_item> out;
      for (auto& [seq, ref] : st.refs) {
        if (out.size() >= q.limit) {
          break;
        }
        if (ref.consolidated || ref.deleting
            || (!q.conversation.empty() && ref.conversation != q.conversation)
            || std::find(q.except.begin(), q.except.end(), ref.conversation) != q.except.end()) {
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

// The semantic tier's link to Qdrant. LMDB is the source of truth: a
// fact is acknowledged once committed there, then upserted. Until Qdrant
// has it, it waits in `upserts` and searches score it exactly, so a search
// right after an add finds it whatever Qdrant's state. Writes go one at a
// time, in order, retried with backoff while Qdrant fails.
struct qdrant_link {
  memory::qdrant_spec spec;
  std::shared_ptr<net::http_client> client;
  bool ready = false;     // the collection was checked against LMDB
  bool syncing = false;   // a check is on the way
  std::string not_ready = "the first check of the collection has not finished";
  struct pending {
    std::vector<float> vector;
    std::string conversation;
  };
  std::map<uint64_t, pending> upserts;  // committed in LMDB, not known in Qdrant
  std::set<uint64_t> deletes;           // erased from LMDB, maybe still in Qdrant
  std::string store_id;  // in every point's payload: sequence numbers are per store
  bool store_id_stored = true;  // false until a new store id is committed
  bool writing = false;
  bool retry_due = false;
  milliseconds backoff{0};
  uint64_t vectors = 0;  // facts with a vector, in LMDB
  uint64_t next_op = 1;
  std::map<uint64_t, std::function<void(int, std::string&, std::string&)>> ops;
  // The collection's points (id -> embedder) as the check found them.
  std::map<uint64_t, std::string> seen;
};

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
  // Dedup key -> the adds waiting for the commit of the fact stored under
  // it: they are answered with it once it is committed, or with its error.
  std::map<std::string, std::vector<caf::typed_response_promise<memory_item>>> dedup_pending;
  std::set<uint64_t> deleting;                        // facts whose erase is on the way
  std::multimap<int64_t, uint64_t> expiring;          // expires_ms -> fact, to purge
  // Each conversation's facts: a search within one scores them exactly,
  // since the index's best of all facts may hold none of them.
  std::unordered_map<std::string, std::set<uint64_t>> by_conversation;
  std::unique_ptr<struct qdrant_link> qdrant;  // set: Qdrant searches instead of the index
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
  meta << node_embedder(st.opts) << "\n" << st.next_seq << "\n";
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
    bool decoded = store::decode(v, item);
    if (decoded && item.expires_ms > 0) {
      st.expiring.emplace(item.expires_ms, seq);
    }
    if (decoded && !item.conversation.empty() && !st.qdrant) {
      st.by_conversation[item.conversation].insert(seq);  // Qdrant filters by itself
    }
    if (decoded && item.embedding.size() == st.opts.dims) {
      if (st.qdrant) {
        ++st.qdrant->vectors;
      } else {
        stored.emplace(seq, std::move(item.embedding));
      }
    }
    return true;
  }, error);
  if (!error.empty()) {
    // A partial view would drop vectors from the saved index: the tier
    // refuses, and leaves the file as it is.
    if (!st.refused) {
      st.refused = make_error(errc::store_failure, "the facts cannot be read: " + error);
    }
    st.log->error("semantic memory refuses to work: {}", error);
    st.opts.index_path.clear();
    st.index = std::make_shared<memory::vector_index>(io);
    st.index_source = "not loaded";
    return;
  }
  std::string counter;
  if (st.env->get("memory_meta", "semantic/next_seq", counter, error) && counter.size() == 8) {
    st.next_seq = std::max(st.next_seq, store::decode_seq(counter));
  }
  if (st.qdrant) {
    // Qdrant is the index: it is checked against LMDB once it answers.
    st.index_source = "qdrant";
    st.log->info("semantic tier on Qdrant collection={} facts={}", st.qdrant->spec.collection,
                 st.items);
    return;
  }
  uint64_t watermark = 0;
  std::string embedder;
  {
    std::ifstream meta{st.opts.index_path + ".meta"};
    meta >> embedder >> watermark;
  }
  std::unique_ptr<memory::vector_index> loaded;
  if (!st.opts.index_path.empty() && embedder == node_embedder(st.opts)) {
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

// -- the Qdrant backend ---------------------------------------------------------

using qdrant_atom = caf::atom_constant<caf::atom("kw_qdrant")>;

// Sends a request to Qdrant; `then(status, body, error)` runs in the actor.
void qdrant_call(semantic_actor* self, net::client_request req,
                 std::function<void(int, std::string&, std::string&)> then) {
  auto& q = *self->state.qdrant;
  auto id = q.next_op++;
  q.ops.emplace(id, std::move(then));
  auto me = caf::actor_cast<caf::actor>(self);
  net::client_callbacks cb;
  cb.on_done = [me, id](net::client_result res) {
    caf::anon_send(me, qdrant_atom::value, id, static_cast<int32_t>(res.status),
                   std::move(res.body), std::move(res.error));
  };
  q.client->send(std::move(req), std::move(cb));
}

void qdrant_flush(semantic_actor* self);
void qdrant_sync(semantic_actor* self);
void qdrant_index_then_list(semantic_actor* self);

// A 404 once in step: the collection is gone (dropped, or Qdrant lost its
// data). The tier checks it again, which makes it and fills it from LMDB.
bool qdrant_lost(semantic_actor* self, int status) {
  auto& q = *self->state.qdrant;
  if (status != 404 || !q.ready) {
    return false;
  }
  self->state.log->warn("Qdrant collection={} is gone: checking it again", q.spec.collection);
  q.ready = false;
  q.not_ready = "the collection was gone and is being made again";
  // A write still on the way clears `writing` when it ends: one at a time.
  qdrant_sync(self);
  return true;
}

// Tries again later: the check while it has not passed, else the writes.
void qdrant_retry(semantic_actor* self, const std::string& why) {
  auto& q = *self->state.qdrant;
  q.backoff = std::min<milliseconds>(std::max<milliseconds>(q.backoff * 2, milliseconds(500)),
                                     milliseconds(30'000));
  self->state.log->warn("Qdrant: {}; again in {} ms", why, q.backoff.count());
  if (!q.retry_due) {
    q.retry_due = true;
    self->delayed_send(self, q.backoff, qdrant_atom::value, tick_atom::value);
  }
}

// A step of the check failed (q.not_ready says which): the tick after the
// backoff starts the check again.
void qdrant_check_failed(semantic_actor* self) {
  auto& q = *self->state.qdrant;
  q.syncing = false;
  qdrant_retry(self, q.not_ready);
}

// The check is done: what LMDB has and Qdrant lacks is upserted, what
// Qdrant has and LMDB lost is deleted.
void qdrant_reconcile(semantic_actor* self) {
  auto& st = self->state;
  auto& q = *st.qdrant;
  auto name = node_embedder(st.opts);
  std::set<uint64_t> in_store;
  std::string error;
  st.env->scan("facts", "", "", [&](std::string_view key, std::string_view v) {
    memory_item item;
    auto seq = store::decode_seq(key);
    if (store::decode(v, item) && item.embedding.size() == st.opts.dims) {
      in_store.insert(seq);
      auto there = q.seen.find(seq);
      // Missing, or put there by another embedder before the tier was
      // named again: LMDB's vector goes (back) in.
      if ((there == q.seen.end() || there->second != name) && q.deletes.count(seq) == 0) {
        q.upserts[seq] = qdrant_link::pending{std::move(item.embedding), item.conversation};
      }
    }
    return true;
  }, error);
  if (!error.empty()) {
    q.not_ready = "the facts cannot be read: " + error;
    return qdrant_check_failed(self);
  }
  std::size_t stale = 0;
  for (auto& [seq, embedder] : q.seen) {
    if (in_store.count(seq) == 0) {
      q.deletes.insert(seq);
      ++stale;
    }
  }
  st.log->info("Qdrant collection={} in step: points={} to_upsert={} to_delete={}",
               q.spec.collection, q.seen.size(), q.upserts.size(), stale);
  q.seen.clear();
  q.ready = true;
  q.syncing = false;
  q.not_ready.clear();
  q.backoff = milliseconds(0);
  qdrant_flush(self);
}

void qdrant_scroll_from(semantic_actor* self, std::optional<uint64_t> offset) {
  auto& q = *self->state.qdrant;
  qdrant_call(self, memory::qdrant_scroll(q.spec, offset, 1000),
              [=](int status, std::string& body, std::string& error) {
                auto& st = self->state;
                auto& q = *st.qdrant;
                memory::qdrant_page page;
                auto why = error.empty() ? memory::read_qdrant_scroll(status, body, page) : error;
                if (!why.empty()) {
                  q.not_ready = "listing the collection failed: " + why;
                  return qdrant_check_failed(self);
                }
                for (auto& p : page.points) {
                  if (p.store != q.store_id) {
                    st.refused = make_error(
                      errc::conflict, "the Qdrant collection " + q.spec.collection
                                        + " holds points of another store (\"" + p.store
                                        + "\"); this node's is \"" + q.store_id + "\". Give "
                                        "each store its own collection (memory.qdrant_collection)",
                      "vector_backend");
                    st.log->error("Qdrant collection={} holds points of another store",
                                  q.spec.collection);
                    q.syncing = false;
                    return;
                  }
                  q.seen[p.id] = p.embedder;
                }
                if (page.next) {
                  return qdrant_scroll_from(self, page.next);
                }
                qdrant_reconcile(self);
              });
}

// Makes sure the conversation filter has its index (Qdrant answers ok
// when it exists), then lists the collection.
void qdrant_index_then_list(semantic_actor* self) {
  auto& q = *self->state.qdrant;
  qdrant_call(self, memory::qdrant_index_conversation(q.spec),
              [=](int status, std::string& body, std::string& error) {
                auto why = error.empty() ? memory::read_qdrant_ok(status, body) : error;
                if (!why.empty()) {
                  // Searches within a conversation are slower without it,
                  // not wrong.
                  self->state.log->warn("Qdrant: no conversation index: {}", why);
                }
                qdrant_scroll_from(self, std::nullopt);
              });
}

// Checks the collection (made if missing: spec.dims, cosine), then lists it.
void qdrant_sync(semantic_actor* self) {
  auto& q = *self->state.qdrant;
  if (q.syncing) {
    return;
  }
  q.syncing = true;
  if (!q.store_id_stored) {
    // A new store's id is committed before any point carries it: a point
    // written with an id that a crash then lost would look like another
    // store's at the next start.
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "semantic/store_id", q.store_id});
    self->request(self->state.opts.writer, std::chrono::minutes(2), std::move(wb))
      .then(
        [=](uint64_t) {
          auto& q = *self->state.qdrant;
          q.store_id_stored = true;
          q.syncing = false;
          qdrant_sync(self);
        },
        [=](caf::error& e) {
          auto& q = *self->state.qdrant;
          q.not_ready = "the store id cannot be written: " + describe(e).message;
          qdrant_check_failed(self);
        });
    return;
  }
  q.seen.clear();
  qdrant_call(self, memory::qdrant_get_collection(q.spec),
              [=](int status, std::string& body, std::string& error) {
                auto& st = self->state;
                auto& q = *st.qdrant;
                memory::qdrant_collection info;
                auto why = error.empty() ? memory::read_qdrant_collection(status, body, info)
                                         : error;
                if (!why.empty()) {
                  q.not_ready = "Qdrant cannot be reached at " + q.spec.url + ": " + why;
                  return qdrant_check_failed(self);
                }
                if (info.missing) {
                  st.log->info("Qdrant collection={} made dims={}", q.spec.collection,
                               q.spec.dims);
                  return qdrant_call(self, memory::qdrant_create_collection(q.spec),
                                     [=](int status, std::string& body, std::string& error) {
                                       auto& q = *self->state.qdrant;
                                       auto why = error.empty()
                                                    ? memory::read_qdrant_ok(status, body)
                                                    : error;
                                       if (!why.empty()) {
                                         q.not_ready = "making the collection failed: " + why;
                                         return qdrant_check_failed(self);
                                       }
                                       qdrant_index_then_list(self);
                                     });
                }
                if (info.dims != st.opts.dims || (!info.distance.empty()
                                                  && info.distance != "Cosine")) {
                  st.refused = make_error(
                    errc::conflict, "the Qdrant collection " + q.spec.collection + " holds "
                                      + std::to_string(info.dims) + "-dimension vectors by "
                                      + info.distance + " distance; this node needs "
                                      + std::to_string(st.opts.dims) + " by Cosine: use "
                                      "another collection",
                    "vector_backend");
                  st.log->error("Qdrant collection={} does not fit dims={} distance={}",
                                q.spec.collection, info.dims, info.distance);
                  q.syncing = false;
                  return;
                }
                qdrant_index_then_list(self);
              });
}

// Sends the next write: deletes first (a fact deleted while its upsert was
// on the way is then removed after it), then upserts, a batch at a time.
void qdrant_flush(semantic_actor* self) {
  auto& st = self->state;
  auto& q = *st.qdrant;
  if (!q.ready || q.writing || q.retry_due) {
    return;
  }
  auto done = [=](std::vector<uint64_t> sent, bool deleted) {
    return [=](int status, std::string& body, std::string& error) {
      auto& q = *self->state.qdrant;
      q.writing = false;
      auto why = error.empty() ? memory::read_qdrant_ok(status, body) : error;
      if (error.empty() && qdrant_lost(self, status)) {
        return;
      }
      if (!why.empty()) {
        return qdrant_retry(self, std::string{deleted ? "delete" : "upsert"} + " of "
                                    + std::to_string(sent.size()) + " points failed: " + why);
      }
      q.backoff = milliseconds(0);
      for (auto seq : sent) {
        if (deleted) {
          q.deletes.erase(seq);
        } else {
          q.upserts.erase(seq);
        }
      }
      qdrant_flush(self);
    };
  };
  if (!q.deletes.empty()) {
    std::vector<uint64_t> seqs;
    for (auto seq : q.deletes) {
      if (seqs.size() == 512) {
        break;
      }
      seqs.push_back(seq);
    }
    q.writing = true;
    auto req = memory::qdrant_delete(q.spec, seqs);
    return qdrant_call(self, std::move(req), done(std::move(seqs), true));
  }
  if (!q.upserts.empty()) {
    std::vector<uint64_t> seqs;
    std::vector<memory::qdrant_point> points;
    auto name = node_embedder(st.opts);
    for (auto& [seq, p] : q.upserts) {
      if (points.size() == 128) {
        break;
      }
      seqs.push_back(seq);
      points.push_back(memory::qdrant_point{seq, make_id("sem", seq), p.conversation, name,
                                            q.store_id, p.vector});
    }
    q.writing = true;
    auto req = memory::qdrant_upsert(q.spec, points);
    return qdrant_call(self, std::move(req), done(std::move(seqs), false));
  }
}

// Asks Qdrant for the nearest points, adds the facts it does not have yet
// (scored exactly), leaves out those deleted, and answers `rp`.
void qdrant_search(semantic_actor* self, const search_memory& query, std::vector<float> qv,
                   caf::typed_response_promise<std::vector<memory_hit>> rp) {
  auto& st = self->state;
  auto& q = *st.qdrant;
  if (!q.ready) {
    rp.deliver(make_error(errc::backend_unavailable,
                          "semantic search waits for Qdrant: " + q.not_ready, "vector_backend"));
    return;
  }
  if (zero(qv)) {
    rp.deliver(std::vector<memory_hit>{});
    return;
  }
  // Expired facts are left out after the search: a few more are asked for.
  auto want = std::min<std::size_t>(query.limit * 2 + q.deletes.size(), 10'000);
  auto req = memory::qdrant_search(q.spec, qv, want, query.conversation);
  // Facts not in Qdrant yet are scored now: an upsert that lands before
  // Qdrant runs the search would take them out of `upserts` unseen.
  std::map<uint64_t, float> before;
  for (auto& [seq, p] : q.upserts) {
    if (query.conversation.empty() || p.conversation == query.conversation) {
      before[seq] = memory::dot(qv.data(), p.vector.data(), st.opts.dims);
    }
  }
  qdrant_call(self, std::move(req), [=](int status, std::string& body,
                                        std::string& error) mutable {
    auto& st = self->state;
    auto& q = *st.qdrant;
    std::vector<std::pair<uint64_t, float>> found;
    auto why = error.empty() ? memory::read_qdrant_search(status, body, found) : error;
    if (!why.empty()) {
      st.log->warn("Qdrant search failed: {}", why);
      auto code = !error.empty() ? errc::backend_unavailable
                  : status >= 200 && status < 300 ? errc::backend_protocol
                                                  : errc::backend_error;
      if (error.empty()) {
        qdrant_lost(self, status);
      }
      rp.deliver(make_error(code, "Qdrant search failed: " + why, "vector_backend"));
      return;
    }
    auto scores = before;
    for (auto [seq, score] : found) {
      if (q.deletes.count(seq) == 0) {
        scores[seq] = score;
      }
    }
    // And those added while the search was out.
    for (auto& [seq, p] : q.upserts) {
      if (query.conversation.empty() || p.conversation == query.conversation) {
        scores[seq] = memory::dot(qv.data(), p.vector.data(), st.opts.dims);
      }
    }
    std::vector<std::pair<uint64_t, float>> ranked(scores.begin(), scores.end());
    std::sort(ranked.begin(), ranked.end(),
              [](auto& a, auto& b) { return a.second > b.second; });
    auto now = now_ms();
    std::vector<memory_hit> hits;
    for (auto [seq, sim] : ranked) {
      if (hits.size() >= query.limit) {
        break;
      }
      auto item = read_item(*st.env, "facts", seq, "semantic", make_id("sem", seq));
      if (!item || (item->expires_ms > 0 && item->expires_ms <= now)
          || (!query.conversation.empty() && item->conversation != query.conversation)) {
        continue;
      }
      item->embedding.clear();
      hits.push_back(memory_hit{std::move(*item), sim, sim, 0, "vector"});
    }
    rp.deliver(std::move(hits));
  });
}

// A fact's erase is committed: out of the index (or Qdrant) and the counts.
void forget_fact(semantic_actor* self, uint64_t seq, bool had_vector,
                 const std::string& conversation) {
  auto& st = self->state;
  st.deleting.erase(seq);
  if (auto c = st.by_conversation.find(conversation); c != st.by_conversation.end()) {
    c->second.erase(seq);
    if (c->second.empty()) {
      st.by_conversation.erase(c);
    }
  }
  if (st.qdrant) {
    if (had_vector && st.qdrant->vectors > 0) {
      --st.qdrant->vectors;
    }
    st.qdrant->upserts.erase(seq);
    st.qdrant->deletes.insert(seq);
    qdrant_flush(self);
  } else {
    st.index->remove(seq);
  }
  if (st.items > 0) {
    --st.items;
  }
  ++st.unsaved;
}

// The writes that erase a fact: the fact, and its dedup record when it
// still names this fact.
void erase_fact(semantic_state& st, write_batch& wb, uint64_t seq, const memory_item& item) {
  wb.ops.push_back(kv_op{kv_op::erase, "facts", store::encode_seq(seq), {}});
  std::string names;
  std::string error;
  if (!item.dedup_key.empty() && st.dedup_pending.count(item.dedup_key) == 0
      && st.env->get("memory_meta", "dedup/" + item.dedup_key, names, error)
      && names == make_id("sem", seq)) {
    wb.ops.push_back(kv_op{kv_op::erase, "memory_meta", "dedup/" + item.dedup_key, {}});
  }
}

// Erases the facts whose time to live has passed (a search already leaves
// them out), up to 1,000 each purge_every.
void purge_facts(semantic_actor* self) {
  auto& st = self->state;
  self->delayed_send(self, st.opts.purge_every, tick_atom::value);
  if (st.refused) {
    return;
  }
  auto now = now_ms();
  write_batch wb;
  struct expired {
    uint64_t seq;
    bool had_vector;
    std::string conversation;
  };
  std::vector<expired> gone;
  std::vector<uint64_t> later;
  while (!st.expiring.empty() && st.expiring.begin()->first <= now && gone.size() < 1000) {
    auto seq = st.expiring.begin()->second;
    st.expiring.erase(st.expiring.begin());
    if (st.deleting.count(seq) > 0) {
      later.push_back(seq);  // a delete is on the way; should it fail, the purge is
      continue;
    }
    auto item = read_item(*st.env, "facts", seq, "semantic", make_id("sem", seq));
    if (!item) {
      if (describe(item.error()).code != errc::not_found) {
        later.push_back(seq);  // not readable now: the next purge tries again
      }
      continue;  // deleted before it expired
    }
    st.deleting.insert(seq);
    erase_fact(st, wb, seq, *item);
    gone.push_back(expired{seq, !item->embedding.empty(), item->conversation});
  }
  for (auto seq : later) {
    st.expiring.emplace(0, seq);
  }
  if (gone.empty()) {
    return;
  }
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then(
      [=](uint64_t) {
        for (auto& g : gone) {
          forget_fact(self, g.seq, g.had_vector, g.conversation);
        }
        self->state.log->info("semantic facts expired count={}", gone.size());
      },
      [=](caf::error&) {
        // Back in line for the next minute.
        for (auto& g : gone) {
          self->state.deleting.erase(g.seq);
          self->state.expiring.emplace(0, g.seq);
        }
      });
}

// The fact stored before under `key`, or one on its way to the store.
std::optional<memory_item> find_dedup(semantic_state& st, const std::string& key) {
  if (key.empty()) {
    return std::nullopt;
  }
  std::string existing;
  std::string error;
  if (st.env->get("memory_meta", "dedup/" + key, existing, error)) {
    auto seq = seq_of(existing, "sem");
    auto found = read_item(*st.env, "facts", seq, "semantic", existing);
    // An expired fact, or one being erased, is as good as gone: the add
    // stores a new one.
    if (found && st.deleting.count(seq) == 0
        && (found->expires_ms == 0 || found->expires_ms > now_ms())) {
      found->embedding.clear();
      return std::move(*found);
    }
  }
  return std::nullopt;
}

// Commits a fact with its vector, then indexes it and answers `rp`.
void store_fact(semantic_actor* self, memory_item item,
                caf::typed_response_promise<memory_item> rp) {
  auto& st = self->state;
  // The dedup key may have been stored while the vector was made, or be on
  // its way: this add waits for that commit.
  if (!item.dedup_key.empty()) {
    if (auto pending = st.dedup_pending.find(item.dedup_key); pending != st.dedup_pending.end()) {
      pending->second.push_back(rp);
      return;
    }
  }
  if (auto found = find_dedup(st, item.dedup_key)) {
    rp.deliver(std::move(*found));
    return;
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
    st.dedup_pending[item.dedup_key];
  }
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then(
      [=](uint64_t) mutable {
        auto& st = self->state;
        std::vector<caf::typed_response_promise<memory_item>> waiting;
        if (auto pending = st.dedup_pending.find(item.dedup_key);
            !item.dedup_key.empty() && pending != st.dedup_pending.end()) {
          waiting = std::move(pending->second);
          st.dedup_pending.erase(pending);
        }
        auto shown = item;
        shown.embedding.clear();
        for (auto& w : waiting) {
          w.deliver(shown);
        }
        ++st.items;
        if (item.expires_ms > 0) {
          st.expiring.emplace(item.expires_ms, seq);
        }
        if (!item.conversation.empty() && !st.qdrant) {
          st.by_conversation[item.conversation].insert(seq);
        }
        std::string error;
        if (st.qdrant) {
          if (!item.embedding.empty()) {
            ++st.qdrant->vectors;
            st.qdrant->upserts[seq] = qdrant_link::pending{item.embedding, item.conversation};
            qdrant_flush(self);
          }
        } else {
          if (!item.embedding.empty() && !st.index->add(seq, item.embedding.data(), error)) {
            st.log->error("semantic index add failed id={} error=\"{}\"", item.id, error);
          }
          if (++st.unsaved >= st.opts.save_every) {
            save_index(st);
          }
        }
        rp.deliver(std::move(item));
      },
      [=](caf::error& e) mutable {
        auto& st = self->state;
        if (auto pending = st.dedup_pending.find(item.dedup_key);
            !item.dedup_key.empty() && pending != st.dedup_pending.end()) {
          for (auto& w : pending->second) {
            w.deliver(e);
          }
          st.dedup_pending.erase(pending);
        }
        rp.deliver(std::move(e));
      });
}

// The facts nearest to `qv`, without those expired or of other conversations.
std::vector<memory_hit> search_facts(semantic_state& st, const search_memory& q,
                                     const std::vector<float>& qv) {
  std::vector<memory_hit> hits;
  if (zero(qv)) {
    return hits;
  }
  auto now = now_ms();
  if (!q.conversation.empty()) {
    auto c = st.by_conversation.find(q.conversation);
    if (c == st.by_conversation.end()) {
      return hits;
    }
    // A conversation's facts are few next to the tier's: scored exactly
    // with their vectors from LMDB. Past 4,096 of them, the index is asked
    // for more than `limit` and the others left out.
    if (c->second.size() <= 4096) {
      for (auto seq : c->second) {
        auto item = read_item(*st.env, "facts", seq, "semantic", make_id("sem", seq));
        if (!item || (item->expires_ms > 0 && item->expires_ms <= now)
            || item->embedding.size() != st.opts.dims) {
          continue;
        }
        auto sim = memory::dot(qv.data(), item->embedding.data(), st.opts.dims);
        item->embedding.clear();
        hits.push_back(memory_hit{std::move(*item), sim, sim, 0, "vector"});
      }
      return best(std::move(hits), q.limit);
    }
  }
  // Some found may be expired or in another conversation: ask for more.
  auto want = q.conversation.empty() ? q.limit : q.limit * 16;
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
}

caf::behavior semantic(semantic_actor* self, std::shared_ptr<store::environment> env,
                       memory_options opts) {
  auto& st = self->state;
  st.env = std::move(env);
  st.opts = std::move(opts);
  write_batch first;
  st.refused = check_embedder(*st.env, "semantic", "facts", node_embedder(st.opts),
                              first);
  if (st.opts.qdrant) {
    st.qdrant = std::make_unique<qdrant_link>();
    st.qdrant->spec = *st.opts.qdrant;
    st.qdrant->spec.dims = st.opts.dims;
    st.qdrant->client = st.opts.client;
    // The store's own id marks its points: two stores never share one
    // collection by mistake.
    std::string error;
    if (!st.env->get("memory_meta", "semantic/store_id", st.qdrant->store_id, error)) {
      if (!error.empty() && !st.refused) {
        st.refused = make_error(errc::store_failure, "the store id cannot be read: " + error);
      }
      st.qdrant->store_id = make_uuid();
      st.qdrant->store_id_stored = false;  // written by the first check
    }
  }
  open_index(st);
  // After the facts were read: a store that cannot be read gets no writes.
  if (!st.refused) {
    write_first(self, st.opts.writer, std::move(first), "semantic");
  }
  if (st.qdrant && !st.refused) {
    qdrant_sync(self);
  }
  self->delayed_send(self, st.opts.purge_every, tick_atom::value);
  // The index is saved when the tier stops, so the next start loads it.
  auto index = st.index;
  auto path = st.opts.index_path;
  auto name = node_embedder(st.opts);
  self->attach_functor([index, path, name](const caf::error&) {
    if (path.empty() || !index) {
      return;
    }
    std::string error;
    if (index->save(path, error)) {
      // The watermark is not known here; the next start checks every vector.
      std::ofstream meta{path + ".meta", std::ios::trunc};
      meta << name << "\n0\n";
    }
  });
  return {
    [=](add_memory& cmd) -> caf::result<memory_item> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      auto item = std::move(cmd.item);
      bool needs_vector = false;
      if (auto err = check_item(item, st.opts, "semantic", needs_vector)) {
        return err;
      }
      auto rp = self->make_response_promise<memory_item>();
      if (auto pending = st.dedup_pending.find(item.dedup_key);
          !item.dedup_key.empty() && pending != st.dedup_pending.end()) {
        // The same key is being committed: this add is answered by that.
        pending->second.push_back(rp);
        return rp;
      }
      if (auto found = find_dedup(st, item.dedup_key)) {
        rp.deliver(std::move(*found));
        return rp;
      }
      if (!needs_vector) {
        store_fact(self, std::move(item), rp);
        return rp;
      }
      auto name = node_embedder(st.opts);
      embed(self, st.opts, {item.text},
            [=](std::vector<std::vector<float>>& v) mutable {
              item.embedding = std::move(v.front());
              item.embedder = name;
              finish_vector(item);
              store_fact(self, std::move(item), rp);
            },
            [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
      return rp;
    },
    [=](search_memory& q) -> caf::result<std::vector<memory_hit>> {
      auto& st = self->state;
      if (st.refused) {
        return st.refused;
      }
      if (q.limit == 0) {
        return std::vector<memory_hit>{};
      }
      auto rp = self->make_response_promise<std::vector<memory_hit>>();
      embed(self, st.opts, {q.query},
            [=](std::vector<std::vector<float>>& v) mutable {
              if (self->state.qdrant) {
                qdrant_search(self, q, std::move(v.front()), rp);
              } else {
                rp.deliver(search_facts(self->state, q, v.front()));
              }
            },
            [=](caf::error& e) mutable { rp.deliver(std::move(e)); }, true);
      return rp;
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
      auto item = seq == 0 || st.deleting.count(seq) > 0
                    ? caf::expected<memory_item>{not_found("semantic", cmd.id)}
                    : read_item(*st.env, "facts", seq, "semantic", cmd.id);
      if (!item) {
        return std::move(item.error());
      }
      // A second delete of the same fact while the first is on the way
      // finds nothing, so the counts fall once.
      st.deleting.insert(seq);
      write_batch wb;
      erase_fact(st, wb, seq, *item);
      auto rp = self->make_response_promise<bool>();
      self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
        .then(
          [=](uint64_t) mutable {
            forget_fact(self, seq, !item->embedding.empty(), item->conversation);
            rp.deliver(true);
          },
          [=](caf::error& e) mutable {
            self->state.deleting.erase(seq);
            rp.deliver(std::move(e));
          });
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
    [=](qdrant_atom, uint64_t id, int32_t status, std::string& body, std::string& error) {
      auto& q = self->state.qdrant;
      if (!q) {
        return;
      }
      auto i = q->ops.find(id);
      if (i == q->ops.end()) {
        return;
      }
      auto then = std::move(i->second);
      q->ops.erase(i);
      then(status, body, error);
    },
    [=](tick_atom) { purge_facts(self); },
    [=](qdrant_atom, tick_atom) {
      auto& st = self->state;
      if (!st.qdrant || st.refused) {
        return;
      }
      st.qdrant->retry_due = false;
      if (st.qdrant->ready) {
        qdrant_flush(self);
      } else {
        qdrant_sync(self);
      }
    },
    [=](stats_atom) {
      auto& st = self->state;
      memory_tier_stats s;
      s.tier = "semantic";
      s.items = st.items;
      s.embedder = node_embedder(st.opts);
      s.dimensions = static_cast<uint32_t>(st.opts.dims);
      if (st.qdrant) {
        auto& q = *st.qdrant;
        s.index_items = q.ready ? q.vectors - std::min<uint64_t>(q.vectors, q.upserts.size()) : 0;
        s.index_source = q.ready ? "qdrant" : "qdrant (not in step: " + q.not_ready + ")";
      } else {
        s.index_items = st.index->size();
        s.index_source = st.index_source;
      }
      s.loaded_ms = st.loaded_ms;
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
