// The memory tiers, one actor each: working (per conversation, bounded, in
// memory), episodic (every turn, durable, scored by similarity and
// recency) and semantic (facts and summaries, durable, searched through an
// HNSW index; plus a graph of triples).
#pragma once

#include "runtime/memory/qdrant.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

namespace kowalski {

namespace store {
class environment;
}

struct memory_options {
  std::size_t dims = 384;  ///< of every vector the tiers keep
  /// The node's embedder (spawn_embedder) and the name it stores with its
  /// vectors. Without one the built-in hashing embedder runs in place.
  caf::actor embedder;
  std::string embedder_name;
  /// How long a request may wait for a free embedder call (adds, searches),
  /// and how long the tier waits in all, calls and retries included.
  std::chrono::milliseconds embed_timeout{60'000};
  std::chrono::milliseconds embed_search_timeout{10'000};
  std::chrono::milliseconds embed_wait{110'000};
  std::chrono::milliseconds embed_search_wait{25'000};
  /// Episodic score: similarity_weight x cosine + (1 - similarity_weight) x
  /// recency, recency falling linearly to 0 over recency_horizon.
  double similarity_weight = 0.85;
  std::chrono::milliseconds recency_horizon{std::chrono::hours(24 * 30)};
  std::size_t working_items = 100;          ///< per conversation
  std::size_t working_conversations = 10'000;  ///< least recently used go first
  std::string index_path;  ///< semantic: where the HNSW index is kept between starts
  std::size_t index_m = 16;
  std::size_t index_ef_construction = 200;
  std::size_t index_ef_search = 64;
  uint64_t save_every = 10'000;  ///< semantic: index saved after this many changes
  /// How often expired items are erased (and episodes the embedder failed
  /// are embedded again).
  std::chrono::milliseconds purge_every{60'000};
  /// Semantic: search through this Qdrant collection instead of the HNSW
  /// index (LMDB stays the source of truth), over `client`.
  std::optional<memory::qdrant_spec> qdrant;
  std::shared_ptr<net::http_client> client;
  caf::actor writer;
};

/// Every tier answers:
/// - add_memory -> memory_item (as stored, with its id). invalid_argument
///   for empty text or a vector of the wrong size (field embedding),
///   conflict for a vector of another embedder (field embedder) or a tier
///   whose stored vectors come from another embedder than the node's.
/// - search_memory -> std::vector<memory_hit>, best first.
/// - get_memory -> memory_item; delete_memory -> bool; not_found.
/// - (stats_atom) -> memory_tier_stats.
/// An item whose embedder is "none" gets no vector: it is found by its
/// keywords only (the episodic tier's fallback). So does an episode when
/// the remote embedder fails; a semantic add then fails with its error, and
/// an episodic search falls back to keywords while a semantic one fails.
/// The working tier keeps no vectors: it is searched by keywords and recency.
/// The semantic tier also answers add_triples and query_triples.
/// Durable tiers reply to add_memory once the item is committed; adds are
/// not waited on one by one, so concurrent ones share a commit.
caf::actor spawn_working_memory(caf::actor_system& sys, memory_options opts);
caf::actor spawn_episodic_memory(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                                 memory_options opts);
caf::actor spawn_semantic_memory(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                                 memory_options opts);

}  // namespace kowalski
