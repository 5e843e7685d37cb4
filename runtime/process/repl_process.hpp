// A sandboxed child process speaking length-prefixed JSON frames on its own
// pipes (fd 3 in, fd 4 out), with stdout and stderr captured apart. No CAF
// inside: the owner gets events on the process's I/O thread.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kowalski::process {

/// How a child is contained. bubblewrap: every namespace unshared, no
/// network, read-only system directories, a private /tmp and working
/// directory, nothing else of the host. rlimits_only: resource limits, its
/// own session and working directory, a scrubbed environment, but the host's
/// file system and network stay visible (the weaker mode configuration must
/// allow explicitly): the child can read what the node's user can, the
/// node's environment (/proc/<ppid>/environ) included, and a process that
/// leaves the session escapes the kill.
enum class sandbox_mode { bubblewrap, rlimits_only };

const char* to_string(sandbox_mode m);

struct resource_limits {
  uint64_t address_space = uint64_t{2} << 30;  ///< RLIMIT_AS bytes; 0 = none
  uint64_t file_size = uint64_t{64} << 20;     ///< RLIMIT_FSIZE bytes
  uint64_t open_files = 256;                   ///< RLIMIT_NOFILE
  uint64_t processes = 64;                     ///< RLIMIT_NPROC (not enforced for root)
  uint64_t cpu_seconds = 3600;                 ///< RLIMIT_CPU over the child's life
  uint64_t cgroup_memory = uint64_t{512} << 20;  ///< memory cgroup limit; 0 = none
  uint64_t cgroup_pids = 64;                   ///< pids cgroup limit; 0 = none
};

struct spawn_spec {
  std::string bubblewrap = "/usr/bin/bwrap";
  /// The command as the sandbox sees it (absolute paths under /usr).
  std::vector<std::string> command;
  /// The whole environment of the child; nothing of the host's is passed.
  std::vector<std::pair<std::string, std::string>> env;
  /// Host directory that becomes the child's working directory (/work in
  /// the sandbox). It must exist.
  std::string workdir;
  sandbox_mode mode = sandbox_mode::bubblewrap;
  resource_limits limits;
  /// Name of this child's cgroups (under kowalski/), unique per process.
  std::string cgroup_name;
  uint64_t tmp_bytes = uint64_t{64} << 20;  ///< size of the sandbox's private /tmp
  bool disable_userns = true;  ///< no user namespaces inside the sandbox
  /// Host paths the sandbox shows read-only at the same place (for example
  /// /etc/alternatives, which Debian's java and javac go through).
  std::vector<std::string> read_only;
};

/// Called on the process's I/O thread; they must not block.
struct process_events {
  std::function<void(std::string_view)> on_stdout;
  std::function<void(std::string_view)> on_stderr;
  std::function<void(std::string frame)> on_frame;
  /// Once, after the child is gone and its output read to the end: the
  /// wait status, and a reason when the frame channel broke.
  std::function<void(int wait_status, std::string reason)> on_exit;
};

/// The largest frame accepted from a child.
inline constexpr std::size_t max_frame_bytes = std::size_t{16} << 20;

class repl_process {
public:
  /// Starts the child. Returns nullptr with `error` set when it cannot.
  static std::unique_ptr<repl_process> spawn(const spawn_spec& spec, process_events events,
                                             std::string& error);

  /// Kills the child and everything it started, and waits for the I/O
  /// thread; removes the cgroups. on_exit has run when this returns.
  ~repl_process();

  repl_process(const repl_process&) = delete;
  repl_process& operator=(const repl_process&) = delete;

  /// Queues a frame to the child (thread-safe; never blocks on the pipe).
  void send_frame(std::string json);

  /// Kills the child's whole tree at once (SIGKILL); on_exit follows.
  void kill();

  pid_t pid() const { return pid_; }

  /// Whether cgroup limits could be applied to this child.
  bool in_cgroup() const { return !cgroup_dirs_.empty(); }

  struct io;  // the I/O thread's state, in the .cpp

private:
  repl_process() = default;

  pid_t pid_ = -1;
  std::vector<std::string> cgroup_dirs_;
  std::unique_ptr<io> io_;
};

/// Checks that bubblewrap (at `bwrap`) is installed and can build a sandbox
/// here; on failure returns false with the reason in `detail`.
bool bubblewrap_works(const std::string& bwrap, std::string& detail);

/// Removes the private directories under `temp_root` and the cgroups that
/// belong to nodes no longer running (a node killed with SIGKILL cannot
/// clean up after itself). Names start with the owning node's pid.
/// Limitation: liveness is judged by pid alone, so a dead node whose pid
/// was reused (a container restarted with the same pid) is not swept, and
/// nodes in other pid namespaces sharing the cgroup tree look dead.
void sweep_leftovers(const std::string& temp_root);

/// Whether the memory and pids cgroup (v1) hierarchies are writable.
bool cgroups_writable();

/// Kills every process left in the cgroups named `name` and removes them;
/// also used at start to clear what a killed node left behind.
void remove_cgroups(const std::string& name);

}  // namespace kowalski::process
