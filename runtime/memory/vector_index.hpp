// An approximate nearest-neighbour index of unit vectors (HNSW, through
// hnswlib), kept out of this header so that only one file compiles it.
// Not thread-safe: one actor owns it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace kowalski::memory {

struct index_options {
  std::size_t dims = 384;
  std::size_t m = 16;                 ///< links per node
  std::size_t ef_construction = 200;  ///< breadth while inserting
  std::size_t ef_search = 64;         ///< breadth while searching (at least k)
};

class vector_index {
public:
  explicit vector_index(index_options opts);
  ~vector_index();
  vector_index(const vector_index&) = delete;
  vector_index& operator=(const vector_index&) = delete;

  /// Reads an index written by save(); nullptr (and `error`) when the file
  /// is missing, unreadable or of other dimensions.
  static std::unique_ptr<vector_index> load(const std::string& path, index_options opts,
                                            std::string& error);

  /// Adds (or replaces) the vector of `label`; grows as needed. False (and
  /// `error`) when memory runs out.
  bool add(uint64_t label, const float* v, std::string& error);

  /// Hides `label` from searches; false when it is not in the index.
  bool remove(uint64_t label);

  bool contains(uint64_t label) const;

  /// The `k` nearest labels to `q`, by cosine similarity, best first.
  std::vector<std::pair<uint64_t, float>> search(const float* q, std::size_t k) const;

  /// Every label, removed ones left out.
  std::vector<uint64_t> labels() const;

  /// Writes the index to `path` (through a temporary file and a rename).
  bool save(const std::string& path, std::string& error) const;

  std::size_t size() const;  ///< vectors searchable
  std::size_t dims() const;

private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace kowalski::memory
