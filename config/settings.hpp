// Node settings and their layered loading: defaults < config file <
// environment (KOWALSKI_*, OLLAMA_HOST, OPENAI_*) < command-line flags.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kowalski {

struct settings {
  // [node]
  std::string data_dir = "./data";
  std::string log_level = "info";
  unsigned scheduler_threads = 0;  ///< 0 = one per core, at least 2

  // [http]: the gateway
  std::string http_address = "127.0.0.1";
  uint16_t http_port = 8080;
  std::size_t http_body_limit = 1 << 20;
  std::chrono::milliseconds http_request_timeout{30'000};
  std::chrono::milliseconds http_idle_timeout{60'000};
  unsigned http_threads = 2;
  std::string http_token;  ///< secret; required when bound beyond loopback

  // [client]: outgoing HTTP to LLM backends
  std::size_t client_max_idle_per_host = 10;
  std::chrono::milliseconds client_connect_timeout{10'000};
  std::chrono::milliseconds client_request_timeout{300'000};
  unsigned client_threads = 1;

  // [llm]
  std::string llm_provider = "ollama";  ///< ollama | openai | replay
  std::string llm_model = "llama3.2";
  unsigned llm_workers = 10;  ///< concurrency slots of the backend
  std::size_t llm_queue_limit = 10'000;
  double llm_temperature = 0.7;
  int32_t llm_max_tokens = 2048;
  std::string ollama_url = "http://127.0.0.1:11434";
  std::string openai_url = "https://api.openai.com/v1";
  std::string openai_api_key;  ///< secret
  std::string replay_transcript = "config/demo-transcript.jsonl";
  double llm_rate_rps = 0;  ///< requests per second to the backend; 0 = no limit
  double llm_rate_tpm = 0;  ///< tokens per minute to the backend; 0 = no limit
  unsigned llm_model_concurrency = 0;  ///< calls of one model at once; 0 = workers only
  std::map<std::string, unsigned> llm_model_limits;  ///< per-model overrides

  // [batch]
  std::size_t batch_max_queued = 100'000;  ///< unfinished items per node
  std::size_t batch_max_items = 100'000;   ///< items in one batch
  std::size_t batch_max_body = std::size_t{256} << 20;
  std::chrono::milliseconds batch_call_timeout{300'000};  ///< one attempt
  std::chrono::milliseconds batch_deadline{86'400'000};   ///< whole batch
  unsigned batch_max_attempts = 3;
  std::chrono::milliseconds batch_retry_base{250};
  std::chrono::milliseconds batch_retry_cap{30'000};

  // [repl]
  unsigned repl_min_workers = 1;  ///< warm interpreters per language
  unsigned repl_max_workers = 8;
  std::chrono::milliseconds repl_timeout{30'000};
  std::chrono::milliseconds repl_max_timeout{600'000};
  std::size_t repl_output_cap = 20'000;  ///< characters per stream
  std::size_t repl_memory_limit = std::size_t{512} << 20;
  std::size_t repl_address_space = std::size_t{2} << 30;
  unsigned repl_processes = 64;
  std::chrono::milliseconds repl_idle_timeout{60'000};
  std::chrono::milliseconds repl_session_idle{600'000};
  std::string repl_temp_dir;  ///< empty = the system's temporary directory
  bool repl_allow_unsandboxed = false;  ///< run without bubblewrap when it cannot work
  std::string repl_bubblewrap = "/usr/bin/bwrap";

  // [memory]
  unsigned memory_dims = 384;  ///< of every vector; a remote model's own size
  std::string memory_embedder = "hash";  ///< hash | ollama | openai
  std::string memory_embed_model;        ///< required by ollama and openai
  std::string memory_embed_url;          ///< empty = llm.ollama_url or llm.openai_url
  std::string memory_embed_api_key;      ///< secret; empty = llm.openai_api_key
  bool memory_embed_send_dims = false;   ///< openai: ask for memory.dims numbers
  unsigned memory_embed_batch = 64;      ///< texts per embedding request
  unsigned memory_embed_concurrency = 2;  ///< embedding requests in flight
  std::chrono::milliseconds memory_embed_timeout{30'000};
  std::string memory_vector_backend = "hnsw";  ///< hnsw | qdrant (the semantic tier's search)
  std::string memory_qdrant_url = "http://127.0.0.1:6333";
  std::string memory_qdrant_collection = "kowalski_memory";
  std::string memory_qdrant_api_key;  ///< secret
  std::chrono::milliseconds memory_qdrant_timeout{10'000};
  double memory_similarity_weight = 0.85;
  std::chrono::milliseconds memory_recency_horizon{std::chrono::hours(24 * 30)};
  unsigned memory_working_items = 100;
  unsigned memory_index_ef_search = 64;
  unsigned memory_index_m = 16;
  /// Items each chat turn asks of the working, episodic and semantic tiers
  /// (0 = that tier is not asked).
  unsigned memory_chat_working = 3;
  unsigned memory_chat_episodic = 3;
  unsigned memory_chat_semantic = 3;
  bool memory_in_chat = true;  ///< ask the tiers each turn, and archive turns in them
  std::chrono::milliseconds memory_consolidate_every{0};  ///< 0 = on request only
  std::chrono::milliseconds memory_purge_every{60'000};   ///< expired items erased this often
  // [rlm]
  std::string rlm_system_prompt_file = "config/prompts/rlm_system.md";
  unsigned rlm_max_iterations = 30;
  std::chrono::milliseconds rlm_turn_timeout{300'000};
  unsigned rlm_max_errors = 5;
  std::size_t rlm_output_cap = 20'000;
  unsigned rlm_max_depth = 1;        ///< default depth: rlm_query is a plain call
  unsigned rlm_max_depth_limit = 4;  ///< the largest max_depth a run may ask for
  unsigned rlm_sub_call_concurrency = 16;
  unsigned rlm_child_concurrency = 4;
  std::chrono::milliseconds rlm_child_start_timeout{60'000};  ///< a child's wait for an interpreter
  unsigned rlm_workers = 16;  ///< Python interpreters for runs (each run and child holds one)
  unsigned rlm_context_window = 128'000;  ///< tokens of the root model's window
  double rlm_compact_at = 0.85;           ///< share of the window; 0 = never compact
  std::size_t rlm_max_context_bytes = std::size_t{1} << 30;
  std::string rlm_context_dirs;  ///< comma-separated; files there may be named as context
  std::size_t rlm_memory_limit = std::size_t{8} << 30;    ///< per run interpreter (cgroup)
  std::size_t rlm_address_space = std::size_t{16} << 30;  ///< per run interpreter (RLIMIT_AS)

  // [conversations]
  std::size_t conversations_max_live = 100;
  std::size_t conversations_history_window = 100;
  std::string conversations_system_prompt;
  std::size_t conversations_max_message_bytes = 256 * 1024;
  std::size_t conversations_max_queued = 16;

  // [store]
  std::size_t store_map_size = std::size_t{16} << 30;

  // [remote]: CAF remoting of the node's actors
  uint16_t remote_port = 0;  ///< 0 = not published
  std::string remote_address = "127.0.0.1";
  /// CAF remoting has no authentication: binding beyond loopback needs this.
  bool remote_allow_unauthenticated = false;
};

/// Why a setting was refused, with everything a person needs to fix it.
struct config_error {
  std::string key;
  std::string value;
  std::string source;    ///< "flag", "environment KOWALSKI_X", "file path:line"
  std::string expected;  ///< what would have been accepted

  std::string message() const;
};

/// Looks up an environment variable; nullopt when unset.
using env_lookup = std::function<std::optional<std::string>(const std::string&)>;

/// The process environment.
env_lookup process_environment();

struct load_result {
  std::optional<settings> value;
  std::optional<config_error> error;
  std::string config_file;  ///< the file that was read, if any
};

/// Loads settings. `flags` are the command-line arguments after the
/// subcommand ("--http.port=9000", "--http.port 9000", "--port 9000",
/// "--config-file path"); arguments that are not flags are refused.
load_result load_settings(const std::vector<std::string>& flags, const env_lookup& env);

/// One line per key: name, default and meaning, for --help.
std::string describe_settings();

/// True for addresses that only this machine can reach.
bool is_loopback_address(const std::string& address);

}  // namespace kowalski
