// Signal handling shared by the commands that wait (`run`, `acquire`): the tool blocks the signals it acts
// on before any thread exists and reads them from a signalfd, so neither the library's threads nor a stray
// delivery can act on them; a watcher thread turns a terminating signal into a cancellation of the wait.
//
// Thread safety: BlockedSignals is created and read by one thread at a time (the main thread, or the
// InterruptWatcher while it runs); Wakeup::notify() may be called from any thread and from a stop_callback.
#pragma once

#include <poll.h>
#include <sys/signalfd.h>

#include <array>
#include <atomic>
#include <csignal>
#include <cstdint>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace distrlock::cli {

/// The signals `run` forwards to its command; `acquire` blocks the same ones while it waits.
inline constexpr std::array forwarded_signals = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/// "SIGTERM", or "signal 42".
std::string signal_name(int signo);

/// SIGINT, SIGTERM, SIGHUP, SIGQUIT: the ones that end a wait (with exit 128+N).
bool terminates(int signo) noexcept;

/// Blocks the forwarded signals and SIGCHLD in this thread (and in every thread started later), and reads
/// them from a signalfd. The mask stays blocked after destruction: the process is about to exit, and
/// unblocking would deliver whatever is pending with its default action.
class BlockedSignals {
 public:
  BlockedSignals();
  ~BlockedSignals();
  BlockedSignals(const BlockedSignals&) = delete;
  BlockedSignals& operator=(const BlockedSignals&) = delete;

  int fd() const noexcept { return fd_; }
  /// The mask the tool was started with: a command gets it back.
  const sigset_t& original() const noexcept { return original_; }
  /// Every signal pending now (non-blocking).
  std::vector<signalfd_siginfo> take() const;

 private:
  sigset_t set_{};
  sigset_t original_{};
  int fd_ = -1;
};

/// An eventfd: notify() from any thread (or a stop_callback) wakes the poll() of the owner.
class Wakeup {
 public:
  Wakeup();
  ~Wakeup();
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  int fd() const noexcept { return fd_; }
  void notify() const noexcept;
  void drain() const noexcept;

 private:
  int fd_;
};

/// poll() that retries on EINTR. `timeout_ms` < 0 waits forever.
void wait_for(std::span<pollfd> fds, int timeout_ms);

/// While the tool waits for a key: a thread that turns a terminating signal into a cancellation. Other
/// signals that arrive meanwhile (SIGUSR1, SIGUSR2) are read and dropped: there is no command yet to pass
/// them to, and their default action would kill the tool without a word.
class InterruptWatcher {
 public:
  explicit InterruptWatcher(const BlockedSignals& signals);
  ~InterruptWatcher() { stop(); }
  InterruptWatcher(const InterruptWatcher&) = delete;
  InterruptWatcher& operator=(const InterruptWatcher&) = delete;

  std::stop_token stop_token() const noexcept { return cancel_.get_token(); }
  /// The signal that cancelled the wait, or 0.
  int interrupted() const noexcept { return interrupted_.load(); }
  /// Ends the watch; afterwards interrupted() is final.
  void stop();

 private:
  void watch();

  const BlockedSignals& signals_;
  Wakeup done_;
  std::stop_source cancel_;
  std::atomic<int> interrupted_{0};
  std::thread thread_;  // last: starts once the members it uses exist
};

}  // namespace distrlock::cli
