// Helpers shared by the benchmark programs: flags, blocking HTTP calls,
// JSON fields, and the resident memory of a process.
#pragma once

#include "runtime/net/http_client.hpp"

#include <simdjson.h>

#include <fstream>
#include <future>
#include <map>
#include <string>

namespace kowalski::bench {

struct args {
  std::map<std::string, std::string> kv;

  std::string get(const std::string& k, std::string fallback = {}) const {
    auto i = kv.find(k);
    return i == kv.end() ? fallback : i->second;
  }

  long num(const std::string& k, long fallback) const {
    auto i = kv.find(k);
    return i == kv.end() ? fallback : std::stol(i->second);
  }
};

inline net::client_result call(net::http_client& client, const std::string& method,
                               const std::string& url, std::string body) {
  net::client_request req;
  req.method = method;
  req.url = url;
  req.body = std::move(body);
  req.headers.emplace_back("Content-Type", "application/json");
  std::promise<net::client_result> done;
  net::client_callbacks cb;
  cb.on_done = [&](net::client_result r) { done.set_value(std::move(r)); };
  client.send(std::move(req), std::move(cb));
  return done.get_future().get();
}

inline std::string field(const std::string& body, const char* key) {
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  std::string_view v;
  if (p.parse(body).get(doc) != simdjson::SUCCESS || doc[key].get(v) != simdjson::SUCCESS) {
    return {};
  }
  return std::string{v};
}

// A field of /proc/<pid>/status in KiB: VmRSS, RssAnon (heap) or RssFile
// (mapped files: here mostly LMDB pages the node has touched).
inline long status_kib(long pid, const std::string& field) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/status"};
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::stol(line.substr(field.size() + 1));
    }
  }
  return -1;
}

inline long rss_kib(long pid) {
  return status_kib(pid, "VmRSS");
}

/// Reads "--key value" pairs after the mode.
inline args parse_args(int argc, char** argv) {
  args a;
  for (int i = 2; i + 1 < argc; i += 2) {
    a.kv[std::string{argv[i]}.substr(2)] = argv[i + 1];
  }
  return a;
}

}  // namespace kowalski::bench
