// The conversation_manager: routes messages to conversation actors, starts
// them from the store on demand and bounds the live ones with an O(1) LRU.
#pragma once

#include "actors/conversation_actor.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <memory>
#include <string>

namespace kowalski {

struct conversation_manager_options {
  std::size_t max_live = 100;
  std::string default_model;
  std::string default_system_prompt;
};

/// Spawns the manager.
///
/// Messages:
/// - create_conversation -> conversation_info, once committed. An unknown
///   model is refused (errc::unknown_model, field "model") when the backend's
///   model list can be fetched; otherwise the first message finds out.
/// - list_conversations -> conversation_page, ordered by id.
/// - read_conversation -> conversation_detail with a page of turns, or
///   errc::not_found; (get_atom, std::string id) returns every turn.
/// - (delete_atom, std::string id) -> bool true once the conversation and
///   its turns are erased, or errc::not_found.
/// - user_message -> chat_reply (forwarded to the conversation's actor).
/// - (stats_atom) -> (live, retiring) as two uint64_t.
///
/// Evicting a conversation lets its actor finish queued work first; messages
/// for it wait until it has stopped, then go to a fresh actor that reloads
/// the history from the store. Nothing is lost: turns are committed before
/// any reply.
caf::actor spawn_conversation_manager(caf::actor_system& sys,
                                      std::shared_ptr<const conversation_deps> deps,
                                      conversation_manager_options options);

/// A random (version 4) UUID in lower-case text form.
std::string make_uuid();

/// True for the canonical 36-character UUID form.
bool is_uuid(const std::string& text);

}  // namespace kowalski
