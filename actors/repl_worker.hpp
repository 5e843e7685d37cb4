// A REPL worker: one actor per sandboxed interpreter process, running one
// execution at a time, with its output capped and its time limited.
#pragma once

#include "runtime/process/repl_process.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

namespace kowalski {

struct repl_worker_options {
  std::string id;  ///< e.g. python3-3; with the node's pid it names cgroups and directories
  std::string language = "python3";
  /// The interpreter and its arguments, as the sandbox sees them.
  std::vector<std::string> command;
  process::sandbox_mode sandbox = process::sandbox_mode::bubblewrap;
  std::string bubblewrap = "/usr/bin/bwrap";
  process::resource_limits limits;
  std::vector<std::string> read_only;  ///< extra host paths the sandbox shows
  std::size_t output_cap = 20'000;     ///< characters kept per stream
  std::chrono::milliseconds default_timeout{30'000};
  std::chrono::milliseconds max_timeout{600'000};
  std::string temp_root = "/tmp";  ///< where its private directory is made
  /// Answers llm_call_batch for llm_query in code (the batch coordinator);
  /// without it sub-calls answer "Error: ...".
  caf::actor llm;
  std::string default_model;
  /// Sub-calls of one llm_query_batched that run at once.
  uint32_t llm_concurrency = 16;
};

/// Spawns a worker and its interpreter.
///
/// Messages:
/// - repl_execute -> repl_result. Executions queue and run one at a time.
///   A timeout kills the interpreter's whole process tree and starts a fresh
///   one; that result, and a crash's, say state_lost. Output beyond the cap
///   is counted, not kept. Time spent waiting for llm_query answers does not
///   count against the timeout.
/// - (reset_atom) -> bool: replaces the interpreter with a fresh one (a new
///   private directory too), after what is queued before it.
/// - (stats_atom) -> (executions, restarts) as two uint64_t.
/// The worker stops with an error if its interpreter cannot be started.
caf::actor spawn_repl_worker(caf::actor_system& sys, repl_worker_options options);

}  // namespace kowalski
