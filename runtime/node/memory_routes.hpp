// HTTP routes of the memory tiers: /v1/memory/...
#pragma once

#include "runtime/net/http_server.hpp"

#include <string_view>
#include <vector>

namespace kowalski {

class node;

/// Serves POST /v1/memory/{tier}, GET and DELETE /v1/memory/{tier}/{id},
/// GET /v1/memory/search, GET /v1/memory/stats, and POST and GET
/// /v1/memory/semantic/triples.
void serve_memory(node& n, const net::http_request& req,
                  const std::vector<std::string_view>& parts, const net::responder_ptr& out);

}  // namespace kowalski
