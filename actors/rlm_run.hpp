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
#include <string>

namespace kowalski {

struct rlm_start;

struct rlm_options {
  std::string system_prompt;  ///< the root model's instructions
  std::string default_model;
  uint32_t max_iterations = 30;
  std::chrono::milliseconds turn_timeout{300'000};  ///< one root-model call
  std::chrono::milliseconds repl_timeout{60'000};   ///< one code block
  uint32_t max_errors = 5;  ///< consecutive turns whose code failed; 0 = no limit
  std::size_t output_cap = 20'000;  ///< characters of feedback per block
  caf::actor llm;   ///< answers llm_call (the batch coordinator)
  caf::actor repl;  ///< answers repl_execute and end_repl_session
  /// When set, each turn is committed (db rlm_turns, key run_id + turn
  /// index) before the next one starts.
  caf::actor writer;
  std::string run_id;
};

/// Spawns a run actor. It takes one rlm_start and answers it with an
/// rlm_outcome when the run ends, then stops; its REPL session ends with it.
/// (cancel_atom) ends the run at once with reason cancelled.
/// Errors only for bad input: invalid_argument (empty question, unknown
/// context kind, context that is not valid JSON when kind is json).
///
/// Limitation: a run whose node stops is not resumed (its turns are stored,
/// but the REPL state is not rebuilt from them yet); rlm_query (child runs)
/// and compaction of a long history are not there yet.
caf::actor spawn_rlm_run(caf::actor_system& sys, rlm_options options);

/// The bad-input checks of a run, for callers that refuse before spawning.
caf::error validate(const rlm_start& req);

}  // namespace kowalski
