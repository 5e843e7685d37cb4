// One Recursive Language Model run: the root model writes code against a
// context held in a Python REPL, turn after turn, until it gives an answer
// or a limit ends the run.
#pragma once

#include <caf/actor.hpp>
#include <caf/error.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace kowalski {

struct rlm_start;

namespace store {
class environment;
}

struct rlm_options {
  std::string system_prompt;  ///< the root model's instructions
  std::string default_model;
  uint32_t max_iterations = 30;
  uint32_t max_depth = 1;  ///< default of rlm_start::max_depth
  std::chrono::milliseconds turn_timeout{300'000};  ///< one root-model call
  std::chrono::milliseconds repl_timeout{60'000};   ///< one code block
  uint32_t max_errors = 5;  ///< consecutive turns whose code failed; 0 = no limit
  std::size_t output_cap = 20'000;  ///< characters of feedback per block
  uint32_t sub_call_concurrency = 16;  ///< llm_query calls of one run at once
  uint32_t child_concurrency = 4;      ///< child runs of one run at once
  /// How long a child run waits for an interpreter of its own. Parents
  /// keep theirs while they wait on children, so a pool full of waiting
  /// parents would otherwise never free one: the child fails instead, and
  /// the parent's code gets an "Error: ..." string.
  std::chrono::milliseconds child_start_timeout{60'000};
  /// The root model's context window in tokens, and the share of it at
  /// which the history is compacted; 0 = never compact.
  uint64_t context_window = 128'000;
  double compact_at = 0.85;
  caf::actor llm;   ///< answers llm_call (the batch coordinator)
  caf::actor repl;  ///< answers repl_execute and end_repl_session
  /// When set, each turn is committed (db rlm_turns, key run_id + turn
  /// index) as soon as the model's reply arrives and again when its code
  /// has run, and every sub-call answer (db rlm_calls) before the code
  /// gets it.
  caf::actor writer;
  /// When set, the run first reads what `writer` committed for run_id and
  /// resumes from it: the committed code is replayed in a fresh REPL with
  /// sub-call answers from the log, then the run goes on.
  std::shared_ptr<store::environment> env;
  /// When set, gets (committed_atom, run_id, turn index) after each commit.
  caf::actor progress;
  std::string run_id;
  /// The REPL session's name; empty = a random one. The manager names it,
  /// so that it can end the session of a run that died.
  std::string session;
};

/// Spawns a run actor. It takes one rlm_start and answers it with an
/// rlm_outcome when the run ends, then stops; its REPL session ends with it,
/// and so do its children. (cancel_atom) ends the run and its children at
/// once with reason cancelled.
/// Errors only for bad input: invalid_argument (empty question, unknown
/// context kind, context that is not valid JSON when kind is json).
///
/// Replay is exact only for code that is deterministic given its sub-call
/// answers: code that draws random numbers or reads the clock may ask other
/// questions on replay, which are then new calls.
caf::actor spawn_rlm_run(caf::actor_system& sys, rlm_options options);

/// The bad-input checks of a run, for callers that refuse before spawning.
caf::error validate(const rlm_start& req);

/// The 64-bit FNV-1a hash the sub-call log keys answers by.
uint64_t sub_call_hash(const std::string& kind, const std::string& model,
                       const std::string& context, const std::string& prompt);

}  // namespace kowalski
