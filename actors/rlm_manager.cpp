// RLM manager: one run actor per run, records committed as runs start and
// end, contexts kept on disk while their run lasts, lookups and long polls
// from the store, resumption of the runs a stopped node left.
#include "actors/rlm_manager.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/llm/models.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/stateful_actor.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <set>

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
  rlm_run_info info;  // as launched
  std::string session;
  uint32_t incarnation = 0;  // launches of the run by this manager
  uint32_t crashes = 0;
  std::vector<caf::response_promise> cancels;  // answered when it has stopped
  // Long polls, each answered at the run's end (or news) or at its own deadline.
  std::vector<std::pair<caf::response_promise, std::chrono::steady_clock::time_point>> waiters;
  std::vector<std::pair<caf::response_promise, get_rlm_turns>> followers;
  std::vector<std::chrono::steady_clock::time_point> follower_deadlines;
};

// A submission whose context is being written to disk.
struct pending_submission {
  rlm_run_info info;
  caf::response_promise rp;
};

struct manager_state {
  std::shared_ptr<store::environment> env;
  rlm_manager_options opts;
  std::map<std::string, live_run> live;
  std::map<uint64_t, pending_submission> writing;
  std::map<caf::actor_addr, std::string> linked;  // run actors not exited yet, and their run
  uint64_t next_submission = 0;
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

// Writes `data` to a new file and makes it durable (file and directory).
std::string write_durable(const std::string& path, const std::string& data) {
  auto fail = [&](const char* what) { return std::string{what} + " " + path + ": "
                                             + std::strerror(errno); };
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    return fail("cannot create");
  }
  std::size_t done = 0;
  while (done < data.size()) {
    auto n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      auto err = fail("cannot write");
      ::close(fd);
      return err;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd) != 0) {
    auto err = fail("cannot sync");
    ::close(fd);
    return err;
  }
  ::close(fd);
  auto dir = std::filesystem::path{path}.parent_path().string();
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return {};
}

void remove_context(const rlm_run_info& info) {
  if (info.owns_context && !info.request.context_file.empty()) {
    std::error_code ec;
    std::filesystem::remove(info.request.context_file, ec);
  }
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
    // Progress so far, from what was committed.
    auto& o = info.outcome;
    auto prefix = store::items_of(id);
    st.env->scan("rlm_turns", prefix, "", [&](std::string_view, std::string_view v) {
      rlm_turn t;
      if (store::decode(v, t)) {
        o.turns = t.index;
        o.prompt_tokens += uint64_t{t.prompt_tokens} + t.summary_prompt_tokens;
        o.completion_tokens += uint64_t{t.completion_tokens} + t.summary_completion_tokens;
        o.compactions += t.summary.empty() ? 0 : 1;
        o.duration_ms = t.duration_us / 1000;
      }
      return true;
    }, error);
    st.env->scan("rlm_calls", prefix, "", [&](std::string_view, std::string_view v) {
      rlm_sub_call c;
      if (store::decode(v, c)) {
        ++o.sub_calls;
        o.sub_prompt_tokens += c.prompt_tokens;
        o.sub_completion_tokens += c.completion_tokens;
      }
      return true;
    }, error);
  }
  return info;
}

// The turns after `after`, their sub-calls, and the run's record.
caf::expected<rlm_turn_page> read_page(manager_state& st, const std::string& id,
                                       uint32_t after) {
  auto info = read(st, id);
  if (!info) {
    return std::move(info.error());
  }
  rlm_turn_page page;
  page.run = std::move(*info);
  std::string error;
  auto prefix = store::items_of(id);
  auto from = store::item_key(id, uint64_t{after} + 1);
  st.env->scan("rlm_turns", prefix, from, [&](std::string_view, std::string_view v) {
    rlm_turn t;
    if (store::decode(v, t)) {
      page.turns.push_back(std::move(t));
    }
    return true;
  }, error);
  st.env->scan("rlm_calls", prefix, from, [&](std::string_view, std::string_view v) {
    rlm_sub_call c;
    if (store::decode(v, c)) {
      page.sub_calls.push_back(std::move(c));
    }
    return true;
  }, error);
  if (!error.empty()) {
    return make_error(errc::store_failure, "reading the turns of " + id + ": " + error);
  }
  return page;
}

// Answers the followers of a run: all of them (news), or only those whose
// wait is up (`due`).
void answer_followers(manager_actor* self, live_run& r, const std::string& id,
                      std::optional<std::chrono::steady_clock::time_point> due = std::nullopt) {
  std::vector<std::pair<caf::response_promise, get_rlm_turns>> followers;
  std::vector<std::pair<caf::response_promise, get_rlm_turns>> kept;
  std::vector<std::chrono::steady_clock::time_point> kept_deadlines;
  for (std::size_t i = 0; i < r.followers.size(); ++i) {
    if (due && i < r.follower_deadlines.size() && r.follower_deadlines[i] > *due) {
      kept.push_back(std::move(r.followers[i]));
      kept_deadlines.push_back(r.follower_deadlines[i]);
    } else {
      followers.push_back(std::move(r.followers[i]));
    }
  }
  r.followers = std::move(kept);
  r.follower_deadlines = std::move(kept_deadlines);
  for (auto& [rp, cmd] : followers) {
    auto page = read_page(self->state, id, cmd.after);
    if (page) {
      rp.deliver(std::move(*page));
    } else {
      rp.deliver(page.error());
    }
  }
}

// The run ended (answered, or cancelled): its record says how.
void ended(manager_actor* self, rlm_run_info info, rlm_outcome outcome) {
  auto& st = self->state;
  info.status = outcome.reason == "cancelled" ? "cancelled" : "finished";
  info.finished_ms = now_ms();
  info.outcome = std::move(outcome);
  auto id = info.id;
  // Everyone waiting hears how the run ended, stored or not.
  auto answer_all = [=](bool stored) {
    auto i = self->state.live.find(id);
    if (i == self->state.live.end()) {
      return;
    }
    auto r = std::move(i->second);
    self->state.live.erase(i);
    for (auto& rp : r.cancels) {
      rp.deliver(info);
    }
    for (auto& [rp, deadline] : r.waiters) {
      rp.deliver(info);
    }
    if (stored) {
      return answer_followers(self, r, id);
    }
    rlm_turn_page page;
    page.run = info;
    for (auto& [rp, cmd] : r.followers) {
      rp.deliver(page);
    }
  };
  self->request(st.opts.run.writer, std::chrono::minutes(2), record(info))
    .then(
      [=](uint64_t) {
        remove_context(info);
        answer_all(true);
      },
      [=](caf::error& e) {
        // The record still says running: the next start resumes the run.
        self->state.log->error("rlm run record not stored run_id={} error=\"{}\"", id,
                               describe(e).message);
        answer_all(false);
      });
}

constexpr uint32_t max_crashes = 3;

struct launched {
  rlm_run_info info;
  std::string session;
};

void launch(manager_actor* self, const rlm_run_info& info);

// A run died without answering (a bug, or an exit sent from outside): it
// starts again from what it committed, up to max_crashes times.
void crashed(manager_actor* self, const std::string& id, const caf::error& reason) {
  auto& st = self->state;
  auto live = st.live.find(id);
  if (live == st.live.end()) {
    return;
  }
  auto& r = live->second;
  // What the dead run was executing is killed, and its worker freed.
  self->request(st.opts.run.repl, std::chrono::seconds(10), end_repl_session{r.session, true})
    .then([](bool) {}, [](caf::error&) {});
  if (r.crashes < max_crashes && r.cancels.empty()) {
    ++r.crashes;
    st.log->warn("rlm run died, starting it again from its log run_id={} crashes={} "
                 "reason=\"{}\"",
                 id, r.crashes, caf::to_string(reason));
    return launch(self, r.info);
  }
  rlm_outcome out;
  out.reason = r.cancels.empty() ? "failed" : "cancelled";
  out.error = "the run died " + std::to_string(r.crashes + 1) + " times, last: "
              + caf::to_string(reason);
  ended(self, r.info, std::move(out));
}

// Starts (or resumes) the run of a committed record. The run is linked to
// the manager: it stops when the manager dies, and its death reaches the
// manager's exit handler (a dead actor answers no request).
void launch(manager_actor* self, const rlm_run_info& info) {
  auto& st = self->state;
  auto& entry = st.live[info.id];
  entry.info = info;
  auto opts = st.opts.run;
  opts.run_id = info.id;
  opts.env = st.env;
  opts.progress = caf::actor_cast<caf::actor>(self);
  auto incarnation = ++entry.incarnation;
  opts.session = "rlm-" + info.id + "-" + std::to_string(incarnation);
  entry.session = opts.session;
  auto actor = spawn_rlm_run(self->system(), opts);
  entry.actor = actor;
  st.linked.emplace(actor.address(), info.id);
  self->link_to(actor);
  auto current = [=] {
    auto i = self->state.live.find(info.id);
    return i != self->state.live.end() && i->second.incarnation == incarnation;
  };
  // The run's own limits end it; this timeout only guards a lost actor.
  self->request(actor, std::chrono::seconds(7 * 24 * 3600), info.request)
    .then(
      [=](rlm_outcome& out) {
        if (current()) {
          ended(self, info, std::move(out));
        }
      },
      [=](caf::error& e) {
        if (!current()) {
          return;
        }
        rlm_outcome out;
        out.reason = "failed";
        out.error = describe(e).message;
        ended(self, info, std::move(out));
      });
}

void store_and_launch(manager_actor* self, rlm_run_info info, caf::response_promise rp) {
  auto& st = self->state;
  self->request(st.opts.run.writer, std::chrono::minutes(2), record(info))
    .then(
      [=](uint64_t) mutable {
        launch(self, info);
        auto shown = info;
        rp.deliver(shown);
      },
      [=](caf::error& e) mutable {
        remove_context(info);
        rp.deliver(std::move(e));
      });
}

// Whether `path` lies in one of the directories runs may read contexts from.
bool allowed_file(const std::string& path, const std::vector<std::string>& dirs) {
  std::error_code ec;
  auto real = std::filesystem::canonical(path, ec);
  if (ec) {
    return false;
  }
  for (auto& d : dirs) {
    auto root = std::filesystem::canonical(d, ec);
    if (ec) {
      continue;
    }
    auto rel = real.lexically_relative(root);
    if (!rel.empty() && *rel.begin() != "..") {
      return true;
    }
  }
  return false;
}

caf::error check_context(const manager_state& st, rlm_start& s) {
  auto limit = st.opts.max_context_bytes;
  if (s.context_file.empty()) {
    if (s.context.size() > limit) {
      return make_error(errc::payload_too_large,
                        "context is " + std::to_string(s.context.size())
                          + " bytes; this node takes at most " + std::to_string(limit)
                          + " (rlm.max_context_bytes)",
                        "context");
    }
    return caf::error{};
  }
  auto& path = s.context_file;
  if (path.front() != '/') {
    return make_error(errc::invalid_argument,
                      "context_file must be an absolute path on the node, got \"" + path + "\"",
                      "context_file");
  }
  // One answer for a file that is missing and one outside the allowed
  // directories: the API does not tell which paths exist on the node.
  auto refused = make_error(errc::invalid_argument,
                            "context_file \"" + path + "\" is not a file in the directories "
                            "runs may read (rlm.context_dirs)",
                            "context_file");
  std::error_code ec;
  auto real = std::filesystem::canonical(path, ec);
  if (ec || !allowed_file(real.string(), st.opts.context_dirs)) {
    return refused;
  }
  struct stat sb {};
  if (::stat(real.c_str(), &sb) != 0 || !S_ISREG(sb.st_mode)) {
    return refused;
  }
  if (::access(real.c_str(), R_OK) != 0) {
    return make_error(errc::invalid_argument,
                      "context_file \"" + path + "\" cannot be read by the node: "
                        + std::strerror(errno),
                      "context_file");
  }
  if (static_cast<uint64_t>(sb.st_size) > limit) {
    return make_error(errc::payload_too_large,
                      "context_file \"" + path + "\" is " + std::to_string(sb.st_size)
                        + " bytes; this node takes at most " + std::to_string(limit)
                        + " (rlm.max_context_bytes)",
                      "context_file");
  }
  // The run (and a resumed one) opens the file as it was checked.
  s.context_file = real.string();
  return caf::error{};
}

// After the model check: inline contexts go to disk first, then the record.
void accept(manager_actor* self, rlm_start start, caf::response_promise rp) {
  auto& st = self->state;
  rlm_run_info info;
  info.id = new_id(st);
  info.status = "running";
  info.question = start.question;
  info.model = start.model.empty() ? st.opts.run.default_model : start.model;
  info.created_ms = now_ms();
  if (!start.context_file.empty()) {
    info.request = std::move(start);
    return store_and_launch(self, std::move(info), std::move(rp));
  }
  auto data = std::make_shared<std::string>(std::move(start.context));
  start.context.clear();
  start.context_file = st.opts.context_dir + "/" + info.id + ".ctx";
  info.request = std::move(start);
  info.owns_context = true;
  auto sid = ++st.next_submission;
  st.writing.emplace(sid, pending_submission{info, std::move(rp)});
  // Writing a gigabyte takes a while: not on the manager's thread.
  auto path = info.request.context_file;
  auto manager = caf::actor_cast<caf::actor>(self);
  self->system().spawn([=](caf::blocking_actor* b) {
    auto error = write_durable(path, *data);
    b->send(manager, done_atom::value, sid, error);
  });
}

caf::result<rlm_run_info> submit(manager_actor* self, submit_rlm_run& cmd) {
  auto& st = self->state;
  if (st.opts.run.system_prompt.empty()) {
    return make_error(errc::unavailable, "RLM runs are off on this node: its root-model "
                                         "instructions (rlm.system_prompt_file) could not "
                                         "be read");
  }
  auto& s = cmd.start;
  s.depth = 0;
  if (auto err = validate(s)) {
    return err;
  }
  if (s.max_depth > st.opts.max_depth_limit) {
    return make_error(errc::invalid_argument,
                      "max_depth is " + std::to_string(s.max_depth) + "; this node allows at "
                        "most " + std::to_string(st.opts.max_depth_limit)
                        + " (rlm.max_depth_limit)",
                      "max_depth");
  }
  if (auto err = check_context(st, s)) {
    return err;
  }
  auto rp = self->make_response_promise();
  // Shared, not copied, into the callback: a context may be a gigabyte.
  auto start = std::make_shared<rlm_start>(std::move(s));
  if (!st.opts.models) {
    accept(self, std::move(*start), rp);
    return caf::delegated<rlm_run_info>{};
  }
  auto model = start->model.empty() ? st.opts.run.default_model : start->model;
  self->request(st.opts.models, std::chrono::seconds(30), models_atom::value)
    .then(
      [=](std::vector<model_info>& served) mutable {
        auto names = model_names(served);
        if (names.count(model) == 0) {
          rp.deliver(make_error(errc::unknown_model,
                                "model \"" + model + "\" is not served by the backend; it "
                                  "serves: " + model_list(names),
                                "model"));
          return;
        }
        accept(self, std::move(*start), rp);
      },
      [=](caf::error& e) mutable {
        rp.deliver(make_error(errc::backend_unavailable,
                              "cannot check the run's model: the backend's model list is "
                              "unavailable (" + describe(e).message + ")"));
      });
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

// Runs left running by a node that stopped go on from their last committed
// turn; a run whose context is gone cannot, and is marked so.
void resume_all(manager_actor* self) {
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
  // Contexts written for submissions the node stopped before recording,
  // and for runs that ended without removing theirs, are not kept.
  std::set<std::string> kept;
  for (auto& info : stale) {
    if (info.owns_context) {
      kept.insert(std::filesystem::path{info.request.context_file}.filename().string());
    }
  }
  std::error_code list_ec;
  for (auto& entry : std::filesystem::directory_iterator{st.opts.context_dir, list_ec}) {
    auto name = entry.path().filename().string();
    if (entry.path().extension() == ".ctx" && kept.count(name) == 0) {
      std::error_code rm_ec;
      std::filesystem::remove(entry.path(), rm_ec);
      st.log->info("rlm removed a context no run holds file={}", name);
    }
  }
  for (auto& info : stale) {
    std::error_code ec;
    auto& file = info.request.context_file;
    bool readable = !file.empty() && std::filesystem::is_regular_file(file, ec)
                    && (info.owns_context || allowed_file(file, st.opts.context_dirs));
    if (readable) {
      ++info.resumes;
      st.log->info("rlm run resumed after a stop run_id={} resumes={}", info.id, info.resumes);
      self->request(st.opts.run.writer, std::chrono::minutes(2), record(info))
        .then([](uint64_t) {}, [](caf::error&) {});
      launch(self, info);
      continue;
    }
    remove_context(info);
    info.status = "finished";
    info.finished_ms = now_ms();
    info.outcome.reason = "interrupted";
    info.outcome.error = "the node stopped during the run, and its context ("
                         + (file.empty() ? std::string{"not kept"} : file)
                         + ") is gone, so it cannot resume";
    self->request(st.opts.run.writer, std::chrono::minutes(2), record(info))
      .then([](uint64_t) {}, [](caf::error&) {});
  }
}

caf::behavior manager(manager_actor* self, std::shared_ptr<store::environment> env,
                      rlm_manager_options opts) {
  self->state.env = std::move(env);
  self->state.opts = std::move(opts);
  std::error_code ec;
  std::filesystem::create_directories(self->state.opts.context_dir, ec);
  self->set_exit_handler([=](caf::exit_msg& msg) {
    // A run's own exit (it is linked). One that ended normally answered;
    // one that died did not, and starts again.
    auto run = self->state.linked.find(msg.source);
    if (run != self->state.linked.end()) {
      auto id = run->second;
      self->state.linked.erase(run);
      auto live = self->state.live.find(id);
      if (msg.reason && live != self->state.live.end()
          && live->second.actor.address() == msg.source) {
        crashed(self, id, msg.reason);
      }
      return;
    }
    for (auto& [id, r] : self->state.live) {
      self->send_exit(r.actor, msg.reason);
    }
    self->quit(msg.reason);
  });
  resume_all(self);
  return {
    [=](submit_rlm_run& cmd) { return submit(self, cmd); },
    [=](done_atom, uint64_t sid, const std::string& error) {
      auto i = self->state.writing.find(sid);
      if (i == self->state.writing.end()) {
        return;
      }
      auto p = std::move(i->second);
      self->state.writing.erase(i);
      if (!error.empty()) {
        remove_context(p.info);
        p.rp.deliver(make_error(errc::store_failure, "the context could not be kept: " + error));
        return;
      }
      store_and_launch(self, std::move(p.info), std::move(p.rp));
    },
    [=](get_rlm_run& cmd) -> caf::result<rlm_run_info> {
      auto live = self->state.live.find(cmd.id);
      if (cmd.wait_ms > 0 && live != self->state.live.end()) {
        // Answered when the run ends, or with its record when the wait is up.
        auto rp = self->make_response_promise();
        live->second.waiters.emplace_back(
          rp, std::chrono::steady_clock::now() + milliseconds{cmd.wait_ms});
        self->delayed_send(self, milliseconds{cmd.wait_ms}, tick_atom::value, cmd.id);
        return caf::delegated<rlm_run_info>{};
      }
      auto found = read(self->state, cmd.id);
      if (!found) {
        return std::move(found.error());
      }
      return std::move(*found);
    },
    [=](get_rlm_turns& cmd) -> caf::result<rlm_turn_page> {
      auto page = read_page(self->state, cmd.id, cmd.after);
      if (!page) {
        return std::move(page.error());
      }
      auto live = self->state.live.find(cmd.id);
      auto& t = page->turns;
      bool news = !t.empty() && !(t.size() == 1 && !t[0].complete && t[0].index == cmd.partial);
      if (news || cmd.wait_ms == 0 || live == self->state.live.end()) {
        return std::move(*page);
      }
      // Nothing new yet: answered at the next commit, or when the wait is up.
      auto rp = self->make_response_promise();
      live->second.followers.emplace_back(rp, cmd);
      live->second.follower_deadlines.push_back(std::chrono::steady_clock::now()
                                                + milliseconds{cmd.wait_ms});
      self->delayed_send(self, milliseconds{cmd.wait_ms}, tick_atom::value, cmd.id);
      return caf::delegated<rlm_turn_page>{};
    },
    [=](committed_atom, const std::string& id, uint32_t) {
      auto live = self->state.live.find(id);
      if (live != self->state.live.end() && !live->second.followers.empty()) {
        answer_followers(self, live->second, id);
      }
    },
    [=](cancel_rlm_run& cmd) { return cancel(self, cmd.id); },
    // The actor of a live run, for peers that message it (cancel_atom).
    [=](get_atom, const std::string& id) -> caf::result<caf::actor> {
      auto live = self->state.live.find(id);
      if (live == self->state.live.end()) {
        return make_error(errc::not_found, "no live run \"" + id + "\"", "id");
      }
      return live->second.actor;
    },
    [=](tick_atom, const std::string& id) {
      auto live = self->state.live.find(id);
      if (live == self->state.live.end()) {
        return;
      }
      // Only the polls whose own wait is up (a timer may fire a little
      // early: no later tick would come for a poll it missed).
      auto now = std::chrono::steady_clock::now() + milliseconds{20};
      answer_followers(self, live->second, id, now);
      auto& waiters = live->second.waiters;
      auto due = std::stable_partition(waiters.begin(), waiters.end(),
                                       [&](auto& w) { return w.second > now; });
      if (due == waiters.end()) {
        return;
      }
      auto found = read(self->state, id);
      for (auto w = due; w != waiters.end(); ++w) {
        if (found) {
          w->first.deliver(*found);
        } else {
          w->first.deliver(found.error());
        }
      }
      waiters.erase(due, waiters.end());
    },
  };
}

}  // namespace

caf::actor spawn_rlm_manager(caf::actor_system& sys, std::shared_ptr<store::environment> env,
                             rlm_manager_options options) {
  return sys.spawn(manager, std::move(env), std::move(options));
}

}  // namespace kowalski
