// HTTP routes of batches: /v1/batches and below.
#pragma once

#include "runtime/net/http_server.hpp"

#include <string_view>
#include <vector>

namespace kowalski {

class node;

/// Serves POST/GET /v1/batches, GET/DELETE /v1/batches/{id},
/// POST /v1/batches/{id}/cancel and GET /v1/batches/{id}/results.
/// `parts` are the path's segments ("v1", "batches", ...).
void serve_batches(node& n, const net::http_request& req,
                   const std::vector<std::string_view>& parts, const net::responder_ptr& out);

/// The body limit of a request to `target`: batch uploads may be larger than
/// other requests.
bool is_batch_upload(const std::string& method, const std::string& target);

}  // namespace kowalski
