// CAF configuration of a node.
#include "config/node_config.hpp"

#include "messages/registry.hpp"

#include <caf/io/middleman.hpp>
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

  // CAF leaves failure detection off; a frozen peer would go unnoticed.
  set("middleman.heartbeat-interval", caf::timespan{std::chrono::seconds(1)});
  set("middleman.connection-timeout", caf::timespan{std::chrono::seconds(5)});
  set("middleman.app-identifiers", std::vector<std::string>{"kowalski"});
}

}  // namespace kowalski
