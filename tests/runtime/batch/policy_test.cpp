// Retry classification, backoff and token buckets of the batch path.
#define BOOST_TEST_MODULE policy
#include <boost/test/unit_test.hpp>

#include "runtime/batch/policy.hpp"

#include <random>

using namespace kowalski;
using namespace kowalski::batch;
using std::chrono::milliseconds;

namespace {

error_view failure(errc code, int32_t status = 0) {
  error_view e;
  e.ours = true;
  e.code = code;
  e.http_status = status;
  return e;
}

}  // namespace

BOOST_AUTO_TEST_CASE(retry_after_reads_seconds_and_http_dates) {
  BOOST_TEST(parse_retry_after("3", 0).value() == 3000u);
  BOOST_TEST(parse_retry_after(" 1.5 ", 0).value() == 1500u);
  BOOST_TEST(!parse_retry_after("soon", 0).has_value());
  BOOST_TEST(!parse_retry_after("", 0).has_value());
  BOOST_TEST(!parse_retry_after("-1", 0).has_value());
  // 2015-10-21 07:28:00 UTC is 1445412480.
  BOOST_TEST(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470).value() == 10000u);
  BOOST_TEST(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412490).value() == 0u);
  BOOST_TEST(parse_retry_after("1e9", 0).value() == 86'400'000u);
}

BOOST_AUTO_TEST_CASE(transient_failures_are_retried_and_request_errors_are_not) {
  BOOST_TEST(retryable(failure(errc::timeout)));
  BOOST_TEST(retryable(failure(errc::backend_unavailable)));
  BOOST_TEST(retryable(failure(errc::backend_protocol)));
  BOOST_TEST(retryable(failure(errc::overloaded, 429)));
  BOOST_TEST(retryable(failure(errc::backend_error, 500)));
  BOOST_TEST(retryable(failure(errc::backend_error, 503)));
  BOOST_TEST(retryable(failure(errc::backend_error, 0)));
  BOOST_TEST(!retryable(failure(errc::backend_error, 400)));
  BOOST_TEST(!retryable(failure(errc::backend_error, 401)));
  BOOST_TEST(!retryable(failure(errc::unknown_model, 404)));
  BOOST_TEST(!retryable(failure(errc::invalid_argument)));
  BOOST_TEST(!retryable(failure(errc::cancelled)));
}

BOOST_AUTO_TEST_CASE(backoff_uses_full_jitter_under_a_doubling_ceiling) {
  std::mt19937_64 rng{42};
  backoff_options opts{milliseconds{100}, milliseconds{1000}};
  for (uint32_t attempt = 1; attempt <= 8; ++attempt) {
    auto ceiling = std::min<int64_t>(1000, 100 << (attempt - 1));
    int64_t highest = 0;
    int64_t lowest = ceiling;
    for (int i = 0; i < 2000; ++i) {
      auto d = retry_delay(attempt, opts, 0, rng).count();
      BOOST_TEST(d >= 0);
      BOOST_TEST(d <= ceiling);
      highest = std::max(highest, d);
      lowest = std::min(lowest, d);
    }
    // Spread over the whole range, not bunched at the ceiling.
    BOOST_TEST(highest > ceiling * 8 / 10);
    BOOST_TEST(lowest < ceiling * 2 / 10);
  }
}

BOOST_AUTO_TEST_CASE(backoff_never_undercuts_retry_after) {
  std::mt19937_64 rng{7};
  backoff_options opts{milliseconds{10}, milliseconds{50}};
  for (int i = 0; i < 100; ++i) {
    BOOST_TEST(retry_delay(1, opts, 2500, rng).count() >= 2500);
  }
}

BOOST_AUTO_TEST_CASE(token_bucket_admits_at_its_rate) {
  auto t0 = clock_type::now();
  token_bucket b{10, 2, t0};  // 10 per second, burst 2
  BOOST_TEST((b.wait(1, t0) == clock_type::duration::zero()));
  b.take(1, t0);
  b.take(1, t0);
  auto w = b.wait(1, t0);
  BOOST_TEST(std::chrono::duration<double>(w).count() > 0.09);
  BOOST_TEST(std::chrono::duration<double>(w).count() < 0.11);
  BOOST_TEST((b.wait(1, t0 + milliseconds{100}) == clock_type::duration::zero()));

  // Counting admissions over simulated time gives the rate.
  token_bucket c{50, 5, t0};
  int admitted = 0;
  for (auto t = t0; t < t0 + std::chrono::seconds(10); t += milliseconds{1}) {
    while (c.wait(1, t) == clock_type::duration::zero()) {
      c.take(1, t);
      ++admitted;
    }
  }
  BOOST_TEST(admitted >= 500);
  BOOST_TEST(admitted <= 506);
}

BOOST_AUTO_TEST_CASE(rate_limiter_corrects_token_estimates) {
  auto t0 = clock_type::now();
  rate_limiter lim{rate_limits{0, 3000}, t0};  // 50 tokens/s, burst 100
  double charged = 0;
  BOOST_TEST((lim.admit(100, t0, charged) == clock_type::duration::zero()));
  BOOST_TEST(charged == 100.0);
  BOOST_TEST((lim.admit(10, t0, charged) > clock_type::duration::zero()));
  BOOST_TEST(charged == 0.0);
  // The call used only 20 of its 100: 80 come back.
  lim.settle(100, 20, t0);
  BOOST_TEST((lim.admit(50, t0, charged) == clock_type::duration::zero()));

  // A call estimated far above the burst is charged the burst, so it waits
  // for a full bucket and does not hold the bucket below zero for minutes.
  rate_limiter big{rate_limits{0, 3000}, t0};
  BOOST_TEST((big.admit(1e6, t0, charged) == clock_type::duration::zero()));
  BOOST_TEST(charged == 100.0);
  BOOST_TEST((big.admit(10, t0 + std::chrono::milliseconds{250}, charged)
              == clock_type::duration::zero()));

  // Unlimited limiters always admit.
  rate_limiter none{rate_limits{}, t0};
  BOOST_TEST((none.admit(1e9, t0, charged) == clock_type::duration::zero()));
}

BOOST_AUTO_TEST_CASE(token_estimates_grow_with_prompt_and_limit) {
  BOOST_TEST(estimate_tokens(400, 10) == 110.0);
  BOOST_TEST(estimate_tokens(0, -1) == 256.0);
}
