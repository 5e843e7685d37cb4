// An LLM worker: one concurrency slot of a backend (Ollama, OpenAI-compatible
// or replay). It makes one call at a time when fed by the llm_router.
#pragma once

#include "runtime/llm/codecs.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <memory>
#include <string>

namespace kowalski {

namespace net {
class http_client;
}
namespace llm {
class transcript;
}

/// Where and how a worker reaches its backend. Shared by all its workers.
struct llm_backend {
  llm::provider kind = llm::provider::ollama;
  std::string base_url;  ///< Ollama root, or an OpenAI base ending in /v1
  std::string api_key;   ///< bearer key; never logged
  std::shared_ptr<net::http_client> client;
  std::shared_ptr<const llm::transcript> transcript;  ///< replay only
  std::chrono::milliseconds request_timeout{300'000};
  std::chrono::milliseconds probe_timeout{2'000};
};

const char* to_string(llm::provider p);

/// Spawns a worker.
///
/// Messages:
/// - llm_request -> llm_reply. The reply streams from the backend; every
///   piece of text goes to request.sink as (delta_atom, std::string) before
///   the reply. Errors: unknown_model (field "model"), backend_unavailable,
///   backend_error, backend_protocol, overloaded (the backend said 429),
///   timeout.
/// - (models_atom) -> std::vector<model_info> the backend serves.
/// - (ready_atom) -> backend_status from a cheap probe (the model list).
caf::actor spawn_llm_worker(caf::actor_system& sys, std::shared_ptr<const llm_backend> backend);

}  // namespace kowalski
