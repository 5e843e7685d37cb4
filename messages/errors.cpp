// The kowalski error category.
#include "messages/errors.hpp"

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace kowalski {

caf::atom_value error_category_atom() {
  return caf::atom("kowalski");
}

const char* to_string(errc code) {
  switch (code) {
    case errc::invalid_argument: return "invalid_argument";
    case errc::not_found: return "not_found";
    case errc::conflict: return "conflict";
    case errc::payload_too_large: return "payload_too_large";
    case errc::unknown_model: return "unknown_model";
    case errc::backend_unavailable: return "backend_unavailable";
    case errc::backend_error: return "backend_error";
    case errc::backend_protocol: return "backend_protocol";
    case errc::timeout: return "timeout";
    case errc::store_failure: return "store_failure";
    case errc::overloaded: return "overloaded";
    case errc::cancelled: return "cancelled";
    case errc::restart_limit: return "restart_limit";
    case errc::internal: return "internal";
    case errc::unavailable: return "unavailable";
  }
  return "internal";
}

caf::error make_error(errc code, std::string message, std::string field) {
  return caf::error{static_cast<uint8_t>(code), error_category_atom(),
                    caf::make_message(std::move(field), std::move(message))};
}

caf::error make_backend_error(errc code, std::string message, int32_t http_status,
                              uint64_t retry_after_ms, std::string field) {
  return caf::error{static_cast<uint8_t>(code), error_category_atom(),
                    caf::make_message(std::move(field), std::move(message), http_status,
                                      retry_after_ms)};
}

error_view describe(const caf::error& err) {
  error_view out;
  if (err.category() == error_category_atom()) {
    out.ours = true;
    out.code = static_cast<errc>(err.code());
    auto& ctx = err.context();
    if (ctx.match_elements<std::string, std::string>()) {
      out.field = ctx.get_as<std::string>(0);
      out.message = ctx.get_as<std::string>(1);
    } else if (ctx.match_elements<std::string, std::string, int32_t, uint64_t>()) {
      out.field = ctx.get_as<std::string>(0);
      out.message = ctx.get_as<std::string>(1);
      out.http_status = ctx.get_as<int32_t>(2);
      out.retry_after_ms = ctx.get_as<uint64_t>(3);
    }
    return out;
  }

  // Errors raised by CAF itself: timeouts and dead peers are the common ones.
  if (err.category() == caf::atom("system")) {
    auto code = static_cast<caf::sec>(err.code());
    if (code == caf::sec::request_timeout) {
      out.code = errc::timeout;
      out.message = "the request timed out inside the node";
      return out;
    }
    if (code == caf::sec::request_receiver_down) {
      // Seen while a supervisor restarts the actor: worth a retry.
      out.code = errc::overloaded;
      out.message = "the actor serving the request stopped before answering; retry";
      return out;
    }
  }
  out.code = errc::internal;
  out.message = caf::to_string(err);
  return out;
}

int http_status(errc code) {
  switch (code) {
    case errc::invalid_argument: return 400;
    case errc::not_found: return 404;
    case errc::conflict: return 409;
    case errc::payload_too_large: return 413;
    case errc::unknown_model: return 400;
    case errc::backend_unavailable: return 502;
    case errc::backend_error: return 502;
    case errc::backend_protocol: return 502;
    case errc::timeout: return 504;
    case errc::store_failure: return 500;
    case errc::overloaded: return 503;
    case errc::cancelled: return 499;
    case errc::restart_limit: return 503;
    case errc::internal: return 500;
    case errc::unavailable: return 503;
  }
  return 500;
}

}  // namespace kowalski
