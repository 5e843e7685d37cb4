// The node's LMDB environment: named databases, direct reads, and the
// transaction used by the single writer actor.
#pragma once

#include "messages/types.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::store {

/// Named databases of a node's environment.
inline constexpr const char* database_names[] = {
  "meta", "conversations", "turns", "batches", "batch_items", "batch_results",
  "rlm_runs", "rlm_turns", "rlm_calls", "memory_meta", "episodes", "facts", "triples",
  "triples_by_entity", "episode_vectors"};

/// Reads inside one read transaction: everything read through it is one
/// consistent snapshot. Valid only inside environment::read().
class reader {
public:
  virtual ~reader() = default;
  virtual bool get(std::string_view db, std::string_view key, std::string& value,
                   std::string& error) const = 0;
  virtual bool scan(std::string_view db, std::string_view prefix, std::string_view from,
                    const std::function<bool(std::string_view, std::string_view)>& fn,
                    std::string& error) const = 0;
};

/// An open LMDB environment. Readers on any thread may call get() and scan()
/// (the environment is opened with MDB_NOTLS, since actors hop threads);
/// apply() is for the store_writer actor only: LMDB allows one writer.
class environment {
public:
  ~environment();

  environment(const environment&) = delete;
  environment& operator=(const environment&) = delete;

  /// Opens (creating if needed) the environment in `dir`. On failure returns
  /// nullptr and sets `error` to a sentence naming the operation.
  static std::shared_ptr<environment> open(const std::string& dir, std::size_t map_size,
                                           std::string& error);

  /// Reads one value. Returns false when the key is absent or on error (then
  /// `error` is set).
  bool get(std::string_view db, std::string_view key, std::string& value,
           std::string& error) const;

  /// Visits keys >= `from` that start with `prefix`, in key order, until `fn`
  /// returns false. Returns false on error.
  bool scan(std::string_view db, std::string_view prefix, std::string_view from,
            const std::function<bool(std::string_view key, std::string_view value)>& fn,
            std::string& error) const;

  /// Runs `fn` inside one read transaction. Returns false (with `error`) when
  /// the transaction cannot begin; otherwise what `fn` returns.
  bool read(const std::function<bool(const reader&)>& fn, std::string& error) const;

  /// Applies all ops of all batches in one durable transaction. An
  /// erase_existing op of an absent key fails it with an error that starts
  /// with `absent_key`.
  bool apply(const std::vector<const write_batch*>& batches, std::string& error);

  static constexpr const char* absent_key = "the key to erase is absent: ";

  /// Cheap liveness probe: a read transaction that stats the environment.
  bool healthy(std::string& error) const;

  const std::string& path() const { return path_; }

  struct impl;  // LMDB handles; defined in store.cpp

private:
  environment() = default;
  std::unique_ptr<impl> impl_;
  std::string path_;
};

/// Big-endian encoding of a sequence number, so keys sort numerically.
std::string encode_seq(uint64_t seq);
uint64_t decode_seq(std::string_view bytes);

/// Record encodings (CAF's binary format behind a version byte).
std::string encode(const conversation_info& x);
std::string encode(const turn& x);
bool decode(std::string_view bytes, conversation_info& x);
bool decode(std::string_view bytes, turn& x);
std::string encode(const batch_info& x);
std::string encode(const batch_item& x);
std::string encode(const batch_item_result& x);
bool decode(std::string_view bytes, batch_info& x);
bool decode(std::string_view bytes, batch_item& x);
bool decode(std::string_view bytes, batch_item_result& x);
std::string encode(const rlm_run_info& x);
std::string encode(const rlm_turn& x);
bool decode(std::string_view bytes, rlm_run_info& x);
bool decode(std::string_view bytes, rlm_turn& x);
std::string encode(const rlm_sub_call& x);
std::string encode(const memory_item& x);
bool decode(std::string_view bytes, memory_item& x);
std::string encode(const add_memories& x);
bool decode(std::string_view bytes, add_memories& x);
std::string encode(const triple& x);
bool decode(std::string_view bytes, triple& x);
bool decode(std::string_view bytes, rlm_sub_call& x);

/// Key of a turn: conversation id, then the big-endian sequence number.
std::string turn_key(const std::string& conversation_id, uint64_t seq);

/// Key of a batch item or its result: batch id (fixed length), then the
/// big-endian item index, so a batch's items sort in input order.
std::string item_key(const std::string& batch_id, uint64_t index);

/// The prefix of exactly the keys item_key(id, ...) makes: the id and the
/// first byte of the index (zero below 2^56), so that the keys of a record
/// whose id extends this one (a child run's "run_x.1.0") are not included.
std::string items_of(const std::string& id);

}  // namespace kowalski::store
