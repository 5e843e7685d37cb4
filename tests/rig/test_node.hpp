// A node for tests: settings for a temporary store and the scripted backend,
// started and stopped with the fixture that owns it.
#pragma once

#include "config/settings.hpp"
#include "runtime/node/node.hpp"

#include <boost/test/unit_test.hpp>

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>

namespace kowalski::testing {

struct test_node {
  std::filesystem::path dir;
  settings cfg;
  std::unique_ptr<node> n;

  /// Settings for a node on 127.0.0.1 (any port) backed by the Ollama
  /// protocol at `backend_url`, storing under a fresh temporary directory.
  test_node(const std::string& tag, const std::string& backend_url) {
    static int counter = 0;
    dir = std::filesystem::temp_directory_path()
          / ("kowalski-" + tag + "-" + std::to_string(::getpid()) + "-"
             + std::to_string(counter++));
    cfg.data_dir = dir.string();
    cfg.http_port = 0;
    cfg.log_level = "warn";
    cfg.scheduler_threads = 2;
    cfg.llm_provider = "ollama";
    cfg.ollama_url = backend_url;
    cfg.llm_model = "test-model";
    cfg.llm_workers = 4;
    cfg.store_map_size = 256 << 20;
    cfg.client_request_timeout = std::chrono::seconds(10);
#ifdef KOWALSKI_SOURCE_DIR
    cfg.rlm_system_prompt_file =
      std::string{KOWALSKI_SOURCE_DIR} + "/config/prompts/rlm_system.md";
#endif
  }

  ~test_node() {
    n.reset();
    std::filesystem::remove_all(dir);
  }

  /// Starts the node (again, after n.reset(), on the same store).
  void start() {
    std::string error;
    n = node::start(cfg, error);
    BOOST_REQUIRE_MESSAGE(n, error);
  }
};

}  // namespace kowalski::testing
