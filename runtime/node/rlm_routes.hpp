// HTTP routes of RLM runs: /v1/rlm/runs...
#pragma once

#include "runtime/net/http_server.hpp"

#include <string_view>
#include <vector>

namespace kowalski {

class node;

/// Serves POST /v1/rlm/runs, GET and DELETE /v1/rlm/runs/{id} and
/// GET /v1/rlm/runs/{id}/trajectory.
void serve_rlm(node& n, const net::http_request& req, const std::vector<std::string_view>& parts,
               const net::responder_ptr& out);

}  // namespace kowalski
