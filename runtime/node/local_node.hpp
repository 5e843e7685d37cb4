// A node inside a command-line client's own process (`--local`), for
// running work without a separate `kowalski serve`.
#pragma once

#include "runtime/node/node_client.hpp"

#include <functional>
#include <string>
#include <vector>

namespace kowalski {

/// Starts a node on a free loopback port with `flags` (any `kowalski serve`
/// settings; its store is a temporary directory unless they name one, and
/// its log level warn unless they set it), runs `fn` against it, stops it
/// and returns what `fn` returned; exit codes 1 or 2 (with a message on
/// stderr, prefixed by `command`) when the node cannot start.
int with_local_node(const std::string& command, const std::vector<std::string>& flags,
                    const std::function<int(const node_endpoint&)>& fn);

}  // namespace kowalski
