// Node assembly: store, supervision tree, gateway, remoting; orderly shutdown.
#include "runtime/node/node.hpp"

#include "actors/batch_coordinator.hpp"
#include "actors/conversation_manager.hpp"
#include "actors/repl_pool.hpp"
#include "actors/consolidation.hpp"
#include "actors/embedder.hpp"
#include "actors/memory_tiers.hpp"
#include "actors/rlm_manager.hpp"
#include "actors/llm_router.hpp"
#include "actors/llm_worker.hpp"
#include "config/node_config.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/llm/transcript.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/net/http_server.hpp"
#include "runtime/node/batch_routes.hpp"
#include "runtime/node/gateway.hpp"
#include "runtime/process/drivers.hpp"
#include "runtime/store/store.hpp"
#include "runtime/store/store_writer.hpp"
#include "runtime/supervision/supervisor.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <map>
#include <mutex>

#include <unistd.h>

namespace kowalski {

struct node::impl {
  settings cfg;
  std::shared_ptr<store::environment> env;
  std::shared_ptr<net::http_client> client;
  std::shared_ptr<const llm_backend> backend;
  std::unique_ptr<node_config> caf_cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::unique_ptr<net::http_server> server;
  uint16_t remote_port = 0;
  caf::actor front;  // published over CAF remoting, if enabled
  std::shared_ptr<spdlog::logger> log = logging::get("node");

  mutable std::mutex mtx;
  caf::actor root, writer, llm_sup, router, batches, manager;
  std::map<std::string, caf::actor> repl_pools;  // by language, current handles
  caf::actor repl;  // routes REPL requests to the pools; stable
  caf::actor rlm_pool;  // the Python interpreters of RLM runs, current handle
  caf::actor rlm_repl;  // routes RLM runs' executions to rlm_pool; stable
  caf::actor rlm;
  std::map<std::string, caf::actor> memory_tiers;
  caf::actor embedder;  // a remote embedder; none with the built-in one
  std::string rlm_prompt;  // empty when the prompt file could not be read
  std::string rlm_unavailable;
  process::sandbox_mode sandbox = process::sandbox_mode::bubblewrap;
  bool sandbox_ok = true;
  std::string sandbox_detail;
  std::condition_variable cv;
  bool stop_requested = false;
  bool failed = false;

  template <class F>
  void set(F&& f) {
    std::lock_guard<std::mutex> guard{mtx};
    f();
  }

  caf::actor get(caf::actor impl::*member) const {
    std::lock_guard<std::mutex> guard{mtx};
    return this->*member;
  }
};

namespace {

bool make_backend(const settings& s, std::shared_ptr<net::http_client> client,
                  std::shared_ptr<const llm_backend>& out, std::string& error) {
  auto b = std::make_shared<llm_backend>();
  b->client = std::move(client);
  b->request_timeout = s.client_request_timeout;
  if (s.llm_provider == "ollama") {
    b->kind = llm::provider::ollama;
    b->base_url = s.ollama_url;
  } else if (s.llm_provider == "openai") {
    b->kind = llm::provider::openai;
    b->base_url = s.openai_url;
    b->api_key = s.openai_api_key;
  } else {
    b->kind = llm::provider::replay;
    b->transcript = llm::transcript::load(s.replay_transcript, error);
    if (!b->transcript) {
      return false;
    }
  }
  out = std::move(b);
  return true;
}

std::vector<supervision::child_spec> worker_specs(std::shared_ptr<const llm_backend> b,
                                                  unsigned count) {
  std::vector<supervision::child_spec> specs;
  for (unsigned i = 0; i < count; ++i) {
    specs.push_back({"llm_worker_" + std::to_string(i),
                     [b](caf::actor_system& sys) { return spawn_llm_worker(sys, b); },
                     supervision::restart_policy::permanent});
  }
  return specs;
}

// A pool's settings; languages this node cannot run get an unavailable pool
// that says why.
// The memory tiers by name, as the supervisor's current handles.
std::function<caf::actor(const std::string&)> memory_lookup(node::impl* p) {
  return [p](const std::string& tier) {
    std::lock_guard<std::mutex> guard{p->mtx};
    auto i = p->memory_tiers.find(tier);
    return i == p->memory_tiers.end() ? caf::actor{} : i->second;
  };
}

// "a, b,c" -> {"a", "b", "c"}: list settings.
std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    auto comma = text.find(',', start);
    auto item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    auto b = item.find_first_not_of(" \t");
    auto e = item.find_last_not_of(" \t");
    if (b != std::string::npos) {
      out.push_back(item.substr(b, e - b + 1));
    }
    if (comma == std::string::npos) {
      break;
    }
    start = comma + 1;
  }
  return out;
}

repl_pool_options repl_options(node::impl* p, const std::string& language) {
  auto& s = p->cfg;
  repl_pool_options o;
  o.language = language;
  o.min_workers = s.repl_min_workers;
  o.max_workers = s.repl_max_workers;
  o.idle_timeout = s.repl_idle_timeout;
  o.session_idle = s.repl_session_idle;
  auto& w = o.worker;
  w.language = language;
  w.sandbox = p->sandbox;
  w.bubblewrap = s.repl_bubblewrap;
  w.output_cap = s.repl_output_cap;
  w.default_timeout = s.repl_timeout;
  w.max_timeout = std::max(s.repl_timeout, s.repl_max_timeout);
  w.temp_root = s.repl_temp_dir.empty() ? std::filesystem::temp_directory_path().string()
                                        : s.repl_temp_dir;
  w.limits.cgroup_memory = s.repl_memory_limit;
  w.limits.address_space = s.repl_address_space;
  w.limits.cgroup_pids = s.repl_processes;
  w.limits.processes = s.repl_processes;
  w.llm = p->get(&node::impl::batches);
  w.default_model = s.llm_model;
  // What each language runs, and what must be installed for it.
  std::vector<std::string> needs;
  if (language == "python3") {
    // -u: what the code printed before a crash or a timeout is not lost.
    w.command = {"/usr/bin/python3", "-I", "-B", "-u", "-c", process::python_driver()};
    needs = {"/usr/bin/python3"};
  } else if (language == "node") {
    w.command = {"/usr/bin/node", "-e", process::node_driver()};
    needs = {"/usr/bin/node"};
  } else if (language == "bash") {
    w.command = {"/usr/bin/python3", "-I", "-B", "-c", process::bash_driver()};
    needs = {"/usr/bin/python3", "/bin/bash"};
  } else {
    // java and rust compile each snippet: slower, and once, not persistent.
    w.command = {"/usr/bin/python3", "-I", "-B", "-c", process::oneshot_driver()};
    needs = language == "java"
              ? std::vector<std::string>{"/usr/bin/python3", "/usr/bin/javac", "/usr/bin/java"}
              : std::vector<std::string>{"/usr/bin/python3", "/usr/bin/rustc"};
    w.read_only = {"/etc/alternatives", "/etc/java-17-openjdk"};
    // The JVM reserves address space far beyond its heap; the cgroup's
    // memory limit holds it instead.
    w.limits.address_space = 0;
    w.default_timeout = std::max(s.repl_timeout, std::chrono::milliseconds{60'000});
    o.min_workers = 0;
  }
  if (!p->sandbox_ok) {
    o.available = false;
    o.detail = p->sandbox_detail;
  }
  for (auto& path : needs) {
    if (o.available && ::access(path.c_str(), X_OK) != 0) {
      o.available = false;
      o.detail = path + " is not installed";
    }
  }
  if (o.available) {
    o.detail = w.command.front();
  }
  return o;
}

// Routes the executions of RLM runs to their own pool (larger limits, out
// of the REPL API's sight), whichever handle the supervisor has given it.
caf::behavior rlm_repl_front(caf::event_based_actor* self, node::impl* p) {
  auto pool = [p] {
    std::lock_guard<std::mutex> guard{p->mtx};
    return p->rlm_pool;
  };
  return {
    [=](repl_execute& req) -> caf::result<repl_result> {
      auto h = pool();
      if (!h) {
        return make_error(errc::unavailable, "the RLM interpreters are not running");
      }
      self->delegate(h, std::move(req));
      return caf::delegated<repl_result>{};
    },
    [=](end_repl_session& cmd) -> caf::result<bool> {
      auto h = pool();
      if (!h) {
        return false;
      }
      self->delegate(h, std::move(cmd));
      return caf::delegated<bool>{};
    },
  };
}

// Routes REPL requests to the pool of their language, whichever handle the
// supervisor has given it now.
caf::behavior repl_front(caf::event_based_actor* self, node::impl* p) {
  auto pools = [p] {
    std::lock_guard<std::mutex> guard{p->mtx};
    return p->repl_pools;
  };
  return {
    [=](repl_execute& req) -> caf::result<repl_result> {
      auto all = pools();
      auto i = all.find(req.language);
      if (i == all.end()) {
        std::string known;
        for (auto& [lang, h] : all) {
          known += (known.empty() ? "" : ", ") + lang;
        }
        return make_error(errc::not_found,
                          "no REPL for language \"" + req.language + "\"; this node has "
                            + (known.empty() ? std::string{"none"} : known),
                          "language");
      }
      self->delegate(i->second, std::move(req));
      return caf::delegated<repl_result>{};
    },
    [=](end_repl_session& cmd) -> caf::result<bool> {
      auto all = pools();
      auto rp = self->make_response_promise<bool>();
      auto left = std::make_shared<std::size_t>(all.size());
      auto found = std::make_shared<bool>(false);
      if (all.empty()) {
        rp.deliver(false);
      }
      for (auto& [lang, h] : all) {
        self->request(h, std::chrono::seconds(10), cmd)
          .then([=](bool ended) mutable {
                  *found = *found || ended;
                  if (--*left == 0) {
                    rp.deliver(*found);
                  }
                },
                [=](caf::error&) mutable {
                  if (--*left == 0) {
                    rp.deliver(*found);
                  }
                });
      }
      return rp;
    },
    [=](stats_atom) -> caf::result<std::vector<repl_pool_info>> {
      auto all = pools();
      auto rp = self->make_response_promise<std::vector<repl_pool_info>>();
      auto infos = std::make_shared<std::vector<repl_pool_info>>();
      auto left = std::make_shared<std::size_t>(all.size());
      if (all.empty()) {
        rp.deliver(*infos);
      }
      for (auto& [lang, h] : all) {
        self->request(h, std::chrono::seconds(10), stats_atom::value)
          .then([=](repl_pool_info& info) mutable {
                  infos->push_back(std::move(info));
                  if (--*left == 0) {
                    rp.deliver(*infos);
                  }
                },
                [=](caf::error&) mutable {
                  if (--*left == 0) {
                    rp.deliver(*infos);
                  }
                });
      }
      return rp;
    },
  };
}

// The tree: root (one_for_all) -> store writer, llm supervisor, router,
// conversation manager. Start functions run inside the root supervisor, one
// at a time, so later children see the handles of earlier ones.
std::vector<supervision::child_spec> root_specs(node::impl* p) {
  std::vector<supervision::child_spec> specs;
  specs.push_back({"store_writer", [p](caf::actor_system& sys) {
                     auto h = store::spawn_store_writer(sys, p->env);
                     p->set([&] { p->writer = h; });
                     return h;
                   }});
  specs.push_back({"llm_workers", [p](caf::actor_system& sys) {
                     supervision::supervisor_options opts;
                     opts.name = "llm_workers";
                     auto h = supervision::spawn_supervisor(
                       sys, opts, worker_specs(p->backend, p->cfg.llm_workers));
                     p->set([&] { p->llm_sup = h; });
                     return h;
                   }});
  specs.push_back({"llm_router", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     llm_router_options opts;
                     opts.queue_limit = s.llm_queue_limit;
                     opts.call_timeout = s.client_request_timeout + std::chrono::seconds(10);
                     opts.request_budget = s.client_request_timeout;
                     opts.rates = {s.llm_rate_rps, s.llm_rate_tpm};
                     opts.per_model = s.llm_model_concurrency;
                     for (auto& [model, n] : s.llm_model_limits) {
                       opts.model_limits[model] = n;
                     }
                     auto h = spawn_llm_router(sys, p->get(&node::impl::llm_sup), opts);
                     p->set([&] { p->router = h; });
                     return h;
                   }});
  specs.push_back({"batches", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     batch_coordinator_options opts;
                     opts.max_queued = s.batch_max_queued;
                     opts.max_items = s.batch_max_items;
                     opts.concurrency = s.llm_workers;
                     opts.call_timeout = s.batch_call_timeout;
                     opts.deadline = s.batch_deadline;
                     opts.max_attempts = s.batch_max_attempts;
                     opts.backoff = {s.batch_retry_base, s.batch_retry_cap};
                     auto h = spawn_batch_coordinator(sys, p->env, p->get(&node::impl::writer),
                                                      p->get(&node::impl::router), opts);
                     p->set([&] { p->batches = h; });
                     return h;
                   }});
  for (std::string language : {"python3", "node", "bash", "java", "rust"}) {
    specs.push_back({"repl_" + language, [p, language](caf::actor_system& sys) {
                       auto h = spawn_repl_pool(sys, repl_options(p, language));
                       p->set([&] { p->repl_pools[language] = h; });
                       return h;
                     }});
  }
  specs.push_back({"repl_rlm", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     auto o = repl_options(p, "python3");
                     // A run's interpreter holds its whole context.
                     o.worker.limits.cgroup_memory = s.rlm_memory_limit;
                     o.worker.limits.address_space = s.rlm_address_space;
                     o.worker.max_timeout = std::max(o.worker.max_timeout,
                                                     std::chrono::milliseconds{3'600'000});
                     o.max_workers = s.rlm_workers;
                     o.min_workers = std::min(o.min_workers, s.rlm_workers);
                     // Runs end their sessions; a slow model must not end one
                     // (a run's session idles only while it waits for the root
                     // model, at most four attempts of rlm.turn_timeout). What
                     // is idle for longer belongs to a run that died.
                     o.session_idle = std::max<std::chrono::milliseconds>(
                       std::chrono::hours(1), s.rlm_turn_timeout * 4 + std::chrono::minutes(10));
                     auto h = spawn_repl_pool(sys, o);
                     p->set([&] { p->rlm_pool = h; });
                     return h;
                   }});
  specs.push_back({"rlm", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     rlm_manager_options m;
                     auto& o = m.run;
                     o.system_prompt = p->rlm_prompt;
                     o.default_model = s.llm_model;
                     o.max_iterations = s.rlm_max_iterations;
                     o.turn_timeout = s.rlm_turn_timeout;
                     o.repl_timeout = std::max(s.repl_timeout, std::chrono::milliseconds{60'000});
                     o.max_errors = s.rlm_max_errors;
                     o.output_cap = s.rlm_output_cap;
                     o.max_depth = s.rlm_max_depth;
                     o.sub_call_concurrency = s.rlm_sub_call_concurrency;
                     o.child_concurrency = s.rlm_child_concurrency;
                     o.child_start_timeout = s.rlm_child_start_timeout;
                     o.context_window = s.rlm_context_window;
                     o.compact_at = s.rlm_compact_at;
                     o.llm = p->get(&node::impl::batches);
                     o.repl = p->rlm_repl;
                     o.writer = p->get(&node::impl::writer);
                     m.context_dir = s.data_dir + "/rlm-contexts";
                     m.max_context_bytes = s.rlm_max_context_bytes;
                     m.max_depth_limit = std::max(s.rlm_max_depth_limit, s.rlm_max_depth);
                     m.context_dirs = split_list(s.rlm_context_dirs);
                     m.models = p->get(&node::impl::router);
                     auto h = spawn_rlm_manager(sys, p->env, m);
                     p->set([&] { p->rlm = h; });
                     return h;
                   }});
  auto& cfg = p->cfg;
  memory::embedder_spec embed;
  embed.kind = cfg.memory_embedder;
  embed.model = cfg.memory_embed_model;
  embed.dims = cfg.memory_dims;
  embed.batch = cfg.memory_embed_batch;
  embed.concurrency = cfg.memory_embed_concurrency;
  embed.timeout = cfg.memory_embed_timeout;
  // About 8,191 tokens at 4 bytes each would still be refused: cut before.
  embed.max_text_bytes = embed.kind == "openai" ? 24'000 : 0;
  embed.send_dims = embed.kind == "openai" && cfg.memory_embed_send_dims;
  if (embed.kind == "openai") {
    embed.url = cfg.memory_embed_url.empty() ? cfg.openai_url : cfg.memory_embed_url;
    embed.api_key = cfg.memory_embed_api_key.empty() ? cfg.openai_api_key
                                                      : cfg.memory_embed_api_key;
  } else {
    embed.url = cfg.memory_embed_url.empty() ? cfg.ollama_url : cfg.memory_embed_url;
  }
  if (embed.kind != "hash") {
    specs.push_back({"embedder", [p, embed](caf::actor_system& sys) {
                       auto h = spawn_embedder(sys, embed, p->client);
                       p->set([&] { p->embedder = h; });
                       return h;
                     }});
  }
  auto memory_opts = [p, embed] {
    auto& s = p->cfg;
    memory_options m;
    m.dims = s.memory_dims;
    if (embed.kind != "hash") {
      m.embedder = p->get(&node::impl::embedder);
      m.embedder_name = memory::embedder_name(embed);
      // Adds may wait behind other batches and be retried; a search is
      // worth less than its caller's patience (chat turns leave a slow tier
      // out after 2 s; HTTP searches end at 30 s).
      m.embed_timeout = s.memory_embed_timeout * 2;
      m.embed_search_timeout = std::min<std::chrono::milliseconds>(s.memory_embed_timeout,
                                                                   std::chrono::seconds(10));
      // In all: the queue, then up to 3 calls; within the HTTP routes'
      // limits (2 minutes for adds, 30 s for searches).
      m.embed_wait = std::min<std::chrono::milliseconds>(
        m.embed_timeout + s.memory_embed_timeout * 3 + std::chrono::seconds(5),
        std::chrono::seconds(110));
      m.embed_search_wait = std::min<std::chrono::milliseconds>(
        m.embed_search_timeout + s.memory_embed_timeout * 3, std::chrono::seconds(25));
    }
    if (s.memory_vector_backend == "qdrant") {
      memory::qdrant_spec q;
      q.url = s.memory_qdrant_url;
      q.collection = s.memory_qdrant_collection;
      q.api_key = s.memory_qdrant_api_key;
      q.timeout = s.memory_qdrant_timeout;
      m.qdrant = q;
      m.client = p->client;
    }
    m.similarity_weight = s.memory_similarity_weight;
    m.recency_horizon = s.memory_recency_horizon;
    m.working_items = s.memory_working_items;
    m.index_ef_search = s.memory_index_ef_search;
    m.index_m = s.memory_index_m;
    m.index_path = s.data_dir + "/semantic.hnsw";
    m.purge_every = s.memory_purge_every;
    m.writer = p->get(&node::impl::writer);
    return m;
  };
  specs.push_back({"working_memory", [p, memory_opts](caf::actor_system& sys) {
                     auto h = spawn_working_memory(sys, memory_opts());
                     p->set([&] { p->memory_tiers["working"] = h; });
                     return h;
                   }});
  specs.push_back({"episodic_memory", [p, memory_opts](caf::actor_system& sys) {
                     auto h = spawn_episodic_memory(sys, p->env, memory_opts());
                     p->set([&] { p->memory_tiers["episodic"] = h; });
                     return h;
                   }});
  specs.push_back({"semantic_memory", [p, memory_opts](caf::actor_system& sys) {
                     auto h = spawn_semantic_memory(sys, p->env, memory_opts());
                     p->set([&] { p->memory_tiers["semantic"] = h; });
                     return h;
                   }});
  specs.push_back({"consolidation", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     consolidation_options o;
                     o.llm = p->get(&node::impl::batches);
                     o.model = s.llm_model;
                     o.memory = memory_lookup(p);
                     o.env = p->env;
                     o.writer = p->get(&node::impl::writer);
                     o.every = s.memory_consolidate_every;
                     auto h = spawn_consolidation(sys, o);
                     p->set([&] { p->memory_tiers["consolidation"] = h; });
                     return h;
                   }});
  specs.push_back({"conversations", [p](caf::actor_system& sys) {
                     auto& s = p->cfg;
                     auto deps = std::make_shared<conversation_deps>();
                     deps->env = p->env;
                     deps->writer = p->get(&node::impl::writer);
                     deps->llm = p->get(&node::impl::router);
                     deps->history_window = s.conversations_history_window;
                     deps->max_queued = s.conversations_max_queued;
                     deps->defaults.temperature = s.llm_temperature;
                     deps->defaults.max_tokens = s.llm_max_tokens;
                     deps->llm_timeout = s.client_request_timeout + std::chrono::seconds(20);
                     deps->memory_tiers = memory_lookup(p);
                     if (s.memory_in_chat) {
                       deps->memory = memory_lookup(p);
                       deps->memory_limits[0] = s.memory_chat_working;
                       deps->memory_limits[1] = s.memory_chat_episodic;
                       deps->memory_limits[2] = s.memory_chat_semantic;
                     }
                     conversation_manager_options opts;
                     opts.max_live = s.conversations_max_live;
                     opts.default_model = s.llm_model;
                     opts.default_system_prompt = s.conversations_system_prompt;
                     auto h = spawn_conversation_manager(sys, deps, opts);
                     p->set([&] { p->manager = h; });
                     return h;
                   }});
  return specs;
}

// The actor published over CAF remoting. It stays put while supervisors
// restart the manager behind it, so peers keep one valid handle, and it
// forwards each request to whichever manager is current.
caf::behavior remote_front(caf::event_based_actor* self, node::impl* p) {
  auto to = [=](caf::actor node::impl::*member, auto&&... xs) -> caf::result<caf::message> {
    auto target = p->get(member);
    if (!target) {
      return make_error(errc::overloaded, "the node is restarting its actors; retry");
    }
    self->delegate(target, std::forward<decltype(xs)>(xs)...);
    return caf::delegated<caf::message>{};
  };
  auto forward = [=](auto&&... xs) {
    return to(&node::impl::manager, std::forward<decltype(xs)>(xs)...);
  };
  auto batches = [=](auto&&... xs) {
    return to(&node::impl::batches, std::forward<decltype(xs)>(xs)...);
  };
  return {
    [=](create_conversation& x) { return forward(std::move(x)); },
    [=](list_conversations& x) { return forward(std::move(x)); },
    [=](get_atom a, std::string& id) { return forward(a, std::move(id)); },
    [=](read_conversation& x) { return forward(std::move(x)); },
    [=](delete_atom a, std::string& id) { return forward(a, std::move(id)); },
    [=](user_message& x) { return forward(std::move(x)); },
    [=](stats_atom a) { return forward(a); },
    [=](submit_batch& x) { return batches(std::move(x)); },
    [=](get_batch& x) { return batches(std::move(x)); },
    [=](list_batches& x) { return batches(std::move(x)); },
    [=](cancel_batch& x) { return batches(std::move(x)); },
    [=](llm_call& x) { return batches(std::move(x)); },
    [=](llm_call_batch& x) { return batches(std::move(x)); },
    [=](repl_execute& x) { return to(&node::impl::repl, std::move(x)); },
    [=](end_repl_session& x) { return to(&node::impl::repl, std::move(x)); },
  };
}

}  // namespace

node::node(std::unique_ptr<impl> p) : impl_(std::move(p)) {
}

std::unique_ptr<node> node::start(const settings& s, std::string& error) {
  logging::init(s.log_level);
  auto p = std::make_unique<impl>();
  p->cfg = s;

  p->env = store::environment::open(s.data_dir, s.store_map_size, error);
  if (!p->env) {
    return nullptr;
  }
  net::http_client_options copts;
  copts.max_idle_per_host = s.client_max_idle_per_host;
  copts.connect_timeout = s.client_connect_timeout;
  copts.request_timeout = s.client_request_timeout;
  copts.threads = s.client_threads;
  p->client = std::make_shared<net::http_client>(copts);
  if (!make_backend(s, p->client, p->backend, error)) {
    return nullptr;
  }

  // The REPL sandbox is probed once; without it REPLs stay off unless the
  // configuration accepts the weaker mode.
  std::string probe;
  auto temp_root = s.repl_temp_dir.empty() ? std::filesystem::temp_directory_path().string()
                                           : s.repl_temp_dir;
  process::sweep_leftovers(temp_root);
  bool cgroups = process::cgroups_writable();
  if (process::bubblewrap_works(s.repl_bubblewrap, probe) && cgroups) {
    p->sandbox = process::sandbox_mode::bubblewrap;
  } else if (!cgroups && probe == "bubblewrap") {
    // Without cgroups, memory and process counts rest on rlimits, which do
    // not bind root: a weaker mode, so it must be asked for.
    probe = "the memory and pids cgroups (v1) are not writable, so memory and process "
            "limits would be rlimits only";
    if (s.repl_allow_unsandboxed) {
      p->sandbox = process::sandbox_mode::bubblewrap;
      p->sandbox_detail = probe + " (repl.allow_unsandboxed)";
      p->log->warn("repl sandbox weakened detail=\"{}\"", probe);
    } else {
      p->sandbox_ok = false;
      p->sandbox_detail = probe + "; set repl.allow_unsandboxed=true to accept that";
      p->log->warn("repl disabled detail=\"{}\"", probe);
    }
  } else if (s.repl_allow_unsandboxed) {
    p->sandbox = process::sandbox_mode::rlimits_only;
    p->sandbox_detail = probe + "; running with rlimits only (repl.allow_unsandboxed)";
    p->log->warn("repl sandbox weakened detail=\"{}\"", probe);
  } else {
    p->sandbox_ok = false;
    p->sandbox_detail = probe + "; set repl.allow_unsandboxed=true to run with rlimits only";
    p->log->warn("repl disabled detail=\"{}\"", probe);
  }

  // Without its instructions the RLM engine stays off and says why.
  {
    std::ifstream in{s.rlm_system_prompt_file};
    std::ostringstream text;
    text << in.rdbuf();
    if (in && !text.str().empty()) {
      p->rlm_prompt = text.str();
    } else {
      p->rlm_unavailable = "rlm.system_prompt_file " + s.rlm_system_prompt_file
                           + " cannot be read";
      p->log->warn("rlm disabled detail=\"{}\"", p->rlm_unavailable);
    }
  }

  p->caf_cfg = std::make_unique<node_config>(s);
  p->sys = std::make_unique<caf::actor_system>(*p->caf_cfg);
  // Stable, and needed by children of the tree: started before it.
  p->repl = p->sys->spawn(repl_front, p.get());
  p->rlm_repl = p->sys->spawn(rlm_repl_front, p.get());

  supervision::supervisor_options root_opts;
  root_opts.name = "node";
  root_opts.kind = supervision::strategy::one_for_all;
  auto root = supervision::spawn_supervisor(*p->sys, root_opts, root_specs(p.get()));
  p->set([&] { p->root = root; });
  auto raw = p.get();
  root->attach_functor([raw](const caf::error& reason) {
    std::lock_guard<std::mutex> guard{raw->mtx};
    if (reason && reason != caf::exit_reason::user_shutdown) {
      raw->failed = true;
      raw->log->critical("supervision tree gave up reason=\"{}\"", caf::to_string(reason));
    }
    raw->cv.notify_all();
  });

  // Wait until the tree is up: the manager is the last child.
  {
    caf::scoped_actor self{*p->sys};
    bool up = false;
    self->request(root, std::chrono::seconds(10), child_atom::value,
                  std::string{"conversations"})
      .receive([&](caf::actor&) { up = true; },
               [&](caf::error& err) { error = "node start: " + caf::to_string(err); });
    if (!up) {
      std::unique_ptr<node> partial{new node(std::move(p))};
      return nullptr;  // partial's destructor stops what did start
    }
  }

  std::unique_ptr<node> n{new node(std::move(p))};
  auto& q = *n->impl_;

  if (s.remote_port != 0) {
    q.front = q.sys->spawn(remote_front, &q);
    auto port = q.sys->middleman().publish(q.front, s.remote_port,
                                           s.remote_address.c_str(), true);
    if (!port) {
      error = "publish conversation manager on " + s.remote_address + ":"
              + std::to_string(s.remote_port) + ": " + q.sys->render(port.error());
      return nullptr;
    }
    q.remote_port = *port;
  }

  net::http_server_options sopts;
  sopts.address = s.http_address;
  sopts.port = s.http_port;
  sopts.threads = s.http_threads;
  sopts.body_limit = s.http_body_limit;
  // Contexts of RLM runs take their own limit, and some room for the JSON
  // around an inline one.
  sopts.body_limit_for = [limit = s.http_body_limit, upload = s.batch_max_body,
                          context = s.rlm_max_context_bytes + (std::size_t{1} << 20)](
                           const std::string& method, const std::string& target) {
    if (!is_batch_upload(method, target)) {
      return limit;
    }
    return target.rfind("/v1/rlm/", 0) == 0 ? context : upload;
  };
  sopts.request_timeout = s.http_request_timeout;
  sopts.idle_timeout = s.http_idle_timeout;
  q.server = std::make_unique<net::http_server>(sopts, make_gateway(*n));
  if (auto ec = q.server->start()) {
    error = "listen on " + s.http_address + ":" + std::to_string(s.http_port) + ": "
            + ec.message();
    return nullptr;
  }
  q.log->info("node started http={}:{} provider={} model={} data_dir={} remote_port={}",
              s.http_address, q.server->port(), s.llm_provider, s.llm_model, s.data_dir,
              q.remote_port);
  return n;
}

node::~node() {
  if (!impl_) {
    return;
  }
  auto& p = *impl_;
  if (p.server) {
    p.server->stop();
  }
  if (p.sys) {
    if (p.front) {
      p.sys->middleman().unpublish(p.front, p.remote_port);
      caf::anon_send_exit(p.front, caf::exit_reason::user_shutdown);
      p.front = caf::actor{};
    }
    for (auto* front : {&p.repl, &p.rlm_repl}) {
      if (*front) {
        caf::anon_send_exit(*front, caf::exit_reason::user_shutdown);
        *front = caf::actor{};
      }
    }
    auto root = p.get(&impl::root);
    if (root) {
      caf::scoped_actor self{*p.sys};
      self->monitor(root);
      self->send_exit(root, caf::exit_reason::user_shutdown);
      self->receive([](caf::down_msg&) {},
                    caf::after(std::chrono::seconds(10)) >> [&] {
                      p.log->error("supervision tree did not stop within 10 s");
                    });
    }
    p.set([&] {
      p.root = p.writer = p.llm_sup = p.router = p.batches = p.manager = p.rlm = caf::actor{};
      p.rlm_pool = caf::actor{};
      p.memory_tiers.clear();
      p.repl_pools.clear();
    });
  }
  // Asio handlers send to actors: stop the client before the actor system.
  // Calls still in flight hold the client too, so it is shut down, not just
  // released.
  if (p.client) {
    p.client->shutdown();
  }
  p.backend.reset();
  p.client.reset();
  p.server.reset();
  p.sys.reset();
  p.log->info("node stopped");
}

uint16_t node::http_port() const {
  return impl_->server ? impl_->server->port() : 0;
}

uint16_t node::remote_port() const {
  return impl_->remote_port;
}

caf::actor_system& node::system() {
  return *impl_->sys;
}

const settings& node::config() const {
  return impl_->cfg;
}

std::shared_ptr<store::environment> node::store() const {
  return impl_->env;
}

caf::actor node::manager() const {
  return impl_->get(&impl::manager);
}

caf::actor node::router() const {
  return impl_->get(&impl::router);
}

caf::actor node::batches() const {
  return impl_->get(&impl::batches);
}

caf::actor node::memory(const std::string& tier) const {
  return memory_lookup(impl_.get())(tier);
}

caf::actor node::rlm() const {
  return impl_->get(&impl::rlm);
}

std::string node::rlm_unavailable() const {
  return impl_->rlm_unavailable;
}

caf::actor node::repl() const {
  return impl_->repl;
}

std::string node::repl_sandbox() const {
  if (!impl_->sandbox_ok) {
    return "off";
  }
  return process::to_string(impl_->sandbox);
}

std::string node::repl_sandbox_detail() const {
  return impl_->sandbox_detail;
}

caf::actor node::writer() const {
  return impl_->get(&impl::writer);
}

caf::actor node::root() const {
  return impl_->get(&impl::root);
}

int node::wait() {
  std::unique_lock<std::mutex> guard{impl_->mtx};
  impl_->cv.wait(guard, [&] { return impl_->stop_requested || impl_->failed; });
  return impl_->failed ? 1 : 0;
}

void node::request_stop() {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  impl_->stop_requested = true;
  impl_->cv.notify_all();
}

bool node::failed() const {
  std::lock_guard<std::mutex> guard{impl_->mtx};
  return impl_->failed;
}

}  // namespace kowalski
