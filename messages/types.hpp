// Value types that cross actor boundaries. Every type here is registered in
// registry.cpp under the name its inspect() gives, identically on every node.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/actor.hpp>
#include <caf/meta/type_name.hpp>

namespace kowalski {

// -- chat ---------------------------------------------------------------------

/// One message of a prompt as LLM backends see it.
struct chat_message {
  std::string role;  ///< "system", "user", "assistant" or "tool"
  std::string content;
};

/// An optional persona rendered into the system prompt; empty name = none.
struct role_spec {
  std::string name;
  std::string description;
};

/// Sampling options; a negative value means "backend default".
struct generation_options {
  double temperature = -1;
  int32_t max_tokens = -1;
};

/// What is known about a conversation without its turns.
struct conversation_info {
  std::string id;  ///< UUIDv4, lower case
  std::string model;
  std::string system_prompt;
  role_spec role;
  int64_t created_ms = 0;  ///< unix epoch milliseconds
  int64_t updated_ms = 0;
  uint64_t message_count = 0;
};

/// A memory item that went into the prompt of an assistant turn: which one
/// and how it was found (its text stays in its tier).
struct memory_ref {
  std::string tier;
  std::string id;
  double score = 0;
  std::string matched_by;  ///< vector, keyword, or recent
};

/// One stored message of a conversation. Sequence numbers start at 1 and
/// have no gaps; they order a conversation's turns.
struct turn {
  uint64_t seq = 0;
  std::string role;
  std::string content;
  int64_t created_ms = 0;
  std::string model;            ///< for assistant turns: the model that answered
  uint32_t prompt_tokens = 0;   ///< as counted by the backend
  uint32_t completion_tokens = 0;
  bool replayed = false;        ///< the reply came from a recorded transcript
  /// For assistant turns: what memory added to the prompt.
  std::vector<memory_ref> memory{};
};

/// Request: create a conversation. Reply: conversation_info.
struct create_conversation {
  std::string model;  ///< empty = the node's default model
  std::string system_prompt;
  role_spec role;
};

/// Request: a page of conversations ordered by id, after `after` (exclusive).
/// Reply: conversation_page.
struct list_conversations {
  std::string after;
  uint32_t limit = 50;
};

struct conversation_page {
  std::vector<conversation_info> items;
  std::string next_after;  ///< empty when this is the last page
};

/// Request: a conversation and a page of its turns, those with seq >
/// after_seq, at most `limit` (1 to 10,000). Reply: conversation_detail.
struct read_conversation {
  std::string id;
  uint64_t after_seq = 0;
  uint32_t limit = 1000;
};

/// Reply to read_conversation and to (get_atom, id), which returns every
/// turn. Info and turns come from one store snapshot.
struct conversation_detail {
  conversation_info info;
  std::vector<turn> turns;
  uint64_t next_after_seq = 0;  ///< 0 when no turns follow this page
};

/// Request: add a user message to a conversation and answer it.
/// Reply: chat_reply once both turns are committed. When `sink` is valid it
/// receives (delta_atom, std::string) for every piece of text as it arrives.
// -- memory -------------------------------------------------------------------

/// One remembered item. Tiers: working (per conversation, bounded, in
/// memory), episodic (every turn, in LMDB), semantic (facts and summaries,
/// in LMDB, searched through an HNSW index).
struct memory_item {
  std::string id;  ///< "wrk_", "epi_" or "sem_" and 16 hex digits; set by the tier
  std::string tier;
  std::string kind;  ///< turn, fact, summary, note
  std::string text;
  std::string conversation;
  std::string role;
  int64_t created_ms = 0;
  int64_t expires_ms = 0;  ///< 0 = kept until deleted
  std::string embedder;    ///< what made `embedding`; empty = none
  std::vector<float> embedding{};
  bool consolidated = false;  ///< episodic: summarized into the semantic tier
  /// Semantic adds: an add with a key that was stored before returns that
  /// item instead of storing another (consolidation's retries).
  std::string dedup_key{};
};

/// One search result: the score and what it is made of.
struct memory_hit {
  memory_item item;
  double score = 0;
  double similarity = 0;  ///< cosine, or the keyword share for items without a vector
  double recency = 0;     ///< 1 now, 0 at the tier's horizon and beyond
  std::string matched_by;  ///< vector, keyword, or recent
};

/// Request to a tier: remember `item` (tier and id are set by it). Reply:
/// memory_item as stored. Refused: empty text, a vector of the wrong size,
/// a vector from another embedder (conflict).
struct add_memory {
  memory_item item;
};

/// Request to a tier: remember several items in one commit. Reply:
/// std::vector<memory_item> as stored, in order; refused as a whole when
/// one item is.
struct add_memories {
  std::vector<memory_item> items;
  /// A memory_meta key erased in the same commit as the items: the
  /// outbox record of a chat turn, so a turn is archived exactly once.
  std::string outbox_key{};
};

/// Requests to the episodic tier: up to `limit` episodes not consolidated
/// yet, oldest first (in `conversation` when not empty); reply:
/// std::vector<memory_item>. And: mark `ids` consolidated; reply: uint64_t,
/// how many were marked.
struct list_unconsolidated {
  std::string conversation;
  uint32_t limit = 200;
  std::vector<std::string> except{};  ///< conversations to leave out
};

struct mark_consolidated {
  std::vector<std::string> ids;
};

/// Request to the working and episodic tiers: erase every item of
/// `conversation`, which has been deleted. Reply: uint64_t, how many.
struct forget_conversation {
  std::string conversation;
};

/// Request to the consolidation actor: summarize what the episodic tier has
/// not consolidated yet into the semantic tier (summaries and triples), then
/// mark it. Reply: consolidation_report.
struct consolidate_memory {
  std::string conversation;  ///< empty = every conversation
  uint32_t max_episodes = 200;
};

struct consolidation_report {
  uint32_t episodes = 0;   ///< consolidated by this request
  uint32_t summaries = 0;  ///< semantic items written
  uint32_t triples = 0;    ///< new triples
  uint32_t failed = 0;     ///< conversations left for the next time
  std::string error{};     ///< why the last of those failed
};

/// Request to a tier: the best `limit` items for `query` (in `conversation`
/// when not empty). Reply: std::vector<memory_hit>, best first.
struct search_memory {
  std::string query;
  std::string conversation;
  uint32_t limit = 3;
};

/// Requests to a tier by id. Reply: memory_item (get), bool (delete:
/// true when it existed); not_found.
struct get_memory {
  std::string id;
};

struct delete_memory {
  std::string id;
};

/// Request to the node's embedder: one vector per text, in order. Reply:
/// embeddings. Concurrent requests share the backend's batched calls.
struct embed_texts {
  std::vector<std::string> texts;
  /// The requester's patience: a request still waiting for a free call
  /// after this long fails with timeout instead of being sent (0 = none).
  uint32_t timeout_ms = 0;
};

struct embeddings {
  std::string embedder;  ///< the name stored with the vectors
  std::vector<std::vector<float>> vectors;
};

/// What a tier holds. Reply to (stats_atom).
struct memory_tier_stats {
  std::string tier;
  uint64_t items = 0;
  std::string embedder;
  uint32_t dimensions = 0;
  uint64_t index_items = 0;  ///< semantic: vectors in the HNSW index
  int64_t loaded_ms = 0;     ///< semantic: time to load or rebuild the index at start
  std::string index_source;  ///< semantic: loaded, rebuilt, empty
  uint64_t pending_vectors = 0;  ///< episodic: stored while the embedder failed
};

/// A (subject, predicate, object) fact of the semantic tier's graph.
struct triple {
  std::string subject;
  std::string predicate;
  std::string object;
  std::string source;  ///< the memory item it came from, if any
  int64_t created_ms = 0;
};

/// Requests to the semantic tier: store triples (reply: uint64_t, how many
/// were new), and the triples naming `entity` as subject or object (reply:
/// std::vector<triple>).
struct add_triples {
  std::vector<triple> triples;
};

struct query_triples {
  std::string entity;
  uint32_t limit = 50;
};

struct user_message {
  std::string conversation_id;
  std::string content;
  generation_options options;
  caf::actor sink;
};

struct chat_reply {
  std::string conversation_id;
  turn user;
  turn assistant;
  /// What memory added to the prompt of this turn, with the texts (the
  /// assistant turn keeps the references).
  std::vector<memory_hit> memory{};
};

// -- LLM ----------------------------------------------------------------------

/// Request: one chat completion. Reply: llm_reply, or an error of the
/// backend_* family. Deltas go to `sink` as (delta_atom, std::string).
struct llm_request {
  std::string model;
  std::vector<chat_message> messages;
  generation_options options;
  caf::actor sink;
  uint64_t timeout_ms = 0;  ///< 0 = the backend's configured request timeout
  /// Batch calls only: how long the call may wait at the router for a worker
  /// and the rate limit before it is answered unsent (0 = the router's default).
  uint64_t queue_ms = 0;
};

struct llm_reply {
  std::string content;
  std::string model;
  std::string finish_reason;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  bool replayed = false;
  int64_t latency_us = 0;  ///< from sending the request to the last byte
};

struct model_info {
  std::string name;
  std::string provider;
  uint64_t size_bytes = 0;
};

/// Reply to (ready_atom): whether the LLM backend answered a cheap probe.
struct backend_status {
  bool reachable = false;
  std::string provider;
  std::string detail;
};

// -- batches ------------------------------------------------------------------

/// One item of a batch as submitted: a chat completion request.
struct batch_item {
  std::string custom_id;  ///< unique within its batch
  std::string model;
  std::vector<chat_message> messages;
  generation_options options;
};

/// How a batch runs; zero means "the node's default" for every field.
struct batch_options {
  uint64_t call_timeout_ms = 0;  ///< one attempt of one item
  uint64_t deadline_ms = 0;      ///< the whole batch, from submission
  uint32_t max_attempts = 0;     ///< per item, first try included
  uint32_t concurrency = 0;      ///< items of this batch running at once
};

/// Request to the batch coordinator: store the batch, then run it.
/// Reply: batch_info once the batch and all its items are committed.
struct submit_batch {
  std::vector<batch_item> items;
  batch_options options;
};

/// A batch and its progress. Status is one of in_progress, cancelling,
/// cancelled, completed, expired (OpenAI's names).
struct batch_info {
  std::string id;
  std::string status;
  int64_t created_ms = 0;
  int64_t finished_ms = 0;  ///< 0 while the batch runs
  batch_options options;    ///< with the node's defaults filled in
  uint64_t total = 0;
  uint64_t queued = 0;   ///< waiting for a worker, a retry or the rate limit
  uint64_t running = 0;  ///< with a worker now, or being committed
  uint64_t done = 0;     ///< finished with a reply
  uint64_t failed = 0;   ///< finished with an error
  uint64_t not_run = 0;  ///< dropped by cancel or the deadline
  uint64_t prompt_tokens = 0;
  uint64_t completion_tokens = 0;
  double rate_per_s = 0;  ///< items finished per second in this run
  double eta_s = -1;      ///< seconds until done at that rate; -1 = unknown
};

/// Request: a page of batches ordered by id (creation order), after `after`.
/// Reply: batch_page.
struct list_batches {
  std::string after;
  uint32_t limit = 50;
};

struct batch_page {
  std::vector<batch_info> items;
  std::string next_after;  ///< empty when this is the last page
};

/// Request: a batch and its progress. Reply: batch_info, or not_found.
/// With wait_ms > 0 the reply waits until the batch has ended or wait_ms
/// has passed, whichever comes first (long polling without a poll loop).
struct get_batch {
  std::string id;
  uint64_t wait_ms = 0;
};

/// Request: stop a batch. Items not started yet finish at once as not run;
/// running ones finish or time out. Reply: batch_info (status cancelling or
/// cancelled); conflict when the batch already ended, not_found.
struct cancel_batch {
  std::string id;
};

/// The outcome of one batch item, as committed. Status: 1 completed,
/// 2 failed, 3 not run (cancelled or expired before it started).
struct batch_item_result {
  enum statuses : uint8_t { completed = 1, failed = 2, not_run = 3 };
  uint64_t index = 0;
  std::string custom_id;
  uint8_t status = 0;
  int32_t http_status = 0;  ///< the backend's HTTP status; 0 = no HTTP answer
  std::string error_code;   ///< an errc name, empty on success
  std::string error_message;
  uint32_t attempts = 0;
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  int64_t latency_us = 0;  ///< of the last attempt
  int64_t finished_ms = 0;
  std::string content;
  std::string model;
  std::string finish_reason;
};

/// Request: one LLM call with the batch path's retries, at batch priority.
/// Reply: llm_reply, or the error of the last attempt.
struct llm_call {
  llm_request request;
  uint32_t max_attempts = 0;  ///< 0 = the node's default
};

/// Request: several LLM calls, not stored, at batch priority. Reply:
/// std::vector<call_outcome> in the order of `requests`.
struct llm_call_batch {
  std::vector<llm_request> requests;
  uint32_t max_attempts = 0;  ///< 0 = the node's default
  uint32_t concurrency = 0;   ///< calls of this list at once; 0 = no own limit
  uint64_t deadline_ms = 0;   ///< for the whole list; 0 = none
};

struct call_outcome {
  bool ok = false;
  llm_reply reply;
  std::string error_code;  ///< an errc name when !ok
  std::string error_message;
  int32_t http_status = 0;
  uint32_t attempts = 0;
};

// -- REPL ---------------------------------------------------------------------

/// Request: run `code` in a sandboxed interpreter of `language` (python3,
/// node, bash; rust and java compile and run once). Reply: repl_result; an
/// error only when nothing ran (unknown or unavailable language, the pool's
/// queue full).
struct repl_execute {
  std::string language;
  std::string code;
  /// Names a session: its executions share one interpreter and its state
  /// until the session ends. Empty: a fresh namespace, nothing kept.
  std::string session;
  uint64_t timeout_ms = 0;  ///< 0 = the pool's default (30 s)
  /// A file written into the interpreter's working directory before the
  /// code runs (how large inputs reach it); empty name = none. The name
  /// must be a plain file name.
  std::string file_name;
  std::string file_data;
  /// Instead of file_data: a file on the node copied in as file_name (how
  /// contexts of a gigabyte reach an RLM run without passing through memory).
  /// Local only, like sub_calls: not serialized, so a peer over remoting
  /// cannot name files of the node.
  std::string file_source{};
  /// When set, llm_query and rlm_query from this execution's code go to this
  /// actor as repl_sub_call instead of the batch coordinator (an RLM run
  /// answers them: it counts, limits, logs and replays them). Local only:
  /// not serialized (CAF 0.17 did not round-trip a handle inside this
  /// message), so an execution that arrives over remoting has none.
  caf::actor sub_calls{};
};

/// Request from a REPL worker to an execution's sub_calls actor: the code
/// called llm_query (kind llm) or rlm_query (kind rlm) with `prompts`
/// (rlm_query with an explicit context has it in `contexts`, same order).
/// Reply: std::vector<std::string>, one answer or "Error: ..." per prompt.
struct repl_sub_call {
  std::string kind;
  std::vector<std::string> prompts;
  std::vector<std::string> contexts;
  std::string model;
};

/// What became of one execution.
struct repl_result {
  bool ok = false;  ///< ran to its end: no exception, exit status 0
  std::string stdout_text;
  std::string stderr_text;
  uint64_t stdout_cut = 0;  ///< characters past the cap, not kept
  uint64_t stderr_cut = 0;
  std::string error;       ///< the exception with its traceback, or what happened
  std::string error_type;  ///< exception class, or timeout, crash, limit
  int32_t exit_status = 0;  ///< of one-shot programs, or a crashed interpreter
  int64_t duration_us = 0;
  /// The interpreter was restarted (timeout, crash) before or by this
  /// execution: whatever the session held is gone.
  bool state_lost = false;
  std::string session;
  std::string worker;
};

/// Request: end a session at every pool. Reply: bool, true when it existed.
struct end_repl_session {
  std::string session;
  /// Also kill what the session is running now (its execution then ends
  /// with error_type "cancelled"); otherwise that runs to its end first.
  bool abort = false;
};

/// One pool, as GET /v1/repl/pools shows it.
struct repl_pool_info {
  std::string language;
  bool available = false;
  std::string detail;  ///< why not available, or the interpreter
  std::string sandbox;  ///< bubblewrap or rlimits_only
  uint32_t workers = 0;
  uint32_t busy = 0;
  uint32_t sessions = 0;
  uint32_t queued = 0;
  uint64_t executions = 0;
  uint64_t restarts = 0;  ///< interpreters replaced after a timeout or crash
};

// -- RLM ----------------------------------------------------------------------

/// Request: answer `question` over `context` with a Recursive Language Model
/// run: the root model writes code against the context in a REPL instead of
/// reading it. Reply: rlm_outcome once the run has ended, however it ended.
struct rlm_start {
  std::string question;
  std::string context;
  std::string context_kind = "text";  ///< text, or json (loaded as Python values)
  std::string model;                  ///< root model; empty = the node's
  uint32_t max_iterations = 0;        ///< 0 = the default (30)
  uint64_t max_tokens = 0;            ///< root and sub-calls together; 0 = none
  uint64_t timeout_ms = 0;            ///< wall time of the run; 0 = none
  /// Instead of `context`: a file on the node holding it.
  std::string context_file{};
  uint32_t max_depth = 0;  ///< 0 = the default (1: rlm_query is a plain call)
  uint32_t depth = 0;      ///< of this run; children are one deeper
};

/// One turn of a run: the root model's reply and what its code printed.
struct rlm_turn {
  uint32_t index = 0;
  std::string reply;
  std::vector<std::string> blocks;
  std::vector<std::string> outputs;  ///< per block, as fed back (cut)
  uint32_t prompt_tokens = 0;
  uint32_t completion_tokens = 0;
  int64_t duration_us = 0;  ///< run time when the turn ended
  /// False while the turn's code still runs: the reply is stored as soon as
  /// it arrives, so a resumed run does not ask the model again.
  bool complete = true;
  /// Set when the history was compacted before this turn: the model's summary.
  std::string summary{};
  uint32_t summary_prompt_tokens = 0;
  uint32_t summary_completion_tokens = 0;
  uint32_t sub_calls = 0;  ///< llm_query and rlm_query prompts of this turn
  uint64_t sub_prompt_tokens = 0;
  uint64_t sub_completion_tokens = 0;
  std::string feedback{};  ///< the user message that followed the turn
  int64_t model_us = 0;  ///< waiting for the root model's reply, as the run saw it
  bool code_failed = false;  ///< a block raised, or its interpreter died
  /// Blocks whose execution lost the interpreter (a timeout, a crash); the
  /// context was loaded again after each, and replay does the same.
  std::vector<uint32_t> restarts{};
};

/// One sub-call from a run's code, committed when its answer arrives and
/// before the code gets it (db rlm_calls, key run id + turn + seq). A
/// resumed run replays code against these answers instead of calling again.
struct rlm_sub_call {
  uint32_t turn = 0;
  uint32_t seq = 0;     ///< order of arrival within the turn
  std::string kind;     ///< llm, or rlm (a child run)
  std::string model;
  uint64_t prompt_hash = 0;  ///< FNV-1a of kind, model, context and prompt
  uint64_t prompt_chars = 0;
  bool ok = false;
  std::string answer;  ///< or the "Error: ..." the code got
  uint64_t prompt_tokens = 0;  ///< a child's: all of its own and its children's
  uint64_t completion_tokens = 0;
  int64_t duration_us = 0;
  std::string child;  ///< id of the child run (kind rlm at depth)
  std::string note;   ///< e.g. why an rlm_query was a plain call
};

/// How a run ended. reason: final (FINAL), final_var (FINAL_VAR), answer
/// (answer["ready"]), max_iterations (the last-answer request), token_budget,
/// timeout, errors (consecutive failing turns), failed (the model or the REPL
/// could not be used; `error` says why).
struct rlm_outcome {
  std::string answer;
  std::string reason;
  std::string error;
  uint32_t turns = 0;
  uint64_t prompt_tokens = 0;  ///< the root model's, from the backend
  uint64_t completion_tokens = 0;
  int64_t duration_ms = 0;
  std::vector<rlm_turn> trajectory;
  uint32_t sub_calls = 0;
  uint64_t sub_prompt_tokens = 0;  ///< sub-calls and child runs, from the backends
  uint64_t sub_completion_tokens = 0;
  uint32_t compactions = 0;
  uint32_t replayed_turns = 0;  ///< turns rebuilt from the log after a restart
};

/// A run as the node keeps it. status: running, finished, cancelled.
struct rlm_run_info {
  std::string id;
  std::string status;
  std::string question;
  std::string model;
  int64_t created_ms = 0;
  int64_t finished_ms = 0;
  rlm_outcome outcome;  ///< without its trajectory (that is stored per turn)
  /// What the run was started with, its context replaced by context_file
  /// (a copy in the node's data directory for inline and uploaded contexts,
  /// removed when the run ends): what a restarted node resumes it from.
  rlm_start request{};
  bool owns_context = false;
  uint32_t resumes = 0;
};

/// Request to the RLM manager: the turns of a run after `after` (index),
/// waiting up to wait_ms for one when there is none yet. Reply: rlm_turn_page.
struct get_rlm_turns {
  std::string id;
  uint32_t after = 0;
  uint64_t wait_ms = 0;
  /// An incomplete turn the caller has seen already: it alone is not news.
  uint32_t partial = 0;
};

/// What get_rlm_turns returns: committed turns (the last may be incomplete),
/// the sub-calls of those turns, and the run's record.
struct rlm_turn_page {
  std::vector<rlm_turn> turns;
  std::vector<rlm_sub_call> sub_calls;
  rlm_run_info run;
};

/// Request to the RLM manager: start a run. Reply: rlm_run_info once the
/// run's record is committed (status running).
struct submit_rlm_run {
  rlm_start start;
};

/// Request: a run (get), or stop it (cancel). Reply: rlm_run_info;
/// not_found; cancel of an ended run is a conflict.
struct get_rlm_run {
  std::string id;
  uint64_t wait_ms = 0;  ///< > 0: answer when the run ends, or after this long
};

struct cancel_rlm_run {
  std::string id;
};

// -- store --------------------------------------------------------------------

/// One change inside a write batch. Kinds: put, erase one key, erase every
/// key that starts with `key`.
struct kv_op {
  /// erase_existing: erase, and apply nothing of the batch unless the key
  /// is there (the writer answers with errc::conflict).
  enum kinds : uint8_t { put = 0, erase = 1, erase_prefix = 2, erase_existing = 3 };
  uint8_t kind = put;
  std::string db;
  std::string key;
  std::string value;
};

/// Request to the store writer: apply all ops in one transaction.
/// Reply: uint64_t commit sequence, after the commit has returned.
struct write_batch {
  std::vector<kv_op> ops;
};

// -- supervision --------------------------------------------------------------

struct child_info {
  std::string name;
  caf::actor handle;
  uint32_t restarts = 0;
};

// -- inspect ------------------------------------------------------------------

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_message& x) {
  return f(caf::meta::type_name("kowalski::chat_message"), x.role, x.content);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, role_spec& x) {
  return f(caf::meta::type_name("kowalski::role_spec"), x.name, x.description);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, generation_options& x) {
  return f(caf::meta::type_name("kowalski::generation_options"), x.temperature,
           x.max_tokens);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, conversation_info& x) {
  return f(caf::meta::type_name("kowalski::conversation_info"), x.id, x.model,
           x.system_prompt, x.role, x.created_ms, x.updated_ms, x.message_count);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, memory_ref& x) {
  return f(caf::meta::type_name("kowalski::memory_ref"), x.tier, x.id, x.score, x.matched_by);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, turn& x) {
  return f(caf::meta::type_name("kowalski::turn"), x.seq, x.role, x.content,
           x.created_ms, x.model, x.prompt_tokens, x.completion_tokens, x.replayed,
           x.memory);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, create_conversation& x) {
  return f(caf::meta::type_name("kowalski::create_conversation"), x.model,
           x.system_prompt, x.role);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, list_conversations& x) {
  return f(caf::meta::type_name("kowalski::list_conversations"), x.after, x.limit);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, conversation_page& x) {
  return f(caf::meta::type_name("kowalski::conversation_page"), x.items,
           x.next_after);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, read_conversation& x) {
  return f(caf::meta::type_name("kowalski::read_conversation"), x.id, x.after_seq, x.limit);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, conversation_detail& x) {
  return f(caf::meta::type_name("kowalski::conversation_detail"), x.info, x.turns,
           x.next_after_seq);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, user_message& x) {
  return f(caf::meta::type_name("kowalski::user_message"), x.conversation_id,
           x.content, x.options, x.sink);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, chat_reply& x) {
  return f(caf::meta::type_name("kowalski::chat_reply"), x.conversation_id, x.user,
           x.assistant, x.memory);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, llm_request& x) {
  return f(caf::meta::type_name("kowalski::llm_request"), x.model, x.messages,
           x.options, x.sink, x.timeout_ms, x.queue_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, llm_reply& x) {
  return f(caf::meta::type_name("kowalski::llm_reply"), x.content, x.model,
           x.finish_reason, x.prompt_tokens, x.completion_tokens, x.replayed,
           x.latency_us);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_info& x) {
  return f(caf::meta::type_name("kowalski::model_info"), x.name, x.provider,
           x.size_bytes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, backend_status& x) {
  return f(caf::meta::type_name("kowalski::backend_status"), x.reachable,
           x.provider, x.detail);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_item& x) {
  return f(caf::meta::type_name("kowalski::batch_item"), x.custom_id, x.model, x.messages,
           x.options);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_options& x) {
  return f(caf::meta::type_name("kowalski::batch_options"), x.call_timeout_ms, x.deadline_ms,
           x.max_attempts, x.concurrency);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, submit_batch& x) {
  return f(caf::meta::type_name("kowalski::submit_batch"), x.items, x.options);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_info& x) {
  return f(caf::meta::type_name("kowalski::batch_info"), x.id, x.status, x.created_ms,
           x.finished_ms, x.options, x.total, x.queued, x.running, x.done, x.failed,
           x.not_run, x.prompt_tokens, x.completion_tokens, x.rate_per_s, x.eta_s);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, list_batches& x) {
  return f(caf::meta::type_name("kowalski::list_batches"), x.after, x.limit);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_page& x) {
  return f(caf::meta::type_name("kowalski::batch_page"), x.items, x.next_after);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, get_batch& x) {
  return f(caf::meta::type_name("kowalski::get_batch"), x.id, x.wait_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cancel_batch& x) {
  return f(caf::meta::type_name("kowalski::cancel_batch"), x.id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, batch_item_result& x) {
  return f(caf::meta::type_name("kowalski::batch_item_result"), x.index, x.custom_id,
           x.status, x.http_status, x.error_code, x.error_message, x.attempts,
           x.prompt_tokens, x.completion_tokens, x.latency_us, x.finished_ms, x.content,
           x.model, x.finish_reason);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, llm_call& x) {
  return f(caf::meta::type_name("kowalski::llm_call"), x.request, x.max_attempts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, llm_call_batch& x) {
  return f(caf::meta::type_name("kowalski::llm_call_batch"), x.requests, x.max_attempts,
           x.concurrency, x.deadline_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, call_outcome& x) {
  return f(caf::meta::type_name("kowalski::call_outcome"), x.ok, x.reply, x.error_code,
           x.error_message, x.http_status, x.attempts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_execute& x) {
  return f(caf::meta::type_name("kowalski::repl_execute"), x.language, x.code, x.session,
           x.timeout_ms, x.file_name, x.file_data);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_sub_call& x) {
  return f(caf::meta::type_name("kowalski::repl_sub_call"), x.kind, x.prompts, x.contexts,
           x.model);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_result& x) {
  return f(caf::meta::type_name("kowalski::repl_result"), x.ok, x.stdout_text, x.stderr_text,
           x.stdout_cut, x.stderr_cut, x.error, x.error_type, x.exit_status, x.duration_us,
           x.state_lost, x.session, x.worker);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, end_repl_session& x) {
  return f(caf::meta::type_name("kowalski::end_repl_session"), x.session, x.abort);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, repl_pool_info& x) {
  return f(caf::meta::type_name("kowalski::repl_pool_info"), x.language, x.available, x.detail,
           x.sandbox, x.workers, x.busy, x.sessions, x.queued, x.executions, x.restarts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_start& x) {
  return f(caf::meta::type_name("kowalski::rlm_start"), x.question, x.context, x.context_kind,
           x.model, x.max_iterations, x.max_tokens, x.timeout_ms, x.context_file, x.max_depth,
           x.depth);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_turn& x) {
  return f(caf::meta::type_name("kowalski::rlm_turn"), x.index, x.reply, x.blocks, x.outputs,
           x.prompt_tokens, x.completion_tokens, x.duration_us, x.complete, x.summary,
           x.summary_prompt_tokens, x.summary_completion_tokens, x.sub_calls,
           x.sub_prompt_tokens, x.sub_completion_tokens, x.feedback, x.model_us, x.code_failed,
           x.restarts);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_sub_call& x) {
  return f(caf::meta::type_name("kowalski::rlm_sub_call"), x.turn, x.seq, x.kind, x.model,
           x.prompt_hash, x.prompt_chars, x.ok, x.answer, x.prompt_tokens, x.completion_tokens,
           x.duration_us, x.child, x.note);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_outcome& x) {
  return f(caf::meta::type_name("kowalski::rlm_outcome"), x.answer, x.reason, x.error, x.turns,
           x.prompt_tokens, x.completion_tokens, x.duration_ms, x.trajectory, x.sub_calls,
           x.sub_prompt_tokens, x.sub_completion_tokens, x.compactions, x.replayed_turns);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_run_info& x) {
  return f(caf::meta::type_name("kowalski::rlm_run_info"), x.id, x.status, x.question, x.model,
           x.created_ms, x.finished_ms, x.outcome, x.request, x.owns_context, x.resumes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, get_rlm_turns& x) {
  return f(caf::meta::type_name("kowalski::get_rlm_turns"), x.id, x.after, x.wait_ms,
           x.partial);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, rlm_turn_page& x) {
  return f(caf::meta::type_name("kowalski::rlm_turn_page"), x.turns, x.sub_calls, x.run);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, submit_rlm_run& x) {
  return f(caf::meta::type_name("kowalski::submit_rlm_run"), x.start);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, get_rlm_run& x) {
  return f(caf::meta::type_name("kowalski::get_rlm_run"), x.id, x.wait_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, cancel_rlm_run& x) {
  return f(caf::meta::type_name("kowalski::cancel_rlm_run"), x.id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, memory_item& x) {
  return f(caf::meta::type_name("kowalski::memory_item"), x.id, x.tier, x.kind, x.text,
           x.conversation, x.role, x.created_ms, x.expires_ms, x.embedder, x.embedding,
           x.consolidated, x.dedup_key);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, memory_hit& x) {
  return f(caf::meta::type_name("kowalski::memory_hit"), x.item, x.score, x.similarity,
           x.recency, x.matched_by);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, add_memory& x) {
  return f(caf::meta::type_name("kowalski::add_memory"), x.item);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, embed_texts& x) {
  return f(caf::meta::type_name("kowalski::embed_texts"), x.texts, x.timeout_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, embeddings& x) {
  return f(caf::meta::type_name("kowalski::embeddings"), x.embedder, x.vectors);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, add_memories& x) {
  return f(caf::meta::type_name("kowalski::add_memories"), x.items, x.outbox_key);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, list_unconsolidated& x) {
  return f(caf::meta::type_name("kowalski::list_unconsolidated"), x.conversation, x.limit,
           x.except);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, mark_consolidated& x) {
  return f(caf::meta::type_name("kowalski::mark_consolidated"), x.ids);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, forget_conversation& x) {
  return f(caf::meta::type_name("kowalski::forget_conversation"), x.conversation);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, consolidate_memory& x) {
  return f(caf::meta::type_name("kowalski::consolidate_memory"), x.conversation, x.max_episodes);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, consolidation_report& x) {
  return f(caf::meta::type_name("kowalski::consolidation_report"), x.episodes, x.summaries,
           x.triples, x.failed, x.error);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, search_memory& x) {
  return f(caf::meta::type_name("kowalski::search_memory"), x.query, x.conversation, x.limit);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, get_memory& x) {
  return f(caf::meta::type_name("kowalski::get_memory"), x.id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, delete_memory& x) {
  return f(caf::meta::type_name("kowalski::delete_memory"), x.id);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, memory_tier_stats& x) {
  return f(caf::meta::type_name("kowalski::memory_tier_stats"), x.tier, x.items, x.embedder,
           x.dimensions, x.index_items, x.loaded_ms, x.index_source, x.pending_vectors);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, triple& x) {
  return f(caf::meta::type_name("kowalski::triple"), x.subject, x.predicate, x.object,
           x.source, x.created_ms);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, add_triples& x) {
  return f(caf::meta::type_name("kowalski::add_triples"), x.triples);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, query_triples& x) {
  return f(caf::meta::type_name("kowalski::query_triples"), x.entity, x.limit);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, kv_op& x) {
  return f(caf::meta::type_name("kowalski::kv_op"), x.kind, x.db, x.key, x.value);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, write_batch& x) {
  return f(caf::meta::type_name("kowalski::write_batch"), x.ops);
}

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, child_info& x) {
  return f(caf::meta::type_name("kowalski::child_info"), x.name, x.handle,
           x.restarts);
}

// Equality, for tests that round-trip values.
bool operator==(const chat_message& a, const chat_message& b);
bool operator==(const role_spec& a, const role_spec& b);
bool operator==(const generation_options& a, const generation_options& b);
bool operator==(const conversation_info& a, const conversation_info& b);
bool operator==(const turn& a, const turn& b);
bool operator==(const batch_item& a, const batch_item& b);
bool operator==(const batch_item_result& a, const batch_item_result& b);

}  // namespace kowalski
