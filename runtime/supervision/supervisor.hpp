// A general supervisor actor: Erlang-style restart strategies for CAF 0.17,
// which offers monitors and links but no supervision trees.
#pragma once

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace kowalski::supervision {

enum class strategy {
  one_for_one,  ///< restart only the child that stopped
  one_for_all,  ///< stop all other children, then restart all in spec order
};

enum class restart_policy {
  permanent,  ///< always restarted
  transient,  ///< restarted only after an abnormal exit
  temporary,  ///< never restarted
};

/// How to start one child. `start` runs inside the supervisor (one at a time,
/// in spec order) and returns the new child's handle; an invalid handle or an
/// exception counts as a failed start, which uses up restart intensity too.
struct child_spec {
  std::string name;
  std::function<caf::actor(caf::actor_system&)> start;
  restart_policy policy = restart_policy::permanent;
};

struct supervisor_options {
  std::string name = "supervisor";
  strategy kind = strategy::one_for_one;
  /// Restart intensity: more than max_restarts restarts within `window`
  /// make the supervisor stop its children and exit with errc::restart_limit,
  /// which escalates to whoever monitors or links to it.
  uint32_t max_restarts = 5;
  std::chrono::milliseconds window{10'000};
  /// Restart delay: backoff_initial * 2^(n-1) for the n-th restart inside the
  /// window, capped at backoff_max, with full jitter in [delay/2, delay].
  std::chrono::milliseconds backoff_initial{100};
  std::chrono::milliseconds backoff_max{10'000};
};

/// Spawns a supervisor that starts `children` in order.
///
/// Messages it answers:
/// - (children_atom) -> std::vector<child_info>: live children, restarts so far;
/// - (child_atom, std::string name) -> caf::actor, or errc::not_found while the
///   child is not running;
/// - (subscribe_atom, caf::actor listener): the listener receives
///   (started_atom, std::string name, caf::actor handle) for every child
///   started from then on, restarts included, and at once for running ones.
///
/// An exit message (e.g. user_shutdown) stops the children, newest first,
/// and then the supervisor with the same reason.
caf::actor spawn_supervisor(caf::actor_system& sys, supervisor_options options,
                            std::vector<child_spec> children);

}  // namespace kowalski::supervision
