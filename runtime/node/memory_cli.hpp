// kowalski memory: search, add to and inspect a node's memory tiers.
#pragma once

#include <string>
#include <vector>

namespace kowalski {

/// Runs `kowalski memory ...` (argv without the command); returns the exit code.
int memory_command(const std::vector<std::string>& argv);

}  // namespace kowalski
