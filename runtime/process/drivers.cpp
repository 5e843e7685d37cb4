// The Python driver of REPL children (see drivers.hpp for the protocol).
#include "runtime/process/drivers.hpp"

namespace kowalski::process {

const char* python_driver() {
  return R"PY(
import builtins, json, os, resource, struct, sys, time, traceback

def _kowalski_main():
    rd = os.fdopen(3, "rb", buffering=0)
    wr = os.fdopen(4, "wb", buffering=0)
    os.set_inheritable(3, False)
    os.set_inheritable(4, False)

    def read_exact(n):
        parts = []
        while n:
            b = rd.read(n)
            if not b:
                raise EOFError
            parts.append(b)
            n -= len(b)
        return b"".join(parts)

    def read_frame():
        n = struct.unpack(">I", read_exact(4))[0]
        return json.loads(read_exact(n).decode("utf-8"))

    def write_frame(obj):
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")
        wr.write(struct.pack(">I", len(data)) + data)

    calls = [0]

    def ask(prompts, model):
        calls[0] += 1
        cid = calls[0]
        write_frame({"type": "llm", "id": cid, "prompts": prompts, "model": model})
        while True:
            msg = read_frame()
            if msg.get("type") == "llm_result" and msg.get("id") == cid:
                return msg.get("results") or []

    def llm_query(prompt, model=None):
        if not isinstance(prompt, str):
            return "Error: llm_query takes a string, got " + type(prompt).__name__
        if model is not None and not isinstance(model, str):
            return "Error: model must be a string or None"
        got = ask([prompt], model)
        return got[0] if got else "Error: no answer came back"

    def llm_query_batched(prompts, model=None):
        try:
            prompts = list(prompts)
        except TypeError:
            return ["Error: llm_query_batched takes a list of strings"]
        bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
        if bad or (model is not None and not isinstance(model, str)):
            return ["Error: prompt %d is not a string" % i if i in bad
                    else "Error: model must be a string or None" for i in range(len(prompts))]
        if not prompts:
            return []
        got = ask(prompts, model)
        return [got[i] if i < len(got) else "Error: no answer came back"
                for i in range(len(prompts))]

    def fresh_globals():
        return {"__name__": "__main__", "__builtins__": builtins,
                "llm_query": llm_query, "llm_query_batched": llm_query_batched}

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
        marker = b"\0KW:" + req["token"].encode() + b"\0"
        for fd in (1, 2):
            try:
                os.write(fd, marker)
            except OSError:
                pass
        write_frame({"type": "done", "id": req["id"], "ok": ok, "error": error,
                     "error_type": kind, "duration_us": spent_us})

_kowalski_main()
)PY";
}

}  // namespace kowalski::process
