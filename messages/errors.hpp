// The kowalski error category: codes, and the field/message context they carry.
#pragma once

#include <cstdint>
#include <string>

#include <caf/error.hpp>

namespace kowalski {

/// Error codes of the kowalski category. Every error also carries the name
/// of the offending field (may be empty) and a sentence for people.
enum class errc : uint8_t {
  invalid_argument = 1,  ///< a request field is missing, empty or malformed
  not_found,             ///< an id that names nothing
  conflict,              ///< the request clashes with existing state
  payload_too_large,     ///< a body or value above its configured limit
  unknown_model,         ///< the backend does not serve the model
  backend_unavailable,   ///< the LLM backend could not be reached
  backend_error,         ///< the backend answered with an error status
  backend_protocol,      ///< the backend answered with something unparsable
  timeout,               ///< a deadline passed
  store_failure,         ///< an LMDB operation failed
  overloaded,            ///< a queue or limit is full; try again later
  cancelled,             ///< the caller or an operator cancelled the work
  restart_limit,         ///< a supervisor gave up after too many restarts
  internal,              ///< a bug: an invariant did not hold
  unavailable,           ///< the feature cannot run on this node (a missing toolchain)
};

/// Atom naming the category, as registered with every actor system.
caf::atom_value error_category_atom();

const char* to_string(errc code);

/// Builds an error of our category. `field` names the input at fault, if any.
caf::error make_error(errc code, std::string message, std::string field = {});

/// Builds an error about a backend's answer that also carries its HTTP
/// status (0 when there was no HTTP answer) and the wait it asked for with
/// Retry-After (0 when none), so retry policies can read them.
caf::error make_backend_error(errc code, std::string message, int32_t http_status,
                              uint64_t retry_after_ms, std::string field = {});

/// The parts of an error, whatever its category, in a form for HTTP replies.
struct error_view {
  bool ours = false;      ///< true when the category is kowalski's
  errc code = errc::internal;
  std::string field;
  std::string message;
  int32_t http_status = 0;      ///< a backend's HTTP status, when known
  uint64_t retry_after_ms = 0;  ///< a backend's Retry-After, when sent
};

/// Splits `err` into code, field and message. Errors of other categories
/// (CAF's request_timeout, for example) are mapped onto the closest code.
error_view describe(const caf::error& err);

/// HTTP status that an error of `code` maps to.
int http_status(errc code);

}  // namespace kowalski
