// The consolidation actor: the model summarizes what the episodic tier has
// not consolidated yet, and extracts triples; the results go to the
// semantic tier and the episodes are marked, so nothing is done twice.
#pragma once

#include <caf/actor.hpp>
#include <caf/fwd.hpp>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

namespace kowalski {

namespace store {
class environment;
}

struct consolidation_options {
  caf::actor llm;     ///< answers llm_call (the batch coordinator)
  std::string model;  ///< the model that summarizes
  /// The memory tiers by name, as current handles.
  std::function<caf::actor(const std::string&)> memory;
  std::shared_ptr<store::environment> env;  ///< for the markers of finished groups
  caf::actor writer;
  std::chrono::milliseconds every{0};  ///< a schedule; 0 = on request only
  std::chrono::milliseconds call_timeout{120'000};
  /// A conversation's episodes go to the model in parts of at most this
  /// many episodes and bytes of text.
  std::size_t group_episodes = 40;
  std::size_t group_bytes = 48 * 1024;
};

/// Messages: consolidate_memory -> consolidation_report. Requests are served
/// one at a time. Each conversation's episodes are one group (or several,
/// of at most group_episodes and group_bytes each): summarized,
/// written to the semantic tier with their triples, then marked
/// consolidated. The summary carries a key made of the group's episode ids,
/// committed with it, so a stop between writing and marking does not write
/// it twice (the retry gets the stored summary back). A group that gained
/// episodes in between is a new group, whose summary overlaps the first.
/// On a schedule, a conversation whose last consolidation failed is left
/// out for a while (1 minute, doubling to an hour); requests include it.
caf::actor spawn_consolidation(caf::actor_system& sys, consolidation_options opts);

}  // namespace kowalski
