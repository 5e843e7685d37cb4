// The `kowalski rlm` subcommand.
#pragma once

#include <string>
#include <vector>

namespace kowalski {

/// Runs `kowalski rlm`: one RLM run on a node (or an in-process one),
/// progress on stderr, the answer on stdout. Exit codes: 0 an answer, 1 the
/// run ended without one (a limit, a failure) or the node failed, 2 usage.
int rlm_command(const std::vector<std::string>& args);

}  // namespace kowalski
