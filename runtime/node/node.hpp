// A kowalski node assembled: store, actors under supervision, HTTP gateway,
// optional CAF remoting. One per `kowalski serve` process (or per test).
#pragma once

#include "config/settings.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace kowalski {

namespace store {
class environment;
}

class node {
public:
  /// Opens the store, starts the actors and the gateway. On failure returns
  /// nullptr with `error` saying what failed.
  static std::unique_ptr<node> start(const settings& s, std::string& error);

  /// Stops in order: gateway, actors, HTTP client, actor system.
  ~node();

  node(const node&) = delete;
  node& operator=(const node&) = delete;

  uint16_t http_port() const;
  uint16_t remote_port() const;  ///< 0 when remoting is off
  caf::actor_system& system();
  const settings& config() const;
  std::shared_ptr<store::environment> store() const;

  /// Current handles; they change when a supervisor restarts an actor.
  caf::actor manager() const;
  caf::actor router() const;
  caf::actor batches() const;
  /// Routes repl_execute, end_repl_session and (stats_atom) to the pools.
  caf::actor repl() const;
  /// Answers submit_rlm_run, get_rlm_run and cancel_rlm_run.
  caf::actor rlm() const;
  /// The memory tier named `tier` (working, episodic, semantic); an
  /// invalid handle for other names.
  caf::actor memory(const std::string& tier) const;
  /// Why RLM runs cannot start here (empty when they can).
  std::string rlm_unavailable() const;
  /// The REPL sandbox in force: bubblewrap, rlimits_only or off, and why.
  std::string repl_sandbox() const;
  std::string repl_sandbox_detail() const;
  caf::actor writer() const;
  caf::actor root() const;

  /// Blocks until request_stop() or until the supervision tree gives up.
  /// Returns 0 after a stop request, 1 after a failure.
  int wait();

  /// Wakes wait(); safe from any thread (a signal-waiting thread uses it).
  void request_stop();

  /// True once the supervision tree has given up.
  bool failed() const;

  struct impl;

private:
  explicit node(std::unique_ptr<impl> p);
  std::unique_ptr<impl> impl_;
};

}  // namespace kowalski
