// The RLM manager: starts runs, keeps their records in the store, answers
// for them by id, resumes the runs a stopped node left. One per node.
#pragma once

#include "actors/rlm_run.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kowalski {

namespace store {
class environment;
}

struct rlm_manager_options {
  /// The template of every run's options (writer, env, progress and run_id
  /// are set per run).
  rlm_options run;
  /// Where inline and uploaded contexts are kept while their run lasts, so
  /// that a restarted node can resume it.
  std::string context_dir;
  /// The directories whose files a run may name as context_file; empty =
  /// none (contexts then come inline or uploaded).
  std::vector<std::string> context_dirs;
  uint64_t max_context_bytes = uint64_t{1} << 30;
  uint32_t max_depth_limit = 4;  ///< the largest max_depth a request may ask for
  /// Answers (models_atom) with the models served: unknown models are
  /// refused at submission. Unset: not checked.
  caf::actor models;
};

/// Spawns the manager.
///
/// Messages:
/// - submit_rlm_run -> rlm_run_info (running) once its record (and its
///   context, when inline) is committed; the run goes on in the background.
///   Bad input: invalid_argument (naming the field), payload_too_large for
///   a context over max_context_bytes, unknown_model.
/// - get_rlm_run -> rlm_run_info, from the store; not_found.
/// - get_rlm_turns -> rlm_turn_page; waits up to wait_ms for a new commit.
/// - cancel_rlm_run -> rlm_run_info once the run has stopped; conflict when
///   it had already ended; not_found.
/// Runs the store holds as running when the manager starts (their node
/// stopped) are resumed from their last committed turn; those whose
/// context is gone end with reason interrupted.
caf::actor spawn_rlm_manager(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                             rlm_manager_options options);

}  // namespace kowalski
