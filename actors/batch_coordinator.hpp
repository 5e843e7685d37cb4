// The batch coordinator: runs many LLM calls through the router's workers,
// with retries, deadlines and durable progress. One per node.
#pragma once

#include "runtime/batch/policy.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>

namespace kowalski {

namespace store {
class environment;
}

struct batch_coordinator_options {
  /// Items of all batches and call lists not finished yet; a submission
  /// that would go beyond it is refused with errc::overloaded.
  std::size_t max_queued = 100'000;
  /// Items one batch may hold.
  std::size_t max_items = 100'000;
  /// Calls this coordinator keeps at the router at once: the number of LLM
  /// workers, so that an item goes out only when a worker can take it.
  /// Limitation: the window does not know the items' models, so when a
  /// model is at its per-model limit at the router, its items hold window
  /// places that items of other models could use.
  uint32_t concurrency = 10;
  /// Defaults for what a batch leaves at zero.
  std::chrono::milliseconds call_timeout{300'000};
  std::chrono::milliseconds deadline{86'400'000};
  uint32_t max_attempts = 3;
  batch::backoff_options backoff;
  /// How long asking the backend for its models may take at submission.
  std::chrono::milliseconds model_check_timeout{30'000};
};

/// Spawns the coordinator. It resumes every batch the store holds as
/// in_progress or cancelling: items with a committed result are not run
/// again. `writer` is the environment's store_writer; `router` the
/// llm_router whose workers run the calls (as batch calls, behind
/// interactive ones).
///
/// Messages:
/// - submit_batch -> batch_info once the batch and every item are committed.
///   Errors: invalid_argument (no items, an empty model or message list,
///   duplicate custom_id; the field names the item), payload_too_large
///   (more than max_items), overloaded (the node's queue is full),
///   unknown_model (the backend does not serve an item's model; nothing is
///   stored), backend_unavailable (the model list could not be fetched).
/// - get_batch -> batch_info with live counts, rate and ETA; not_found.
/// - list_batches -> batch_page, in creation order.
/// - cancel_batch -> batch_info; conflict when it already ended; not_found.
/// - llm_call -> llm_reply: one call with retries, not stored.
/// - llm_call_batch -> std::vector<call_outcome> in input order, not stored.
/// - (stats_atom) -> (batches, unfinished items, calls in flight) as three
///   uint64_t.
caf::actor spawn_batch_coordinator(caf::actor_system& sys,
                                   std::shared_ptr<store::environment> env, caf::actor writer,
                                   caf::actor router, batch_coordinator_options options);

}  // namespace kowalski
