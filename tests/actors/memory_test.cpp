// The memory tiers in a real node: LMDB in a temporary directory, the HNSW
// index saved and loaded across restarts, the HTTP routes on 127.0.0.1.
#define BOOST_TEST_MODULE memory_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/memory/embedding.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/memory_calls.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include <atomic>
#include <filesystem>
#include <future>
#include <limits>
#include <map>
#include <set>

using namespace kowalski;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;
using std::chrono::seconds;

namespace {

struct fixture : scripted_llm, test_node, testing::memory_calls {
  fixture() : test_node("memory", scripted_llm::base_url()) {
  }

  node& memory_node() override {
    return *n;
  }

};

// A small corpus, and questions each with one right answer.
const std::vector<std::string> facts = {
  "Ada Lovelace wrote the first published computer program for the Analytical Engine",
  "The Eiffel Tower in Paris was finished in 1889",
  "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen",
  "The Rust compiler checks ownership and borrowing at compile time",
  "Mount Everest is the highest mountain above sea level",
  "LMDB is a memory-mapped key-value store with one writer at a time",
  "The Danube flows through Vienna, Budapest and Belgrade",
  "Alan Turing described a universal computing machine in 1936",
  "Espresso is brewed by forcing hot water through finely ground coffee",
  "The mitochondria produce most of the energy a cell uses",
};

const std::vector<std::pair<std::string, std::size_t>> questions = {
  {"who wrote the first computer program", 0},
  {"when was the Eiffel Tower in Paris finished", 1},
  {"what does photosynthesis turn sunlight into", 2},
  {"which river flows through Vienna and Budapest", 6},
  {"how is espresso coffee brewed", 8},
  {"what produces the energy of a cell", 9},
  {"which key-value store is memory-mapped", 5},
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(tiers, fixture)

BOOST_AUTO_TEST_CASE(the_hashing_embedder_is_deterministic_and_puts_similar_texts_close) {
  auto a = kowalski::memory::hash_embed("the quick brown fox jumps", 384);
  auto b = kowalski::memory::hash_embed("the quick brown fox jumps", 384);
  auto c = kowalski::memory::hash_embed("a quick brown fox leaps", 384);
  auto d = kowalski::memory::hash_embed("tax returns are due in April", 384);
  BOOST_TEST((a == b));
  BOOST_TEST(a.size() == 384u);
  using kowalski::memory::dot;
  BOOST_TEST(dot(a.data(), a.data(), 384) == 1.0f, boost::test_tools::tolerance(1e-5f));
  BOOST_TEST(dot(a.data(), c.data(), 384) > dot(a.data(), d.data(), 384));
  BOOST_TEST(dot(a.data(), c.data(), 384) > 0.4f);
  auto empty = kowalski::memory::hash_embed("   ", 384);
  BOOST_TEST(dot(empty.data(), empty.data(), 384) == 0.0f);
}

BOOST_AUTO_TEST_CASE(semantic_search_finds_the_known_answers) {
  start();
  std::vector<std::string> ids;
  for (auto& f : facts) {
    ids.push_back(add_text("semantic", f).id);
  }
  for (auto& [q, want] : questions) {
    auto hits = search("semantic", q, 3);
    BOOST_REQUIRE_MESSAGE(!hits.empty(), q);
    BOOST_TEST(hits[0].item.text == facts[want], q << " -> " << hits[0].item.text);
    BOOST_TEST(hits[0].matched_by == "vector");
    BOOST_TEST(hits[0].item.id == ids[want]);
  }
  BOOST_TEST(stats("semantic").index_items == facts.size());
}

BOOST_AUTO_TEST_CASE(episodic_search_weighs_similarity_and_recency_within_a_conversation) {
  start();
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
  auto day = int64_t{86'400'000};
  for (std::size_t i = 0; i < facts.size(); ++i) {
    add_text("episodic", facts[i], "c1", now - static_cast<int64_t>(i) * day);
  }
  add_text("episodic", "Ada Lovelace wrote the first computer program, said the user", "c2", now);
  for (auto& [q, want] : questions) {
    auto hits = search("episodic", q, 3, "c1");
    BOOST_REQUIRE(!hits.empty());
    BOOST_TEST(hits[0].item.text == facts[want], q << " -> " << hits[0].item.text);
    for (auto& h : hits) {
      BOOST_TEST(h.item.conversation == "c1");
    }
  }
  // Two episodes as similar to the question: the recent one comes first.
  add_text("episodic", "the meeting moved to room 4", "c3", now - 20 * day);
  add_text("episodic", "the meeting moved to room 7", "c3", now - day);
  auto hits = search("episodic", "where did the meeting move", 2, "c3");
  BOOST_REQUIRE(hits.size() == 2u);
  BOOST_TEST(hits[0].item.text == "the meeting moved to room 7");
  BOOST_TEST(hits[0].recency > hits[1].recency);
  BOOST_TEST(hits[0].score == 0.85 * hits[0].similarity + 0.15 * hits[0].recency,
             boost::test_tools::tolerance(1e-6));
  // An item without a vector is still found by its keywords.
  memory_item plain;
  plain.text = "the parcel arrived on Tuesday";
  plain.conversation = "c4";
  plain.embedder = "none";
  BOOST_REQUIRE(add("episodic", plain));
  hits = search("episodic", "when did the parcel arrive", 3, "c4");
  BOOST_REQUIRE(hits.size() == 1u);
  BOOST_TEST(hits[0].matched_by == "keyword");
}

BOOST_AUTO_TEST_CASE(working_search_finds_the_known_answers_by_keyword_and_recency) {
  start();
  for (auto& f : facts) {
    add_text("working", f, "w-corpus");
  }
  for (auto& [q, want] : questions) {
    auto hits = search("working", q, 3, "w-corpus");
    BOOST_REQUIRE_MESSAGE(!hits.empty(), q);
    BOOST_TEST(hits[0].item.text == facts[want], q << " -> " << hits[0].item.text);
  }
  // Equal matches: the most recent first.
  add_text("working", "the train to Graz leaves from platform 2", "w-corpus");
  add_text("working", "the train to Graz leaves from platform 5", "w-corpus");
  auto hits = search("working", "which platform does the Graz train leave from", 2, "w-corpus");
  BOOST_REQUIRE(hits.size() == 2u);
  BOOST_TEST(hits[0].item.text == "the train to Graz leaves from platform 5");
  // Another conversation's items are not this one's memory.
  BOOST_TEST(search("working", "who wrote the first computer program", 3, "w-other").empty());
}

BOOST_AUTO_TEST_CASE(episodic_search_ranks_as_exact_scoring_does) {
  start();
  // Episodes of one moment, so similarity alone orders them. The tier
  // compares 8-bit codes first; what it returns must be what scoring every
  // episode with its floats gives.
  auto at = std::chrono::duration_cast<std::chrono::milliseconds>(
              std::chrono::system_clock::now().time_since_epoch())
              .count()
            - 1000;
  std::vector<std::string> texts;
  add_memories batch;
  for (int i = 0; i < 600; ++i) {
    memory_item item;
    item.text = "topic " + std::to_string(i % 37) + " detail " + std::to_string(i % 101)
                + " colour" + std::to_string(i * 7 % 53);
    item.conversation = "c-rank";
    item.created_ms = at;
    texts.push_back(item.text);
    batch.items.push_back(item);
  }
  auto stored = testing::ask_memory<std::vector<memory_item>>(*n, "episodic", batch);
  BOOST_REQUIRE(static_cast<bool>(stored));
  BOOST_REQUIRE(stored->size() == texts.size());
  std::map<std::string, std::string> alive;  // id -> text
  for (auto& item : *stored) {
    alive[item.id] = item.text;
  }
  auto query_of = [](int k) {
    return "detail " + std::to_string(k * 13 % 101) + " topic " + std::to_string(k % 37)
           + " colour" + std::to_string(k * 3 % 53);
  };
  // Within the conversation and over the whole tier (which scans its codes
  // in slot order), against every live episode scored with its floats.
  auto check = [&](const std::string& query) {
    auto qv = memory::hash_embed(query, cfg.memory_dims);
    std::vector<double> exact;
    for (auto& [id, t] : alive) {
      auto v = memory::hash_embed(t, cfg.memory_dims);
      exact.push_back(memory::dot(qv.data(), v.data(), qv.size()));
    }
    std::sort(exact.rbegin(), exact.rend());
    for (const char* scope : {"c-rank", ""}) {
      auto hits = search("episodic", query, 5, scope);
      BOOST_REQUIRE(hits.size() == 5u);
      for (std::size_t i = 0; i < hits.size(); ++i) {
        BOOST_TEST(hits[i].matched_by == "vector");
        BOOST_TEST(alive.count(hits[i].item.id) == 1u, hits[i].item.id);
        BOOST_TEST(hits[i].similarity == exact[i], boost::test_tools::tolerance(1e-5));
      }
    }
    return search("episodic", query, 1, "");
  };
  for (int k = 0; k < 20; ++k) {
    check(query_of(k));
  }
  // Deleted episodes free their slots and new ones take them; an expired
  // episode is left out though it matches a query word for word.
  for (int k = 0; k < 10; ++k) {
    auto best = check(query_of(k));
    BOOST_REQUIRE(best.size() == 1u);
    auto gone = testing::ask_memory<bool>(*n, "episodic", delete_memory{best.front().item.id});
    BOOST_REQUIRE(static_cast<bool>(gone));
    alive.erase(best.front().item.id);
  }
  add_memories more;
  for (int i = 0; i < 40; ++i) {
    memory_item item;
    item.text = "topic " + std::to_string(i % 11) + " detail " + std::to_string(i * 5 % 101)
                + " colour" + std::to_string(i % 53) + " again";
    item.conversation = "c-rank";
    item.created_ms = at;
    more.items.push_back(item);
  }
  memory_item expired;
  expired.text = query_of(3);
  expired.conversation = "c-rank";
  expired.created_ms = at;
  expired.expires_ms = at + 1;
  more.items.push_back(expired);
  stored = testing::ask_memory<std::vector<memory_item>>(*n, "episodic", more);
  BOOST_REQUIRE(static_cast<bool>(stored));
  for (auto& item : *stored) {
    if (item.expires_ms == 0) {
      alive[item.id] = item.text;
    }
  }
  for (int k = 0; k < 20; ++k) {
    check(query_of(k));
  }
}

BOOST_AUTO_TEST_CASE(a_semantic_search_within_a_conversation_finds_its_facts_however_ranked) {
  start();
  // Many facts elsewhere that match the query better than the one fact of
  // the conversation asked about: the index's best of all holds none of it.
  for (int i = 0; i < 60; ++i) {
    add_text("semantic", "the lighthouse lamp is lit at dusk, note " + std::to_string(i),
             "c-elsewhere");
  }
  auto mine = add_text("semantic", "the lamp of the old mill is oiled weekly", "c-mine");
  auto hits = search("semantic", "when is the lighthouse lamp lit", 3, "c-mine");
  BOOST_REQUIRE(hits.size() == 1u);
  BOOST_TEST(hits[0].item.id == mine.id);
  BOOST_TEST(hits[0].item.conversation == "c-mine");
  // Its score is the exact cosine, as the index would give.
  auto qv = memory::hash_embed("when is the lighthouse lamp lit", cfg.memory_dims);
  auto fv = memory::hash_embed(mine.text, cfg.memory_dims);
  BOOST_TEST(hits[0].similarity == memory::dot(qv.data(), fv.data(), qv.size()),
             boost::test_tools::tolerance(1e-5));
  // Unknown conversation: nothing; deleted fact: gone from its conversation.
  BOOST_TEST(search("semantic", "lamp", 3, "c-nobody").empty());
  BOOST_REQUIRE(static_cast<bool>(
    testing::ask_memory<bool>(*n, "semantic", delete_memory{mine.id})));
  BOOST_TEST(search("semantic", "when is the lighthouse lamp lit", 3, "c-mine").empty());
  // After a restart the conversation's facts are known again.
  auto again = add_text("semantic", "the mill wheel turns in spring", "c-mine");
  n.reset();
  start();
  hits = search("semantic", "when is the lighthouse lamp lit", 3, "c-mine");
  BOOST_REQUIRE(hits.size() == 1u);
  BOOST_TEST(hits[0].item.id == again.id);
}

BOOST_AUTO_TEST_CASE(an_add_racing_its_conversations_delete_leaves_nothing_behind) {
  start();
  auto race = [this](const std::string& conversation) {
    // No handle outlives this call: a detached tier's thread waits for the
    // last one to go before the node can stop.
    caf::scoped_actor self{n->system()};
    auto tier = n->memory("episodic");
    memory_item item;
    item.text = "a note that races the delete of " + conversation;
    item.conversation = conversation;
    // In order from one sender: the add's commit is on its way (or done)
    // when the erase runs. Either the add is refused, or it is stored and
    // then erased; never left behind.
    self->send(tier, add_memory{item});
    self->send(tier, forget_conversation{conversation});
    for (int i = 0; i < 2; ++i) {
      self->receive([](memory_item&) {}, [](uint64_t) {},
                    [](caf::error& e) {
                      BOOST_TEST(std::string{to_string(describe(e).code)} == "conflict");
                    },
                    caf::after(seconds(10)) >> [] { BOOST_FAIL("no answer"); });
    }
  };
  for (int round = 0; round < 20; ++round) {
    auto conversation = "c-race-" + std::to_string(round);
    race(conversation);
    BOOST_TEST(search("episodic", "a note that races the delete", 5, conversation).empty());
  }
  // The store holds none of them either (a restart reads it).
  n.reset();
  start();
  BOOST_TEST(stats("episodic").items == 0u);
}

BOOST_AUTO_TEST_CASE(expired_working_items_are_left_out) {
  start();
  auto now = std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
               .count();
  memory_item old;
  old.text = "the parking pass expired yesterday";
  old.conversation = "w9";
  old.expires_ms = now - 1;
  auto stored = add("working", old);
  BOOST_REQUIRE(stored);
  add_text("working", "the parking pass is renewed", "w9");
  auto hits = search("working", "parking pass", 10, "w9");
  BOOST_REQUIRE(hits.size() == 1u);
  BOOST_TEST(hits[0].item.text == "the parking pass is renewed");
  BOOST_TEST(!static_cast<bool>(testing::ask_memory<memory_item>(*n, "working",
                                                                 get_memory{stored->id})));
}

BOOST_AUTO_TEST_CASE(working_memory_is_bounded_per_conversation) {
  cfg.memory_working_items = 5;
  start();
  for (int i = 0; i < 12; ++i) {
    add_text("working", "note number " + std::to_string(i) + " about parsing", "w1");
  }
  add_text("working", "unrelated note about parsing", "w2");
  BOOST_TEST(stats("working").items == 6u);
  auto hits = search("working", "parsing", 10, "w1");
  BOOST_REQUIRE(hits.size() == 5u);
  BOOST_TEST(hits[0].item.text == "note number 11 about parsing");  // the newest
  for (auto& h : hits) {
    BOOST_TEST(h.item.conversation == "w1");
  }
  BOOST_TEST(search("working", "zebra", 10, "w1").empty());
}

BOOST_AUTO_TEST_CASE(thousands_of_appends_in_one_second_get_distinct_ids_that_survive_a_restart) {
  start();
  constexpr int count = 3000;
  // All sent at once, none waited for: the tier must not hand out an id twice.
  auto done = std::make_shared<std::promise<std::set<std::string>>>();
  auto future = done->get_future();
  // No handle outlives this block: a detached tier's thread waits for the
  // last one to go before the node can stop.
  n->system().spawn([=, target = n->memory("episodic")](caf::event_based_actor* self) {
    auto ids = std::make_shared<std::set<std::string>>();
    auto left = std::make_shared<int>(count);
    for (int i = 0; i < count; ++i) {
      memory_item item;
      item.text = "append " + std::to_string(i);
      item.created_ms = 1'700'000'000'000;  // the same millisecond for all
      self->request(target, seconds(60), add_memory{item})
        .then(
          [=](memory_item& m) {
            ids->insert(m.id);
            if (--*left == 0) {
              done->set_value(*ids);
            }
          },
          [=](caf::error&) {
            if (--*left == 0) {
              done->set_value(*ids);
            }
          });
    }
  });
  BOOST_REQUIRE(future.wait_for(seconds(60)) == std::future_status::ready);
  auto ids = future.get();
  BOOST_TEST(ids.size() == std::size_t{count});
  // After a restart new ids come after the old ones, never again. The add
  // reaches the tier while it reads the store: it waits for the whole read.
  n.reset();
  start();
  auto later = add_text("episodic", "after the restart");
  BOOST_TEST(ids.count(later.id) == 0u);
  BOOST_TEST(later.id > *ids.rbegin());
  BOOST_TEST(stats("episodic").items == std::size_t{count} + 1);
  // The first episodes and the last are found.
  for (const char* text : {"append 7", "append 2999"}) {
    auto hits = search("episodic", text, 1);
    BOOST_REQUIRE(hits.size() == 1u);
    BOOST_TEST(hits.front().item.text == text);
  }
}

BOOST_AUTO_TEST_CASE(a_deleted_items_id_is_never_given_again) {
  start();
  auto working = add_text("working", "kept in memory only");
  for (const char* tier : {"episodic", "semantic"}) {
    add_text(tier, "first");
    auto last = add_text(tier, "second, deleted next");
    {
      caf::scoped_actor self{n->system()};
      self->request(n->memory(tier), seconds(10), delete_memory{last.id})
        .receive([](bool) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    }
    n.reset();
    start();
    auto next = add_text(tier, "third");
    BOOST_TEST(next.id > last.id, tier << ": " << next.id << " after " << last.id);
    auto hits = search(tier, "second deleted next", 3);
    for (auto& h : hits) {
      BOOST_TEST(h.item.id != last.id);
    }
  }
  // The working tier forgets at a restart, and its new ids are new too.
  auto fresh = add_text("working", "after two restarts");
  BOOST_TEST(fresh.id > working.id, fresh.id << " after " << working.id);
  BOOST_TEST(!static_cast<bool>(testing::ask_memory<memory_item>(*n, "working",
                                                                 get_memory{working.id})));
  // Not a number, or out of a float's range: refused, naming the element.
  memory_item bad;
  bad.text = "x";
  bad.embedder = kowalski::memory::hash_embedder_name(384);
  bad.embedding.assign(384, 0.1f);
  bad.embedding[7] = std::numeric_limits<float>::infinity();
  auto got = add("semantic", bad);
  BOOST_REQUIRE(!got);
  BOOST_TEST(describe(got.error()).field == "embedding");
  BOOST_TEST(describe(got.error()).message.find("embedding[7]") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(the_semantic_index_is_loaded_after_a_restart_and_rebuilt_the_same) {
  start();
  std::vector<std::string> texts;
  for (int i = 0; i < 600; ++i) {
    texts.push_back("fact " + std::to_string(i) + " about topic " + std::to_string(i % 37)
                    + " and detail " + std::to_string(i * 7 % 101));
    add_text("semantic", texts.back());
  }
  auto answers = [&] {
    std::vector<std::vector<std::string>> out;
    for (int q = 0; q < 20; ++q) {
      std::vector<std::string> ids;
      for (auto& h : search("semantic", "topic " + std::to_string(q) + " and detail "
                                          + std::to_string(q * 3), 5)) {
        ids.push_back(h.item.id);
      }
      out.push_back(ids);
    }
    return out;
  };
  auto before = answers();
  BOOST_TEST(stats("semantic").index_source == "empty");
  n.reset();  // saves the index
  BOOST_REQUIRE(std::filesystem::exists(dir / "semantic.hnsw"));
  start();
  BOOST_TEST(stats("semantic").index_source == "loaded");
  BOOST_TEST(stats("semantic").index_items == 600u);
  BOOST_TEST((answers() == before));
  // Without the file, the index is built again from LMDB, the same.
  n.reset();
  std::filesystem::remove(dir / "semantic.hnsw");
  start();
  BOOST_TEST(stats("semantic").index_source == "rebuilt");
  BOOST_TEST((answers() == before));
  // A deleted fact stays deleted across a restart with a saved index.
  auto victim = search("semantic", texts[5], 1).at(0).item;
  {
    caf::scoped_actor self{n->system()};  // gone before the node stops
    self->request(n->memory("semantic"), seconds(10), delete_memory{victim.id})
      .receive([](bool) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  n.reset();
  start();
  auto hits = search("semantic", texts[5], 3);
  for (auto& h : hits) {
    BOOST_TEST(h.item.id != victim.id);
  }
  BOOST_TEST(stats("semantic").index_items == 599u);
}

BOOST_AUTO_TEST_CASE(triples_are_kept_once_and_found_by_entity) {
  start();
  auto ask = [&](auto msg, auto on_reply) {
    caf::scoped_actor self{n->system()};  // gone before the node stops
    self->request(n->memory("semantic"), seconds(10), msg)
      .receive(on_reply, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  };
  uint64_t fresh = 0;
  ask(add_triples{{triple{"Ada", "wrote", "the first program", "", 0},
                   triple{"Ada", "worked with", "Babbage", "", 0},
                   triple{"Babbage", "designed", "the Analytical Engine", "", 0}}},
      [&](uint64_t got) { fresh = got; });
  BOOST_TEST(fresh == 3u);
  ask(add_triples{{triple{"ada", "WROTE", "The first program", "", 0}}},
      [&](uint64_t got) { fresh = got; });
  BOOST_TEST(fresh == 0u);
  std::vector<triple> found;
  ask(query_triples{"Babbage", 10}, [&](std::vector<triple>& t) { found = t; });
  BOOST_TEST(found.size() == 2u);  // as subject and as object
  n.reset();
  start();
  ask(query_triples{"ada", 10}, [&](std::vector<triple>& t) { found = t; });
  BOOST_TEST(found.size() == 2u);
}

BOOST_AUTO_TEST_CASE(mixing_embedders_is_refused) {
  start();
  add_text("semantic", "a fact from the built-in embedder");
  memory_item foreign;
  foreign.text = "a fact with a vector of another model";
  foreign.embedding.assign(384, 0.1f);
  foreign.embedder = "ollama:nomic-embed-text";
  auto got = add("semantic", foreign);
  BOOST_REQUIRE(!got);
  BOOST_TEST((describe(got.error()).code == errc::conflict));
  BOOST_TEST(describe(got.error()).field == "embedder");
  // A node configured for other vectors refuses the store's.
  n.reset();
  cfg.memory_dims = 128;
  start();
  got = add("semantic", memory_item{});
  memory_item item;
  item.text = "another";
  got = add("semantic", item);
  BOOST_REQUIRE(!got);
  BOOST_TEST((describe(got.error()).code == errc::conflict));
  BOOST_TEST(describe(got.error()).message.find("hash-v1-384") != std::string::npos,
             describe(got.error()).message);
}

BOOST_AUTO_TEST_CASE(consolidation_summarizes_once_and_leaves_garbage_for_later) {
  auto garbage = std::make_shared<std::atomic<bool>>(true);
  set_script([garbage](const std::string& body) {
    testing::behaviour b;
    if (body.find("<turns>") == std::string::npos) {
      return b;
    }
    if (*garbage) {
      b.reply = "Sure! Here is a summary: they talked.";
      return b;
    }
    b.reply = body.find("Lisbon") != std::string::npos
                ? R"({"summary": "The user is moving to Lisbon in May.",)"
                  R"( "triples": [["user", "moves to", "Lisbon"], ["move", "happens in", "May"],)"
                  R"( ["bad"]]})"
                : R"({"summary": "They discussed the garden.", "triples": []})";
    return b;
  });
  start();
  auto episode = [&](const std::string& conv, const std::string& role, const std::string& text) {
    memory_item item;
    item.text = text;
    item.conversation = conv;
    item.role = role;
    BOOST_REQUIRE(add("episodic", item));
  };
  episode("m1", "user", "I am moving to Lisbon in May");
  episode("m1", "assistant", "Congratulations on the move to Lisbon");
  episode("m2", "user", "the tomatoes in the garden are ripe");
  net::http_client client;
  auto consolidate = [&] {
    return testing::fetch(client, "POST", base() + "/v1/memory/consolidate", "{}", {},
                          seconds(60));
  };
  // A model that answers no JSON: nothing is written, nothing is marked.
  auto res = consolidate();
  BOOST_REQUIRE_MESSAGE(res.status == 200, res.body);
  BOOST_TEST(res.body.find("\"episodes\":0") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"failed\":2") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("no JSON object") != std::string::npos, res.body);
  BOOST_TEST(stats("semantic").items == 0u);
  // Then it does: both conversations are summarized, the triples stored.
  *garbage = false;
  res = consolidate();
  BOOST_TEST(res.body.find("\"episodes\":3") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"summaries\":2") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"triples\":2") != std::string::npos, res.body);
  auto hits = search("semantic", "where is the user moving", 1);
  BOOST_REQUIRE(!hits.empty());
  BOOST_TEST(hits[0].item.text == "The user is moving to Lisbon in May.");
  BOOST_TEST(hits[0].item.kind == "summary");
  res = testing::fetch(client, "GET", base() + "/v1/memory/semantic/triples?entity=lisbon");
  BOOST_TEST(res.body.find("moves to") != std::string::npos, res.body);
  // Again: nothing left to do, nothing written twice.
  auto before = requests();
  res = consolidate();
  BOOST_TEST(res.body.find("\"episodes\":0") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"summaries\":0") != std::string::npos, res.body);
  BOOST_TEST(requests() == before);
  BOOST_TEST(stats("semantic").items == 2u);
  // Episodes know it.
  caf::scoped_actor self{n->system()};
  self->request(n->memory("episodic"), seconds(10), list_unconsolidated{"", 100})
    .receive([](std::vector<memory_item>& left) { BOOST_TEST(left.empty()); },
             [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
}

BOOST_AUTO_TEST_CASE(scheduled_consolidation_splits_long_conversations_and_rests_failing_ones) {
  cfg.memory_consolidate_every = std::chrono::milliseconds(200);
  set_script([](const std::string& body) {
    testing::behaviour b;
    if (body.find("<turns>") == std::string::npos) {
      return b;
    }
    b.reply = body.find("always failing") != std::string::npos
                ? "no JSON here"
                : R"({"summary": "The user asked about the weather.", "triples": []})";
    return b;
  });
  start();
  add_memories many;
  for (int i = 0; i < 210; ++i) {
    memory_item item;
    item.text = "always failing note " + std::to_string(i);
    item.conversation = "a";
    item.role = "user";
    many.items.push_back(item);
  }
  for (int i = 0; i < 3; ++i) {
    memory_item item;
    item.text = "what is the weather like, question " + std::to_string(i);
    item.conversation = "b";
    item.role = "user";
    many.items.push_back(item);
  }
  {
    caf::scoped_actor self{n->system()};
    self->request(n->memory("episodic"), seconds(30), many)
      .receive([](std::vector<memory_item>&) {}, [](caf::error& e) { BOOST_FAIL(to_string(e)); });
  }
  // The first run takes 200 of "a", in parts of 40; the first part fails,
  // the rest of "a" waits with it, and the next run reaches "b" behind it.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (stats("semantic").items == 0 && std::chrono::steady_clock::now() < deadline) {
    wait_requests(requests() + 1, std::chrono::milliseconds(200));
  }
  BOOST_REQUIRE(stats("semantic").items == 1u);
  BOOST_TEST(search("semantic", "the weather", 1)[0].item.kind == "summary");
  std::size_t failing = 0;
  for (auto& r : received()) {
    if (r.body.find("always failing") != std::string::npos) {
      ++failing;
      // 40 episodes in the prompt, the oldest of "a".
      std::size_t notes = 0;
      for (auto at = r.body.find("always failing note"); at != std::string::npos;
           at = r.body.find("always failing note", at + 1)) {
        ++notes;
      }
      BOOST_TEST(notes == 40u);
      BOOST_TEST(r.body.find("always failing note 0\\n") != std::string::npos, r.body);
    }
  }
  BOOST_TEST(failing == 1u);  // resting since
}

BOOST_AUTO_TEST_CASE(the_http_routes_add_search_get_delete_and_refuse_bad_input) {
  start();
  net::http_client client;
  auto post = [&](const std::string& path, const std::string& body) {
    return testing::fetch(client, "POST", base() + path, body);
  };
  auto res = post("/v1/memory/semantic", R"({"text": "Ada Lovelace wrote the first program"})");
  BOOST_REQUIRE_MESSAGE(res.status == 201, res.body);
  auto at = res.body.find("\"id\":\"") + 6;
  auto id = res.body.substr(at, res.body.find('"', at) - at);
  BOOST_TEST(post("/v1/memory/episodic",
                  R"({"text": "the user asked about Ada", "conversation": "c9", "role": "user"})")
               .status
             == 201);
  BOOST_TEST(post("/v1/memory/working", R"({"text": "Ada is the topic", "conversation": "c9"})")
               .status
             == 201);
  res = testing::fetch(client, "GET",
                       base() + "/v1/memory/search?q=Ada%20first%20program&conversation=c9");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(res.body.find("\"tier\":\"working\"") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"tier\":\"episodic\"") != std::string::npos, res.body);
  res = testing::fetch(client, "GET", base() + "/v1/memory/search?q=Ada%20first%20program");
  BOOST_TEST(res.body.find("\"tier\":\"semantic\"") != std::string::npos, res.body);
  res = testing::fetch(client, "GET", base() + "/v1/memory/semantic/" + id);
  BOOST_TEST(res.status == 200);
  BOOST_TEST(res.body.find("first program") != std::string::npos);
  BOOST_TEST(testing::fetch(client, "DELETE", base() + "/v1/memory/semantic/" + id).status == 200);
  BOOST_TEST(testing::fetch(client, "GET", base() + "/v1/memory/semantic/" + id).status == 404);
  res = testing::fetch(client, "GET", base() + "/v1/memory/stats");
  BOOST_TEST(res.body.find("\"index_source\"") != std::string::npos, res.body);

  auto expect = [&](net::client_result r, int status, const std::string& field) {
    BOOST_TEST(r.status == status, r.body);
    BOOST_TEST(r.body.find("\"field\":\"" + field + "\"") != std::string::npos, r.body);
  };
  expect(post("/v1/memory/semantic", R"({"text": ""})"), 400, "text");
  expect(post("/v1/memory/semantic", R"({"text": 5})"), 400, "text");
  expect(post("/v1/memory/nowhere", R"({"text": "x"})"), 400, "tier");
  expect(post("/v1/memory/working", R"({"text": "x"})"), 400, "conversation");
  expect(post("/v1/memory/semantic",
              R"({"text": "x", "embedding": [0.1, 0.2], "embedder": "hash-v1-384"})"),
         400, "embedding");
  expect(post("/v1/memory/semantic", R"({"text": "x", "embedding": [0.1, "a"]})"), 400,
         "embedding");
  expect(post("/v1/memory/semantic", R"({"text": "x", "embedding": [0.1]})"), 400, "embedder");
  expect(testing::fetch(client, "GET", base() + "/v1/memory/search?tier=semantic"), 400, "q");
  expect(testing::fetch(client, "GET", base() + "/v1/memory/search?q=x&tier=deep"), 400, "tier");
  expect(testing::fetch(client, "GET", base() + "/v1/memory/episodic/epi_nope"), 404, "id");
  expect(post("/v1/memory/semantic/triples", R"({"triples": [{"subject": "a"}]})"), 400,
         "triples[0].predicate");
  // The node still serves after all of that.
  BOOST_TEST(post("/v1/memory/semantic", R"({"text": "still here"})").status == 201);
}

BOOST_AUTO_TEST_CASE(chat_turns_left_in_the_outbox_are_archived_once_at_the_next_start) {
  cfg.memory_purge_every = std::chrono::hours(1);  // no tick replays them early
  start();
  // A turn whose commit landed just before the node stopped: its outbox
  // record is in the store, its episodes are not. And a record that no
  // longer decodes.
  add_memories turns;
  for (const char* text : {"the lighthouse keeper paints the stairs blue",
                           "blue stairs make a lighthouse look cheerful"}) {
    memory_item item;
    item.kind = "turn";
    item.text = text;
    item.conversation = "c-outbox";
    item.role = turns.items.empty() ? "user" : "assistant";
    item.created_ms = 1'700'000'000'000;
    turns.items.push_back(item);
  }
  const std::string key = "archive/c-outbox/1";
  {
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", key, store::encode(turns)});
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "archive/c-garbled/1", "not a record"});
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), seconds(10), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  BOOST_TEST(stats("episodic").items == 0u);
  // Settled: the tier has read the outbox (it answers only after its start),
  // and the writer has committed what the tier sent it before that answer
  // (the built-in embedder answers in place, so the commit is sent by then).
  auto settle = [this] {
    stats("episodic");
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), seconds(10), ping_atom::value)
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  };
  auto outbox = [this] {
    std::vector<std::string> keys;
    std::string error;
    n->store()->scan("memory_meta", "archive/", "", [&](std::string_view k, std::string_view) {
      keys.emplace_back(k);
      return true;
    }, error);
    BOOST_REQUIRE_MESSAGE(error.empty(), error);
    return keys;
  };
  n.reset();
  start();
  settle();
  BOOST_TEST(stats("episodic").items == 2u);
  auto hits = search("episodic", "lighthouse keeper stairs", 3, "c-outbox");
  BOOST_REQUIRE(hits.size() == 2u);
  std::set<std::string> roles;
  for (auto& h : hits) {
    roles.insert(h.item.role);
    BOOST_TEST(h.item.created_ms == 1'700'000'000'000);
    BOOST_TEST(h.item.kind == "turn");
  }
  BOOST_TEST((roles == std::set<std::string>{"assistant", "user"}));
  // Both records are gone: the archived one with its episodes' commit, the
  // garbled one dropped.
  BOOST_TEST(outbox().empty());
  // Archived once: the turn's own archive arriving late adds nothing, and
  // neither does another restart.
  auto late =
    testing::ask_memory<std::vector<memory_item>>(*n, "episodic", add_memories{turns.items, key});
  BOOST_REQUIRE(static_cast<bool>(late));
  BOOST_TEST(late->empty());
  n.reset();
  start();
  settle();
  BOOST_TEST(stats("episodic").items == 2u);
  // An archive with its record present is committed and takes the record.
  {
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "archive/c-outbox/3", store::encode(turns)});
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), seconds(10), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  auto live = testing::ask_memory<std::vector<memory_item>>(*n, "episodic",
                                                   add_memories{turns.items, "archive/c-outbox/3"});
  BOOST_REQUIRE(static_cast<bool>(live));
  BOOST_TEST(live->size() == 2u);
  BOOST_TEST(outbox().empty());
  BOOST_TEST(stats("episodic").items == 4u);
}

BOOST_AUTO_TEST_CASE(hundreds_of_records_left_in_the_outbox_are_all_archived_at_start) {
  cfg.memory_purge_every = std::chrono::hours(1);  // no tick: the start does it all
  start();
  stats("episodic");  // started, with an empty outbox
  constexpr std::size_t records = 600;  // more than two rounds of 256
  {
    write_batch wb;
    for (std::size_t r = 0; r < records; ++r) {
      add_memories turns;
      for (const char* role : {"user", "assistant"}) {
        memory_item item;
        item.kind = "turn";
        item.role = role;
        item.text = std::string{role} + " said line " + std::to_string(r);
        item.conversation = "c-many";
        item.created_ms = 1'700'000'000'000;
        turns.items.push_back(item);
      }
      auto key = "archive/c-many/" + std::to_string(1000 + 2 * r);
      wb.ops.push_back(kv_op{kv_op::put, "memory_meta", key, store::encode(turns)});
    }
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), seconds(10), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  n.reset();
  start();
  // The rounds run after the tier's start; each stats answer comes after
  // the commits handed in before it are answered or on their way.
  auto deadline = std::chrono::steady_clock::now() + seconds(30);
  std::size_t items = 0;
  while ((items = stats("episodic").items) < 2 * records
         && std::chrono::steady_clock::now() < deadline) {
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), seconds(10), ping_atom::value)
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  BOOST_TEST(items == 2 * records);
  std::string error;
  std::size_t left = 0;
  n->store()->scan("memory_meta", "archive/", "", [&](std::string_view, std::string_view) {
    ++left;
    return true;
  }, error);
  BOOST_TEST(left == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
