// The `kowalski batch` subcommand.
#pragma once

#include <string>
#include <vector>

namespace kowalski {

/// Runs `kowalski batch` with the arguments after the subcommand; returns
/// the exit code (0 all done, 1 a request failed or the run failed, 2 usage).
int batch_command(const std::vector<std::string>& args);

}  // namespace kowalski
