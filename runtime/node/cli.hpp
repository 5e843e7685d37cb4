// The kowalski command line: serve, chat, version, help.
#pragma once

namespace kowalski {

/// Exit codes of every subcommand.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failure = 1;  ///< the work failed at run time
inline constexpr int exit_usage = 2;    ///< bad arguments or configuration

/// Runs the subcommand named in argv[1]; returns the process exit code.
int run_cli(int argc, char** argv);

}  // namespace kowalski
