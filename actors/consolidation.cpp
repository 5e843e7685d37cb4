// Consolidation: episodic groups -> a model's summary and triples -> the
// semantic tier -> episodes marked. One group at a time, one request at a time.
#include "actors/consolidation.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <simdjson.h>

#include <cstdio>
#include <deque>
#include <algorithm>
#include <map>

namespace kowalski {

namespace {

struct job {
  consolidate_memory cmd;
  caf::response_promise rp;  // invalid for scheduled runs
  bool scheduled = false;
};

// A conversation whose consolidation failed rests before scheduled runs
// try it again (1 minute, doubling to an hour), so one that always fails
// does not take every run's episodes. Requests try it at once.
struct rest {
  std::chrono::steady_clock::time_point until;
  std::chrono::milliseconds backoff{0};
};

struct consolidation_state {
  consolidation_options opts;
  std::deque<job> jobs;
  bool busy = false;
  // The run in progress.
  std::deque<std::vector<memory_item>> groups;
  std::string current;  // the conversation of the group being consolidated
  std::map<std::string, rest> resting;
  consolidation_report report;
  std::shared_ptr<spdlog::logger> log = logging::get("memory");
  static inline const char* name = "kowalski.consolidation";
};

using consolidation_actor = caf::stateful_actor<consolidation_state>;

void next_job(consolidation_actor* self);
void next_group(consolidation_actor* self);

// Names a group by its episodes, for its marker.
std::string group_key(const std::vector<memory_item>& items) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (auto& item : items) {
    for (unsigned char c : item.id) {
      h ^= c;
      h *= 0x100000001b3ull;
    }
    h ^= 0xff;
    h *= 0x100000001b3ull;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "consolidated/%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string prompt_of(const std::vector<memory_item>& items) {
  std::string turns;
  for (auto& item : items) {
    turns += (item.role.empty() ? std::string{"note"} : item.role) + ": " + item.text + "\n";
  }
  return "Here are turns of a conversation, oldest first. Reply with one JSON object and "
         "nothing else:\n{\"summary\": \"what was said and decided, in a few sentences\", "
         "\"triples\": [[\"subject\", \"predicate\", \"object\"]]}\nThe triples are facts the "
         "turns state, at most 20.\n\n<turns>\n"
         + turns + "</turns>";
}

// Reads the model's answer; false (and `error`) when it is not the JSON asked for.
bool parse_answer(const std::string& text, std::string& summary, std::vector<triple>& triples,
                  std::string& error) {
  auto open = text.find('{');
  auto close = text.rfind('}');
  if (open == std::string::npos || close == std::string::npos || close < open) {
    error = "the model's answer holds no JSON object";
    return false;
  }
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  std::string_view s;
  if (parser.parse(text.substr(open, close - open + 1)).get(doc) != simdjson::SUCCESS
      || doc["summary"].get(s) != simdjson::SUCCESS || s.empty()) {
    error = "the model's answer is not {\"summary\": ..., \"triples\": ...}";
    return false;
  }
  summary = std::string{s};
  simdjson::dom::array arr;
  if (doc["triples"].get(arr) == simdjson::SUCCESS) {
    for (auto t : arr) {
      simdjson::dom::array parts;
      if (t.get(parts) != simdjson::SUCCESS || parts.size() != 3) {
        continue;  // a malformed triple is left out, not the summary
      }
      std::string_view a, b, c;
      if (parts.at(0).get(a) || parts.at(1).get(b) || parts.at(2).get(c) || a.empty()
          || b.empty() || c.empty()) {
        continue;
      }
      triples.push_back(triple{std::string{a}, std::string{b}, std::string{c}, "", 0});
    }
  }
  return true;
}

void group_failed(consolidation_actor* self, std::string error) {
  auto& st = self->state;
  st.log->warn("consolidation of a group failed error=\"{}\"", error);
  auto& r = st.resting[st.current];
  r.backoff = std::min<std::chrono::milliseconds>(
    std::max<std::chrono::milliseconds>(r.backoff * 2, std::chrono::minutes(1)),
    std::chrono::hours(1));
  r.until = std::chrono::steady_clock::now() + r.backoff;
  // The conversation's later parts wait too: they would be marked before
  // the part that failed, and a success would end its rest.
  st.groups.erase(std::remove_if(st.groups.begin(), st.groups.end(),
                                 [&](const std::vector<memory_item>& g) {
                                   return g.front().conversation == st.current;
                                 }),
                  st.groups.end());
  ++st.report.failed;
  st.report.error = std::move(error);
  next_group(self);
}

void mark(consolidation_actor* self, std::vector<memory_item> items) {
  auto& st = self->state;
  mark_consolidated cmd;
  for (auto& item : items) {
    cmd.ids.push_back(item.id);
  }
  self->request(st.opts.memory("episodic"), std::chrono::minutes(2), std::move(cmd))
    .then(
      [=](uint64_t n) {
        self->state.report.episodes += static_cast<uint32_t>(n);
        self->state.resting.erase(self->state.current);
        next_group(self);
      },
      [=](caf::error& e) { group_failed(self, "marking failed: " + describe(e).message); });
}

// The summary and the triples are written, then the marker, then the marks.
void write_group(consolidation_actor* self, std::vector<memory_item> items, std::string summary,
                 std::vector<triple> triples) {
  auto& st = self->state;
  memory_item fact;
  fact.kind = "summary";
  fact.text = std::move(summary);
  fact.conversation = items.front().conversation;
  auto key = group_key(items);
  // Stored with the fact in one commit: after a stop before the marks, the
  // retry gets this fact back instead of a second one.
  fact.dedup_key = key;
  self->request(st.opts.memory("semantic"), std::chrono::minutes(2), add_memory{fact})
    .then(
      [=](memory_item& stored) mutable {
        ++self->state.report.summaries;
        for (auto& t : triples) {
          t.source = stored.id;
        }
        auto after_triples = [=](uint64_t fresh) {
          self->state.report.triples += static_cast<uint32_t>(fresh);
          write_batch wb;
          wb.ops.push_back(kv_op{kv_op::put, "memory_meta", key, stored.id});
          self->request(self->state.opts.writer, std::chrono::minutes(2), std::move(wb))
            .then([=](uint64_t) { mark(self, items); },
                  [=](caf::error& e) {
                    group_failed(self, "the marker could not be stored: " + describe(e).message);
                  });
        };
        if (triples.empty()) {
          return after_triples(0);
        }
        self->request(self->state.opts.memory("semantic"), std::chrono::minutes(2),
                      add_triples{triples})
          .then(after_triples,
                [=](caf::error& e) { group_failed(self, "triples: " + describe(e).message); });
      },
      [=](caf::error& e) { group_failed(self, "the summary: " + describe(e).message); });
}

void next_group(consolidation_actor* self) {
  auto& st = self->state;
  if (st.groups.empty()) {
    auto j = std::move(st.jobs.front());
    st.jobs.pop_front();
    st.log->info("consolidation done episodes={} summaries={} triples={} failed={}",
                 st.report.episodes, st.report.summaries, st.report.triples, st.report.failed);
    if (j.rp.pending()) {
      j.rp.deliver(st.report);
    }
    st.busy = false;
    return next_job(self);
  }
  auto items = std::move(st.groups.front());
  st.groups.pop_front();
  st.current = items.front().conversation;
  // Written before a stop, not marked yet: only the marks are missing.
  std::string done;
  std::string error;
  if (st.opts.env->get("memory_meta", group_key(items), done, error)) {
    return mark(self, std::move(items));
  }
  llm_call call;
  call.request.model = st.opts.model;
  call.request.messages.push_back(chat_message{"user", prompt_of(items)});
  call.request.timeout_ms = static_cast<uint64_t>(st.opts.call_timeout.count());
  self->request(st.opts.llm, st.opts.call_timeout * 4 + std::chrono::minutes(1), call)
    .then(
      [=](llm_reply& reply) mutable {
        std::string summary;
        std::vector<triple> triples;
        std::string why;
        if (!parse_answer(reply.content, summary, triples, why)) {
          return group_failed(self, why);
        }
        write_group(self, std::move(items), std::move(summary), std::move(triples));
      },
      [=](caf::error& e) { group_failed(self, "the model failed: " + describe(e).message); });
}

void next_job(consolidation_actor* self) {
  auto& st = self->state;
  if (st.busy || st.jobs.empty()) {
    return;
  }
  st.busy = true;
  st.report = consolidation_report{};
  auto& cmd = st.jobs.front().cmd;
  auto episodic = st.opts.memory ? st.opts.memory("episodic") : caf::actor{};
  if (!episodic || !st.opts.memory("semantic")) {
    auto j = std::move(st.jobs.front());
    st.jobs.pop_front();
    st.busy = false;
    if (j.rp.pending()) {
      j.rp.deliver(make_error(errc::unavailable, "the memory tiers are not running"));
    }
    return next_job(self);
  }
  list_unconsolidated list{cmd.conversation, cmd.max_episodes, {}};
  if (st.jobs.front().scheduled) {
    auto now = std::chrono::steady_clock::now();
    for (auto& [conv, r] : st.resting) {
      if (r.until > now) {
        list.except.push_back(conv);
      }
    }
  }
  self->request(episodic, std::chrono::minutes(1), std::move(list))
    .then(
      [=](std::vector<memory_item>& items) {
        auto& st = self->state;
        std::map<std::string, std::vector<memory_item>> by_conversation;
        for (auto& item : items) {
          by_conversation[item.conversation].push_back(std::move(item));
        }
        // A long conversation goes in parts, each a prompt of its own.
        for (auto& [conv, all] : by_conversation) {
          std::vector<memory_item> part;
          std::size_t bytes = 0;
          for (auto& item : all) {
            if (!part.empty() && (part.size() >= st.opts.group_episodes
                                  || bytes + item.text.size() > st.opts.group_bytes)) {
              st.groups.push_back(std::move(part));
              part.clear();
              bytes = 0;
            }
            bytes += item.text.size();
            part.push_back(std::move(item));
          }
          if (!part.empty()) {
            st.groups.push_back(std::move(part));
          }
        }
        next_group(self);
      },
      [=](caf::error& e) {
        auto& st = self->state;
        auto j = std::move(st.jobs.front());
        st.jobs.pop_front();
        st.busy = false;
        if (j.rp.pending()) {
          j.rp.deliver(e);
        }
        next_job(self);
      });
}

caf::behavior consolidation(consolidation_actor* self, consolidation_options opts) {
  self->state.opts = std::move(opts);
  if (self->state.opts.every.count() > 0) {
    self->delayed_send(self, self->state.opts.every, tick_atom::value);
  }
  return {
    [=](consolidate_memory& cmd) -> caf::result<consolidation_report> {
      auto rp = self->make_response_promise<consolidation_report>();
      self->state.jobs.push_back(job{std::move(cmd), rp, false});
      next_job(self);
      return rp;
    },
    [=](tick_atom) {
      auto& st = self->state;
      // A scheduled run still queued or running: runs do not pile up
      // when they take longer than the schedule.
      bool queued = std::any_of(st.jobs.begin(), st.jobs.end(),
                                [](const job& j) { return j.scheduled; });
      if (!queued) {
        st.jobs.push_back(job{consolidate_memory{}, caf::response_promise{}, true});
        next_job(self);
      }
      self->delayed_send(self, st.opts.every, tick_atom::value);
    },
  };
}

}  // namespace

caf::actor spawn_consolidation(caf::actor_system& sys, consolidation_options opts) {
  return sys.spawn(consolidation, std::move(opts));
}

}  // namespace kowalski
