// The in-process node of `--local` command-line runs.
#include "runtime/node/local_node.hpp"

#include "config/settings.hpp"
#include "runtime/node/cli.hpp"
#include "runtime/node/node.hpp"

#include <stdlib.h>

#include <filesystem>
#include <iostream>

namespace kowalski {

int with_local_node(const std::string& command, const std::vector<std::string>& node_flags,
                    const std::function<int(const node_endpoint&)>& fn) {
  // Node logs would break a progress bar; flags may ask for them.
  std::vector<std::string> flags{"--node.log_level=warn"};
  flags.insert(flags.end(), node_flags.begin(), node_flags.end());
  flags.push_back("--http.port=0");
  flags.push_back("--http.address=127.0.0.1");
  bool own_dir = true;
  for (auto& f : flags) {
    own_dir = own_dir && f.rfind("--data-dir", 0) != 0 && f.rfind("--node.data_dir", 0) != 0;
  }
  std::filesystem::path dir;
  if (own_dir) {
    auto tmpl = (std::filesystem::temp_directory_path() / "kowalski-local-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::cerr << command << ": cannot create a temporary directory\n";
      return exit_failure;
    }
    dir = tmpl;
    flags.push_back("--node.data_dir=" + dir.string());
  }
  auto loaded = load_settings(flags, process_environment());
  if (loaded.error) {
    std::cerr << command << ": " << loaded.error->message() << "\n";
    return exit_usage;
  }
  int rc;
  {
    std::string error;
    auto n = node::start(*loaded.value, error);
    if (!n) {
      std::cerr << command << ": " << error << "\n";
      rc = exit_failure;
    } else {
      rc = fn(node_endpoint{"http://127.0.0.1:" + std::to_string(n->http_port()),
                            loaded.value->http_token});
    }
  }
  if (own_dir) {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  return rc;
}

}  // namespace kowalski
