// The single writer actor of an LMDB environment, with group commit.
#pragma once

#include <caf/fwd.hpp>

#include <memory>

namespace kowalski::store {

class environment;

/// Spawns the writer on its own thread (commits wait for fsync, which must
/// not stall the shared scheduler).
///
/// Messages:
/// - write_batch -> uint64_t: the commit sequence number, delivered only after
///   the transaction holding the batch has committed. Batches that arrive
///   while a commit runs are committed together in the next transaction
///   (group commit). A failing group is retried batch by batch, so one bad
///   batch fails alone with errc::store_failure.
/// - (ping_atom) -> uint64_t commits so far, answered in mailbox order.
caf::actor spawn_store_writer(caf::actor_system& sys, std::shared_ptr<environment> env);

}  // namespace kowalski::store
