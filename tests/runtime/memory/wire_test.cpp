// The embedders' and Qdrant's wire formats: requests as the servers expect
// them, and answers read or refused with a message that says what is wrong;
// and the 8-bit vector arithmetic the episodic tier scores with.
#define BOOST_TEST_MODULE memory_wire_test
#include <boost/test/unit_test.hpp>

#include "runtime/memory/embedding.hpp"
#include "runtime/memory/qdrant.hpp"
#include "runtime/memory/remote_embedder.hpp"

#include <cmath>
#include <random>

using namespace kowalski;
using namespace kowalski::memory;

namespace {

embedder_spec spec_of(const std::string& kind, std::size_t dims = 3) {
  embedder_spec s;
  s.kind = kind;
  s.url = kind == "openai" ? "http://127.0.0.1:9/v1/" : "http://127.0.0.1:9";
  s.model = "m";
  s.api_key = "sk-secret";
  s.dims = dims;
  return s;
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

BOOST_AUTO_TEST_CASE(embedder_names_say_what_made_a_vector) {
  BOOST_TEST(embedder_name(spec_of("hash", 384)) == "hash-v1-384");
  BOOST_TEST(embedder_name(spec_of("ollama", 768)) == "ollama/m/768");
  BOOST_TEST(embedder_name(spec_of("openai", 1536)) == "openai/m/1536");
}

BOOST_AUTO_TEST_CASE(requests_carry_every_text_and_only_the_openai_key) {
  auto o = embed_request(spec_of("ollama"), {"a \"quoted\" text", "b"});
  BOOST_TEST(o.url == "http://127.0.0.1:9/api/embed");
  BOOST_TEST(o.method == "POST");
  BOOST_TEST(has(o.body, R"("input":["a \"quoted\" text","b"])"));
  BOOST_TEST(!has(o.body, "sk-secret"));
  for (auto& [k, v] : o.headers) {
    BOOST_TEST(!has(v, "sk-secret"));
  }
  auto a = embed_request(spec_of("openai"), {"x"});
  BOOST_TEST(a.url == "http://127.0.0.1:9/v1/embeddings");
  bool bearer = false;
  for (auto& [k, v] : a.headers) {
    bearer = bearer || (k == "Authorization" && v == "Bearer sk-secret");
  }
  BOOST_TEST(bearer);
  BOOST_TEST(!has(a.body, "sk-secret"));
  BOOST_TEST(!has(a.body, "dimensions"));
  auto shortened = spec_of("openai", 256);
  shortened.send_dims = true;
  BOOST_TEST(has(embed_request(shortened, {"x"}).body, R"("dimensions":256)"));
  // Cut at a UTF-8 boundary: "é" is two bytes and is not split.
  BOOST_TEST(cut_text("abcé", 4) == "abc");
  BOOST_TEST(cut_text("abcé", 5) == "abcé");
  BOOST_TEST(cut_text("abc", 0) == "abc");
}

BOOST_AUTO_TEST_CASE(ollama_answers_are_read_scaled_and_checked) {
  auto s = spec_of("ollama");
  auto a = read_embed_answer(s, 200, R"({"model":"m","embeddings":[[3,0,4],[0,2,0]]})", 2);
  BOOST_REQUIRE(a.failure.empty());
  BOOST_REQUIRE(a.vectors.size() == 2u);
  BOOST_TEST(a.vectors[0][0] == 0.6f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(a.vectors[0][2] == 0.8f, boost::test_tools::tolerance(1e-6f));
  BOOST_TEST(a.vectors[1][1] == 1.0f);

  using kind = embed_answer::failure_kind;
  auto wrong_size = read_embed_answer(s, 200, R"({"embeddings":[[1,2]]})", 1);
  BOOST_TEST((wrong_size.kind == kind::protocol));
  BOOST_TEST(has(wrong_size.failure, "2 dimensions; memory.dims is 3"));
  auto too_few = read_embed_answer(s, 200, R"({"embeddings":[[1,2,3]]})", 2);
  BOOST_TEST(has(too_few.failure, "1 vectors for 2 texts"));
  auto not_numbers = read_embed_answer(s, 200, R"({"embeddings":[[1,"x",3]]})", 1);
  BOOST_TEST(has(not_numbers.failure, "not a number"));
  auto no_array = read_embed_answer(s, 200, R"({"embedding":[1,2,3]})", 1);
  BOOST_TEST(has(no_array.failure, "\"embeddings\""));
  auto garbage = read_embed_answer(s, 200, "<html>", 1);
  BOOST_TEST(has(garbage.failure, "not a JSON object"));
  auto status = read_embed_answer(s, 404, R"({"error":"model \"m\" not found"})", 1);
  BOOST_TEST((status.kind == kind::status));
  BOOST_TEST(has(status.failure, "HTTP 404"));
  BOOST_TEST(has(status.failure, "not found"));
}

BOOST_AUTO_TEST_CASE(openai_answers_are_put_in_the_order_of_their_index) {
  auto s = spec_of("openai");
  auto a = read_embed_answer(s, 200,
                             R"({"object":"list","data":[
                                 {"object":"embedding","index":1,"embedding":[0,1,0]},
                                 {"object":"embedding","index":0,"embedding":[1,0,0]}]})",
                             2);
  BOOST_REQUIRE(a.failure.empty());
  BOOST_TEST(a.vectors[0][0] == 1.0f);
  BOOST_TEST(a.vectors[1][1] == 1.0f);
  auto repeated = read_embed_answer(s, 200,
                                    R"({"data":[{"index":0,"embedding":[1,0,0]},
                                                {"index":0,"embedding":[1,0,0]}]})",
                                    2);
  BOOST_TEST(has(repeated.failure, "repeated index"));
  auto out_of_range = read_embed_answer(s, 200, R"({"data":[{"index":5,"embedding":[1,0,0]}]})",
                                        1);
  BOOST_TEST(!out_of_range.failure.empty());
  auto missing = read_embed_answer(s, 200, R"({"data":[{"index":0}]})", 1);
  BOOST_TEST(has(missing.failure, "no \"embedding\""));
  auto err = read_embed_answer(s, 401, R"({"error":{"message":"Incorrect API key"}})", 1);
  BOOST_TEST(has(err.failure, "Incorrect API key"));
}

BOOST_AUTO_TEST_CASE(qdrant_requests_and_answers) {
  qdrant_spec q;
  q.url = "http://127.0.0.1:6333/";
  q.collection = "mem";
  q.api_key = "qk";
  q.dims = 3;
  auto c = qdrant_create_collection(q);
  BOOST_TEST(c.method == "PUT");
  BOOST_TEST(c.url == "http://127.0.0.1:6333/collections/mem");
  BOOST_TEST(has(c.body, R"("vectors":{"size":3,"distance":"Cosine"})"));
  bool key = false;
  for (auto& [k, v] : c.headers) {
    key = key || (k == "api-key" && v == "qk");
  }
  BOOST_TEST(key);
  auto u = qdrant_upsert(q, {qdrant_point{7, "sem_7", "c1", "hash-v1-3", "s1",
                                          {0.5f, 0.25f, 1.0f}}});
  BOOST_TEST(u.url == "http://127.0.0.1:6333/collections/mem/points?wait=true");
  BOOST_TEST(has(u.body, R"("id":7,"vector":[0.5,0.25,1])"));
  BOOST_TEST(has(u.body, R"("kowalski_id":"sem_7")"));
  BOOST_TEST(has(u.body, R"("store":"s1")"));
  auto s = qdrant_search(q, {1, 0, 0}, 5, "c1");
  BOOST_TEST(has(s.body, R"("limit":5)"));
  BOOST_TEST(has(s.body, R"({"key":"conversation","match":{"value":"c1"}})"));
  BOOST_TEST(!has(qdrant_search(q, {1, 0, 0}, 5, "").body, "filter"));

  qdrant_collection info;
  BOOST_TEST(read_qdrant_collection(
               200, R"({"result":{"config":{"params":{"vectors":{"size":3,"distance":"Cosine"}}}},
                       "status":"ok"})",
               info)
               .empty());
  BOOST_TEST(info.dims == 3u);
  BOOST_TEST(info.distance == "Cosine");
  qdrant_collection gone;
  BOOST_TEST(read_qdrant_collection(404, R"({"status":{"error":"Not found"}})", gone).empty());
  BOOST_TEST(gone.missing);
  qdrant_collection named;
  BOOST_TEST(has(read_qdrant_collection(
                   200, R"({"result":{"config":{"params":{"vectors":{"a":{"size":3}}}}}})", named),
                 "named vectors"));

  std::vector<std::pair<uint64_t, float>> hits;
  BOOST_TEST(read_qdrant_search(200, R"({"result":[{"id":4,"version":1,"score":0.5}],
                                         "status":"ok","time":0.001})",
                                hits)
               .empty());
  BOOST_REQUIRE(hits.size() == 1u);
  BOOST_TEST(hits[0].first == 4u);
  auto uuid = std::vector<std::pair<uint64_t, float>>{};
  BOOST_TEST(!read_qdrant_search(200, R"({"result":[{"id":"9f0c-uuid","score":0.5}]})", uuid)
                .empty());
  BOOST_TEST(has(read_qdrant_ok(400, R"({"status":{"error":"Wrong input: dim"}})"),
                 "Wrong input: dim"));
  BOOST_TEST(has(read_qdrant_ok(200, R"({"status":"error"})"), "status"));
  BOOST_TEST(read_qdrant_ok(200, R"({"result":{"status":"completed"},"status":"ok"})").empty());
  BOOST_TEST(has(read_qdrant_ok(200, R"({"result":{"status":"acknowledged"},"status":"ok"})"),
                 "not applied"));

  qdrant_page page;
  BOOST_TEST(read_qdrant_scroll(200, R"({"result":{"points":[{"id":1,"payload":{"embedder":"e",
                                                                   "store":"s1"}},
                                         {"id":2,"payload":{}}],"next_page_offset":3},
                                         "status":"ok"})",
                                page)
               .empty());
  BOOST_REQUIRE(page.points.size() == 2u);
  BOOST_TEST(page.points[0].embedder == "e");
  BOOST_TEST(page.points[0].store == "s1");
  BOOST_TEST(page.points[1].embedder.empty());
  BOOST_REQUIRE(page.next.has_value());
  BOOST_TEST(*page.next == 3u);
  qdrant_page last;
  BOOST_TEST(read_qdrant_scroll(200, R"({"result":{"points":[],"next_page_offset":null}})", last)
               .empty());
  BOOST_TEST(!last.next.has_value());
}

BOOST_AUTO_TEST_CASE(the_fast_8_bit_dot_product_equals_the_plain_loop) {
  std::mt19937 gen(7);
  std::uniform_int_distribution<int> byte(-127, 127);
  for (std::size_t n : {0u, 1u, 15u, 16u, 17u, 100u, 384u, 768u, 1537u}) {
    std::vector<int8_t> a(n), b(n);
    int64_t expected = 0;
    for (std::size_t i = 0; i < n; ++i) {
      a[i] = static_cast<int8_t>(byte(gen));
      b[i] = static_cast<int8_t>(byte(gen));
      expected += int64_t{a[i]} * int64_t{b[i]};
    }
    BOOST_TEST(dot8_exact(a.data(), b.data(), n, true) == expected, "n=" << n);
    BOOST_TEST(dot8_exact(a.data(), b.data(), n) == expected, "n=" << n);
  }
  // The extremes: every product at its largest, of both signs.
  std::vector<int8_t> top(384, 127), bottom(384, -127);
  BOOST_TEST(dot8_exact(top.data(), bottom.data(), 384) == -127 * 127 * 384);
  BOOST_TEST(dot8_exact(bottom.data(), bottom.data(), 384) == 127 * 127 * 384);
  // Codes of real vectors: the product approximates the floats' closely.
  std::vector<float> x(384), y(384);
  std::normal_distribution<float> normal;
  for (std::size_t i = 0; i < 384; ++i) {
    x[i] = normal(gen);
    y[i] = 0.5f * x[i] + normal(gen);
  }
  normalize(x);
  normalize(y);
  auto exact = dot(x.data(), y.data(), 384);
  BOOST_TEST(std::fabs(dot8(quantize(x), quantize(y)) - exact) < 0.01, exact);
}
