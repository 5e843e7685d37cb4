// Layered loading of node settings.
#include "config/settings.hpp"

#include "runtime/net/url.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace kowalski {

namespace {

using ms = std::chrono::milliseconds;

// Parses `text` into the field; returns an empty string on success or the
// description of what was expected.
// A field's setter and how its value reads in --help.
struct setter {
  std::function<std::string(settings&, const std::string& text)> parse;
  std::function<std::string(const settings&)> show;

  std::string operator()(settings& s, const std::string& text) const { return parse(s, text); }
};

struct option {
  std::string key;
  std::string help;
  setter set;
  bool secret = false;
};

std::string show_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

std::string show_size(std::size_t n) {
  const char* units[] = {"", "KiB", "MiB", "GiB"};
  int u = 0;
  while (u < 3 && n >= 1024 && n % 1024 == 0) {
    n /= 1024;
    ++u;
  }
  return std::to_string(n) + units[u];
}

std::string show_duration(std::chrono::milliseconds d) {
  auto n = d.count();
  if (n != 0 && n % 3'600'000 == 0) {
    return std::to_string(n / 3'600'000) + "h";
  }
  if (n != 0 && n % 60'000 == 0) {
    return std::to_string(n / 60'000) + "m";
  }
  if (n != 0 && n % 1000 == 0) {
    return std::to_string(n / 1000) + "s";
  }
  return std::to_string(n) + "ms";
}

std::string trim(std::string s) {
  auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::string lower(std::string s) {
  for (auto& c : s) {
    c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  }
  return s;
}

bool parse_uint(const std::string& text, uint64_t min, uint64_t max, uint64_t& out) {
  if (text.empty() || !std::all_of(text.begin(), text.end(), ::isdigit)) {
    return false;
  }
  errno = 0;
  auto v = std::strtoull(text.c_str(), nullptr, 10);
  if (errno != 0 || v < min || v > max) {
    return false;
  }
  out = v;
  return true;
}

template <class T>
setter uint_field(T settings::*field, uint64_t min, uint64_t max) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    uint64_t v;
    if (!parse_uint(text, min, max, v)) {
      return "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    }
    s.*field = static_cast<T>(v);
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return std::to_string(s.*field);
  };
  return setter{parse, show};
}

setter int_field(int32_t settings::*field, int64_t min, int64_t max) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    char* end = nullptr;
    errno = 0;
    auto v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno != 0 || v < min || v > max) {
      return "an integer from " + std::to_string(min) + " to " + std::to_string(max);
    }
    s.*field = static_cast<int32_t>(v);
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return std::to_string(s.*field);
  };
  return setter{parse, show};
}

setter double_field(double settings::*field, double min, double max) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    char* end = nullptr;
    auto v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || !std::isfinite(v) || v < min || v > max) {
      std::ostringstream os;
      os << "a number from " << min << " to " << max;
      return os.str();
    }
    s.*field = v;
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return show_number(s.*field);
  };
  return setter{parse, show};
}

// Durations need a unit: 250ms, 30s, 5m, 1h.
setter duration_field(ms settings::*field, ms min) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    auto expected = "a duration with a unit (ms, s, m or h), at least "
                    + std::to_string(min.count()) + "ms";
    auto pos = text.find_first_not_of("0123456789");
    if (pos == 0 || pos == std::string::npos) {
      return expected;
    }
    uint64_t n;
    if (!parse_uint(text.substr(0, pos), 0, uint64_t{1} << 40, n)) {
      return expected;
    }
    auto unit = text.substr(pos);
    uint64_t factor = unit == "ms" ? 1 : unit == "s" ? 1000 : unit == "m" ? 60'000
                      : unit == "h" ? 3'600'000 : 0;
    if (factor == 0 || ms(n * factor) < min) {
      return expected;
    }
    s.*field = ms(n * factor);
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return show_duration(s.*field);
  };
  return setter{parse, show};
}

// Sizes: plain bytes or with a binary unit: 512KiB, 1MiB, 16GiB.
setter size_field(std::size_t settings::*field, uint64_t min) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    auto expected = "a size in bytes, optionally with KiB, MiB or GiB, at least "
                    + std::to_string(min);
    auto pos = text.find_first_not_of("0123456789");
    uint64_t n;
    if (!parse_uint(text.substr(0, pos), 0, uint64_t{1} << 50, n)) {
      return expected;
    }
    auto unit = pos == std::string::npos ? std::string{} : text.substr(pos);
    uint64_t shift = unit.empty() ? 0 : unit == "KiB" ? 10 : unit == "MiB" ? 20
                     : unit == "GiB" ? 30 : 99;
    if (shift == 99 || n > (uint64_t{1} << 50) >> shift || (n << shift) < min) {
      return expected;
    }
    s.*field = static_cast<std::size_t>(n << shift);
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return show_size(s.*field);
  };
  return setter{parse, show};
}

setter string_field(std::string settings::*field, bool allow_empty) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    if (!allow_empty && text.empty()) {
      return "a non-empty string";
    }
    s.*field = text;
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return s.*field;
  };
  return setter{parse, show};
}

setter bool_field(bool settings::*field) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    auto v = lower(text);
    if (v == "true" || v == "1" || v == "yes") {
      s.*field = true;
    } else if (v == "false" || v == "0" || v == "no") {
      s.*field = false;
    } else {
      return "true or false";
    }
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return std::string{s.*field ? "true" : "false"};
  };
  return setter{parse, show};
}

setter choice_field(std::string settings::*field, std::vector<std::string> choices) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    auto v = lower(text);
    if (std::find(choices.begin(), choices.end(), v) == choices.end()) {
      std::string expected = "one of";
      for (auto& c : choices) {
        expected += " " + c;
      }
      return expected;
    }
    s.*field = v;
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return s.*field;
  };
  return setter{parse, show};
}

setter url_field(std::string settings::*field, uint16_t default_port) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    auto base = net::normalize_base_url(text, default_port);
    if (!base) {
      return "a URL such as http://host:port or host:port";
    }
    s.*field = *base;
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return s.*field;
  };
  return setter{parse, show};
}

// A URL, or empty for "the default elsewhere". Kept as written: its
// default port depends on another setting, so it is completed once all
// settings are read (see load_settings).
setter optional_url_field(std::string settings::*field) {
  auto parse = [=](settings& s, const std::string& raw) -> std::string {
    auto text = trim(raw);
    if (!text.empty() && !net::normalize_base_url(text, 80)) {
      return "a URL such as http://host:port or host:port, or nothing";
    }
    s.*field = text;
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    return s.*field;
  };
  return setter{parse, show};
}

// "model=N,model=N": calls of each model at once.
setter limits_field(std::map<std::string, unsigned> settings::*field) {
  auto parse = [=](settings& s, const std::string& text) -> std::string {
    const std::string expected = "model=count pairs separated by commas, e.g. llama3.2=4,qwen=8";
    std::map<std::string, unsigned> out;
    std::size_t start = 0;
    while (start < text.size()) {
      auto comma = text.find(',', start);
      auto item = trim(text.substr(start, comma == std::string::npos ? comma : comma - start));
      start = comma == std::string::npos ? text.size() : comma + 1;
      if (item.empty()) {
        continue;
      }
      auto eq = item.rfind('=');
      uint64_t n = 0;
      if (eq == std::string::npos || eq == 0
          || !parse_uint(trim(item.substr(eq + 1)), 1, 4096, n)) {
        return expected;
      }
      out[trim(item.substr(0, eq))] = static_cast<unsigned>(n);
    }
    s.*field = std::move(out);
    return {};
  };
  auto show = [=](const settings& s) -> std::string {
    std::string out;
    for (auto& [model, n] : s.*field) {
      out += (out.empty() ? "" : ",") + model + "=" + std::to_string(n);
    }
    return out;
  };
  return setter{parse, show};
}

const std::vector<option>& options() {
  static const std::vector<option> table = {
    {"node.data_dir", "directory of the LMDB store",
     string_field(&settings::data_dir, false)},
    {"node.log_level", "trace, debug, info, warn, error or critical",
     choice_field(&settings::log_level,
                  {"trace", "debug", "info", "warn", "error", "critical", "off"})},
    {"node.scheduler_threads", "CAF scheduler threads (0 = per core, at least 2)",
     uint_field(&settings::scheduler_threads, 0, 256)},
    {"http.address", "address the gateway binds (loopback by default)",
     string_field(&settings::http_address, false)},
    {"http.port", "gateway port (0 = any free port)",
     uint_field(&settings::http_port, 0, 65535)},
    {"http.body_limit", "largest request body accepted",
     size_field(&settings::http_body_limit, 1024)},
    {"http.request_timeout", "time allowed to receive one request",
     duration_field(&settings::http_request_timeout, ms(100))},
    {"http.idle_timeout", "keep-alive idle time before a connection closes",
     duration_field(&settings::http_idle_timeout, ms(100))},
    {"http.threads", "gateway I/O threads", uint_field(&settings::http_threads, 1, 64)},
    {"http.token", "bearer token required by /v1 (needed off loopback)",
     string_field(&settings::http_token, true), true},
    {"client.max_idle_per_host", "idle keep-alive connections kept per backend host",
     uint_field(&settings::client_max_idle_per_host, 0, 1000)},
    {"client.connect_timeout", "connect timeout to backends",
     duration_field(&settings::client_connect_timeout, ms(10))},
    {"client.request_timeout", "whole-request timeout to backends",
     duration_field(&settings::client_request_timeout, ms(10))},
    {"client.threads", "client I/O threads", uint_field(&settings::client_threads, 1, 64)},
    {"llm.provider", "ollama, openai or replay",
     choice_field(&settings::llm_provider, {"ollama", "openai", "replay"})},
    {"llm.model", "default model of new conversations",
     string_field(&settings::llm_model, false)},
    {"llm.workers", "concurrent calls to the backend (one worker each)",
     uint_field(&settings::llm_workers, 1, 1024)},
    {"llm.queue_limit", "calls waiting for a worker before new ones are refused",
     uint_field(&settings::llm_queue_limit, 1, 10'000'000)},
    {"llm.temperature", "default sampling temperature",
     double_field(&settings::llm_temperature, 0, 2)},
    {"llm.max_tokens", "default limit of generated tokens",
     int_field(&settings::llm_max_tokens, 1, 1'000'000)},
    {"llm.ollama_url", "Ollama base URL (also OLLAMA_HOST)",
     url_field(&settings::ollama_url, 11434)},
    {"llm.openai_url", "OpenAI-compatible base URL ending in /v1 (also OPENAI_BASE_URL)",
     url_field(&settings::openai_url, 443)},
    {"llm.openai_api_key", "bearer key for the OpenAI backend (also OPENAI_API_KEY)",
     string_field(&settings::openai_api_key, true), true},
    {"llm.replay_transcript", "transcript file the replay provider answers from",
     string_field(&settings::replay_transcript, false)},
    {"llm.rate_rps", "requests per second to the backend (0 = no limit)",
     double_field(&settings::llm_rate_rps, 0, 1e6)},
    {"llm.rate_tpm", "tokens per minute to the backend (0 = no limit)",
     double_field(&settings::llm_rate_tpm, 0, 1e12)},
    {"llm.model_concurrency", "calls of one model at once (0 = only llm.workers limits)",
     uint_field(&settings::llm_model_concurrency, 0, 4096)},
    {"llm.model_limits", "per-model overrides of llm.model_concurrency: model=N,...",
     limits_field(&settings::llm_model_limits)},
    {"batch.max_queued", "unfinished batch items a node holds before refusing more",
     uint_field(&settings::batch_max_queued, 1, 100'000'000)},
    {"batch.max_items", "items one batch may hold",
     uint_field(&settings::batch_max_items, 1, 100'000'000)},
    {"batch.max_body", "largest body POST /v1/batches accepts",
     size_field(&settings::batch_max_body, 1024)},
    {"batch.call_timeout", "time one attempt of one batch item may take",
     duration_field(&settings::batch_call_timeout, ms(10))},
    {"batch.deadline", "default time a whole batch may take",
     duration_field(&settings::batch_deadline, ms(100))},
    {"batch.max_attempts", "attempts per batch item, the first included",
     uint_field(&settings::batch_max_attempts, 1, 100)},
    {"batch.retry_base", "first retry backoff (doubling, full jitter)",
     duration_field(&settings::batch_retry_base, ms(1))},
    {"batch.retry_cap", "longest retry backoff",
     duration_field(&settings::batch_retry_cap, ms(1))},
    {"repl.min_workers", "warm interpreters kept per language",
     uint_field(&settings::repl_min_workers, 0, 256)},
    {"repl.max_workers", "interpreters per language at most",
     uint_field(&settings::repl_max_workers, 1, 1024)},
    {"repl.timeout", "default time one execution may take",
     duration_field(&settings::repl_timeout, ms(10))},
    {"repl.max_timeout", "longest timeout an execution may ask for",
     duration_field(&settings::repl_max_timeout, ms(10))},
    {"repl.output_cap", "characters of stdout and of stderr kept per execution",
     uint_field(&settings::repl_output_cap, 1, 100'000'000)},
    {"repl.memory_limit", "memory of one interpreter and its children (cgroup)",
     size_field(&settings::repl_memory_limit, 16 << 20)},
    {"repl.address_space", "address space of each interpreter process (RLIMIT_AS)",
     size_field(&settings::repl_address_space, 64 << 20)},
    {"repl.processes", "processes one interpreter may have (cgroup pids)",
     uint_field(&settings::repl_processes, 1, 100'000)},
    {"repl.idle_timeout", "idle time before a worker above repl.min_workers stops",
     duration_field(&settings::repl_idle_timeout, ms(100))},
    {"repl.session_idle", "idle time before a session ends",
     duration_field(&settings::repl_session_idle, ms(100))},
    {"repl.temp_dir", "where interpreters' private directories are made",
     string_field(&settings::repl_temp_dir, true)},
    {"repl.allow_unsandboxed", "run interpreters with rlimits only when bubblewrap cannot",
     bool_field(&settings::repl_allow_unsandboxed)},
    {"repl.bubblewrap", "the bubblewrap program that sandboxes interpreters",
     string_field(&settings::repl_bubblewrap, false)},
    {"memory.dims", "dimensions of memory vectors (a remote model's own size)",
     uint_field(&settings::memory_dims, 8, 8192)},
    {"memory.embedder", "hash (built in, offline), ollama (/api/embed) or openai (/v1/embeddings)",
     choice_field(&settings::memory_embedder, {"hash", "ollama", "openai"})},
    {"memory.embed_model", "embedding model of the ollama or openai embedder",
     string_field(&settings::memory_embed_model, true)},
    {"memory.embed_url", "embedder base URL (empty = llm.ollama_url or llm.openai_url)",
     optional_url_field(&settings::memory_embed_url)},
    {"memory.embed_api_key", "bearer key of the openai embedder (empty = llm.openai_api_key)",
     string_field(&settings::memory_embed_api_key, true), true},
    {"memory.embed_send_dims", "send memory.dims as OpenAI's dimensions (text-embedding-3 "
                               "models shorten their vectors to it)",
     bool_field(&settings::memory_embed_send_dims)},
    {"memory.embed_batch", "texts sent in one embedding request at most",
     uint_field(&settings::memory_embed_batch, 1, 2048)},
    {"memory.embed_concurrency", "embedding requests in flight at once",
     uint_field(&settings::memory_embed_concurrency, 1, 256)},
    {"memory.embed_timeout", "time one embedding request may take",
     duration_field(&settings::memory_embed_timeout, ms(100))},
    {"memory.vector_backend", "semantic search: hnsw (built in) or qdrant (its REST API)",
     choice_field(&settings::memory_vector_backend, {"hnsw", "qdrant"})},
    {"memory.qdrant_url", "Qdrant REST base URL",
     url_field(&settings::memory_qdrant_url, 6333)},
    {"memory.qdrant_collection", "Qdrant collection of this node's semantic vectors",
     string_field(&settings::memory_qdrant_collection, false)},
    {"memory.qdrant_api_key", "Qdrant api-key header, if the server wants one",
     string_field(&settings::memory_qdrant_api_key, true), true},
    {"memory.qdrant_timeout", "time one Qdrant request may take",
     duration_field(&settings::memory_qdrant_timeout, ms(100))},
    {"memory.similarity_weight", "episodic score: this x cosine + the rest x recency",
     double_field(&settings::memory_similarity_weight, 0, 1)},
    {"memory.recency_horizon", "age at which an episode's recency reaches 0",
     duration_field(&settings::memory_recency_horizon, ms(1000))},
    {"memory.working_items", "items of working memory kept per conversation",
     uint_field(&settings::memory_working_items, 1, 100'000)},
    {"memory.index_ef_search", "HNSW search breadth of the semantic tier (recall vs speed)",
     uint_field(&settings::memory_index_ef_search, 1, 10'000)},
    {"memory.index_m", "HNSW links per vector of the semantic tier",
     uint_field(&settings::memory_index_m, 2, 128)},
    {"memory.purge_every", "how often expired items are erased and failed embeddings retried",
     duration_field(&settings::memory_purge_every, ms(100))},
    {"memory.consolidate_every", "how often episodes are consolidated (0 = on request only)",
     duration_field(&settings::memory_consolidate_every, ms(0))},
    {"memory.in_chat", "each chat turn asks the memory tiers and is archived in them",
     bool_field(&settings::memory_in_chat)},
    {"memory.chat_working", "working-memory items a chat turn asks for (0 = none)",
     uint_field(&settings::memory_chat_working, 0, 100)},
    {"memory.chat_episodic", "episodic items a chat turn asks for (0 = none)",
     uint_field(&settings::memory_chat_episodic, 0, 100)},
    {"memory.chat_semantic", "semantic items a chat turn asks for (0 = none)",
     uint_field(&settings::memory_chat_semantic, 0, 100)},
    {"rlm.system_prompt_file", "the root model's instructions in RLM runs",
     string_field(&settings::rlm_system_prompt_file, false)},
    {"rlm.max_iterations", "turns of an RLM run before the last-answer request",
     uint_field(&settings::rlm_max_iterations, 1, 10'000)},
    {"rlm.turn_timeout", "time one root-model call of an RLM run may take",
     duration_field(&settings::rlm_turn_timeout, ms(100))},
    {"rlm.max_errors", "turns in a row with failing code before a run ends (0 = no limit)",
     uint_field(&settings::rlm_max_errors, 0, 10'000)},
    {"rlm.output_cap", "characters of each code block's output fed back to the root model",
     uint_field(&settings::rlm_output_cap, 100, 10'000'000)},
    {"rlm.max_depth", "default recursion depth of runs (1: rlm_query is a plain call)",
     uint_field(&settings::rlm_max_depth, 1, 64)},
    {"rlm.max_depth_limit", "the largest max_depth a run may ask for",
     uint_field(&settings::rlm_max_depth_limit, 1, 64)},
    {"rlm.sub_call_concurrency", "llm_query calls of one run at once",
     uint_field(&settings::rlm_sub_call_concurrency, 1, 4096)},
    {"rlm.child_concurrency", "child runs (rlm_query) of one run at once",
     uint_field(&settings::rlm_child_concurrency, 1, 1024)},
    {"rlm.child_start_timeout", "how long a child run waits for an interpreter before failing",
     duration_field(&settings::rlm_child_start_timeout, ms(100))},
    {"rlm.workers", "Python interpreters for runs; each run and child run holds one",
     uint_field(&settings::rlm_workers, 1, 4096)},
    {"rlm.context_window", "tokens of the root model's context window",
     uint_field(&settings::rlm_context_window, 0, 100'000'000)},
    {"rlm.compact_at", "share of the window at which history is compacted (0 = never)",
     double_field(&settings::rlm_compact_at, 0, 1)},
    {"rlm.max_context_bytes", "largest context a run takes (inline, uploaded or a file)",
     size_field(&settings::rlm_max_context_bytes, 1)},
    {"rlm.context_dirs", "directories whose files runs may name as context_file (commas)",
     string_field(&settings::rlm_context_dirs, true)},
    {"rlm.memory_limit", "memory of one run's interpreter (cgroup); holds the context",
     size_field(&settings::rlm_memory_limit, 64 << 20)},
    {"rlm.address_space", "address space of one run's interpreter (RLIMIT_AS)",
     size_field(&settings::rlm_address_space, 64 << 20)},
    {"conversations.max_live", "conversation actors kept in memory (LRU)",
     uint_field(&settings::conversations_max_live, 1, 10'000'000)},
    {"conversations.history_window", "messages of history sent to the model",
     uint_field(&settings::conversations_history_window, 1, 100'000)},
    {"conversations.system_prompt", "system prompt of new conversations",
     string_field(&settings::conversations_system_prompt, true)},
    {"conversations.max_message_bytes", "largest user message accepted",
     size_field(&settings::conversations_max_message_bytes, 1)},
    {"conversations.max_queued", "messages that may wait on one conversation",
     uint_field(&settings::conversations_max_queued, 1, 100'000)},
    {"store.map_size", "LMDB map size (address space, not disk)",
     size_field(&settings::store_map_size, 1 << 20)},
    {"remote.port", "port publishing the node's actors over CAF (0 = off)",
     uint_field(&settings::remote_port, 0, 65535)},
    {"remote.address", "address CAF remoting binds",
     string_field(&settings::remote_address, false)},
    {"remote.allow_unauthenticated", "allow remoting beyond loopback without authentication",
     bool_field(&settings::remote_allow_unauthenticated)},
  };
  return table;
}

const option* find_option(const std::string& key) {
  for (auto& opt : options()) {
    if (opt.key == key) {
      return &opt;
    }
  }
  return nullptr;
}

// Short flags people expect; they map onto full keys.
std::string expand_alias(const std::string& name) {
  static const std::vector<std::pair<std::string, std::string>> aliases = {
    {"port", "http.port"},         {"address", "http.address"},
    {"data-dir", "node.data_dir"}, {"provider", "llm.provider"},
    {"model", "llm.model"},        {"log-level", "node.log_level"},
  };
  for (auto& [alias, key] : aliases) {
    if (name == alias) {
      return key;
    }
  }
  return name;
}

std::string env_name(const std::string& key) {
  std::string out = "KOWALSKI_";
  for (char c : key) {
    out += c == '.' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out;
}

std::optional<config_error> apply(settings& s, const std::string& key,
                                  const std::string& value, const std::string& source) {
  auto opt = find_option(key);
  if (opt == nullptr) {
    return config_error{key, value, source, "a known key (see kowalski serve --help)"};
  }
  auto expected = opt->set(s, value);
  if (!expected.empty()) {
    return config_error{key, opt->secret ? "<hidden>" : value, source, expected};
  }
  return std::nullopt;
}

std::optional<config_error> apply_file(settings& s, const std::string& path) {
  std::ifstream in{path};
  if (!in) {
    return config_error{"config-file", path, "flag", "a readable file"};
  }
  std::string line;
  std::string section;
  for (int lineno = 1; std::getline(in, line); ++lineno) {
    auto text = trim(line);
    if (text.empty() || text[0] == '#' || text[0] == ';') {
      continue;
    }
    auto where = "file " + path + ":" + std::to_string(lineno);
    if (text.front() == '[') {
      if (text.back() != ']') {
        return config_error{"section", text, where, "a section header like [http]"};
      }
      section = trim(text.substr(1, text.size() - 2));
      continue;
    }
    auto eq = text.find('=');
    if (eq == std::string::npos) {
      return config_error{"line", text, where, "key = value"};
    }
    auto key = trim(text.substr(0, eq));
    auto value = trim(text.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
      value = value.substr(1, value.size() - 2);
    }
    if (!section.empty()) {
      key = section + "." + key;
    }
    if (auto err = apply(s, key, value, where)) {
      return err;
    }
  }
  return std::nullopt;
}

}  // namespace

std::string config_error::message() const {
  return "invalid setting " + key + "=\"" + value + "\" (from " + source + "): expected "
         + expected;
}

env_lookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    if (auto v = std::getenv(name.c_str())) {
      return std::string{v};
    }
    return std::nullopt;
  };
}

load_result load_settings(const std::vector<std::string>& flags, const env_lookup& env) {
  load_result result;
  settings s;

  // Split flags first: the config file they name is the second layer.
  std::vector<std::pair<std::string, std::string>> pairs;
  std::optional<std::string> config_file;
  for (std::size_t i = 0; i < flags.size(); ++i) {
    auto& arg = flags[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2) {
      result.error = config_error{"argument", arg, "command line", "a --key=value flag"};
      return result;
    }
    auto body = arg.substr(2);
    std::string name, value;
    if (auto eq = body.find('='); eq != std::string::npos) {
      name = body.substr(0, eq);
      value = body.substr(eq + 1);
    } else if (i + 1 < flags.size()) {
      name = body;
      value = flags[++i];
    } else {
      result.error = config_error{body, "", "flag", "a value after --" + body};
      return result;
    }
    if (name == "config-file") {
      config_file = value;
    } else {
      pairs.emplace_back(expand_alias(name), value);
    }
  }
  if (!config_file) {
    config_file = env("KOWALSKI_CONFIG_FILE");
  }

  // Layer 2: the config file, named or the shipped one if present.
  if (!config_file && std::ifstream{"config/kowalski.conf"}.good()) {
    config_file = "config/kowalski.conf";
  }
  if (config_file) {
    if (auto err = apply_file(s, *config_file)) {
      result.error = err;
      return result;
    }
    result.config_file = *config_file;
  }

  // Layer 3: the environment; ecosystem names first, ours override them.
  const std::pair<const char*, const char*> ecosystem[] = {
    {"OLLAMA_HOST", "llm.ollama_url"},
    {"OPENAI_BASE_URL", "llm.openai_url"},
    {"OPENAI_API_KEY", "llm.openai_api_key"},
  };
  for (auto& [var, key] : ecosystem) {
    // Overridden anyway: a value meant for another tool must not stop us.
    auto ours = env(env_name(key));
    auto flagged = std::any_of(pairs.begin(), pairs.end(),
                               [&](const auto& kv) { return kv.first == key; });
    if ((ours && !ours->empty()) || flagged) {
      continue;
    }
    if (auto v = env(var); v && !v->empty()) {
      if (auto err = apply(s, key, *v, std::string{"environment "} + var)) {
        result.error = err;
        return result;
      }
    }
  }
  for (auto& opt : options()) {
    auto var = env_name(opt.key);
    if (auto v = env(var)) {
      if (auto err = apply(s, opt.key, *v, "environment " + var)) {
        result.error = err;
        return result;
      }
    }
  }

  // Layer 4: flags.
  for (auto& [key, value] : pairs) {
    if (auto err = apply(s, key, value, "flag --" + key)) {
      result.error = err;
      return result;
    }
  }

  // Cross-field rules.
  if (!is_loopback_address(s.http_address) && s.http_token.empty()) {
    result.error = config_error{"http.token", "", "http.address=" + s.http_address,
                                "a token (KOWALSKI_HTTP_TOKEN) when the gateway binds "
                                "beyond loopback"};
    return result;
  }
  if (s.remote_port != 0 && !is_loopback_address(s.remote_address)
      && !s.remote_allow_unauthenticated) {
    result.error = config_error{"remote.address", s.remote_address, "remote.port set",
                                "a loopback address, or remote.allow_unauthenticated=true: "
                                "CAF remoting has no authentication"};
    return result;
  }
  if (s.llm_provider == "openai" && s.openai_api_key.empty()
      && s.openai_url.find("api.openai.com") != std::string::npos) {
    result.error = config_error{"llm.openai_api_key", "", "llm.provider=openai",
                                "a key in OPENAI_API_KEY for api.openai.com"};
    return result;
  }
  if (s.memory_embedder != "hash" && s.memory_embed_model.empty()) {
    result.error = config_error{"memory.embed_model", "", "memory.embedder=" + s.memory_embedder,
                                "the embedding model to ask for (e.g. nomic-embed-text)"};
    return result;
  }
  if (!s.memory_embed_url.empty()) {
    // A bare host gets the embedder's usual scheme and port: https for
    // OpenAI, http on 11434 for Ollama.
    auto url = s.memory_embed_url;
    bool openai = s.memory_embedder == "openai";
    if (openai && url.find("://") == std::string::npos) {
      url = "https://" + url;
    }
    s.memory_embed_url = *net::normalize_base_url(url, openai ? 443 : 11434);
  }
  auto collection_ok = [](const std::string& c) {
    return !c.empty() && c.size() <= 255
           && c.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789_-.") == std::string::npos;
  };
  if (!collection_ok(s.memory_qdrant_collection)) {
    result.error = config_error{"memory.qdrant_collection", s.memory_qdrant_collection,
                                "settings", "letters, digits, '_', '-' or '.'"};
    return result;
  }
  result.value = std::move(s);
  return result;
}

std::string describe_settings() {
  settings defaults;
  std::string out;
  for (auto& opt : options()) {
    out += "  --" + opt.key;
    out.append(opt.key.size() < 34 ? 34 - opt.key.size() : 1, ' ');
    out += opt.help;
    if (!opt.secret) {
      auto value = opt.set.show(defaults);
      out += " (default " + (value.empty() ? std::string{"empty"} : value) + ")";
    }
    out += " [" + env_name(opt.key) + "]\n";
  }
  return out;
}

bool is_loopback_address(const std::string& address) {
  return address == "localhost" || address == "::1" || address.rfind("127.", 0) == 0;
}

}  // namespace kowalski
