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
#include "core/lease_clock.hpp"
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

class Keeper;

/// One auto-extended lease as the Keeper sees it. It holds no reference to the Manager, so neither of the
/// Keeper's threads can end up owning (and joining) itself through it.
struct Beat {
  std::string key;
  std::string token;
  std::int64_t fence = 0;
  milliseconds ttl{0};
  milliseconds extend_every{0};
  milliseconds safety_margin{0};
  std::stop_source stop;
  /// Set once the lease is over (a deadline passed, or the server said another token holds the key). Sticky.
  std::atomic<bool> lost{false};
  /// LeaseClock nanoseconds: the local expiry estimate less the safety margin, from the last grant or extension
  /// the server confirmed. Moved only forward, and only by the extender; at this instant the lease is lost.
  std::atomic<LeaseClock::rep> stop_at{0};
  Keeper* keeper = nullptr;  // alive as long as any Lease that can read this Beat (the Lease holds the Manager)

  /// lost, or the deadline has passed (then it becomes lost for good, and the watchdog is woken to fire the stop).
  bool is_lost() noexcept;
  LeaseClock::time_point deadline() const noexcept { return LeaseClock::time_point(LeaseClock::duration(stop_at.load())); }

  // Guarded by Keeper::mu_.
  LeaseClock::time_point next_due{};
  bool registered = false;
  bool fired = false;      // its stop was requested by the watchdog
  bool suspect = false;    // its last extension timed out: extended alone, so it cannot stall the others
  bool in_flight = false;  // an extension of it is running
  const char* why = nullptr;  // why it is lost, when the extender found out
};

/// Keeps a Manager's leases: one **watchdog** thread owns every lease's deadline and fires its stop on time,
/// doing no I/O (it sleeps in poll() on a CLOCK_BOOTTIME timerfd and an eventfd); one **extender** thread
/// extends the leases, batched, through the backend; and a **straggler** thread extends, one at a time, the
/// leases whose last extension timed out, so that one stalled row cannot hold back the others. A statement that hangs, a reconnect or a slow cancel can
/// delay an extension, never a stop. The watchdog runs user code only as stop callbacks; log lines it produces
/// are written by the extender, since a logger may block.
///
/// Shared by the ManagerState and both threads: whichever lets go last destroys it. shutdown() (from
/// ~ManagerState) stops the threads, joining each unless called on that very thread, which then ends by itself.
class Keeper : public std::enable_shared_from_this<Keeper> {
 public:
  Keeper(std::shared_ptr<Backend> backend, Logger logger, std::string masked_url, milliseconds operation_timeout);
  ~Keeper();
  Keeper(const Keeper&) = delete;
  Keeper& operator=(const Keeper&) = delete;

  void add(std::shared_ptr<Beat> beat);
  void remove(const std::shared_ptr<Beat>& beat);
  /// Releases `token`'s lease on `key` from the extender thread, within `timeout`: for a Lease destroyed on the
  /// watchdog thread (in a stop callback), which must not wait on I/O, and for the undo of an acquire whose
  /// outcome is unknown, so that the call still ends by its deadline.
  void release_later(std::string key, std::string token, milliseconds timeout);
  bool on_watchdog_thread() const noexcept;
  /// Makes the watchdog look at every lease now. Async-signal-safe (one write to an eventfd).
  void wake_watchdog() const noexcept;
  void shutdown();

 private:
  struct PendingRelease {
    std::string key;
    std::string token;
    milliseconds timeout;
  };
  void start_locked() REQUIRES(mu_);
  void watchdog_loop();
  /// The extender, or (`stragglers`) the thread that extends, one at a time, leases whose last extension timed out.
  void extender_loop(bool stragglers);
  void extend_once(std::unique_lock<std::mutex>& lk, bool stragglers) REQUIRES(mu_);
  void log(LogLevel level, const std::string& message) noexcept;

  const std::shared_ptr<Backend> backend_;
  const Logger logger_;
  const std::string masked_url_;
  const milliseconds operation_timeout_;
  int event_fd_ = -1;
  int timer_fd_ = -1;

  std::mutex mu_;
  std::condition_variable_any cv_;  // wakes the extender
  std::vector<std::shared_ptr<Beat>> beats_ GUARDED_BY(mu_);
  std::vector<std::pair<LogLevel, std::string>> logs_ GUARDED_BY(mu_);  // from the watchdog, for the extender
  std::vector<PendingRelease> releases_ GUARDED_BY(mu_);
  std::uint64_t changes_ GUARDED_BY(mu_) = 0;  // bumped on every change the extender threads wait for
  bool stopping_ GUARDED_BY(mu_) = false;
  bool started_ GUARDED_BY(mu_) = false;
  std::atomic<std::thread::id> watchdog_id_{};
  std::thread watchdog_;
  std::thread extender_;
  std::thread straggler_;
};

class ManagerState {
 public:
  Options options;
  std::string masked_url;
  std::shared_ptr<Backend> backend;
  std::shared_ptr<Keeper> keeper;

  ManagerState() = default;
  ManagerState(const ManagerState&) = delete;
  ManagerState& operator=(const ManagerState&) = delete;
  ~ManagerState() {
    if (keeper) keeper->shutdown();
  }

  void log(LogLevel level, const std::string& message) const noexcept;
  /// The context of one call: deadline = call.deadline, else now + extra + operation_timeout.
  OpContext context(const Call& call, milliseconds extra = milliseconds{0}) const;
};

/// Builds a Manager around a backend of the caller's making: the seam that tests use to inject faults (statements
/// that never return, a batch where one lease fails) beneath the core.
struct ManagerAccess {
  static Manager open_with_backend(std::unique_ptr<Backend> backend, Options options, std::string masked_url);
};

/// "key=\"...\" token=..." for log lines and error messages.
std::string describe(std::string_view key, std::string_view token);

}  // namespace distrlock::detail
