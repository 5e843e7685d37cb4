// The HTTP gateway's routes: JSON in, actors in the middle, JSON or SSE out.
#pragma once

#include "runtime/net/http_server.hpp"

namespace kowalski {

class node;

/// Builds the request handler serving /healthz, /readyz and /v1/... for `n`.
/// The node must outlive the server using the handler.
net::request_handler make_gateway(node& n);

}  // namespace kowalski
