// Internal state shared by Manager, Lock and Lease. Not part of the public API.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "core/backend.hpp"
#include "core/thread_annotations.hpp"
#include "distrlock/error.hpp"
#include "distrlock/options.hpp"

namespace distrlock::detail {

/// The native error text of the last failed backend call on this thread, for exception messages. Backends
/// set it; the core reads it right after the call returns, on the same thread.
void set_last_detail(std::string detail);
std::string take_last_detail();

/// Whether the last failed backend call on this thread is known to have sent nothing to the database (no
/// connection could be had, or the request never left): its outcome is then known, nothing changed. Backends
/// set it where they know; the core clears it before a call and reads it right after, on the same thread.
void set_nothing_sent(bool nothing_sent) noexcept;
bool nothing_sent() noexcept;

/// Sets `ec` to `e` with `detail` as its native text; returns ec.
std::error_code fail(std::error_code& ec, errc e, std::string detail);
/// Throws distrlock::error for `ec`, with the operation `what` and the last detail in its message.
[[noreturn]] void throw_error(std::error_code ec, const std::string& what);

/// What the heartbeat needs to keep one lease alive. It deliberately holds no reference to the Manager, so
/// the heartbeat thread can never end up owning (and joining) itself.
struct Beat {
  std::string key;
  std::string token;
  std::int64_t fence = 0;
  milliseconds ttl{0};
  milliseconds extend_every{0};
  milliseconds safety_margin{0};
  std::stop_source stop;
  std::atomic<bool> lost{false};
  // Guarded by Heartbeat::mu_.
  Clock::time_point next_due;
  Clock::time_point valid_until;  // conservative local estimate of the server-side expiry
  bool registered = false;
};

class ManagerState;

/// One thread per Manager that extends every registered lease, batching all leases that are at least
/// half-way to their next extension into one backend call.
class Heartbeat {
 public:
  explicit Heartbeat(ManagerState& manager) : manager_(manager) {}
  ~Heartbeat();
  Heartbeat(const Heartbeat&) = delete;
  Heartbeat& operator=(const Heartbeat&) = delete;

  void add(std::shared_ptr<Beat> beat);
  void remove(const std::shared_ptr<Beat>& beat);

 private:
  struct Lost {
    std::shared_ptr<Beat> beat;
    const char* why;
  };
  void run(std::stop_token stop);
  /// Stops extending `beat` and queues its loss for report_lost().
  void mark_lost_locked(const std::shared_ptr<Beat>& beat, const char* why) REQUIRES(mu_);
  /// Requests stop on, and logs, the queued losses with mu_ released.
  void report_lost(std::unique_lock<std::mutex>& lk) REQUIRES(mu_);

  ManagerState& manager_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::vector<std::shared_ptr<Beat>> beats_ GUARDED_BY(mu_);
  std::vector<Lost> lost_ GUARDED_BY(mu_);
  bool changed_ GUARDED_BY(mu_) = false;
  std::jthread thread_;  // started on first add(); last member, so it stops before the others die
};

class ManagerState {
 public:
  Options options;
  std::string masked_url;
  std::unique_ptr<Backend> backend;
  Heartbeat heartbeat{*this};  // after backend: destroyed (and joined) first

  void log(LogLevel level, const std::string& message) const noexcept;
  /// The context of one call: deadline = call.deadline, else now + extra + operation_timeout.
  OpContext context(const Call& call, milliseconds extra = milliseconds{0}) const;
};

/// "key=\"...\" token=..." for log lines and error messages.
std::string describe(std::string_view key, std::string_view token);

}  // namespace distrlock::detail
