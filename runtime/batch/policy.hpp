// Retry and rate-limit policy of the batch path: which failures are worth
// another attempt, how long to wait before it, and token buckets that keep
// calls to a backend within requests per second and tokens per minute.
// Plain C++ with no actor inside, so the rules are tested on their own.
#pragma once

#include "messages/errors.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <random>
#include <string_view>

namespace kowalski::batch {

using clock_type = std::chrono::steady_clock;

/// Milliseconds a Retry-After header asks for: delta-seconds (RFC 9110,
/// decimals tolerated) or an HTTP-date, relative to `now_unix_s`. Empty when
/// the value is neither; a date in the past gives 0.
std::optional<uint64_t> parse_retry_after(std::string_view value, int64_t now_unix_s);

/// True for failures another attempt may cure: connection errors, timeouts,
/// 429, 5xx, cut or garbled streams. Other 4xx (a bad request, an unknown
/// model) fail the same way every time and are not retried.
bool retryable(const error_view& e);

struct backoff_options {
  std::chrono::milliseconds base{250};
  std::chrono::milliseconds cap{30'000};
};

/// Wait before attempt `attempt + 1` after `attempt` failures: "full jitter"
/// (uniform in [0, min(cap, base * 2^(attempt-1))]), but never less than the
/// backend's Retry-After.
std::chrono::milliseconds retry_delay(uint32_t attempt, const backoff_options& opts,
                                      uint64_t retry_after_ms, std::mt19937_64& rng);

/// A token bucket: `rate` tokens per second, holding at most `burst`.
/// The level may go below zero when a cost is corrected upwards after the
/// fact; the bucket then refuses until it has refilled.
class token_bucket {
public:
  token_bucket() = default;
  token_bucket(double rate_per_s, double burst, clock_type::time_point now);

  bool limited() const { return rate_ > 0; }

  /// Zero when a call costing `cost` may go now (the level holds the cost,
  /// or the whole burst when the cost is larger), otherwise how long until
  /// it may. Unlimited buckets always grant.
  clock_type::duration wait(double cost, clock_type::time_point now);

  /// Takes `cost` tokens (call after wait() gave zero).
  void take(double cost, clock_type::time_point now);

  /// Adds `delta` tokens back (negative: charges more), up to the burst.
  void adjust(double delta, clock_type::time_point now);

  double level(clock_type::time_point now);

  double burst() const { return burst_; }

private:
  void refill(clock_type::time_point now);

  double rate_ = 0;
  double burst_ = 0;
  double level_ = 0;
  clock_type::time_point last_;
};

/// The limits of one backend: requests per second and tokens per minute,
/// either 0 for none.
struct rate_limits {
  double requests_per_s = 0;
  double tokens_per_min = 0;
};

class rate_limiter {
public:
  rate_limiter() = default;
  rate_limiter(rate_limits limits, clock_type::time_point now);

  /// Admits one call estimated at `tokens`; returns zero when admitted,
  /// otherwise the wait until it could be (nothing is taken then).
  /// `charged` is set to what was taken from the token bucket: at most its
  /// burst, so one call with a huge limit cannot block the rest for long.
  clock_type::duration admit(double tokens, clock_type::time_point now, double& charged);

  /// Corrects a call's charge once the backend has counted its tokens.
  void settle(double charged, double actual, clock_type::time_point now);

private:
  token_bucket requests_;
  token_bucket tokens_;
};

/// A cheap guess of a call's tokens before it runs: about four bytes per
/// token of prompt, plus the completion limit (or 256 when unset).
double estimate_tokens(std::size_t prompt_bytes, int32_t max_tokens);

}  // namespace kowalski::batch
