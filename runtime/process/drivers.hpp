// The programs that run inside REPL children and speak the frame protocol.
#pragma once

namespace kowalski::process {

/// Python 3 driver, run as `python3 -I -B -c <driver>`. Frames (4-byte
/// big-endian length, then UTF-8 JSON) arrive on fd 3 and leave on fd 4:
///
/// - in  {"type":"exec","id":N,"code":"...","token":"hex","cpu_s":S,"fresh":bool}
///   runs the code in the interpreter's globals (a new namespace when fresh),
///   then writes "\0KW:<token>\0" to stdout and to stderr and answers
///   out {"type":"done","id":N,"ok":bool,"error":str|null,"error_type":str|null,
///        "duration_us":N}.
/// - out {"type":"llm","id":K,"prompts":[...],"model":str|null} from
///   llm_query / llm_query_batched, answered with
///   in  {"type":"llm_result","id":K,"results":[str, ...]}.
///
/// Printing cannot forge a frame: frames travel on their own descriptors.
/// Limitation: code that goes looking (os.write(4, ...), or the driver's
/// frame through sys._getframe) can still write frames or learn the end
/// marker; it runs in the same process as the driver. The sandbox, not the
/// protocol, is what contains such code.
const char* python_driver();

/// Node.js driver, run as `node -e <driver>`: the same exec/done frames;
/// code runs in one vm context per worker (a new one when fresh), so
/// declarations persist within a session. Limitation: no llm_query here
/// (Python only), and promises still pending when a snippet returns finish
/// during a later one.
const char* node_driver();

/// A Python driver (`python3 -I -B -c <driver>`) feeding a persistent
/// `bash --noprofile --norc`: variables, functions and the working directory
/// persist; done carries the snippet's exit status. `exit` ends the shell
/// and a fresh one is started.
const char* bash_driver();

/// A Python driver that compiles and runs each snippet once in a fresh
/// directory: exec carries "language" (java or rust) and "mem_mb"; done
/// carries the exit status, error_type "compile" when compilation failed.
const char* oneshot_driver();

}  // namespace kowalski::process
