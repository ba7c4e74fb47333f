// The clock of lease deadlines. CLOCK_BOOTTIME keeps counting while the machine is suspended, unlike
// std::chrono::steady_clock (CLOCK_MONOTONIC): a holder resumed after the server expired its lease must see
// its deadline as passed, not as still ahead by the time it slept.
#pragma once

#include <time.h>

#include <chrono>
#include <cstdint>

#include "distrlock/options.hpp"

namespace distrlock::detail {

struct LeaseClock {
  using duration = std::chrono::nanoseconds;
  using rep = duration::rep;
  using period = duration::period;
  using time_point = std::chrono::time_point<LeaseClock>;
  static constexpr bool is_steady = true;

  static time_point now() noexcept {
    timespec ts{};
    ::clock_gettime(CLOCK_BOOTTIME, &ts);
    return time_point(std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec));
  }
  /// The call-deadline clock's time point at which `t` falls, as seen now (for OpContext deadlines).
  static Clock::time_point to_call_clock(time_point t) noexcept {
    return Clock::now() + std::chrono::duration_cast<Clock::duration>(t - now());
  }
};

/// How much faster than the server's the holder's clock may run: a lease said to have `left` is counted as valid
/// for left * (1 - allowance) only. 1000 ppm is twice the most NTP ever slews a clock.
inline constexpr double clock_rate_allowance = 0.001;

/// When a lease granted or extended at `sent_at` (sent, on the holder's clock) with `left` to live, by the server,
/// must be treated as over: the local estimate of its expiry, less the drift allowance and the safety margin.
inline LeaseClock::time_point stop_deadline(LeaseClock::time_point sent_at, milliseconds left,
                                            milliseconds safety_margin) noexcept {
  const auto valid = std::chrono::duration_cast<LeaseClock::duration>(left) -
                     std::chrono::duration_cast<LeaseClock::duration>(left * clock_rate_allowance);
  return sent_at + valid - std::chrono::duration_cast<LeaseClock::duration>(safety_margin);
}

}  // namespace distrlock::detail
