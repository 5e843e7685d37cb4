// REPL worker: drives one interpreter through the frame protocol, caps its
// output on the I/O thread, and replaces it after a timeout or a crash.
#include "actors/repl_worker.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/logging/log.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <simdjson.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

// After the "done" frame, the end markers on stdout and stderr normally
// follow at once; code that closed a stream never sends one.
constexpr milliseconds marker_grace{200};

// One stream of the running execution, filled on the I/O thread: the first
// `cap` characters are kept, the rest only counted, and the end marker
// found even when it spans reads.
struct capture {
  std::mutex mtx;
  std::size_t cap = 20'000;
  bool active = false;
  bool seen = false;
  std::string marker;
  std::string hold;  // bytes that might begin the marker
  std::string kept;
  uint64_t kept_chars = 0;
  uint64_t cut = 0;

  void start(std::string m, std::size_t limit) {
    std::lock_guard<std::mutex> guard{mtx};
    active = true;
    seen = false;
    marker = std::move(m);
    cap = limit;
    hold.clear();
    kept.clear();
    kept_chars = 0;
    cut = 0;
    keeping = true;
  }

  bool keeping = true;  // whether the character being read is kept

  void keep(std::string_view data) {
    for (std::size_t i = 0; i < data.size(); ++i) {
      auto c = static_cast<unsigned char>(data[i]);
      if ((c & 0xC0) != 0x80) {
        // A new character: kept whole while under the cap, else counted.
        keeping = kept_chars < cap;
        if (keeping) {
          ++kept_chars;
        } else {
          ++cut;
        }
      }
      if (keeping) {
        kept.push_back(data[i]);
      }
    }
  }

  // Returns true when this data completed the marker.
  bool feed(std::string_view data) {
    std::lock_guard<std::mutex> guard{mtx};
    if (!active || seen) {
      return false;
    }
    std::string joined = hold + std::string{data};
    hold.clear();
    auto at = joined.find(marker);
    if (at != std::string::npos) {
      keep(std::string_view{joined}.substr(0, at));
      seen = true;
      return true;
    }
    // The marker begins with a NUL; only a NUL near the end can start it.
    auto tail = joined.size() > marker.size() ? joined.size() - marker.size() + 1 : 0;
    auto nul = joined.find('\0', tail);
    auto keep_to = nul == std::string::npos ? joined.size() : nul;
    keep(std::string_view{joined}.substr(0, keep_to));
    hold = joined.substr(keep_to);
    return false;
  }

  // The text so far, with a note of what was cut; ends the capture.
  std::pair<std::string, uint64_t> take() {
    std::lock_guard<std::mutex> guard{mtx};
    active = false;
    keep(hold);
    hold.clear();
    auto text = std::move(kept);
    if (cut > 0) {
      text += "\n[output cut: " + std::to_string(cut) + " more characters]";
    }
    kept.clear();
    return {std::move(text), cut};
  }
};

struct running_exec {
  uint64_t id = 0;
  repl_execute req;
  caf::response_promise rp;
  clock_type::time_point started;
  clock_type::time_point deadline;
  milliseconds timeout{0};
  bool done = false;
  bool timed_out = false;
  bool cancelled = false;  // its session ended with abort: killed like a timeout
  bool ok = false;
  std::string error;
  std::string error_type;
  int64_t duration_us = 0;
  int32_t exit_status = 0;
  bool restart = false;  // the driver is ending its interpreter (bash's exit)
  int llm_waiting = 0;
  clock_type::time_point llm_since;
  bool marks[2] = {false, false};
};

struct worker_state {
  repl_worker_options opts;
  std::unique_ptr<process::repl_process> proc;
  uint64_t generation = 0;
  std::shared_ptr<capture> out = std::make_shared<capture>();
  std::shared_ptr<capture> err = std::make_shared<capture>();
  std::optional<running_exec> cur;
  std::deque<std::pair<repl_execute, caf::response_promise>> queue;
  std::deque<caf::response_promise> resets;  // answered when their turn comes
  uint64_t next_exec = 0;
  bool state_lost = false;  // to report on the next result
  uint64_t executions = 0;
  uint64_t restarts = 0;
  std::vector<clock_type::time_point> recent_starts;
  std::filesystem::path dir;
  std::mt19937_64 rng{std::random_device{}()};
  std::shared_ptr<spdlog::logger> log = logging::get("repl");
  static inline const char* name = "kowalski.repl_worker";

  ~worker_state() {
    proc.reset();
    if (!dir.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  }
};

using worker_actor = caf::stateful_actor<worker_state>;

void next(worker_actor* self);

std::string token(std::mt19937_64& rng) {
  static const char* hex = "0123456789abcdef";
  std::string t;
  for (int i = 0; i < 2; ++i) {
    auto v = rng();
    for (int j = 0; j < 16; ++j) {
      t.push_back(hex[(v >> (j * 4)) & 0xf]);
    }
  }
  return t;
}

// Starts a fresh interpreter in a fresh private directory.
bool start_process(worker_actor* self, std::string& error) {
  auto& st = self->state;
  st.proc.reset();
  std::error_code ec;
  if (!st.dir.empty()) {
    std::filesystem::remove_all(st.dir, ec);
  }
  // The node's pid leads the name, so a later node can sweep what a killed
  // one left.
  auto tmpl = st.opts.temp_root + "/kowalski-repl-" + std::to_string(::getpid()) + "-"
              + st.opts.id + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    error = "cannot create a private directory under " + st.opts.temp_root + ": "
            + std::strerror(errno);
    return false;
  }
  st.dir = buf.data();

  process::spawn_spec spec;
  spec.command = st.opts.command;
  spec.workdir = st.dir.string();
  spec.mode = st.opts.sandbox;
  spec.bubblewrap = st.opts.bubblewrap;
  spec.limits = st.opts.limits;
  spec.read_only = st.opts.read_only;
  // Several nodes may share a process (tests): a counter keeps names apart.
  static std::atomic<uint64_t> instances{0};
  spec.cgroup_name = std::to_string(::getpid()) + "-" + std::to_string(++instances) + "-"
                     + st.opts.id;
  auto home = st.opts.sandbox == process::sandbox_mode::bubblewrap ? std::string{"/work"}
                                                                    : st.dir.string();
  spec.env = {{"PATH", "/usr/local/bin:/usr/bin:/bin"}, {"HOME", home},
              {"LANG", "C.UTF-8"}, {"TMPDIR", spec.mode == process::sandbox_mode::bubblewrap
                                                 ? std::string{"/tmp"} : st.dir.string()}};

  auto gen = ++st.generation;
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(self);
  auto send = [weak](auto&&... xs) {
    if (auto strong = weak.lock()) {
      caf::anon_send(caf::actor_cast<caf::actor>(strong), std::forward<decltype(xs)>(xs)...);
    }
  };
  auto out = st.out;
  auto err = st.err;
  process::process_events ev;
  ev.on_stdout = [=](std::string_view d) {
    if (out->feed(d)) {
      send(mark_atom::value, gen, int32_t{0});
    }
  };
  ev.on_stderr = [=](std::string_view d) {
    if (err->feed(d)) {
      send(mark_atom::value, gen, int32_t{1});
    }
  };
  ev.on_frame = [=](std::string frame) { send(frame_atom::value, gen, std::move(frame)); };
  ev.on_exit = [=](int status, std::string reason) {
    send(exited_atom::value, gen, int32_t{status}, std::move(reason));
  };
  st.proc = process::repl_process::spawn(spec, std::move(ev), error);
  return st.proc != nullptr;
}

// A worker whose interpreter will not stay up gives up rather than spin.
// Crashes count toward the limit; asked-for fresh starts do not.
bool restart(worker_actor* self, bool crashed) {
  auto& st = self->state;
  auto now = clock_type::now();
  auto& starts = st.recent_starts;
  starts.erase(std::remove_if(starts.begin(), starts.end(),
                              [&](auto t) { return now - t > std::chrono::seconds(10); }),
               starts.end());
  std::string error;
  if (crashed) {
    starts.push_back(now);
  }
  if (starts.size() > 5 || !start_process(self, error)) {
    if (error.empty()) {
      error = "the " + st.opts.language + " interpreter died 6 times within 10 s";
    }
    st.log->error("repl worker giving up worker={} error=\"{}\"", st.opts.id, error);
    auto e = make_error(errc::unavailable, error);
    for (auto& [req, rp] : st.queue) {
      rp.deliver(e);
    }
    st.queue.clear();
    self->quit(e);
    return false;
  }
  return true;
}

void send_json(worker_actor* self, const std::string& json) {
  self->state.proc->send_frame(json);
}

// Copies a file of the node into the private directory in the kernel
// (copy_file_range), so a context of a gigabyte never sits in our memory.
caf::error copy_input(const std::string& from, const std::filesystem::path& to) {
  auto fail = [&](const std::string& what) {
    return make_error(errc::internal, what + ": " + std::strerror(errno));
  };
  // The last component is not followed: a checked path swapped for a link
  // does not lead elsewhere.
  // Non-blocking, so that a FIFO put in a file's place cannot hang the open.
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (in < 0) {
    return make_error(errc::not_found, "cannot open " + from + ": " + std::strerror(errno),
                      "file_source");
  }
  struct stat sb {};
  if (::fstat(in, &sb) != 0 || !S_ISREG(sb.st_mode)) {
    ::close(in);
    return make_error(errc::invalid_argument, from + " is not a regular file", "file_source");
  }
  int out = ::open(to.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0) {
    auto err = fail("cannot create " + to.string());
    ::close(in);
    return err;
  }
  caf::error err;
  while (true) {
    auto n = ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0);
    if (n == 0) {
      break;
    }
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      if (errno != EXDEV && errno != ENOSYS && errno != EINVAL) {
        err = fail("cannot copy " + from);
        break;
      }
      // Filesystems without copy_file_range: a plain read/write loop.
      std::vector<char> buf(std::size_t{1} << 20);
      ssize_t got = 0;
      while ((got = ::read(in, buf.data(), buf.size())) > 0) {
        for (ssize_t done = 0; done < got;) {
          auto w = ::write(out, buf.data() + done, static_cast<std::size_t>(got - done));
          if (w < 0 && errno != EINTR) {
            err = fail("cannot copy " + from);
            break;
          }
          done += std::max<ssize_t>(w, 0);
        }
        if (err) {
          break;
        }
      }
      if (got < 0 && !err) {
        err = fail("cannot read " + from);
      }
      break;
    }
  }
  ::close(in);
  if (::close(out) != 0 && !err) {
    err = fail("cannot write " + to.string());
  }
  return err;
}

// Writes the execution's input file into the private directory.
caf::error write_input(worker_state& st, const repl_execute& req) {
  auto& name = req.file_name;
  if (name.empty()) {
    return caf::error{};
  }
  if (name == "." || name == ".." || name.find('/') != std::string::npos
      || name.find('\0') != std::string::npos || name.size() > 255) {
    return make_error(errc::invalid_argument,
                      "file_name must be a plain file name, got \"" + name + "\"",
                      "file_name");
  }
  if (!req.file_source.empty()) {
    return copy_input(req.file_source, st.dir / name);
  }
  std::ofstream out{st.dir / name, std::ios::binary | std::ios::trunc};
  out.write(req.file_data.data(), static_cast<std::streamsize>(req.file_data.size()));
  out.close();
  if (!out) {
    return make_error(errc::internal, "cannot write " + name + " for the interpreter: "
                                        + std::strerror(errno));
  }
  return caf::error{};
}

void begin(worker_actor* self, repl_execute req, caf::response_promise rp) {
  auto& st = self->state;
  if (auto err = write_input(st, req)) {
    rp.deliver(std::move(err));
    return next(self);
  }
  running_exec ex;
  ex.id = ++st.next_exec;
  ex.timeout = req.timeout_ms > 0 ? milliseconds{req.timeout_ms} : st.opts.default_timeout;
  ex.timeout = std::min(ex.timeout, st.opts.max_timeout);
  ex.started = clock_type::now();
  ex.deadline = ex.started + ex.timeout;
  ex.rp = std::move(rp);
  auto tok = token(st.rng);
  auto marker = std::string{"\0KW:", 4} + tok + std::string{"\0", 1};
  st.out->start(marker, st.opts.output_cap);
  st.err->start(marker, st.opts.output_cap);

  json::writer w;
  w.begin_object().key("type").value("exec").key("id").value(ex.id)
    .key("code").value(req.code).key("token").value(tok)
    .key("cpu_s").value(static_cast<uint64_t>(ex.timeout.count() / 1000 + 1))
    .key("fresh").value(req.session.empty())
    .key("language").value(st.opts.language)
    .key("mem_mb").value(std::max<uint64_t>(64, st.opts.limits.cgroup_memory / 2 >> 20))
    .end_object();
  ex.req = std::move(req);
  st.cur = std::move(ex);
  send_json(self, w.take());
  self->delayed_send(self, st.cur->timeout, timeout_atom::value, st.cur->id);
}

void finish(worker_actor* self) {
  auto& st = self->state;
  auto& ex = *st.cur;
  repl_result res;
  auto [out, out_cut] = st.out->take();
  auto [err, err_cut] = st.err->take();
  res.stdout_text = std::move(out);
  res.stdout_cut = out_cut;
  res.stderr_text = std::move(err);
  res.stderr_cut = err_cut;
  res.ok = ex.ok;
  res.error = ex.error;
  res.error_type = ex.error_type;
  res.duration_us = ex.duration_us;
  res.exit_status = ex.exit_status;
  res.session = ex.req.session;
  res.worker = st.opts.id;
  res.state_lost = st.state_lost;
  st.state_lost = false;
  ++st.executions;
  st.log->debug("repl execution done worker={} ok={} error_type={} stdout_bytes={} "
                "stderr_bytes={} duration_us={}",
                st.opts.id, res.ok, res.error_type, res.stdout_text.size(),
                res.stderr_text.size(), res.duration_us);
  ex.rp.deliver(std::move(res));
  auto fresh = ex.restart;
  st.cur.reset();
  // What the session held went with the interpreter; the next one says so.
  if (fresh) {
    st.state_lost = true;
    if (!restart(self, false)) {
      return;
    }
  }
  next(self);
}

void maybe_finish(worker_actor* self) {
  auto& ex = *self->state.cur;
  if (ex.done && ex.marks[0] && ex.marks[1]) {
    finish(self);
  }
}

// Runs what waits: resets first if their turn has come, then executions.
void next(worker_actor* self) {
  auto& st = self->state;
  if (st.cur) {
    return;
  }
  if (!st.resets.empty()) {
    auto waiting = std::move(st.resets);
    st.resets.clear();
    if (!restart(self, false)) {
      return;
    }
    for (auto& rp : waiting) {
      rp.deliver(true);
    }
  }
  if (!st.queue.empty()) {
    auto [req, rp] = std::move(st.queue.front());
    st.queue.pop_front();
    begin(self, std::move(req), std::move(rp));
  }
}

std::string describe_exit(int status, process::sandbox_mode mode) {
  // bubblewrap exits with 128 + the signal that ended the program in it.
  if (mode == process::sandbox_mode::bubblewrap && WIFEXITED(status)
      && WEXITSTATUS(status) > 128 && WEXITSTATUS(status) < 128 + NSIG) {
    auto sig = WEXITSTATUS(status) - 128;
    return std::string{"was killed by signal "} + std::to_string(sig) + " ("
           + ::strsignal(sig) + ")";
  }
  if (WIFSIGNALED(status)) {
    auto sig = WTERMSIG(status);
    return std::string{"was killed by signal "} + std::to_string(sig) + " ("
           + ::strsignal(sig) + ")";
  }
  if (WIFEXITED(status)) {
    return "exited with status " + std::to_string(WEXITSTATUS(status));
  }
  return "ended with wait status " + std::to_string(status);
}

void on_exit(worker_actor* self, uint64_t gen, int32_t status, const std::string& reason) {
  auto& st = self->state;
  if (gen != st.generation) {
    return;
  }
  ++st.restarts;
  st.state_lost = true;
  if (st.cur) {
    auto& ex = *st.cur;
    auto ms = std::to_string(ex.timeout.count());
    if (ex.cancelled) {
      ex.error_type = "cancelled";
      ex.error = "the session ended while this ran; its processes were killed and a fresh "
                 "interpreter started";
    } else if (ex.timed_out) {
      ex.error_type = "timeout";
      ex.error = "the execution ran past its " + ms + " ms timeout; its processes were "
                 "killed and a fresh interpreter started (session state was lost)";
    } else {
      ex.error_type = "crash";
      ex.error = "the " + st.opts.language + " interpreter "
                 + describe_exit(status, st.opts.sandbox)
                 + (reason.empty() ? "" : " (" + reason + ")")
                 + "; a fresh interpreter started (session state was lost)";
    }
    ex.ok = false;
    ex.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    ex.duration_us = std::chrono::duration_cast<std::chrono::microseconds>(
                       clock_type::now() - ex.started).count();
    st.log->warn("repl interpreter replaced worker={} reason={} status={}", st.opts.id,
                 ex.error_type, status);
    if (!restart(self, !ex.timed_out)) {
      ex.rp.deliver(make_error(errc::unavailable, "the interpreter could not be restarted"));
      st.cur.reset();
      return;
    }
    finish(self);
    return;
  }
  st.log->warn("repl interpreter exited while idle worker={} status={} generation={}",
               st.opts.id, status, gen);
  if (restart(self, true)) {
    next(self);
  }
}

// Answers llm_query from code through the batch coordinator.
void on_llm(worker_actor* self, simdjson::dom::element msg) {
  auto& st = self->state;
  uint64_t cid = 0;
  if (msg["id"].get(cid) != simdjson::SUCCESS) {
    st.log->warn("repl llm frame without an id worker={}", st.opts.id);
    return;
  }
  std::string model = st.opts.default_model;
  std::string_view m;
  if (msg["model"].get(m) == simdjson::SUCCESS && !m.empty()) {
    model = std::string{m};
  }
  std::string_view kind = "llm";
  if (msg["kind"].get(kind) != simdjson::SUCCESS) {
    kind = "llm";
  }
  repl_sub_call sub;
  sub.kind = kind == "rlm" ? "rlm" : "llm";
  // A run picks its own model for calls that name none.
  sub.model = std::string{m};
  simdjson::dom::array prompts;
  if (msg["prompts"].get(prompts) == simdjson::SUCCESS) {
    for (auto p : prompts) {
      std::string_view text;
      sub.prompts.emplace_back(p.get(text) == simdjson::SUCCESS ? text : std::string_view{});
    }
  }
  simdjson::dom::array contexts;
  if (msg["contexts"].get(contexts) == simdjson::SUCCESS) {
    for (auto c : contexts) {
      std::string_view text;
      sub.contexts.emplace_back(c.get(text) == simdjson::SUCCESS ? text : std::string_view{});
    }
  }
  auto gen = st.generation;
  auto exec_id = st.cur ? st.cur->id : 0;
  auto answer = [=](const std::vector<std::string>& results) {
    auto& st = self->state;
    if (gen != st.generation) {
      return;
    }
    json::writer w;
    w.begin_object().key("type").value("llm_result").key("id").value(cid).key("results");
    w.begin_array();
    for (auto& r : results) {
      w.value(r);
    }
    w.end_array().end_object();
    send_json(self, w.take());
    if (st.cur && st.cur->id == exec_id && --st.cur->llm_waiting == 0) {
      // Time spent waiting for the model does not count against the code.
      st.cur->deadline += clock_type::now() - st.cur->llm_since;
    }
  };
  if (st.cur && st.cur->llm_waiting++ == 0) {
    st.cur->llm_since = clock_type::now();
  }
  auto n = sub.prompts.size();
  // An RLM run answers its own code's sub-calls (it counts and logs them).
  if (st.cur && st.cur->req.sub_calls) {
    self->request(st.cur->req.sub_calls, std::chrono::seconds(7 * 24 * 3600), std::move(sub))
      .then([=](std::vector<std::string>& results) {
              results.resize(n, "Error: no answer came back");
              answer(results);
            },
            [=](caf::error& e) {
              answer(std::vector<std::string>(n, "Error: " + describe(e).message));
            });
    return;
  }
  if (!st.opts.llm) {
    answer(std::vector<std::string>(n, "Error: no LLM is configured for sub-calls"));
    return;
  }
  // Outside a run rlm_query is a plain call: there is no run to recurse in.
  llm_call_batch calls;
  calls.concurrency = st.opts.llm_concurrency;
  for (std::size_t i = 0; i < n; ++i) {
    llm_request req;
    req.model = model;
    auto text = sub.prompts[i];
    if (i < sub.contexts.size() && !sub.contexts[i].empty()) {
      text += "\n\n" + sub.contexts[i];
    }
    req.messages.push_back(chat_message{"user", std::move(text)});
    calls.requests.push_back(std::move(req));
  }
  self->request(st.opts.llm, std::chrono::minutes(30), std::move(calls))
    .then(
      [=](std::vector<call_outcome>& outs) {
        std::vector<std::string> results;
        for (auto& o : outs) {
          results.push_back(o.ok ? o.reply.content : "Error: " + o.error_message);
        }
        results.resize(n, "Error: no answer came back");
        answer(results);
      },
      [=](caf::error& e) {
        answer(std::vector<std::string>(n, "Error: " + describe(e).message));
      });
}

void on_frame(worker_actor* self, uint64_t gen, const std::string& frame) {
  auto& st = self->state;
  if (gen != st.generation) {
    return;
  }
  simdjson::dom::parser parser;
  simdjson::dom::element msg;
  std::string_view type;
  if (parser.parse(frame).get(msg) != simdjson::SUCCESS
      || msg["type"].get(type) != simdjson::SUCCESS) {
    st.log->warn("repl frame unreadable worker={} bytes={}", st.opts.id, frame.size());
    return;
  }
  if (type == "llm") {
    return on_llm(self, msg);
  }
  uint64_t id = 0;
  if (type != "done" || !st.cur || msg["id"].get(id) != simdjson::SUCCESS
      || id != st.cur->id) {
    return;
  }
  auto& ex = *st.cur;
  if (ex.timed_out) {
    return;  // killed already: the exit decides
  }
  ex.done = true;
  bool ok = false;
  ex.ok = msg["ok"].get(ok) == simdjson::SUCCESS && ok;
  std::string_view text;
  if (msg["error"].get(text) == simdjson::SUCCESS) {
    ex.error = std::string{text};
  }
  if (msg["error_type"].get(text) == simdjson::SUCCESS) {
    ex.error_type = std::string{text};
  }
  int64_t us = 0;
  if (msg["duration_us"].get(us) == simdjson::SUCCESS) {
    ex.duration_us = us;
  }
  int64_t code = 0;
  if (msg["exit_status"].get(code) == simdjson::SUCCESS) {
    ex.exit_status = static_cast<int32_t>(code);
  }
  bool ending = false;
  ex.restart = msg["restart"].get(ending) == simdjson::SUCCESS && ending;
  if (!(ex.marks[0] && ex.marks[1])) {
    self->delayed_send(self, marker_grace, mark_atom::value, ex.id);
  }
  maybe_finish(self);
}

void on_timeout(worker_actor* self, uint64_t id) {
  auto& st = self->state;
  if (!st.cur || st.cur->id != id || st.cur->timed_out) {
    return;
  }
  auto& ex = *st.cur;
  auto now = clock_type::now();
  // The model's time is not the code's, but nothing runs past max_timeout.
  bool over = now - ex.started >= std::max(ex.timeout, st.opts.max_timeout);
  if (!over && (ex.llm_waiting > 0 || now < ex.deadline)) {
    auto wait = ex.llm_waiting > 0 ? ex.timeout : ex.deadline - now;
    self->delayed_send(self, std::chrono::duration_cast<milliseconds>(wait) + milliseconds{1},
                       timeout_atom::value, id);
    return;
  }
  ex.timed_out = true;
  st.proc->kill();
}

caf::behavior worker(worker_actor* self, repl_worker_options opts) {
  self->state.opts = std::move(opts);
  std::string error;
  if (!start_process(self, error)) {
    self->state.log->error("repl worker cannot start worker={} error=\"{}\"",
                           self->state.opts.id, error);
    self->quit(make_error(errc::unavailable, error));
    return {};
  }
  return {
    [=](repl_execute& req) {
      auto rp = self->make_response_promise();
      self->state.queue.emplace_back(std::move(req), rp);
      next(self);
      return caf::delegated<repl_result>{};
    },
    [=](cancel_atom, const std::string& session) {
      auto& st = self->state;
      if (st.cur && st.cur->req.session == session && !st.cur->timed_out) {
        st.cur->timed_out = true;
        st.cur->cancelled = true;
        st.proc->kill();
      }
    },
    [=](reset_atom) {
      auto rp = self->make_response_promise();
      self->state.resets.push_back(rp);
      next(self);
      return caf::delegated<bool>{};
    },
    [=](mark_atom, uint64_t gen, int32_t stream) {
      auto& st = self->state;
      if (gen == st.generation && st.cur) {
        st.cur->marks[stream == 0 ? 0 : 1] = true;
        maybe_finish(self);
      }
    },
    [=](mark_atom, uint64_t id) {
      // The grace after "done" is over: what arrived is all there is.
      auto& st = self->state;
      if (st.cur && st.cur->id == id && st.cur->done) {
        finish(self);
      }
    },
    [=](frame_atom, uint64_t gen, std::string& frame) { on_frame(self, gen, frame); },
    [=](exited_atom, uint64_t gen, int32_t status, std::string& reason) {
      on_exit(self, gen, status, reason);
    },
    [=](timeout_atom, uint64_t id) { on_timeout(self, id); },
    [=](stats_atom) {
      return caf::make_message(self->state.executions, self->state.restarts);
    },
  };
}

}  // namespace

caf::actor spawn_repl_worker(caf::actor_system& sys, repl_worker_options options) {
  // Detached: starting and ending interpreters forks, joins and deletes
  // directories, which must not hold up the shared scheduler's threads.
  return sys.spawn<caf::detached>(worker, std::move(options));
}

}  // namespace kowalski
