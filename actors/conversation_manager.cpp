// Conversation manager: routing, activation from the store, LRU of live actors.
#include "actors/conversation_manager.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <chrono>
#include <list>
#include <random>
#include <unordered_map>

namespace kowalski {

namespace {

int64_t now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

struct live_entry {
  caf::actor handle;
  std::list<std::string>::iterator lru_pos;
};

// A message waiting for a conversation whose old actor is still stopping.
struct stashed {
  user_message msg;
  caf::response_promise rp;
};

struct retiring_entry {
  caf::actor handle;
  std::vector<stashed> waiting;
};

struct manager_state {
  std::shared_ptr<const conversation_deps> deps;
  conversation_manager_options opts;
  std::list<std::string> lru;  // front = most recently used
  std::unordered_map<std::string, live_entry> live;
  std::unordered_map<std::string, retiring_entry> retiring;
  std::unordered_map<caf::actor_addr, std::string> ids;  // of every monitored actor
  // Conversations being deleted, with the delete requests to answer. Until
  // the erase commits, no message may start an actor for them.
  std::unordered_map<std::string, std::vector<caf::response_promise>> deleting;
  std::shared_ptr<spdlog::logger> log = logging::get("conversation");
  static inline const char* name = "kowalski.conversation_manager";

  // Live conversations go down with the manager, whatever ended it.
  ~manager_state() {
    for (auto& [id, entry] : live) {
      caf::anon_send_exit(entry.handle, caf::exit_reason::user_shutdown);
    }
    for (auto& [id, entry] : retiring) {
      caf::anon_send_exit(entry.handle, caf::exit_reason::user_shutdown);
    }
  }
};

using manager_actor = caf::stateful_actor<manager_state>;

bool read_info(const manager_state& st, const std::string& id, conversation_info& info,
               caf::error& err) {
  std::string bytes, error;
  if (!st.deps->env->get("conversations", id, bytes, error)) {
    err = error.empty() ? make_error(errc::not_found, "no conversation " + id, "id")
                        : make_error(errc::store_failure, error);
    return false;
  }
  if (!store::decode(bytes, info)) {
    err = make_error(errc::store_failure, "stored conversation " + id + " is unreadable");
    return false;
  }
  return true;
}

// Asks the oldest live conversation to stop; it finishes queued work first.
void evict_oldest(manager_actor* self) {
  auto& st = self->state;
  auto id = st.lru.back();
  st.lru.pop_back();
  auto i = st.live.find(id);
  auto handle = i->second.handle;
  st.live.erase(i);
  st.retiring[id].handle = handle;
  self->send(handle, evict_atom::value);
  st.log->debug("conversation evicted conversation_id={} live={}", id, st.live.size());
}

// Returns the live actor of `id`, starting it from the store if needed.
caf::actor activate(manager_actor* self, const std::string& id, caf::error& err) {
  auto& st = self->state;
  if (auto i = st.live.find(id); i != st.live.end()) {
    st.lru.splice(st.lru.begin(), st.lru, i->second.lru_pos);
    return i->second.handle;
  }
  conversation_info info;
  if (!read_info(st, id, info, err)) {
    return caf::actor{};
  }
  auto handle = spawn_conversation(self->system(), st.deps, std::move(info));
  self->monitor(handle);
  st.ids.emplace(handle.address(), id);
  st.lru.push_front(id);
  st.live.emplace(id, live_entry{handle, st.lru.begin()});
  if (st.live.size() > st.opts.max_live) {
    evict_oldest(self);
  }
  return handle;
}

caf::error deleted_error(const std::string& id) {
  return make_error(errc::not_found, "conversation " + id + " was deleted", "id");
}

void route(manager_actor* self, user_message& msg, caf::response_promise rp) {
  auto& st = self->state;
  if (st.deleting.count(msg.conversation_id) > 0) {
    rp.deliver(deleted_error(msg.conversation_id));
    return;
  }
  if (auto r = st.retiring.find(msg.conversation_id); r != st.retiring.end()) {
    r->second.waiting.push_back(stashed{std::move(msg), rp});
    return;
  }
  caf::error err;
  auto handle = activate(self, msg.conversation_id, err);
  if (!handle) {
    rp.deliver(std::move(err));
    return;
  }
  rp.delegate(handle, std::move(msg));
}

// Tells the working and episodic tiers to erase what they hold of a
// deleted conversation. Not waited for: the episodic tier's record of it
// is committed with the delete.
void forget_memory(manager_actor* self, const std::string& id) {
  auto& deps = *self->state.deps;
  if (!deps.memory_tiers) {
    return;
  }
  for (const char* tier : {"working", "episodic"}) {
    auto h = deps.memory_tiers(tier);
    if (!h) {
      continue;
    }
    self->request(h, deps.store_timeout, forget_conversation{id})
      .then([](uint64_t) {},
            [=](caf::error& e) {
              self->state.log->warn("a deleted conversation's memory is not erased yet "
                                    "tier={} conversation_id={} error=\"{}\"",
                                    tier, id, describe(e).message);
            });
  }
}

// Erases the records, then answers every delete request for `id`.
void erase_conversation(manager_actor* self, const std::string& id) {
  write_batch batch;
  batch.ops.push_back(kv_op{kv_op::erase, "conversations", id, {}});
  batch.ops.push_back(kv_op{kv_op::erase_prefix, "turns", id, {}});
  // Turns not yet archived in the episodic tier are not archived after it,
  // and those archived are erased: the record says so until the tier has
  // (at once, or at its next start or tick if it is down or fails).
  batch.ops.push_back(kv_op{kv_op::erase_prefix, "memory_meta", "archive/" + id + "/", {}});
  batch.ops.push_back(kv_op{kv_op::put, "memory_meta", "forget/" + id, {}});
  auto finish = [=](caf::error err) {
    auto i = self->state.deleting.find(id);
    if (i == self->state.deleting.end()) {
      return;
    }
    for (auto& rp : i->second) {
      if (err) {
        rp.deliver(err);
      } else {
        rp.deliver(true);
      }
    }
    self->state.deleting.erase(i);
  };
  self->request(self->state.deps->writer, self->state.deps->store_timeout, std::move(batch))
    .then(
      [=](uint64_t) {
        finish(caf::error{});
        forget_memory(self, id);
      },
      [=](caf::error& err) { finish(std::move(err)); });
}

void remove(manager_actor* self, const std::string& id, caf::response_promise rp) {
  auto& st = self->state;
  conversation_info info;
  caf::error err;
  if (!read_info(st, id, info, err)) {
    rp.deliver(std::move(err));
    return;
  }

  auto& waiting = st.deleting[id];
  waiting.push_back(rp);
  if (waiting.size() > 1) {
    return;  // an erase is already on its way
  }

  // Stop the actor first (its callers hear that the conversation was
  // deleted): a commit it sent then lands before our erase.
  if (auto i = st.live.find(id); i != st.live.end()) {
    auto handle = i->second.handle;
    st.lru.erase(i->second.lru_pos);
    st.live.erase(i);
    st.retiring[id].handle = handle;
  }
  if (auto r = st.retiring.find(id); r != st.retiring.end()) {
    self->send_exit(r->second.handle, deleted_error(id));
    return;
  }
  erase_conversation(self, id);
}

void on_down(manager_actor* self, const caf::down_msg& dm) {
  auto& st = self->state;
  auto owner = st.ids.find(dm.source);
  if (owner == st.ids.end()) {
    return;
  }
  auto id = std::move(owner->second);
  st.ids.erase(owner);
  if (auto i = st.live.find(id);
      i != st.live.end() && i->second.handle.address() == dm.source) {
    // A crash: the next message restarts it from the store.
    st.log->warn("conversation stopped unexpectedly conversation_id={} reason=\"{}\"", id,
                 caf::to_string(dm.reason));
    st.lru.erase(i->second.lru_pos);
    st.live.erase(i);
    return;
  }
  if (auto i = st.retiring.find(id);
      i != st.retiring.end() && i->second.handle.address() == dm.source) {
    auto entry = std::move(i->second);
    st.retiring.erase(i);
    if (st.deleting.count(id) > 0) {
      erase_conversation(self, id);
    }
    for (auto& s : entry.waiting) {
      route(self, s.msg, s.rp);  // refused while the delete is pending
    }
    return;
  }
}

// Names the refused model and what the backend serves instead, so the
// caller can pick one; long lists are cut short.
std::string unknown_model_text(const std::string& model,
                               const std::vector<model_info>& served) {
  constexpr std::size_t max_listed = 10;
  auto text = "the backend does not serve model \"" + model + "\"; ";
  if (served.empty()) {
    return text + "it lists no models";
  }
  text += "it serves ";
  for (std::size_t i = 0; i < served.size() && i < max_listed; ++i) {
    text += (i == 0 ? "\"" : ", \"") + served[i].name + "\"";
  }
  if (served.size() > max_listed) {
    text += " and " + std::to_string(served.size() - max_listed) + " more";
  }
  return text;
}

void create(manager_actor* self, create_conversation& req, caf::response_promise rp) {
  auto& st = self->state;
  conversation_info info;
  info.id = make_uuid();
  info.model = req.model.empty() ? st.opts.default_model : req.model;
  info.system_prompt = req.system_prompt.empty() ? st.opts.default_system_prompt
                                                 : req.system_prompt;
  info.role = req.role;
  info.created_ms = info.updated_ms = now_ms();

  auto store_it = [=](conversation_info info) mutable {
    write_batch batch;
    batch.ops.push_back(kv_op{kv_op::put, "conversations", info.id, store::encode(info)});
    self->request(self->state.deps->writer, self->state.deps->store_timeout,
                  std::move(batch))
      .then(
        [=](uint64_t) mutable {
          self->state.log->info("conversation created conversation_id={} model={}",
                                info.id, info.model);
          rp.deliver(info);
        },
        [=](caf::error& err) mutable { rp.deliver(std::move(err)); });
  };

  // Validate the model against the backend's list when it can be had.
  self->request(st.deps->llm, std::chrono::seconds(5), models_atom::value)
    .then(
      [=](std::vector<model_info>& models) mutable {
        for (auto& m : models) {
          if (m.name == info.model || m.name == info.model + ":latest") {
            store_it(info);
            return;
          }
        }
        rp.deliver(make_error(errc::unknown_model, unknown_model_text(info.model, models),
                              "model"));
      },
      [=](caf::error&) mutable { store_it(info); });
}

conversation_page list(manager_actor* self, const list_conversations& req,
                       caf::error& err) {
  conversation_page page;
  std::string error;
  // Peers may call over CAF remoting without the gateway's checks.
  auto limit = std::min<uint32_t>(std::max<uint32_t>(req.limit, 1), 1000);
  auto ok = self->state.deps->env->scan(
    "conversations", "", req.after,
    [&](std::string_view key, std::string_view value) {
      if (key == req.after) {
        return true;
      }
      if (page.items.size() == limit) {
        page.next_after = page.items.back().id;
        return false;
      }
      conversation_info info;
      if (store::decode(value, info)) {
        page.items.push_back(std::move(info));
      }
      return true;
    },
    error);
  if (!ok) {
    err = make_error(errc::store_failure, error);
  }
  return page;
}

// Reads the conversation and a page of its turns from one snapshot, so the
// message count and the turns agree even while commits land.
caf::result<conversation_detail> detail(manager_actor* self, const read_conversation& req) {
  conversation_detail out;
  bool found = false;
  bool readable = true;
  std::string error;
  auto& id = req.id;
  auto ok = self->state.deps->env->read(
    [&](const store::reader& r) {
      std::string bytes;
      if (!r.get("conversations", id, bytes, error)) {
        return error.empty();
      }
      found = true;
      if (!store::decode(bytes, out.info)) {
        readable = false;
        return true;
      }
      return r.scan("turns", id, store::turn_key(id, req.after_seq + 1),
                    [&](std::string_view, std::string_view value) {
                      turn t;
                      if (!store::decode(value, t)) {
                        return true;
                      }
                      if (out.turns.size() == req.limit) {
                        out.next_after_seq = out.turns.back().seq;
                        return false;
                      }
                      out.turns.push_back(std::move(t));
                      return true;
                    },
                    error);
    },
    error);
  if (!ok) {
    return make_error(errc::store_failure, error);
  }
  if (!found) {
    return make_error(errc::not_found, "no conversation " + id, "id");
  }
  if (!readable) {
    return make_error(errc::store_failure, "stored conversation " + id + " is unreadable");
  }
  return out;
}

caf::behavior manager(manager_actor* self, std::shared_ptr<const conversation_deps> deps,
                      conversation_manager_options opts) {
  self->state.deps = std::move(deps);
  self->state.opts = std::move(opts);
  self->set_down_handler([=](caf::down_msg& dm) { on_down(self, dm); });
  return {
    [=](create_conversation& req) {
      auto rp = self->make_response_promise();
      create(self, req, rp);
      return rp;
    },
    [=](list_conversations& req) -> caf::result<conversation_page> {
      caf::error err;
      auto page = list(self, req, err);
      if (err) {
        return err;
      }
      return page;
    },
    [=](get_atom, const std::string& id) {
      return detail(self, read_conversation{id, 0, UINT32_MAX});
    },
    [=](read_conversation& req) {
      // Peers may call over CAF remoting without the gateway's checks.
      req.limit = std::min<uint32_t>(std::max<uint32_t>(req.limit, 1), 10'000);
      return detail(self, req);
    },
    [=](delete_atom, const std::string& id) {
      auto rp = self->make_response_promise();
      remove(self, id, rp);
      return rp;
    },
    [=](user_message& msg) {
      auto rp = self->make_response_promise();
      route(self, msg, rp);
      return rp;
    },
    [=](stats_atom) {
      return caf::make_message(uint64_t{self->state.live.size()},
                               uint64_t{self->state.retiring.size()});
    },
  };
}

}  // namespace

caf::actor spawn_conversation_manager(caf::actor_system& sys,
                                      std::shared_ptr<const conversation_deps> deps,
                                      conversation_manager_options options) {
  return sys.spawn(manager, std::move(deps), std::move(options));
}

std::string make_uuid() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t hi = rng();
  uint64_t lo = rng();
  hi = (hi & 0xFFFFFFFFFFFF0FFFULL) | 0x0000000000004000ULL;  // version 4
  lo = (lo & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL;  // RFC 4122 variant
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx",
                static_cast<unsigned>(hi >> 32), static_cast<unsigned>((hi >> 16) & 0xFFFF),
                static_cast<unsigned>(hi & 0xFFFF), static_cast<unsigned>(lo >> 48),
                static_cast<unsigned long long>(lo & 0xFFFFFFFFFFFFULL));
  return buf;
}

bool is_uuid(const std::string& text) {
  if (text.size() != 36) {
    return false;
  }
  for (std::size_t i = 0; i < text.size(); ++i) {
    auto c = text[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') {
        return false;
      }
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
      return false;
    }
  }
  return true;
}

}  // namespace kowalski
