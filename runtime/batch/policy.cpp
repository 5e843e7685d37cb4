// Retry and rate-limit policy of the batch path.
#include "runtime/batch/policy.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <ctime>
#include <string>

namespace kowalski::batch {

std::optional<uint64_t> parse_retry_after(std::string_view value, int64_t now_unix_s) {
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.front()))) {
    value.remove_prefix(1);
  }
  while (!value.empty() && std::isspace(static_cast<unsigned char>(value.back()))) {
    value.remove_suffix(1);
  }
  if (value.empty()) {
    return std::nullopt;
  }
  if (std::isdigit(static_cast<unsigned char>(value.front()))) {
    std::string text{value};
    char* end = nullptr;
    double seconds = std::strtod(text.c_str(), &end);
    if (*end != '\0' || !std::isfinite(seconds) || seconds < 0) {
      return std::nullopt;
    }
    // A day is more than any backend means; it also keeps the product finite.
    seconds = std::min(seconds, 86'400.0);
    return static_cast<uint64_t>(seconds * 1000.0);
  }
  // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
  std::tm tm{};
  std::string text{value};
  auto end = strptime(text.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  if (end == nullptr || *end != '\0') {
    return std::nullopt;
  }
  auto at = static_cast<int64_t>(timegm(&tm));
  return at <= now_unix_s ? 0 : static_cast<uint64_t>(at - now_unix_s) * 1000;
}

bool retryable(const error_view& e) {
  switch (e.code) {
    case errc::timeout:
    case errc::backend_unavailable:
    case errc::backend_protocol:
    case errc::overloaded:
      return true;
    case errc::backend_error:
      // No status: the worker stopped mid-call or the stream carried an
      // error line; both are the server's trouble, not the request's.
      return e.http_status == 0 || e.http_status == 429 || e.http_status >= 500;
    default:
      return false;
  }
}

std::chrono::milliseconds retry_delay(uint32_t attempt, const backoff_options& opts,
                                      uint64_t retry_after_ms, std::mt19937_64& rng) {
  using std::chrono::milliseconds;
  auto exponent = std::min<uint32_t>(attempt > 0 ? attempt - 1 : 0, 30);
  double ceiling = std::min<double>(static_cast<double>(opts.cap.count()),
                                    static_cast<double>(opts.base.count())
                                      * std::ldexp(1.0, static_cast<int>(exponent)));
  std::uniform_real_distribution<double> pick{0.0, ceiling};
  auto jittered = milliseconds{static_cast<int64_t>(pick(rng))};
  return std::max(jittered, milliseconds{static_cast<int64_t>(retry_after_ms)});
}

token_bucket::token_bucket(double rate_per_s, double burst, clock_type::time_point now)
  : rate_(rate_per_s), burst_(std::max(burst, 1.0)), level_(burst_), last_(now) {
}

void token_bucket::refill(clock_type::time_point now) {
  if (now <= last_) {
    return;
  }
  double seconds = std::chrono::duration<double>(now - last_).count();
  level_ = std::min(burst_, level_ + seconds * rate_);
  last_ = now;
}

clock_type::duration token_bucket::wait(double cost, clock_type::time_point now) {
  if (!limited()) {
    return clock_type::duration::zero();
  }
  refill(now);
  double need = std::min(cost, burst_);
  if (level_ >= need) {
    return clock_type::duration::zero();
  }
  auto seconds = (need - level_) / rate_;
  // Round up to a whole microsecond so the wake-up finds the tokens there.
  auto us = static_cast<int64_t>(std::ceil(seconds * 1e6)) + 1;
  return std::chrono::duration_cast<clock_type::duration>(std::chrono::microseconds{us});
}

void token_bucket::take(double cost, clock_type::time_point now) {
  if (!limited()) {
    return;
  }
  refill(now);
  level_ -= cost;
}

void token_bucket::adjust(double delta, clock_type::time_point now) {
  if (!limited()) {
    return;
  }
  refill(now);
  level_ = std::min(burst_, level_ + delta);
}

double token_bucket::level(clock_type::time_point now) {
  refill(now);
  return level_;
}

rate_limiter::rate_limiter(rate_limits limits, clock_type::time_point now) {
  if (limits.requests_per_s > 0) {
    // A tenth of a second's worth of burst: enough to fill idle workers at
    // once, small enough that a run of a few seconds stays near the rate.
    requests_ = token_bucket{limits.requests_per_s, limits.requests_per_s / 10, now};
  }
  if (limits.tokens_per_min > 0) {
    // Two seconds' worth: calls cost hundreds of tokens each, and a few
    // must fit in a burst; over a run of many seconds the rate holds.
    double per_s = limits.tokens_per_min / 60;
    tokens_ = token_bucket{per_s, per_s * 2, now};
  }
}

clock_type::duration rate_limiter::admit(double tokens, clock_type::time_point now,
                                         double& charged) {
  charged = tokens_.limited() ? std::min(tokens, tokens_.burst()) : tokens;
  auto wait = std::max(requests_.wait(1, now), tokens_.wait(charged, now));
  if (wait > clock_type::duration::zero()) {
    charged = 0;
    return wait;
  }
  requests_.take(1, now);
  tokens_.take(charged, now);
  return wait;
}

void rate_limiter::settle(double charged, double actual, clock_type::time_point now) {
  tokens_.adjust(charged - actual, now);
}

double estimate_tokens(std::size_t prompt_bytes, int32_t max_tokens) {
  return static_cast<double>(prompt_bytes) / 4.0 + (max_tokens > 0 ? max_tokens : 256);
}

}  // namespace kowalski::batch
