// The llm_router: hands each LLM call to an idle worker, so the number of
// workers is the concurrency limit; calls beyond it wait in bounded queues,
// interactive calls ahead of batch calls, within the backend's rate limits.
#pragma once

#include "runtime/batch/policy.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

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
  /// How long a batch call that names no queue_ms may wait for a worker
  /// and the rate limit; past it the call is answered unsent, with
  /// errc::overloaded and field "queue", so its caller may send it again.
  std::chrono::milliseconds batch_queue_limit{600'000};
  /// How long a fetched model list and a readiness probe are reused.
  std::chrono::milliseconds models_ttl{10'000};
  std::chrono::milliseconds ready_ttl{1'000};
  /// Requests per second and tokens per minute for every call to the
  /// backend, interactive and batch alike; zero = no limit.
  batch::rate_limits rates;
  /// Calls of one model at once, beyond the worker count (as Ollama's
  /// OLLAMA_NUM_PARALLEL slots per model); 0 = only the workers limit.
  uint32_t per_model = 0;
  /// Per-model overrides of per_model.
  std::map<std::string, uint32_t> model_limits;
};

/// Spawns a router over the workers of `worker_supervisor` (it subscribes to
/// the supervisor, so restarted workers replace their predecessors).
///
/// Messages:
/// - llm_request -> llm_reply: an interactive call, queued FIFO until a
///   worker is idle; refused with errc::overloaded when queue_limit calls
///   already wait. Its timeout_ms counts from arrival: queueing uses it up.
/// - (batch_atom, llm_request) -> llm_reply: a batch call. It goes to a
///   worker only when no interactive call waits, and its timeout_ms counts
///   from the moment a worker takes it. One that waits longer than its
///   queue_ms is answered unsent (overloaded, field "queue"). Batch calls are not limited here:
///   the batch coordinator keeps no more of them in flight than there are
///   workers.
/// Calls of a model at its limit wait while calls of other models go.
/// - (models_atom) -> std::vector<model_info>, cached for models_ttl.
/// - (ready_atom) -> backend_status, cached for ready_ttl.
/// - (stats_atom) -> (workers, busy, queued) as three uint64_t; queued
///   counts both queues.
caf::actor spawn_llm_router(caf::actor_system& sys, caf::actor worker_supervisor,
                            llm_router_options options);

}  // namespace kowalski
