// CAF configuration of a node.
#include "config/node_config.hpp"

#include "messages/registry.hpp"

#include <caf/io/middleman.hpp>
#include <caf/atom.hpp>
#include <caf/timespan.hpp>

#include <algorithm>
#include <thread>

namespace kowalski {

node_config::node_config(const settings& s) {
  register_message_types(*this);
  load<caf::io::middleman>();

  // CAF defaults to max(cores, 4) threads; size it to the machine instead.
  auto threads = s.scheduler_threads != 0
                   ? s.scheduler_threads
                   : std::max(2u, std::thread::hardware_concurrency());
  set("scheduler.max-threads", static_cast<size_t>(threads));
  // Work stealing lets idle workers sleep in 50 us to 10 ms naps that no
  // enqueue interrupts; a gateway waits on I/O most of the time, so every
  // hop of a chat turn would pay a nap. The sharing policy wakes a worker
  // through a condition variable instead.
  set("scheduler.policy", caf::atom("sharing"));

  // CAF leaves failure detection off; a frozen peer would go unnoticed.
  set("middleman.heartbeat-interval", caf::timespan{std::chrono::seconds(1)});
  set("middleman.connection-timeout", caf::timespan{std::chrono::seconds(5)});
  set("middleman.app-identifiers", std::vector<std::string>{"kowalski"});
}

}  // namespace kowalski
