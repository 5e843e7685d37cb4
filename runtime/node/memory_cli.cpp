// kowalski memory: a thin client of /v1/memory on a running node.
#include "runtime/node/memory_cli.hpp"

#include "runtime/json/json.hpp"
#include "runtime/net/http_client.hpp"
#include "runtime/node/cli.hpp"
#include "runtime/node/node_client.hpp"

#include <simdjson.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <iostream>

namespace kowalski {

namespace {

void print_memory_usage() {
  std::cout
    << "usage: kowalski memory search [--tier T] [--conversation ID] [--limit N] TEXT\n"
       "       kowalski memory add [--tier T] [--conversation ID] TEXT\n"
       "       kowalski memory stats\n\n"
       "Searches, adds to or describes the memory tiers of a running node. Tiers:\n"
       "working, episodic, semantic (search: all by default; add: semantic).\n"
       "Search prints one line per item: tier, score, id, text.\n\n"
       "options:\n"
       "  --url URL        node to use (default $KOWALSKI_URL or http://127.0.0.1:8080)\n"
       "  --token TOKEN    bearer token (default $KOWALSKI_HTTP_TOKEN)\n"
       "Exit codes: 0 ok, 1 the node failed or could not be reached, 2 usage or a\n"
       "refused request.\n";
}

int fail_for(const net::client_result& res, const node_endpoint& node) {
  if (!res.error.empty()) {
    std::cerr << "kowalski memory: cannot reach the node at " << node.url << ": " << res.error
              << "\n";
    return exit_failure;
  }
  std::cerr << "kowalski memory: HTTP " << res.status << ": " << error_text(res.body) << "\n";
  return res.status >= 400 && res.status < 500 ? exit_usage : exit_failure;
}

}  // namespace

int memory_command(const std::vector<std::string>& argv) {
  for (auto& a : argv) {
    if (a == "--help" || a == "-h") {
      print_memory_usage();
      return exit_ok;
    }
  }
  if (argv.empty()) {
    print_memory_usage();
    return exit_usage;
  }
  node_endpoint node;
  if (auto v = std::getenv("KOWALSKI_URL")) {
    node.url = v;
  }
  if (auto v = std::getenv("KOWALSKI_HTTP_TOKEN")) {
    node.token = v;
  }
  auto verb = argv[0];
  std::string tier, conversation, text;
  std::string limit = "5";
  for (std::size_t i = 1; i < argv.size(); ++i) {
    auto& a = argv[i];
    bool takes = a == "--tier" || a == "--conversation" || a == "--limit" || a == "--url"
                 || a == "--token";
    if (takes) {
      if (i + 1 >= argv.size()) {
        std::cerr << "kowalski memory: option " << a << " needs a value\n";
        return exit_usage;
      }
      auto& v = argv[++i];
      (a == "--tier"           ? tier
       : a == "--conversation" ? conversation
       : a == "--limit"        ? limit
       : a == "--url"          ? node.url
                               : node.token) = v;
    } else if (a.rfind("--", 0) == 0) {
      std::cerr << "kowalski memory: unknown option " << a << "\n";
      return exit_usage;
    } else {
      text += (text.empty() ? "" : " ") + a;
    }
  }
  while (!node.url.empty() && node.url.back() == '/') {
    node.url.pop_back();
  }
  net::http_client client;
  if (verb == "stats") {
    auto res = call_node(client, node, "GET", "/v1/memory/stats");
    if (!res.error.empty() || res.status != 200) {
      return fail_for(res, node);
    }
    std::cout << res.body << "\n";
    return exit_ok;
  }
  if (text.empty()) {
    std::cerr << "kowalski memory: no text given\n";
    return exit_usage;
  }
  if (verb == "add") {
    json::writer w;
    w.begin_object().key("text").value(text);
    if (!conversation.empty()) {
      w.key("conversation").value(conversation);
    }
    w.end_object();
    auto res = call_node(client, node, "POST", "/v1/memory/" + (tier.empty() ? "semantic" : tier),
                         w.take());
    if (!res.error.empty() || res.status != 201) {
      return fail_for(res, node);
    }
    simdjson::dom::parser p;
    simdjson::dom::element doc;
    std::string_view id;
    if (p.parse(res.body).get(doc) == simdjson::SUCCESS && doc["id"].get(id) == simdjson::SUCCESS) {
      std::cout << id << "\n";
    }
    return exit_ok;
  }
  if (verb != "search") {
    std::cerr << "kowalski memory: unknown command " << verb << " (search, add or stats)\n";
    return exit_usage;
  }
  auto path = "/v1/memory/search?q=" + query_escape(text) + "&limit=" + query_escape(limit);
  if (!tier.empty()) {
    path += "&tier=" + query_escape(tier);
  }
  if (!conversation.empty()) {
    path += "&conversation=" + query_escape(conversation);
  }
  auto res = call_node(client, node, "GET", path);
  if (!res.error.empty() || res.status != 200) {
    return fail_for(res, node);
  }
  simdjson::dom::parser p;
  simdjson::dom::element doc;
  simdjson::dom::array data;
  if (p.parse(res.body).get(doc) != simdjson::SUCCESS
      || doc["data"].get(data) != simdjson::SUCCESS) {
    std::cerr << "kowalski memory: the node's answer is not what the API says\n";
    return exit_failure;
  }
  for (auto hit : data) {
    std::string_view t, id, body;
    double score = 0;
    if (hit["tier"].get(t) || hit["id"].get(id) || hit["text"].get(body)
        || hit["score"].get(score)) {
      continue;
    }
    std::printf("%-9.*s %.3f %.*s %.*s\n", static_cast<int>(t.size()), t.data(), score,
                static_cast<int>(id.size()), id.data(), static_cast<int>(body.size()),
                body.data());
  }
  return exit_ok;
}

}  // namespace kowalski
