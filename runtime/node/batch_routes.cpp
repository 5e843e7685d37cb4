// HTTP routes of batches: JSON or OpenAI Batch JSONL in, the coordinator in
// the middle, batch objects and OpenAI output lines out.
#include "runtime/node/batch_routes.hpp"

#include "messages/errors.hpp"
#include "messages/types.hpp"
#include "runtime/json/json.hpp"
#include "runtime/node/http_util.hpp"
#include "runtime/node/node.hpp"
#include "runtime/store/store.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <unordered_map>

namespace kowalski {

namespace {

using namespace gw;
using simdjson::dom::element;
using std::chrono::milliseconds;

constexpr std::size_t max_message_bytes = 1 << 20;
constexpr std::size_t results_page = 256;

bool is_batch_id(std::string_view id) {
  return is_hex_id(id, "batch_", 20);
}

// -- rendering ----------------------------------------------------------------------

void write_batch(json::writer& w, const batch_info& b) {
  w.begin_object()
    .key("id").value(b.id)
    .key("object").value("batch")
    .key("endpoint").value("/v1/chat/completions")
    .key("status").value(b.status)
    .key("created_at").value(b.created_ms / 1000)
    .key("created_ms").value(b.created_ms);
  w.key("finished_ms");
  if (b.finished_ms == 0) {
    w.null();
  } else {
    w.value(b.finished_ms);
  }
  w.key("request_counts").begin_object()
    .key("total").value(b.total)
    .key("completed").value(b.done)
    .key("failed").value(b.failed + b.not_run)
    .end_object();
  w.key("counts").begin_object()
    .key("queued").value(b.queued)
    .key("running").value(b.running)
    .key("done").value(b.done)
    .key("failed").value(b.failed)
    .key("not_run").value(b.not_run)
    .end_object();
  w.key("usage").begin_object()
    .key("prompt_tokens").value(b.prompt_tokens)
    .key("completion_tokens").value(b.completion_tokens)
    .key("total_tokens").value(b.prompt_tokens + b.completion_tokens)
    .end_object();
  w.key("rate_per_s").value(b.rate_per_s);
  w.key("eta_s");
  if (b.eta_s < 0) {
    w.null();
  } else {
    w.value(b.eta_s);
  }
  w.key("options").begin_object()
    .key("call_timeout_ms").value(b.options.call_timeout_ms)
    .key("deadline_ms").value(b.options.deadline_ms)
    .key("max_attempts").value(b.options.max_attempts)
    .key("concurrency").value(b.options.concurrency)
    .end_object();
  w.end_object();
}

std::string batch_body(const batch_info& b) {
  json::writer w;
  write_batch(w, b);
  return w.take();
}

// One line of OpenAI's batch output format for a committed result.
std::string output_line(const std::string& batch_id, const batch_item_result& r) {
  auto request_id = batch_id + "-" + std::to_string(r.index);
  json::writer w;
  w.begin_object()
    .key("id").value("batch_req_" + request_id)
    .key("custom_id").value(r.custom_id);
  w.key("response");
  if (r.status == batch_item_result::completed) {
    auto created = r.finished_ms / 1000;
    w.begin_object().key("status_code").value(200).key("request_id").value(request_id);
    w.key("body").begin_object()
      .key("id").value("chatcmpl-" + request_id)
      .key("object").value("chat.completion")
      .key("created").value(created)
      .key("model").value(r.model);
    w.key("choices").begin_array().begin_object()
      .key("index").value(0)
      .key("message").begin_object()
      .key("role").value("assistant").key("content").value(r.content).end_object()
      .key("finish_reason").value(r.finish_reason.empty() ? "stop" : r.finish_reason)
      .end_object().end_array();
    w.key("usage").begin_object()
      .key("prompt_tokens").value(r.prompt_tokens)
      .key("completion_tokens").value(r.completion_tokens)
      .key("total_tokens").value(r.prompt_tokens + r.completion_tokens)
      .end_object();
    w.end_object().end_object();
    w.key("error").null();
  } else if (r.status == batch_item_result::failed && r.http_status >= 400) {
    // The backend answered with an error status: OpenAI keeps it here.
    w.begin_object().key("status_code").value(r.http_status).key("request_id").value(request_id);
    w.key("body").begin_object().key("error").begin_object()
      .key("message").value(r.error_message).key("type").value(r.error_code)
      .end_object().end_object();
    w.end_object();
    w.key("error").null();
  } else {
    w.null();
    w.key("error").begin_object()
      .key("code").value(r.error_code).key("message").value(r.error_message).end_object();
  }
  w.key("kowalski").begin_object()
    .key("index").value(r.index)
    .key("attempts").value(r.attempts)
    .key("latency_ms").value(static_cast<double>(r.latency_us) / 1000.0)
    .end_object();
  w.end_object();
  auto line = w.take();
  line += '\n';
  return line;
}

// -- parsing submissions -------------------------------------------------------------

// Reads an optional non-negative integer field of at most `max`.
std::optional<bad_input> get_count(element obj, const char* key, uint64_t max, uint64_t& out,
                                   const std::string& prefix = {}) {
  element v;
  if (obj[key].get(v) != simdjson::SUCCESS || v.is_null()) {
    return std::nullopt;
  }
  uint64_t n = 0;
  if (!(v.is_int64() || v.is_uint64()) || v.get(n) != simdjson::SUCCESS || n > max) {
    return bad_input{400, prefix + key, prefix + key + " must be an integer from 0 to "
                                          + std::to_string(max) + ", got " + describe_value(v)};
  }
  out = n;
  return std::nullopt;
}

std::optional<bad_input> parse_messages(element obj, const std::string& prefix,
                                        std::vector<chat_message>& out) {
  element arr;
  if (obj["messages"].get(arr) != simdjson::SUCCESS) {
    return bad_input{400, prefix + "messages",
                     prefix + "messages is missing; expected an array of {role, content}"};
  }
  if (!arr.is_array()) {
    return bad_input{400, prefix + "messages", prefix + "messages must be an array, got "
                                                 + describe_value(arr)};
  }
  std::size_t i = 0;
  for (element m : simdjson::dom::array(arr)) {
    auto at = prefix + "messages[" + std::to_string(i++) + "]";
    if (!m.is_object()) {
      return bad_input{400, at, at + " must be an object {role, content}, got "
                                  + describe_value(m)};
    }
    chat_message msg;
    if (auto bad = get_string(m, "role", msg.role, true, true, 32)) {
      bad->field = at + "." + bad->field;
      bad->message = at + "." + bad->message;
      return bad;
    }
    if (msg.role != "system" && msg.role != "user" && msg.role != "assistant"
        && msg.role != "tool") {
      return bad_input{400, at + ".role", at + ".role must be system, user, assistant or "
                                            "tool, got " + json::quote(msg.role)};
    }
    if (auto bad = get_string(m, "content", msg.content, true, false, max_message_bytes)) {
      bad->field = at + "." + bad->field;
      bad->message = at + "." + bad->message;
      return bad;
    }
    out.push_back(std::move(msg));
  }
  if (out.empty()) {
    return bad_input{400, prefix + "messages",
                     prefix + "messages is empty; expected at least one message"};
  }
  return std::nullopt;
}

std::optional<bad_input> parse_sampling(element obj, const std::string& prefix,
                                        generation_options& out) {
  auto with_prefix = [&](std::optional<bad_input> bad) {
    if (bad) {
      bad->field = prefix + bad->field;
      bad->message = prefix + bad->message;
    }
    return bad;
  };
  if (auto bad = with_prefix(get_number(obj, "temperature", 0, 2, out.temperature))) {
    return bad;
  }
  if (auto bad = with_prefix(get_positive_int(obj, "max_tokens", 1'000'000, out.max_tokens))) {
    return bad;
  }
  return with_prefix(
    get_positive_int(obj, "max_completion_tokens", 1'000'000, out.max_tokens));
}

// A submission as parsed: the items, and how to name an item in an error.
struct parsed_batch {
  submit_batch cmd;
  bool jsonl = false;
  std::vector<std::size_t> lines;  // JSONL: line number of each item
  std::string list_name;           // JSON: "prompts" or "requests"
};

// Turns "items[3].model" from the coordinator into the name the caller used.
std::string caller_field(const parsed_batch& p, const std::string& field) {
  if (field == "items") {
    return p.jsonl ? "body" : p.list_name;
  }
  if (field.rfind("items[", 0) != 0) {
    return field;
  }
  auto close = field.find(']');
  auto index = std::strtoull(field.c_str() + 6, nullptr, 10);
  auto rest = field.substr(close + 1);
  if (p.jsonl && index < p.lines.size()) {
    return "line " + std::to_string(p.lines[index]) + (rest.empty() ? "" : ": body" + rest);
  }
  return p.list_name + "[" + std::to_string(index) + "]" + rest;
}

std::optional<bad_input> parse_options_query(const net::http_request& req,
                                             batch_options& o) {
  struct numeric {
    const char* key;
    uint64_t max;
    std::function<void(uint64_t)> set;
  };
  numeric fields[] = {
    {"call_timeout_ms", 86'400'000, [&](uint64_t v) { o.call_timeout_ms = v; }},
    {"deadline_ms", uint64_t{30} * 86'400'000, [&](uint64_t v) { o.deadline_ms = v; }},
    {"max_attempts", 100, [&](uint64_t v) { o.max_attempts = static_cast<uint32_t>(v); }},
    {"concurrency", 100'000, [&](uint64_t v) { o.concurrency = static_cast<uint32_t>(v); }},
  };
  for (auto& f : fields) {
    std::string value;
    if (!req.query_param(f.key, value)) {
      continue;
    }
    char* end = nullptr;
    auto n = std::strtoull(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || value[0] == '-' || n > f.max) {
      return bad_input{400, f.key, std::string{f.key} + " must be an integer from 0 to "
                                     + std::to_string(f.max) + ", got "
                                     + json::quote(value.substr(0, 32))};
    }
    f.set(n);
  }
  std::string window;
  if (req.query_param("completion_window", window)) {
    // OpenAI's "24h"; minutes and seconds are accepted too.
    char* end = nullptr;
    auto n = std::strtoull(window.c_str(), &end, 10);
    std::string unit = end;
    uint64_t factor = unit == "h" ? 3'600'000 : unit == "m" ? 60'000 : unit == "s" ? 1000 : 0;
    constexpr uint64_t max_ms = uint64_t{30} * 86'400'000;
    if (window.empty() || window[0] == '-' || factor == 0 || n == 0 || n > max_ms / 1000
        || n * factor > max_ms) {
      return bad_input{400, "completion_window",
                       "completion_window must be a duration up to 30 days such as 24h, "
                       "30m or 90s, got "
                         + json::quote(window.substr(0, 32))};
    }
    o.deadline_ms = n * factor;
  }
  return std::nullopt;
}

// The OpenAI Batch API input file: one request object per line.
// Limitation: the whole body (up to batch.max_body) is parsed here, on the
// gateway's I/O thread; other requests on that thread wait meanwhile.
std::optional<bad_input> parse_jsonl(const net::http_request& req, parsed_batch& p) {
  p.jsonl = true;
  std::string_view body = req.body;
  if (!json::valid_utf8(body)) {
    return bad_input{400, "body", "the request body is not valid UTF-8; expected JSON Lines"};
  }
  // Editors on some systems start files with a byte order mark.
  if (body.substr(0, 3) == "\xEF\xBB\xBF") {
    body.remove_prefix(3);
  }
  std::unordered_map<std::string, std::size_t> seen;
  std::size_t lineno = 0;
  while (!body.empty()) {
    auto nl = body.find('\n');
    auto line = body.substr(0, nl);
    body = nl == std::string_view::npos ? std::string_view{} : body.substr(nl + 1);
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) {
      continue;
    }
    auto at = "line " + std::to_string(lineno);
    element doc;
    auto err = parser().parse(line.data(), line.size()).get(doc);
    if (err != simdjson::SUCCESS) {
      return bad_input{400, at, at + " is malformed JSON (" + simdjson::error_message(err)
                                  + "); expected one request object per line"};
    }
    if (!doc.is_object()) {
      return bad_input{400, at, at + " is " + describe_value(doc)
                                  + "; expected a request object"};
    }
    auto named = [&](std::optional<bad_input> bad) {
      if (bad) {
        bad->message = at + ": " + bad->message;
        bad->field = at + ": " + bad->field;
      }
      return bad;
    };
    batch_item item;
    if (auto bad = named(get_string(doc, "custom_id", item.custom_id, true, true, 512))) {
      return bad;
    }
    auto [first, fresh] = seen.emplace(item.custom_id, lineno);
    if (!fresh) {
      return bad_input{400, at + ": custom_id",
                       at + ": custom_id " + json::quote(item.custom_id)
                         + " was already used on line " + std::to_string(first->second)
                         + "; expected ids unique within the file"};
    }
    std::string method = "POST";
    if (auto bad = named(get_string(doc, "method", method, false, true, 16))) {
      return bad;
    }
    if (method != "POST") {
      return bad_input{400, at + ": method", at + ": method must be POST, got "
                                               + json::quote(method)};
    }
    std::string url = "/v1/chat/completions";
    if (auto bad = named(get_string(doc, "url", url, false, true, 256))) {
      return bad;
    }
    if (url != "/v1/chat/completions" && url != "/chat/completions") {
      return bad_input{400, at + ": url",
                       at + ": url is " + json::quote(url)
                         + "; expected /v1/chat/completions, the endpoint batches run"};
    }
    element b;
    if (doc["body"].get(b) != simdjson::SUCCESS || !b.is_object()) {
      return bad_input{400, at + ": body", at + ": body must be a chat completion request "
                                             "object {model, messages}"};
    }
    if (auto bad = named(get_string(b, "model", item.model, true, true, 256))) {
      bad->field = at + ": body.model";
      return bad;
    }
    if (auto bad = parse_messages(b, "", item.messages)) {
      bad->field = at + ": body." + bad->field;
      bad->message = at + ": body." + bad->message;
      return bad;
    }
    if (auto bad = parse_sampling(b, "", item.options)) {
      bad->field = at + ": body." + bad->field;
      bad->message = at + ": body." + bad->message;
      return bad;
    }
    p.lines.push_back(lineno);
    p.cmd.items.push_back(std::move(item));
  }
  if (p.cmd.items.empty()) {
    return bad_input{400, "body", "the batch file has no requests; expected one JSON "
                                  "request object per line"};
  }
  return parse_options_query(req, p.cmd.options);
}

// The JSON form: {"model", "prompts": [...]} or {"requests": [...]}, plus
// defaults and options.
std::optional<bad_input> parse_json(const net::http_request& req, const std::string& fallback,
                                    parsed_batch& p) {
  element doc;
  if (auto bad = parse_object(req, doc, false)) {
    return bad;
  }
  std::string model = fallback;
  std::string system;
  generation_options defaults;
  if (auto bad = get_string(doc, "model", model, false, true, 256)) {
    return bad;
  }
  if (auto bad = get_string(doc, "system", system, false, false, max_message_bytes)) {
    return bad;
  }
  if (auto bad = parse_sampling(doc, "", defaults)) {
    return bad;
  }
  auto& o = p.cmd.options;
  uint64_t v = 0;
  if (auto bad = get_count(doc, "call_timeout_ms", 86'400'000, v)) {
    return bad;
  }
  o.call_timeout_ms = v;
  v = 0;
  if (auto bad = get_count(doc, "deadline_ms", uint64_t{30} * 86'400'000, v)) {
    return bad;
  }
  o.deadline_ms = v;
  v = 0;
  if (auto bad = get_count(doc, "max_attempts", 100, v)) {
    return bad;
  }
  o.max_attempts = static_cast<uint32_t>(v);
  v = 0;
  if (auto bad = get_count(doc, "concurrency", 100'000, v)) {
    return bad;
  }
  o.concurrency = static_cast<uint32_t>(v);

  element prompts;
  element requests;
  bool has_prompts = doc["prompts"].get(prompts) == simdjson::SUCCESS;
  bool has_requests = doc["requests"].get(requests) == simdjson::SUCCESS;
  if (has_prompts == has_requests) {
    return bad_input{400, "prompts", has_prompts
                                       ? "give either prompts or requests, not both"
                                       : "prompts is missing; expected an array of strings "
                                         "(or requests, an array of request objects)"};
  }
  p.list_name = has_prompts ? "prompts" : "requests";
  auto list = has_prompts ? prompts : requests;
  if (!list.is_array()) {
    return bad_input{400, p.list_name, p.list_name + " must be an array, got "
                                         + describe_value(list)};
  }
  auto start = [&](batch_item& item, std::size_t i) {
    item.custom_id = "item-" + std::to_string(i);
    item.model = model;
    item.options = defaults;
    if (!system.empty()) {
      item.messages.push_back(chat_message{"system", system});
    }
  };
  std::size_t i = 0;
  for (element e : simdjson::dom::array(list)) {
    auto at = p.list_name + "[" + std::to_string(i) + "]";
    batch_item item;
    start(item, i);
    if (has_prompts) {
      if (!e.is_string() || std::string_view(e).empty()) {
        return bad_input{400, at, at + " must be a non-empty string, got "
                                    + describe_value(e)};
      }
      if (std::string_view(e).size() > max_message_bytes) {
        return bad_input{413, at, at + " is over " + std::to_string(max_message_bytes)
                                    + " bytes"};
      }
      item.messages.push_back(chat_message{"user", std::string{std::string_view(e)}});
    } else {
      if (!e.is_object()) {
        return bad_input{400, at, at + " must be an object {custom_id?, model?, messages | "
                                       "prompt}, got " + describe_value(e)};
      }
      auto prefix = at + ".";
      auto named = [&](std::optional<bad_input> bad) {
        if (bad) {
          bad->field = prefix + bad->field;
          bad->message = prefix + bad->message;
        }
        return bad;
      };
      if (auto bad = named(get_string(e, "custom_id", item.custom_id, false, true, 512))) {
        return bad;
      }
      if (auto bad = named(get_string(e, "model", item.model, false, true, 256))) {
        return bad;
      }
      std::string prompt;
      if (auto bad = named(get_string(e, "prompt", prompt, false, true, max_message_bytes))) {
        return bad;
      }
      if (!prompt.empty()) {
        item.messages.push_back(chat_message{"user", prompt});
      } else {
        item.messages.clear();
        if (auto bad = parse_messages(e, prefix, item.messages)) {
          return bad;
        }
      }
      if (auto bad = parse_sampling(e, prefix, item.options)) {
        return bad;
      }
    }
    p.cmd.items.push_back(std::move(item));
    ++i;
  }
  if (p.cmd.items.empty()) {
    return bad_input{400, p.list_name, p.list_name + " is empty; expected at least one item"};
  }
  return std::nullopt;
}

bool is_jsonl(const net::http_request& req) {
  auto type = req.header("content-type");
  if (type == nullptr) {
    return false;
  }
  auto t = type->substr(0, type->find(';'));
  return net::iequals(t, "application/jsonl") || net::iequals(t, "application/x-ndjson")
         || net::iequals(t, "application/x-jsonlines") || net::iequals(t, "text/jsonl");
}

// -- handlers ----------------------------------------------------------------------

template <class Reply, class Render, class Msg>
void ask(node& n, const net::responder_ptr& out, milliseconds timeout, Msg msg, Render render) {
  auto target = n.batches();
  n.system().spawn([=](caf::event_based_actor* self) {
    self->request(target, timeout, msg)
      .then([=](Reply& reply) { render(reply); }, [=](caf::error& err) { reply_error(out, err); });
  });
}

void submit(node& n, const net::http_request& req, const net::responder_ptr& out) {
  auto p = std::make_shared<parsed_batch>();
  auto bad = is_jsonl(req) ? parse_jsonl(req, *p) : parse_json(req, n.config().llm_model, *p);
  if (bad) {
    return reply_bad(out, *bad);
  }
  auto target = n.batches();
  n.system().spawn([=](caf::event_based_actor* self) {
    // The coordinator checks the models (30 s at most) and commits the
    // whole batch (120 s at most) before it answers.
    self->request(target, std::chrono::seconds(300), std::move(p->cmd))
      .then(
        [=](batch_info& info) {
          net::http_response res;
          res.status = 201;
          res.headers.emplace_back("Location", "/v1/batches/" + info.id);
          res.body = batch_body(info);
          out->respond(std::move(res));
        },
        [=](caf::error& err) {
          auto view = describe(err);
          auto status = http_status(view.code);
          auto field = caller_field(*p, view.field);
          auto message = view.message;
          if (field != view.field && !view.field.empty()) {
            message = field + ": " + message;
          }
          reply_json(out, status,
                     net::error_body(status, to_string(view.code), message, field));
        });
  });
}

// Streams the committed results in input order, a page at a time, each
// page read only once the previous one has gone to the socket.
struct results_stream : std::enable_shared_from_this<results_stream> {
  std::shared_ptr<store::environment> env;
  std::string id;
  net::responder_ptr out;
  uint64_t next = 0;

  void pump() {
    if (out->closed()) {
      return;
    }
    std::string chunk;
    std::size_t count = 0;
    std::string error;
    bool more = false;
    env->scan("batch_results", id, store::item_key(id, next),
              [&](std::string_view key, std::string_view value) {
                if (count == results_page) {
                  more = true;
                  return false;
                }
                batch_item_result r;
                if (store::decode(value, r)) {
                  chunk += output_line(id, r);
                }
                next = store::decode_seq(key.substr(id.size())) + 1;
                ++count;
                return true;
              },
              error);
    if (!chunk.empty()) {
      out->write(std::move(chunk));
    }
    if (!error.empty() || !more) {
      // A read error mid-stream cannot change the status any more: the
      // body ends short, which a JSONL reader sees as a cut line count.
      out->end();
      return;
    }
    out->when_drained([self = shared_from_this()] { self->pump(); });
  }
};

void results(node& n, const std::string& id, const net::responder_ptr& out) {
  std::string bytes;
  std::string error;
  auto env = n.store();
  if (!env->get("batches", id, bytes, error)) {
    if (!error.empty()) {
      return reply_error(out, 500, "store_failure", "reading batch " + id + ": " + error);
    }
    return reply_error(out, 404, "not_found", "no batch " + json::quote(id), "id");
  }
  auto stream = std::make_shared<results_stream>();
  stream->env = env;
  stream->id = id;
  stream->out = out;
  out->begin_stream(200, "application/jsonl");
  stream->pump();
}

void list(node& n, const net::http_request& req, const net::responder_ptr& out) {
  list_batches cmd;
  if (auto bad = query_limit(req, 1000, cmd.limit)) {
    return reply_bad(out, *bad);
  }
  std::string after;
  if (req.query_param("after", after)) {
    if (!is_batch_id(after)) {
      return reply_error(out, 400, "invalid_argument",
                         "after must be a batch id, got " + json::quote(after.substr(0, 64)),
                         "after");
    }
    cmd.after = after;
  }
  ask<batch_page>(n, out, std::chrono::seconds(30), cmd, [out](const batch_page& page) {
    json::writer w;
    w.begin_object().key("object").value("list").key("data").begin_array();
    for (auto& b : page.items) {
      write_batch(w, b);
    }
    w.end_array().key("has_more").value(!page.next_after.empty()).key("next_after");
    if (page.next_after.empty()) {
      w.null();
    } else {
      w.value(page.next_after);
    }
    w.end_object();
    reply_json(out, 200, w.take());
  });
}

void get(node& n, const net::http_request& req, const std::string& id,
         const net::responder_ptr& out) {
  get_batch cmd{id, 0};
  if (auto bad = query_wait_ms(req, cmd.wait_ms)) {
    return reply_bad(out, *bad);
  }
  auto timeout = milliseconds{cmd.wait_ms} + std::chrono::seconds(30);
  ask<batch_info>(n, out, timeout, cmd,
                  [out](const batch_info& b) { reply_json(out, 200, batch_body(b)); });
}

}  // namespace

bool is_batch_upload(const std::string& method, const std::string& target) {
  // Batch files and RLM contexts are the large bodies.
  auto path = std::string_view{target}.substr(0, target.find('?'));
  return method == "POST" && (path == "/v1/batches" || path == "/v1/rlm/runs");
}

void serve_batches(node& n, const net::http_request& req,
                   const std::vector<std::string_view>& parts, const net::responder_ptr& out) {
  if (parts.size() == 2) {
    if (req.method == "POST") {
      return submit(n, req, out);
    }
    if (req.method == "GET") {
      return list(n, req, out);
    }
    return not_allowed(req, out, "GET, POST");
  }
  auto id = std::string{parts[2]};
  if (!is_batch_id(id)) {
    return reply_error(out, 404, "not_found",
                       "no batch " + json::quote(id.substr(0, 64))
                         + "; ids look like batch_ and 20 hex digits",
                       "id");
  }
  auto cancel = [&] {
    ask<batch_info>(n, out, std::chrono::seconds(30), cancel_batch{id},
                    [out](const batch_info& b) { reply_json(out, 200, batch_body(b)); });
  };
  if (parts.size() == 3) {
    if (req.method == "GET") {
      return get(n, req, id, out);
    }
    if (req.method == "DELETE") {
      return cancel();
    }
    return not_allowed(req, out, "GET, DELETE");
  }
  if (parts.size() == 4 && parts[3] == "cancel") {
    return req.method == "POST" ? cancel() : not_allowed(req, out, "POST");
  }
  if (parts.size() == 4 && parts[3] == "results") {
    return req.method == "GET" ? results(n, id, out) : not_allowed(req, out, "GET");
  }
  reply_error(out, 404, "not_found", "no route for " + req.method + " " + req.path);
}

}  // namespace kowalski
