// Sandboxed child processes with a frame channel: fork/exec, limits,
// cgroups, and one I/O thread per child.
#include "runtime/process/repl_process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

namespace kowalski::process {

namespace {

constexpr const char* cgroup_root = "/sys/fs/cgroup";
constexpr const char* cgroup_controllers[] = {"memory", "pids"};

std::string errno_text(const char* what) {
  return std::string{what} + ": " + std::strerror(errno);
}

std::vector<std::string> sandbox_argv(const spawn_spec& s) {
  std::vector<std::string> a = {
    s.bubblewrap, "--unshare-all", "--new-session", "--die-with-parent", "--clearenv",
    "--cap-drop", "ALL", "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib",
    "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/bin", "/bin",
    "--symlink", "usr/sbin", "/sbin", "--proc", "/proc", "--dev", "/dev",
    "--size", std::to_string(s.tmp_bytes), "--tmpfs", "/tmp", "--bind", s.workdir, "/work",
    "--chdir", "/work"};
  // No user namespaces inside: they are the usual first step out of a sandbox.
  if (s.disable_userns) {
    a.insert(a.begin() + 2, {"--unshare-user", "--disable-userns"});
  }
  for (auto& path : s.read_only) {
    if (std::filesystem::exists(path)) {
      a.insert(a.end(), {"--ro-bind", path, path});
    }
  }
  for (auto& [k, v] : s.env) {
    a.insert(a.end(), {"--setenv", k, v});
  }
  a.push_back("--");
  a.insert(a.end(), s.command.begin(), s.command.end());
  return a;
}

std::vector<char*> c_strings(std::vector<std::string>& v) {
  std::vector<char*> out;
  for (auto& s : v) {
    out.push_back(s.data());
  }
  out.push_back(nullptr);
  return out;
}

bool write_file(const std::string& path, const std::string& text) {
  std::ofstream out{path};
  out << text;
  out.flush();
  return static_cast<bool>(out);
}

// Creates this child's cgroups and sets their limits; returns the
// directories made (empty when cgroups are not writable).
std::vector<std::string> make_cgroups(const spawn_spec& s) {
  std::vector<std::string> dirs;
  if (s.cgroup_name.empty() || !cgroups_writable()) {
    return dirs;
  }
  for (auto controller : cgroup_controllers) {
    auto dir = std::string{cgroup_root} + "/" + controller + "/kowalski/" + s.cgroup_name;
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    if (ec) {
      continue;
    }
    bool ok = true;
    if (std::string{controller} == "memory" && s.limits.cgroup_memory > 0) {
      ok = write_file(dir + "/memory.limit_in_bytes", std::to_string(s.limits.cgroup_memory));
      // Swap would let a hog outlive its limit.
      write_file(dir + "/memory.swappiness", "0");
    } else if (std::string{controller} == "pids" && s.limits.cgroup_pids > 0) {
      ok = write_file(dir + "/pids.max", std::to_string(s.limits.cgroup_pids));
    }
    if (ok) {
      dirs.push_back(dir);
    } else {
      ::rmdir(dir.c_str());
    }
  }
  return dirs;
}

void kill_cgroup_tasks(const std::string& dir) {
  std::ifstream in{dir + "/cgroup.procs"};
  for (pid_t p; in >> p;) {
    ::kill(p, SIGKILL);
  }
}

// Killed processes leave their cgroup when the kernel has finished with
// them; until then rmdir says EBUSY. The wait is bounded (about 200 ms).
void remove_cgroup_dir(const std::string& dir) {
  for (int i = 0; i < 100; ++i) {
    kill_cgroup_tasks(dir);
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) {
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

// Moves `fd` to a number of at least 10 so that dup2 onto 0-4 cannot clobber
// another source. Only async-signal-safe calls: it runs after fork.
int lift(int fd) {
  return fcntl(fd, F_DUPFD, 10);
}

struct pipe_pair {
  int r = -1;
  int w = -1;
};

bool make_pipe(pipe_pair& p) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    return false;
  }
  p.r = fds[0];
  p.w = fds[1];
  return true;
}

void close_fd(int& fd) {
  if (fd >= 0) {
    ::close(fd);
    fd = -1;
  }
}

void set_nonblocking(int fd) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

std::string frame_of(const std::string& json) {
  std::string out;
  out.reserve(json.size() + 4);
  auto n = static_cast<uint32_t>(json.size());
  out.push_back(static_cast<char>((n >> 24) & 0xff));
  out.push_back(static_cast<char>((n >> 16) & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  out.push_back(static_cast<char>(n & 0xff));
  out += json;
  return out;
}

}  // namespace

const char* to_string(sandbox_mode m) {
  return m == sandbox_mode::bubblewrap ? "bubblewrap" : "rlimits_only";
}

struct repl_process::io {
  pid_t pid = -1;
  int wake_r = -1;
  int wake_w = -1;
  int frame_in = -1;   // we write, the child reads fd 3
  int frame_out = -1;  // the child writes fd 4, we read
  int out = -1;
  int err = -1;
  process_events events;
  std::vector<std::string> cgroups;

  std::mutex mtx;
  std::deque<std::string> pending;  // encoded frames to the child
  std::size_t written = 0;          // of pending.front()
  std::atomic<bool> exited{false};
  std::mutex reap_mtx;  // kill by pid only while the pid is still ours
  std::thread thread;

  void wake() {
    char c = 1;
    [[maybe_unused]] auto n = ::write(wake_w, &c, 1);
  }

  void kill_tree() {
    {
      std::lock_guard<std::mutex> guard{reap_mtx};
      if (!exited.load()) {
        ::kill(-pid, SIGKILL);
        ::kill(pid, SIGKILL);
      }
    }
    for (auto& dir : cgroups) {
      kill_cgroup_tasks(dir);
    }
  }

  // Splits the frame stream; false when a frame is over the limit.
  bool take_frames(std::string& buf) {
    std::size_t pos = 0;
    while (buf.size() - pos >= 4) {
      auto b = reinterpret_cast<const unsigned char*>(buf.data() + pos);
      auto n = (std::size_t{b[0]} << 24) | (std::size_t{b[1]} << 16) | (std::size_t{b[2]} << 8)
               | std::size_t{b[3]};
      if (n > max_frame_bytes) {
        return false;
      }
      if (buf.size() - pos - 4 < n) {
        break;
      }
      events.on_frame(buf.substr(pos + 4, n));
      pos += 4 + n;
    }
    buf.erase(0, pos);
    return true;
  }

  void write_pending() {
    std::lock_guard<std::mutex> guard{mtx};
    while (!pending.empty() && frame_in >= 0) {
      auto& f = pending.front();
      auto n = ::write(frame_in, f.data() + written, f.size() - written);
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) {
          return;
        }
        // The child no longer reads: what it was sent is lost with it.
        pending.clear();
        close_fd(frame_in);
        return;
      }
      written += static_cast<std::size_t>(n);
      if (written == f.size()) {
        pending.pop_front();
        written = 0;
      }
    }
  }

  bool wants_write() {
    std::lock_guard<std::mutex> guard{mtx};
    return !pending.empty() && frame_in >= 0;
  }

  void run() {
    using clock_type = std::chrono::steady_clock;
    std::string frames;
    std::string reason;
    int status = 0;
    clock_type::time_point exited_at;
    char buf[64 * 1024];
    for (;;) {
      pollfd fds[5];
      int n = 0;
      fds[n++] = {wake_r, POLLIN, 0};
      int* readers[] = {&frame_out, &out, &err};
      for (auto* fd : readers) {
        if (*fd >= 0) {
          fds[n++] = {*fd, POLLIN, 0};
        }
      }
      bool writing = wants_write();
      if (writing) {
        fds[n++] = {frame_in, POLLOUT, 0};
      }
      ::poll(fds, static_cast<nfds_t>(n), 50);

      for (int i = 0; i < n; ++i) {
        if (fds[i].revents == 0) {
          continue;
        }
        auto fd = fds[i].fd;
        if (fd == wake_r) {
          [[maybe_unused]] auto r = ::read(wake_r, buf, sizeof buf);
          continue;
        }
        if (writing && fd == frame_in) {
          write_pending();
          continue;
        }
        auto got = ::read(fd, buf, sizeof buf);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
          continue;
        }
        if (got <= 0) {
          for (auto* r : readers) {
            if (*r == fd) {
              close_fd(*r);
            }
          }
          continue;
        }
        std::string_view data{buf, static_cast<std::size_t>(got)};
        if (fd == out) {
          events.on_stdout(data);
        } else if (fd == err) {
          events.on_stderr(data);
        } else {
          frames.append(data);
          if (!take_frames(frames)) {
            reason = "the child sent a frame over " + std::to_string(max_frame_bytes)
                     + " bytes";
            kill_tree();
            close_fd(frame_out);
          }
        }
      }

      if (!exited.load()) {
        // Look without reaping: until it is reaped the pid (and its group)
        // cannot be reused, so the leftovers can be killed by it safely.
        siginfo_t info{};
        if (::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0
            && info.si_pid == pid) {
          std::lock_guard<std::mutex> guard{reap_mtx};
          for (auto& dir : cgroups) {
            kill_cgroup_tasks(dir);
          }
          ::kill(-pid, SIGKILL);
          ::waitpid(pid, &status, 0);
          exited.store(true);
          exited_at = clock_type::now();
        }
      }
      bool drained = frame_out < 0 && out < 0 && err < 0;
      if (exited.load() && (drained || clock_type::now() - exited_at > std::chrono::seconds(1))) {
        break;
      }
    }
    close_fd(frame_out);
    close_fd(out);
    close_fd(err);
    {
      std::lock_guard<std::mutex> guard{mtx};
      close_fd(frame_in);
      pending.clear();
    }
    if (events.on_exit) {
      events.on_exit(status, reason);
    }
  }
};

std::unique_ptr<repl_process> repl_process::spawn(const spawn_spec& spec, process_events events,
                                                  std::string& error) {
  if (spec.command.empty()) {
    error = "no command to run";
    return nullptr;
  }
  // A child that dies with a frame on its way must not take this process
  // with it: a write to its closed pipe then fails with EPIPE instead.
  static std::once_flag no_sigpipe;
  std::call_once(no_sigpipe, [] { ::signal(SIGPIPE, SIG_IGN); });
  auto argv_strings = spec.mode == sandbox_mode::bubblewrap ? sandbox_argv(spec) : spec.command;
  auto argv = c_strings(argv_strings);
  std::vector<std::string> env_strings;
  if (spec.mode == sandbox_mode::rlimits_only) {
    for (auto& [k, v] : spec.env) {
      env_strings.push_back(k + "=" + v);
    }
  }
  auto envp = c_strings(env_strings);

  pipe_pair in, out, so, se;
  if (!make_pipe(in) || !make_pipe(out) || !make_pipe(so) || !make_pipe(se)) {
    error = errno_text("pipe");
    for (auto* p : {&in, &out, &so, &se}) {
      close_fd(p->r);
      close_fd(p->w);
    }
    return nullptr;
  }
  int null_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);

  std::unique_ptr<repl_process> self{new repl_process};
  self->cgroup_dirs_ = make_cgroups(spec);
  std::vector<std::string> procs;
  for (auto& dir : self->cgroup_dirs_) {
    procs.push_back(dir + "/cgroup.procs");
  }
  auto workdir = spec.workdir;
  auto limits = spec.limits;
  auto weak = spec.mode == sandbox_mode::rlimits_only;
  auto parent = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) {
    error = errno_text("fork");
    for (auto* p : {&in, &out, &so, &se}) {
      close_fd(p->r);
      close_fd(p->w);
    }
    close_fd(null_fd);
    for (auto& dir : self->cgroup_dirs_) {
      ::rmdir(dir.c_str());
    }
    return nullptr;
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec.
    ::setsid();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
      ::_exit(126);
    }
    for (auto& p : procs) {
      int fd = ::open(p.c_str(), O_WRONLY);
      if (fd >= 0) {
        [[maybe_unused]] auto w = ::write(fd, "0", 1);
        ::close(fd);
      }
    }
    int src[] = {lift(null_fd), lift(so.w), lift(se.w), lift(in.r), lift(out.w)};
    for (int target = 0; target < 5; ++target) {
      if (src[target] < 0 || ::dup2(src[target], target) < 0) {
        ::_exit(125);
      }
    }
    if (::close_range(5, ~0U, 0) != 0) {
      ::_exit(123);
    }
    // The node blocks and ignores signals the interpreter must have back.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGPIPE, SIG_DFL);
    auto limit = [](int resource, uint64_t value) {
      if (value > 0) {
        rlimit rl{value, value};
        ::setrlimit(resource, &rl);
      }
    };
    limit(RLIMIT_AS, limits.address_space);
    limit(RLIMIT_FSIZE, limits.file_size);
    limit(RLIMIT_NOFILE, limits.open_files);
    // RLIMIT_NPROC counts every process of the user, the node's threads
    // too, and binds nobody as root: the pids cgroup is the real limit.
    if (procs.size() < 2) {
      limit(RLIMIT_NPROC, limits.processes);
    }
    limit(RLIMIT_CPU, limits.cpu_seconds);
    limit(RLIMIT_CORE, 0);
    if (weak && ::chdir(workdir.c_str()) != 0) {
      ::_exit(124);
    }
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }

  close_fd(null_fd);
  close_fd(in.r);
  close_fd(out.w);
  close_fd(so.w);
  close_fd(se.w);
  pipe_pair wake;
  if (!make_pipe(wake)) {
    error = errno_text("pipe");
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    for (int fd : {in.w, out.r, so.r, se.r}) {
      ::close(fd);
    }
    return nullptr;
  }
  for (int fd : {in.w, out.r, so.r, se.r, wake.r, wake.w}) {
    set_nonblocking(fd);
  }

  self->pid_ = pid;
  self->io_ = std::make_unique<io>();
  auto& st = *self->io_;
  st.pid = pid;
  st.wake_r = wake.r;
  st.wake_w = wake.w;
  st.frame_in = in.w;
  st.frame_out = out.r;
  st.out = so.r;
  st.err = se.r;
  st.events = std::move(events);
  st.cgroups = self->cgroup_dirs_;
  st.thread = std::thread([&st] { st.run(); });
  return self;
}

repl_process::~repl_process() {
  if (!io_) {
    return;
  }
  io_->kill_tree();
  io_->wake();
  if (io_->thread.joinable()) {
    io_->thread.join();
  }
  close_fd(io_->wake_r);
  close_fd(io_->wake_w);
  for (auto& dir : cgroup_dirs_) {
    remove_cgroup_dir(dir);
  }
}

void repl_process::send_frame(std::string json) {
  {
    std::lock_guard<std::mutex> guard{io_->mtx};
    if (io_->frame_in < 0) {
      return;
    }
    io_->pending.push_back(frame_of(json));
  }
  io_->wake();
}

void repl_process::kill() {
  io_->kill_tree();
  io_->wake();
}

bool bubblewrap_works(const std::string& bwrap, std::string& detail) {
  if (::access(bwrap.c_str(), X_OK) != 0) {
    detail = bwrap + " is not installed (Debian package bubblewrap)";
    return false;
  }
  // A trial sandbox: it must start /usr/bin/true with every namespace unshared.
  auto dir = std::filesystem::temp_directory_path() / ("kowalski-probe-"
                                                       + std::to_string(::getpid()));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  spawn_spec spec;
  spec.bubblewrap = bwrap;
  spec.command = {"/usr/bin/true"};
  spec.workdir = dir.string();
  auto argv_strings = sandbox_argv(spec);
  auto argv = c_strings(argv_strings);
  std::vector<std::string> none;
  auto envp = c_strings(none);
  pipe_pair errp;
  if (!make_pipe(errp)) {
    detail = errno_text("pipe");
    return false;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    detail = errno_text("fork");
    close_fd(errp.r);
    close_fd(errp.w);
    return false;
  }
  if (pid == 0) {
    ::dup2(errp.w, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  close_fd(errp.w);
  std::string err;
  char buf[512];
  for (ssize_t n; (n = ::read(errp.r, buf, sizeof buf)) > 0;) {
    err.append(buf, static_cast<std::size_t>(n));
  }
  close_fd(errp.r);
  int status = 0;
  ::waitpid(pid, &status, 0);
  std::filesystem::remove_all(dir, ec);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    detail = "bubblewrap cannot build a sandbox here: "
             + (err.empty() ? std::string{"exit status "} + std::to_string(status) : err);
    while (!detail.empty() && detail.back() == '\n') {
      detail.pop_back();
    }
    return false;
  }
  detail = "bubblewrap";
  return true;
}

bool cgroups_writable() {
  for (auto controller : cgroup_controllers) {
    auto dir = std::string{cgroup_root} + "/" + controller;
    if (::access(dir.c_str(), W_OK) != 0
        || !std::filesystem::exists(dir + "/cgroup.procs")) {
      return false;
    }
  }
  return true;
}

void sweep_leftovers(const std::string& temp_root) {
  auto alive = [](const std::string& name, std::size_t from) {
    auto pid = std::strtol(name.c_str() + from, nullptr, 10);
    return pid > 0 && (::kill(static_cast<pid_t>(pid), 0) == 0 || errno == EPERM);
  };
  std::error_code ec;
  const std::string prefix = "kowalski-repl-";
  for (auto& e : std::filesystem::directory_iterator(temp_root, ec)) {
    auto name = e.path().filename().string();
    if (e.is_directory() && name.rfind(prefix, 0) == 0 && !alive(name, prefix.size())) {
      std::filesystem::remove_all(e.path(), ec);
    }
  }
  for (auto controller : cgroup_controllers) {
    auto dir = std::string{cgroup_root} + "/" + controller + "/kowalski";
    for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
      auto name = e.path().filename().string();
      if (e.is_directory() && !name.empty() && std::isdigit(name[0]) && !alive(name, 0)) {
        remove_cgroup_dir(e.path().string());
      }
    }
  }
}

void remove_cgroups(const std::string& name) {
  for (auto controller : cgroup_controllers) {
    auto dir = std::string{cgroup_root} + "/" + controller + "/kowalski/" + name;
    if (std::filesystem::exists(dir)) {
      remove_cgroup_dir(dir);
    }
  }
}

}  // namespace kowalski::process
