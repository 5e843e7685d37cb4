// A fake Qdrant for tests: a real HTTP server on 127.0.0.1 that speaks the
// part of Qdrant's REST API the semantic tier uses (collections, upsert,
// delete, search, scroll), searching exactly by cosine. It can be taken
// down (every request gets 503) and brought back, and counts what it got.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kowalski::testing {

class fake_qdrant {
public:
  fake_qdrant();
  ~fake_qdrant();

  fake_qdrant(const fake_qdrant&) = delete;
  fake_qdrant& operator=(const fake_qdrant&) = delete;

  std::string base_url() const;  ///< "http://127.0.0.1:<port>"

  /// While down, every request gets 503 and changes nothing.
  void set_down(bool down);
  /// While writes are down, upserts and deletes get 503; searches work.
  void set_writes_down(bool down);

  /// Makes a collection directly (as another program would).
  void create(const std::string& collection, std::size_t dims,
              const std::string& distance = "Cosine");
  /// Puts a point directly, with `embedder` and `store` in its payload.
  void put(const std::string& collection, uint64_t id, std::vector<float> vector,
           const std::string& embedder, const std::string& store);
  bool has_collection(const std::string& collection) const;
  std::size_t dims(const std::string& collection) const;
  std::size_t points(const std::string& collection) const;
  std::vector<uint64_t> ids(const std::string& collection) const;
  /// Waits until the collection holds `n` points; false if `timeout` passed.
  bool wait_points(const std::string& collection, std::size_t n,
                   std::chrono::milliseconds timeout) const;

  uint64_t requests() const;  ///< every request received
  /// Waits until requests() >= n; false if `timeout` passed first.
  bool wait_requests(uint64_t n, std::chrono::milliseconds timeout) const;
  bool has_conversation_index(const std::string& collection) const;
  uint64_t upsert_requests() const;
  uint64_t search_requests() const;
  std::string last_api_key() const;  ///< the api-key header of the last request

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kowalski::testing
