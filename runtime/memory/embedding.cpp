#include "runtime/memory/embedding.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <set>
#include <unordered_set>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace kowalski::memory {

namespace {

uint64_t fnv1a(std::string_view s, uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// A final mix, so that nearby hashes land in unrelated buckets.
uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

void add_feature(std::vector<float>& v, uint64_t h, float weight) {
  h = mix(h);
  auto bucket = static_cast<std::size_t>(h % v.size());
  v[bucket] += (h >> 63) != 0 ? -weight : weight;
}

const std::unordered_set<std::string>& stop_words() {
  static const std::unordered_set<std::string> words = {
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her",
    "was", "one", "our", "out", "has", "him", "his", "how", "its", "who", "did", "yes",
    "she", "too", "use", "that", "with", "have", "this", "will", "your", "from", "they",
    "what", "when", "where", "which", "there", "their", "them", "then", "than", "been",
    "were", "does", "into", "about", "would", "could", "should", "these", "those", "some",
    "just", "also", "very", "only", "over", "such", "here", "more", "most", "much"};
  return words;
}

}  // namespace

std::vector<std::string> words(std::string_view text) {
  std::vector<std::string> out;
  std::string cur;
  for (unsigned char c : text) {
    if (std::isalnum(c) || c >= 0x80) {
      cur += static_cast<char>(std::tolower(c));
    } else if (!cur.empty()) {
      out.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    out.push_back(std::move(cur));
  }
  return out;
}

std::vector<std::string> keywords(std::string_view text) {
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (auto& w : words(text)) {
    if (w.size() >= 3 && stop_words().count(w) == 0 && seen.insert(w).second) {
      out.push_back(w);
    }
  }
  return out;
}

std::vector<float> hash_embed(std::string_view text, std::size_t dims) {
  std::vector<float> v(std::max<std::size_t>(dims, 1), 0.0f);
  auto ws = words(text);
  for (std::size_t i = 0; i < ws.size(); ++i) {
    // Function words say little: they weigh less than the others.
    float weight = stop_words().count(ws[i]) > 0 ? 0.25f : 1.0f;
    add_feature(v, fnv1a(ws[i]), weight);
    if (i + 1 < ws.size()) {
      auto pair = fnv1a(ws[i + 1], fnv1a(" ", fnv1a(ws[i])));
      add_feature(v, pair, 0.5f);
    }
  }
  normalize(v);
  return v;
}

std::string hash_embedder_name(std::size_t dims) {
  return "hash-v1-" + std::to_string(dims);
}

float dot(const float* a, const float* b, std::size_t n) {
  // Eight running sums, so the additions do not wait on each other (and
  // the compiler may use vector registers); the order of additions differs
  // from a plain loop by rounding only.
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (std::size_t k = 0; k < 8; ++k) {
      s[k] += a[i + k] * b[i + k];
    }
  }
  float total = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; ++i) {
    total += a[i] * b[i];
  }
  return total;
}

code8 quantize(const std::vector<float>& v) {
  code8 out;
  float top = 0;
  for (auto x : v) {
    top = std::max(top, std::fabs(x));
  }
  out.code.resize(v.size());
  if (!(top > 0) || !std::isfinite(top) || !(top / 127.0f > 0)) {
    return out;  // all zero (or not a number, refused before): scores 0
  }
  out.scale = top / 127.0f;
  for (std::size_t i = 0; i < v.size(); ++i) {
    out.code[i] = static_cast<int8_t>(std::lround(v[i] / out.scale));
  }
  return out;
}

namespace {

// The sum of the products of two int8 arrays, exactly (in 32 bits: a
// product is at most 127 x 127, so no sum overflows below 100,000
// dimensions). Every variant gives the same integer, so scores and
// rankings do not depend on the CPU.
int32_t dot8_plain(const int8_t* x, const int8_t* y, std::size_t n) {
  int32_t s[16] = {};
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (std::size_t k = 0; k < 16; ++k) {
      s[k] += int32_t{x[i + k]} * int32_t{y[i + k]};
    }
  }
  int32_t total = 0;
  for (auto part : s) {
    total += part;
  }
  for (; i < n; ++i) {
    total += int32_t{x[i]} * int32_t{y[i]};
  }
  return total;
}

#if defined(__x86_64__)
// Sixteen bytes at a time, widened to 16 bits and multiplied pairwise into
// 32-bit sums (pmaddwd): about 2x the plain loop at 384 dimensions.
int32_t dot8_sse2(const int8_t* x, const int8_t* y, std::size_t n) {
  __m128i acc = _mm_setzero_si128();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    auto a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i));
    auto b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i));
    // Each byte in the high half of a 16-bit lane, shifted down with its sign.
    auto a_lo = _mm_srai_epi16(_mm_unpacklo_epi8(a, a), 8);
    auto a_hi = _mm_srai_epi16(_mm_unpackhi_epi8(a, a), 8);
    auto b_lo = _mm_srai_epi16(_mm_unpacklo_epi8(b, b), 8);
    auto b_hi = _mm_srai_epi16(_mm_unpackhi_epi8(b, b), 8);
    acc = _mm_add_epi32(acc, _mm_madd_epi16(a_lo, b_lo));
    acc = _mm_add_epi32(acc, _mm_madd_epi16(a_hi, b_hi));
  }
  alignas(16) int32_t part[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(part), acc);
  int32_t total = part[0] + part[1] + part[2] + part[3];
  for (; i < n; ++i) {
    total += int32_t{x[i]} * int32_t{y[i]};
  }
  return total;
}

// The same sixteen bytes widened in one instruction, into 256-bit sums:
// about 4x the plain loop. Chosen at run time: the build targets every
// x86-64, the machine it runs on may do more.
__attribute__((target("avx2"))) int32_t dot8_avx2(const int8_t* x, const int8_t* y,
                                                  std::size_t n) {
  __m256i acc = _mm256_setzero_si256();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    auto a = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    auto b = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + i)));
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(a, b));
  }
  auto sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
  alignas(16) int32_t part[4];
  _mm_store_si128(reinterpret_cast<__m128i*>(part), sum);
  int32_t total = part[0] + part[1] + part[2] + part[3];
  for (; i < n; ++i) {
    total += int32_t{x[i]} * int32_t{y[i]};
  }
  return total;
}
#endif

using dot8_fn = int32_t (*)(const int8_t*, const int8_t*, std::size_t);

dot8_fn pick_dot8() {
#if defined(__x86_64__)
  __builtin_cpu_init();  // may run before the CPU data is set up otherwise
  if (__builtin_cpu_supports("avx2")) {
    return dot8_avx2;
  }
  return dot8_sse2;
#else
  return dot8_plain;
#endif
}

// Picked on first use, so a call from another file's static initializer
// finds it set too.
int32_t dot8_best(const int8_t* a, const int8_t* b, std::size_t n) {
  static const dot8_fn best = pick_dot8();
  return best(a, b, n);
}

}  // namespace

int32_t dot8_exact(const int8_t* a, const int8_t* b, std::size_t n, bool plain) {
  return plain ? dot8_plain(a, b, n) : dot8_best(a, b, n);
}

float dot8(const code8& a, const code8& b) {
  auto n = std::min(a.code.size(), b.code.size());
  return static_cast<float>(dot8_best(a.code.data(), b.code.data(), n)) * a.scale * b.scale;
}

void normalize(std::vector<float>& v) {
  double sum = 0;
  for (auto x : v) {
    sum += static_cast<double>(x) * x;
  }
  if (sum <= 0) {
    return;
  }
  auto inv = static_cast<float>(1.0 / std::sqrt(sum));
  for (auto& x : v) {
    x *= inv;
  }
}

double keyword_share(const std::vector<std::string>& query_keywords, std::string_view text) {
  if (query_keywords.empty()) {
    return 0;
  }
  auto ws = words(text);
  std::unordered_set<std::string> have(ws.begin(), ws.end());
  std::size_t hits = 0;
  for (auto& k : query_keywords) {
    hits += have.count(k);
  }
  return static_cast<double>(hits) / static_cast<double>(query_keywords.size());
}

}  // namespace kowalski::memory
