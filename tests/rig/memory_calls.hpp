// Requests to a node's memory tiers for tests, answered or failed within a
// timeout; shared by the memory suites' fixtures.
#pragma once

#include "messages/atoms.hpp"
#include "messages/types.hpp"
#include "runtime/node/node.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include <boost/test/unit_test.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace kowalski::testing {

/// Sends `msg` to the node's `tier` and waits (30 s at most) for a T or an error.
template <class T, class Message>
caf::expected<T> ask_memory(node& n, const std::string& tier, Message msg) {
  caf::scoped_actor self{n.system()};
  caf::expected<T> out{T{}};
  self->request(n.memory(tier), std::chrono::seconds(30), std::move(msg))
    .receive([&](T& value) { out = std::move(value); },
             [&](caf::error& e) { out = std::move(e); });
  return out;
}

/// The fixtures' common calls: a node `n` and the tiers behind it.
struct memory_calls {
  virtual ~memory_calls() = default;
  virtual node& memory_node() = 0;

  /// The node's gateway, "http://127.0.0.1:<port>".
  std::string base() {
    return "http://127.0.0.1:" + std::to_string(memory_node().http_port());
  }

  caf::expected<memory_item> add(const std::string& tier, memory_item item) {
    return ask_memory<memory_item>(memory_node(), tier, add_memory{std::move(item)});
  }

  memory_item add_text(const std::string& tier, const std::string& text,
                       const std::string& conversation = "c1", int64_t created_ms = 0) {
    memory_item item;
    item.text = text;
    item.conversation = conversation;
    item.created_ms = created_ms;
    auto got = add(tier, item);
    if (!got) {
      BOOST_FAIL(caf::to_string(got.error()));
    }
    return *got;
  }

  caf::expected<std::vector<memory_hit>> try_search(const std::string& tier,
                                                    const std::string& query, uint32_t limit = 3,
                                                    const std::string& conversation = {}) {
    return ask_memory<std::vector<memory_hit>>(memory_node(), tier,
                                               search_memory{query, conversation, limit});
  }

  std::vector<memory_hit> search(const std::string& tier, const std::string& query,
                                 uint32_t limit = 3, const std::string& conversation = {}) {
    auto got = try_search(tier, query, limit, conversation);
    if (!got) {
      BOOST_FAIL(caf::to_string(got.error()));
    }
    return *got;
  }

  memory_tier_stats stats(const std::string& tier) {
    auto got = ask_memory<memory_tier_stats>(memory_node(), tier, stats_atom::value);
    if (!got) {
      BOOST_FAIL(caf::to_string(got.error()));
    }
    return *got;
  }
};

}  // namespace kowalski::testing
