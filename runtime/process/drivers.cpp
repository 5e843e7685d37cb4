// The Python driver of REPL children (see drivers.hpp for the protocol).
#include "runtime/process/drivers.hpp"

#include <string>

namespace kowalski::process {

namespace {

// The frame helpers every Python-written driver shares.
constexpr const char* python_frames = R"PY(
import json, os, struct, sys
_rd = os.fdopen(3, "rb", buffering=0)
_wr = os.fdopen(4, "wb", buffering=0)
os.set_inheritable(3, False)
os.set_inheritable(4, False)

def read_frame():
    def exact(n):
        parts = []
        while n:
            b = _rd.read(n)
            if not b:
                raise EOFError
            parts.append(b)
            n -= len(b)
        return b"".join(parts)
    n = struct.unpack(">I", exact(4))[0]
    return json.loads(exact(n).decode("utf-8"))

def write_frame(obj):
    data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")
    _wr.write(struct.pack(">I", len(data)) + data)

def mark(token):
    for fd in (1, 2):
        try:
            os.write(fd, b"\0KW:" + token.encode() + b"\0")
        except OSError:
            pass
)PY";

}  // namespace

const char* python_driver() {
  static const std::string text = std::string{python_frames} + R"PY(
import builtins, resource, threading, time, traceback

def _kowalski_main():
    calls = [0]
    # One question on the wire at a time: code that calls from threads waits.
    wire = threading.Lock()

    def ask(prompts, model, kind="llm", contexts=None):
        with wire:
            calls[0] += 1
            cid = calls[0]
            frame = {"type": "llm", "id": cid, "prompts": prompts, "model": model,
                     "kind": kind}
            if contexts is not None:
                frame["contexts"] = contexts
            write_frame(frame)
            while True:
                msg = read_frame()
                if msg.get("type") == "llm_result" and msg.get("id") == cid:
                    return msg.get("results") or []

    def checked(name, prompts, model, contexts):
        try:
            prompts = list(prompts)
        except TypeError:
            return None, ["Error: %s takes a list of strings" % name]
        if contexts is not None:
            try:
                contexts = list(contexts)
            except TypeError:
                return None, ["Error: contexts must be a list of strings or None"] * len(prompts)
            if len(contexts) != len(prompts):
                return None, ["Error: %d contexts for %d prompts" % (len(contexts), len(prompts))
                              ] * len(prompts)
        errors = []
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                errors.append("Error: prompt %d is not a string" % i)
            elif model is not None and not isinstance(model, str):
                errors.append("Error: model must be a string or None")
            elif contexts is not None and not isinstance(contexts[i], (str, type(None))):
                errors.append("Error: context %d is not a string" % i)
            else:
                errors.append(None)
        if any(errors):
            return None, [e or "Error: another prompt of the list was refused" for e in errors]
        if contexts is not None:
            contexts = ["" if c is None else c for c in contexts]
        return (prompts, contexts), None

    def batched(name, kind, prompts, model, contexts=None):
        ok, refused = checked(name, prompts, model, contexts)
        if refused is not None:
            return refused
        prompts, contexts = ok
        if not prompts:
            return []
        got = ask(prompts, model, kind, contexts)
        return [got[i] if i < len(got) else "Error: no answer came back"
                for i in range(len(prompts))]

    def single(name, kind, prompt, model, context=None):
        if not isinstance(prompt, str):
            return "Error: %s takes a string, got %s" % (name, type(prompt).__name__)
        got = batched(name, kind, [prompt], model, None if context is None else [context])
        return got[0]

    def llm_query(prompt, model=None):
        return single("llm_query", "llm", prompt, model)

    def llm_query_batched(prompts, model=None):
        return batched("llm_query_batched", "llm", prompts, model)

    # A child RLM run with its own REPL: `context` becomes its context and
    # `prompt` its question; without a context the prompt is both. Outside
    # an RLM run, or at its depth limit, this is llm_query.
    def rlm_query(prompt, context=None, model=None):
        return single("rlm_query", "rlm", prompt, model, context)

    def rlm_query_batched(prompts, contexts=None, model=None):
        return batched("rlm_query_batched", "rlm", prompts, model, contexts)

    def fresh_globals():
        return {"__name__": "__main__", "__builtins__": builtins,
                "llm_query": llm_query, "llm_query_batched": llm_query_batched,
                "rlm_query": rlm_query, "rlm_query_batched": rlm_query_batched}

    session = fresh_globals()
    while True:
        try:
            req = read_frame()
        except EOFError:
            return
        if req.get("type") != "exec":
            continue
        cpu = req.get("cpu_s") or 0
        if cpu:
            used = resource.getrusage(resource.RUSAGE_SELF)
            spent = used.ru_utime + used.ru_stime
            hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
            soft = int(spent + cpu) + 1
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            try:
                resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
            except (ValueError, OSError):
                pass
        scope = fresh_globals() if req.get("fresh") else session
        ok, error, kind = True, None, None
        start = time.perf_counter()
        try:
            exec(compile(req.get("code", ""), "<cell>", "exec"), scope)
        except SystemExit as e:
            ok, kind, error = False, "SystemExit", "SystemExit: %r" % (e.code,)
        except SyntaxError as e:
            ok, kind = False, "SyntaxError"
            error = "".join(traceback.format_exception_only(type(e), e))
        except BaseException as e:
            ok, kind = False, type(e).__name__
            error = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
        spent_us = int((time.perf_counter() - start) * 1e6)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        mark(req["token"])
        write_frame({"type": "done", "id": req["id"], "ok": ok, "error": error,
                     "error_type": kind, "duration_us": spent_us})

_kowalski_main()
)PY";
  return text.c_str();
}

const char* bash_driver() {
  static const std::string text = std::string{python_frames} + R"PY(
import subprocess, time
home = os.getcwd()  # the private directory; the shell may cd elsewhere
status_r, status_w = os.pipe()
# The shell writes each snippet's status on this descriptor (same number in it).
shell = subprocess.Popen(["/bin/bash", "--noprofile", "--norc"], stdin=subprocess.PIPE,
                         pass_fds=(status_w,), close_fds=True)
os.close(status_w)
status = os.fdopen(status_r, "rb", buffering=0)

def read_line():
    line = b""
    while not line.endswith(b"\n"):
        b = status.read(1)
        if not b:
            return None
        line += b
    return line

while True:
    try:
        req = read_frame()
    except EOFError:
        break
    if req.get("type") != "exec":
        continue
    token = req["token"]
    # The snippet runs from a file: input it reads cannot swallow the end
    # line, and an unterminated quote is a syntax error, not a hang.
    # Without a session it runs in a subshell, so it changes nothing.
    path = os.path.join(home, ".kowalski-snippet-%d.sh" % req["id"])
    with open(path, "w") as f:
        f.write(req.get("code", "") + "\n")
    run = "( source %s )" % path if req.get("fresh") else "source %s" % path
    end = ("%s </dev/null\n__kw_status=$?; rm -f %s; printf '\\0KW:%s\\0'; "
           "printf '\\0KW:%s\\0' >&2; printf '%%s\\n' \"$__kw_status\" >&%d\n"
           ) % (run, path, token, token, status_w)
    start = time.perf_counter()
    try:
        shell.stdin.write(end.encode())
        shell.stdin.flush()
    except BrokenPipeError:
        pass
    line = read_line()
    spent = int((time.perf_counter() - start) * 1e6)
    if line is None:
        code = shell.wait()
        mark(token)
        write_frame({"type": "done", "id": req["id"], "ok": False, "exit_status": code,
                     "error_type": "exit", "duration_us": spent, "restart": True,
                     "error": "bash exited with status %d; a fresh shell starts" % code})
        sys.exit(0)
    code = int(line.strip() or b"1")
    write_frame({"type": "done", "id": req["id"], "ok": code == 0, "exit_status": code,
                 "error_type": None if code == 0 else "exit", "duration_us": spent,
                 "error": None if code == 0 else "exit status %d" % code})
)PY";
  return text.c_str();
}

const char* oneshot_driver() {
  static const std::string text = std::string{python_frames} + R"PY(
import re, shutil, subprocess, tempfile, time

def java(code, mem_mb):
    m = re.search(r"public\s+(?:final\s+)?class\s+(\w+)", code)
    if "static void main" in code and m:
        name = m.group(1)
    else:
        name = "Main"
        code = ("public class Main {\n  public static void main(String[] args) "
                "throws Exception {\n" + code + "\n  }\n}\n")
    with open(name + ".java", "w") as f:
        f.write(code)
    heap = "-Xmx%dm" % mem_mb
    return [["/usr/bin/javac", "-J" + heap, "-d", ".", name + ".java"],
            ["/usr/bin/java", heap, "-XX:+UseSerialGC", "-cp", ".", name]]

def rust(code, mem_mb):
    if not re.search(r"\bfn\s+main\s*\(", code):
        code = "fn main() {\n" + code + "\n}\n"
    with open("main.rs", "w") as f:
        f.write(code)
    return [["/usr/bin/rustc", "-C", "opt-level=1", "-o", "program", "main.rs"], ["./program"]]

builders = {"java": java, "rust": rust}
while True:
    try:
        req = read_frame()
    except EOFError:
        break
    if req.get("type") != "exec":
        continue
    start = time.perf_counter()
    work = tempfile.mkdtemp(prefix="run-", dir=os.getcwd())
    ok, code, kind, error = True, 0, None, None
    try:
        os.chdir(work)
        steps = builders[req.get("language", "")](req.get("code", ""), req.get("mem_mb") or 256)
        for i, argv in enumerate(steps):
            code = subprocess.call(argv)
            if code != 0:
                ok = False
                kind = "compile" if i + 1 < len(steps) else "exit"
                error = ("compilation failed with status %d" if kind == "compile"
                         else "exit status %d") % code
                break
    except BaseException as e:
        ok, kind, error = False, type(e).__name__, str(e)
    finally:
        os.chdir("..")
        shutil.rmtree(work, ignore_errors=True)
    mark(req["token"])
    write_frame({"type": "done", "id": req["id"], "ok": ok, "exit_status": code,
                 "error_type": kind, "error": error,
                 "duration_us": int((time.perf_counter() - start) * 1e6)})
)PY";
  return text.c_str();
}

const char* node_driver() {
  return R"JS(
"use strict";
const fs = require("fs");
const vm = require("vm");
function exact(n) {
  const buf = Buffer.alloc(n);
  let got = 0;
  while (got < n) {
    let r;
    try {
      r = fs.readSync(3, buf, got, n - got, null);
    } catch (e) {
      if (e.code === "EAGAIN") continue;
      throw e;
    }
    if (r === 0) return null;
    got += r;
  }
  return buf;
}
function readFrame() {
  const head = exact(4);
  if (!head) return null;
  const body = exact(head.readUInt32BE(0));
  return body ? JSON.parse(body.toString("utf8")) : null;
}
function writeFrame(obj) {
  const body = Buffer.from(JSON.stringify(obj), "utf8");
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  fs.writeSync(4, Buffer.concat([head, body]));
}
const sandbox = { console, require, process: undefined, Buffer, setTimeout, setInterval,
                  clearTimeout, clearInterval };
const context = vm.createContext(sandbox);
for (;;) {
  const req = readFrame();
  if (!req) break;
  if (req.type !== "exec") continue;
  const scope = req.fresh ? vm.createContext({ console, require, Buffer }) : context;
  const start = process.hrtime.bigint();
  let ok = true, error = null, kind = null;
  try {
    vm.runInContext(req.code || "", scope, { filename: "cell.js" });
  } catch (e) {
    ok = false;
    kind = (e && e.constructor && e.constructor.name) || "Error";
    error = e && e.stack ? String(e.stack) : String(e);
    // The driver's own frames say nothing about the snippet.
    const cut = error.indexOf("\n    at Script.runInContext");
    if (cut >= 0) error = error.slice(0, cut);
  }
  const spent = Number((process.hrtime.bigint() - start) / 1000n);
  const marker = Buffer.from("\0KW:" + req.token + "\0", "latin1");
  for (const fd of [1, 2]) {
    try { fs.writeSync(fd, marker); } catch (e) {}
  }
  writeFrame({ type: "done", id: req.id, ok, error, error_type: kind, duration_us: spent });
}
)JS";
}

}  // namespace kowalski::process
