// One named spdlog logger per subsystem, all writing to stderr.
#pragma once

#include <memory>
#include <string>

#include <spdlog/logger.h>

namespace kowalski::logging {

/// Subsystems with their own logger.
inline constexpr const char* subsystems[] = {
  "node", "gateway", "store", "llm", "conversation", "supervisor", "config", "cli",
};

/// Creates and registers every subsystem logger at `level` ("info", ...).
/// Safe to call more than once; later calls only change the level.
void init(const std::string& level);

/// The logger of `subsystem`; created on first use if init() has not run.
std::shared_ptr<spdlog::logger> get(const char* subsystem);

}  // namespace kowalski::logging
