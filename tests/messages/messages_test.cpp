// Every registered message type survives CAF's binary serializer and a trip
// between two actor systems over CAF remoting on 127.0.0.1.
#define BOOST_TEST_MODULE messages_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/registry.hpp"
#include "messages/types.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/binary_deserializer.hpp>
#include <caf/binary_serializer.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include <functional>
#include <map>

using namespace kowalski;

namespace {

struct test_config : caf::actor_system_config {
  test_config() {
    register_message_types(*this);
    load<caf::io::middleman>();
    set("scheduler.max-threads", size_t{2});
    set("middleman.heartbeat-interval", caf::timespan{std::chrono::seconds(1)});
  }
};

template <class T>
std::vector<char> bytes_of(caf::actor_system& sys, const T& x) {
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  auto copy = x;
  auto err = sink(copy);
  BOOST_REQUIRE(!err);
  return buf;
}

conversation_info sample_info() {
  return conversation_info{"0b7c2a52-6f0e-4a8e-9d1b-3f5e2a1c9d00", "test-model", "be brief",
                           role_spec{"Ada", "a careful engineer"}, 1700000000000,
                           1700000001234, 4};
}

turn sample_turn() {
  return turn{7, "assistant", "grüße \xF0\x9F\x98\x80 and \"quotes\"", 1700000002000,
              "test-model", 12, 34, true,
              {memory_ref{"semantic", "sem_0000000000000002", 0.5, "keyword"}}};
}

batch_item sample_item() {
  return batch_item{"req-1", "test-model", {chat_message{"user", "hi"}},
                    generation_options{0.1, 16}};
}

batch_info sample_batch() {
  batch_info b;
  b.id = "batch_0001";
  b.status = "in_progress";
  b.created_ms = 1700000000000;
  b.options = batch_options{1000, 60000, 3, 8};
  b.total = 10;
  b.queued = 4;
  b.running = 2;
  b.done = 3;
  b.failed = 1;
  b.rate_per_s = 2.5;
  b.eta_s = 2.4;
  return b;
}

// One sample per registered name; the test fails if a name has none.
std::map<std::string, std::function<caf::message(caf::actor_system&, caf::actor)>> samples() {
  std::map<std::string, std::function<caf::message(caf::actor_system&, caf::actor)>> m;
  m["kowalski::chat_message"] = [](auto&, auto) {
    return caf::make_message(chat_message{"user", "hello"});
  };
  m["kowalski::role_spec"] = [](auto&, auto) {
    return caf::make_message(role_spec{"Ada", "engineer"});
  };
  m["kowalski::generation_options"] = [](auto&, auto) {
    return caf::make_message(generation_options{0.25, 128});
  };
  m["kowalski::conversation_info"] = [](auto&, auto) {
    return caf::make_message(sample_info());
  };
  m["kowalski::conversation_infos"] = [](auto&, auto) {
    return caf::make_message(std::vector<conversation_info>{sample_info(), sample_info()});
  };
  m["kowalski::turn"] = [](auto&, auto) { return caf::make_message(sample_turn()); };
  m["kowalski::turns"] = [](auto&, auto) {
    return caf::make_message(std::vector<turn>{sample_turn()});
  };
  m["kowalski::create_conversation"] = [](auto&, auto) {
    return caf::make_message(create_conversation{"m", "sys", role_spec{"r", "d"}});
  };
  m["kowalski::list_conversations"] = [](auto&, auto) {
    return caf::make_message(list_conversations{"abc", 20});
  };
  m["kowalski::conversation_page"] = [](auto&, auto) {
    return caf::make_message(conversation_page{{sample_info()}, "next"});
  };
  m["kowalski::read_conversation"] = [](auto&, auto) {
    return caf::make_message(read_conversation{"id", 40, 10});
  };
  m["kowalski::conversation_detail"] = [](auto&, auto) {
    return caf::make_message(conversation_detail{sample_info(), {sample_turn()}, 7});
  };
  m["kowalski::user_message"] = [](auto&, caf::actor sink) {
    return caf::make_message(user_message{"id", "hi", generation_options{0.5, 9}, sink});
  };
  m["kowalski::chat_reply"] = [](auto&, auto) {
    return caf::make_message(chat_reply{"id", sample_turn(), sample_turn()});
  };
  m["kowalski::llm_request"] = [](auto&, caf::actor sink) {
    return caf::make_message(llm_request{"m", {chat_message{"system", "s"}},
                                         generation_options{}, sink, 1500, 250});
  };
  m["kowalski::llm_reply"] = [](auto&, auto) {
    return caf::make_message(llm_reply{"text", "m", "stop", 3, 4, true, 999});
  };
  m["kowalski::model_info"] = [](auto&, auto) {
    return caf::make_message(model_info{"m", "ollama", 1234});
  };
  m["kowalski::model_infos"] = [](auto&, auto) {
    return caf::make_message(std::vector<model_info>{{"a", "openai", 0}, {"b", "replay", 1}});
  };
  m["kowalski::backend_status"] = [](auto&, auto) {
    return caf::make_message(backend_status{true, "ollama", "3 models"});
  };
  m["kowalski::batch_item"] = [](auto&, auto) { return caf::make_message(sample_item()); };
  m["kowalski::batch_items"] = [](auto&, auto) {
    return caf::make_message(std::vector<batch_item>{sample_item(), sample_item()});
  };
  m["kowalski::batch_options"] = [](auto&, auto) {
    return caf::make_message(batch_options{1000, 60000, 3, 8});
  };
  m["kowalski::submit_batch"] = [](auto&, auto) {
    return caf::make_message(submit_batch{{sample_item()}, batch_options{1, 2, 3, 4}});
  };
  m["kowalski::batch_info"] = [](auto&, auto) { return caf::make_message(sample_batch()); };
  m["kowalski::list_batches"] = [](auto&, auto) {
    return caf::make_message(list_batches{"batch_1", 7});
  };
  m["kowalski::batch_page"] = [](auto&, auto) {
    return caf::make_message(batch_page{{sample_batch()}, "batch_2"});
  };
  m["kowalski::batch_item_result"] = [](auto&, auto) {
    return caf::make_message(batch_item_result{4, "req-4", batch_item_result::failed, 500,
                                               "backend_error", "boom", 3, 10, 0, 1234,
                                               1700000000000, "", "m", ""});
  };
  m["kowalski::get_batch"] = [](auto&, auto) { return caf::make_message(get_batch{"b1", 500}); };
  m["kowalski::cancel_batch"] = [](auto&, auto) {
    return caf::make_message(cancel_batch{"b2"});
  };
  m["kowalski::llm_call"] = [](auto&, caf::actor sink) {
    return caf::make_message(llm_call{llm_request{"m", {chat_message{"user", "u"}},
                                                  generation_options{}, sink, 10},
                                      2});
  };
  m["kowalski::llm_call_batch"] = [](auto&, caf::actor sink) {
    return caf::make_message(llm_call_batch{{llm_request{"m", {}, {}, sink, 0}}, 3, 4, 5000});
  };
  m["kowalski::call_outcome"] = [](auto&, auto) {
    return caf::make_message(call_outcome{true, llm_reply{"t", "m", "stop", 1, 2, false, 3},
                                          "", "", 200, 1});
  };
  m["kowalski::call_outcomes"] = [](auto&, auto) {
    return caf::make_message(std::vector<call_outcome>{
      call_outcome{false, llm_reply{}, "timeout", "slow", 0, 3}});
  };
  m["kowalski::repl_execute"] = [](auto&, caf::actor h) {
    repl_execute x{"python3", "print(1)", "s1", 500, "in.txt", "data"};
    x.file_source = "/tmp/in";
    x.sub_calls = h;  // not serialized: local only
    return caf::make_message(x);
  };
  m["kowalski::repl_sub_call"] = [](auto&, auto) {
    return caf::make_message(repl_sub_call{"rlm", {"p1", "p2"}, {"", "c2"}, "m"});
  };
  m["kowalski::rlm_sub_call"] = [](auto&, auto) {
    rlm_sub_call c{3, 1, "llm", "m", 0xfeedbeef, 12, true, "ans", 10, 4, 99, "", "note"};
    return caf::make_message(c);
  };
  m["kowalski::get_rlm_turns"] = [](auto&, auto) {
    return caf::make_message(get_rlm_turns{"run_1", 2, 500, 3});
  };
  m["kowalski::rlm_turn_page"] = [](auto&, auto) {
    rlm_turn_page page;
    page.turns.push_back(rlm_turn{1, "r", {"x"}, {}, 1, 2, 3, false, "sum", 4, 5, 1, 6, 7});
    page.sub_calls.push_back(rlm_sub_call{1, 0, "rlm", "m", 1, 2, false, "Error: x", 0, 0, 5,
                                          "run_1.1.0", ""});
    page.run.id = "run_1";
    page.run.request.context_file = "/data/rlm/run_1.ctx";
    return caf::make_message(page);
  };
  m["kowalski::repl_result"] = [](auto&, auto) {
    return caf::make_message(repl_result{false, "out", "err", 3, 4, "Traceback", "ValueError",
                                         0, 1234, true, "s1", "python3-1"});
  };
  m["kowalski::end_repl_session"] = [](auto&, auto) {
    return caf::make_message(end_repl_session{"s1", true});
  };
  m["kowalski::repl_pool_info"] = [](auto&, auto) {
    return caf::make_message(repl_pool_info{"python3", true, "python3", "bubblewrap", 2, 1, 1,
                                            0, 10, 1});
  };
  m["kowalski::repl_pool_infos"] = [](auto&, auto) {
    return caf::make_message(std::vector<repl_pool_info>{
      repl_pool_info{"rust", false, "cargo not found", "bubblewrap", 0, 0, 0, 0, 0, 0}});
  };
  m["kowalski::rlm_start"] = [](auto&, auto) {
    return caf::make_message(rlm_start{"q?", "ctx", "text", "m", 5, 1000, 60000, "/tmp/c", 2, 1});
  };
  m["kowalski::rlm_turn"] = [](auto&, auto) {
    return caf::make_message(rlm_turn{1, "reply", {"print(1)"}, {"1\n"}, 10, 5, 1234});
  };
  m["kowalski::rlm_turns"] = [](auto&, auto) {
    return caf::make_message(std::vector<rlm_turn>{rlm_turn{2, "r", {}, {}, 1, 2, 3}});
  };
  m["kowalski::rlm_outcome"] = [](auto&, auto) {
    return caf::make_message(rlm_outcome{"42", "final", "", 3, 100, 50, 1200,
                                         {rlm_turn{1, "r", {}, {}, 1, 2, 3}}});
  };
  m["kowalski::rlm_run_info"] = [](auto&, auto) {
    return caf::make_message(rlm_run_info{"run_1", "running", "q", "m", 1, 0, rlm_outcome{}});
  };
  m["kowalski::submit_rlm_run"] = [](auto&, auto) {
    return caf::make_message(submit_rlm_run{rlm_start{"q", "c", "text", "", 0, 0, 0}});
  };
  m["kowalski::get_rlm_run"] = [](auto&, auto) {
    return caf::make_message(get_rlm_run{"run_1", 100});
  };
  m["kowalski::cancel_rlm_run"] = [](auto&, auto) {
    return caf::make_message(cancel_rlm_run{"run_1"});
  };
  m["kowalski::memory_item"] = [](auto&, auto) {
    return caf::make_message(memory_item{"sem_0000000000000001", "semantic", "fact", "Ada wrote",
                                         "c1", "user", 5, 0, "hash-v1-4", {0.5f, -0.5f, 0.5f, 0.5f},
                                         false});
  };
  m["kowalski::memory_hit"] = [](auto&, auto) {
    return caf::make_message(memory_hit{memory_item{}, 0.9, 0.95, 0.6, "vector"});
  };
  m["kowalski::memory_hits"] = [](auto&, auto) {
    return caf::make_message(std::vector<memory_hit>{memory_hit{memory_item{}, 0.1, 0.1, 0,
                                                                "keyword"}});
  };
  m["kowalski::add_memory"] = [](auto&, auto) {
    memory_item item;
    item.text = "remember this";
    return caf::make_message(add_memory{item});
  };
  m["kowalski::embed_texts"] = [](auto&, auto) {
    return caf::make_message(embed_texts{{"first", "second"}, 5000});
  };
  m["kowalski::embeddings"] = [](auto&, auto) {
    return caf::make_message(embeddings{"ollama/m/2", {{0.6f, 0.8f}, {1.0f, 0.0f}}});
  };
  m["kowalski::add_memories"] = [](auto&, auto) {
    memory_item item;
    item.text = "one of two";
    return caf::make_message(add_memories{{item, item}, "archive/c1/0000000000000001"});
  };
  m["kowalski::memory_items"] = [](auto&, auto) {
    memory_item item;
    item.id = "epi_0000000000000003";
    return caf::make_message(std::vector<memory_item>{item});
  };
  m["kowalski::list_unconsolidated"] = [](auto&, auto) {
    return caf::make_message(list_unconsolidated{"c1", 50, {"c2"}});
  };
  m["kowalski::mark_consolidated"] = [](auto&, auto) {
    return caf::make_message(mark_consolidated{{"epi_0000000000000001"}});
  };
  m["kowalski::forget_conversation"] = [](auto&, auto) {
    return caf::make_message(forget_conversation{"c1"});
  };
  m["kowalski::consolidate_memory"] = [](auto&, auto) {
    return caf::make_message(consolidate_memory{"", 100});
  };
  m["kowalski::consolidation_report"] = [](auto&, auto) {
    return caf::make_message(consolidation_report{4, 1, 3, 1, "the model answered no JSON"});
  };
  m["kowalski::search_memory"] = [](auto&, auto) {
    return caf::make_message(search_memory{"who wrote", "c1", 3});
  };
  m["kowalski::get_memory"] = [](auto&, auto) {
    return caf::make_message(get_memory{"epi_0000000000000002"});
  };
  m["kowalski::delete_memory"] = [](auto&, auto) {
    return caf::make_message(delete_memory{"epi_0000000000000002"});
  };
  m["kowalski::memory_tier_stats"] = [](auto&, auto) {
    return caf::make_message(memory_tier_stats{"semantic", 10, "hash-v1-384", 384, 10, 12,
                                               "loaded"});
  };
  m["kowalski::triple"] = [](auto&, auto) {
    return caf::make_message(triple{"Ada", "wrote", "the first program", "sem_1", 7});
  };
  m["kowalski::triples"] = [](auto&, auto) {
    return caf::make_message(std::vector<triple>{triple{"a", "b", "c", "", 0}});
  };
  m["kowalski::add_triples"] = [](auto&, auto) {
    return caf::make_message(add_triples{{triple{"a", "b", "c", "", 0}}});
  };
  m["kowalski::query_triples"] = [](auto&, auto) {
    return caf::make_message(query_triples{"Ada", 10});
  };
  m["kowalski::kv_op"] = [](auto&, auto) {
    return caf::make_message(kv_op{kv_op::erase_prefix, "turns", "k", "v"});
  };
  m["kowalski::write_batch"] = [](auto&, auto) {
    return caf::make_message(write_batch{{kv_op{kv_op::put, "meta", "k", "v"}}});
  };
  m["kowalski::child_info"] = [](auto&, caf::actor h) {
    return caf::make_message(child_info{"worker", h, 2});
  };
  m["kowalski::child_infos"] = [](auto&, caf::actor h) {
    return caf::make_message(std::vector<child_info>{{"a", h, 0}});
  };
  return m;
}

std::vector<char> message_bytes(caf::actor_system& sys, const caf::message& msg) {
  std::vector<char> buf;
  caf::binary_serializer sink{sys, buf};
  auto copy = msg;
  BOOST_REQUIRE(!sink(copy));
  return buf;
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_registered_type_round_trips_through_the_binary_serializer) {
  test_config cfg;
  caf::actor_system sys{cfg};
  auto handle = sys.spawn([] { return caf::behavior{[](int) {}}; });
  auto table = samples();
  for (auto& name : registered_type_names()) {
    BOOST_TEST_CONTEXT("type " << name) {
      auto i = table.find(name);
      BOOST_REQUIRE_MESSAGE(i != table.end(), "no sample for registered type " << name);
      auto msg = i->second(sys, handle);
      auto bytes = message_bytes(sys, msg);
      caf::message back;
      caf::binary_deserializer source{sys, bytes};
      BOOST_REQUIRE(!source(back));
      BOOST_TEST(back.size() == msg.size());
      BOOST_TEST((message_bytes(sys, back) == bytes));
    }
  }
  caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(values_compare_equal_after_a_round_trip) {
  test_config cfg;
  caf::actor_system sys{cfg};
  auto info = sample_info();
  auto bytes = bytes_of(sys, info);
  conversation_info back;
  caf::binary_deserializer source{sys, bytes};
  BOOST_REQUIRE(!source(back));
  BOOST_TEST((back == info));

  auto t = sample_turn();
  auto tbytes = bytes_of(sys, t);
  turn tback;
  caf::binary_deserializer tsource{sys, tbytes};
  BOOST_REQUIRE(!tsource(tback));
  BOOST_TEST((tback == t));
}

BOOST_AUTO_TEST_CASE(errors_keep_code_field_and_message_across_serialization) {
  test_config cfg;
  caf::actor_system sys{cfg};
  auto err = make_error(errc::unknown_model, "no such model", "model");
  auto bytes = bytes_of(sys, err);
  caf::error back;
  caf::binary_deserializer source{sys, bytes};
  BOOST_REQUIRE(!source(back));
  auto view = describe(back);
  BOOST_TEST(view.ours);
  BOOST_TEST((view.code == errc::unknown_model));
  BOOST_TEST(view.field == "model");
  BOOST_TEST(view.message == "no such model");
  BOOST_TEST(http_status(view.code) == 400);
  BOOST_TEST(sys.render(back).find("unknown_model") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(every_type_crosses_caf_remoting_between_two_systems) {
  test_config cfg_a;
  caf::actor_system a{cfg_a};
  test_config cfg_b;
  caf::actor_system b{cfg_b};

  // System A publishes an actor that sends back whatever message it gets,
  // after deserializing and serializing it again.
  auto echo = a.spawn([] {
    return caf::behavior{
      [](ping_atom, caf::message& inner) { return caf::make_message(ping_atom::value, inner); },
    };
  });
  auto port = a.middleman().publish(echo, 0, "127.0.0.1", true);
  BOOST_REQUIRE_MESSAGE(port, "publish failed: " << (port ? "" : a.render(port.error())));

  auto remote = b.middleman().remote_actor("127.0.0.1", *port);
  BOOST_REQUIRE_MESSAGE(remote,
                        "remote_actor failed: " << (remote ? "" : b.render(remote.error())));

  caf::scoped_actor self{b};
  auto local_handle = b.spawn([] { return caf::behavior{[](int) {}}; });
  auto table = samples();
  for (auto& name : registered_type_names()) {
    BOOST_TEST_CONTEXT("type " << name) {
      auto msg = table.at(name)(b, local_handle);
      auto expected = message_bytes(b, msg);
      bool answered = false;
      self->request(*remote, std::chrono::seconds(10), ping_atom::value, msg)
        .receive(
          [&](ping_atom, caf::message& reply) {
            answered = true;
            BOOST_TEST((message_bytes(b, reply) == expected));
          },
          [&](caf::error& err) { BOOST_FAIL("remote echo failed: " << b.render(err)); });
      BOOST_TEST(answered);
    }
  }

  caf::anon_send_exit(local_handle, caf::exit_reason::user_shutdown);
  a.middleman().unpublish(echo, *port);
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
}

// An execution's sub-call handler and file source stay on their node: after
// a trip through the serializer the execution has neither, and everything
// else arrives.
BOOST_AUTO_TEST_CASE(an_execution_without_a_sub_call_handler_round_trips) {
  test_config cfg;
  caf::actor_system sys{cfg};
  auto handle = sys.spawn([] { return caf::behavior{[](int) {}}; });
  auto msg = samples().at("kowalski::repl_execute")(sys, handle);
  auto bytes = message_bytes(sys, msg);
  caf::message back;
  caf::binary_deserializer source{sys, bytes};
  BOOST_REQUIRE(!source(back));
  BOOST_REQUIRE(back.size() == 1u);
  BOOST_TEST(back.match_element<repl_execute>(0));
  auto& x = back.get_as<repl_execute>(0);
  BOOST_TEST(!x.sub_calls);
  BOOST_TEST(x.file_source.empty());  // nor does a peer name the node's files
  BOOST_TEST(x.code == "print(1)");
  caf::anon_send_exit(handle, caf::exit_reason::user_shutdown);
}
