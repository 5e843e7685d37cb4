// RLM manager: one run actor per run, records committed as runs start and
// end, lookups from the store.
#include "actors/rlm_manager.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <cstdio>
#include <map>
#include <random>

namespace kowalski {

namespace {

using std::chrono::milliseconds;

int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

struct live_run {
  caf::actor actor;
  std::vector<caf::response_promise> cancels;  // answered when it has stopped
  std::vector<caf::response_promise> waiters;  // get_rlm_run with wait_ms
};

struct manager_state {
  std::shared_ptr<store::environment> env;
  rlm_options run;
  std::map<std::string, live_run> live;
  int64_t last_ms = 0;
  std::mt19937_64 rng{std::random_device{}()};
  std::shared_ptr<spdlog::logger> log = logging::get("rlm");
  static inline const char* name = "kowalski.rlm_manager";
};

using manager_actor = caf::stateful_actor<manager_state>;

// "run_" + 12 hex digits of creation ms + 8 random: sorted by creation.
std::string new_id(manager_state& st) {
  auto ms = std::max(now_ms(), st.last_ms + 1);
  st.last_ms = ms;
  char buf[32];
  std::snprintf(buf, sizeof buf, "run_%012llx%08x", static_cast<unsigned long long>(ms),
                static_cast<unsigned>(st.rng() & 0xffffffffu));
  return buf;
}

write_batch record(const rlm_run_info& info) {
  write_batch wb;
  auto copy = info;
  copy.outcome.trajectory.clear();
  wb.ops.push_back(kv_op{kv_op::put, "rlm_runs", info.id, store::encode(copy)});
  return wb;
}

caf::expected<rlm_run_info> read(manager_state& st, const std::string& id) {
  std::string bytes;
  std::string error;
  if (!st.env->get("rlm_runs", id, bytes, error)) {
    if (!error.empty()) {
      return make_error(errc::store_failure, "reading run " + id + ": " + error);
    }
    return make_error(errc::not_found, "no run \"" + id + "\"", "id");
  }
  rlm_run_info info;
  if (!store::decode(bytes, info)) {
    return make_error(errc::store_failure, "run record " + id + " cannot be decoded");
  }
  if (info.status == "running") {
    // Progress so far, from the turns committed.
    st.env->scan("rlm_turns", id, "", [&](std::string_view, std::string_view v) {
      rlm_turn t;
      if (store::decode(v, t)) {
        ++info.outcome.turns;
        info.outcome.prompt_tokens += t.prompt_tokens;
        info.outcome.completion_tokens += t.completion_tokens;
        info.outcome.duration_ms = t.duration_us / 1000;
      }
      return true;
    }, error);
  }
  return info;
}

// The run ended (answered, or cancelled): its record says how.
void ended(manager_actor* self, rlm_run_info info, rlm_outcome outcome) {
  auto& st = self->state;
  info.status = outcome.reason == "cancelled" ? "cancelled" : "finished";
  info.finished_ms = now_ms();
  info.outcome = std::move(outcome);
  auto id = info.id;
  self->request(st.run.writer, std::chrono::minutes(2), record(info))
    .then(
      [=](uint64_t) {
        auto i = self->state.live.find(id);
        if (i != self->state.live.end()) {
          for (auto& rp : i->second.cancels) {
            rp.deliver(info);
          }
          for (auto& rp : i->second.waiters) {
            rp.deliver(info);
          }
          self->state.live.erase(i);
        }
      },
      [=](caf::error& e) {
        self->state.log->error("rlm run record not stored run_id={} error=\"{}\"", id,
                               describe(e).message);
        self->state.live.erase(id);
      });
}

caf::result<rlm_run_info> submit(manager_actor* self, submit_rlm_run& cmd) {
  auto& st = self->state;
  if (st.run.system_prompt.empty()) {
    return make_error(errc::unavailable, "RLM runs are off on this node: its root-model "
                                         "instructions (rlm.system_prompt_file) could not "
                                         "be read");
  }
  if (auto err = validate(cmd.start)) {
    return err;
  }
  rlm_run_info info;
  info.id = new_id(st);
  info.status = "running";
  info.question = cmd.start.question;
  info.model = cmd.start.model.empty() ? st.run.default_model : cmd.start.model;
  info.created_ms = now_ms();
  auto rp = self->make_response_promise();
  auto start = std::move(cmd.start);
  self->request(st.run.writer, std::chrono::minutes(2), record(info))
    .then(
      [=](uint64_t) mutable {
        auto& st = self->state;
        auto opts = st.run;
        opts.run_id = info.id;
        auto actor = spawn_rlm_run(self->system(), opts);
        st.live[info.id].actor = actor;
        rp.deliver(info);
        // The run's own limits end it; this timeout only guards a lost actor.
        self->request(actor, std::chrono::seconds(7 * 24 * 3600), std::move(start))
          .then([=](rlm_outcome& out) { ended(self, info, std::move(out)); },
                [=](caf::error& e) {
                  rlm_outcome out;
                  out.reason = "failed";
                  out.error = describe(e).message;
                  ended(self, info, std::move(out));
                });
      },
      [=](caf::error& e) mutable { rp.deliver(std::move(e)); });
  return caf::delegated<rlm_run_info>{};
}

caf::result<rlm_run_info> cancel(manager_actor* self, const std::string& id) {
  auto& st = self->state;
  auto i = st.live.find(id);
  if (i == st.live.end()) {
    auto found = read(st, id);
    if (!found) {
      return std::move(found.error());
    }
    return make_error(errc::conflict, "run " + id + " already ended (" + found->status + ")",
                      "id");
  }
  i->second.cancels.push_back(self->make_response_promise());
  self->send(i->second.actor, cancel_atom::value);
  return caf::delegated<rlm_run_info>{};
}

// Runs left running by a node that stopped cannot go on (their REPL is
// gone); they are marked so, not left running forever.
void mark_interrupted(manager_actor* self) {
  auto& st = self->state;
  std::vector<rlm_run_info> stale;
  std::string error;
  st.env->scan("rlm_runs", "", "", [&](std::string_view, std::string_view v) {
    rlm_run_info info;
    if (store::decode(v, info) && info.status == "running") {
      stale.push_back(std::move(info));
    }
    return true;
  }, error);
  for (auto& info : stale) {
    info.status = "finished";
    info.finished_ms = now_ms();
    info.outcome.reason = "interrupted";
    info.outcome.error = "the node stopped during the run";
    self->request(st.run.writer, std::chrono::minutes(2), record(info))
      .then([](uint64_t) {}, [](caf::error&) {});
  }
}

caf::behavior manager(manager_actor* self, std::shared_ptr<store::environment> env,
                      rlm_options run) {
  self->state.env = std::move(env);
  self->state.run = std::move(run);
  // Runs are not linked to the manager: they stop with it explicitly.
  self->set_exit_handler([=](caf::exit_msg& msg) {
    for (auto& [id, r] : self->state.live) {
      self->send_exit(r.actor, msg.reason);
    }
    self->quit(msg.reason);
  });
  mark_interrupted(self);
  return {
    [=](submit_rlm_run& cmd) { return submit(self, cmd); },
    [=](get_rlm_run& cmd) -> caf::result<rlm_run_info> {
      auto live = self->state.live.find(cmd.id);
      if (cmd.wait_ms > 0 && live != self->state.live.end()) {
        // Answered when the run ends, or with its record when the wait is up.
        auto rp = self->make_response_promise();
        live->second.waiters.push_back(rp);
        self->delayed_send(self, milliseconds{cmd.wait_ms}, tick_atom::value, cmd.id);
        return caf::delegated<rlm_run_info>{};
      }
      auto found = read(self->state, cmd.id);
      if (!found) {
        return std::move(found.error());
      }
      return std::move(*found);
    },
    [=](cancel_rlm_run& cmd) { return cancel(self, cmd.id); },
    [=](tick_atom, const std::string& id) {
      auto live = self->state.live.find(id);
      if (live == self->state.live.end() || live->second.waiters.empty()) {
        return;
      }
      auto found = read(self->state, id);
      auto waiting = std::move(live->second.waiters);
      live->second.waiters.clear();
      for (auto& rp : waiting) {
        if (found) {
          rp.deliver(*found);
        } else {
          rp.deliver(found.error());
        }
      }
    },
  };
}

}  // namespace

caf::actor spawn_rlm_manager(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                             rlm_options run) {
  return sys.spawn(manager, std::move(env), std::move(run));
}

}  // namespace kowalski
