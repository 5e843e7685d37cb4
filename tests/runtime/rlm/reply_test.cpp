// RLM replies: repl blocks in order, FINAL and FINAL_VAR outside code,
// feedback cut with its marker.
#define BOOST_TEST_MODULE rlm_reply
#include <boost/test/unit_test.hpp>

#include "runtime/rlm/reply.hpp"

using namespace kowalski::rlm;

BOOST_AUTO_TEST_CASE(repl_blocks_come_back_in_order_and_others_are_skipped) {
  auto reply = "Let me look.\n"
               "```repl\nprint(len(context))\n```\n"
               "Some prose.\n"
               "```python\nprint('not run')\n```\n"
               "~~~ REPL\nx = 1\n~~~\n"
               "````repl\ncode = '```'\nprint(code)\n````\n";
  auto blocks = repl_blocks(reply);
  BOOST_REQUIRE(blocks.size() == 3u);
  BOOST_TEST(blocks[0] == "print(len(context))\n");
  BOOST_TEST(blocks[1] == "x = 1\n");
  BOOST_TEST(blocks[2] == "code = '```'\nprint(code)\n");
  // An unclosed block runs to the end.
  auto open = repl_blocks("```repl\nprint(1)\nprint(2)");
  BOOST_REQUIRE(open.size() == 1u);
  BOOST_TEST(open[0] == "print(1)\nprint(2)\n");
  BOOST_TEST(repl_blocks("no code here").empty());
  BOOST_TEST(repl_blocks("```replica\nx\n```").empty());
}

BOOST_AUTO_TEST_CASE(final_answers_are_read_from_prose_only) {
  auto f = find_final("I found it.\nFINAL(the needle is 42)\n");
  BOOST_TEST((f.kind == final_answer::text));
  BOOST_TEST(f.value == "the needle is 42");

  // Greedy to the last ")" ending a line: nested parentheses, several lines.
  f = find_final("FINAL(f(x) = (a + b)\nand (c)) \nthanks");
  BOOST_TEST((f.kind == final_answer::text));
  BOOST_TEST(f.value == "f(x) = (a + b)\nand (c)");

  f = find_final("  FINAL_VAR(result)\n");
  BOOST_TEST((f.kind == final_answer::variable));
  BOOST_TEST(f.value == "result");
  f = find_final("FINAL_VAR(\"answer\")");
  BOOST_TEST(f.value == "answer");

  // FINAL_VAR wins over FINAL; FINAL inside code or mid-line does not count.
  f = find_final("FINAL(text)\nFINAL_VAR(v)\n");
  BOOST_TEST((f.kind == final_answer::variable));
  BOOST_TEST((find_final("```repl\nFINAL(42)\n```\n").kind == final_answer::none));
  BOOST_TEST((find_final("I will write FINAL(x) later").kind == final_answer::none));
  BOOST_TEST((find_final("FINAL(unclosed").kind == final_answer::none));
}

BOOST_AUTO_TEST_CASE(feedback_is_cut_with_the_count_of_what_was_dropped) {
  BOOST_TEST(cut("short", 10) == "short");
  BOOST_TEST(cut("0123456789abc", 10) == "0123456789... + [3 chars...]");
  // Characters, not bytes.
  BOOST_TEST(cut("ééééé", 2) == "éé... + [3 chars...]");
  BOOST_TEST(prose("a\n```repl\nb\n```\nc\n") == "a\nc\n");
}
