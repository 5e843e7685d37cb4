// Runs the kowalski binary as a real child process for tests: captured
// output, deadlines instead of sleeps, and kill -9 on demand.
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace kowalski::testing {

class child_process {
public:
  /// Starts `argv` with extra environment variables `env` (added to ours).
  child_process(std::vector<std::string> argv, std::map<std::string, std::string> env = {}) {
    int out[2], err[2];
    if (pipe(out) != 0 || pipe(err) != 0) {
      throw std::runtime_error("pipe failed");
    }
    pid_ = fork();
    if (pid_ < 0) {
      throw std::runtime_error("fork failed");
    }
    if (pid_ == 0) {
      dup2(out[1], STDOUT_FILENO);
      dup2(err[1], STDERR_FILENO);
      close(out[0]);
      close(err[0]);
      close(out[1]);
      close(err[1]);
      // The node blocks these for its signal thread; start from a clean mask.
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      for (auto& [k, v] : env) {
        setenv(k.c_str(), v.c_str(), 1);
      }
      std::vector<char*> args;
      for (auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
      }
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(out[1]);
    close(err[1]);
    out_ = out[0];
    err_ = err[0];
  }

  ~child_process() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) close(out_);
    if (err_ >= 0) close(err_);
  }

  pid_t pid() const { return pid_; }
  const std::string& out() const { return out_text_; }
  const std::string& err() const { return err_text_; }

  /// Reads output until stdout contains `needle`; false on timeout or EOF.
  bool wait_for_output(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out_text_.find(needle) == std::string::npos) {
      if (!pump(deadline)) {
        return out_text_.find(needle) != std::string::npos;
      }
    }
    return true;
  }

  /// Waits for the child to exit; returns its exit code, 128+signal if it
  /// was killed, or -1 (after killing it) if `timeout` passed.
  int wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (out_ >= 0 || err_ >= 0) {
      if (!pump(deadline)) {
        if (std::chrono::steady_clock::now() >= deadline) {
          kill(pid_, SIGKILL);
          waitpid(pid_, nullptr, 0);
          reaped_ = true;
          return -1;
        }
      }
    }
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    if (WIFSIGNALED(status)) {
      return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
  }

  void signal(int sig) { kill(pid_, sig); }

private:
  // Reads whatever is available before `deadline`; false on timeout or
  // when both pipes are closed.
  bool pump(std::chrono::steady_clock::time_point deadline) {
    if (out_ < 0 && err_ < 0) {
      return false;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
      deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      return false;
    }
    pollfd fds[2] = {{out_, POLLIN, 0}, {err_, POLLIN, 0}};
    int rc = poll(fds, 2, static_cast<int>(left.count()));
    if (rc <= 0) {
      return false;
    }
    read_into(fds[0], out_, out_text_);
    read_into(fds[1], err_, err_text_);
    return true;
  }

  static void read_into(const pollfd& p, int& fd, std::string& text) {
    if (fd < 0 || (p.revents & (POLLIN | POLLHUP | POLLERR)) == 0) {
      return;
    }
    char buf[4096];
    auto n = read(fd, buf, sizeof buf);
    if (n <= 0) {
      close(fd);
      fd = -1;
      return;
    }
    text.append(buf, static_cast<std::size_t>(n));
  }

  pid_t pid_ = -1;
  int out_ = -1;
  int err_ = -1;
  bool reaped_ = false;
  std::string out_text_;
  std::string err_text_;
};

}  // namespace kowalski::testing
