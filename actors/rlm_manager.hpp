// The RLM manager: starts runs, keeps their records in the store, answers
// for them by id. One per node.
#pragma once

#include "actors/rlm_run.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <memory>

namespace kowalski {

namespace store {
class environment;
}

/// Spawns the manager; `run` is the template of every run's options (its
/// writer and run_id are set per run).
///
/// Messages:
/// - submit_rlm_run -> rlm_run_info (running) once its record is committed;
///   the run goes on in the background. Bad input: invalid_argument.
/// - get_rlm_run -> rlm_run_info, from the store; not_found.
/// - cancel_rlm_run -> rlm_run_info once the run has stopped; conflict when
///   it had already ended; not_found.
/// Runs the store holds as running when the manager starts (their node
/// stopped) are marked as ended with reason interrupted.
caf::actor spawn_rlm_manager(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                             rlm_options run);

}  // namespace kowalski
