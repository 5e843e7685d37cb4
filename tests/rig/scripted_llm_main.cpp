// scripted-llm: the scripted LLM server as a program, for benchmarks and
// out-of-process clients; it is driven further through /_behaviour et al.
#include "tests/rig/scripted_llm.hpp"

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <optional>
#include <pthread.h>
#include <string>
#include <string_view>
#include <vector>

namespace {

constexpr const char* usage =
    "usage: scripted-llm [--port N] [--threads N] [--latency-ms N] [--models a,b]\n";

std::optional<unsigned long> parse_number(std::string_view text, unsigned long max) {
  if (text.empty() || text.find_first_not_of("0123456789") != std::string_view::npos) {
    return std::nullopt;
  }
  errno = 0;
  auto v = std::strtoul(std::string(text).c_str(), nullptr, 10);
  if (errno != 0 || v > max) {
    return std::nullopt;
  }
  return v;
}

std::vector<std::string> split_models(std::string_view list) {
  std::vector<std::string> out;
  while (!list.empty()) {
    auto comma = list.find(',');
    auto name = list.substr(0, comma);
    if (!name.empty()) {
      out.emplace_back(name);
    }
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  using kowalski::testing::behaviour;
  using kowalski::testing::scripted_llm;

  scripted_llm::options opts;
  behaviour initial;
  for (int i = 1; i < argc; ++i) {
    std::string_view flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      std::cout << usage;
      return 0;
    }
    if (i + 1 >= argc) {
      std::cerr << flag << " needs a value\n" << usage;
      return 2;
    }
    std::string_view value = argv[++i];
    std::optional<unsigned long> n;
    if (flag == "--port" && (n = parse_number(value, 65535))) {
      opts.port = static_cast<uint16_t>(*n);
    } else if (flag == "--threads" && (n = parse_number(value, 256)) && *n > 0) {
      opts.threads = static_cast<unsigned>(*n);
    } else if (flag == "--latency-ms" && (n = parse_number(value, 3'600'000))) {
      initial.latency = std::chrono::milliseconds(*n);
    } else if (flag == "--models" && !split_models(value).empty()) {
      opts.models = split_models(value);
    } else {
      std::cerr << "bad argument " << flag << " " << value << "\n" << usage;
      return 2;
    }
  }

  // Block the stop signals before the server starts its threads, so they
  // inherit the mask and sigwait below is the only place they arrive.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  try {
    scripted_llm server(opts);
    server.set_default(initial);
    std::cout << "listening port=" << server.port() << std::endl;

    int signal = 0;
    sigwait(&stop_signals, &signal);
    std::cerr << "stopping signal=" << signal << " requests=" << server.requests() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "scripted-llm failed: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
