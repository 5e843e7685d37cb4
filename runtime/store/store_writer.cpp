// Group-committing LMDB writer actor.
#include "runtime/store/store_writer.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

namespace kowalski::store {

namespace {

struct pending_write {
  write_batch batch;
  caf::response_promise promise;
};

struct writer_state {
  std::shared_ptr<environment> env;
  std::vector<pending_write> pending;
  bool flush_scheduled = false;
  uint64_t commits = 0;
  std::shared_ptr<spdlog::logger> log = logging::get("store");
  static inline const char* name = "kowalski.store_writer";

  void flush() {
    flush_scheduled = false;
    if (pending.empty()) {
      return;
    }
    auto group = std::move(pending);
    pending.clear();

    std::vector<const write_batch*> batches;
    batches.reserve(group.size());
    for (auto& w : group) {
      batches.push_back(&w.batch);
    }
    std::string error;
    if (env->apply(batches, error)) {
      ++commits;
      for (auto& w : group) {
        w.promise.deliver(commits);
      }
      return;
    }

    // Retry alone so that one bad batch does not fail its neighbours.
    auto refused = [](const std::string& e) {
      return e.rfind(environment::absent_key, 0) == 0;  // a batch's own condition
    };
    if (!refused(error)) {
      log->warn("group commit failed batches={} error=\"{}\"", group.size(), error);
    }
    for (auto& w : group) {
      std::string single_error;
      if (env->apply({&w.batch}, single_error)) {
        ++commits;
        w.promise.deliver(commits);
      } else if (refused(single_error)) {
        w.promise.deliver(make_error(errc::conflict, single_error));
      } else {
        log->error("commit failed error=\"{}\"", single_error);
        w.promise.deliver(make_error(errc::store_failure, single_error));
      }
    }
  }
};

caf::behavior writer(caf::stateful_actor<writer_state>* self,
                     std::shared_ptr<environment> env) {
  self->state.env = std::move(env);
  return {
    [=](write_batch& batch) -> caf::result<uint64_t> {
      auto rp = self->make_response_promise<uint64_t>();
      self->state.pending.push_back(pending_write{std::move(batch), rp});
      // The flush message queues behind writes already in the mailbox, so
      // they all land in one transaction.
      if (!self->state.flush_scheduled) {
        self->state.flush_scheduled = true;
        self->send(self, flush_atom::value);
      }
      return rp;
    },
    [=](flush_atom) { self->state.flush(); },
    [=](ping_atom) -> uint64_t {
      self->state.flush();
      return self->state.commits;
    },
  };
}

}  // namespace

caf::actor spawn_store_writer(caf::actor_system& sys, std::shared_ptr<environment> env) {
  return sys.spawn<caf::detached>(writer, std::move(env));
}

}  // namespace kowalski::store
