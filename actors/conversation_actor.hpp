// A conversation actor: one per live conversation. It answers user messages
// one at a time and commits every turn before it replies.
#pragma once

#include "messages/types.hpp"

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <functional>
#include <memory>

namespace kowalski {

namespace store {
class environment;
}

/// What every conversation needs from the node.
struct conversation_deps {
  std::shared_ptr<store::environment> env;  ///< for loading history
  caf::actor writer;                        ///< the store writer
  caf::actor llm;                           ///< the llm_router
  std::size_t history_window = 100;
  /// Messages that may wait behind the one being answered; more are refused
  /// with errc::overloaded rather than queued past any caller's timeout.
  std::size_t max_queued = 16;
  generation_options defaults;  ///< used where a message leaves options unset
  std::chrono::milliseconds llm_timeout{310'000};
  std::chrono::milliseconds store_timeout{60'000};
  /// The memory tiers by name (working, episodic, semantic), as current
  /// handles; unset = chat without memory. Each turn asks the tiers for up
  /// to memory_limits items (working, episodic, semantic; 0 = not asked)
  /// and archives its turns in the working and episodic tiers.
  std::function<caf::actor(const std::string&)> memory;
  /// The same, set whether or not chat uses memory: a deleted
  /// conversation's items are erased from the working and episodic tiers.
  std::function<caf::actor(const std::string&)> memory_tiers;
  uint32_t memory_limits[3] = {3, 3, 3};
  std::chrono::milliseconds memory_timeout{2'000};  ///< a slower tier is left out
  /// Vector matches less similar than this are not worth a prompt's room.
  double memory_min_similarity = 0.2;
};

/// Spawns the actor of conversation `info`; it loads the last history_window
/// turns from the store before handling its first message.
///
/// Messages:
/// - user_message -> chat_reply after both turns are committed. What the
///   memory tiers found for the message goes into the system prompt as a
///   delimited section (never into the stored user turn) and into
///   chat_reply::memory. If the model
///   fails, the user turn alone is committed and the model's error returned;
///   the conversation stays usable. Messages queue while one is answered.
/// - (evict_atom): finish queued work, then exit normally.
/// - (get_atom) -> conversation_info as the actor currently knows it.
caf::actor spawn_conversation(caf::actor_system& sys, std::shared_ptr<const conversation_deps> deps,
                              conversation_info info);

/// The system prompt sent to the model: the conversation's prompt plus its
/// role, rendered once (never accumulated).
std::string render_system_prompt(const conversation_info& info);

}  // namespace kowalski
