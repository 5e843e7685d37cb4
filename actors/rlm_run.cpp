// RLM run: root-model turns through the batch coordinator, code blocks in a
// Python REPL session, sub-calls from code counted, limited, logged and
// replayed, child runs for rlm_query, compaction of a long history,
// termination by answer, FINAL or FINAL_VAR, limits.
#include "actors/rlm_run.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/rlm/reply.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <simdjson.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <deque>
#include <map>
#include <random>
#include <set>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Answers to one repl_sub_call, filled slot by slot.
struct sub_group {
  caf::response_promise rp;
  std::vector<std::string> results;
  std::size_t left = 0;
};

struct pending_sub {
  std::shared_ptr<sub_group> group;
  std::size_t slot = 0;
  rlm_sub_call call;  // what is known before the answer
  std::string prompt;
  std::string context;
  uint32_t occurrence = 0;  // of the same prompt in its turn
  uint64_t reserved = 0;    // of the run's budget, for a child
  clock_type::time_point started;
};

struct run_state {
  rlm_options opts;
  rlm_start req;
  caf::response_promise rp;
  std::string session;
  std::string model;
  /// What the root model gets: the system prompt and the question first,
  /// then the turns (since the last compaction).
  std::vector<chat_message> messages;
  /// Every message of the run, the compacted ones too: the REPL's `history`.
  std::vector<chat_message> history;
  rlm_outcome out;
  uint32_t max_iterations = 30;
  uint32_t max_depth = 1;
  clock_type::time_point started;
  uint32_t failing_turns = 0;  // in a row
  std::string last_reply;      // the best partial answer when a limit hits
  bool done = false;  // answered; later replies are dropped
  rlm_turn turn;
  bool turn_stored = false;  // the current turn is committed as complete
  std::vector<std::string> blocks;
  bool turn_failed = false;
  // The size of the root model's window: its last call's tokens, and the
  // characters added since (the feedback), to estimate the next call.
  uint64_t window_tokens = 0;
  std::size_t chars_since = 0;
  std::string inline_context;  // kept for reloads when there is no context file
  std::string summary;  // of a compaction, stored with the turn it precedes
  uint32_t summary_prompt_tokens = 0;
  uint32_t summary_completion_tokens = 0;
  // Sub-calls.
  uint32_t next_seq = 0;
  std::deque<pending_sub> llm_queue;
  std::deque<pending_sub> child_queue;
  uint32_t llm_busy = 0;
  uint32_t child_busy = 0;
  uint64_t reserved = 0;  // budget handed to running children
  bool pumping = false;  // pump() is on the stack: calls that end at once do not recurse
  std::map<uint64_t, uint32_t> seen;  // prompt hashes of this turn: names children
  std::map<std::string, caf::actor> children;
  // Linked children whose answer has not come: a child that dies instead
  // answers its rlm_query with an error.
  std::map<caf::actor_addr, pending_sub> child_calls;
  std::set<caf::actor_addr> linked;  // children whose exit has not arrived
  uint64_t child_count = 0;
  // Resume: the committed turns and the answers not yet replayed, by turn
  // and prompt hash, in the order they arrived.
  std::vector<rlm_turn> stored;
  std::multimap<std::pair<uint32_t, uint64_t>, rlm_sub_call> logged;
  std::map<uint32_t, uint32_t> last_seq;  // per turn, of the log
  std::shared_ptr<spdlog::logger> log = logging::get("rlm");
  static inline const char* name = "kowalski.rlm_run";
};

using run_actor = caf::stateful_actor<run_state>;

void next_turn(run_actor* self);
void pump(run_actor* self);

bool identifier(const std::string& s) {
  if (s.empty() || !(std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_')) {
    return false;
  }
  for (unsigned char c : s) {
    if (!(std::isalnum(c) || c == '_')) {
      return false;
    }
  }
  return true;
}

int64_t elapsed_us(const run_state& st) {
  return std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now() - st.started)
    .count();
}

uint64_t tokens_used(const run_state& st) {
  return st.out.prompt_tokens + st.out.completion_tokens + st.out.sub_prompt_tokens
         + st.out.sub_completion_tokens;
}

// Time left of the run's wall timeout; max() when it has none.
milliseconds time_left(const run_state& st) {
  if (st.req.timeout_ms == 0) {
    return milliseconds::max();
  }
  auto left = milliseconds{st.req.timeout_ms}
              - std::chrono::duration_cast<milliseconds>(clock_type::now() - st.started);
  return std::max(left, milliseconds{0});
}

// What the root model is told about the context instead of the context,
// from the metadata the REPL printed when it loaded it.
std::string describe_context(std::string_view meta) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view type;
  if (parser.parse(meta).get(doc) != simdjson::SUCCESS
      || doc["type"].get(type) != simdjson::SUCCESS) {
    return "Your context is a Python value.";
  }
  uint64_t chars = 0;
  uint64_t items = 0;
  if (doc["chars"].get(chars) != simdjson::SUCCESS) {
    chars = 0;
  }
  if (doc["items"].get(items) != simdjson::SUCCESS) {
    items = 0;
  }
  if (type == "str") {
    return "Your context is a str of " + std::to_string(chars) + " characters.";
  }
  if (type == "list") {
    std::string lengths;
    simdjson::dom::array arr;
    if (doc["lengths"].get(arr) == simdjson::SUCCESS) {
      for (auto v : arr) {
        uint64_t n = 0;
        if (v.get(n) != simdjson::SUCCESS) {
          continue;
        }
        lengths += (lengths.empty() ? "" : ", ") + std::to_string(n);
      }
    }
    return "Your context is a list of " + std::to_string(items) + " items ("
           + std::to_string(chars) + " characters of JSON in all); their lengths"
           + (items > 100 ? " (the first 100)" : "") + ": " + lengths + ".";
  }
  if (type == "dict") {
    std::string names;
    simdjson::dom::array arr;
    if (doc["names"].get(arr) == simdjson::SUCCESS) {
      for (auto v : arr) {
        std::string_view n;
        if (v.get(n) != simdjson::SUCCESS) {
          continue;
        }
        names += (names.empty() ? "" : ", ") + json::quote(n);
      }
    }
    return "Your context is a dict of " + std::to_string(items) + " keys ("
           + std::to_string(chars) + " characters of JSON in all); keys"
           + (items > 20 ? " (the first 20)" : "") + ": " + names + ".";
  }
  return "Your context is a JSON " + std::string{type} + " (" + std::to_string(chars)
         + " characters).";
}

void add_message(run_state& st, std::string role, std::string content) {
  st.chars_since += content.size();
  st.history.push_back(chat_message{role, content});
  st.messages.push_back(chat_message{std::move(role), std::move(content)});
}

// Commits one record; `then` runs once it is stored (or at once when the
// run has no writer). A failure goes to `failed`.
template <class Then, class Failed>
void commit(run_actor* self, std::string db, std::string key, std::string value, Then then,
            Failed failed) {
  auto& st = self->state;
  if (!st.opts.writer || st.opts.run_id.empty()) {
    return then();
  }
  write_batch wb;
  wb.ops.push_back(kv_op{kv_op::put, std::move(db), std::move(key), std::move(value)});
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then([=](uint64_t) mutable { then(); }, [=](caf::error& e) mutable { failed(e); });
}

template <class Then, class Failed>
void commit_turn(run_actor* self, Then then, Failed failed) {
  auto& st = self->state;
  st.turn.duration_us = elapsed_us(st);
  auto index = st.turn.index;
  commit(self, "rlm_turns", store::item_key(st.opts.run_id, index), store::encode(st.turn),
         [=]() mutable {
           auto& st = self->state;
           if (st.opts.progress) {
             self->send(st.opts.progress, committed_atom::value, st.opts.run_id, index);
           }
           then();
         },
         failed);
}

void deliver(run_actor* self) {
  auto& st = self->state;
  st.out.duration_ms = elapsed_us(st) / 1000;
  st.log->info("rlm run ended run_id={} depth={} reason={} turns={} sub_calls={} "
               "tokens={} answer_bytes={} duration_ms={}",
               st.opts.run_id, st.req.depth, st.out.reason, st.out.turns, st.out.sub_calls,
               tokens_used(st), st.out.answer.size(), st.out.duration_ms);
  // Code still running (a cancel) is killed: the worker is free at once.
  self->request(st.opts.repl, std::chrono::seconds(10), end_repl_session{st.session, true})
    .then([](bool) {}, [](caf::error&) {});
  st.rp.deliver(st.out);
  self->quit();
}

// Ends the run; the turn that ended it is stored like the others first,
// and children still running are cancelled.
void finish(run_actor* self, std::string reason, std::string answer, std::string error = {}) {
  auto& st = self->state;
  if (st.done) {
    return;
  }
  st.done = true;
  st.out.reason = std::move(reason);
  st.out.answer = std::move(answer);
  st.out.error = std::move(error);
  for (auto& [id, child] : st.children) {
    self->send(child, cancel_atom::value);
  }
  if (st.turn.index == 0 || st.turn.reply.empty() || st.turn_stored) {
    return deliver(self);
  }
  st.turn.complete = true;
  st.turn_stored = true;
  st.out.trajectory.push_back(st.turn);
  commit_turn(self, [=] { deliver(self); }, [=](caf::error& e) {
    self->state.out.error += (self->state.out.error.empty() ? "" : "; ")
                             + std::string{"the last turn could not be stored: "}
                             + describe(e).message;
    deliver(self);
  });
}

// Runs `code` in the run's session; `then` gets the result, errors end the run.
template <class Then>
void execute(run_actor* self, std::string code, Then then, std::string file_name = {},
             std::string file_data = {}, std::string file_source = {},
             std::chrono::milliseconds wait = std::chrono::milliseconds{0}) {
  auto& st = self->state;
  repl_execute cmd{"python3", std::move(code), st.session,
                   static_cast<uint64_t>(st.opts.repl_timeout.count()), std::move(file_name),
                   std::move(file_data), std::move(file_source),
                   caf::actor_cast<caf::actor>(self)};
  // The worker ends every execution itself (its timeout stops while code
  // waits for sub-calls, up to the pool's maximum); this only guards a
  // lost reply.
  auto limit = wait.count() > 0 ? wait : std::chrono::milliseconds{24 * 3600 * 1000};
  self->request(st.opts.repl, limit, std::move(cmd))
    .then([=](repl_result& r) mutable {
            if (!self->state.done) {
              then(r);
            }
          },
          [=](caf::error& e) {
            auto& st = self->state;
            if (wait.count() > 0 && e == caf::sec::request_timeout) {
              return finish(self, "failed", st.last_reply,
                            "no Python interpreter was free for the run within "
                              + std::to_string(wait.count()) + " ms (rlm.workers)");
            }
            finish(self, "failed", st.last_reply,
                   "the REPL could not run code: " + describe(e).message);
          });
}

// Asks the root model with `messages`; counts its tokens.
template <class Then>
void ask_root(run_actor* self, std::vector<chat_message> messages, Then then) {
  auto& st = self->state;
  llm_call call;
  call.request.model = st.model;
  call.request.messages = std::move(messages);
  auto left = time_left(st);
  call.request.timeout_ms = static_cast<uint64_t>(std::min(st.opts.turn_timeout, left).count());
  if (call.request.timeout_ms == 0) {
    return finish(self, "timeout", st.last_reply,
                  "the run passed its timeout of " + std::to_string(st.req.timeout_ms) + " ms");
  }
  self->request(st.opts.llm, st.opts.turn_timeout * 4 + std::chrono::minutes(1), call)
    .then(
      [=](llm_reply& reply) mutable {
        auto& st = self->state;
        if (st.done) {
          return;
        }
        st.out.prompt_tokens += reply.prompt_tokens;
        st.out.completion_tokens += reply.completion_tokens;
        then(reply);
      },
      [=](caf::error& e) {
        auto view = describe(e);
        if (view.code == errc::timeout) {
          return finish(self, "timeout", self->state.last_reply,
                        "the root model did not answer within the turn timeout of "
                          + std::to_string(self->state.opts.turn_timeout.count())
                          + " ms: " + view.message);
        }
        finish(self, "failed", self->state.last_reply, "the root model failed: " + view.message);
      });
}

// -- sub-calls ----------------------------------------------------------------

void answer_slot(run_actor* self, const std::shared_ptr<sub_group>& g, std::size_t slot,
                 std::string text) {
  g->results[slot] = std::move(text);
  if (--g->left == 0) {
    g->rp.deliver(std::move(g->results));
  }
}

// A sub-call has its answer: counted, committed, then given to the code.
void complete(run_actor* self, pending_sub p, bool ok, std::string answer, uint64_t in_tokens,
              uint64_t out_tokens) {
  auto& st = self->state;
  if (p.call.kind == "rlm" && !p.call.child.empty()) {
    --st.child_busy;
    st.reserved -= p.reserved;
    st.children.erase(p.call.child);
  } else {
    --st.llm_busy;
  }
  if (st.done) {
    return;
  }
  auto& c = p.call;
  c.ok = ok;
  c.answer = std::move(answer);
  c.prompt_tokens = in_tokens;
  c.completion_tokens = out_tokens;
  c.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(clock_type::now()
                                                                          - p.started)
                    .count();
  ++st.out.sub_calls;
  st.out.sub_prompt_tokens += in_tokens;
  st.out.sub_completion_tokens += out_tokens;
  if (c.turn == st.turn.index) {
    ++st.turn.sub_calls;
    st.turn.sub_prompt_tokens += in_tokens;
    st.turn.sub_completion_tokens += out_tokens;
  }
  auto key = store::item_key(st.opts.run_id, c.turn) + store::encode_seq(c.seq);
  auto group = p.group;
  auto slot = p.slot;
  auto text = c.answer;
  commit(self, "rlm_calls", key, store::encode(c),
         [=] { answer_slot(self, group, slot, text); },
         [=](caf::error& e) {
           // The code still gets its answer; a restart would ask again.
           self->state.log->error("rlm sub-call not stored run_id={} error=\"{}\"",
                                  self->state.opts.run_id, describe(e).message);
           answer_slot(self, group, slot, text);
         });
  if (!st.pumping) {
    pump(self);
  }
}

// Refuses a call the run's limits no longer allow; empty when allowed.
std::string refusal(const run_state& st) {
  if (st.req.max_tokens > 0 && tokens_used(st) + st.reserved >= st.req.max_tokens) {
    return "Error: the run's token budget of " + std::to_string(st.req.max_tokens)
           + " tokens is spent";
  }
  if (time_left(st) == milliseconds{0}) {
    return "Error: the run's time of " + std::to_string(st.req.timeout_ms) + " ms is up";
  }
  return {};
}

void start_llm(run_actor* self, pending_sub p) {
  auto& st = self->state;
  ++st.llm_busy;
  if (auto no = refusal(st); !no.empty()) {
    return complete(self, std::move(p), false, no, 0, 0);
  }
  llm_call call;
  call.request.model = p.call.model;
  auto text = p.context.empty() ? p.prompt : p.prompt + "\n\n" + p.context;
  call.request.messages.push_back(chat_message{"user", std::move(text)});
  call.request.timeout_ms = static_cast<uint64_t>(
    std::min(st.opts.turn_timeout, time_left(st)).count());
  p.started = clock_type::now();
  self->request(st.opts.llm, st.opts.turn_timeout * 4 + std::chrono::minutes(1), call)
    .then([=](llm_reply& r) mutable {
            complete(self, std::move(p), true, std::move(r.content), r.prompt_tokens,
                     r.completion_tokens);
          },
          [=](caf::error& e) mutable {
            complete(self, std::move(p), false, "Error: LM query failed - " + describe(e).message,
                     0, 0);
          });
}

bool answered(const std::string& reason) {
  return reason == "final" || reason == "final_var" || reason == "answer"
         || reason == "max_iterations";
}

// rlm_query below the depth limit: a child run with its own REPL, the
// budget and the time that remain, and the same store (so it resumes too).
void start_child(run_actor* self, pending_sub p) {
  auto& st = self->state;
  ++st.child_busy;
  // Named by what it was asked, not by arrival: a resumed parent finds the
  // child it started before the stop, and the child its own turns.
  char hash[17];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(p.call.prompt_hash));
  auto id = st.opts.run_id.empty() ? "child-" + std::to_string(++st.child_count)
                                   : st.opts.run_id + "." + std::to_string(p.call.turn) + "."
                                       + hash + "." + std::to_string(p.occurrence);
  p.call.child = id;
  if (auto no = refusal(st); !no.empty()) {
    return complete(self, std::move(p), false, no, 0, 0);
  }
  auto opts = st.opts;
  opts.run_id = st.opts.run_id.empty() ? std::string{} : id;
  opts.progress = caf::actor{};
  opts.session.clear();
  rlm_start start;
  if (p.context.empty()) {
    start.question = "Do what the text held in `context` asks, and give the result as your "
                     "answer.";
    start.context = p.prompt;
  } else {
    start.question = p.prompt;
    start.context = p.context;
  }
  start.model = p.call.model;
  start.max_iterations = st.max_iterations;
  start.max_depth = st.max_depth;
  start.depth = st.req.depth + 1;
  if (st.req.max_tokens > 0) {
    // Children running together share what is left instead of each being
    // given all of it; a child's tokens are only known when it ends.
    auto left = st.req.max_tokens - tokens_used(st) - st.reserved;
    // Among this child and those that may start beside it (the earlier
    // ones have their share already).
    auto slots = std::max<uint32_t>(1, st.opts.child_concurrency);
    auto free_slots = slots > st.child_busy - 1 ? slots - (st.child_busy - 1) : 1;
    auto sharing = std::min<uint64_t>(free_slots, st.child_queue.size() + 1);
    start.max_tokens = std::max<uint64_t>(1, left / std::max<uint64_t>(1, sharing));
    p.reserved = start.max_tokens;
    st.reserved += p.reserved;
  }
  if (st.req.timeout_ms > 0) {
    start.timeout_ms = static_cast<uint64_t>(std::max<int64_t>(1, time_left(st).count()));
  }
  auto child = spawn_rlm_run(self->system(), std::move(opts));
  st.children[id] = child;
  p.started = clock_type::now();
  self->link_to(child);
  st.linked.insert(child.address());
  st.child_calls.emplace(child.address(), p);
  auto addr = child.address();
  self->request(child, std::chrono::seconds(7 * 24 * 3600), std::move(start))
    .then(
      [=](rlm_outcome& out) mutable {
        if (self->state.child_calls.erase(addr) == 0) {
          return;  // answered already, as dead
        }
        auto in = out.prompt_tokens + out.sub_prompt_tokens;
        auto gen = out.completion_tokens + out.sub_completion_tokens;
        if (answered(out.reason)) {
          return complete(self, std::move(p), true, std::move(out.answer), in, gen);
        }
        auto why = "Error: RLM query failed - the child run ended with reason " + out.reason
                   + (out.error.empty() ? "" : ": " + out.error);
        complete(self, std::move(p), false, std::move(why), in, gen);
      },
      [=](caf::error& e) mutable {
        if (self->state.child_calls.erase(addr) == 0) {
          return;
        }
        complete(self, std::move(p), false, "Error: RLM query failed - " + describe(e).message,
                 0, 0);
      });
}

void pump(run_actor* self) {
  auto& st = self->state;
  st.pumping = true;
  while (!st.done && st.llm_busy < std::max<uint32_t>(1, st.opts.sub_call_concurrency)
         && !st.llm_queue.empty()) {
    auto p = std::move(st.llm_queue.front());
    st.llm_queue.pop_front();
    start_llm(self, std::move(p));
  }
  while (!st.done && st.child_busy < std::max<uint32_t>(1, st.opts.child_concurrency)
         && !st.child_queue.empty()) {
    auto p = std::move(st.child_queue.front());
    st.child_queue.pop_front();
    start_child(self, std::move(p));
  }
  st.pumping = false;
}

// Code called llm_query or rlm_query: answers from the log when this is a
// replay, else queued under the run's limits.
caf::result<std::vector<std::string>> on_sub_call(run_actor* self, repl_sub_call& sub) {
  auto& st = self->state;
  auto n = sub.prompts.size();
  if (n == 0) {
    return std::vector<std::string>{};
  }
  if (st.done) {
    return std::vector<std::string>(n, "Error: the run has ended");
  }
  auto g = std::make_shared<sub_group>();
  g->rp = self->make_response_promise();
  g->results.resize(n);
  g->left = n;
  auto model = sub.model.empty() ? st.model : sub.model;
  bool recurse = sub.kind == "rlm" && st.req.depth + 1 < st.max_depth;
  for (std::size_t i = 0; i < n; ++i) {
    auto context = i < sub.contexts.size() ? sub.contexts[i] : std::string{};
    auto hash = sub_call_hash(sub.kind, model, context, sub.prompts[i]);
    auto occurrence = st.seen[hash]++;
    auto logged = st.logged.find({st.turn.index, hash});
    if (logged != st.logged.end()) {
      auto text = std::move(logged->second.answer);
      st.logged.erase(logged);
      answer_slot(self, g, i, std::move(text));
      continue;
    }
    pending_sub p;
    p.group = g;
    p.slot = i;
    p.occurrence = occurrence;
    p.call.turn = st.turn.index;
    p.call.seq = st.next_seq++;
    p.call.kind = recurse ? "rlm" : "llm";
    p.call.model = model;
    p.call.prompt_hash = hash;
    p.call.prompt_chars = sub.prompts[i].size() + context.size();
    if (sub.kind == "rlm" && !recurse) {
      p.call.note = "rlm_query at depth " + std::to_string(st.req.depth)
                    + " is a plain call: max_depth is " + std::to_string(st.max_depth);
    }
    p.prompt = std::move(sub.prompts[i]);
    p.context = std::move(context);
    (recurse ? st.child_queue : st.llm_queue).push_back(std::move(p));
  }
  pump(self);
  return caf::delegated<std::vector<std::string>>{};
}

// -- turns --------------------------------------------------------------------

// What a block printed, as the root model gets it: the REPL's own cut
// marker is replaced by one count of everything not shown.
std::string feedback_of(const repl_result& r, std::size_t cap) {
  std::string text = r.stdout_text;
  uint64_t dropped = 0;
  if (r.stdout_cut > 0) {
    auto marker = text.rfind("\n[output cut: ");
    if (marker != std::string::npos) {
      text.erase(marker);
    }
    dropped = r.stdout_cut;
  }
  if (!r.stderr_text.empty()) {
    text += (text.empty() ? "" : "\n") + std::string{"stderr:\n"} + r.stderr_text;
  }
  if (!r.ok && !r.error.empty()) {
    text += (text.empty() ? "" : "\n") + r.error;
  }
  if (r.state_lost) {
    text += "\n(The interpreter was restarted: your variables are gone. `context`, "
            "`answer` and `history` were loaded again.)";
  }
  if (text.empty()) {
    text = "(no output)";
  }
  return rlm::cut(text, cap, dropped);
}

void check_limits(run_actor* self);

void end_turn(run_actor* self, std::string feedback) {
  auto& st = self->state;
  st.turn.feedback = feedback;
  st.turn.code_failed = st.turn_failed;
  add_message(st, "user", std::move(feedback));
  st.turn.complete = true;
  st.turn_stored = true;
  st.out.trajectory.push_back(st.turn);
  // The turn is stored before the run goes on.
  commit_turn(self, [=] {
    if (!self->state.done) {
      check_limits(self);
    }
  }, [=](caf::error& e) {
    finish(self, "failed", self->state.last_reply,
           "the turn could not be stored: " + describe(e).message);
  });
}

void check_limits(run_actor* self) {
  auto& st = self->state;
  st.failing_turns = st.turn_failed ? st.failing_turns + 1 : 0;
  auto used = tokens_used(st);
  if (st.req.max_tokens > 0 && used >= st.req.max_tokens) {
    return finish(self, "token_budget", st.last_reply,
                  "the run used " + std::to_string(used) + " tokens of its budget of "
                    + std::to_string(st.req.max_tokens) + " (root model and sub-calls)");
  }
  if (st.opts.max_errors > 0 && st.failing_turns >= st.opts.max_errors) {
    return finish(self, "errors", st.last_reply,
                  std::to_string(st.failing_turns) + " turns in a row had failing code");
  }
  next_turn(self);
}

// After the blocks: the answer contract first, then FINAL_VAR, then FINAL.
// `resumed`: the turn is a replayed one whose feedback is in the history
// already (the node stopped after storing it, before the run's end was).
void check_final(run_actor* self, std::string joined_outputs, bool resumed = false) {
  auto probe = "import json as _kw_json\n_kw_a = globals().get('answer')\n"
               "print(_kw_json.dumps({'ready': bool(isinstance(_kw_a, dict) and "
               "_kw_a.get('ready')), 'content': str(_kw_a.get('content', '')) "
               "if isinstance(_kw_a, dict) else ''}))\ndel _kw_a, _kw_json";
  execute(self, probe, [=](repl_result& r) {
    auto& st = self->state;
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    bool ready = false;
    std::string_view content;
    if (parser.parse(r.stdout_text).get(doc) == simdjson::SUCCESS
        && doc["ready"].get(ready) == simdjson::SUCCESS && ready
        && doc["content"].get(content) == simdjson::SUCCESS) {
      return finish(self, "answer", std::string{content});
    }
    auto fin = rlm::find_final(st.turn.reply);
    if (fin.kind == rlm::final_answer::text) {
      return finish(self, "final", fin.value);
    }
    auto go_on = [=](std::string feedback) {
      if (resumed) {
        return check_limits(self);
      }
      end_turn(self, std::move(feedback));
    };
    if (fin.kind == rlm::final_answer::variable) {
      if (!identifier(fin.value)) {
        return go_on(joined_outputs + "FINAL_VAR(" + fin.value
                     + ") does not name a variable; the run goes on.");
      }
      auto name = fin.value;
      return execute(self, "print(str(" + name + "), end='')", [=](repl_result& v) {
        if (v.ok) {
          return finish(self, "final_var", v.stdout_text);
        }
        go_on(joined_outputs + "FINAL_VAR(" + name + "): the REPL has no variable " + name
              + "; the run goes on. Set it, then answer again.");
      });
    }
    go_on(joined_outputs);
  });
}

std::string load_code(bool json);

// After an execution lost the interpreter: the context (and the history,
// after a compaction) are loaded again, so the run can go on.
template <class Then>
void reload(run_actor* self, Then then);

void run_block(run_actor* self, std::size_t k, std::string joined) {
  auto& st = self->state;
  if (k == st.blocks.size()) {
    if (st.blocks.empty()) {
      joined = "Your reply had no ```repl block. Write code to examine the context, or "
               "finish as the instructions say.\n";
    }
    return check_final(self, std::move(joined));
  }
  execute(self, st.blocks[k], [=](repl_result& r) {
    auto& st = self->state;
    auto text = feedback_of(r, st.opts.output_cap);
    st.turn.outputs.push_back(text);
    st.turn_failed = st.turn_failed || !r.ok || r.state_lost;
    auto label = st.blocks.size() > 1 ? "REPL output (block " + std::to_string(k + 1) + "):\n"
                                      : std::string{"REPL output:\n"};
    auto next = joined + label + text + "\n\n";
    if (!r.state_lost) {
      return run_block(self, k + 1, std::move(next));
    }
    st.turn.restarts.push_back(static_cast<uint32_t>(k));
    reload(self, [=] { run_block(self, k + 1, next); });
  });
}

void on_reply(run_actor* self, llm_reply& reply) {
  auto& st = self->state;
  st.turn.reply = reply.content;
  st.turn.prompt_tokens = reply.prompt_tokens;
  st.turn.completion_tokens = reply.completion_tokens;
  if (!reply.content.empty()) {
    st.last_reply = reply.content;
  }
  st.window_tokens = uint64_t{reply.prompt_tokens} + reply.completion_tokens;
  st.chars_since = 0;
  add_message(st, "assistant", reply.content);
  st.chars_since = 0;  // the reply is in completion_tokens already
  st.blocks = rlm::repl_blocks(reply.content);
  st.turn.blocks = st.blocks;
  st.turn.complete = false;
  st.turn_failed = false;
  // The reply is stored before its code runs: a restart replays it.
  commit_turn(self, [=] {
    if (!self->state.done) {  // cancelled meanwhile
      run_block(self, 0, {});
    }
  }, [=](caf::error& e) {
    finish(self, "failed", self->state.last_reply,
           "the turn could not be stored: " + describe(e).message);
  });
}

// No turns left: one last request for the answer.
void last_answer(run_actor* self) {
  auto& st = self->state;
  add_message(st, "user",
              "You have used all " + std::to_string(st.max_iterations)
                + " turns. Give your final answer now, from what you have found, as "
                  "FINAL(your answer) at the start of a line.");
  ask_root(self, st.messages, [=](llm_reply& reply) {
    auto fin = rlm::find_final(reply.content);
    if (fin.kind == rlm::final_answer::text) {
      return finish(self, "max_iterations", fin.value);
    }
    if (fin.kind == rlm::final_answer::variable && identifier(fin.value)) {
      auto whole = reply.content;
      return execute(self, "print(str(" + fin.value + "), end='')", [=](repl_result& v) {
        finish(self, "max_iterations", v.ok ? v.stdout_text : whole);
      });
    }
    finish(self, "max_iterations", reply.content);
  });
}

// The note that opens turn `index`: with the feedback of the turn before,
// or alone.
void add_turn_note(run_state& st, uint32_t index) {
  auto note = "Turn " + std::to_string(index) + "/" + std::to_string(st.max_iterations) + ".";
  if (index == 1) {
    note += " You have not looked at the context yet: examine it with code before answering.";
  }
  if (index > 1 && !st.messages.empty() && st.messages.back().role == "user") {
    st.messages.back().content += "\n" + note;
    st.history.back().content += "\n" + note;
    st.chars_since += note.size() + 1;
  } else {
    add_message(st, "user", std::move(note));
  }
}

// -- compaction -----------------------------------------------------------------

constexpr const char* compact_request =
  "Your history is about to outgrow your context window. Summarize your progress so far "
  "for yourself: what you have done, every intermediate result you will need (exact "
  "values, variable names in the REPL), and what you will do next. Write only the "
  "summary; no code.";

// The messages after a compaction: the instructions and the question, the
// summary, a note that the rest is in the REPL.
void apply_compaction(run_state& st, const std::string& summary) {
  st.history.push_back(chat_message{"user", compact_request});
  st.history.push_back(chat_message{"assistant", summary});
  st.messages.resize(std::min<std::size_t>(2, st.messages.size()));
  st.messages.push_back(chat_message{"assistant", summary});
  std::string note = "Your history was compacted into the summary above. The full history "
                     "is in the REPL variable `history`, a list of {'role', 'content'} "
                     "dicts. Go on from where you were.";
  st.history.push_back(chat_message{"user", note});
  st.messages.push_back(chat_message{"user", std::move(note)});
  st.window_tokens = 0;
  st.chars_since = 0;
  for (auto& m : st.messages) {
    st.chars_since += m.content.size();
  }
  ++st.out.compactions;
}

// Puts the full history into the REPL as `history`.
template <class Then>
void sync_history(run_actor* self, Then then) {
  auto& st = self->state;
  json::writer w;
  w.begin_array();
  for (auto& m : st.history) {
    w.begin_object().key("role").value(m.role).key("content").value(m.content).end_object();
  }
  w.end_array();
  execute(
    self,
    "import json as _kw_json, os as _kw_os\n"
    "with open('history.json', encoding='utf-8') as _kw_f:\n"
    "    history = _kw_json.load(_kw_f)\n"
    "_kw_os.remove('history.json')\ndel _kw_f, _kw_json, _kw_os\n",
    [=](repl_result& r) mutable {
      if (!r.ok) {
        return finish(self, "failed", self->state.last_reply,
                      "the history could not be put into the REPL: " + r.error);
      }
      then();
    },
    "history.json", w.take());
}

// When the next root call would pass the share of the window, the model
// summarizes first.
template <class Then>
void maybe_compact(run_actor* self, Then then) {
  auto& st = self->state;
  if (st.opts.compact_at <= 0 || st.opts.context_window == 0) {
    return then();
  }
  auto estimate = st.window_tokens + st.chars_since / 4;
  if (static_cast<double>(estimate)
      < st.opts.compact_at * static_cast<double>(st.opts.context_window)) {
    return then();
  }
  auto msgs = st.messages;
  msgs.push_back(chat_message{"user", compact_request});
  st.log->info("rlm compacting run_id={} estimated_tokens={} window={}", st.opts.run_id,
               estimate, st.opts.context_window);
  ask_root(self, std::move(msgs), [=](llm_reply& reply) mutable {
    auto& st = self->state;
    st.summary = reply.content;
    st.summary_prompt_tokens = reply.prompt_tokens;
    st.summary_completion_tokens = reply.completion_tokens;
    apply_compaction(st, reply.content);
    sync_history(self, then);
  });
}

void begin_turn(run_actor* self) {
  auto& st = self->state;
  ++st.out.turns;
  st.turn = rlm_turn{};
  st.turn.index = st.out.turns;
  st.turn.summary = std::move(st.summary);
  st.turn.summary_prompt_tokens = st.summary_prompt_tokens;
  st.turn.summary_completion_tokens = st.summary_completion_tokens;
  st.summary.clear();
  st.summary_prompt_tokens = st.summary_completion_tokens = 0;
  st.turn_stored = false;
  st.next_seq = 0;
  st.seen.clear();
  add_turn_note(st, st.turn.index);
  auto asked = clock_type::now();
  ask_root(self, st.messages, [=](llm_reply& reply) {
    self->state.turn.model_us = std::chrono::duration_cast<std::chrono::microseconds>(
                                  clock_type::now() - asked).count();
    on_reply(self, reply);
  });
}

void next_turn(run_actor* self) {
  auto& st = self->state;
  if (st.req.timeout_ms > 0 && time_left(st) == milliseconds{0}) {
    return finish(self, "timeout", st.last_reply,
                  "the run passed its timeout of " + std::to_string(st.req.timeout_ms) + " ms");
  }
  if (st.out.turns >= st.max_iterations) {
    return last_answer(self);
  }
  maybe_compact(self, [=] { begin_turn(self); });
}

// -- resume ---------------------------------------------------------------------

void replay(run_actor* self, std::size_t k);

// Re-runs a committed turn's code for its effect on the REPL's state; the
// outputs were fed back already and are taken from the record.
void replay_blocks(run_actor* self, std::size_t k, std::size_t b) {
  auto& st = self->state;
  auto& t = st.stored[k];
  if (b == t.blocks.size()) {
    // A run that ended without its record says so (FINAL has no feedback).
    if (!t.feedback.empty()) {
      add_message(st, "user", t.feedback);
    }
    st.out.trajectory.push_back(t);
    ++st.out.replayed_turns;
    st.turn_failed = t.code_failed;
    if (k + 1 < st.stored.size()) {
      st.failing_turns = t.code_failed ? st.failing_turns + 1 : 0;
    }
    return replay(self, k + 1);
  }
  // A block that lost the interpreter the first time is not run again (it
  // would time out again): the context is loaded as it was then.
  if (std::find(t.restarts.begin(), t.restarts.end(), b) != t.restarts.end()) {
    return reload(self, [=] { replay_blocks(self, k, b + 1); });
  }
  execute(self, t.blocks[b], [=](repl_result& r) {
    if (r.state_lost) {
      self->state.log->warn("rlm replay lost the interpreter run_id={} turn={} block={}",
                            self->state.opts.run_id, self->state.stored[k].index, b);
      return reload(self, [=] { replay_blocks(self, k, b + 1); });
    }
    replay_blocks(self, k, b + 1);
  });
}

void replay_turn(run_actor* self, std::size_t k) {
  auto& st = self->state;
  auto& t = st.stored[k];
  st.out.turns = t.index;
  st.turn = t;
  st.turn_stored = t.complete;
  st.next_seq = st.last_seq.count(t.index) ? st.last_seq[t.index] + 1 : 0;
  st.seen.clear();
  add_turn_note(st, t.index);
  add_message(st, "assistant", t.reply);
  st.window_tokens = uint64_t{t.prompt_tokens} + t.completion_tokens;
  st.chars_since = 0;
  if (!t.reply.empty()) {
    st.last_reply = t.reply;
  }
  if (t.complete) {
    return replay_blocks(self, k, 0);
  }
  // The turn the node stopped in: its code runs now, as it would have.
  st.log->info("rlm run resumes run_id={} turn={} replayed_turns={}", st.opts.run_id, t.index,
               st.out.replayed_turns);
  st.blocks = t.blocks;
  st.turn.outputs.clear();
  st.turn_failed = false;
  run_block(self, 0, {});
}

void replay(run_actor* self, std::size_t k) {
  auto& st = self->state;
  if (k == st.stored.size()) {
    // Every committed turn was complete: the last may have ended the run.
    st.log->info("rlm run resumes run_id={} after_turn={}", st.opts.run_id, st.out.turns);
    return check_final(self, {}, true);
  }
  auto& t = st.stored[k];
  if (t.summary.empty()) {
    return replay_turn(self, k);
  }
  apply_compaction(st, t.summary);
  sync_history(self, [=] { replay_turn(self, k); });
}

// Reads what was committed for this run: its turns, and the sub-call
// answers; the totals are rebuilt from them.
std::string read_log(run_actor* self) {
  auto& st = self->state;
  if (!st.opts.env || st.opts.run_id.empty()) {
    return {};
  }
  std::string error;
  auto prefix = store::items_of(st.opts.run_id);
  st.opts.env->scan("rlm_turns", prefix, "", [&](std::string_view, std::string_view v) {
    rlm_turn t;
    if (store::decode(v, t)) {
      st.out.prompt_tokens += uint64_t{t.prompt_tokens} + t.summary_prompt_tokens;
      st.out.completion_tokens += uint64_t{t.completion_tokens} + t.summary_completion_tokens;
      st.stored.push_back(std::move(t));
    }
    return true;
  }, error);
  st.opts.env->scan("rlm_calls", prefix, "", [&](std::string_view, std::string_view v) {
    rlm_sub_call c;
    if (store::decode(v, c)) {
      ++st.out.sub_calls;
      st.out.sub_prompt_tokens += c.prompt_tokens;
      st.out.sub_completion_tokens += c.completion_tokens;
      auto& last = st.last_seq[c.turn];
      last = std::max(last, c.seq);
      st.logged.emplace(std::make_pair(c.turn, c.prompt_hash), std::move(c));
    }
    return true;
  }, error);
  if (!error.empty()) {
    return error;
  }
  // A turn that was stored incomplete counts its calls from the log.
  if (!st.stored.empty() && !st.stored.back().complete) {
    auto& t = st.stored.back();
    for (auto& [key, c] : st.logged) {
      if (c.turn == t.index) {
        ++t.sub_calls;
        t.sub_prompt_tokens += c.prompt_tokens;
        t.sub_completion_tokens += c.completion_tokens;
      }
    }
  }
  if (!st.stored.empty()) {
    // Time spent before the stop counts against the run's timeout.
    st.started -= std::chrono::microseconds{st.stored.back().duration_us};
  }
  return {};
}

// -- start ----------------------------------------------------------------------

// Loads the context into the REPL; prints what the root model is told.
// Bytes of a context file that are not UTF-8 become U+FFFD (inline and
// uploaded contexts are checked at the gateway).
std::string load_code(bool json) {
  return std::string{"import json as _kw_json, os as _kw_os\n"
                     "with open('context.txt', encoding='utf-8', errors='replace') as _kw_f:\n"}
         + (json ? "    context = _kw_json.load(_kw_f)\n" : "    context = _kw_f.read()\n")
         + "_kw_n = _kw_os.path.getsize('context.txt') if "
           "not isinstance(context, str) else len(context)\n"
           "_kw_os.remove('context.txt')\n"
           "context_0 = context\n"
           "answer = {'content': '', 'ready': False}\n"
           "history = []\n"
           "def _kw_len(v):\n"
           "    return len(v) if isinstance(v, str) else len(_kw_json.dumps(v))\n"
           "if isinstance(context, list):\n"
           "    _kw_m = {'type': 'list', 'items': len(context), "
           "'lengths': [_kw_len(v) for v in context[:100]]}\n"
           "elif isinstance(context, dict):\n"
           "    _kw_m = {'type': 'dict', 'items': len(context), "
           "'names': [str(k) for k in list(context)[:20]]}\n"
           "else:\n"
           "    _kw_m = {'type': type(context).__name__}\n"
           "_kw_m['chars'] = _kw_n\n"
           "print(_kw_json.dumps(_kw_m))\n"
           "del _kw_f, _kw_n, _kw_m, _kw_len, _kw_json, _kw_os\n";
}

template <class Then>
void reload(run_actor* self, Then then) {
  auto& st = self->state;
  bool json = st.req.context_kind == "json";
  execute(
    self, load_code(json),
    [=](repl_result& r) mutable {
      if (!r.ok) {
        return finish(self, "failed", self->state.last_reply,
                      "loading the context again failed: " + r.error);
      }
      if (self->state.out.compactions == 0) {
        return then();
      }
      sync_history(self, then);
    },
    "context.txt", st.inline_context, st.req.context_file);
}

caf::result<rlm_outcome> start(run_actor* self, rlm_start& req) {
  auto& st = self->state;
  if (auto err = validate(req)) {
    return err;
  }
  st.started = clock_type::now();
  // Moved: an inline context may be large.
  st.req = std::move(req);
  auto& r = st.req;
  st.model = r.model.empty() ? st.opts.default_model : r.model;
  st.max_iterations = r.max_iterations > 0 ? r.max_iterations : st.opts.max_iterations;
  st.max_depth = r.max_depth > 0 ? r.max_depth : std::max<uint32_t>(1, st.opts.max_depth);
  std::mt19937_64 rng{std::random_device{}()};
  st.session = st.opts.session.empty() ? "rlm-" + std::to_string(rng()) : st.opts.session;
  if (auto error = read_log(self); !error.empty()) {
    // Starting over would overwrite what was committed.
    return make_error(errc::store_failure, "the run's log could not be read: " + error);
  }
  st.rp = self->make_response_promise();
  st.messages.push_back(chat_message{"system", st.opts.system_prompt});
  st.history.push_back(st.messages.back());
  bool json = r.context_kind == "json";
  st.log->info("rlm run started run_id={} depth={} model={} context_bytes={} "
               "max_iterations={} committed_turns={}",
               st.opts.run_id, r.depth, st.model, r.context.size(), st.max_iterations,
               st.stored.size());
  auto data = std::move(st.req.context);
  st.req.context.clear();
  if (st.req.context_file.empty()) {
    st.inline_context = data;
  }
  auto source = st.req.context_file;
  auto question = r.question;
  execute(
    self, load_code(json),
    [=](repl_result& r) {
      auto& st = self->state;
      if (!r.ok) {
        return finish(self, "failed", "", "loading the context failed: " + r.error);
      }
      add_message(st, "user", "Question: " + question + "\n\n" + describe_context(r.stdout_text)
                                + " It is the variable `context` in the REPL.");
      if (st.stored.empty()) {
        return next_turn(self);
      }
      replay(self, 0);
    },
    "context.txt", std::move(data), std::move(source),
    r.depth > 0 ? st.opts.child_start_timeout : std::chrono::milliseconds{0});
  return caf::delegated<rlm_outcome>{};
}

caf::behavior run(run_actor* self, rlm_options opts) {
  self->state.opts = std::move(opts);
  self->set_exit_handler([=](caf::exit_msg& msg) {
    auto& st = self->state;
    // A linked child: one that ended normally has answered; one that died
    // answers its rlm_query with an error.
    if (st.linked.erase(msg.source) > 0) {
      auto child = st.child_calls.find(msg.source);
      if (child != st.child_calls.end() && msg.reason) {
        auto p = std::move(child->second);
        st.child_calls.erase(child);
        complete(self, std::move(p), false,
                 "Error: RLM query failed - the child run died: " + caf::to_string(msg.reason),
                 0, 0);
      }
      return;
    }
    // Stopped from outside (the node shuts down, the manager died): the
    // children stop too, and the interpreter is freed. Nothing is recorded
    // as ended: the run resumes from its log at the next start.
    for (auto& [id, c] : st.children) {
      self->send_exit(c, msg.reason);
    }
    if (!st.session.empty()) {
      caf::anon_send(st.opts.repl, end_repl_session{st.session, true});
    }
    self->quit(msg.reason);
  });
  return {
    [=](cancel_atom) {
      if (self->state.rp.pending()) {
        finish(self, "cancelled", self->state.last_reply, "the run was cancelled");
      }
    },
    [=](repl_sub_call& sub) { return on_sub_call(self, sub); },
    [=](rlm_start& req) -> caf::result<rlm_outcome> {
      auto result = start(self, req);
      // A refused start ends the actor too: it serves one run.
      if (result.flag == caf::rt_error) {
        auto err = result.err;
        auto rp = self->make_response_promise();
        rp.deliver(err);
        self->quit();
        return caf::delegated<rlm_outcome>{};
      }
      return result;
    },
  };
}

}  // namespace

caf::error validate(const rlm_start& req) {
  if (req.question.find_first_not_of(" \t\r\n") == std::string::npos) {
    return make_error(errc::invalid_argument, "question is empty; expected the question to "
                                              "answer about the context", "question");
  }
  if (req.context_kind != "text" && req.context_kind != "json") {
    return make_error(errc::invalid_argument, "context_kind must be text or json, got \""
                                                + req.context_kind + "\"", "context_kind");
  }
  if (!req.context_file.empty() && !req.context.empty()) {
    return make_error(errc::invalid_argument, "give context or context_file, not both",
                      "context_file");
  }
  // A file's JSON is checked when the REPL loads it: reading a gigabyte
  // twice to refuse early is not worth it.
  if (req.context_kind == "json" && req.context_file.empty()) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    auto err = parser.parse(req.context).get(doc);
    if (err != simdjson::SUCCESS) {
      return make_error(errc::invalid_argument,
                        std::string{"context is not valid JSON ("} + simdjson::error_message(err)
                          + "); expected JSON because context_kind is json",
                        "context");
    }
  }
  return caf::error{};
}

uint64_t sub_call_hash(const std::string& kind, const std::string& model,
                       const std::string& context, const std::string& prompt) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](const std::string& s) {
    for (unsigned char c : s) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
    // A separator no text byte equals, so ("ab","c") and ("a","bc") differ.
    h ^= 0x1ff;
    h *= 0x100000001b3ull;
  };
  mix(kind);
  mix(model);
  mix(context);
  mix(prompt);
  return h;
}

caf::actor spawn_rlm_run(caf::actor_system& sys, rlm_options options) {
  return sys.spawn(run, std::move(options));
}

}  // namespace kowalski
