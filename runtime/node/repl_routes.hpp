// HTTP routes of the REPL workers: /v1/repl/...
#pragma once

#include "runtime/net/http_server.hpp"

#include <string_view>
#include <vector>

namespace kowalski {

class node;

/// Serves POST /v1/repl/{language}/execute, DELETE /v1/repl/sessions/{id}
/// and GET /v1/repl/pools. `parts` are the path's segments ("v1", "repl", ...).
void serve_repl(node& n, const net::http_request& req, const std::vector<std::string_view>& parts,
                const net::responder_ptr& out);

}  // namespace kowalski
