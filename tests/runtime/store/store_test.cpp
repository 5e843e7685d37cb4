// LMDB environment and the group-committing writer actor, on a temp directory.
#define BOOST_TEST_MODULE store_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/registry.hpp"
#include "runtime/store/store.hpp"
#include "runtime/store/store_writer.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/binary_serializer.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include <filesystem>
#include <fstream>

using namespace kowalski;

namespace {

struct fixture {
  std::filesystem::path dir;

  fixture() {
    static int n = 0;
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-store-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
  }

  ~fixture() {
    std::filesystem::remove_all(dir);
  }

  std::shared_ptr<store::environment> open() {
    std::string error;
    auto env = store::environment::open(dir.string(), 64 << 20, error);
    BOOST_REQUIRE_MESSAGE(env, error);
    return env;
  }
};

struct test_config : caf::actor_system_config {
  test_config() {
    register_message_types(*this);
    set("scheduler.max-threads", size_t{2});
  }
};

write_batch put(std::string db, std::string key, std::string value) {
  return write_batch{{kv_op{kv_op::put, std::move(db), std::move(key), std::move(value)}}};
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(lmdb_store, fixture)

BOOST_AUTO_TEST_CASE(writes_are_readable_after_the_writer_acknowledges) {
  auto env = open();
  test_config cfg;
  caf::actor_system sys{cfg};
  auto writer = store::spawn_store_writer(sys, env);
  caf::scoped_actor self{sys};
  self->request(writer, std::chrono::seconds(5), put("meta", "k1", "v1"))
    .receive([](uint64_t seq) { BOOST_TEST(seq >= 1u); },
             [](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
  std::string value, error;
  BOOST_TEST(env->get("meta", "k1", value, error));
  BOOST_TEST(value == "v1");
  BOOST_TEST(!env->get("meta", "missing", value, error));
  BOOST_TEST(error.empty());
  self->send_exit(writer, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(concurrent_writes_share_commits) {
  auto env = open();
  test_config cfg;
  caf::actor_system sys{cfg};
  auto writer = store::spawn_store_writer(sys, env);
  caf::scoped_actor self{sys};
  constexpr int n = 500;
  for (int i = 0; i < n; ++i) {
    self->send(writer, put("meta", "key" + std::to_string(i), std::to_string(i)));
  }
  uint64_t max_seq = 0;
  for (int i = 0; i < n; ++i) {
    self->receive([&](uint64_t seq) { max_seq = std::max(max_seq, seq); },
                  caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("no ack"); });
  }
  // Group commit: far fewer transactions than writes.
  BOOST_TEST(max_seq < static_cast<uint64_t>(n));
  std::string value, error;
  for (int i = 0; i < n; ++i) {
    BOOST_REQUIRE(env->get("meta", "key" + std::to_string(i), value, error));
    BOOST_TEST(value == std::to_string(i));
  }
  self->send_exit(writer, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(a_bad_batch_fails_alone) {
  auto env = open();
  test_config cfg;
  caf::actor_system sys{cfg};
  auto writer = store::spawn_store_writer(sys, env);
  caf::scoped_actor self{sys};
  self->send(writer, put("meta", "good1", "x"));
  self->send(writer, put("no_such_db", "k", "x"));
  self->send(writer, put("meta", "good2", "x"));
  int ok = 0, failed = 0;
  for (int i = 0; i < 3; ++i) {
    self->receive([&](uint64_t) { ++ok; },
                  [&](caf::error& err) {
                    ++failed;
                    BOOST_TEST((describe(err).code == errc::store_failure));
                  },
                  caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("no ack"); });
  }
  BOOST_TEST(ok == 2);
  BOOST_TEST(failed == 1);
  std::string value, error;
  BOOST_TEST(env->get("meta", "good2", value, error));
  self->send_exit(writer, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(data_survives_reopening_and_prefix_erase_is_exact) {
  {
    auto env = open();
    test_config cfg;
    caf::actor_system sys{cfg};
    auto writer = store::spawn_store_writer(sys, env);
    caf::scoped_actor self{sys};
    write_batch batch;
    for (uint64_t seq = 1; seq <= 5; ++seq) {
      batch.ops.push_back(kv_op{kv_op::put, "turns", store::turn_key("conv-a", seq), "a"});
      batch.ops.push_back(kv_op{kv_op::put, "turns", store::turn_key("conv-b", seq), "b"});
    }
    self->request(writer, std::chrono::seconds(5), batch)
      .receive([](uint64_t) {}, [](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
    self->request(writer, std::chrono::seconds(5),
                  write_batch{{kv_op{kv_op::erase_prefix, "turns", "conv-a", {}}}})
      .receive([](uint64_t) {}, [](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
    self->send_exit(writer, caf::exit_reason::user_shutdown);
  }
  auto env = open();
  std::vector<uint64_t> seqs;
  std::string error;
  BOOST_TEST(env->scan("turns", "conv-b", {},
                       [&](std::string_view key, std::string_view value) {
                         seqs.push_back(store::decode_seq(key.substr(6)));
                         return true;
                       },
                       error));
  BOOST_TEST((seqs == std::vector<uint64_t>{1, 2, 3, 4, 5}));
  int a_left = 0;
  env->scan("turns", "conv-a", {}, [&](auto, auto) { ++a_left; return true; }, error);
  BOOST_TEST(a_left == 0);
}

BOOST_AUTO_TEST_CASE(scan_starts_at_a_key_and_stops_when_asked) {
  auto env = open();
  test_config cfg;
  caf::actor_system sys{cfg};
  auto writer = store::spawn_store_writer(sys, env);
  caf::scoped_actor self{sys};
  write_batch batch;
  for (uint64_t seq = 1; seq <= 300; ++seq) {
    batch.ops.push_back(kv_op{kv_op::put, "turns", store::turn_key("c", seq), "x"});
  }
  self->request(writer, std::chrono::seconds(5), batch)
    .receive([](uint64_t) {}, [](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
  std::vector<uint64_t> seqs;
  std::string error;
  env->scan("turns", "c", store::turn_key("c", 256),
            [&](std::string_view key, std::string_view) {
              seqs.push_back(store::decode_seq(key.substr(1)));
              return seqs.size() < 10;
            },
            error);
  BOOST_REQUIRE(seqs.size() == 10u);
  BOOST_TEST(seqs.front() == 256u);  // big-endian keys sort numerically
  BOOST_TEST(seqs.back() == 265u);
  self->send_exit(writer, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(an_erase_of_an_absent_key_can_refuse_its_whole_batch) {
  auto env = open();
  auto batch = [](std::string key) {
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "memory_meta", "written", "x"});
    wb.ops.push_back(kv_op{kv_op::erase_existing, "memory_meta", std::move(key), {}});
    return wb;
  };
  std::string error, value;
  auto missing = batch("absent");
  BOOST_TEST(!env->apply({&missing}, error));
  BOOST_TEST(error.rfind(store::environment::absent_key, 0) == 0u, error);
  BOOST_TEST(!env->get("memory_meta", "written", value, error));  // nothing applied
  auto there = put("memory_meta", "present", "y");
  BOOST_REQUIRE(env->apply({&there}, error));
  auto ok = batch("present");
  BOOST_TEST(env->apply({&ok}, error), error);
  BOOST_TEST(env->get("memory_meta", "written", value, error));
  BOOST_TEST(!env->get("memory_meta", "present", value, error));
  // In one group with a batch that is fine, the group is refused as a whole
  // (the writer then commits each batch alone).
  auto refused_in_group = batch("absent in a group");
  auto neighbour_in_group = put("memory_meta", "group neighbour", "w");
  BOOST_TEST(!env->apply({&neighbour_in_group, &refused_in_group}, error));
  BOOST_TEST(error.rfind(store::environment::absent_key, 0) == 0u, error);
  BOOST_TEST(!env->get("memory_meta", "group neighbour", value, error));
  // Through the writer: the refused batch gets a conflict, and a batch
  // sent with it (in its group commit or not) still lands.
  test_config cfg;
  caf::actor_system sys{cfg};
  auto writer = store::spawn_store_writer(sys, env);
  caf::scoped_actor self{sys};
  auto refused = batch("absent too");
  auto fine = put("memory_meta", "neighbour", "z");
  self->send(writer, std::move(refused));
  self->send(writer, std::move(fine));
  bool committed = false, conflict = false;
  for (int i = 0; i < 2; ++i) {
    self->receive(
      [&](uint64_t) { committed = true; },
      [&](caf::error& e) { conflict = std::string{to_string(describe(e).code)} == "conflict"; },
      caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("the writer did not answer"); });
  }
  BOOST_TEST(committed);
  BOOST_TEST(conflict);
  self->request(writer, std::chrono::seconds(10), batch("absent at last"))
    .receive([](uint64_t) { BOOST_FAIL("an erase of an absent key was applied"); },
             [](caf::error& e) {
               BOOST_TEST(std::string{to_string(describe(e).code)} == "conflict");
             });
  BOOST_TEST(env->get("memory_meta", "neighbour", value, error));
  self->send_exit(writer, caf::exit_reason::user_shutdown);
}

BOOST_AUTO_TEST_CASE(records_round_trip_and_reject_garbage) {
  conversation_info info{"id", "m", "sys", role_spec{"n", "d"}, 1, 2, 3};
  conversation_info back;
  BOOST_TEST(store::decode(store::encode(info), back));
  BOOST_TEST((back == info));
  turn t{9, "assistant", "hi", 5, "m", 1, 2, false,
         {memory_ref{"episodic", "epi_0000000000000003", 0.75, "vector"}}};
  turn tback;
  BOOST_TEST(store::decode(store::encode(t), tback));
  BOOST_TEST((tback == t));
  BOOST_TEST(tback.memory.at(0).id == "epi_0000000000000003");
  // A turn of the first layout (version 1, no memory) is still read.
  std::vector<char> v1{1};
  {
    caf::binary_serializer sink{nullptr, v1};
    uint64_t seq = 4;
    std::string role = "assistant", content = "older", model = "m0";
    int64_t created = 77;
    uint32_t prompt = 3, completion = 8;
    bool replayed = true;
    BOOST_REQUIRE(!sink(seq, role, content, created, model, prompt, completion, replayed));
  }
  turn old;
  old.memory.push_back(memory_ref{});
  BOOST_REQUIRE(store::decode(std::string_view{v1.data(), v1.size()}, old));
  BOOST_TEST((old == turn{4, "assistant", "older", 77, "m0", 3, 8, true, {}}));
  // A record cut short is refused, whichever layout it claims.
  BOOST_TEST(!store::decode(std::string_view{v1.data(), v1.size() - 3}, tback));
  auto v2 = store::encode(t);
  BOOST_TEST(!store::decode(std::string_view{v2.data(), v2.size() - 3}, tback));
  BOOST_TEST(!store::decode(std::string_view{"\x07garbage"}, tback));
  BOOST_TEST(!store::decode(std::string_view{}, tback));
}

BOOST_AUTO_TEST_CASE(opening_a_file_instead_of_a_directory_fails_clearly) {
  std::filesystem::create_directories(dir);
  auto file = dir / "not-a-dir";
  std::ofstream{file} << "x";
  std::string error;
  auto env = store::environment::open(file.string(), 64 << 20, error);
  BOOST_TEST(!env);
  BOOST_TEST(!error.empty());
}

BOOST_AUTO_TEST_SUITE_END()
