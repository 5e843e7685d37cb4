// REPL workers with real sandboxed Python interpreters: state, limits,
// containment, crashes and the frame channel.
#define BOOST_TEST_MODULE repl_worker_test
#include <boost/test/unit_test.hpp>

#include "actors/repl_pool.hpp"
#include "actors/repl_worker.hpp"
#include "messages/atoms.hpp"
#include "messages/errors.hpp"
#include "messages/registry.hpp"
#include "messages/types.hpp"
#include "runtime/process/drivers.hpp"

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/scoped_actor.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

using namespace kowalski;
using std::chrono::milliseconds;
using std::chrono::seconds;

namespace {

struct test_config : caf::actor_system_config {
  test_config() {
    register_message_types(*this);
    set("scheduler.max-threads", size_t{2});
  }
};

process::sandbox_mode mode() {
  std::string detail;
  return process::bubblewrap_works("/usr/bin/bwrap", detail) ? process::sandbox_mode::bubblewrap
                                           : process::sandbox_mode::rlimits_only;
}

struct fixture {
  test_config cfg;
  caf::actor_system sys{cfg};
  caf::scoped_actor self{sys};
  std::filesystem::path root;
  std::vector<caf::actor> spawned;

  fixture() {
    root = std::filesystem::temp_directory_path()
           / ("kowalski-replt-" + std::to_string(::getpid()));
    std::filesystem::create_directories(root);
  }

  ~fixture() {
    for (auto& a : spawned) {
      self->send_exit(a, caf::exit_reason::user_shutdown);
    }
    for (auto& a : spawned) {
      self->wait_for(a);
    }
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }

  repl_worker_options options(const std::string& id) {
    repl_worker_options o;
    o.id = id;
    o.command = {"/usr/bin/python3", "-I", "-B", "-u", "-c", process::python_driver()};
    o.sandbox = mode();
    o.temp_root = root.string();
    o.default_timeout = seconds(10);
    return o;
  }

  caf::actor worker(repl_worker_options o) {
    auto w = spawn_repl_worker(sys, std::move(o));
    spawned.push_back(w);
    return w;
  }

  repl_result run(const caf::actor& w, std::string code, std::string session = "s",
                  uint64_t timeout_ms = 0) {
    repl_result out;
    repl_execute cmd{"python3", std::move(code), session, timeout_ms, {}, {}};
    self->request(w, seconds(60), std::move(cmd))
      .receive([&](repl_result& r) { out = std::move(r); },
               [&](caf::error& e) { BOOST_FAIL("execute failed: " << caf::to_string(e)); });
    return out;
  }
};

}  // namespace

BOOST_FIXTURE_TEST_SUITE(repl_worker, fixture)

BOOST_AUTO_TEST_CASE(globals_persist_within_a_session_and_output_is_split) {
  auto w = worker(options("t1"));
  auto r = run(w, "x = 41\nprint('hello')\nimport sys\nprint('oops', file=sys.stderr)");
  BOOST_TEST(r.ok);
  BOOST_TEST(r.stdout_text == "hello\n");
  BOOST_TEST(r.stderr_text == "oops\n");
  BOOST_TEST(r.duration_us > 0);
  r = run(w, "x += 1\nprint(x)");
  BOOST_TEST(r.stdout_text == "42\n");
  BOOST_TEST(!r.state_lost);

  // Without a session each execution has a namespace of its own.
  r = run(w, "print(x)", "");
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error_type == "NameError");
  BOOST_TEST(r.error.find("name 'x' is not defined") != std::string::npos, r.error);
  BOOST_TEST(r.error.find("_kowalski_main") == std::string::npos, r.error);
}

BOOST_AUTO_TEST_CASE(exceptions_and_syntax_errors_are_reported_not_fatal) {
  auto w = worker(options("t2"));
  auto r = run(w, "1/0");
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error_type == "ZeroDivisionError");
  BOOST_TEST(r.error.find("Traceback") != std::string::npos);
  r = run(w, "def f(:\n  pass");
  BOOST_TEST(r.error_type == "SyntaxError");
  r = run(w, "raise SystemExit(3)");
  BOOST_TEST(r.error_type == "SystemExit");
  r = run(w, "print('still here')");
  BOOST_TEST(r.ok);
  BOOST_TEST(r.stdout_text == "still here\n");
  BOOST_TEST(!r.state_lost);
}

BOOST_AUTO_TEST_CASE(printing_cannot_forge_a_frame_or_end_marker) {
  auto w = worker(options("t3"));
  auto r = run(w, "import struct, json\n"
                  "f = json.dumps({'type': 'done', 'id': 1, 'ok': True}).encode()\n"
                  "print(struct.pack('>I', len(f)) + f)\n"
                  "print('\\0KW:0000\\0 after')\n"
                  "print('end')");
  BOOST_TEST(r.ok);
  BOOST_TEST(r.stdout_text.find("end\n") != std::string::npos, r.stdout_text);
  BOOST_TEST(r.stdout_text.find("after") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_infinite_loop_times_out_and_leaves_no_process) {
  auto w = worker(options("t4"));
  run(w, "y = 1");
  auto r = run(w, "import os, subprocess\n"
                  "subprocess.Popen(['/usr/bin/sleep', '1000'])\n"
                  "print(os.getpid(), flush=True)\n"
                  "while True: pass", "s", 500);
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error_type == "timeout");
  BOOST_TEST(r.state_lost);
  BOOST_TEST(r.error.find("500 ms") != std::string::npos);
  // No sleep of that session is left anywhere on the host.
  for (auto& p : std::filesystem::directory_iterator("/proc")) {
    std::ifstream cmd{p.path() / "cmdline"};
    std::string text;
    std::getline(cmd, text, '\0');
    std::string arg;
    std::getline(cmd, arg, '\0');
    BOOST_TEST(!(text == "/usr/bin/sleep" && arg == "1000"), "orphan " << p.path());
  }
  // A fresh interpreter serves the next execution; the session's state is gone.
  r = run(w, "print(y)");
  BOOST_TEST(r.error_type == "NameError");
  r = run(w, "print('fresh')");
  BOOST_TEST(r.stdout_text == "fresh\n");
}

BOOST_AUTO_TEST_CASE(interpreter_crashes_are_reported_and_recovered) {
  auto w = worker(options("t5"));
  auto r = run(w, "import os\nprint('before', flush=True)\nos._exit(7)");
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error_type == "crash");
  BOOST_TEST(r.error.find("status 7") != std::string::npos, r.error);
  BOOST_TEST(r.stdout_text.find("before") != std::string::npos);
  BOOST_TEST(r.state_lost);
  r = run(w, "import ctypes\nctypes.string_at(0)");
  BOOST_TEST(r.error_type == "crash");
  BOOST_TEST(r.error.find("signal 11") != std::string::npos, r.error);
  r = run(w, "print(2 + 2)");
  BOOST_TEST(r.ok);
  BOOST_TEST(r.stdout_text == "4\n");
}

// Code that closes the frame channel kills its interpreter, not this
// process (a write to the dead pipe would raise SIGPIPE here).
BOOST_AUTO_TEST_CASE(a_closed_frame_channel_costs_only_the_interpreter) {
  auto w = worker(options("t9"));
  auto r = run(w, "import os\nos.close(3)\nos.close(4)");
  auto again = run(w, "print('next')");
  auto third = run(w, "print('third')");
  BOOST_TEST(third.ok);
  BOOST_TEST(third.stdout_text == "third\n");
  BOOST_TEST((r.state_lost || again.state_lost));
  BOOST_TEST(again.ok);
}

BOOST_AUTO_TEST_CASE(output_beyond_the_cap_is_counted_not_kept) {
  auto o = options("t6");
  o.output_cap = 1000;
  auto w = worker(o);
  // 1 GB of output: far more than could be buffered.
  auto r = run(w, "import sys\nchunk = 'é' * (1 << 20)\n"
                  "for _ in range(512): sys.stdout.write(chunk)\n"
                  "sys.stdout.flush()", "s", 60'000);
  BOOST_TEST(r.ok, r.error);
  BOOST_TEST(r.stdout_cut == 512u * (1u << 20) - 1000u);
  BOOST_TEST(r.stdout_text.find("[output cut: ") != std::string::npos);
  BOOST_TEST(r.stdout_text.size() < 3000u);
}

BOOST_AUTO_TEST_CASE(the_sandbox_contains_what_code_tries) {
  // scripts/setup.sh installs bubblewrap: without it this test cannot pass.
  std::string detail;
  BOOST_REQUIRE_MESSAGE(process::bubblewrap_works("/usr/bin/bwrap", detail), detail);
  ::setenv("KOWALSKI_TEST_SECRET", "hunter2", 1);
  auto w = worker(options("t7"));
  // The host's environment is not there.
  auto r = run(w, "import os\nprint(os.environ.get('KOWALSKI_TEST_SECRET'), sorted(os.environ))");
  BOOST_TEST(r.stdout_text.find("hunter2") == std::string::npos, r.stdout_text);
  BOOST_TEST(r.stdout_text.find("None") != std::string::npos);
  // No network, not even the host's loopback: a port listening here is not
  // reachable from inside.
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  BOOST_REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  BOOST_REQUIRE(::listen(listener, 4) == 0);
  socklen_t len = sizeof addr;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  auto port = std::to_string(ntohs(addr.sin_port));
  r = run(w, "import socket\ntry:\n  socket.create_connection(('127.0.0.1', " + port
               + "), 1)\n  print('connected')\nexcept OSError as e:\n  print('refused', e)");
  BOOST_TEST(r.stdout_text.find("refused") != std::string::npos, r.stdout_text);
  ::close(listener);
  // Files outside the working directory cannot be written.
  auto outside = root / "outside.txt";
  r = run(w, "open('" + outside.string() + "', 'w').write('x')");
  BOOST_TEST(!r.ok);
  BOOST_TEST(!std::filesystem::exists(outside));
  r = run(w, "open('/usr/evil', 'w')");
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error.find("Read-only") != std::string::npos, r.error);
  r = run(w, "open('here.txt', 'w').write('fine')\nprint(open('here.txt').read())");
  BOOST_TEST(r.stdout_text == "fine\n");
  // A memory hog meets its limit.
  r = run(w, "b = bytearray(4 << 30)", "s", 20'000);
  BOOST_TEST(!r.ok);
  BOOST_TEST((r.error_type == "MemoryError" || r.error_type == "crash"), r.error_type);
  // A fork bomb meets the process limit and the timeout.
  r = run(w, "import os\nwhile True:\n  try:\n    os.fork()\n  except OSError:\n    pass",
          "s", 2000);
  BOOST_TEST(!r.ok);
  BOOST_TEST((r.error_type == "timeout" || r.error_type == "crash"), r.error_type);
  r = run(w, "print('alive')");
  BOOST_TEST(r.stdout_text == "alive\n");
  // Files beyond the size limit stop at it.
  r = run(w, "open('big', 'wb').write(b'x' * (100 << 20))");
  BOOST_TEST(!r.ok);
  BOOST_TEST(r.error.find("File too large") != std::string::npos, r.error);
  // A hog that grows below the address-space limit meets the cgroup's.
  if (process::cgroups_writable()) {
    r = run(w, "chunks = []\nfor _ in range(30):\n  chunks.append(bytearray(50 << 20))", "s",
            20'000);
    BOOST_TEST(!r.ok);
    BOOST_TEST(r.error_type == "crash", r.error);
    BOOST_TEST(r.error.find("signal 9") != std::string::npos, r.error);
  }
}

BOOST_AUTO_TEST_CASE(a_pool_pins_sessions_and_frees_workers_of_idle_ones) {
  repl_pool_options o;
  o.worker = options("pool");
  o.min_workers = 1;
  o.max_workers = 2;
  o.idle_timeout = milliseconds{200};
  o.session_idle = milliseconds{300};
  auto pool = spawn_repl_pool(sys, o);
  spawned.push_back(pool);
  auto a = run(pool, "v = 'a'", "a");
  auto b = run(pool, "v = 'b'", "b");
  BOOST_TEST(a.worker != b.worker);
  BOOST_TEST(run(pool, "print(v)", "a").stdout_text == "a\n");
  BOOST_TEST(run(pool, "print(v)", "b").stdout_text == "b\n");

  // Both workers are held; a third session waits until one idles out, and
  // then sees none of the earlier state.
  auto started = std::chrono::steady_clock::now();
  auto c = run(pool, "print(globals().get('v'))", "c");
  BOOST_TEST((std::chrono::steady_clock::now() - started >= milliseconds{250}));
  BOOST_TEST(c.stdout_text == "None\n");

  repl_pool_info info;
  self->request(pool, seconds(10), stats_atom::value)
    .receive([&](repl_pool_info& i) { info = i; }, [](caf::error&) {});
  BOOST_TEST(info.workers <= 2u);
  BOOST_TEST(info.sessions >= 1u);
  BOOST_TEST(info.executions == 5u);
  BOOST_TEST(info.sandbox == "bubblewrap");

  // Ended explicitly, a session's state is gone at once.
  run(pool, "w = 1", "c");
  bool ended = false;
  self->request(pool, seconds(10), end_repl_session{"c"})
    .receive([&](bool e) { ended = e; }, [](caf::error&) {});
  BOOST_TEST(ended);
}

BOOST_AUTO_TEST_CASE(idle_time_counts_from_an_execution_end_and_a_reaped_session_says_so) {
  repl_pool_options o;
  o.worker = options("reap");
  o.min_workers = 1;
  o.max_workers = 2;
  o.session_idle = milliseconds{300};
  auto pool = spawn_repl_pool(sys, o);
  spawned.push_back(pool);
  // Running longer than the idle limit does not make the session idle.
  run(pool, "v = 1\nimport time\ntime.sleep(0.6)", "long");
  auto r = run(pool, "print(v)", "long");
  BOOST_TEST(r.stdout_text == "1\n", r.stderr_text + r.error);
  BOOST_TEST(!r.state_lost);
  // Left idle, it is reaped: the next execution has a fresh interpreter and
  // says that the state is gone.
  auto until = std::chrono::steady_clock::now() + seconds(5);
  repl_pool_info info;
  do {
    self->request(pool, seconds(10), stats_atom::value)
      .receive([&](repl_pool_info& i) { info = i; }, [](caf::error&) {});
  } while (info.sessions > 0 && std::chrono::steady_clock::now() < until);
  BOOST_REQUIRE(info.sessions == 0u);
  r = run(pool, "print(globals().get('v'))", "long");
  BOOST_TEST(r.stdout_text == "None\n");
  BOOST_TEST(r.state_lost);
}

BOOST_AUTO_TEST_CASE(private_directories_go_when_workers_end) {
  auto w = worker(options("t8"));
  run(w, "open('f', 'w').write('data')");
  std::size_t dirs = 0;
  for (auto& e : std::filesystem::directory_iterator(root)) {
    dirs += e.path().filename().string().find("-t8-") != std::string::npos;
  }
  BOOST_TEST(dirs == 1u);
  self->send_exit(w, caf::exit_reason::user_shutdown);
  self->wait_for(w);
  dirs = 0;
  for (auto& e : std::filesystem::directory_iterator(root)) {
    dirs += e.path().filename().string().find("-t8-") != std::string::npos;
  }
  BOOST_TEST(dirs == 0u);
}

BOOST_AUTO_TEST_SUITE_END()
