// The node's remote embedder as an actor: Ollama /api/embed or OpenAI
// /v1/embeddings. Texts of concurrent requests are gathered into batched
// calls under a limit of calls in flight, the way the store writer gathers
// commits: while the calls are busy, what arrives waits and leaves together.
#pragma once

#include "runtime/memory/remote_embedder.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <memory>

namespace kowalski {

/// Answers embed_texts -> embeddings (every vector spec.dims long, unit
/// length, named embedder_name(spec)). A request fails as a whole when one
/// of its batches does: backend_unavailable (no answer; field "embedder"),
/// timeout, backend_error (a non-2xx status) or backend_protocol (an answer
/// that is not the protocol's, or vectors of another size or count).
caf::actor spawn_embedder(caf::actor_system& sys, memory::embedder_spec spec,
                          std::shared_ptr<net::http_client> client);

}  // namespace kowalski
