#include "runtime/memory/vector_index.hpp"

#include <hnswlib/hnswlib.h>

#include <atomic>
#include <cstdio>
#include <queue>

#include <unistd.h>
#include <filesystem>
#include <unordered_set>

namespace kowalski::memory {

struct vector_index::impl {
  index_options opts;
  hnswlib::InnerProductSpace space;
  std::unique_ptr<hnswlib::HierarchicalNSW<float>> hnsw;
  std::unordered_set<uint64_t> removed;  // marked deleted, still in the graph

  explicit impl(index_options o) : opts(o), space(o.dims) {
  }
};

vector_index::vector_index(index_options opts) : impl_(std::make_unique<impl>(opts)) {
  impl_->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(
    &impl_->space, 1024, opts.m, opts.ef_construction);
  impl_->hnsw->setEf(opts.ef_search);
}

vector_index::~vector_index() = default;

std::unique_ptr<vector_index> vector_index::load(const std::string& path, index_options opts,
                                                 std::string& error) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    error = "no index file " + path;
    return nullptr;
  }
  std::unique_ptr<vector_index> out{new vector_index(opts)};
  try {
    out->impl_->hnsw = std::make_unique<hnswlib::HierarchicalNSW<float>>(&out->impl_->space,
                                                                          path);
  } catch (const std::exception& e) {
    error = "cannot read " + path + ": " + e.what();
    return nullptr;
  }
  auto& h = *out->impl_->hnsw;
  // hnswlib takes the vector size from the space it is given, not from the
  // file; the file's own layout says what it holds.
  auto stored = h.label_offset_ - h.offsetData_;
  if (stored != opts.dims * sizeof(float)) {
    error = path + " holds vectors of " + std::to_string(stored / sizeof(float))
            + " dimensions, not " + std::to_string(opts.dims);
    return nullptr;
  }
  h.setEf(opts.ef_search);
  for (std::size_t i = 0; i < h.cur_element_count; ++i) {
    if (h.isMarkedDeleted(static_cast<hnswlib::tableint>(i))) {
      out->impl_->removed.insert(h.getExternalLabel(static_cast<hnswlib::tableint>(i)));
    }
  }
  return out;
}

bool vector_index::add(uint64_t label, const float* v, std::string& error) {
  auto& h = *impl_->hnsw;
  try {
    if (h.cur_element_count >= h.max_elements_) {
      h.resizeIndex(std::max<std::size_t>(1024, h.max_elements_ * 2));
    }
    if (impl_->removed.erase(label) > 0) {
      h.unmarkDelete(label);
    }
    h.addPoint(v, label);
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  return true;
}

bool vector_index::remove(uint64_t label) {
  if (!contains(label)) {
    return false;
  }
  impl_->hnsw->markDelete(label);
  impl_->removed.insert(label);
  return true;
}

bool vector_index::contains(uint64_t label) const {
  auto& h = *impl_->hnsw;
  return h.label_lookup_.count(label) > 0 && impl_->removed.count(label) == 0;
}

std::vector<std::pair<uint64_t, float>> vector_index::search(const float* q,
                                                             std::size_t k) const {
  std::vector<std::pair<uint64_t, float>> out;
  if (size() == 0 || k == 0) {
    return out;
  }
  auto& h = *impl_->hnsw;
  h.setEf(std::max(impl_->opts.ef_search, k));
  std::priority_queue<std::pair<float, hnswlib::labeltype>> found;
  try {
    found = h.searchKnn(q, k);
  } catch (const std::exception&) {
    return out;  // a damaged graph finds nothing rather than taking the tier down
  }
  out.reserve(found.size());
  while (!found.empty()) {
    // hnswlib's inner-product distance is 1 - dot; the queue pops the farthest first.
    out.emplace_back(found.top().second, 1.0f - found.top().first);
    found.pop();
  }
  std::reverse(out.begin(), out.end());
  return out;
}

std::vector<uint64_t> vector_index::labels() const {
  std::vector<uint64_t> out;
  for (auto& [label, internal] : impl_->hnsw->label_lookup_) {
    if (impl_->removed.count(label) == 0) {
      out.push_back(label);
    }
  }
  return out;
}

bool vector_index::save(const std::string& path, std::string& error) const {
  // Its own temporary name: two instances (an old one stopping, its
  // replacement starting) never write the same file.
  static std::atomic<uint64_t> saves{0};
  auto tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(++saves);
  try {
    impl_->hnsw->saveIndex(tmp);
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    error = "cannot rename " + tmp + ": " + ec.message();
    return false;
  }
  return true;
}

std::size_t vector_index::size() const {
  return impl_->hnsw->cur_element_count - impl_->removed.size();
}

std::size_t vector_index::dims() const {
  return impl_->opts.dims;
}

}  // namespace kowalski::memory
