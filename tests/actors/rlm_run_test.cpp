// RLM runs in a real node: the scripted LLM server plays the root model
// (deciding from what it receives) and the sub-models; code runs in the
// node's sandboxed Python REPL.
#define BOOST_TEST_MODULE rlm_run_test
#include <boost/test/unit_test.hpp>

#include "actors/rlm_run.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"
#include "runtime/net/http_client.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include <functional>

using namespace kowalski;
using kowalski::testing::behaviour;
using kowalski::testing::scripted_llm;
using kowalski::testing::test_node;
using std::chrono::seconds;

namespace {

constexpr const char* root_marker = "ROOT-PROMPT-FOR-TESTS";

std::size_t count(const std::string& haystack, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = haystack.find(needle); p != std::string::npos; p = haystack.find(needle, p + 1)) {
    ++n;
  }
  return n;
}

struct fixture : scripted_llm, test_node {
  scripted_llm& server = *this;

  fixture() : test_node("rlm", scripted_llm::base_url()) {
  }

  // The root model answers with what `decide` says, given the request body;
  // sub-calls (no root prompt in them) get the default echo.
  void root(std::function<std::string(const std::string&)> decide) {
    server.set_script([decide](const std::string& body) {
      behaviour b;
      // The tests' own prompt, or the node's (config/prompts/rlm_system.md).
      if (body.find(root_marker) != std::string::npos
          || body.find("root model of a Recursive Language Model") != std::string::npos) {
        b.reply = decide(body);
      }
      return b;
    });
  }

  std::pair<rlm_outcome, caf::error> run(rlm_start req, std::size_t output_cap = 20'000) {
    rlm_options o;
    o.system_prompt = std::string{root_marker} + " Write ```repl blocks.";
    o.default_model = "test-model";
    o.output_cap = output_cap;
    o.llm = n->batches();
    o.repl = n->repl();
    auto actor = spawn_rlm_run(n->system(), o);
    std::pair<rlm_outcome, caf::error> out;
    caf::scoped_actor self{n->system()};
    self->request(actor, seconds(60), std::move(req))
      .receive([&](rlm_outcome& r) { out.first = std::move(r); },
               [&](caf::error& e) { out.second = std::move(e); });
    return out;
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(rlm, fixture)

BOOST_AUTO_TEST_CASE(a_needle_is_found_through_code_and_returned_with_final_var) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") == 0) {
      return "Let me search.\n```repl\nidx = context.find('NEEDLE-4242')\n"
             "found = context[idx:idx + 11]\nprint(idx)\n```\n";
    }
    return "Found it.\nFINAL_VAR(found)\n";
  });
  start();
  std::string context(5 << 20, 'x');
  context.replace(3'000'123, 11, "NEEDLE-4242");
  auto [out, err] = run(rlm_start{"Where is the needle?", context, "text", "", 0, 0, 0});
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "final_var", out.error);
  BOOST_TEST(out.answer == "NEEDLE-4242");
  BOOST_TEST(out.turns == 2u);
  // Both turns are kept, the one that answered too.
  BOOST_REQUIRE(out.trajectory.size() == 2u);
  BOOST_TEST(out.trajectory[0].outputs.at(0) == "3000123\n");
  BOOST_TEST(out.trajectory[1].reply.find("FINAL_VAR(found)") != std::string::npos);
  BOOST_TEST(out.prompt_tokens > 0u);
  // The root model saw metadata, never the context.
  for (auto& r : server.received()) {
    BOOST_TEST(r.body.size() < 10'000u);
    BOOST_TEST(r.body.find("xxxxxxxxxxxxxxxxxxxx") == std::string::npos);
  }
  auto first = server.received().front().body;
  BOOST_TEST(first.find("a str of 5242880 characters") != std::string::npos, first);
}

BOOST_AUTO_TEST_CASE(final_var_of_a_missing_variable_lets_the_run_go_on) {
  root([](const std::string& body) -> std::string {
    if (body.find("no variable nothing_here") != std::string::npos) {
      return "Then plainly:\nFINAL(forty-two)\n";
    }
    return "FINAL_VAR(nothing_here)\n";
  });
  start();
  auto [out, err] = run(rlm_start{"q", "some context", "text", "", 0, 0, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "final");
  BOOST_TEST(out.answer == "forty-two");
  BOOST_TEST(out.turns == 2u);
}

BOOST_AUTO_TEST_CASE(without_a_final_answer_the_last_request_asks_for_one) {
  root([](const std::string& body) -> std::string {
    if (body.find("You have used all 3 turns") != std::string::npos) {
      return "FINAL(best guess)";
    }
    return "```repl\nprint('still looking')\n```";
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 3, 0, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "max_iterations");
  BOOST_TEST(out.answer == "best guess");
  BOOST_TEST(out.turns == 3u);
  BOOST_TEST(out.trajectory.size() == 3u);
}

BOOST_AUTO_TEST_CASE(code_sets_the_answer_with_sub_calls_in_order) {
  root([](const std::string&) -> std::string {
    return "```repl\nparts = llm_query_batched(['alpha', 'beta', 'gamma'])\n"
           "answer['content'] = '|'.join(parts)\nanswer['ready'] = True\n```";
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "answer");
  BOOST_TEST(out.answer == "echo: alpha|echo: beta|echo: gamma");
  BOOST_TEST(out.turns == 1u);
}

BOOST_AUTO_TEST_CASE(json_contexts_load_as_values_and_long_output_is_cut) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") == 0) {
      return "```repl\nprint(type(context).__name__, len(context))\n```\n"
             "```repl\nprint('y' * 50000)\n```";
    }
    return "FINAL(done)";
  });
  start();
  auto [out, err] = run(rlm_start{"q", R"([{"a": 1}, {"b": [1, 2]}, "three"])", "json", "", 0,
                                  0, 0},
                        1000);
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "final");
  BOOST_REQUIRE(out.trajectory.size() == 2u);
  BOOST_TEST(out.trajectory[0].outputs.at(0) == "list 3\n");
  BOOST_TEST(out.trajectory[0].outputs.at(1).find("... + [49001 chars...]") != std::string::npos);
  auto first = server.received().front().body;
  BOOST_TEST(first.find("a list of 3 items") != std::string::npos, first);
}

BOOST_AUTO_TEST_CASE(a_token_budget_ends_the_run_with_its_reason) {
  root([](const std::string&) -> std::string { return "```repl\nprint(1)\n```"; });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 1, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "token_budget");
  BOOST_TEST(out.turns == 1u);
  BOOST_TEST(out.error.find("budget of 1") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(runs_over_http_are_stored_turn_by_turn_and_can_be_cancelled) {
  root([](const std::string& body) -> std::string {
    if (body.find("slow please") != std::string::npos) {
      return "```repl\nimport time\ntime.sleep(0.2)\nprint('tick')\n```";
    }
    if (count(body, "REPL output") == 0) {
      return "```repl\nprint(len(context))\n```";
    }
    return "FINAL(the context has 26 characters)";
  });
  start();
  net::http_client client;
  auto base = "http://127.0.0.1:" + std::to_string(n->http_port());
  auto body = R"({"question": "How long?", "context": "abcdefghijklmnopqrstuvwxyz"})";
  auto res = testing::fetch(client, "POST", base + "/v1/rlm/runs", body);
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  auto id_at = res.body.find("\"id\":\"") + 6;
  auto id = res.body.substr(id_at, res.body.find('"', id_at) - id_at);
  res = testing::fetch(client, "GET", base + "/v1/rlm/runs/" + id + "?wait_ms=20000");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(res.body.find("\"status\":\"finished\"") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("the context has 26 characters") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"reason\":\"final\"") != std::string::npos, res.body);
  res = testing::fetch(client, "GET", base + "/v1/rlm/runs/" + id + "/trajectory");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(res.body.find("\"output\":\"26\\n\"") != std::string::npos, res.body);
  BOOST_TEST(res.body.find("\"index\":2") != std::string::npos, res.body);

  // A run stopped midway says so, and stopping it again is a conflict.
  res = testing::fetch(client, "POST", base + "/v1/rlm/runs",
                       R"({"question": "slow please", "context": [1, 2, 3]})");
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  id_at = res.body.find("\"id\":\"") + 6;
  auto slow = res.body.substr(id_at, res.body.find('"', id_at) - id_at);
  res = testing::fetch(client, "DELETE", base + "/v1/rlm/runs/" + slow);
  BOOST_TEST(res.status == 200);
  BOOST_TEST(res.body.find("\"status\":\"cancelled\"") != std::string::npos, res.body);
  BOOST_TEST(testing::fetch(client, "DELETE", base + "/v1/rlm/runs/" + slow).status == 409);
  BOOST_TEST(testing::fetch(client, "GET", base + "/v1/rlm/runs/run_000000000000000000ff").status
             == 404);
  BOOST_TEST(testing::fetch(client, "POST", base + "/v1/rlm/runs", R"({"context": "x"})").status
             == 400);
}

BOOST_AUTO_TEST_CASE(bad_input_is_refused) {
  start();
  auto [a, e1] = run(rlm_start{"  ", "ctx", "text", "", 0, 0, 0});
  BOOST_TEST((describe(e1).code == errc::invalid_argument));
  BOOST_TEST(describe(e1).field == "question");
  auto [b, e2] = run(rlm_start{"q", "{not json", "json", "", 0, 0, 0});
  BOOST_TEST(describe(e2).field == "context");
  auto [c, e3] = run(rlm_start{"q", "ctx", "xml", "", 0, 0, 0});
  BOOST_TEST(describe(e3).field == "context_kind");
}

BOOST_AUTO_TEST_SUITE_END()
