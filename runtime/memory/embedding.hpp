// Text features shared by the memory tiers: the built-in hashing embedder,
// keywords, and vector arithmetic.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace kowalski::memory {

/// Lower-cased words of `text` (letters and digits; other bytes separate
/// them; bytes above 127 are kept, so UTF-8 words stay whole).
std::vector<std::string> words(std::string_view text);

/// The distinct words of `text` that carry meaning: at least 3 bytes, not
/// on a short list of English function words.
std::vector<std::string> keywords(std::string_view text);

/// The built-in embedder: every word and every pair of adjacent words is
/// hashed into one of `dims` signed buckets, and the result scaled to unit
/// length. Deterministic across runs and machines; no model needed. Texts
/// that share words and phrases get high cosine similarity. An empty or
/// wordless text gets the zero vector.
std::vector<float> hash_embed(std::string_view text, std::size_t dims);

/// The name stored with vectors of hash_embed: "hash-v1-<dims>".
std::string hash_embedder_name(std::size_t dims);

/// Dot product; the cosine of unit vectors.
float dot(const float* a, const float* b, std::size_t n);

/// Scales `v` to unit length (the zero vector stays zero).
void normalize(std::vector<float>& v);

/// A vector in 8 bits a component: `scale` x code[i] approximates v[i].
/// A quarter of the floats' memory, for scoring many vectors roughly before
/// the best are scored again with their floats.
struct code8 {
  std::vector<int8_t> code;  ///< empty: no vector
  float scale = 0;
};

/// Codes `v` against its largest component (the zero vector: all zero).
code8 quantize(const std::vector<float>& v);

/// Approximates the dot product of the vectors behind two codes of one size.
float dot8(const code8& a, const code8& b);

/// The exact sum of products of two int8 arrays, with the fastest variant
/// this CPU runs, or (`plain`) the portable loop: both give the same value.
int32_t dot8_exact(const int8_t* a, const int8_t* b, std::size_t n, bool plain = false);

/// The share of `query_keywords` that occur among the words of `text`.
double keyword_share(const std::vector<std::string>& query_keywords, std::string_view text);

}  // namespace kowalski::memory
