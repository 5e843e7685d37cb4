// The one place that registers kowalski's message types and error category.
#pragma once

#include <caf/fwd.hpp>

#include <string>
#include <vector>

namespace kowalski {

/// Registers every message type and the error category with `cfg`. Every
/// node calls this before building its actor_system, so names match.
void register_message_types(caf::actor_system_config& cfg);

/// Names of the types register_message_types() adds, for tests and docs.
const std::vector<std::string>& registered_type_names();

}  // namespace kowalski
