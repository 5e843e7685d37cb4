// The memory tiers with remote parts: Ollama's and OpenAI's embedding
// endpoints (the scripted LLM server) and Qdrant's REST API (a fake Qdrant),
// in a real node with LMDB in a temporary directory.
#define BOOST_TEST_MODULE memory_backends_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"
#include "tests/rig/fake_qdrant.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/memory_calls.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include <algorithm>
#include <filesystem>
#include <set>
#include <map>
#include <thread>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::fake_qdrant;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;
using std::chrono::seconds;

namespace {

scripted_llm::options backend_options() {
  scripted_llm::options o;
  o.models = {"test-model", "embed-model"};
  o.embed_dims = 64;
  return o;
}

struct fixture : scripted_llm, test_node, testing::memory_calls {
  fixture() : scripted_llm(backend_options()), test_node("memback", scripted_llm::base_url()) {
    cfg.memory_embedder = "ollama";
    cfg.memory_embed_model = "embed-model";
    cfg.memory_dims = 64;
    cfg.memory_in_chat = false;
  }

  node& memory_node() override {
    return *n;
  }

  caf::expected<memory_item> get(const std::string& tier, const std::string& id) {
    return testing::ask_memory<memory_item>(*n, tier, get_memory{id});
  }

  bool remove(const std::string& tier, const std::string& id) {
    auto got = testing::ask_memory<bool>(*n, tier, delete_memory{id});
    if (!got) {
      BOOST_FAIL(caf::to_string(got.error()));
    }
    return *got;
  }

};

const std::vector<std::string> facts = {
  "Ada Lovelace wrote the first published computer program for the Analytical Engine",
  "The Eiffel Tower in Paris was finished in 1889",
  "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen",
  "Mount Everest is the highest mountain above sea level",
  "LMDB is a memory-mapped key-value store with one writer at a time",
  "The Danube flows through Vienna, Budapest and Belgrade",
  "Espresso is brewed by forcing hot water through finely ground coffee",
  "The mitochondria produce most of the energy a cell uses",
};

const std::vector<std::pair<std::string, std::size_t>> questions = {
  {"who wrote the first computer program", 0},
  {"when was the Eiffel Tower in Paris finished", 1},
  {"which river flows through Vienna and Budapest", 5},
  {"how is espresso coffee brewed", 6},
  {"what produces the energy of a cell", 7},
};

// What the scripted server returns for `text`, as the tier keeps it.
std::vector<float> scripted_vector(const std::string& text) {
  return kowalski::memory::hash_embed(text, 64);
}

void check_known_answers(fixture& f, const std::string& tier) {
  for (auto& [q, want] : questions) {
    auto hits = f.search(tier, q, 3);
    BOOST_REQUIRE_MESSAGE(!hits.empty(), q);
    BOOST_TEST(hits[0].item.text == facts[want], q << " -> " << hits[0].item.text);
    BOOST_TEST(hits[0].matched_by == "vector");
  }
}

std::string code_of(const caf::error& e) {
  return to_string(describe(e).code);
}

std::string name_of(errc code) {
  return to_string(code);
}

// The sequence number in a "sem_<16 hex>" or "epi_<16 hex>" id.
uint64_t seq_in(const std::string& id) {
  return std::stoull(id.substr(4), nullptr, 16);
}

// Asks the semantic tier until `done(result)` holds; false after `timeout`.
// For state that changes as the tier talks to Qdrant in the background:
// between tries it waits for Qdrant's next request (or 200 ms).
template <class Done>
bool search_until(fixture& f, const fake_qdrant& qdrant, Done done,
                  std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto seen = qdrant.requests();
    if (done(f.try_search("semantic", "Ada wrote a program"))) {
      return true;
    }
    qdrant.wait_requests(seen + 1, std::chrono::milliseconds(200));
  }
  return false;
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(embedders, fixture)

BOOST_AUTO_TEST_CASE(an_ollama_embedder_makes_the_vectors_each_tier_keeps) {
  start();
  std::vector<memory_item> stored;
  for (auto& f : facts) {
    stored.push_back(add_text("semantic", f));
    add_text("episodic", f);
  }
  // The vector is the backend's, under its name; not the built-in one's.
  BOOST_TEST(stored[0].embedder == "ollama/embed-model/64");
  auto again = get("semantic", stored[0].id);
  BOOST_REQUIRE(again);
  BOOST_TEST(again->embedder == "ollama/embed-model/64");
  auto want = scripted_vector(facts[0]);
  BOOST_REQUIRE(again->embedding.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    BOOST_TEST(again->embedding[i] == want[i], boost::test_tools::tolerance(1e-5f));
  }
  check_known_answers(*this, "semantic");
  check_known_answers(*this, "episodic");
  BOOST_TEST(stats("semantic").embedder == "ollama/embed-model/64");
  BOOST_TEST(stats("episodic").embedder == "ollama/embed-model/64");
  BOOST_TEST(stats("semantic").dimensions == 64u);
  // Every request went to /api/embed with the configured model.
  bool saw = false;
  for (auto& r : received()) {
    if (r.path == "/api/embed") {
      saw = true;
      BOOST_TEST(r.body.find("\"model\":\"embed-model\"") != std::string::npos);
    }
  }
  BOOST_TEST(saw);
}

BOOST_AUTO_TEST_CASE(an_add_waiting_for_its_vector_is_refused_if_its_conversation_is_deleted) {
  start();
  behaviour slow;
  slow.latency = std::chrono::milliseconds(500);
  set_default(slow);
  caf::scoped_actor self{n->system()};
  auto tier = n->memory("episodic");
  memory_item item;
  item.text = "the harbour master keeps the keys";
  item.conversation = "c-deleted";
  // The add waits half a second for its vector; meanwhile the conversation
  // is deleted and its episodes erased (none yet).
  self->send(tier, add_memory{item});
  self->request(tier, seconds(10), forget_conversation{"c-deleted"})
    .receive([](uint64_t erased) { BOOST_TEST(erased == 0u); },
             [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  self->receive([](memory_item& m) { BOOST_FAIL("stored after the delete: " + m.id); },
                [](caf::error& e) {
                  auto why = describe(e);
                  BOOST_TEST(std::string{to_string(why.code)} == "conflict");
                  BOOST_TEST(why.message.find("c-deleted") != std::string::npos, why.message);
                },
                caf::after(seconds(30)) >> [] { BOOST_FAIL("the add was not answered"); });
  // One that starts after the delete is stored: the id names a new
  // conversation now.
  auto later = add_text("episodic", "the keys hang by the door", "c-deleted");
  BOOST_TEST(later.conversation == "c-deleted");
  BOOST_TEST(stats("episodic").items == 1u);
}

BOOST_AUTO_TEST_CASE(concurrent_adds_share_batched_requests) {
  cfg.memory_embed_batch = 8;
  cfg.memory_embed_concurrency = 1;
  start();
  behaviour slow;
  slow.latency = std::chrono::milliseconds(200);
  set_default(slow);
  reset_counters();
  // 40 adds at once: while one request is out, the rest wait and leave
  // together, 8 texts at a time.
  caf::scoped_actor self{n->system()};
  auto tier = n->memory("episodic");
  for (int i = 0; i < 40; ++i) {
    memory_item item;
    item.text = "episode number " + std::to_string(i) + " about batching";
    item.conversation = "c1";
    self->send(tier, add_memory{item});
  }
  std::set<std::string> ids;
  std::vector<memory_item> answered;
  for (int i = 0; i < 40; ++i) {
    self->receive([&](memory_item& m) {
      BOOST_TEST(m.embedder == "ollama/embed-model/64");
      ids.insert(m.id);
      answered.push_back(m);
    },
                  [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); },
                  caf::after(seconds(30)) >> [] { BOOST_FAIL("an add was not answered"); });
  }
  BOOST_TEST(ids.size() == 40u);
  // Each item got the vector of its own text, whichever batch carried it.
  for (auto& m : answered) {
    auto want = scripted_vector(m.text);
    BOOST_REQUIRE(m.embedding.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      BOOST_TEST(m.embedding[k] == want[k], boost::test_tools::tolerance(1e-5f));
    }
  }
  BOOST_TEST(embed_texts() == 40u);
  BOOST_TEST(max_embed_batch() == 8u);
  BOOST_TEST(embed_requests() <= 10u);  // 1 + ceil(39 / 8) when the timing is kind
  BOOST_TEST(max_in_flight() == 1u);    // embed_concurrency

  // One add of many texts is cut into batches too.
  reset_counters();
  add_memories many;
  for (int i = 0; i < 20; ++i) {
    memory_item item;
    item.text = "note " + std::to_string(i);
    item.conversation = "c2";
    many.items.push_back(item);
  }
  std::vector<memory_item> got;
  self->request(tier, seconds(30), many)
    .receive([&](std::vector<memory_item>& v) { got = std::move(v); },
             [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  BOOST_TEST(got.size() == 20u);
  BOOST_TEST(embed_requests() == 3u);  // 8 + 8 + 4
  BOOST_TEST(embed_texts() == 20u);
}

BOOST_AUTO_TEST_CASE(an_openai_embedder_sends_its_key_and_reads_data_by_index) {
  cfg.memory_embedder = "openai";
  cfg.openai_url = scripted_llm::base_url() + "/v1";
  cfg.memory_embed_api_key = "sk-embed-secret";
  start();
  // One request of several texts: the server lists them last first.
  add_memories all;
  for (auto& f : facts) {
    memory_item item;
    item.text = f;
    all.items.push_back(item);
  }
  std::vector<memory_item> got;
  {
    caf::scoped_actor self{n->system()};
    self->request(n->memory("episodic"), seconds(30), all)
      .receive([&](std::vector<memory_item>& v) { got = std::move(v); },
               [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  BOOST_REQUIRE(got.size() == facts.size());
  for (auto& m : got) {
    BOOST_TEST(m.embedder == "openai/embed-model/64");
    auto want = scripted_vector(m.text);
    BOOST_REQUIRE(m.embedding.size() == want.size());
    for (std::size_t k = 0; k < want.size(); ++k) {
      BOOST_TEST(m.embedding[k] == want[k], boost::test_tools::tolerance(1e-5f));
    }
  }
  for (auto& f : facts) {
    auto m = add_text("semantic", f);
    BOOST_TEST(m.embedder == "openai/embed-model/64");
  }
  check_known_answers(*this, "semantic");
  bool saw = false;
  for (auto& r : received()) {
    if (r.path == "/v1/embeddings") {
      saw = true;
      BOOST_TEST(r.authorization == "Bearer sk-embed-secret");
    }
  }
  BOOST_TEST(saw);
}

BOOST_AUTO_TEST_CASE(embedder_failures_keep_episodes_refuse_facts_and_name_the_embedder) {
  start();
  behaviour down;
  down.kind = behaviour::fault::http_error;
  down.status = 500;
  set_default(down);
  // An episode is kept without a vector and found by its keywords.
  auto kept = add_text("episodic", "the backup of the billing database runs at midnight");
  BOOST_TEST(kept.embedder == "pending");
  BOOST_TEST(stats("episodic").pending_vectors == 1u);
  // Asked for no vector: none is made later either.
  memory_item plain;
  plain.text = "kept by its keywords on purpose";
  plain.conversation = "c1";
  plain.embedder = "none";
  auto unembedded = add("episodic", plain);
  BOOST_REQUIRE(unembedded);
  BOOST_TEST(unembedded->embedder == "none");
  auto hits = search("episodic", "when does the billing backup run");
  BOOST_REQUIRE(!hits.empty());
  BOOST_TEST(hits[0].item.id == kept.id);
  BOOST_TEST(hits[0].matched_by == "keyword");
  // A fact needs its vector: the add fails and says why.
  memory_item fact;
  fact.text = "a fact that cannot be embedded now";
  auto refused = add("semantic", fact);
  BOOST_REQUIRE(!refused);
  BOOST_TEST(code_of(refused.error()) == name_of(errc::backend_error));
  BOOST_TEST(describe(refused.error()).field == "embedder");
  BOOST_TEST(describe(refused.error()).message.find("HTTP 500") != std::string::npos);
  auto failed_search = try_search("semantic", "anything");
  BOOST_REQUIRE(!failed_search);
  BOOST_TEST(describe(failed_search.error()).field == "embedder");

  // Vectors of another size than memory.dims.
  behaviour wrong;
  wrong.embed_dims = 32;
  set_default(wrong);
  refused = add("semantic", fact);
  BOOST_REQUIRE(!refused);
  BOOST_TEST(code_of(refused.error()) == name_of(errc::backend_protocol));
  BOOST_TEST(describe(refused.error()).message.find("memory.dims is 64") != std::string::npos);

  // An answer that is not JSON, and one that is not even the protocol's.
  for (auto kind : {behaviour::fault::malformed, behaviour::fault::garbage}) {
    behaviour bad;
    bad.kind = kind;
    set_default(bad);
    refused = add("semantic", fact);
    BOOST_REQUIRE(!refused);
    BOOST_TEST(code_of(refused.error()) == name_of(errc::backend_protocol));
  }

  // Over HTTP: a 502 naming the embedder, and the node keeps serving.
  net::http_client client;
  auto res = kowalski::testing::fetch(client, "POST", base() + "/v1/memory/semantic",
                                      R"({"text":"still not embeddable"})");
  BOOST_TEST(res.status == 502);
  BOOST_TEST(res.body.find("\"field\":\"embedder\"") != std::string::npos);
  // Searching every tier: what the working and episodic tiers found, and
  // the semantic tier's failure beside it.
  res = kowalski::testing::fetch(client, "GET",
                                 base() + "/v1/memory/search?q=billing%20backup&conversation=c1");
  BOOST_TEST(res.status == 200);
  BOOST_TEST(res.body.find(kept.id) != std::string::npos, res.body);
  BOOST_TEST(res.body.find(R"("errors":[{"tier":"semantic","code":"backend_protocol")")
               != std::string::npos,
             res.body);
  // One tier asked, and failing: the request fails.
  res = kowalski::testing::fetch(client, "GET", base() + "/v1/memory/search?q=x&tier=semantic");
  BOOST_TEST(res.status == 502);

  set_default(behaviour{});
  auto ok = add_text("semantic", "the embedder is back");
  BOOST_TEST(ok.embedder == "ollama/embed-model/64");
  BOOST_TEST(search("semantic", "is the embedder back")[0].item.id == ok.id);

  // The episode kept without a vector gets one once the embedder answers
  // again (an add that succeeds starts the catch-up), and keeps it across
  // a restart.
  reset_counters();
  add_text("episodic", "the embedder answers again");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (stats("episodic").pending_vectors > 0 && std::chrono::steady_clock::now() < deadline) {
    wait_embed_requests(embed_requests() + 1, std::chrono::milliseconds(200));
  }
  BOOST_REQUIRE(stats("episodic").pending_vectors == 0u);
  auto late = get("episodic", kept.id);
  BOOST_REQUIRE(late);
  BOOST_REQUIRE(!late->embedding.empty());
  BOOST_TEST(late->embedder == "ollama/embed-model/64");
  // The item asked to stay without a vector was not sent to the embedder.
  for (auto& r : received()) {
    BOOST_TEST(r.body.find("kept by its keywords") == std::string::npos);
  }
  auto still_plain = get("episodic", unembedded->id);
  BOOST_REQUIRE(still_plain);
  BOOST_TEST(still_plain->embedding.empty());
  auto want = scripted_vector(late->text);
  for (std::size_t k = 0; k < want.size(); ++k) {
    BOOST_TEST(late->embedding[k] == want[k], boost::test_tools::tolerance(1e-5f));
  }
  n.reset();
  start();
  hits = search("episodic", "when does the billing backup run");
  BOOST_REQUIRE(!hits.empty());
  BOOST_TEST(hits[0].item.id == kept.id);
  BOOST_TEST(hits[0].matched_by == "vector");
  // Deleting the episode erases its late vector too.
  BOOST_TEST(remove("episodic", kept.id));
  n.reset();
  std::string error;
  auto env = store::environment::open(cfg.data_dir, cfg.store_map_size, error);
  BOOST_REQUIRE_MESSAGE(env, error);
  std::string bytes;
  BOOST_TEST(!env->get("episode_vectors", store::encode_seq(seq_in(kept.id)), bytes, error));
  BOOST_TEST(error.empty());
}

BOOST_AUTO_TEST_CASE(an_unreachable_embedder_and_an_unknown_model_are_told_apart) {
  cfg.memory_embed_model = "no-such-model";
  start();
  memory_item fact;
  fact.text = "something to remember";
  auto got = add("semantic", fact);
  BOOST_REQUIRE(!got);
  BOOST_TEST(code_of(got.error()) == name_of(errc::backend_error));
  BOOST_TEST(describe(got.error()).message.find("no-such-model") != std::string::npos);
  n.reset();

  cfg.memory_embed_model = "embed-model";
  cfg.memory_embed_url = "http://127.0.0.1:1";  // nothing listens there
  start();
  got = add("semantic", fact);
  BOOST_REQUIRE(!got);
  BOOST_TEST(code_of(got.error()) == name_of(errc::backend_unavailable));
  BOOST_TEST(describe(got.error()).field == "embedder");
}

BOOST_AUTO_TEST_CASE(a_passing_failure_is_retried_and_a_bad_text_fails_only_its_request) {
  cfg.memory_embed_concurrency = 1;
  start();
  // 503, then 429: both sent again; the add succeeds.
  behaviour busy;
  busy.kind = behaviour::fault::http_error;
  busy.status = 503;
  enqueue(busy);
  busy.status = 429;
  busy.retry_after_s = 0;
  enqueue(busy);
  reset_counters();
  auto ok = add_text("semantic", "retried until the embedder answered");
  BOOST_TEST(ok.embedder == "ollama/embed-model/64");
  BOOST_TEST(embed_requests() == 3u);

  // A text the backend refuses (400) shares a batch with a good one: the
  // batch is split, the good text is embedded, only the bad one fails.
  set_script([](const std::string& body) {
    behaviour b;
    if (body.find("first in line") != std::string::npos) {
      b.latency = std::chrono::milliseconds(300);  // the others queue behind it
    } else if (body.find("poison") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  caf::scoped_actor self{n->system()};
  auto tier = n->memory("semantic");
  for (auto text : {"first in line", "a poison text", "a fine text"}) {
    memory_item item;
    item.text = text;
    self->send(tier, add_memory{item});
  }
  std::map<std::string, bool> outcome;  // text -> stored
  std::vector<std::string> failures;
  for (int i = 0; i < 3; ++i) {
    self->receive([&](memory_item& m) { outcome[m.text] = true; },
                  [&](caf::error& e) { failures.push_back(describe(e).message); },
                  caf::after(seconds(30)) >> [] { BOOST_FAIL("an add was not answered"); });
  }
  BOOST_TEST(outcome.count("first in line") == 1u);
  BOOST_TEST(outcome.count("a fine text") == 1u);
  BOOST_REQUIRE(failures.size() == 1u);
  BOOST_TEST(failures[0].find("HTTP 400") != std::string::npos);
  // The refusal's text is not in the message.
  BOOST_TEST(failures[0].find("poison") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_text_the_embedder_refuses_does_not_hold_up_the_late_vectors) {
  start();
  behaviour down;
  down.kind = behaviour::fault::http_error;
  down.status = 500;
  set_default(down);
  auto poison = add_text("episodic", "a poison episode the backend will never take");
  auto fine = add_text("episodic", "an ordinary episode about the harbour");
  BOOST_TEST(stats("episodic").pending_vectors == 2u);
  set_default(behaviour{});
  set_script([](const std::string& body) {
    behaviour b;
    if (body.find("poison") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  add_text("episodic", "the embedder is answering again");
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (stats("episodic").pending_vectors > 0 && std::chrono::steady_clock::now() < deadline) {
    wait_embed_requests(embed_requests() + 1, std::chrono::milliseconds(200));
  }
  BOOST_REQUIRE(stats("episodic").pending_vectors == 0u);
  auto got = get("episodic", fine.id);
  BOOST_REQUIRE(got);
  BOOST_TEST(!got->embedding.empty());
  got = get("episodic", poison.id);
  BOOST_REQUIRE(got);
  BOOST_TEST(got->embedding.empty());
  BOOST_TEST(got->embedder == "none");
  // And so across a restart: nothing is left to embed.
  n.reset();
  start();
  BOOST_TEST(stats("episodic").pending_vectors == 0u);
}

BOOST_AUTO_TEST_CASE(a_store_of_one_embedder_refuses_another) {
  // First the built-in embedder, at the same size.
  cfg.memory_embedder = "hash";
  start();
  add_text("semantic", facts[0]);
  add_text("episodic", facts[0]);
  n.reset();

  cfg.memory_embedder = "ollama";
  start();
  for (auto tier : {"semantic", "episodic"}) {
    memory_item item;
    item.text = "a new fact";
    auto got = add(tier, item);
    BOOST_REQUIRE_MESSAGE(!got, tier);
    BOOST_TEST(code_of(got.error()) == name_of(errc::conflict));
    auto message = describe(got.error()).message;
    BOOST_TEST(message.find("hash-v1-64") != std::string::npos, message);
    BOOST_TEST(message.find("ollama/embed-model/64") != std::string::npos, message);
    BOOST_TEST(!try_search(tier, "anything"));
  }
  n.reset();

  // A fresh store takes the remote embedder; a vector of another is refused.
  std::filesystem::remove_all(dir);
  start();
  memory_item foreign;
  foreign.text = "brought with its own vector";
  foreign.embedder = "hash-v1-64";
  foreign.embedding = kowalski::memory::hash_embed(foreign.text, 64);
  auto got = add("semantic", foreign);
  BOOST_REQUIRE(!got);
  BOOST_TEST(code_of(got.error()) == name_of(errc::conflict));
  BOOST_TEST(describe(got.error()).field == "embedder");
  // One of the node's own embedder is taken as it is.
  foreign.embedder = "ollama/embed-model/64";
  foreign.embedding = scripted_vector("something else entirely");
  reset_counters();
  got = add("semantic", foreign);
  BOOST_REQUIRE(got);
  BOOST_TEST(embed_requests() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()

// -- Qdrant ---------------------------------------------------------------------

namespace {

struct qdrant_fixture : fixture {
  std::unique_ptr<fake_qdrant> qdrant = std::make_unique<fake_qdrant>();

  qdrant_fixture() {
    cfg.memory_vector_backend = "qdrant";
    cfg.memory_qdrant_url = qdrant->base_url();
    cfg.memory_qdrant_collection = "kw_test";
    cfg.memory_qdrant_api_key = "qdrant-secret";
  }

  // Waits until the tier has checked the collection and searches it.
  void wait_ready() {
    BOOST_REQUIRE(search_until(*this, *qdrant,
                               [](const caf::expected<std::vector<memory_hit>>& r) {
                                 return static_cast<bool>(r);
                               }));
    BOOST_TEST(stats("semantic").index_source == "qdrant");
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(qdrant_backend, qdrant_fixture)

BOOST_AUTO_TEST_CASE(qdrant_serves_semantic_search_and_lmdb_stays_the_truth) {
  start();
  wait_ready();
  BOOST_TEST(qdrant->has_collection("kw_test"));
  BOOST_TEST(qdrant->dims("kw_test") == 64u);
  std::vector<memory_item> stored;
  for (auto& f : facts) {
    stored.push_back(add_text("semantic", f));
  }
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size(), std::chrono::seconds(20)));
  BOOST_TEST(qdrant->last_api_key() == "qdrant-secret");
  auto searches = qdrant->search_requests();
  check_known_answers(*this, "semantic");
  BOOST_TEST(qdrant->search_requests() > searches);

  // The conversation filter goes to Qdrant.
  auto other = add_text("semantic", "Ada Lovelace also studied mathematics with De Morgan", "c2");
  auto only = search("semantic", "Ada Lovelace", 5, "c2");
  BOOST_REQUIRE(only.size() == 1u);
  BOOST_TEST(only[0].item.id == other.id);
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size() + 1, std::chrono::seconds(20)));

  // A delete reaches Qdrant.
  BOOST_TEST(remove("semantic", other.id));
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size(), std::chrono::seconds(20)));

  // Qdrant down: an add is still acknowledged (it is in LMDB); searches say
  // what is wrong; once Qdrant is back the fact reaches it.
  qdrant->set_down(true);
  auto late = add_text("semantic", "Grace Hopper wrote the first compiler for a computer");
  auto failed = try_search("semantic", "who wrote the first compiler");
  BOOST_REQUIRE(!failed);
  BOOST_TEST(describe(failed.error()).field == "vector_backend");
  BOOST_TEST(describe(failed.error()).message.find("503") != std::string::npos);
  net::http_client client;
  auto http = kowalski::testing::fetch(client, "GET",
                                       base() + "/v1/memory/search?tier=semantic&q=compiler");
  BOOST_TEST(http.status == 502);
  BOOST_TEST(http.body.find("vector_backend") != std::string::npos);
  qdrant->set_down(false);
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size() + 1, std::chrono::seconds(30)));
  auto hits = search("semantic", "who wrote the first compiler");
  BOOST_REQUIRE(!hits.empty());
  BOOST_TEST(hits[0].item.id == late.id);
  n.reset();

  // A new, empty Qdrant (its data lost): the next start fills it from LMDB.
  qdrant = std::make_unique<fake_qdrant>();
  cfg.memory_qdrant_url = qdrant->base_url();
  start();
  wait_ready();
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size() + 1, std::chrono::seconds(20)));
  auto ids = qdrant->ids("kw_test");
  BOOST_TEST((std::find(ids.begin(), ids.end(), seq_in(late.id)) != ids.end()));
  check_known_answers(*this, "semantic");
}

BOOST_AUTO_TEST_CASE(a_fact_is_found_before_qdrant_has_it) {
  start();
  wait_ready();
  BOOST_TEST(qdrant->has_conversation_index("kw_test"));
  add_text("semantic", facts[0]);
  BOOST_REQUIRE(qdrant->wait_points("kw_test", 1, std::chrono::seconds(20)));
  // Qdrant answers searches but refuses writes: the fact waits in the tier
  // and is scored exactly, beside what Qdrant finds.
  qdrant->set_writes_down(true);
  auto fact = add_text("semantic", "the staging cluster runs in the Frankfurt region");
  auto searches = qdrant->search_requests();
  auto hits = search("semantic", "where does the staging cluster run", 2);
  BOOST_REQUIRE(hits.size() == 2u);
  BOOST_TEST(hits[0].item.id == fact.id);
  BOOST_TEST(hits[1].item.text == facts[0]);  // from Qdrant
  BOOST_TEST(qdrant->search_requests() == searches + 1);
  BOOST_TEST(qdrant->points("kw_test") == 1u);
  qdrant->set_writes_down(false);
  BOOST_REQUIRE(qdrant->wait_points("kw_test", 2, std::chrono::seconds(30)));
}

BOOST_AUTO_TEST_CASE(a_delete_lost_at_a_stop_is_made_at_the_next_start) {
  start();
  wait_ready();
  std::vector<memory_item> stored;
  for (auto& f : facts) {
    stored.push_back(add_text("semantic", f));
  }
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size(), std::chrono::seconds(20)));
  qdrant->set_writes_down(true);
  BOOST_TEST(remove("semantic", stored[0].id));
  n.reset();  // the queued delete goes with the node
  BOOST_TEST(qdrant->points("kw_test") == facts.size());
  qdrant->set_writes_down(false);
  start();
  wait_ready();
  BOOST_REQUIRE(qdrant->wait_points("kw_test", facts.size() - 1, std::chrono::seconds(20)));
  auto hits = search("semantic", "who wrote the first computer program", 3);
  for (auto& h : hits) {
    BOOST_TEST(h.item.id != stored[0].id);
  }
}

BOOST_AUTO_TEST_CASE(expired_facts_are_erased_from_lmdb_and_qdrant) {
  cfg.memory_purge_every = std::chrono::milliseconds(100);
  start();
  wait_ready();
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
  memory_item brief;
  brief.text = "a fact that lasts a moment";
  brief.expires_ms = now + 500;
  auto gone = add("semantic", brief);
  BOOST_REQUIRE(gone);
  auto kept = add_text("semantic", "a fact that stays");
  // Erased from LMDB by the tier's purge, and from Qdrant (whether its
  // upsert got there first or not): only the fact that stays is left.
  std::vector<uint64_t> want = {seq_in(kept.id)};
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (qdrant->ids("kw_test") != want && std::chrono::steady_clock::now() < deadline) {
    qdrant->wait_requests(qdrant->requests() + 1, std::chrono::milliseconds(200));
  }
  BOOST_TEST((qdrant->ids("kw_test") == want));
  BOOST_TEST(!static_cast<bool>(get("semantic", gone->id)));
  BOOST_TEST(static_cast<bool>(get("semantic", kept.id)));
  BOOST_TEST(stats("semantic").items == 1u);
}

BOOST_AUTO_TEST_CASE(a_collection_that_does_not_fit_is_refused) {
  qdrant->create("kw_test", 128);
  start();
  BOOST_REQUIRE(search_until(*this, *qdrant, [](const caf::expected<std::vector<memory_hit>>& r) {
    return !r && code_of(r.error()) == name_of(errc::conflict);
  }));
  auto got = try_search("semantic", "anything");
  BOOST_REQUIRE(!got);
  BOOST_TEST(describe(got.error()).message.find("128") != std::string::npos);
  BOOST_TEST(describe(got.error()).field == "vector_backend");
  n.reset();

  // Points of another store in the collection.
  qdrant = std::make_unique<fake_qdrant>();
  cfg.memory_qdrant_url = qdrant->base_url();
  qdrant->create("kw_test", 64);
  qdrant->put("kw_test", 1, scripted_vector("x"), "ollama/embed-model/64", "another-store");
  start();
  BOOST_REQUIRE(search_until(*this, *qdrant, [](const caf::expected<std::vector<memory_hit>>& r) {
    return !r && code_of(r.error()) == name_of(errc::conflict);
  }));
  got = try_search("semantic", "anything");
  BOOST_REQUIRE(!got);
  BOOST_TEST(describe(got.error()).message.find("another store") != std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
