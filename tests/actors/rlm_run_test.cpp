// RLM runs in a real node: the scripted LLM server plays the root model
// (deciding from what it receives) and the sub-models; code runs in the
// node's sandboxed Python REPL.
#define BOOST_TEST_MODULE rlm_run_test
#include <boost/test/unit_test.hpp>

#include "actors/rlm_run.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"
#include "runtime/net/http_client.hpp"
#include "tests/rig/http_fetch.hpp"
#include "tests/rig/scripted_llm.hpp"
#include "tests/rig/test_node.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
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

  static bool is_root(const std::string& body) {
    return body.find(root_marker) != std::string::npos
           || body.find("root model of a Recursive Language Model") != std::string::npos;
  }

  // Root and sub-calls both scripted.
  void script(std::function<behaviour(const std::string& body, bool root)> decide) {
    server.set_script([decide](const std::string& body) { return decide(body, is_root(body)); });
  }

  std::string base() const {
    return "http://127.0.0.1:" + std::to_string(n->http_port());
  }

  // Submits over HTTP and waits for the run's end; returns its record.
  std::string run_http(net::http_client& client, const std::string& body,
                       net::header_list headers = {}, const std::string& query = {}) {
    auto res = testing::fetch(client, "POST", base() + "/v1/rlm/runs" + query, body, headers);
    BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
    auto id = field(res.body, "id");
    res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "?wait_ms=60000", {}, {},
                         seconds(90));
    BOOST_REQUIRE(res.status == 200);
    return res.body;
  }

  static std::string field(const std::string& body, const std::string& key) {
    auto at = body.find("\"" + key + "\":");
    if (at == std::string::npos) {
      return {};
    }
    at += key.size() + 3;
    if (body[at] == '"') {
      return body.substr(at + 1, body.find('"', at + 1) - at - 1);
    }
    return body.substr(at, body.find_first_of(",}", at) - at);
  }

  std::pair<rlm_outcome, caf::error> run(rlm_start req, std::size_t output_cap = 20'000,
                                         std::function<void(rlm_options&)> tweak = {}) {
    rlm_options o;
    o.system_prompt = std::string{root_marker} + " Write ```repl blocks.";
    o.default_model = "test-model";
    o.output_cap = output_cap;
    o.llm = n->batches();
    o.repl = n->repl();
    if (tweak) {
      tweak(o);
    }
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

BOOST_AUTO_TEST_CASE(cancel_stops_the_children_and_frees_their_interpreters) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      return b;
    }
    if (body.find("Question: wait for me") != std::string::npos) {
      b.reply = "```repl\nimport time\ntime.sleep(60)\n```";
    } else {
      b.reply = "```repl\nprint(rlm_query('wait for me', context='x'))\n```";
    }
    return b;
  });
  start();
  rlm_options o;
  o.system_prompt = std::string{root_marker} + " Write ```repl blocks.";
  o.default_model = "test-model";
  o.llm = n->batches();
  o.repl = n->repl();
  auto actor = spawn_rlm_run(n->system(), o);
  caf::scoped_actor self{n->system()};
  auto started = std::chrono::steady_clock::now();
  self->send(actor, rlm_start{"q", "ctx", "text", "", 0, 0, 0, "", 2, 0});
  // The child's first turn has reached the model: its code runs next.
  BOOST_REQUIRE(server.wait_requests(2, seconds(20)));
  auto busy = [&] {
    uint32_t n_busy = 0;
    self->request(n->repl(), seconds(10), stats_atom::value)
      .receive([&](std::vector<repl_pool_info>& pools) {
                 for (auto& p : pools) {
                   n_busy += p.language == "python3" ? p.busy + p.sessions : 0;
                 }
               },
               [](caf::error&) {});
    return n_busy;
  };
  auto deadline = std::chrono::steady_clock::now() + seconds(20);
  while (busy() < 4 && std::chrono::steady_clock::now() < deadline) {
    // Both runs' code running in their own sessions: 2 busy, 2 sessions.
  }
  BOOST_REQUIRE(busy() >= 4);
  self->send(actor, cancel_atom::value);
  rlm_outcome out;
  self->receive([&](rlm_outcome& r) { out = std::move(r); },
                caf::after(seconds(20)) >> [] { BOOST_FAIL("no outcome after the cancel"); });
  BOOST_TEST(out.reason == "cancelled");
  // The child's sleeping code was killed, not waited for.
  while (busy() > 0 && std::chrono::steady_clock::now() < deadline) {
  }
  BOOST_TEST(busy() == 0u);
  BOOST_TEST((std::chrono::steady_clock::now() - started < seconds(30)));
}

BOOST_AUTO_TEST_CASE(the_wall_timeout_ends_the_run_and_children_get_what_is_left) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      return b;
    }
    if (body.find("Question: slow child") != std::string::npos) {
      b.reply = "```repl\nimport time\ntime.sleep(0.3)\nprint('child step')\n```";
    } else {
      b.reply = "```repl\nprint(rlm_query('slow child', context='x'))\n```";
    }
    return b;
  });
  start();
  auto t = std::chrono::steady_clock::now();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 1500, "", 2, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "timeout", out.reason);
  BOOST_TEST(out.error.find("timeout of 1500 ms") != std::string::npos, out.error);
  // The child ran out of the parent's time first, and said so in code.
  BOOST_REQUIRE(!out.trajectory.empty());
  auto& printed = out.trajectory[0].outputs.at(0);
  BOOST_TEST(printed.find("Error: RLM query failed - the child run ended with reason timeout")
               != std::string::npos,
             printed);
  BOOST_TEST((std::chrono::steady_clock::now() - t < seconds(10)));
}

BOOST_AUTO_TEST_CASE(turns_of_failing_code_in_a_row_end_the_run) {
  root([](const std::string&) -> std::string { return "```repl\nraise ValueError('no')\n```"; });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0}, 20'000,
                        [](rlm_options& o) { o.max_errors = 3; });
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "errors", out.reason);
  BOOST_TEST(out.turns == 3u);
  BOOST_TEST(out.trajectory.at(2).outputs.at(0).find("ValueError: no") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(code_that_loses_the_interpreter_gets_its_context_back) {
  root([](const std::string& body) -> std::string {
    auto n = count(body, "REPL output");
    if (n == 0) {
      return "```repl\nmine = 1\nimport time\ntime.sleep(30)\n```";
    }
    if (n == 1) {
      return "```repl\nprint(len(context), 'mine' in globals(), answer['ready'])\n```";
    }
    return "FINAL(still going)";
  });
  start();
  auto [out, err] = run(rlm_start{"q", "twelve chars", "text", "", 0, 0, 0}, 20'000,
                        [](rlm_options& o) { o.repl_timeout = std::chrono::milliseconds{800}; });
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "final", out.error);
  BOOST_REQUIRE(out.trajectory.size() == 3u);
  BOOST_TEST(out.trajectory[0].restarts == std::vector<uint32_t>{0});
  BOOST_TEST(out.trajectory[0].outputs.at(0).find("were loaded again") != std::string::npos,
             out.trajectory[0].outputs.at(0));
  // The context is back; the code's own variable is not.
  BOOST_TEST(out.trajectory[1].outputs.at(0) == "12 False False\n");
}

BOOST_AUTO_TEST_CASE(children_running_together_share_the_budget) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      return b;
    }
    b.completion_tokens = 1;
    if (body.find("Question: part") != std::string::npos) {
      // A child that never finishes on its own: only its budget stops it.
      b.prompt_tokens = 300;
      b.reply = "```repl\nprint('child turn')\n```";
      return b;
    }
    b.prompt_tokens = 10;
    b.reply = "```repl\nprint(rlm_query_batched(['part 1', 'part 2', 'part 3', 'part 4'], "
              "['a', 'b', 'c', 'd']))\n```";
    return b;
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 1000, 0, "", 2, 0});
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "token_budget", out.reason);
  BOOST_TEST(out.sub_calls == 4u);
  // Each child had a quarter of the budget and stopped after one turn; given
  // all of it, each would have run four.
  BOOST_TEST(out.sub_prompt_tokens == 1200u, out.sub_prompt_tokens);
  auto& printed = out.trajectory.at(0).outputs.at(0);
  BOOST_TEST(count(printed, "the child run ended with reason token_budget") == 4u, printed);
}

BOOST_AUTO_TEST_CASE(a_stopped_node_resumes_a_run_with_a_child_and_a_compaction) {
  auto hang = std::make_shared<std::atomic<bool>>(true);
  script([hang](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      if (*hang && body.find("slow one") != std::string::npos) {
        b.latency = std::chrono::seconds(60);
      }
      return b;
    }
    b.prompt_tokens = 10;
    if (body.find("Question: count the words") != std::string::npos) {
      b.reply = "```repl\nanswer['content'] = str(len(context.split()))\n"
                "answer['ready'] = True\n```";
    } else if (body.find("Summarize your progress") != std::string::npos) {
      b.reply = "SUMMARY-R";
    } else if (body.find("SUMMARY-R") == std::string::npos) {
      b.prompt_tokens = 700;  // past half of the window: compaction next
      b.reply = "```repl\nc = rlm_query('count the words', context='one two three')\n"
                "print(c)\n```";
    } else {
      b.reply = "```repl\ns = llm_query('slow one')\n"
                "answer['content'] = c + '|' + s + '|' + str(len(history))\n"
                "answer['ready'] = True\n```";
    }
    return b;
  });
  cfg.rlm_context_window = 1000;
  cfg.rlm_compact_at = 0.5;
  start();
  net::http_client client;
  auto res = testing::fetch(client, "POST", base() + "/v1/rlm/runs",
                            R"({"question": "q", "context": "ctx", "max_depth": 2})");
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  auto id = field(res.body, "id");
  // Root, child root, summary, root, then the slow sub-call, which hangs.
  BOOST_REQUIRE(server.wait_requests(5, seconds(30)));
  n.reset();  // the node stops mid-run

  *hang = false;
  server.reset_counters();
  start();
  res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "?wait_ms=30000", {}, {},
                       seconds(60));
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(field(res.body, "reason") == "answer", res.body);
  // The child's answer came from the log, the history was compacted the
  // same way again (8 messages), and the slow call was made once more.
  BOOST_TEST(field(res.body, "answer") == "3|echo: slow one|8", res.body);
  BOOST_TEST(field(res.body, "compactions") == "1", res.body);
  BOOST_TEST(field(res.body, "replayed_turns") == "1", res.body);
  BOOST_TEST(field(res.body, "resumes") == "1", res.body);
  auto after = server.received();
  BOOST_REQUIRE(after.size() == 1u);
  BOOST_TEST(after[0].body.find("slow one") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_child_without_a_free_interpreter_fails_instead_of_waiting_forever) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") == 0) {
      return "```repl\nprint(rlm_query('count the words', context='a b'))\n```";
    }
    return "FINAL(went on)";
  });
  cfg.repl_max_workers = 1;  // the parent holds the only interpreter
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0, "", 2, 0}, 20'000,
                        [](rlm_options& o) {
                          o.child_start_timeout = std::chrono::milliseconds{500};
                        });
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "final", out.error);
  auto& printed = out.trajectory.at(0).outputs.at(0);
  BOOST_TEST(printed.find("no Python interpreter was free for the run within 500 ms")
               != std::string::npos,
             printed);
}

BOOST_AUTO_TEST_CASE(a_run_that_dies_is_started_again_from_its_log) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") == 0) {
      return "```repl\nimport time\ntime.sleep(1)\nv = 41\nprint('slept')\n```";
    }
    return "```repl\nanswer['content'] = str(v + 1)\nanswer['ready'] = True\n```";
  });
  start();
  net::http_client client;
  auto res = testing::fetch(client, "POST", base() + "/v1/rlm/runs",
                            R"({"question": "q", "context": "ctx"})");
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  auto id = field(res.body, "id");
  auto deadline = std::chrono::steady_clock::now() + seconds(10);
  while (field(res.body, "turns") != "1" && std::chrono::steady_clock::now() < deadline) {
    // Bounded by the node: back after 100 ms, or when the run ends.
    res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "?wait_ms=100");
  }
  BOOST_REQUIRE_MESSAGE(field(res.body, "turns") == "1", res.body);
  // The first turn's reply is stored and its code sleeps: the run dies.
  caf::scoped_actor self{n->system()};
  caf::actor run_actor;
  self->request(n->rlm(), seconds(10), get_atom::value, id)
    .receive([&](caf::actor& h) { run_actor = h; },
             [](caf::error& e) { BOOST_FAIL(caf::to_string(e)); });
  BOOST_REQUIRE(run_actor);
  caf::anon_send_exit(run_actor, caf::exit_reason::user_shutdown);
  res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "?wait_ms=30000", {}, {},
                       seconds(60));
  BOOST_TEST(field(res.body, "reason") == "answer", res.body);
  BOOST_TEST(field(res.body, "answer") == "42", res.body);
  // The stored reply was not asked for again.
  std::size_t roots = 0;
  for (auto& r : server.received()) {
    roots += is_root(r.body) ? 1 : 0;
  }
  BOOST_TEST(roots == 2u);
  // The manager still serves.
  BOOST_TEST(testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id).status == 200);
}

BOOST_AUTO_TEST_CASE(a_needle_in_50_mb_is_found_through_code_and_sub_calls) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      // The sub-model reads its window and says what code it holds.
      auto at = body.find("NEEDLE-REAL-");
      b.reply = body.find("Which secret code") == std::string::npos ? "?"
                : at == std::string::npos                          ? "none"
                                                                   : body.substr(at + 12, 4);
      return b;
    }
    if (count(body, "REPL output") == 0) {
      b.reply = "I will filter with code, then ask about each candidate.\n```repl\n"
                "import re\n"
                "hits = [m.start() for m in re.finditer('NEEDLE', context)]\n"
                "windows = [context[max(0, i - 200):i + 200] for i in hits]\n"
                "replies = llm_query_batched(['Which secret code does this text hold? Say "
                "none if it holds none.\\n' + w for w in windows])\n"
                "codes = [r for r in replies if r != 'none']\n"
                "found = codes[0] if codes else 'not found'\n"
                "print(len(hits), 'candidates')\n```";
    } else {
      b.reply = "FINAL_VAR(found)";
    }
    return b;
  });
  start();
  std::string context;
  context.reserve(50u << 20);
  const std::string line = "the quick brown fox jumps over the lazy dog, again and again.\n";
  std::size_t decoys = 0;
  while (context.size() < (50u << 20)) {
    if (context.size() > (std::size_t{7} << 20) * (decoys + 1) && decoys < 5) {
      context += "a NEEDLE-DECOY sits here\n";
      ++decoys;
    }
    auto at = std::size_t{37} << 20;
    if (context.size() >= at && context.size() < at + 64) {
      context += "the NEEDLE-REAL-7315 is the one\n";
    }
    context += line;
  }
  BOOST_REQUIRE(count(context, "NEEDLE") == 6u);
  net::http_client client;
  auto record = run_http(client, context, {{"Content-Type", "text/plain"}},
                         "?question=" + std::string{"Which%20code%3F"});
  BOOST_TEST(field(record, "status") == "finished", record);
  BOOST_TEST(field(record, "reason") == "final_var", record);
  BOOST_TEST(field(record, "answer") == "7315", record);
  BOOST_TEST(field(record, "sub_calls") == "6", record);
  auto total = std::stoull(field(record, "total_tokens"));
  auto root_tokens = std::stoull(field(record, "prompt_tokens"))
                     + std::stoull(field(record, "completion_tokens"));
  BOOST_TEST(total > root_tokens, record);
  // The root model saw metadata, never the text.
  std::size_t roots = 0;
  for (auto& r : server.received()) {
    if (is_root(r.body)) {
      ++roots;
      BOOST_TEST(r.body.size() < 20'000u);
      BOOST_TEST(r.body.find("lazy dog") == std::string::npos);
      BOOST_TEST((roots > 1 || r.body.find("a str of 52428") != std::string::npos), r.body);
    }
  }
  BOOST_TEST(roots == 2u);
  // The trajectory lists the sub-calls with their answers.
  auto id = field(record, "id");
  auto res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "/trajectory");
  BOOST_REQUIRE(res.status == 200);
  BOOST_TEST(count(res.body, "\"kind\":\"llm\"") == 6u, res.body);
  BOOST_TEST(res.body.find("\"answer\":\"7315\"") != std::string::npos);
  // The context kept for the run is gone with it.
  BOOST_TEST(std::filesystem::is_empty(dir / "rlm-contexts"));
}

BOOST_AUTO_TEST_CASE(sub_call_failures_arrive_as_error_strings_in_order_under_the_limit) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (root) {
      b.reply = "```repl\nout = llm_query_batched(['item %d%s' % (i, ' fail' if i % 5 == 3 else '')"
                " for i in range(20)])\nanswer['content'] = '|'.join(out)\n"
                "answer['ready'] = True\n```";
      return b;
    }
    b.latency = std::chrono::milliseconds(40);
    if (body.find(" fail") != std::string::npos) {
      b.kind = behaviour::fault::http_error;
      b.status = 400;
    }
    return b;
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0}, 20'000,
                        [](rlm_options& o) { o.sub_call_concurrency = 3; });
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "answer", out.error);
  std::vector<std::string> parts;
  std::size_t from = 0;
  for (auto bar = out.answer.find('|'); ; bar = out.answer.find('|', from)) {
    parts.push_back(out.answer.substr(from, bar == std::string::npos ? bar : bar - from));
    if (bar == std::string::npos) {
      break;
    }
    from = bar + 1;
  }
  BOOST_REQUIRE(parts.size() == 20u);
  for (int i = 0; i < 20; ++i) {
    if (i % 5 == 3) {
      BOOST_TEST(parts[i].rfind("Error: ", 0) == 0u, parts[i]);
    } else {
      BOOST_TEST(parts[i] == "echo: item " + std::to_string(i));
    }
  }
  // The node has 4 LLM workers; the run's own limit is lower.
  BOOST_TEST(server.max_in_flight() <= 3u);
  BOOST_TEST(server.max_in_flight() >= 2u);
  BOOST_TEST(out.sub_calls == 20u);
  BOOST_TEST(out.trajectory.at(0).sub_calls == 20u);
}

BOOST_AUTO_TEST_CASE(rlm_query_starts_a_child_run_when_depth_allows) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      return b;  // echo
    }
    if (body.find("Question: count the words") != std::string::npos) {
      // The child: its context is what the parent passed.
      b.reply = "```repl\nanswer['content'] = str(len(context.split()))\n"
                "answer['ready'] = True\n```";
      b.prompt_tokens = 100;
      b.completion_tokens = 10;
      return b;
    }
    b.reply = "```repl\nn = rlm_query('count the words', context='one two three')\n"
              "answer['content'] = n\nanswer['ready'] = True\n```";
    b.prompt_tokens = 50;
    b.completion_tokens = 5;
    return b;
  });
  start();
  // Depth 2: the root's rlm_query is a child run with a REPL of its own.
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0, "", 2, 0});
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "answer", out.error);
  BOOST_TEST(out.answer == "3");
  BOOST_TEST(out.sub_calls == 1u);
  BOOST_TEST(out.sub_prompt_tokens == 100u);  // the child's own root calls
  BOOST_TEST(out.sub_completion_tokens == 10u);
  BOOST_TEST(out.prompt_tokens == 50u);

  // Depth 1 (the default): rlm_query is a plain call to the model.
  server.reset_counters();
  auto [plain, err2] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0});
  BOOST_REQUIRE(!err2);
  BOOST_TEST(plain.answer == "echo: count the words\n\none two three", plain.answer);
  for (auto& r : server.received()) {
    BOOST_TEST(r.body.find("Question: count the words") == std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(sub_call_tokens_count_against_the_budget) {
  script([](const std::string&, bool root) {
    behaviour b;
    b.prompt_tokens = root ? 10 : 1000;
    b.completion_tokens = 1;
    if (root) {
      b.reply = "```repl\nfor i in range(4):\n    print(llm_query('part %d' % i))\n```";
    }
    return b;
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 1500, 0});
  BOOST_REQUIRE(!err);
  BOOST_TEST(out.reason == "token_budget", out.reason);
  BOOST_TEST(out.turns == 1u);
  BOOST_TEST(out.error.find("sub-calls") != std::string::npos, out.error);
  // Two calls fit; the rest were refused in code, not sent.
  auto& printed = out.trajectory.at(0).outputs.at(0);
  BOOST_TEST(count(printed, "echo: part") == 2u, printed);
  BOOST_TEST(count(printed, "Error: the run's token budget of 1500 tokens is spent") == 2u,
             printed);
  BOOST_TEST(out.sub_prompt_tokens == 2000u);
}

BOOST_AUTO_TEST_CASE(compaction_summarizes_and_keeps_the_whole_history_in_the_repl) {
  script([](const std::string& body, bool root) {
    behaviour b;
    if (!root) {
      return b;
    }
    b.prompt_tokens = 700;  // of a window of 1000: past 50 % after one turn
    if (body.find("Summarize your progress") != std::string::npos) {
      b.reply = "SUMMARY-ONE: the first turn printed its mark.";
      b.prompt_tokens = 10;
    } else if (body.find("SUMMARY-ONE") == std::string::npos) {
      b.reply = "```repl\nprint('TURN-ONE-MARK')\n```";
    } else {
      b.prompt_tokens = 10;
      b.reply = "```repl\nanswer['content'] = '%d %s' % (len(history), any('TURN-ONE-MARK' in "
                "m['content'] for m in history))\nanswer['ready'] = True\n```";
    }
    return b;
  });
  start();
  auto [out, err] = run(rlm_start{"q", "ctx", "text", "", 0, 0, 0}, 20'000,
                        [](rlm_options& o) {
                          o.context_window = 1000;
                          o.compact_at = 0.5;
                        });
  BOOST_REQUIRE_MESSAGE(!err, caf::to_string(err));
  BOOST_TEST(out.reason == "answer", out.error);
  BOOST_TEST(out.compactions == 1u);
  // system, question, turn note, reply, feedback, summary request, summary, note
  BOOST_TEST(out.answer == "8 True", out.answer);
  BOOST_REQUIRE(out.trajectory.size() == 2u);
  BOOST_TEST(out.trajectory[1].summary.find("SUMMARY-ONE") == 0u);
  // After the compaction the root model saw the summary, not the old turn.
  auto last = server.received().back().body;
  BOOST_TEST(last.find("SUMMARY-ONE") != std::string::npos);
  BOOST_TEST(last.find("TURN-ONE-MARK") == std::string::npos, last);
}

BOOST_AUTO_TEST_CASE(a_run_can_be_followed_live_as_server_sent_events) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") < 2) {
      return "```repl\nimport time\ntime.sleep(0.3)\nprint('step')\n```";
    }
    return "FINAL(two steps)";
  });
  start();
  net::http_client client;
  auto res = testing::fetch(client, "POST", base() + "/v1/rlm/runs",
                            R"({"question": "follow me", "context": "abc"})");
  BOOST_REQUIRE_MESSAGE(res.status == 202, res.body);
  auto id = field(res.body, "id");
  res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "/trajectory", {},
                       {{"Accept", "text/event-stream"}}, seconds(60));
  BOOST_REQUIRE(res.status == 200);
  auto& events = res.body;
  BOOST_TEST(count(events, "event: turn\n") == 3u, events);
  BOOST_TEST(count(events, "event: end\n") == 1u);
  BOOST_TEST(events.find("event: reply\n") != std::string::npos, events);
  // In order: turn 1 before turn 2 before the end, which carries the answer.
  auto t1 = events.find("event: turn\ndata: {\"index\":1");
  auto t2 = events.find("event: turn\ndata: {\"index\":2");
  auto end = events.find("event: end\n");
  BOOST_TEST((t1 < t2 && t2 < end), events);
  BOOST_TEST(events.find("two steps", end) != std::string::npos);
  // ?follow=true asks for the same; a finished run's stream is its whole story.
  res = testing::fetch(client, "GET", base() + "/v1/rlm/runs/" + id + "/trajectory?follow=true");
  BOOST_TEST(count(res.body, "event: turn\n") == 3u);
}

BOOST_AUTO_TEST_CASE(contexts_come_from_files_in_allowed_directories) {
  root([](const std::string& body) -> std::string {
    if (count(body, "REPL output") == 0) {
      return "```repl\nprint(context.count('x'))\n```";
    }
    return "FINAL(counted)";
  });
  auto allowed = dir / "contexts";
  std::filesystem::create_directories(allowed);
  cfg.rlm_context_dirs = allowed.string();
  start();
  {
    std::ofstream f{allowed / "big.txt"};
    f << std::string(100'000, 'x');
  }
  net::http_client client;
  auto record = run_http(client, R"({"question": "how many x?", "context_file": ")"
                                   + (allowed / "big.txt").string() + "\"}");
  BOOST_TEST(field(record, "reason") == "final", record);
  // The file is the user's: still there after the run.
  BOOST_TEST(std::filesystem::exists(allowed / "big.txt"));
  bool printed = false;
  for (auto& r : server.received()) {
    printed = printed || r.body.find("100000") != std::string::npos;
  }
  BOOST_TEST(printed);
}

BOOST_AUTO_TEST_CASE(bad_submissions_get_a_clear_4xx_naming_the_field) {
  cfg.rlm_max_context_bytes = 1000;
  auto allowed = dir / "contexts";
  std::filesystem::create_directories(allowed);
  cfg.rlm_context_dirs = allowed.string();
  start();
  {
    std::ofstream f{allowed / "big.txt"};
    f << std::string(2000, 'x');
  }
  {
    std::ofstream f{dir / "outside.txt"};
    f << "secret";
  }
  net::http_client client;
  auto post = [&](const std::string& body, net::header_list h = {}, std::string query = {}) {
    return testing::fetch(client, "POST", base() + "/v1/rlm/runs" + query, body, h);
  };
  auto expect = [&](net::client_result res, int status, const std::string& f) {
    BOOST_TEST(res.status == status, res.body);
    if (!f.empty()) {
      BOOST_TEST(res.body.find("\"field\":\"" + f + "\"") != std::string::npos, res.body);
    }
  };
  expect(post(R"({"question": "   ", "context": "x"})"), 400, "question");
  expect(post(R"({"question": "q"})"), 400, "context");
  expect(post(R"({"question": "q", "context": "x", "context_file": "/etc/hosts"})"), 400,
         "context_file");
  expect(post(R"({"question": "q", "context_file": ")" + (allowed / "missing.txt").string()
              + "\"}"),
         400, "context_file");
  expect(post(R"({"question": "q", "context_file": ")" + (dir / "outside.txt").string()
              + "\"}"),
         400, "context_file");
  expect(post(R"({"question": "q", "context_file": "relative.txt"})"), 400, "context_file");
  expect(post(R"({"question": "q", "context": ")" + std::string(1500, 'y') + "\"}"), 413,
         "context");
  expect(post(R"({"question": "q", "context_file": ")" + (allowed / "big.txt").string()
              + "\"}"),
         413, "context_file");
  expect(post(std::string(1500, 'z'), {{"Content-Type", "text/plain"}}, "?question=q"), 413,
         "context");
  expect(post("abc", {{"Content-Type", "text/plain"}}), 400, "question");
  expect(post("abc", {{"Content-Type", "text/plain"}}, "?question=q&max_depth=x"), 400,
         "max_depth");
  expect(post(R"({"question": "q", "context": "x", "model": "no-such-model"})"), 400, "model");
  expect(post(R"({"question": "q", "context": "x", "max_depth": 9})"), 400, "max_depth");
  expect(post(R"({"question": "q", "context": "x", "max_tokens": "many"})"), 400, "max_tokens");
  expect(post(R"({"question": "q", "context": [1, 2], "context_kind": "text"})"), 400,
         "context_kind");
  expect(post("{not json"), 400, "");
  // Nothing was started by any of them, and the node still serves.
  auto res = post(R"({"question": "q", "context": "fine"})");
  BOOST_TEST(res.status == 202, res.body);
  BOOST_TEST(server.wait_requests(1, seconds(10)));
}

BOOST_AUTO_TEST_SUITE_END()
