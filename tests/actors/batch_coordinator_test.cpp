// The batch coordinator in a real node against the scripted LLM server:
// concurrency held by the workers, order, retries, rate limits, cancel,
// deadlines, resuming after a restart, library calls and bad input.
#define BOOST_TEST_MODULE batch_coordinator_test
#include <boost/test/unit_test.hpp>

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>

#include <condition_variable>
#include <future>
#include <map>
#include <mutex>
#include <set>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

// The prompt of item i is "item-i"; the script reads it back from the body.
int item_of(const std::string& body) {
  auto pos = body.find("item-");
  if (pos == std::string::npos) {
    return -1;
  }
  return std::atoi(body.c_str() + pos + 5);
}

batch_item item(int i, std::string model = "test-model") {
  batch_item it;
  it.custom_id = "req-" + std::to_string(i);
  it.model = std::move(model);
  it.messages.push_back(chat_message{"user", "item-" + std::to_string(i)});
  return it;
}

submit_batch make_batch(int n, batch_options opts = {}) {
  submit_batch cmd;
  for (int i = 0; i < n; ++i) {
    cmd.items.push_back(item(i));
  }
  cmd.options = opts;
  return cmd;
}

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;

  fixture() : test_node("batch", scripted_llm::base_url()) {
    cfg.batch_retry_base = milliseconds{5};
    cfg.batch_retry_cap = milliseconds{50};
    // Retries are the point here; their warnings would drown the output.
    cfg.log_level = "error";
  }

  template <class T, class... Ts>
  std::pair<T, caf::error> ask(milliseconds timeout, Ts&&... xs) {
    std::pair<T, caf::error> out;
    caf::scoped_actor self{n->system()};
    self->request(n->batches(), timeout, std::forward<Ts>(xs)...)
      .receive([&](T& value) { out.first = std::move(value); },
               [&](caf::error& err) { out.second = std::move(err); });
    return out;
  }

  batch_info submit(submit_batch cmd) {
    auto [info, err] = ask<batch_info>(seconds(30), std::move(cmd));
    BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
    BOOST_TEST(info.status == "in_progress");
    return info;
  }

  // Waits (without polling) until the batch has ended.
  batch_info wait(const std::string& id, seconds limit = seconds(30)) {
    auto [info, err] = ask<batch_info>(limit + seconds(5),
                                       get_batch{id, static_cast<uint64_t>(limit.count()) * 1000});
    BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
    BOOST_REQUIRE_MESSAGE(info.finished_ms > 0, "batch " << id << " still " << info.status);
    return info;
  }

  // Every committed result of a batch, in key (= input) order.
  std::vector<batch_item_result> results(const std::string& id) {
    std::vector<batch_item_result> out;
    std::string error;
    n->store()->scan("batch_results", id, "", [&](std::string_view, std::string_view v) {
      batch_item_result r;
      BOOST_REQUIRE(store::decode(v, r));
      out.push_back(std::move(r));
      return true;
    }, error);
    BOOST_REQUIRE_MESSAGE(error.empty(), error);
    return out;
  }

  std::size_t stored_batches() {
    std::size_t count = 0;
    std::string error;
    n->store()->scan("batches", "", "", [&](std::string_view, std::string_view) {
      ++count;
      return true;
    }, error);
    return count;
  }
};

caf::error expect_error(std::pair<batch_info, caf::error> out) {
  BOOST_REQUIRE_MESSAGE(out.second, "expected an error, got batch " << out.first.id);
  return out.second;
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(batches, fixture)

BOOST_AUTO_TEST_CASE(results_keep_input_order_with_backend_token_counts) {
  start();
  auto info = submit(make_batch(40));
  BOOST_TEST(info.total == 40u);
  auto done = wait(info.id);
  BOOST_TEST(done.status == "completed");
  BOOST_TEST(done.done == 40u);
  BOOST_TEST(done.failed == 0u);
  BOOST_TEST(done.prompt_tokens > 0u);
  BOOST_TEST(done.completion_tokens > 0u);

  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 40u);
  uint64_t completion = 0;
  for (std::size_t i = 0; i < rs.size(); ++i) {
    BOOST_TEST(rs[i].index == i);
    BOOST_TEST(rs[i].custom_id == "req-" + std::to_string(i));
    BOOST_TEST(rs[i].status == batch_item_result::completed);
    BOOST_TEST(rs[i].content == "echo: item-" + std::to_string(i));
    BOOST_TEST(rs[i].attempts == 1u);
    BOOST_TEST(rs[i].latency_us > 0);
    completion += rs[i].completion_tokens;
  }
  BOOST_TEST(completion == done.completion_tokens);
}

BOOST_AUTO_TEST_CASE(requests_in_flight_never_exceed_the_worker_count) {
  for (unsigned limit : {1u, 8u, 64u}) {
    BOOST_TEST_CONTEXT("limit " << limit) {
      n.reset();
      cfg.llm_workers = limit;
      cfg.client_max_idle_per_host = limit;
      behaviour slow;
      slow.latency = milliseconds{limit == 1 ? 5 : 30};
      server.set_default(slow);
      server.reset_counters();
      start();
      auto info = submit(make_batch(static_cast<int>(limit * 4)));
      auto done = wait(info.id);
      BOOST_TEST(done.done == limit * 4);
      BOOST_TEST(server.max_in_flight() <= limit);
      // The limit is reached, not just respected: the run is concurrent.
      BOOST_TEST(server.max_in_flight() == limit);
    }
  }
}

BOOST_AUTO_TEST_CASE(batch_concurrency_option_limits_one_batch_further) {
  cfg.llm_workers = 8;
  behaviour slow;
  slow.latency = milliseconds{20};
  server.set_default(slow);
  start();
  auto info = submit(make_batch(24, batch_options{0, 0, 0, 3}));
  wait(info.id);
  BOOST_TEST(server.max_in_flight() == 3u);
}

// Each item meets one kind of trouble on its first attempt and succeeds on
// the next; some fail for good. Every item is accounted for, in order.
BOOST_AUTO_TEST_CASE(transient_faults_are_retried_and_every_item_accounted_for) {
  cfg.batch_call_timeout = milliseconds{400};
  std::mutex mtx;
  std::map<int, int> seen;
  server.set_script([&](const std::string& body) {
    auto i = item_of(body);
    int attempt;
    {
      std::lock_guard<std::mutex> guard{mtx};
      attempt = ++seen[i];
    }
    behaviour b;
    if (i % 20 == 19) {  // a request the backend refuses: never retried
      b.kind = behaviour::fault::http_error;
      b.status = 400;
      return b;
    }
    if (i % 20 == 18) {  // a backend that keeps failing: attempts run out
      b.kind = behaviour::fault::http_error;
      b.status = 500;
      return b;
    }
    if (attempt > 1) {
      return b;
    }
    switch (i % 10) {
      case 0: b.kind = behaviour::fault::http_error; b.status = 500; break;  // 20% 500s
      case 1: b.kind = behaviour::fault::http_error; b.status = 503; break;
      case 2: b.kind = behaviour::fault::http_error; b.status = 429; b.retry_after_s = 1; break;
      case 3: b.latency = milliseconds{2000}; break;  // over the call timeout
      case 4: b.kind = behaviour::fault::malformed; break;
      case 5: b.kind = behaviour::fault::cut_stream; break;
      case 6: b.kind = behaviour::fault::garbage; break;
      case 7: b.kind = behaviour::fault::stream_error; break;
      default: break;
    }
    return b;
  });
  start();
  auto started = std::chrono::steady_clock::now();
  auto info = submit(make_batch(40));
  auto done = wait(info.id);
  auto took = std::chrono::steady_clock::now() - started;

  BOOST_TEST(done.status == "completed");
  BOOST_TEST(done.done == 36u);
  BOOST_TEST(done.failed == 4u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 40u);
  for (int i = 0; i < 40; ++i) {
    BOOST_TEST_CONTEXT("item " << i) {
      auto& r = rs[i];
      BOOST_TEST(r.index == uint64_t(i));
      if (i % 20 == 19) {
        BOOST_TEST(r.status == batch_item_result::failed);
        BOOST_TEST(r.attempts == 1u);
        BOOST_TEST(r.http_status == 400);
      } else if (i % 20 == 18) {
        BOOST_TEST(r.status == batch_item_result::failed);
        BOOST_TEST(r.attempts == 3u);
        BOOST_TEST(r.http_status == 500);
        BOOST_TEST(r.error_code == "backend_error");
      } else if (i % 10 <= 7) {
        BOOST_TEST(r.status == batch_item_result::completed);
        BOOST_TEST(r.attempts == 2u);
        BOOST_TEST(r.content == "echo: item-" + std::to_string(i));
      } else {
        BOOST_TEST(r.attempts == 1u);
      }
    }
  }
  // The 429s asked for a second's wait, and it was honoured.
  BOOST_TEST(std::chrono::duration<double>(took).count() >= 1.0);
}

BOOST_AUTO_TEST_CASE(the_request_rate_holds_within_ten_percent) {
  cfg.llm_workers = 8;
  cfg.llm_rate_rps = 50;
  start();
  auto started = std::chrono::steady_clock::now();
  auto info = submit(make_batch(200));
  auto done = wait(info.id);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  BOOST_TEST(done.done == 200u);
  // The burst is a tenth of a second's worth (5 calls); the rest is paced.
  double rate = 200 / secs;
  BOOST_TEST_MESSAGE("rate " << rate << " per second over " << secs << " s");
  BOOST_TEST(rate <= 55.0);
  BOOST_TEST(rate >= 45.0);
}

BOOST_AUTO_TEST_CASE(interactive_calls_go_ahead_of_batch_items) {
  cfg.llm_workers = 1;
  behaviour slow;
  slow.latency = milliseconds{50};
  server.set_default(slow);
  start();
  auto info = submit(make_batch(6));

  // A chat turn sent while the batch runs is the next call the backend sees.
  caf::scoped_actor self{n->system()};
  create_conversation create;
  conversation_info conv;
  self->request(n->manager(), seconds(10), create)
    .receive([&](conversation_info& c) { conv = c; },
             [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  user_message msg;
  msg.conversation_id = conv.id;
  msg.content = "interactive question";
  self->request(n->manager(), seconds(20), msg)
    .receive([&](chat_reply&) {}, [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  wait(info.id);

  auto got = server.received();
  std::vector<int> order;
  for (auto& r : got) {
    if (r.path != "/api/chat") {
      continue;
    }
    order.push_back(r.body.find("interactive question") != std::string::npos ? -1
                                                                             : item_of(r.body));
  }
  BOOST_REQUIRE(order.size() == 7u);
  auto pos = std::find(order.begin(), order.end(), -1) - order.begin();
  // At most the items already at a worker went before it.
  BOOST_TEST(pos <= 2);
}

BOOST_AUTO_TEST_CASE(cancel_stops_pending_items_and_lets_running_ones_finish) {
  cfg.llm_workers = 2;
  std::mutex mtx;
  std::condition_variable cv;
  int arrived = 0;
  server.set_script([&](const std::string&) {
    {
      std::lock_guard<std::mutex> guard{mtx};
      ++arrived;
    }
    cv.notify_all();
    behaviour b;
    b.latency = milliseconds{300};
    return b;
  });
  start();
  auto info = submit(make_batch(30));
  {
    std::unique_lock<std::mutex> lock{mtx};
    BOOST_REQUIRE(cv.wait_for(lock, seconds(10), [&] { return arrived >= 2; }));
  }
  auto [cancelling, err] = ask<batch_info>(seconds(10), cancel_batch{info.id});
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(cancelling.status == "cancelling");

  auto done = wait(info.id);
  BOOST_TEST(done.status == "cancelled");
  BOOST_TEST(done.done + done.failed + done.not_run == 30u);
  // The two calls at the workers finished with replies.
  BOOST_TEST(done.done >= 2u);
  BOOST_TEST(done.not_run >= 20u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 30u);
  for (auto& r : rs) {
    if (r.status == batch_item_result::not_run) {
      BOOST_TEST(r.error_code == "batch_cancelled");
      BOOST_TEST(r.custom_id == "req-" + std::to_string(r.index));
    }
  }
  // The backend saw no call start after the cancel took effect.
  BOOST_TEST(server.requests() == done.done + done.failed);

  // Cancelling again is a conflict; an unknown id is not found.
  auto again = expect_error(ask<batch_info>(seconds(10), cancel_batch{info.id}));
  BOOST_TEST((describe(again).code == errc::conflict));
  auto unknown = expect_error(ask<batch_info>(seconds(10), cancel_batch{"batch_nope"}));
  BOOST_TEST((describe(unknown).code == errc::not_found));
}

BOOST_AUTO_TEST_CASE(the_deadline_ends_a_batch_as_expired) {
  cfg.llm_workers = 1;
  behaviour slow;
  slow.latency = milliseconds{100};
  server.set_default(slow);
  start();
  auto info = submit(make_batch(50, batch_options{0, 450, 0, 0}));
  auto done = wait(info.id);
  BOOST_TEST(done.status == "expired");
  BOOST_TEST(done.done >= 2u);
  BOOST_TEST(done.done <= 6u);
  BOOST_TEST(done.done + done.failed + done.not_run == 50u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 50u);
  BOOST_TEST(rs.back().status == batch_item_result::not_run);
  BOOST_TEST(rs.back().error_code == "batch_expired");
}

// A node stopped mid-batch resumes it: items with a committed result are not
// sent again, the others run once more, and the results hold each once.
BOOST_AUTO_TEST_CASE(a_restarted_node_runs_only_unfinished_items) {
  cfg.llm_workers = 2;
  std::mutex mtx;
  std::condition_variable cv;
  std::map<int, int> calls;
  bool slow_phase = true;
  server.set_script([&](const std::string& body) {
    behaviour b;
    std::lock_guard<std::mutex> guard{mtx};
    ++calls[item_of(body)];
    cv.notify_all();
    // The first ten answer at once; later ones hang until the node stops.
    if (slow_phase && calls.size() > 10) {
      b.latency = milliseconds{3000};
    }
    return b;
  });
  start();
  auto info = submit(make_batch(30));
  {
    std::unique_lock<std::mutex> lock{mtx};
    BOOST_REQUIRE(cv.wait_for(lock, seconds(10), [&] { return calls.size() > 10; }));
  }
  // The fast ten are answered; their results are committed a moment later.
  // Nothing announces a partial count, so it is read until it shows (10 s
  // at most).
  auto until = std::chrono::steady_clock::now() + seconds(10);
  for (;;) {
    auto [now, err] = ask<batch_info>(seconds(10), get_batch{info.id, 0});
    BOOST_REQUIRE(!err);
    if (now.done >= 10 || std::chrono::steady_clock::now() > until) {
      break;
    }
    std::unique_lock<std::mutex> lock{mtx};
    cv.wait_for(lock, milliseconds{10});
  }
  n.reset();  // stop with calls in flight

  // What the store held when the node stopped.
  std::set<uint64_t> finished;
  {
    std::string error;
    auto env = store::environment::open(cfg.data_dir, cfg.store_map_size, error);
    BOOST_REQUIRE_MESSAGE(env, error);
    env->scan("batch_results", info.id, "", [&](std::string_view, std::string_view v) {
      batch_item_result r;
      BOOST_REQUIRE(store::decode(v, r));
      finished.insert(r.index);
      return true;
    }, error);
  }
  BOOST_TEST(finished.size() >= 5u);
  BOOST_TEST(finished.size() < 30u);

  std::map<int, int> before;
  {
    std::lock_guard<std::mutex> guard{mtx};
    before = calls;
    slow_phase = false;
  }
  start();
  auto done = wait(info.id);
  BOOST_TEST(done.status == "completed");
  BOOST_TEST(done.done == 30u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 30u);
  std::lock_guard<std::mutex> guard{mtx};
  for (auto index : finished) {
    BOOST_TEST_CONTEXT("finished item " << index) {
      BOOST_TEST(calls[int(index)] == before[int(index)]);
    }
  }
  for (int i = 0; i < 30; ++i) {
    BOOST_TEST(rs[i].index == uint64_t(i));
    BOOST_TEST(rs[i].status == batch_item_result::completed);
  }
}

// A store that cannot take a result (its map is full) holds the batch back:
// nothing is counted as finished that is not stored, and a restart with room
// finishes the batch with every item exactly once.
BOOST_AUTO_TEST_CASE(results_the_store_refuses_are_retried_not_lost) {
  cfg.store_map_size = std::size_t{1} << 20;
  behaviour big;
  big.reply = std::string(40'000, 'x');
  server.set_default(big);
  start();
  auto info = submit(make_batch(60));
  auto [seen, err] = ask<batch_info>(seconds(10), get_batch{info.id, 1500});
  BOOST_REQUIRE(!err);
  BOOST_TEST(seen.finished_ms == 0);
  BOOST_TEST(seen.done < 60u);
  BOOST_TEST(seen.status == "in_progress");
  n.reset();

  cfg.store_map_size = std::size_t{64} << 20;
  start();
  auto done = wait(info.id);
  BOOST_TEST(done.status == "completed");
  BOOST_TEST(done.done == 60u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 60u);
  for (std::size_t i = 0; i < rs.size(); ++i) {
    BOOST_TEST(rs[i].index == i);
    BOOST_TEST(rs[i].content.size() == 40'000u);
  }
}

// The deadline counts from creation: a batch whose deadline passed while the
// node was down ends as expired at start, without sending anything.
BOOST_AUTO_TEST_CASE(a_batch_past_its_deadline_at_start_expires_unsent) {
  cfg.llm_workers = 1;
  behaviour slow;
  slow.latency = milliseconds{2000};
  server.set_default(slow);
  start();
  auto info = submit(make_batch(10, batch_options{0, 60'000, 0, 0}));
  n.reset();

  // Move the batch's creation an hour back, as if the node had been down.
  {
    std::string error;
    auto env = store::environment::open(cfg.data_dir, cfg.store_map_size, error);
    BOOST_REQUIRE_MESSAGE(env, error);
    std::string bytes;
    BOOST_REQUIRE(env->get("batches", info.id, bytes, error));
    batch_info record;
    BOOST_REQUIRE(store::decode(bytes, record));
    record.created_ms -= 3'600'000;
    write_batch wb;
    wb.ops.push_back(kv_op{kv_op::put, "batches", info.id, store::encode(record)});
    std::vector<const write_batch*> batches{&wb};
    BOOST_REQUIRE_MESSAGE(env->apply(batches, error), error);
  }
  server.reset_counters();
  start();
  auto done = wait(info.id);
  BOOST_TEST(done.status == "expired");
  BOOST_TEST(done.not_run + done.done + done.failed == 10u);
  BOOST_TEST(done.not_run >= 9u);
  BOOST_TEST(server.requests() == 0u);
  auto rs = results(info.id);
  BOOST_REQUIRE(rs.size() == 10u);
  BOOST_TEST(rs[9].error_code == "batch_expired");
}

BOOST_AUTO_TEST_CASE(waiting_callers_are_answered_when_the_node_stops) {
  behaviour slow;
  slow.latency = milliseconds{5000};
  server.set_default(slow);
  start();
  auto info = submit(make_batch(4));
  auto answer = std::make_shared<std::promise<std::string>>();
  auto future = answer->get_future();
  auto registered = std::make_shared<std::promise<bool>>();
  auto waiting = registered->get_future();
  auto coordinator = n->batches();
  n->system().spawn([=](caf::event_based_actor* self) {
    self->request(coordinator, seconds(60), get_batch{info.id, 50'000})
      .then([=](batch_info& b) { answer->set_value("info " + b.status); },
            [=](caf::error& e) { answer->set_value("error " + caf::to_string(e)); });
    // From the same sender, so behind the waiter: once this is answered the
    // waiter is registered.
    self->request(coordinator, seconds(10), get_batch{info.id, 0})
      .then([=](batch_info&) { registered->set_value(true); },
            [=](caf::error&) { registered->set_value(false); });
  });
  BOOST_REQUIRE((waiting.wait_for(seconds(10)) == std::future_status::ready));
  BOOST_REQUIRE(waiting.get());
  auto stopped_at = std::chrono::steady_clock::now();
  n.reset();
  BOOST_REQUIRE((future.wait_for(seconds(1)) == std::future_status::ready));
  BOOST_TEST(future.get() == "info in_progress");
  BOOST_TEST((std::chrono::steady_clock::now() - stopped_at < seconds(10)));
}

BOOST_AUTO_TEST_CASE(the_token_rate_holds_within_ten_percent) {
  cfg.llm_workers = 8;
  cfg.llm_rate_tpm = 30'000;  // 500 tokens per second, a burst of 1,000
  behaviour counted;
  counted.prompt_tokens = 6;
  counted.completion_tokens = 4;
  server.set_default(counted);
  start();
  auto cmd = make_batch(300);
  for (auto& it : cmd.items) {
    it.options.max_tokens = 4;
  }
  auto started = std::chrono::steady_clock::now();
  auto info = submit(cmd);
  auto done = wait(info.id);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  BOOST_TEST(done.done == 300u);
  auto tokens = double(done.prompt_tokens + done.completion_tokens);
  BOOST_TEST(tokens == 3000.0);
  // Beyond the first burst, tokens flow at the limit.
  double rate = (tokens - 1000) / secs;
  BOOST_TEST_MESSAGE("token rate " << rate << " per second over " << secs << " s");
  BOOST_TEST(rate <= 550.0);
  BOOST_TEST(rate >= 450.0);
}

BOOST_AUTO_TEST_CASE(bad_batches_are_refused_and_nothing_is_stored) {
  cfg.batch_max_queued = 100;
  cfg.batch_max_items = 60;
  start();
  auto empty = expect_error(ask<batch_info>(seconds(10), submit_batch{}));
  BOOST_TEST((describe(empty).code == errc::invalid_argument));
  BOOST_TEST(describe(empty).field == "items");

  auto unknown = make_batch(5);
  unknown.items[3].model = "no-such-model";
  auto err = expect_error(ask<batch_info>(seconds(10), unknown));
  auto view = describe(err);
  BOOST_TEST((view.code == errc::unknown_model));
  BOOST_TEST(view.field == "items[3].model");
  BOOST_TEST(view.message.find("no-such-model") != std::string::npos);
  BOOST_TEST(view.message.find("test-model") != std::string::npos);

  auto dup = make_batch(3);
  dup.items[2].custom_id = "req-0";
  err = expect_error(ask<batch_info>(seconds(10), dup));
  BOOST_TEST((describe(err).code == errc::invalid_argument));
  BOOST_TEST(describe(err).field == "items[2].custom_id");

  auto empty_messages = make_batch(2);
  empty_messages.items[1].messages.clear();
  err = expect_error(ask<batch_info>(seconds(10), empty_messages));
  BOOST_TEST(describe(err).field == "items[1].messages");

  err = expect_error(ask<batch_info>(seconds(10), make_batch(61)));
  BOOST_TEST((describe(err).code == errc::payload_too_large));
  BOOST_TEST(stored_batches() == 0u);

  // The node's queue: 60 + 60 would pass 100.
  behaviour slow;
  slow.latency = milliseconds{200};
  server.set_default(slow);
  auto first = submit(make_batch(60));
  err = expect_error(ask<batch_info>(seconds(10), make_batch(60)));
  BOOST_TEST((describe(err).code == errc::overloaded));
  BOOST_TEST(describe(err).message.find("100") != std::string::npos);
  BOOST_TEST(stored_batches() == 1u);
  auto [cancelled, cerr] = ask<batch_info>(seconds(10), cancel_batch{first.id});
  BOOST_TEST(!cerr);

  auto missing = expect_error(ask<batch_info>(seconds(10), get_batch{"batch_unknown", 0}));
  BOOST_TEST((describe(missing).code == errc::not_found));
}

BOOST_AUTO_TEST_CASE(batches_are_listed_in_creation_order) {
  start();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(submit(make_batch(2)).id);
  }
  auto [page, err] = ask<batch_page>(seconds(10), list_batches{"", 3});
  BOOST_REQUIRE(!err);
  BOOST_REQUIRE(page.items.size() == 3u);
  BOOST_TEST(page.items[0].id == ids[0]);
  BOOST_TEST(page.items[2].id == ids[2]);
  BOOST_TEST(page.next_after == ids[2]);
  auto [rest, err2] = ask<batch_page>(seconds(10), list_batches{page.next_after, 3});
  BOOST_REQUIRE(!err2);
  BOOST_REQUIRE(rest.items.size() == 2u);
  BOOST_TEST(rest.items[1].id == ids[4]);
  BOOST_TEST(rest.next_after.empty());
}

BOOST_AUTO_TEST_CASE(library_calls_keep_order_and_report_failures) {
  cfg.llm_workers = 4;
  server.set_script([&](const std::string& body) {
    behaviour b;
    if (item_of(body) == 2) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  start();
  llm_call_batch calls;
  for (int i = 0; i < 6; ++i) {
    calls.requests.push_back(llm_request{"test-model",
                                         {chat_message{"user", "item-" + std::to_string(i)}},
                                         {}, {}, 0});
  }
  auto [outs, err] = ask<std::vector<call_outcome>>(seconds(20), calls);
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_REQUIRE(outs.size() == 6u);
  for (int i = 0; i < 6; ++i) {
    BOOST_TEST_CONTEXT("call " << i) {
      if (i == 2) {
        BOOST_TEST(!outs[i].ok);
        BOOST_TEST(outs[i].http_status == 400);
        BOOST_TEST(outs[i].error_code == "backend_error");
      } else {
        BOOST_TEST(outs[i].ok);
        BOOST_TEST(outs[i].reply.content == "echo: item-" + std::to_string(i));
      }
    }
  }

  llm_call one{llm_request{"test-model", {chat_message{"user", "item-7"}}, {}, {}, 0}, 0};
  auto [reply, err1] = ask<llm_reply>(seconds(20), one);
  BOOST_REQUIRE_MESSAGE(!err1, caf::to_string(err1));
  BOOST_TEST(reply.content == "echo: item-7");
  llm_call bad{llm_request{"test-model", {chat_message{"user", "item-2"}}, {}, {}, 0}, 0};
  auto [none, err2] = ask<llm_reply>(seconds(20), bad);
  BOOST_TEST(static_cast<bool>(err2));
  BOOST_TEST(describe(err2).http_status == 400);
  // Nothing of this reaches the store.
  BOOST_TEST(stored_batches() == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
