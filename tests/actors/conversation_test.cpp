// Conversations through a real node: turns committed before replies, LRU
// eviction and reload, history window, restarts, failures that lose nothing.
#define BOOST_TEST_MODULE conversation_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include "messages/registry.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <algorithm>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <set>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;

namespace {

struct peer_config : caf::actor_system_config {
  peer_config() {
    register_message_types(*this);
    load<caf::io::middleman>();
    set("scheduler.max-threads", size_t{2});
    set("middleman.app-identifiers", std::vector<std::string>{"kowalski"});
  }
};

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;

  fixture() : test_node("conv", scripted_llm::base_url()) {
  }

  template <class T, class... Ts>
  std::pair<T, caf::error> ask(Ts&&... xs) {
    std::pair<T, caf::error> out;
    caf::scoped_actor self{n->system()};
    self->request(n->manager(), std::chrono::seconds(30), std::forward<Ts>(xs)...)
      .receive([&](T& value) { out.first = std::move(value); },
               [&](caf::error& err) { out.second = std::move(err); });
    return out;
  }

  std::string create(std::string model = {}) {
    create_conversation req;
    req.model = std::move(model);
    auto [info, err] = ask<conversation_info>(req);
    BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
    return info.id;
  }

  std::pair<chat_reply, caf::error> say(const std::string& id, std::string text) {
    user_message msg;
    msg.conversation_id = id;
    msg.content = std::move(text);
    return ask<chat_reply>(msg);
  }

  conversation_detail detail(const std::string& id) {
    auto [d, err] = ask<conversation_detail>(get_atom::value, id);
    BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
    return d;
  }

  std::pair<uint64_t, uint64_t> stats() {
    std::pair<uint64_t, uint64_t> out;
    caf::scoped_actor self{n->system()};
    self->request(n->manager(), std::chrono::seconds(10), stats_atom::value)
      .receive([&](uint64_t live, uint64_t retiring) { out = {live, retiring}; },
               [&](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
    return out;
  }
};

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto pos = haystack.find(needle); pos != std::string::npos;
       pos = haystack.find(needle, pos + 1)) {
    ++n;
  }
  return n;
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(conversations, fixture)

BOOST_AUTO_TEST_CASE(a_turn_is_stored_before_the_reply) {
  // Latency puts the reply, and so the update, strictly after the creation.
  behaviour slow;
  slow.latency = std::chrono::milliseconds(10);
  server.set_default(slow);
  start();
  auto id = create();
  auto [reply, err] = say(id, "first words");
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(reply.user.seq == 1u);
  BOOST_TEST(reply.assistant.seq == 2u);
  BOOST_TEST(reply.assistant.content == "echo: first words");
  BOOST_TEST(reply.assistant.model == "test-model");

  // Read straight from the store: the reply implies the commit.
  auto d = detail(id);
  BOOST_REQUIRE(d.turns.size() == 2u);
  BOOST_TEST(d.turns[0].content == "first words");
  BOOST_TEST(d.turns[1].content == "echo: first words");
  BOOST_TEST(d.info.message_count == 2u);
  BOOST_TEST(d.info.updated_ms > d.info.created_ms);
  BOOST_TEST(d.info.updated_ms == d.turns[1].created_ms);

  // Each turn moves updated_ms on; created_ms stays.
  BOOST_REQUIRE(!say(id, "second words").second);
  auto later = detail(id);
  BOOST_TEST(later.info.created_ms == d.info.created_ms);
  BOOST_TEST(later.info.updated_ms > d.info.updated_ms);
  BOOST_TEST(later.info.updated_ms == later.turns[3].created_ms);
}

BOOST_AUTO_TEST_CASE(messages_to_one_conversation_are_answered_in_order) {
  start();
  auto id = create();
  caf::scoped_actor self{n->system()};
  for (int i = 0; i < 6; ++i) {
    user_message msg;
    msg.conversation_id = id;
    msg.content = "m" + std::to_string(i);
    self->send(n->manager(), msg);
  }
  std::vector<uint64_t> seqs;
  for (int i = 0; i < 6; ++i) {
    self->receive([&](chat_reply& r) { seqs.push_back(r.user.seq); },
                  [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); },
                  caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("no reply"); });
  }
  std::sort(seqs.begin(), seqs.end());
  BOOST_TEST((seqs == std::vector<uint64_t>{1, 3, 5, 7, 9, 11}));
  BOOST_TEST(detail(id).turns.size() == 12u);
}

BOOST_AUTO_TEST_CASE(a_conversation_refuses_messages_beyond_its_queue) {
  cfg.conversations_max_queued = 2;
  start();
  auto id = create();
  behaviour slow;
  slow.latency = std::chrono::milliseconds(200);
  server.set_default(slow);
  caf::scoped_actor self{n->system()};
  for (int i = 0; i < 5; ++i) {
    user_message msg;
    msg.conversation_id = id;
    msg.content = "m" + std::to_string(i);
    self->send(n->manager(), msg);
  }
  int ok = 0, refused = 0;
  for (int i = 0; i < 5; ++i) {
    self->receive([&](chat_reply&) { ++ok; },
                  [&](caf::error& e) {
                    BOOST_TEST(to_string(describe(e).code) == "overloaded");
                    ++refused;
                  },
                  caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("no reply"); });
  }
  BOOST_TEST(ok == 3);  // one answered at once, two waited
  BOOST_TEST(refused == 2);
  BOOST_TEST(detail(id).turns.size() == 6u);
}

BOOST_AUTO_TEST_CASE(evicted_conversations_come_back_with_their_history) {
  cfg.conversations_max_live = 2;
  start();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(create());
    auto [reply, err] = say(ids.back(), "remember token-" + std::to_string(i));
    BOOST_REQUIRE(!err);
  }
  BOOST_TEST(stats().first <= 2u);

  // The first conversation was evicted; its next prompt carries its history.
  auto [reply, err] = say(ids[0], "what was the token?");
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.user.seq == 3u);
  auto body = server.received().back().body;
  BOOST_TEST(body.find("remember token-0") != std::string::npos);
  BOOST_TEST(body.find("token-1") == std::string::npos);
  BOOST_TEST(stats().first <= 2u);
}

BOOST_AUTO_TEST_CASE(evictions_racing_new_messages_lose_no_turn) {
  cfg.conversations_max_live = 2;
  behaviour b;
  b.latency = std::chrono::milliseconds(3);
  server.set_default(b);
  start();
  constexpr int conversations = 8;
  constexpr int rounds = 6;
  std::vector<std::string> ids;
  for (int c = 0; c < conversations; ++c) {
    ids.push_back(create());
  }

  // Round-robin over eight conversations with two live: nearly every message
  // activates one and evicts another that still has turns queued or in flight.
  caf::scoped_actor self{n->system()};
  for (int r = 0; r < rounds; ++r) {
    for (int c = 0; c < conversations; ++c) {
      user_message msg;
      msg.conversation_id = ids[c];
      msg.content = "c" + std::to_string(c) + " m" + std::to_string(r);
      self->send(n->manager(), msg);
    }
  }
  std::map<std::string, std::set<uint64_t>> user_seqs;
  for (int i = 0; i < conversations * rounds; ++i) {
    self->receive(
      [&](chat_reply& r) {
        BOOST_TEST(r.assistant.seq == r.user.seq + 1);
        BOOST_TEST(r.assistant.content == "echo: " + r.user.content);
        BOOST_TEST(user_seqs[r.conversation_id].insert(r.user.seq).second);
      },
      [&](caf::error& e) { BOOST_FAIL("a message failed: " << caf::to_string(e)); },
      caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("a reply is missing"); });
  }

  std::set<uint64_t> odd;
  for (uint64_t seq = 1; seq < 2 * rounds; seq += 2) {
    odd.insert(seq);
  }
  for (int c = 0; c < conversations; ++c) {
    BOOST_TEST((user_seqs[ids[c]] == odd), "conversation " << c);

    // The store holds seq 1..12 without gaps: every message, its echo after it.
    auto d = detail(ids[c]);
    BOOST_REQUIRE_EQUAL(d.turns.size(), static_cast<std::size_t>(2 * rounds));
    BOOST_TEST(d.info.message_count == 2u * rounds);
    std::set<std::string> sent;
    for (std::size_t i = 0; i < d.turns.size(); ++i) {
      BOOST_TEST(d.turns[i].seq == i + 1);
      if (i % 2 == 0) {
        BOOST_TEST(d.turns[i].role == "user");
        sent.insert(d.turns[i].content);
      } else {
        BOOST_TEST(d.turns[i].content == "echo: " + d.turns[i - 1].content);
      }
    }
    for (int r = 0; r < rounds; ++r) {
      auto text = "c" + std::to_string(c) + " m" + std::to_string(r);
      BOOST_TEST(sent.count(text) == 1u, "lost: " << text);
    }
  }
  BOOST_TEST(stats().first <= 2u);
}

BOOST_AUTO_TEST_CASE(a_reloaded_long_history_sends_only_the_window) {
  cfg.conversations_max_live = 1;
  cfg.conversations_history_window = 3;
  cfg.memory_in_chat = false;  // memory would bring older turns back (tested below)
  start();
  auto id = create();
  for (int i = 0; i < 4; ++i) {
    BOOST_REQUIRE(!say(id, "turn " + std::to_string(i)).second);
  }

  // Another conversation takes the only live slot; the first is evicted.
  auto other = create();
  BOOST_REQUIRE(!say(other, "displace it").second);
  BOOST_TEST(stats().first == 1u);
  server.reset_counters();

  auto [reply, err] = say(id, "after eviction");
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(reply.user.seq == 9u);
  auto received = server.received();
  BOOST_REQUIRE_EQUAL(received.size(), 1u);
  auto body = received.front().body;

  // Window of 3: the last turn reloaded from the store, then the new message.
  BOOST_TEST(count(body, "\"role\":\"user\"") + count(body, "\"role\":\"assistant\"") == 3u);
  BOOST_TEST(body.find("\"echo: turn 3\"") != std::string::npos, body);
  BOOST_TEST(body.find("\"turn 3\"") != std::string::npos, body);
  BOOST_TEST(body.find("after eviction") != std::string::npos);
  BOOST_TEST(body.find("turn 2") == std::string::npos, body);
  BOOST_TEST(body.find("turn 0") == std::string::npos, body);

  // The store, and so GET, still has every turn.
  auto d = detail(id);
  BOOST_REQUIRE_EQUAL(d.turns.size(), 10u);
  BOOST_TEST(d.turns[0].content == "turn 0");
  BOOST_TEST(d.turns[8].content == "after eviction");
}

BOOST_AUTO_TEST_CASE(the_history_window_limits_the_prompt_not_the_store) {
  cfg.conversations_history_window = 3;
  cfg.memory_in_chat = false;  // memory would bring older turns back (tested below)
  start();
  auto id = create();
  for (int i = 0; i < 4; ++i) {
    BOOST_REQUIRE(!say(id, "turn " + std::to_string(i)).second);
  }
  auto body = server.received().back().body;
  // Window of 3: two history messages plus the new one.
  BOOST_TEST(count(body, "\"role\":\"user\"") + count(body, "\"role\":\"assistant\"") == 3u);
  BOOST_TEST(body.find("turn 3") != std::string::npos);
  BOOST_TEST(body.find("turn 1") == std::string::npos);
  BOOST_TEST(detail(id).turns.size() == 8u);
}

BOOST_AUTO_TEST_CASE(memory_brings_what_the_window_lost_into_a_delimited_section) {
  cfg.conversations_history_window = 2;
  start();
  // A fact in the semantic tier, and a turn that will leave the window.
  {
    caf::scoped_actor self{n->system()};
    memory_item fact;
    fact.text = "The office wifi password is written on the whiteboard";
    self->request(n->memory("semantic"), std::chrono::seconds(10), add_memory{fact})
      .receive([](memory_item&) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  auto id = create();
  BOOST_REQUIRE(!say(id, "my parcel tracking number is KX-99812").second);
  for (int i = 0; i < 3; ++i) {
    BOOST_REQUIRE(!say(id, "small talk " + std::to_string(i)).second);
  }
  auto [reply, err] = say(id, "what is my parcel tracking number and the wifi password");
  BOOST_REQUIRE(!err);
  auto body = server.received().back().body;
  // The old turn is back, in the system prompt's memory section.
  auto open = body.find("<memory>");
  auto close = body.find("</memory>");
  BOOST_REQUIRE(open != std::string::npos);
  BOOST_REQUIRE(close != std::string::npos);
  auto section = body.substr(open, close - open);
  BOOST_TEST(section.find("KX-99812") != std::string::npos, section);
  BOOST_TEST(section.find("whiteboard") != std::string::npos, section);
  // Each item once, though the episodic and working tiers both hold it.
  BOOST_TEST(count(section, ") my parcel tracking number is KX-99812") == 1u, section);
  // What memory added is in the reply, and not in the stored user message.
  bool listed = false;
  for (auto& h : reply.memory) {
    listed = listed || h.item.text.find("KX-99812") != std::string::npos;
  }
  BOOST_TEST(listed);
  auto d = detail(id);
  BOOST_TEST(d.turns.at(d.turns.size() - 2).content
             == "what is my parcel tracking number and the wifi password");
  BOOST_TEST(d.turns.at(d.turns.size() - 2).content.find("<memory>") == std::string::npos);
  // Every turn reached the episodic tier, and each outbox record written
  // with a turn went with its episodes. (With the built-in embedder, which
  // answers in place: the tier sends a commit while handling the add.) The
  // tier has the last archive in
  // its mailbox before the first request, so it has sent that commit when
  // it answers; the writer's ping follows the commit, and the second stats
  // request follows the commit's answer to the tier.
  {
    caf::scoped_actor self{n->system()};
    auto episodes = [&] {
      std::size_t items = 0;
      self->request(n->memory("episodic"), std::chrono::seconds(10), stats_atom::value)
        .receive([&](memory_tier_stats& s) { items = s.items; },
                 [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
      return items;
    };
    episodes();
    self->request(n->writer(), std::chrono::seconds(10), ping_atom::value)
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    BOOST_TEST(episodes() == 10u);
  }
  std::size_t left = 0;
  std::string error;
  n->store()->scan("memory_meta", "archive/", "", [&](std::string_view, std::string_view) {
    ++left;
    return true;
  }, error);
  BOOST_TEST(error.empty(), error);
  BOOST_TEST(left == 0u);
  // The assistant turn keeps which items it was answered with, across a
  // restart; the earlier turns, asked with the tiers near empty, fewer.
  auto check = [&](const conversation_detail& stored) {
    auto& answer = stored.turns.back();
    BOOST_REQUIRE(answer.memory.size() == reply.memory.size());
    for (std::size_t i = 0; i < answer.memory.size(); ++i) {
      BOOST_TEST(answer.memory[i].tier == reply.memory[i].item.tier);
      BOOST_TEST(answer.memory[i].id == reply.memory[i].item.id);
      BOOST_TEST(answer.memory[i].score == reply.memory[i].score);
      BOOST_TEST(answer.memory[i].matched_by == reply.memory[i].matched_by);
    }
    BOOST_TEST(stored.turns.front().memory.empty());  // a user turn
  };
  check(detail(id));
  n.reset();
  start();
  check(detail(id));
  // Over HTTP too, as references without the texts.
  net::http_client client;
  auto res = testing::fetch(client, "GET", "http://127.0.0.1:" + std::to_string(n->http_port())
                                             + "/v1/conversations/" + id);
  BOOST_TEST(res.status == 200);
  auto& page = res.body;
  BOOST_REQUIRE(!reply.memory.empty());
  BOOST_TEST(page.find(reply.memory.front().item.id) != std::string::npos, page);
  BOOST_TEST(page.find("\"matched_by\"") != std::string::npos);
  BOOST_TEST(page.find("whiteboard") == std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_deleted_conversations_unarchived_turns_are_not_archived_after) {
  start();
  auto id = create();
  BOOST_REQUIRE(!say(id, "the boat leaves at noon").second);
  auto episodes = [&] {
    std::size_t items = 0;
    caf::scoped_actor self{n->system()};
    self->request(n->memory("episodic"), std::chrono::seconds(10), stats_atom::value)
      .receive([&](memory_tier_stats& s) { items = s.items; },
               [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    self->request(n->writer(), std::chrono::seconds(10), ping_atom::value)
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    return items;
  };
  episodes();
  auto before = episodes();
  auto working = [&] {
    std::size_t hits = 0;
    caf::scoped_actor self{n->system()};
    self->request(n->memory("working"), std::chrono::seconds(10),
                  search_memory{"boat leaves noon", id, 10})
      .receive([&](std::vector<memory_hit>& h) { hits = h.size(); },
               [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    return hits;
  };
  BOOST_TEST(working() > 0u);  // the working tier got the turn too
  // A turn committed just before the delete, its archive still on the way.
  add_memories turns;
  memory_item item;
  item.kind = "turn";
  item.text = "the boat leaves at one after all";
  item.conversation = id;
  item.role = "user";
  turns.items.push_back(item);
  turns.outbox_key = "archive/" + id + "/3";
  {
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", turns.outbox_key, store::encode(turns)});
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), std::chrono::seconds(10), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  auto [deleted, err] = ask<bool>(delete_atom::value, id);
  BOOST_REQUIRE(!err);
  BOOST_TEST(deleted);
  std::string value, error;
  BOOST_TEST(!n->store()->get("memory_meta", turns.outbox_key, value, error));
  BOOST_TEST(error.empty(), error);
  // The archive arriving now stores nothing.
  caf::scoped_actor self{n->system()};
  self->request(n->memory("episodic"), std::chrono::seconds(10), turns)
    .receive([](std::vector<memory_item>& stored) { BOOST_TEST(stored.empty()); },
             [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  // And what was archived before goes: the delete tells the working and
  // episodic tiers, which answer stats in between.
  BOOST_TEST(before == 2u);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((episodes() > 0 || working() > 0) && std::chrono::steady_clock::now() < deadline) {
  }
  BOOST_TEST(episodes() == 0u);
  BOOST_TEST(working() == 0u);
  BOOST_TEST(!n->store()->get("memory_meta", "forget/" + id, value, error));
}

BOOST_AUTO_TEST_CASE(a_deleted_conversations_episodes_are_erased_after_a_restart) {
  cfg.memory_purge_every = std::chrono::hours(1);  // the start erases them, not a tick
  start();
  auto a = create();
  auto b = create();
  BOOST_REQUIRE(!say(a, "the red kite nests in the oak").second);
  BOOST_REQUIRE(!say(b, "the blue boat is moored by the pier").second);
  auto episodes = [&](const std::string& conversation) {
    std::size_t count = 0;
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), std::chrono::seconds(10), ping_atom::value)
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    self->request(n->memory("episodic"), std::chrono::seconds(10),
                  search_memory{"the kite boat oak pier", conversation, 10})
      .receive([&](std::vector<memory_hit>& h) { count = h.size(); },
               [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
    return count;
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while ((episodes(a) < 2 || episodes(b) < 2) && std::chrono::steady_clock::now() < deadline) {
  }
  BOOST_REQUIRE(episodes(a) == 2u);
  // A delete whose word to the tier never arrived: the node stopped right
  // after its commit. Its record is there; the next start erases a's
  // episodes and leaves b's.
  {
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "forget/" + a, {}});
    caf::scoped_actor self{n->system()};
    self->request(n->writer(), std::chrono::seconds(10), std::move(wb))
      .receive([](uint64_t) {}, [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  }
  n.reset();
  start();
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (episodes(a) > 0 && std::chrono::steady_clock::now() < deadline) {
  }
  BOOST_TEST(episodes(a) == 0u);
  BOOST_TEST(episodes(b) == 2u);
  std::string value, error;
  BOOST_TEST(!n->store()->get("memory_meta", "forget/" + a, value, error));
  BOOST_TEST(error.empty(), error);
}

BOOST_AUTO_TEST_CASE(a_restarted_node_has_every_conversation_and_continues_them) {
  start();
  auto a = create();
  auto b = create();
  BOOST_REQUIRE(!say(a, "alpha").second);
  BOOST_REQUIRE(!say(b, "beta").second);
  BOOST_REQUIRE(!say(a, "gamma").second);
  n.reset();

  start();
  auto da = detail(a);
  BOOST_REQUIRE(da.turns.size() == 4u);
  BOOST_TEST(da.turns[2].content == "gamma");
  auto [reply, err] = say(a, "delta");
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.user.seq == 5u);
  BOOST_TEST(server.received().back().body.find("alpha") != std::string::npos);
  BOOST_TEST(detail(b).turns.size() == 2u);
}

BOOST_AUTO_TEST_CASE(a_failed_model_call_keeps_the_user_message) {
  start();
  auto id = create();
  behaviour fail;
  fail.kind = behaviour::fault::http_error;
  fail.status = 503;
  server.enqueue(fail);
  auto [reply, err] = say(id, "are you there?");
  BOOST_REQUIRE(err);
  BOOST_TEST(to_string(describe(err).code) == "backend_error");
  auto d = detail(id);
  BOOST_REQUIRE(d.turns.size() == 1u);
  BOOST_TEST(d.turns[0].content == "are you there?");

  auto [again, err2] = say(id, "now?");
  BOOST_REQUIRE(!err2);
  BOOST_TEST(again.user.seq == 2u);
  BOOST_TEST(again.assistant.seq == 3u);
}

BOOST_AUTO_TEST_CASE(unknown_and_deleted_conversations_are_not_found) {
  start();
  auto [reply, err] = say("00000000-0000-4000-8000-000000000000", "hi");
  BOOST_TEST(to_string(describe(err).code) == "not_found");

  auto id = create();
  BOOST_REQUIRE(!say(id, "soon gone").second);
  auto [deleted, derr] = ask<bool>(delete_atom::value, id);
  BOOST_REQUIRE(!derr);
  BOOST_TEST(deleted);
  auto [d, gerr] = ask<conversation_detail>(get_atom::value, id);
  BOOST_TEST(to_string(describe(gerr).code) == "not_found");
  BOOST_TEST(to_string(describe(say(id, "hi").second).code) == "not_found");
}

BOOST_AUTO_TEST_CASE(deleting_during_a_turn_answers_its_caller_and_stays_deleted) {
  start();
  auto id = create();
  behaviour slow;
  slow.latency = std::chrono::milliseconds(1500);
  server.enqueue(slow);
  caf::scoped_actor self{n->system()};
  user_message msg;
  msg.conversation_id = id;
  msg.content = "a slow question";
  self->send(n->manager(), msg);
  msg.content = "queued behind it";
  self->send(n->manager(), msg);
  BOOST_REQUIRE(server.wait_in_flight(1, std::chrono::seconds(5)));

  auto started = std::chrono::steady_clock::now();
  auto [deleted, derr] = ask<bool>(delete_atom::value, id);
  BOOST_REQUIRE(!derr);
  BOOST_TEST(deleted);
  for (int i = 0; i < 2; ++i) {
    self->receive([](chat_reply&) { BOOST_FAIL("a deleted conversation answered"); },
                  [](caf::error& e) { BOOST_TEST(to_string(describe(e).code) == "not_found"); },
                  caf::after(std::chrono::seconds(5)) >> [] { BOOST_FAIL("caller left waiting"); });
  }
  BOOST_TEST((std::chrono::steady_clock::now() - started < std::chrono::milliseconds(1000)));

  // A message right after the delete is refused, and when the model's late
  // answer arrives nothing brings the conversation back.
  BOOST_TEST(to_string(describe(say(id, "still there?").second).code) == "not_found");
  BOOST_REQUIRE(server.wait_in_flight(0, std::chrono::seconds(5)));
  auto [d, gerr] = ask<conversation_detail>(get_atom::value, id);
  BOOST_TEST(to_string(describe(gerr).code) == "not_found");
}

BOOST_AUTO_TEST_CASE(unknown_models_are_refused_at_creation) {
  start();
  create_conversation req;
  req.model = "no-such-model";
  auto [info, err] = ask<conversation_info>(req);
  BOOST_REQUIRE(err);
  auto view = describe(err);
  BOOST_TEST(to_string(view.code) == "unknown_model");
  BOOST_TEST(view.field == "model");
  // What was asked for, and what could be asked for instead.
  BOOST_TEST(view.message.find("\"no-such-model\"") != std::string::npos, view.message);
  BOOST_TEST(view.message.find("\"test-model\"") != std::string::npos, view.message);
  BOOST_TEST(view.message.find("\"other-model\"") != std::string::npos, view.message);
}

BOOST_AUTO_TEST_CASE(pages_of_conversations_cover_everything_once) {
  start();
  std::set<std::string> made;
  for (int i = 0; i < 7; ++i) {
    made.insert(create());
  }
  std::set<std::string> seen;
  list_conversations req;
  req.limit = 3;
  for (int page = 0; page < 5; ++page) {
    auto [p, err] = ask<conversation_page>(req);
    BOOST_REQUIRE(!err);
    for (auto& c : p.items) {
      BOOST_TEST(seen.insert(c.id).second);
    }
    if (p.next_after.empty()) {
      break;
    }
    req.after = p.next_after;
  }
  BOOST_TEST((seen == made));
}

BOOST_AUTO_TEST_CASE(the_tree_restarts_a_killed_actor_and_chat_goes_on) {
  start();
  auto id = create();
  BOOST_REQUIRE(!say(id, "before").second);
  auto old_manager = n->manager();
  caf::scoped_actor self{n->system()};
  caf::actor router;
  self->request(n->root(), std::chrono::seconds(5), child_atom::value,
                std::string{"llm_router"})
    .receive([&](caf::actor& h) { router = h; },
             [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  // Subscribing replays the running children, then reports every restart.
  self->send(n->root(), subscribe_atom::value, caf::actor_cast<caf::actor>(self));
  caf::anon_send_exit(router, caf::exit_reason::kill);

  // one_for_all: the manager is restarted too, with a new handle.
  bool up = false;
  while (!up) {
    self->receive(
      [&](started_atom, std::string& name, caf::actor& h) {
        up = name == "conversations" && h != old_manager;
      },
      caf::after(std::chrono::seconds(10)) >> [&] { BOOST_FAIL("no restart"); });
  }
  BOOST_REQUIRE(up);
  auto [reply, err] = say(id, "after");
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(reply.user.seq == 3u);
  BOOST_TEST(server.received().back().body.find("before") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_peer_system_chats_with_the_published_manager_over_caf_remoting) {
  // A free port for remoting: bind to port 0, note it, release it.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  BOOST_REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  cfg.remote_port = ntohs(addr.sin_port);
  start();
  BOOST_REQUIRE(n->remote_port() == cfg.remote_port);

  // The peer registers the same types and talks to the manager directly.
  peer_config peer_cfg;
  caf::actor_system peer{peer_cfg};
  auto manager = peer.middleman().remote_actor("127.0.0.1", n->remote_port());
  BOOST_REQUIRE_MESSAGE(manager, (manager ? "" : peer.render(manager.error())));
  caf::scoped_actor self{peer};
  std::string id;
  self->request(*manager, std::chrono::seconds(10), create_conversation{})
    .receive([&](conversation_info& info) { id = info.id; },
             [&](caf::error& err) { BOOST_FAIL(peer.render(err)); });
  BOOST_REQUIRE(!id.empty());
  user_message msg;
  msg.conversation_id = id;
  msg.content = "over the wire";
  msg.sink = caf::actor_cast<caf::actor>(self);
  self->request(*manager, std::chrono::seconds(10), msg)
    .receive([&](chat_reply& r) { BOOST_TEST(r.assistant.content == "echo: over the wire"); },
             [&](caf::error& err) { BOOST_FAIL(peer.render(err)); });

  // Streamed pieces reached the remote sink before the reply.
  std::string streamed;
  bool more = true;
  while (more) {
    self->receive([&](delta_atom, std::string& d) { streamed += d; },
                  caf::after(std::chrono::milliseconds(0)) >> [&] { more = false; });
  }
  BOOST_TEST(streamed == "echo: over the wire");

  // The published handle outlives a restart of the actors behind it.
  {
    caf::scoped_actor local{n->system()};
    auto old_manager = n->manager();
    local->send(n->root(), subscribe_atom::value, caf::actor_cast<caf::actor>(local));
    caf::anon_send_exit(old_manager, caf::exit_reason::kill);
    bool up = false;
    while (!up) {
      local->receive(
        [&](started_atom, std::string& name, caf::actor& h) {
          up = name == "conversations" && h != old_manager;
        },
        caf::after(std::chrono::seconds(10)) >> [&] { BOOST_FAIL("no restart"); });
    }
  }
  self->request(*manager, std::chrono::seconds(10), list_conversations{})
    .receive([&](conversation_page& page) { BOOST_TEST(page.items.size() == 1u); },
             [&](caf::error& err) { BOOST_FAIL(peer.render(err)); });

  // Errors keep their code and field across the wire.
  self->request(*manager, std::chrono::seconds(10), get_atom::value,
                std::string{"00000000-0000-4000-8000-000000000000"})
    .receive([&](conversation_detail&) { BOOST_FAIL("expected not_found"); },
             [&](caf::error& err) {
               auto view = describe(err);
               BOOST_TEST(to_string(view.code) == "not_found");
               BOOST_TEST(view.field == "id");
             });
}

BOOST_AUTO_TEST_SUITE_END()
