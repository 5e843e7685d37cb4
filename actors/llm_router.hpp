// The llm_router: hands each LLM call to an idle worker, so the number of
// workers is the concurrency limit; calls beyond it wait in a bounded queue.
#pragma once

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>

namespace kowalski {

struct llm_router_options {
  std::size_t queue_limit = 10'000;
  /// How long a reply may take before the router gives up on a worker; set
  /// above the backend's own request timeout so the worker reports first.
  std::chrono::milliseconds call_timeout{310'000};
  /// Time a call may take from arrival to its last byte when it names no
  /// timeout itself (the backend's request timeout). Waiting in the queue
  /// uses it up: a call dispatched late gets only what is left, and a call
  /// whose time ran out in the queue fails with errc::timeout unsent.
  std::chrono::milliseconds request_budget{300'000};
  /// How long a fetched model list and a readiness probe are reused.
  std::chrono::milliseconds models_ttl{10'000};
  std::chrono::milliseconds ready_ttl{1'000};
};

/// Spawns a router over the workers of `worker_supervisor` (it subscribes to
/// the supervisor, so restarted workers replace their predecessors).
///
/// Messages:
/// - llm_request -> llm_reply: queued FIFO until a worker is idle; refused
///   with errc::overloaded when queue_limit calls already wait.
/// - (models_atom) -> std::vector<model_info>, cached for models_ttl.
/// - (ready_atom) -> backend_status, cached for ready_ttl.
/// - (stats_atom) -> (workers, busy, queued) as three uint64_t.
caf::actor spawn_llm_router(caf::actor_system& sys, caf::actor worker_supervisor,
                            llm_router_options options);

}  // namespace kowalski
