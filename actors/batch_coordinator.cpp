// Batch coordinator: queues items, hands them to the router as workers free
// up, retries what may succeed later, and commits every result as it lands.
#include "actors/batch_coordinator.hpp"

#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/llm/models.hpp"
#include "runtime/logging/log.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/expected.hpp>
#include <caf/stateful_actor.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <type_traits>
#include <unordered_map>
#include <unordered_set>

namespace kowalski {

namespace {

using clock_type = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How long an item may wait at the router (behind interactive calls, for
// the rate limit) before the router hands it back unsent.
constexpr milliseconds router_queue_limit{600'000};

// Beyond the queue limit and the attempt's timeout: the router's own
// backstop on its worker comes first, so this never fires while the
// router lives.
constexpr milliseconds router_slack{60'000};

constexpr milliseconds commit_timeout{120'000};

int64_t now_ms() {
  return std::chrono::duration_cast<milliseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

bool finished_status(const std::string& s) {
  return s == "completed" || s == "cancelled" || s == "expired" || s == "failed";
}

// One batch, or one list of library calls, being run.
struct run {
  std::string id;
  bool stored = true;  // a batch in LMDB; otherwise calls held in memory
  batch_info info;     // counts are live
  uint32_t max_attempts = 3;
  uint32_t concurrency = 0;
  milliseconds call_timeout{0};
  clock_type::time_point deadline = clock_type::time_point::max();

  std::deque<uint64_t> ready;                       // may start now, in order
  std::unordered_map<uint64_t, uint32_t> attempts;  // attempts made so far
  std::unordered_set<uint64_t> backing_off;         // waiting to be retried
  uint32_t running = 0;     // at the router
  uint32_t committing = 0;  // results being committed
  bool close_pending = false;  // the cancel or expiry is being committed
  uint64_t closing_items = 0;  // items it closes
  bool closing = false;     // cancelled or expired: nothing new starts
  bool finalizing = false;  // the final record is being committed
  std::string close_code;   // error code of items that never ran

  clock_type::time_point started = clock_type::now();
  uint64_t finished_here = 0;  // items finished since this process took it

  // Library calls only.
  std::vector<llm_request> requests;
  std::vector<call_outcome> outcomes;
  caf::response_promise rp;
  bool single = false;
  caf::error single_error;

  // Callers of get_batch with wait_ms, answered when the batch ends.
  std::map<uint64_t, caf::response_promise> waiters;
  // Callers of cancel_batch, answered once the cancel is committed.
  std::vector<caf::response_promise> cancel_waiters;

  uint64_t finished() const { return info.done + info.failed + info.not_run; }
};

struct coordinator_state {
  batch_coordinator_options opts;
  std::shared_ptr<store::environment> env;
  caf::actor writer;
  caf::actor router;
  std::map<std::string, run> runs;
  std::string cursor;  // round robin: the run that last started an item
  uint32_t in_flight = 0;
  std::size_t unfinished = 0;  // items of every run not finished yet
  std::size_t reserved = 0;    // items of submissions not committed yet
  uint64_t next_call_list = 0;
  uint64_t next_waiter = 0;
  // Commits not acknowledged yet, retried until the store takes them: an
  // item whose result is not stored must not count as finished.
  struct pending_commit {
    write_batch wb;
    std::function<void()> done;
    std::string what;
    uint32_t attempts = 0;
  };
  std::map<uint64_t, pending_commit> commits;
  uint64_t next_commit = 0;
  // Submissions whose models are being checked or that are being committed.
  std::map<uint64_t, caf::response_promise> submissions;
  uint64_t next_submission = 0;
  int64_t last_id_ms = 0;
  std::mt19937_64 rng{std::random_device{}()};
  std::shared_ptr<spdlog::logger> log = logging::get("batch");
  static inline const char* name = "kowalski.batch_coordinator";
};

using coordinator_actor = caf::stateful_actor<coordinator_state>;

void dispatch(coordinator_actor* self);
void maybe_finish(coordinator_actor* self, run& r);
bool load_request(coordinator_actor* self, run& r, uint64_t index, llm_request& req,
                  std::string& custom_id, std::string& error);

// -- ids and records ---------------------------------------------------------------

// "batch_" + 12 hex digits of creation milliseconds + 8 random hex digits:
// fixed length (the item keys rely on it) and sorted by creation.
std::string new_batch_id(coordinator_state& st) {
  auto ms = std::max(now_ms(), st.last_id_ms + 1);
  st.last_id_ms = ms;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "batch_%012llx%08x", static_cast<unsigned long long>(ms),
                static_cast<unsigned>(st.rng() & 0xffffffffu));
  return buf;
}

batch_info snapshot(const run& r) {
  auto info = r.info;
  info.queued = r.ready.size() + r.backing_off.size();
  info.running = r.running + r.committing;
  // Items being closed count as queued until their commit lands.
  info.queued += r.closing_items;
  auto secs = std::chrono::duration<double>(clock_type::now() - r.started).count();
  if (r.finished_here > 0 && secs > 0) {
    info.rate_per_s = static_cast<double>(r.finished_here) / secs;
    info.eta_s = static_cast<double>(info.total - r.finished()) / info.rate_per_s;
  }
  return info;
}

kv_op put(std::string db, std::string key, std::string value) {
  return kv_op{kv_op::put, std::move(db), std::move(key), std::move(value)};
}

// Commits `wb`, then runs `done` in this actor. A failed commit is logged
// and tried again with backoff (LMDB full, disk trouble): what it records
// is not acknowledged until it lands. Writes are puts, so a retry after a
// commit that did land but timed out changes nothing.
void commit(coordinator_actor* self, write_batch wb, std::string what,
            std::function<void()> done);

void send_commit(coordinator_actor* self, uint64_t id) {
  auto& st = self->state;
  auto i = st.commits.find(id);
  if (i == st.commits.end()) {
    return;
  }
  ++i->second.attempts;
  self->request(st.writer, commit_timeout, i->second.wb)
    .then(
      [=](uint64_t) {
        auto j = self->state.commits.find(id);
        if (j == self->state.commits.end()) {
          return;
        }
        auto done = std::move(j->second.done);
        self->state.commits.erase(j);
        done();
      },
      [=](caf::error& err) {
        auto j = self->state.commits.find(id);
        if (j == self->state.commits.end()) {
          return;
        }
        auto attempt = j->second.attempts;
        auto delay = std::min(milliseconds{30'000},
                              milliseconds{int64_t{100} << std::min(attempt, 9u)});
        self->state.log->error("batch commit failed what={} attempt={} retry_in_ms={} "
                               "error=\"{}\"",
                               j->second.what, attempt, delay.count(), describe(err).message);
        self->delayed_send(self, delay, committed_atom::value, id);
      });
}

void commit(coordinator_actor* self, write_batch wb, std::string what,
            std::function<void()> done) {
  auto& st = self->state;
  auto id = ++st.next_commit;
  st.commits.emplace(id, coordinator_state::pending_commit{std::move(wb), std::move(done),
                                                            std::move(what), 0});
  send_commit(self, id);
}

// -- results -------------------------------------------------------------------------

batch_item_result item_outcome(uint64_t index, uint32_t attempts, const llm_reply* reply,
                              const caf::error* err) {
  batch_item_result res;
  res.index = index;
  res.attempts = attempts;
  res.finished_ms = now_ms();
  if (reply != nullptr) {
    res.status = batch_item_result::completed;
    res.http_status = 200;
    res.prompt_tokens = reply->prompt_tokens;
    res.completion_tokens = reply->completion_tokens;
    res.latency_us = reply->latency_us;
    res.content = reply->content;
    res.model = reply->model;
    res.finish_reason = reply->finish_reason;
  } else {
    auto view = describe(*err);
    res.status = batch_item_result::failed;
    res.http_status = view.http_status;
    res.error_code = to_string(view.code);
    res.error_message = view.message;
  }
  return res;
}

void count(run& r, const batch_item_result& res) {
  if (res.status == batch_item_result::completed) {
    ++r.info.done;
  } else if (res.status == batch_item_result::failed) {
    ++r.info.failed;
  } else {
    ++r.info.not_run;
  }
  r.info.prompt_tokens += res.prompt_tokens;
  r.info.completion_tokens += res.completion_tokens;
}

// Records what became of item `index`: committed for batches, kept in
// memory for call lists.
void finish_item(coordinator_actor* self, run& r, uint64_t index, batch_item_result res) {
  auto& st = self->state;
  if (!r.stored) {
    call_outcome out;
    out.ok = res.status == batch_item_result::completed;
    out.attempts = res.attempts;
    out.http_status = res.http_status;
    out.error_code = res.error_code;
    out.error_message = res.error_message;
    if (out.ok) {
      out.reply.content = std::move(res.content);
      out.reply.model = std::move(res.model);
      out.reply.finish_reason = std::move(res.finish_reason);
      out.reply.prompt_tokens = res.prompt_tokens;
      out.reply.completion_tokens = res.completion_tokens;
      out.reply.latency_us = res.latency_us;
    }
    count(r, res);
    r.outcomes[index] = std::move(out);
    --st.unfinished;
    ++r.finished_here;
    maybe_finish(self, r);
    return;
  }

  ++r.committing;
  write_batch wb;
  wb.ops.push_back(put("batch_results", store::item_key(r.id, index), store::encode(res)));
  auto id = r.id;
  commit(self, std::move(wb), "result of " + id, [=] {
    auto i = self->state.runs.find(id);
    if (i == self->state.runs.end()) {
      return;
    }
    auto& run = i->second;
    --run.committing;
    count(run, res);
    --self->state.unfinished;
    ++run.finished_here;
    maybe_finish(self, run);
  });
}

// Ends a run once every item is accounted for and nothing is in flight.
void maybe_finish(coordinator_actor* self, run& r) {
  auto& st = self->state;
  if (r.finalizing || r.finished() < r.info.total || r.running > 0 || r.committing > 0
      || r.close_pending) {
    return;
  }
  r.finalizing = true;
  if (!r.stored) {
    if (r.single) {
      auto& out = r.outcomes.front();
      if (out.ok) {
        r.rp.deliver(std::move(out.reply));
      } else {
        r.rp.deliver(r.single_error ? r.single_error
                                    : make_error(errc::cancelled, out.error_message));
      }
    } else {
      r.rp.deliver(std::move(r.outcomes));
    }
    st.runs.erase(r.id);
    return;
  }

  if (r.close_code == "batch_cancelled") {
    r.info.status = "cancelled";
  } else if (r.close_code == "batch_expired") {
    r.info.status = "expired";
  } else {
    r.info.status = "completed";
  }
  r.info.finished_ms = now_ms();
  // The record keeps the rate this process achieved; nothing is left.
  auto record = snapshot(r);
  record.queued = record.running = 0;
  record.eta_s = record.rate_per_s > 0 ? 0 : -1;
  r.info = record;
  write_batch wb;
  wb.ops.push_back(put("batches", r.id, store::encode(record)));
  auto id = r.id;
  commit(self, std::move(wb), "record of " + id, [=] {
    auto i = self->state.runs.find(id);
    if (i == self->state.runs.end()) {
      return;
    }
    auto& run = i->second;
    auto& info = run.info;
    for (auto& [wid, rp] : run.waiters) {
      rp.deliver(info);
    }
    for (auto& rp : run.cancel_waiters) {
      rp.deliver(info);
    }
    self->state.log->info("batch finished batch_id={} status={} done={} failed={} "
                          "not_run={} prompt_tokens={} completion_tokens={}",
                          id, info.status, info.done, info.failed, info.not_run,
                          info.prompt_tokens, info.completion_tokens);
    self->state.runs.erase(i);
  });
}

// Cancel or deadline: items that have not started end as not run.
void close_run(coordinator_actor* self, run& r, const std::string& status,
               const std::string& code, const std::string& message) {
  auto& st = self->state;
  if (r.closing || r.finalizing) {
    return;
  }
  r.closing = true;
  r.close_code = code;
  r.info.status = status;
  std::vector<uint64_t> left(r.ready.begin(), r.ready.end());
  left.insert(left.end(), r.backing_off.begin(), r.backing_off.end());
  r.ready.clear();
  r.backing_off.clear();
  std::sort(left.begin(), left.end());

  auto not_run = [&](uint64_t index) {
    batch_item_result res;
    res.index = index;
    res.status = batch_item_result::not_run;
    res.error_code = code;
    res.error_message = message;
    res.finished_ms = now_ms();
    auto a = r.attempts.find(index);
    res.attempts = a == r.attempts.end() ? 0 : a->second;
    if (r.stored) {
      llm_request ignored;
      std::string error;
      load_request(self, r, index, ignored, res.custom_id, error);
    }
    return res;
  };

  if (!r.stored) {
    for (auto index : left) {
      auto res = not_run(index);
      call_outcome out;
      out.error_code = code == "batch_expired" ? "timeout" : "cancelled";
      out.error_message = message;
      out.attempts = res.attempts;
      r.outcomes[index] = std::move(out);
      count(r, res);
      --st.unfinished;
    }
    if (r.single && !left.empty()) {
      r.single_error = make_error(code == "batch_expired" ? errc::timeout : errc::cancelled,
                                  message);
    }
    maybe_finish(self, r);
    return;
  }

  // One transaction: the new status and a result for every item left.
  write_batch wb;
  auto record = r.info;
  wb.ops.push_back(put("batches", r.id, store::encode(record)));
  std::vector<batch_item_result> results;
  for (auto index : left) {
    results.push_back(not_run(index));
    wb.ops.push_back(
      put("batch_results", store::item_key(r.id, index), store::encode(results.back())));
  }
  r.close_pending = true;
  r.closing_items = left.size();
  auto id = r.id;
  commit(self, std::move(wb), "close of " + id, [=] {
    auto i = self->state.runs.find(id);
    if (i == self->state.runs.end()) {
      return;
    }
    auto& run = i->second;
    run.close_pending = false;
    run.closing_items = 0;
    for (auto& res : results) {
      count(run, res);
      --self->state.unfinished;
    }
    auto waiting = std::move(run.cancel_waiters);
    run.cancel_waiters.clear();
    auto info = snapshot(run);
    for (auto& rp : waiting) {
      rp.deliver(info);
    }
    maybe_finish(self, run);
  });
  st.log->info("batch closing batch_id={} status={} not_run={} running={}", r.id, status,
               left.size(), r.running);
}

// -- running items ---------------------------------------------------------------

// The next run with an item to start, after the cursor, round robin.
run* next_runnable(coordinator_state& st) {
  auto eligible = [](const run& r) {
    return !r.closing && !r.ready.empty() && (r.concurrency == 0 || r.running < r.concurrency);
  };
  for (auto i = st.runs.upper_bound(st.cursor); i != st.runs.end(); ++i) {
    if (eligible(i->second)) {
      return &i->second;
    }
  }
  for (auto i = st.runs.begin(); i != st.runs.end() && i->first <= st.cursor; ++i) {
    if (eligible(i->second)) {
      return &i->second;
    }
  }
  return nullptr;
}

void on_outcome(coordinator_actor* self, const std::string& id, uint64_t index,
                const std::string& custom_id, uint32_t attempt, llm_reply* reply,
                caf::error* err);

bool load_request(coordinator_actor* self, run& r, uint64_t index, llm_request& req,
                  std::string& custom_id, std::string& error) {
  if (!r.stored) {
    req = r.requests[index];
    return true;
  }
  std::string bytes;
  if (!self->state.env->get("batch_items", store::item_key(r.id, index), bytes, error)) {
    if (error.empty()) {
      error = "item " + std::to_string(index) + " of batch " + r.id + " is missing";
    }
    return false;
  }
  batch_item item;
  if (!store::decode(bytes, item)) {
    error = "item " + std::to_string(index) + " of batch " + r.id + " cannot be decoded";
    return false;
  }
  custom_id = std::move(item.custom_id);
  req.model = std::move(item.model);
  req.messages = std::move(item.messages);
  req.options = item.options;
  return true;
}

void start_item(coordinator_actor* self, run& r, uint64_t index) {
  auto& st = self->state;
  llm_request req;
  std::string custom_id;
  std::string error;
  auto attempt = ++r.attempts[index];
  if (!load_request(self, r, index, req, custom_id, error)) {
    auto err = make_error(errc::store_failure, error);
    st.log->error("batch item unreadable batch_id={} index={} error=\"{}\"", r.id, index,
                  error);
    finish_item(self, r, index, item_outcome(index, attempt, nullptr, &err));
    return;
  }

  // The attempt may not outlive the batch, nor its wait at the router.
  // A library call that names its own timeout keeps it.
  auto timeout = !r.stored && req.timeout_ms > 0 ? milliseconds{req.timeout_ms}
                                                  : r.call_timeout;
  auto queue = router_queue_limit;
  if (r.deadline != clock_type::time_point::max()) {
    auto left = std::chrono::duration_cast<milliseconds>(r.deadline - clock_type::now());
    timeout = std::max(milliseconds{1}, std::min(timeout, left));
    queue = std::max(milliseconds{1}, std::min(queue, left));
  }
  req.timeout_ms = static_cast<uint64_t>(timeout.count());
  req.queue_ms = static_cast<uint64_t>(queue.count());
  ++r.running;
  ++st.in_flight;
  auto id = r.id;
  // The router answers within queue + timeout + its backstop; this
  // timeout only guards against a router that is gone.
  self->request(st.router, queue + timeout + router_slack, batch_atom::value, std::move(req))
    .then(
      [=](llm_reply& reply) {
        on_outcome(self, id, index, custom_id, attempt, &reply, nullptr);
      },
      [=](caf::error& err) { on_outcome(self, id, index, custom_id, attempt, nullptr, &err); });
}

void on_outcome(coordinator_actor* self, const std::string& id, uint64_t index,
                const std::string& custom_id, uint32_t attempt, llm_reply* reply,
                caf::error* err) {
  auto& st = self->state;
  --st.in_flight;
  auto i = st.runs.find(id);
  if (i == st.runs.end()) {
    dispatch(self);
    return;
  }
  auto& r = i->second;
  --r.running;

  if (err != nullptr) {
    auto view = describe(*err);
    // Handed back unsent by the router: not an attempt.
    if (view.code == errc::overloaded && view.field == "queue") {
      --r.attempts[index];
      if (!r.closing) {
        r.ready.push_front(index);
        dispatch(self);
        return;
      }
      auto res = item_outcome(index, r.attempts[index], nullptr, err);
      res.status = batch_item_result::not_run;
      res.error_code = r.close_code;
      res.custom_id = custom_id;
      finish_item(self, r, index, std::move(res));
      dispatch(self);
      return;
    }
    auto delay = batch::retry_delay(attempt, st.opts.backoff, view.retry_after_ms, st.rng);
    bool in_time = r.deadline == clock_type::time_point::max()
                   || clock_type::now() + delay < r.deadline;
    if (batch::retryable(view) && attempt < r.max_attempts && !r.closing && in_time) {
      st.log->debug("batch item retry batch_id={} index={} attempt={} code={} delay_ms={}",
                    id, index, attempt, to_string(view.code), delay.count());
      r.backing_off.insert(index);
      self->delayed_send(self, delay, wait_atom::value, id, index);
      dispatch(self);
      return;
    }
    if (r.single) {
      r.single_error = *err;
    }
  }
  auto res = item_outcome(index, attempt, reply, err);
  res.custom_id = custom_id;
  finish_item(self, r, index, std::move(res));
  dispatch(self);
}

void dispatch(coordinator_actor* self) {
  auto& st = self->state;
  while (st.in_flight < st.opts.concurrency) {
    auto r = next_runnable(st);
    if (r == nullptr) {
      return;
    }
    st.cursor = r->id;
    auto index = r->ready.front();
    r->ready.pop_front();
    start_item(self, *r, index);
  }
}

// -- submission ------------------------------------------------------------------

caf::error validate(const coordinator_state& st, const submit_batch& cmd) {
  if (cmd.items.empty()) {
    return make_error(errc::invalid_argument, "the batch has no items; expected at least one",
                      "items");
  }
  if (cmd.items.size() > st.opts.max_items) {
    return make_error(errc::payload_too_large,
                      "the batch has " + std::to_string(cmd.items.size())
                        + " items; expected at most " + std::to_string(st.opts.max_items),
                      "items");
  }
  std::unordered_set<std::string> ids;
  for (std::size_t i = 0; i < cmd.items.size(); ++i) {
    auto& item = cmd.items[i];
    auto field = "items[" + std::to_string(i) + "]";
    if (item.custom_id.empty()) {
      return make_error(errc::invalid_argument, field + ".custom_id is empty",
                        field + ".custom_id");
    }
    if (!ids.insert(item.custom_id).second) {
      return make_error(errc::invalid_argument,
                        "custom_id \"" + item.custom_id + "\" appears more than once",
                        field + ".custom_id");
    }
    if (item.model.empty()) {
      return make_error(errc::invalid_argument, field + ".model is empty", field + ".model");
    }
    if (item.messages.empty()) {
      return make_error(errc::invalid_argument, field + ".messages is empty",
                        field + ".messages");
    }
  }
  return caf::error{};
}

caf::error room_for(const coordinator_state& st, std::size_t n) {
  auto held = st.unfinished + st.reserved;
  if (held + n > st.opts.max_queued) {
    return make_error(errc::overloaded,
                      "the node holds " + std::to_string(held) + " unfinished batch items and "
                        + std::to_string(n) + " more would pass its limit of "
                        + std::to_string(st.opts.max_queued) + "; retry when some finish");
  }
  return caf::error{};
}

// Refuses models the backend does not serve; nothing is stored then.
caf::error check_models(const submit_batch& cmd, const std::vector<model_info>& served) {
  auto names = model_names(served);
  for (std::size_t i = 0; i < cmd.items.size(); ++i) {
    auto& model = cmd.items[i].model;
    if (names.count(model) > 0) {
      continue;
    }
    auto list = model_list(names);
    return make_error(errc::unknown_model,
                      "item " + std::to_string(i) + " (custom_id \"" + cmd.items[i].custom_id
                        + "\") asks for model \"" + model + "\", which the backend does "
                        + "not serve; it serves: " + list,
                      "items[" + std::to_string(i) + "].model");
  }
  return caf::error{};
}

run make_run(const coordinator_state& st, batch_info info) {
  run r;
  r.id = info.id;
  r.max_attempts = info.options.max_attempts;
  r.concurrency = info.options.concurrency;
  r.call_timeout = milliseconds{info.options.call_timeout_ms};
  // The deadline counts from creation, across restarts.
  auto left = milliseconds{static_cast<int64_t>(info.options.deadline_ms)}
              - milliseconds{now_ms() - info.created_ms};
  r.deadline = clock_type::now() + std::max(milliseconds{0}, left);
  r.info = std::move(info);
  return r;
}

void arm_deadline(coordinator_actor* self, const run& r) {
  auto left = r.deadline - clock_type::now();
  self->delayed_send(self, std::max(clock_type::duration::zero(), left), deadline_atom::value,
                     r.id);
}

// Answers submission `sid` unless the coordinator's exit already did.
template <class T>
void answer_submission(coordinator_actor* self, uint64_t sid, T&& value) {
  auto i = self->state.submissions.find(sid);
  if (i == self->state.submissions.end()) {
    return;
  }
  auto rp = std::move(i->second);
  self->state.submissions.erase(i);
  rp.deliver(std::forward<T>(value));
}

void store_batch(coordinator_actor* self, submit_batch& cmd, uint64_t sid) {
  auto& st = self->state;
  batch_info info;
  info.id = new_batch_id(st);
  info.status = "in_progress";
  info.created_ms = now_ms();
  auto& o = info.options;
  o = cmd.options;
  o.call_timeout_ms = o.call_timeout_ms ? o.call_timeout_ms : st.opts.call_timeout.count();
  o.deadline_ms = o.deadline_ms ? o.deadline_ms : st.opts.deadline.count();
  o.max_attempts = o.max_attempts ? o.max_attempts : st.opts.max_attempts;
  info.total = cmd.items.size();

  write_batch wb;
  wb.ops.reserve(cmd.items.size() + 1);
  wb.ops.push_back(put("batches", info.id, store::encode(info)));
  for (std::size_t i = 0; i < cmd.items.size(); ++i) {
    wb.ops.push_back(put("batch_items", store::item_key(info.id, i),
                         store::encode(cmd.items[i])));
  }
  auto n = cmd.items.size();
  self->request(st.writer, commit_timeout, std::move(wb))
    .then(
      [=](uint64_t) mutable {
        auto& st = self->state;
        st.reserved -= n;
        st.unfinished += n;
        auto r = make_run(st, info);
        for (uint64_t i = 0; i < n; ++i) {
          r.ready.push_back(i);
        }
        st.log->info("batch stored batch_id={} items={} concurrency={} max_attempts={}",
                     info.id, n, info.options.concurrency, info.options.max_attempts);
        auto& placed = st.runs.emplace(info.id, std::move(r)).first->second;
        arm_deadline(self, placed);
        answer_submission(self, sid, snapshot(placed));
        dispatch(self);
      },
      [=](caf::error& err) mutable {
        // Limitation: a commit that timed out may still land; the batch is
        // then not run now, but resumed (and run) by the next start.
        self->state.reserved -= n;
        answer_submission(self, sid, std::move(err));
      });
}

caf::result<batch_info> submit(coordinator_actor* self, submit_batch& cmd) {
  auto& st = self->state;
  if (auto err = validate(st, cmd)) {
    return err;
  }
  if (auto err = room_for(st, cmd.items.size())) {
    return err;
  }
  st.reserved += cmd.items.size();
  auto sid = ++st.next_submission;
  st.submissions.emplace(sid, self->make_response_promise());
  auto n = cmd.items.size();
  self->request(st.router, st.opts.model_check_timeout, models_atom::value)
    .then(
      [=](std::vector<model_info>& served) mutable {
        if (auto err = check_models(cmd, served)) {
          self->state.reserved -= n;
          answer_submission(self, sid, std::move(err));
          return;
        }
        store_batch(self, cmd, sid);
      },
      [=](caf::error& err) mutable {
        self->state.reserved -= n;
        answer_submission(self, sid, make_error(errc::backend_unavailable,
                              "cannot check the batch's models: the backend's model list "
                              "is unavailable ("
                                + describe(err).message + ")"));
      });
  return caf::delegated<batch_info>{};
}

// -- library calls ----------------------------------------------------------------

template <class Reply>
caf::result<Reply> start_calls(coordinator_actor* self, std::vector<llm_request> requests,
                               uint32_t max_attempts, uint32_t concurrency,
                               uint64_t deadline_ms, bool single) {
  auto& st = self->state;
  if (requests.empty()) {
    if constexpr (std::is_same_v<Reply, llm_reply>) {
      return make_error(errc::invalid_argument, "no request given", "request");
    } else {
      return std::vector<call_outcome>{};
    }
  }
  if (auto err = room_for(st, requests.size())) {
    return err;
  }
  run r;
  r.id = "calls_" + std::to_string(++st.next_call_list);
  r.stored = false;
  r.single = single;
  r.max_attempts = max_attempts ? max_attempts : st.opts.max_attempts;
  r.concurrency = concurrency;
  r.call_timeout = st.opts.call_timeout;
  r.info.id = r.id;
  r.info.status = "in_progress";
  r.info.total = requests.size();
  for (uint64_t i = 0; i < requests.size(); ++i) {
    // A request that names its own timeout keeps it per attempt.
    r.ready.push_back(i);
  }
  if (single && requests.front().timeout_ms > 0) {
    r.call_timeout = milliseconds{requests.front().timeout_ms};
  }
  r.outcomes.resize(requests.size());
  r.requests = std::move(requests);
  if (deadline_ms > 0) {
    r.deadline = clock_type::now() + milliseconds{deadline_ms};
  }
  r.rp = self->make_response_promise();
  st.unfinished += r.info.total;
  auto& placed = st.runs.emplace(r.id, std::move(r)).first->second;
  if (deadline_ms > 0) {
    arm_deadline(self, placed);
  }
  dispatch(self);
  return caf::delegated<Reply>{};
}

// -- queries -----------------------------------------------------------------------

caf::expected<batch_info> get(coordinator_actor* self, const std::string& id) {
  auto& st = self->state;
  auto i = st.runs.find(id);
  if (i != st.runs.end() && i->second.stored) {
    return snapshot(i->second);
  }
  std::string bytes;
  std::string error;
  if (!st.env->get("batches", id, bytes, error)) {
    if (!error.empty()) {
      return make_error(errc::store_failure, "reading batch " + id + ": " + error);
    }
    return make_error(errc::not_found, "no batch \"" + id + "\"", "id");
  }
  batch_info info;
  if (!store::decode(bytes, info)) {
    return make_error(errc::store_failure, "batch record " + id + " cannot be decoded");
  }
  return info;
}

batch_page list(coordinator_actor* self, const list_batches& cmd) {
  auto& st = self->state;
  batch_page page;
  std::string error;
  auto limit = std::max<uint32_t>(1, cmd.limit);
  st.env->scan("batches", "", cmd.after, [&](std::string_view key, std::string_view value) {
    if (key == cmd.after) {
      return true;
    }
    if (page.items.size() == limit) {
      page.next_after = page.items.back().id;
      return false;
    }
    auto live = st.runs.find(std::string{key});
    if (live != st.runs.end()) {
      page.items.push_back(snapshot(live->second));
    } else {
      batch_info info;
      if (store::decode(value, info)) {
        page.items.push_back(std::move(info));
      }
    }
    return true;
  }, error);
  return page;
}

// A cancel is answered once it is committed, so a node killed right after
// the answer still has the batch as cancelling.
caf::result<batch_info> cancel(coordinator_actor* self, const std::string& id) {
  auto& st = self->state;
  auto i = st.runs.find(id);
  if (i != st.runs.end() && i->second.stored) {
    auto& r = i->second;
    if (r.finalizing) {
      // Too late to stop anything: the answer is the final record.
      r.waiters.emplace(++st.next_waiter, self->make_response_promise());
      return caf::delegated<batch_info>{};
    }
    if (r.closing && !r.close_pending) {
      return snapshot(r);
    }
    r.cancel_waiters.push_back(self->make_response_promise());
    if (!r.closing) {
      close_run(self, r, "cancelling", "batch_cancelled", "the batch was cancelled");
    }
    return caf::delegated<batch_info>{};
  }
  auto found = get(self, id);
  if (!found) {
    return std::move(found.error());
  }
  return make_error(errc::conflict,
                    "batch " + id + " already ended with status " + found->status, "id");
}

// -- resuming after a restart ---------------------------------------------------------

void resume(coordinator_actor* self) {
  auto& st = self->state;
  std::vector<batch_info> open;
  std::string error;
  st.env->scan("batches", "", "", [&](std::string_view, std::string_view value) {
    batch_info info;
    if (store::decode(value, info) && !finished_status(info.status)) {
      open.push_back(std::move(info));
    }
    return true;
  }, error);
  if (!error.empty()) {
    st.log->error("batch resume scan failed error=\"{}\"", error);
  }
  for (auto& info : open) {
    auto r = make_run(st, info);
    r.info.done = r.info.failed = r.info.not_run = 0;
    r.info.prompt_tokens = r.info.completion_tokens = 0;
    std::vector<bool> finished(r.info.total, false);
    st.env->scan("batch_results", r.id, "", [&](std::string_view key, std::string_view value) {
      auto index = store::decode_seq(key.substr(r.id.size()));
      batch_item_result res;
      if (index < finished.size() && store::decode(value, res)) {
        finished[index] = true;
        count(r, res);
      }
      return true;
    }, error);
    for (uint64_t i = 0; i < finished.size(); ++i) {
      if (!finished[i]) {
        r.ready.push_back(i);
      }
    }
    st.unfinished += r.ready.size();
    st.log->info("batch resumed batch_id={} status={} left={} of={}", r.id, r.info.status,
                 r.ready.size(), r.info.total);
    auto status = r.info.status;
    auto& placed = st.runs.emplace(r.id, std::move(r)).first->second;
    if (status == "cancelling") {
      close_run(self, placed, "cancelling", "batch_cancelled", "the batch was cancelled");
    } else if (status == "finalizing" || placed.deadline <= clock_type::now()) {
      // Its deadline passed while the node was down: nothing more runs.
      close_run(self, placed, "finalizing", "batch_expired",
                "the batch's deadline passed before this item ran");
    } else {
      arm_deadline(self, placed);
    }
    maybe_finish(self, placed);
  }
}

caf::behavior coordinator(coordinator_actor* self, std::shared_ptr<store::environment> env,
                          caf::actor writer, caf::actor router,
                          batch_coordinator_options opts) {
  auto& st = self->state;
  st.opts = opts;
  st.opts.concurrency = std::max<uint32_t>(1, opts.concurrency);
  st.env = std::move(env);
  st.writer = std::move(writer);
  st.router = std::move(router);
  // Whoever waits on this actor hears of its end instead of timing out.
  self->set_exit_handler([=](caf::exit_msg& msg) {
    auto& st = self->state;
    auto gone = make_error(errc::overloaded, "the batch coordinator stopped; retry");
    for (auto& [sid, rp] : st.submissions) {
      rp.deliver(gone);
    }
    st.submissions.clear();
    for (auto& [id, r] : st.runs) {
      for (auto& [wid, rp] : r.waiters) {
        rp.deliver(snapshot(r));
      }
      for (auto& rp : r.cancel_waiters) {
        rp.deliver(gone);
      }
      if (!r.stored && !r.finalizing) {
        r.rp.deliver(gone);
      }
    }
    st.runs.clear();
    self->quit(msg.reason);
  });
  resume(self);
  dispatch(self);
  return {
    [=](submit_batch& cmd) { return submit(self, cmd); },
    [=](get_batch& cmd) -> caf::result<batch_info> {
      auto& st = self->state;
      auto live = st.runs.find(cmd.id);
      if (cmd.wait_ms > 0 && live != st.runs.end() && live->second.stored) {
        auto wid = ++st.next_waiter;
        live->second.waiters.emplace(wid, self->make_response_promise());
        self->delayed_send(self, milliseconds{cmd.wait_ms}, tick_atom::value, cmd.id, wid);
        return caf::delegated<batch_info>{};
      }
      auto found = get(self, cmd.id);
      if (!found) {
        return std::move(found.error());
      }
      return std::move(*found);
    },
    [=](list_batches& cmd) { return list(self, cmd); },
    [=](cancel_batch& cmd) { return cancel(self, cmd.id); },
    [=](llm_call& cmd) {
      std::vector<llm_request> one{std::move(cmd.request)};
      return start_calls<llm_reply>(self, std::move(one), cmd.max_attempts, 0, 0, true);
    },
    [=](llm_call_batch& cmd) {
      return start_calls<std::vector<call_outcome>>(self, std::move(cmd.requests),
                                                    cmd.max_attempts, cmd.concurrency,
                                                    cmd.deadline_ms, false);
    },
    [=](wait_atom, const std::string& id, uint64_t index) {
      auto i = self->state.runs.find(id);
      if (i == self->state.runs.end() || i->second.backing_off.erase(index) == 0) {
        return;
      }
      // A retried item goes ahead of those not tried yet.
      i->second.ready.push_front(index);
      dispatch(self);
    },
    [=](committed_atom, uint64_t commit_id) { send_commit(self, commit_id); },
    [=](tick_atom, const std::string& id, uint64_t wid) {
      // A waiter's time is up: it gets the batch as it stands.
      auto i = self->state.runs.find(id);
      if (i == self->state.runs.end()) {
        return;
      }
      auto w = i->second.waiters.find(wid);
      if (w != i->second.waiters.end()) {
        w->second.deliver(snapshot(i->second));
        i->second.waiters.erase(w);
      }
    },
    [=](deadline_atom, const std::string& id) {
      auto i = self->state.runs.find(id);
      if (i == self->state.runs.end()) {
        return;
      }
      close_run(self, i->second, i->second.stored ? "finalizing" : "in_progress",
                "batch_expired", "the batch's deadline passed before this item ran");
    },
    [=](stats_atom) {
      auto& st = self->state;
      return caf::make_message(uint64_t{st.runs.size()}, uint64_t{st.unfinished},
                               uint64_t{st.in_flight});
    },
  };
}

}  // namespace

caf::actor spawn_batch_coordinator(caf::actor_system& sys,
                                   std::shared_ptr<store::environment> env, caf::actor writer,
                                   caf::actor router, batch_coordinator_options options) {
  return sys.spawn(coordinator, std::move(env), std::move(writer), std::move(router), options);
}

}  // namespace kowalski
