// A pool of REPL workers for one language: warm interpreters between min
// and max, sessions pinned to one worker, idle ones reaped.
#pragma once

#include "actors/repl_worker.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <string>

namespace kowalski {

struct repl_pool_options {
  std::string language = "python3";
  repl_worker_options worker;  ///< the template of every worker; ids are assigned
  uint32_t min_workers = 1;    ///< kept warm
  uint32_t max_workers = 8;
  std::chrono::milliseconds idle_timeout{60'000};   ///< reaps idle workers above min
  std::chrono::milliseconds session_idle{600'000};  ///< ends untouched sessions
  std::size_t queue_limit = 1'000;                  ///< executions waiting for a worker
  /// False when the language cannot run here; executions then fail with
  /// errc::unavailable naming `detail`.
  bool available = true;
  std::string detail;
};

/// Spawns a pool. Messages:
/// - repl_execute -> repl_result. With a session, the execution runs on the
///   session's worker (after its earlier ones); a new session takes a
///   worker of its own, with a fresh interpreter, until it ends. Without,
///   any free worker runs it in a fresh namespace. Errors: unavailable,
///   overloaded (queue full).
///   Limitation: executions without a session share their interpreter
///   process with earlier ones: their variables are not seen, but imported
///   modules, changes to builtins and files in the working directory are.
/// - end_repl_session -> bool: the session's worker gets a fresh
///   interpreter before anyone else uses it.
/// - (stats_atom) -> repl_pool_info.
caf::actor spawn_repl_pool(caf::actor_system& sys, repl_pool_options options);

}  // namespace kowalski
