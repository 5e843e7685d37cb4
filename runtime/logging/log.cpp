// Subsystem loggers.
#include "runtime/logging/log.hpp"

#include <mutex>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace kowalski::logging {

namespace {

std::mutex mtx;

std::shared_ptr<spdlog::sinks::sink> shared_sink() {
  static auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  return sink;
}

std::shared_ptr<spdlog::logger> make(const char* name) {
  auto log = std::make_shared<spdlog::logger>(name, shared_sink());
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  log->set_level(spdlog::get_level());
  spdlog::register_logger(log);
  return log;
}

}  // namespace

void init(const std::string& level) {
  std::lock_guard<std::mutex> guard{mtx};
  spdlog::set_level(spdlog::level::from_str(level));
  for (auto name : subsystems) {
    if (auto existing = spdlog::get(name)) {
      existing->set_level(spdlog::get_level());
    } else {
      make(name);
    }
  }
}

std::shared_ptr<spdlog::logger> get(const char* subsystem) {
  if (auto log = spdlog::get(subsystem)) {
    return log;
  }
  std::lock_guard<std::mutex> guard{mtx};
  if (auto log = spdlog::get(subsystem)) {
    return log;
  }
  return make(subsystem);
}

}  // namespace kowalski::logging
