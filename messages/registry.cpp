// Registers every kowalski message type under a stable name.
#include "messages/registry.hpp"

#include "messages/errors.hpp"
#include "messages/types.hpp"

#include <caf/actor_system_config.hpp>

#include <algorithm>

namespace kowalski {

namespace {

// Calls `f.template operator()<T>(name)` for every type, so that registration
// and the list of names cannot drift apart.
template <class F>
void for_each_type(F&& f) {
  f.template add<chat_message>("kowalski::chat_message");
  f.template add<role_spec>("kowalski::role_spec");
  f.template add<generation_options>("kowalski::generation_options");
  f.template add<conversation_info>("kowalski::conversation_info");
  f.template add<std::vector<conversation_info>>("kowalski::conversation_infos");
  f.template add<turn>("kowalski::turn");
  f.template add<std::vector<turn>>("kowalski::turns");
  f.template add<create_conversation>("kowalski::create_conversation");
  f.template add<list_conversations>("kowalski::list_conversations");
  f.template add<conversation_page>("kowalski::conversation_page");
  f.template add<read_conversation>("kowalski::read_conversation");
  f.template add<conversation_detail>("kowalski::conversation_detail");
  f.template add<user_message>("kowalski::user_message");
  f.template add<chat_reply>("kowalski::chat_reply");
  f.template add<llm_request>("kowalski::llm_request");
  f.template add<llm_reply>("kowalski::llm_reply");
  f.template add<model_info>("kowalski::model_info");
  f.template add<std::vector<model_info>>("kowalski::model_infos");
  f.template add<backend_status>("kowalski::backend_status");
  f.template add<batch_item>("kowalski::batch_item");
  f.template add<std::vector<batch_item>>("kowalski::batch_items");
  f.template add<batch_options>("kowalski::batch_options");
  f.template add<submit_batch>("kowalski::submit_batch");
  f.template add<batch_info>("kowalski::batch_info");
  f.template add<list_batches>("kowalski::list_batches");
  f.template add<batch_page>("kowalski::batch_page");
  f.template add<batch_item_result>("kowalski::batch_item_result");
  f.template add<get_batch>("kowalski::get_batch");
  f.template add<cancel_batch>("kowalski::cancel_batch");
  f.template add<llm_call>("kowalski::llm_call");
  f.template add<llm_call_batch>("kowalski::llm_call_batch");
  f.template add<call_outcome>("kowalski::call_outcome");
  f.template add<std::vector<call_outcome>>("kowalski::call_outcomes");
  f.template add<repl_execute>("kowalski::repl_execute");
  f.template add<repl_result>("kowalski::repl_result");
  f.template add<repl_sub_call>("kowalski::repl_sub_call");
  f.template add<end_repl_session>("kowalski::end_repl_session");
  f.template add<repl_pool_info>("kowalski::repl_pool_info");
  f.template add<std::vector<repl_pool_info>>("kowalski::repl_pool_infos");
  f.template add<rlm_start>("kowalski::rlm_start");
  f.template add<rlm_turn>("kowalski::rlm_turn");
  f.template add<std::vector<rlm_turn>>("kowalski::rlm_turns");
  f.template add<rlm_sub_call>("kowalski::rlm_sub_call");
  f.template add<rlm_outcome>("kowalski::rlm_outcome");
  f.template add<rlm_run_info>("kowalski::rlm_run_info");
  f.template add<submit_rlm_run>("kowalski::submit_rlm_run");
  f.template add<get_rlm_run>("kowalski::get_rlm_run");
  f.template add<cancel_rlm_run>("kowalski::cancel_rlm_run");
  f.template add<get_rlm_turns>("kowalski::get_rlm_turns");
  f.template add<rlm_turn_page>("kowalski::rlm_turn_page");
  f.template add<memory_item>("kowalski::memory_item");
  f.template add<memory_hit>("kowalski::memory_hit");
  f.template add<std::vector<memory_hit>>("kowalski::memory_hits");
  f.template add<add_memory>("kowalski::add_memory");
  f.template add<add_memories>("kowalski::add_memories");
  f.template add<list_unconsolidated>("kowalski::list_unconsolidated");
  f.template add<mark_consolidated>("kowalski::mark_consolidated");
  f.template add<forget_conversation>("kowalski::forget_conversation");
  f.template add<consolidate_memory>("kowalski::consolidate_memory");
  f.template add<consolidation_report>("kowalski::consolidation_report");
  f.template add<std::vector<memory_item>>("kowalski::memory_items");
  f.template add<search_memory>("kowalski::search_memory");
  f.template add<get_memory>("kowalski::get_memory");
  f.template add<delete_memory>("kowalski::delete_memory");
  f.template add<memory_tier_stats>("kowalski::memory_tier_stats");
  f.template add<embed_texts>("kowalski::embed_texts");
  f.template add<embeddings>("kowalski::embeddings");
  f.template add<triple>("kowalski::triple");
  f.template add<std::vector<triple>>("kowalski::triples");
  f.template add<add_triples>("kowalski::add_triples");
  f.template add<query_triples>("kowalski::query_triples");
  f.template add<kv_op>("kowalski::kv_op");
  f.template add<write_batch>("kowalski::write_batch");
  f.template add<child_info>("kowalski::child_info");
  f.template add<std::vector<child_info>>("kowalski::child_infos");
}

struct registrar {
  caf::actor_system_config& cfg;

  template <class T>
  void add(const char* name) {
    cfg.add_message_type<T>(name);
  }
};

struct name_collector {
  std::vector<std::string>& names;

  template <class T>
  void add(const char* name) {
    names.emplace_back(name);
  }
};

std::string render_error(uint8_t code, caf::atom_value, const caf::message& ctx) {
  std::string out = "kowalski: ";
  out += to_string(static_cast<errc>(code));
  if (ctx.match_elements<std::string, std::string>()
      || ctx.match_elements<std::string, std::string, int32_t, uint64_t>()) {
    auto& field = ctx.get_as<std::string>(0);
    if (!field.empty()) {
      out += " field=" + field;
    }
    out += ": " + ctx.get_as<std::string>(1);
  }
  return out;
}

}  // namespace

void register_message_types(caf::actor_system_config& cfg) {
  for_each_type(registrar{cfg});
  cfg.add_error_category(error_category_atom(), render_error);
}

const std::vector<std::string>& registered_type_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for_each_type(name_collector{out});
    return out;
  }();
  return names;
}

bool operator==(const chat_message& a, const chat_message& b) {
  return a.role == b.role && a.content == b.content;
}

bool operator==(const role_spec& a, const role_spec& b) {
  return a.name == b.name && a.description == b.description;
}

bool operator==(const generation_options& a, const generation_options& b) {
  return a.temperature == b.temperature && a.max_tokens == b.max_tokens;
}

bool operator==(const conversation_info& a, const conversation_info& b) {
  return a.id == b.id && a.model == b.model && a.system_prompt == b.system_prompt
         && a.role == b.role && a.created_ms == b.created_ms
         && a.updated_ms == b.updated_ms && a.message_count == b.message_count;
}

bool operator==(const turn& a, const turn& b) {
  return a.seq == b.seq && a.role == b.role && a.content == b.content
         && a.created_ms == b.created_ms && a.model == b.model
         && a.prompt_tokens == b.prompt_tokens
         && a.completion_tokens == b.completion_tokens && a.replayed == b.replayed
         && a.memory.size() == b.memory.size()
         && std::equal(a.memory.begin(), a.memory.end(), b.memory.begin(),
                       [](const memory_ref& x, const memory_ref& y) {
                         return x.tier == y.tier && x.id == y.id && x.score == y.score
                                && x.matched_by == y.matched_by;
                       });
}

bool operator==(const batch_item& a, const batch_item& b) {
  return a.custom_id == b.custom_id && a.model == b.model && a.messages == b.messages
         && a.options == b.options;
}

bool operator==(const batch_item_result& a, const batch_item_result& b) {
  return a.index == b.index && a.custom_id == b.custom_id && a.status == b.status
         && a.http_status == b.http_status && a.error_code == b.error_code
         && a.error_message == b.error_message && a.attempts == b.attempts
         && a.prompt_tokens == b.prompt_tokens && a.completion_tokens == b.completion_tokens
         && a.latency_us == b.latency_us && a.finished_ms == b.finished_ms
         && a.content == b.content && a.model == b.model
         && a.finish_reason == b.finish_reason;
}

}  // namespace kowalski
