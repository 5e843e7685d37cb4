// LLM workers and the router against the scripted LLM server over 127.0.0.1.
#define BOOST_TEST_MODULE llm_worker_test
#include <boost/test/unit_test.hpp>

#include "actors/llm_router.hpp"
#include "actors/llm_worker.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/registry.hpp"
#include "messages/types.hpp"
#include "runtime/llm/transcript.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/supervision/supervisor.hpp"
#include "tests/rig/scripted_llm.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::scripted_llm;

namespace {

struct test_config : caf::actor_system_config {
  test_config() {
    register_message_types(*this);
    set("scheduler.max-threads", size_t{2});
  }
};

struct fixture {
  scripted_llm server;
  std::shared_ptr<net::http_client> client = std::make_shared<net::http_client>();
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::vector<caf::actor> spawned;

  ~fixture() {
    for (auto& a : spawned) {
      caf::anon_send_exit(a, caf::exit_reason::user_shutdown);
    }
  }

  std::shared_ptr<llm_backend> backend(llm::provider kind) {
    auto b = std::make_shared<llm_backend>();
    b->kind = kind;
    b->client = client;
    b->base_url = kind == llm::provider::ollama ? server.base_url() : server.base_url() + "/v1";
    b->request_timeout = std::chrono::seconds(10);
    return b;
  }

  caf::actor worker(std::shared_ptr<const llm_backend> b) {
    auto w = spawn_llm_worker(sys, std::move(b));
    spawned.push_back(w);
    return w;
  }

  llm_request request(std::string text, std::string model = "test-model") {
    llm_request req;
    req.model = std::move(model);
    req.messages = {{"system", "be brief"}, {"user", std::move(text)}};
    req.sink = caf::actor_cast<caf::actor>(self);
    return req;
  }

  // Asks `target`; returns the reply or the error.
  std::pair<llm_reply, caf::error> call(const caf::actor& target, llm_request req) {
    std::pair<llm_reply, caf::error> out;
    self->request(target, std::chrono::seconds(30), std::move(req))
      .receive([&](llm_reply& r) { out.first = std::move(r); },
               [&](caf::error& e) { out.second = std::move(e); });
    return out;
  }

  // Deltas that arrived in the scoped actor's mailbox so far, in order.
  std::string drain_deltas() {
    std::string text;
    bool more = true;
    while (more) {
      self->receive([&](delta_atom, std::string& d) { text += d; },
                    caf::after(std::chrono::milliseconds(0)) >> [&] { more = false; });
    }
    return text;
  }
};

void check_error(const caf::error& err, errc code, const std::string& fragment = {}) {
  BOOST_REQUIRE_MESSAGE(err, "expected an error");
  auto view = describe(err);
  BOOST_TEST(to_string(view.code) == to_string(code));
  if (!fragment.empty()) {
    BOOST_TEST_MESSAGE(view.message);
    BOOST_TEST(view.message.find(fragment) != std::string::npos);
  }
}

}  // namespace

BOOST_FIXTURE_TEST_SUITE(llm_workers, fixture)

BOOST_AUTO_TEST_CASE(ollama_reply_streams_deltas_then_replies_with_backend_counts) {
  behaviour b;
  b.prompt_tokens = 42;
  b.completion_tokens = 7;
  server.set_default(b);
  auto w = worker(backend(llm::provider::ollama));
  auto [reply, err] = call(w, request("hello there"));
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.content == "echo: hello there");
  BOOST_TEST(reply.prompt_tokens == 42u);
  BOOST_TEST(reply.completion_tokens == 7u);
  BOOST_TEST(!reply.replayed);
  BOOST_TEST(drain_deltas() == "echo: hello there");
  auto got = server.received();
  BOOST_REQUIRE(!got.empty());
  BOOST_TEST(got.back().path == "/api/chat");
}

BOOST_AUTO_TEST_CASE(ollama_options_carry_temperature_and_num_predict) {
  auto w = worker(backend(llm::provider::ollama));
  auto req = request("hi");
  req.options.temperature = 0.25;
  req.options.max_tokens = 33;
  auto [reply, err] = call(w, req);
  BOOST_REQUIRE(!err);
  auto body = server.received().back().body;
  BOOST_TEST(body.find("\"options\":{\"temperature\":0.25,\"num_predict\":33}")
             != std::string::npos);
}

BOOST_AUTO_TEST_CASE(openai_reply_streams_with_usage_and_sends_the_key) {
  auto b = backend(llm::provider::openai);
  b->api_key = "sk-test-key";
  behaviour beh;
  beh.chunk_chars = 3;
  beh.reply = "a longer reply, split in small chunks \xC3\xBC!";
  server.set_default(beh);
  auto w = worker(b);
  auto [reply, err] = call(w, request("x"));
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.content == beh.reply);
  BOOST_TEST(reply.completion_tokens > 0u);
  BOOST_TEST(drain_deltas() == beh.reply);
  auto got = server.received().back();
  BOOST_TEST(got.path == "/v1/chat/completions");
  BOOST_TEST(got.authorization == "Bearer sk-test-key");
  BOOST_TEST(got.body.find("\"include_usage\":true") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_whole_json_reply_to_a_streamed_request_is_accepted) {
  for (auto kind : {llm::provider::ollama, llm::provider::openai}) {
    behaviour b;
    b.ignore_stream = true;
    b.prompt_tokens = 9;
    server.enqueue(b);
    auto [reply, err] = call(worker(backend(kind)), request("not streamed"));
    BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
    BOOST_TEST(reply.content == "echo: not streamed");
    BOOST_TEST(reply.prompt_tokens == 9u);
    BOOST_TEST(drain_deltas() == "echo: not streamed");
  }
}

BOOST_AUTO_TEST_CASE(backend_failures_become_precise_errors) {
  for (auto kind : {llm::provider::ollama, llm::provider::openai}) {
    BOOST_TEST_CONTEXT("provider " << to_string(kind)) {
      auto w = worker(backend(kind));
      behaviour b;
      b.kind = behaviour::fault::http_error;
      b.status = 500;
      server.enqueue(b);
      check_error(call(w, request("x")).second, errc::backend_error, "500");

      b.status = 429;
      b.retry_after_s = 7;
      server.enqueue(b);
      check_error(call(w, request("x")).second, errc::overloaded, "retry after 7");

      b = behaviour{};
      b.kind = behaviour::fault::malformed;
      server.enqueue(b);
      check_error(call(w, request("x")).second, errc::backend_protocol);

      b.kind = behaviour::fault::garbage;
      server.enqueue(b);
      check_error(call(w, request("x")).second, errc::backend_protocol);

      b.kind = behaviour::fault::cut_stream;
      b.cut_after_chunks = 1;
      server.enqueue(b);
      check_error(call(w, request("one two three four")).second, errc::backend_protocol);

      b.kind = behaviour::fault::stream_error;
      server.enqueue(b);
      check_error(call(w, request("one two three four")).second, errc::backend_error);

      auto err = call(w, request("x", "no-such-model")).second;
      check_error(err, errc::unknown_model, "no-such-model");
      BOOST_TEST(describe(err).field == "model");

      // After all of that the worker still answers.
      auto [reply, ok] = call(w, request("still there?"));
      BOOST_TEST(!ok);
      BOOST_TEST(reply.content == "echo: still there?");
      drain_deltas();
    }
  }
}

BOOST_AUTO_TEST_CASE(unreachable_and_slow_backends_are_told_apart) {
  auto down = backend(llm::provider::ollama);
  down->base_url = "http://127.0.0.1:1";  // nothing listens on port 1
  check_error(call(worker(down), request("x")).second, errc::backend_unavailable,
              "cannot reach");

  // An OpenAI base URL without /v1: the 404 is about the path, not a model.
  auto wrong = backend(llm::provider::openai);
  wrong->base_url = server.base_url();
  auto err = call(worker(wrong), request("x")).second;
  check_error(err, errc::backend_error, "404");

  behaviour slow;
  slow.latency = std::chrono::milliseconds(3000);
  server.enqueue(slow);
  auto req = request("x");
  req.timeout_ms = 200;
  check_error(call(worker(backend(llm::provider::ollama)), req).second, errc::timeout);
}

BOOST_AUTO_TEST_CASE(models_and_readiness_come_from_the_backend) {
  for (auto kind : {llm::provider::ollama, llm::provider::openai}) {
    auto w = worker(backend(kind));
    self->request(w, std::chrono::seconds(10), models_atom::value)
      .receive(
        [&](std::vector<model_info>& models) {
          BOOST_REQUIRE(models.size() == 2u);
          BOOST_TEST(models[0].name == "test-model");
        },
        [&](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
    self->request(w, std::chrono::seconds(10), ready_atom::value)
      .receive([&](backend_status& s) { BOOST_TEST(s.reachable); },
               [&](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
  }
  auto down = backend(llm::provider::ollama);
  down->base_url = "http://127.0.0.1:1";
  self->request(worker(down), std::chrono::seconds(10), ready_atom::value)
    .receive([&](backend_status& s) {
               BOOST_TEST(!s.reachable);
               BOOST_TEST(!s.detail.empty());
             },
             [&](caf::error& err) { BOOST_FAIL(caf::to_string(err)); });
}

BOOST_AUTO_TEST_CASE(router_holds_the_concurrency_limit_of_its_workers) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(100);
  server.set_default(slow);
  auto b = backend(llm::provider::ollama);
  std::vector<supervision::child_spec> specs;
  for (int i = 0; i < 3; ++i) {
    specs.push_back({"w" + std::to_string(i),
                     [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }});
  }
  auto sup = supervision::spawn_supervisor(sys, {}, specs);
  spawned.push_back(sup);
  llm_router_options opts;
  opts.queue_limit = 100;
  auto router = spawn_llm_router(sys, sup, opts);
  spawned.push_back(router);

  constexpr int n = 12;
  for (int i = 0; i < n; ++i) {
    auto req = request("n" + std::to_string(i));
    req.sink = nullptr;
    self->send(router, std::move(req));
  }
  int ok = 0;
  for (int i = 0; i < n; ++i) {
    self->receive([&](llm_reply&) { ++ok; },
                  [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); },
                  caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("no reply"); });
  }
  BOOST_TEST(ok == n);
  BOOST_TEST(server.max_in_flight() == 3u);
}

BOOST_AUTO_TEST_CASE(router_holds_per_model_limits_and_lets_other_models_pass) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(100);
  server.set_default(slow);
  auto b = backend(llm::provider::ollama);
  std::vector<supervision::child_spec> specs;
  for (int i = 0; i < 4; ++i) {
    specs.push_back({"w" + std::to_string(i),
                     [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }});
  }
  auto sup = supervision::spawn_supervisor(sys, {}, specs);
  spawned.push_back(sup);
  llm_router_options opts;
  opts.model_limits["test-model"] = 2;
  auto router = spawn_llm_router(sys, sup, opts);
  spawned.push_back(router);

  auto run = [&](int test_model, int other_model) {
    server.reset_counters();
    for (int i = 0; i < test_model + other_model; ++i) {
      auto req = request("m" + std::to_string(i), i < test_model ? "test-model" : "other-model");
      req.sink = nullptr;
      self->send(router, batch_atom::value, std::move(req));
    }
    for (int i = 0; i < test_model + other_model; ++i) {
      self->receive([&](llm_reply&) {}, [&](caf::error& e) { BOOST_FAIL(caf::to_string(e)); },
                    caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("no reply"); });
    }
    return server.max_in_flight();
  };
  // Alone, the capped model gets two of the four workers ...
  BOOST_TEST(run(6, 0) == 2u);
  // ... and the other model is not held up behind it.
  BOOST_TEST(run(6, 2) == 4u);
}

BOOST_AUTO_TEST_CASE(router_refuses_calls_beyond_its_queue) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(300);
  server.set_default(slow);
  auto b = backend(llm::provider::ollama);
  auto sup = supervision::spawn_supervisor(
    sys, {}, {{"w0", [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }}});
  spawned.push_back(sup);
  llm_router_options opts;
  opts.queue_limit = 2;
  auto router = spawn_llm_router(sys, sup, opts);
  spawned.push_back(router);
  // Let the router learn its worker before the burst.
  self->request(router, std::chrono::seconds(5), ready_atom::value)
    .receive([](backend_status&) {}, [](caf::error&) {});

  for (int i = 0; i < 5; ++i) {
    auto req = request("x");
    req.sink = nullptr;
    self->send(router, std::move(req));
  }
  int ok = 0, refused = 0;
  for (int i = 0; i < 5; ++i) {
    self->receive([&](llm_reply&) { ++ok; },
                  [&](caf::error& e) {
                    BOOST_TEST(to_string(describe(e).code) == "overloaded");
                    ++refused;
                  },
                  caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("no reply"); });
  }
  BOOST_TEST(ok == 3);       // one running, two queued
  BOOST_TEST(refused == 2);
}

BOOST_AUTO_TEST_CASE(batch_calls_wait_behind_interactive_ones_and_come_back_unsent_late) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(300);
  server.set_default(slow);
  auto b = backend(llm::provider::ollama);
  auto sup = supervision::spawn_supervisor(
    sys, {}, {{"w0", [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }}});
  spawned.push_back(sup);
  auto router = spawn_llm_router(sys, sup, llm_router_options{});
  spawned.push_back(router);
  self->request(router, std::chrono::seconds(5), ready_atom::value)
    .receive([](backend_status&) {}, [](caf::error&) {});

  // The worker is busy; a batch call that may wait 100 ms comes back unsent,
  // one that may wait longer goes, after the interactive call sent later.
  auto first = request("first");
  first.sink = nullptr;
  self->send(router, first);
  auto impatient = request("impatient");
  impatient.sink = nullptr;
  impatient.queue_ms = 100;
  self->send(router, batch_atom::value, impatient);
  auto patient = request("patient batch");
  patient.sink = nullptr;
  patient.queue_ms = 10'000;
  self->send(router, batch_atom::value, patient);
  auto interactive = request("interactive");
  interactive.sink = nullptr;
  self->send(router, interactive);

  std::vector<std::string> order;
  for (int i = 0; i < 4; ++i) {
    self->receive([&](llm_reply& r) { order.push_back(r.content); },
                  [&](caf::error& e) {
                    auto v = describe(e);
                    BOOST_TEST(to_string(v.code) == "overloaded");
                    BOOST_TEST(v.field == "queue");
                    order.push_back("unsent");
                  },
                  caf::after(std::chrono::seconds(20)) >> [] { BOOST_FAIL("no reply"); });
  }
  BOOST_REQUIRE(order.size() == 4u);
  // Interactive first; the impatient call is found stale when its turn comes.
  BOOST_TEST(order[0] == "echo: first");
  BOOST_TEST(order[1] == "echo: interactive");
  BOOST_TEST(order[2] == "unsent");
  BOOST_TEST(order[3] == "echo: patient batch");
  for (auto& r : server.received()) {
    BOOST_TEST(r.body.find("impatient") == std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(calls_whose_time_ran_out_in_the_queue_are_not_sent) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(600);
  server.enqueue(slow);
  auto b = backend(llm::provider::ollama);
  auto sup = supervision::spawn_supervisor(
    sys, {}, {{"w0", [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }}});
  spawned.push_back(sup);
  llm_router_options opts;
  opts.request_budget = std::chrono::milliseconds(300);
  auto router = spawn_llm_router(sys, sup, opts);
  spawned.push_back(router);
  self->request(router, std::chrono::seconds(5), ready_atom::value)
    .receive([](backend_status&) {}, [](caf::error&) {});

  auto first = request("first");
  first.sink = nullptr;
  first.timeout_ms = 5000;
  self->send(router, first);
  auto second = request("second");
  second.sink = nullptr;
  self->send(router, second);
  int ok = 0, expired = 0;
  for (int i = 0; i < 2; ++i) {
    self->receive([&](llm_reply&) { ++ok; },
                  [&](caf::error& e) {
                    BOOST_TEST(to_string(describe(e).code) == "timeout");
                    ++expired;
                  },
                  caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("no answer"); });
  }
  BOOST_TEST(ok == 1);
  BOOST_TEST(expired == 1);
  BOOST_TEST(server.requests() == 1u);  // the expired call never reached the backend
}

BOOST_AUTO_TEST_CASE(a_worker_killed_mid_call_fails_the_call_at_once_and_is_replaced) {
  behaviour slow;
  slow.latency = std::chrono::milliseconds(3000);
  server.enqueue(slow);
  auto b = backend(llm::provider::ollama);
  supervision::supervisor_options sopts;
  sopts.backoff_initial = std::chrono::milliseconds(1);
  auto sup = supervision::spawn_supervisor(
    sys, sopts, {{"w0", [b](caf::actor_system& s) { return spawn_llm_worker(s, b); }}});
  spawned.push_back(sup);
  auto router = spawn_llm_router(sys, sup, llm_router_options{});
  spawned.push_back(router);

  auto req = request("slow one");
  req.sink = nullptr;
  self->send(router, req);
  // Once the backend holds the call, kill the worker that made it.
  caf::actor worker;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (server.in_flight() == 0 && std::chrono::steady_clock::now() < deadline) {
    self->request(sup, std::chrono::seconds(5), child_atom::value, std::string{"w0"})
      .receive([&](caf::actor& h) { worker = h; }, [](caf::error&) {});
  }
  caf::anon_send_exit(worker, caf::exit_reason::kill);
  auto started = std::chrono::steady_clock::now();
  self->receive([&](llm_reply&) { BOOST_FAIL("the killed call cannot succeed"); },
                [&](caf::error& err) {
                  BOOST_TEST(to_string(describe(err).code) == "backend_error");
                },
                caf::after(std::chrono::seconds(10)) >> [] { BOOST_FAIL("no answer"); });
  BOOST_TEST((std::chrono::steady_clock::now() - started < std::chrono::milliseconds(2000)));

  // The restarted worker serves the next call.
  auto [reply, err] = call(router, request("after restart"));
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.content == "echo: after restart");
}

BOOST_AUTO_TEST_CASE(replay_answers_from_the_transcript_and_says_so) {
  auto b = std::make_shared<llm_backend>();
  b->kind = llm::provider::replay;
  std::string error;
  b->transcript = llm::transcript::load(
    std::string{KOWALSKI_SOURCE_DIR} + "/config/demo-transcript.jsonl", error);
  BOOST_REQUIRE_MESSAGE(b->transcript, error);
  auto w = worker(b);
  auto [reply, err] = call(w, request("hello", "demo"));
  BOOST_REQUIRE(!err);
  BOOST_TEST(reply.replayed);
  BOOST_TEST(!reply.content.empty());
  BOOST_TEST(drain_deltas() == reply.content);
  check_error(call(w, request("hello", "llama3.2")).second, errc::unknown_model);
}

BOOST_AUTO_TEST_SUITE_END()
