// The CAF configuration of a kowalski node: message types registered and
// scheduler, remoting and heartbeat settings taken from `settings`.
#pragma once

#include "config/settings.hpp"

#include <caf/actor_system_config.hpp>

namespace kowalski {

class node_config : public caf::actor_system_config {
public:
  /// Registers every message type, loads the middleman (CAF remoting) and
  /// applies scheduler and heartbeat settings.
  explicit node_config(const settings& s);
};

}  // namespace kowalski
