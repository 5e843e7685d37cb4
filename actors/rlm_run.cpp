// RLM run: root-model turns through the batch coordinator, code blocks in a
// Python REPL session, termination by answer, FINAL or FINAL_VAR, limits.
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
#include <caf/stateful_actor.hpp>

#include <simdjson.h>

#include <cctype>
#include <random>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct run_state {
  rlm_options opts;
  rlm_start req;
  caf::response_promise rp;
  std::string session;
  std::string model;
  std::vector<chat_message> messages;
  rlm_outcome out;
  uint32_t max_iterations = 30;
  clock_type::time_point started;
  uint32_t failing_turns = 0;  // in a row
  std::string last_reply;      // the best partial answer when a limit hits
  bool done = false;  // answered; later replies are dropped
  rlm_turn turn;
  std::vector<std::string> blocks;
  bool turn_failed = false;
  std::shared_ptr<spdlog::logger> log = logging::get("rlm");
  static inline const char* name = "kowalski.rlm_run";
};

using run_actor = caf::stateful_actor<run_state>;

void next_turn(run_actor* self);

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

// What the root model is told about the context instead of the context.
std::string describe_context(const rlm_start& req, simdjson::dom::element* doc) {
  std::size_t chars = 0;
  for (unsigned char c : req.context) {
    chars += (c & 0xC0) != 0x80;
  }
  if (doc == nullptr) {
    return "Your context is a str of " + std::to_string(chars) + " characters.";
  }
  if (doc->is_array()) {
    auto arr = simdjson::dom::array(*doc);
    std::string lengths;
    std::size_t shown = 0;
    for (auto item : arr) {
      if (shown++ == 100) {
        lengths += ", ...";
        break;
      }
      lengths += (lengths.empty() ? "" : ", ") + std::to_string(simdjson::minify(item).size());
    }
    return "Your context is a list of " + std::to_string(arr.size()) + " items ("
           + std::to_string(chars) + " characters of JSON in all); their JSON lengths: "
           + lengths + ".";
  }
  if (doc->is_object()) {
    return "Your context is a dict of " + std::to_string(simdjson::dom::object(*doc).size())
           + " keys (" + std::to_string(chars) + " characters of JSON in all).";
  }
  return "Your context is a JSON value of " + std::to_string(chars) + " characters.";
}

void deliver(run_actor* self) {
  auto& st = self->state;
  st.out.duration_ms = std::chrono::duration_cast<milliseconds>(clock_type::now() - st.started)
                         .count();
  st.log->info("rlm run ended reason={} turns={} prompt_tokens={} completion_tokens={} "
               "answer_bytes={} duration_ms={}",
               st.out.reason, st.out.turns, st.out.prompt_tokens, st.out.completion_tokens,
               st.out.answer.size(), st.out.duration_ms);
  self->request(st.opts.repl, std::chrono::seconds(10), end_repl_session{st.session})
    .then([](bool) {}, [](caf::error&) {});
  st.rp.deliver(st.out);
  self->quit();
}

// Ends the run; the turn that ended it is stored like the others first.
void finish(run_actor* self, std::string reason, std::string answer, std::string error = {}) {
  auto& st = self->state;
  if (st.done) {
    return;
  }
  st.done = true;
  st.out.reason = std::move(reason);
  st.out.answer = std::move(answer);
  st.out.error = std::move(error);
  bool unrecorded = st.turn.index > 0 && !st.turn.reply.empty()
                    && (st.out.trajectory.empty()
                        || st.out.trajectory.back().index != st.turn.index);
  if (!unrecorded) {
    return deliver(self);
  }
  st.turn.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(
                          clock_type::now() - st.started).count();
  st.out.trajectory.push_back(st.turn);
  if (!st.opts.writer) {
    return deliver(self);
  }
  write_batch wb;
  wb.ops.push_back(kv_op{kv_op::put, "rlm_turns", store::item_key(st.opts.run_id, st.turn.index),
                         store::encode(st.turn)});
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then([=](uint64_t) { deliver(self); },
          [=](caf::error& e) {
            self->state.out.error += (self->state.out.error.empty() ? "" : "; ")
                                     + std::string{"the last turn could not be stored: "}
                                     + describe(e).message;
            deliver(self);
          });
}

// Runs `code` in the run's session; `then` gets the result, errors end the run.
template <class Then>
void execute(run_actor* self, std::string code, Then then, std::string file_name = {},
             std::string file_data = {}) {
  auto& st = self->state;
  repl_execute cmd{"python3", std::move(code), st.session,
                   static_cast<uint64_t>(st.opts.repl_timeout.count()), std::move(file_name),
                   std::move(file_data)};
  auto wait = st.opts.repl_timeout + std::chrono::minutes(2);
  self->request(st.opts.repl, wait, std::move(cmd))
    .then([=](repl_result& r) mutable { then(r); },
          [=](caf::error& e) {
            finish(self, "failed", self->state.last_reply,
                   "the REPL could not run code: " + describe(e).message);
          });
}

// Asks the root model with the history so far.
template <class Then>
void ask_root(run_actor* self, Then then) {
  auto& st = self->state;
  llm_call call;
  call.request.model = st.model;
  call.request.messages = st.messages;
  call.request.timeout_ms = static_cast<uint64_t>(st.opts.turn_timeout.count());
  self->request(st.opts.llm, st.opts.turn_timeout * 4 + std::chrono::minutes(1), call)
    .then(
      [=](llm_reply& reply) mutable {
        auto& st = self->state;
        st.out.prompt_tokens += reply.prompt_tokens;
        st.out.completion_tokens += reply.completion_tokens;
        st.turn.prompt_tokens = reply.prompt_tokens;
        st.turn.completion_tokens = reply.completion_tokens;
        if (!reply.content.empty()) {
          st.last_reply = reply.content;
        }
        then(reply);
      },
      [=](caf::error& e) {
        finish(self, "failed", self->state.last_reply,
               "the root model failed: " + describe(e).message);
      });
}

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
    text += "\n(The interpreter was restarted: every variable is gone, `context` too; "
            "the run cannot go on without it.)";
  }
  if (text.empty()) {
    text = "(no output)";
  }
  return rlm::cut(text, cap, dropped);
}

void check_limits(run_actor* self);

void end_turn(run_actor* self, std::string feedback) {
  auto& st = self->state;
  st.messages.push_back(chat_message{"user", std::move(feedback)});
  st.turn.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(
                          clock_type::now() - st.started).count();
  st.out.trajectory.push_back(st.turn);
  if (!st.opts.writer) {
    return check_limits(self);
  }
  // The turn is stored before the run goes on.
  write_batch wb;
  wb.ops.push_back(kv_op{kv_op::put, "rlm_turns", store::item_key(st.opts.run_id, st.turn.index),
                         store::encode(st.turn)});
  self->request(st.opts.writer, std::chrono::minutes(2), std::move(wb))
    .then([=](uint64_t) { check_limits(self); },
          [=](caf::error& e) {
            finish(self, "failed", self->state.last_reply,
                   "the turn could not be stored: " + describe(e).message);
          });
}

void check_limits(run_actor* self) {
  auto& st = self->state;
  st.failing_turns = st.turn_failed ? st.failing_turns + 1 : 0;
  auto used = st.out.prompt_tokens + st.out.completion_tokens;
  if (st.req.max_tokens > 0 && used >= st.req.max_tokens) {
    return finish(self, "token_budget", st.last_reply,
                  "the run used " + std::to_string(used) + " tokens of its budget of "
                    + std::to_string(st.req.max_tokens));
  }
  if (st.opts.max_errors > 0 && st.failing_turns >= st.opts.max_errors) {
    return finish(self, "errors", st.last_reply,
                  std::to_string(st.failing_turns) + " turns in a row had failing code");
  }
  next_turn(self);
}

// After the blocks: the answer contract first, then FINAL_VAR, then FINAL.
void check_final(run_actor* self, std::string joined_outputs) {
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
    if (fin.kind == rlm::final_answer::variable) {
      if (!identifier(fin.value)) {
        return end_turn(self, joined_outputs + "FINAL_VAR(" + fin.value
                                + ") does not name a variable; the run goes on.");
      }
      auto name = fin.value;
      return execute(self, "print(str(" + name + "), end='')", [=](repl_result& v) {
        if (v.ok) {
          return finish(self, "final_var", v.stdout_text);
        }
        end_turn(self, joined_outputs + "FINAL_VAR(" + name + "): the REPL has no variable "
                         + name + "; the run goes on. Set it, then answer again.");
      });
    }
    end_turn(self, joined_outputs);
  });
}

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
    st.turn_failed = st.turn_failed || !r.ok;
    auto label = st.blocks.size() > 1 ? "REPL output (block " + std::to_string(k + 1) + "):\n"
                                      : std::string{"REPL output:\n"};
    run_block(self, k + 1, joined + label + text + "\n\n");
  });
}

void on_reply(run_actor* self, llm_reply& reply) {
  auto& st = self->state;
  st.turn.reply = reply.content;
  st.messages.push_back(chat_message{"assistant", reply.content});
  st.blocks = rlm::repl_blocks(reply.content);
  st.turn.blocks = st.blocks;
  st.turn_failed = false;
  run_block(self, 0, {});
}

// No turns left: one last request for the answer.
void last_answer(run_actor* self) {
  auto& st = self->state;
  st.messages.push_back(chat_message{
    "user", "You have used all " + std::to_string(st.max_iterations)
              + " turns. Give your final answer now, from what you have found, as "
                "FINAL(your answer) at the start of a line."});
  ask_root(self, [=](llm_reply& reply) {
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

void next_turn(run_actor* self) {
  auto& st = self->state;
  if (st.req.timeout_ms > 0
      && clock_type::now() - st.started >= milliseconds{st.req.timeout_ms}) {
    return finish(self, "timeout", st.last_reply,
                  "the run passed its timeout of " + std::to_string(st.req.timeout_ms) + " ms");
  }
  if (st.out.turns >= st.max_iterations) {
    return last_answer(self);
  }
  ++st.out.turns;
  st.turn = rlm_turn{};
  st.turn.index = st.out.turns;
  auto note = "Turn " + std::to_string(st.out.turns) + "/" + std::to_string(st.max_iterations)
              + ".";
  if (st.out.turns == 1) {
    note += " You have not looked at the context yet: examine it with code before answering.";
  }
  // The turn note goes with the feedback of the turn before, or alone.
  if (!st.messages.empty() && st.messages.back().role == "user" && st.out.turns > 1) {
    st.messages.back().content += "\n" + note;
  } else {
    st.messages.push_back(chat_message{"user", note});
  }
  ask_root(self, [=](llm_reply& reply) { on_reply(self, reply); });
}

caf::result<rlm_outcome> start(run_actor* self, rlm_start& req) {
  auto& st = self->state;
  if (auto err = validate(req)) {
    return err;
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  bool json = req.context_kind == "json";
  if (json && parser.parse(req.context).get(doc) != simdjson::SUCCESS) {
    return make_error(errc::invalid_argument, "context is not valid JSON", "context");
  }
  st.started = clock_type::now();
  st.req = req;
  st.model = req.model.empty() ? st.opts.default_model : req.model;
  st.max_iterations = req.max_iterations > 0 ? req.max_iterations : st.opts.max_iterations;
  std::mt19937_64 rng{std::random_device{}()};
  st.session = "rlm-" + std::to_string(rng());
  st.rp = self->make_response_promise();
  st.messages.push_back(chat_message{"system", st.opts.system_prompt});
  st.messages.push_back(chat_message{
    "user", "Question: " + req.question + "\n\n" + describe_context(req, json ? &doc : nullptr)
              + " It is the variable `context` in the REPL."});

  auto load = std::string{"with open('context.txt', encoding='utf-8') as _kw_f:\n"}
              + (json ? "    import json as _kw_json\n    context = _kw_json.load(_kw_f)\n"
                      : "    context = _kw_f.read()\n")
              + "context_0 = context\nanswer = {'content': '', 'ready': False}\ndel _kw_f\n";
  st.log->info("rlm run started session={} model={} context_bytes={} max_iterations={}",
               st.session, st.model, req.context.size(), st.max_iterations);
  auto data = std::move(st.req.context);
  st.req.context.clear();
  execute(
    self, load,
    [=](repl_result& r) {
      if (!r.ok) {
        return finish(self, "failed", "", "loading the context failed: " + r.error);
      }
      next_turn(self);
    },
    "context.txt", std::move(data));
  return caf::delegated<rlm_outcome>{};
}

caf::behavior run(run_actor* self, rlm_options opts) {
  self->state.opts = std::move(opts);
  return {
    [=](cancel_atom) {
      if (self->state.rp.pending()) {
        finish(self, "cancelled", self->state.last_reply, "the run was cancelled");
      }
    },
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
  if (req.context_kind == "json") {
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

caf::actor spawn_rlm_run(caf::actor_system& sys, rlm_options options) {
  return sys.spawn(run, std::move(options));
}

}  // namespace kowalski
