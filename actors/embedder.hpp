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
/// length, named embedder_name(spec)). A batch without an answer, or
/// answered 429 (its Retry-After honoured) or 5xx, is sent again up to 3
/// times in all; a shared batch refused with another 4xx is split, each
/// request's texts sent alone, so one bad text fails only its own request.
/// A request fails as a whole when one of its batches does, field
/// "embedder": backend_unavailable (no answer), timeout (no answer in time,
/// or no free call before embed_texts::timeout_ms), backend_error (a
/// non-2xx status) or backend_protocol (an answer that is not the
/// protocol's, or vectors of another size or count).
caf::actor spawn_embedder(caf::actor_system& sys, memory::embedder_spec spec,
                          std::shared_ptr<net::http_client> client);

}  // namespace kowalski
