// The wire side of the optional Qdrant backend of the semantic tier (its
// REST API, v1.x): requests to build and answers to read. LMDB stays the
// source of truth; the collection is an index the tier can rebuild.
#pragma once

#include "runtime/net/http_client.hpp"

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::memory {

struct qdrant_spec {
  std::string url = "http://127.0.0.1:6333";
  std::string collection = "kowalski_memory";
  std::string api_key;  ///< sent as the api-key header; never logged
  std::size_t dims = 384;
  std::chrono::milliseconds timeout{10'000};
};

/// One point: our sequence number is its id (Qdrant takes unsigned
/// integers); the payload keeps our id, conversation, embedder and the
/// store it belongs to (sequence numbers are per store).
struct qdrant_point {
  uint64_t seq = 0;
  std::string id;
  std::string conversation;
  std::string embedder;
  std::string store;
  std::vector<float> vector;
};

net::client_request qdrant_get_collection(const qdrant_spec& spec);
/// Creates the collection: spec.dims, cosine distance.
net::client_request qdrant_create_collection(const qdrant_spec& spec);
/// Upserts and waits until they are applied.
net::client_request qdrant_upsert(const qdrant_spec& spec, const std::vector<qdrant_point>& pts);
net::client_request qdrant_delete(const qdrant_spec& spec, const std::vector<uint64_t>& seqs);
/// The `limit` nearest points, only of `conversation` when it is not empty.
net::client_request qdrant_search(const qdrant_spec& spec, const std::vector<float>& vector,
                                  std::size_t limit, const std::string& conversation);
/// A page of point ids with their embedder and store, from `offset` (none:
/// the start).
net::client_request qdrant_scroll(const qdrant_spec& spec, std::optional<uint64_t> offset,
                                  std::size_t limit);
/// A keyword index on the payload's conversation, for filtered searches.
net::client_request qdrant_index_conversation(const qdrant_spec& spec);

/// The answer to qdrant_get_collection. `missing` when it does not exist.
struct qdrant_collection {
  bool missing = false;
  std::size_t dims = 0;
  std::string distance;
};

/// Each reader returns an empty string on success, else what went wrong
/// (the status and Qdrant's own message, or what was not as expected).
std::string read_qdrant_collection(int status, std::string_view body, qdrant_collection& out);
/// A write's answer: 2xx, "status":"ok", and a result that says
/// "completed" when it says anything (wait=true).
std::string read_qdrant_ok(int status, std::string_view body);
std::string read_qdrant_search(int status, std::string_view body,
                               std::vector<std::pair<uint64_t, float>>& out);

struct qdrant_page {
  struct entry {
    uint64_t id = 0;
    std::string embedder;  ///< from the payload; empty when missing
    std::string store;
  };
  std::vector<entry> points;
  std::optional<uint64_t> next;
};
std::string read_qdrant_scroll(int status, std::string_view body, qdrant_page& out);

}  // namespace kowalski::memory
