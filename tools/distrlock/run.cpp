// distrlock run: hold a key while a command runs; flock(1) across machines.
//
// Process model: the tool blocks the signals it forwards (and SIGCHLD) before any thread exists, and reads
// them from a signalfd, so neither the library's heartbeat thread nor a stray delivery can act on them.
// While waiting for the key, a watcher thread turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into a cancellation.
// Once the lease is held, the command runs as a child (same process group, so the terminal's job control
// keeps working) with the caller's original signal mask; the tool then sleeps in poll() on the signalfd
// and an eventfd that the lease's stop_token triggers:
//   * a signal another process sent (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) is forwarded to
//     the command. Signals the terminal sends (Ctrl-C) already reach the whole foreground process group,
//     command included, so they are not sent a second time;
//   * lease lost or about to expire unextended: SIGTERM to the command, SIGKILL after --kill-after;
//   * SIGCHLD: the command is reaped. Then the lease is released and the tool exits with the command's
//     status (128+N for death by signal N), or 77 if the lease was lost meanwhile.
// The child also gets PR_SET_PDEATHSIG=SIGTERM: if the tool itself is killed, nothing extends the lease any
// more, so the command is told to stop rather than run on unprotected.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <system_error>
#include <thread>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct RunOptions {
  std::string key;                     ///< required, 1-255 bytes
  std::string ttl = "30s";             ///< lease length, > 0
  std::string wait = "0";              ///< how long to retry while busy; 0 = one attempt
  std::string extend_every;            ///< heartbeat period, > 0; empty = ttl/3
  std::string kill_after;              ///< SIGTERM-to-SIGKILL grace on lease loss, >= 0; empty = min(5s, ttl/5)
  std::string owner;                   ///< shown to others in busy messages and status; empty = hostname:pid
  int conflict_exit_code = exit_busy;  ///< exit code when the key stays busy, 0-255
};

constexpr std::array forwarded_signals = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

std::string signal_name(int signo) {
  const char* abbrev = sigabbrev_np(signo);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(signo);
}

/// Blocks the forwarded signals and SIGCHLD in this thread (and in every thread started later), and reads
/// them from a signalfd. The mask stays blocked after destruction: the process is about to exit, and
/// unblocking would deliver whatever is pending with its default action.
class BlockedSignals {
 public:
  BlockedSignals() {
    ::signal(SIGCHLD, SIG_DFL);  // SIG_IGN inherited from the caller would make the kernel reap the command
    sigemptyset(&set_);
    for (const int s : forwarded_signals) sigaddset(&set_, s);
    sigaddset(&set_, SIGCHLD);
    ::pthread_sigmask(SIG_BLOCK, &set_, &original_);
    fd_ = ::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "signalfd");
  }
  ~BlockedSignals() { ::close(fd_); }
  BlockedSignals(const BlockedSignals&) = delete;
  BlockedSignals& operator=(const BlockedSignals&) = delete;

  int fd() const noexcept { return fd_; }
  /// The mask the tool was started with: the command gets it back.
  const sigset_t& original() const noexcept { return original_; }
  /// Every signal pending now (non-blocking).
  std::vector<signalfd_siginfo> take() const {
    std::vector<signalfd_siginfo> out;
    signalfd_siginfo info{};
    while (::read(fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) out.push_back(info);
    return out;
  }

 private:
  sigset_t set_{};
  sigset_t original_{};
  int fd_ = -1;
};

/// An eventfd: notify() from any thread (or a stop_callback) wakes the poll() of the owner.
class Wakeup {
 public:
  Wakeup() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
  }
  ~Wakeup() { ::close(fd_); }
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  int fd() const noexcept { return fd_; }
  void notify() const noexcept {
    const std::uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof one);
  }
  void drain() const noexcept {
    std::uint64_t value = 0;
    [[maybe_unused]] const ssize_t n = ::read(fd_, &value, sizeof value);
  }

 private:
  int fd_;
};

/// poll() that retries on EINTR. `timeout_ms` < 0 waits forever.
void wait_for(std::span<pollfd> fds, int timeout_ms) {
  for (pollfd& p : fds) p.revents = 0;
  while (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno == EINTR) {
  }
}

bool terminates(int signo) { return signo == SIGINT || signo == SIGTERM || signo == SIGHUP || signo == SIGQUIT; }

/// While the tool waits for the key: a thread that turns a terminating signal into a cancellation.
class InterruptWatcher {
 public:
  explicit InterruptWatcher(const BlockedSignals& signals) : signals_(signals), thread_([this] { watch(); }) {}
  ~InterruptWatcher() { stop(); }
  InterruptWatcher(const InterruptWatcher&) = delete;
  InterruptWatcher& operator=(const InterruptWatcher&) = delete;

  std::stop_token stop_token() const noexcept { return cancel_.get_token(); }
  /// The signal that cancelled the wait, or 0.
  int interrupted() const noexcept { return interrupted_.load(); }
  /// Ends the watch; afterwards interrupted() is final.
  void stop() {
    if (!thread_.joinable()) return;
    done_.notify();
    thread_.join();
  }

 private:
  void watch() {
    std::array<pollfd, 2> fds{pollfd{signals_.fd(), POLLIN, 0}, pollfd{done_.fd(), POLLIN, 0}};
    while (true) {
      wait_for(fds, -1);
      if ((fds[1].revents & POLLIN) != 0) return;
      for (const signalfd_siginfo& info : signals_.take()) {
        if (terminates(static_cast<int>(info.ssi_signo))) {
          interrupted_ = static_cast<int>(info.ssi_signo);
          cancel_.request_stop();
          return;
        }
      }
    }
  }

  const BlockedSignals& signals_;
  Wakeup done_;
  std::stop_source cancel_;
  std::atomic<int> interrupted_{0};
  std::thread thread_;  // last: starts once the members it uses exist
};

/// The command, started with fork+execvpe. Owns nothing to clean up: it is always reaped by supervise().
struct Child {
  pid_t pid = -1;
  int exec_errno = 0;  ///< non-zero: the command could not be started (and has been reaped)
};

Child spawn(const std::vector<std::string>& command, const std::vector<std::string>& extra_env,
            const sigset_t& child_mask) {
  // Everything the child needs is built before fork(): after it, only async-signal-safe calls are allowed
  // (the heartbeat thread may hold the allocator's lock at that moment).
  std::vector<char*> argv;
  argv.reserve(command.size() + 1);
  for (const std::string& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry = *e;
    if (entry.starts_with("DISTRLOCK_KEY=") || entry.starts_with("DISTRLOCK_TOKEN=") ||
        entry.starts_with("DISTRLOCK_FENCE="))
      continue;
    envp.push_back(*e);
  }
  for (const std::string& e : extra_env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);

  int report[2];  // the child writes errno here if exec fails; close-on-exec tells the parent it worked
  if (::pipe2(report, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "pipe2");
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(report[0]);
    ::close(report[1]);
    throw std::system_error(e, std::generic_category(), "fork");
  }
  if (pid == 0) {
    ::close(report[0]);
    ::pthread_sigmask(SIG_SETMASK, &child_mask, nullptr);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the tool died before prctl took effect
    ::execvpe(argv[0], argv.data(), envp.data());
    const int e = errno;
    [[maybe_unused]] const ssize_t n = ::write(report[1], &e, sizeof e);
    ::_exit(e == ENOENT ? 127 : 126);
  }
  ::close(report[1]);
  Child child{pid, 0};
  int e = 0;
  ssize_t n = 0;
  while ((n = ::read(report[0], &e, sizeof e)) < 0 && errno == EINTR) {
  }
  ::close(report[0]);
  if (n == static_cast<ssize_t>(sizeof e)) {
    child.exec_errno = e;
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  return child;
}

/// How the supervision ended.
struct Outcome {
  int wait_status = 0;
  bool lost = false;          ///< the lease's stop_token fired while the command ran
  bool sent_sigterm = false;  ///< ... and the command was told to stop
  bool sent_sigkill = false;  ///< ... and did not within the grace
};

Outcome supervise(pid_t pid, const Lease& lease, const BlockedSignals& signals, milliseconds kill_after) {
  Wakeup wake;
  std::stop_callback on_stop(lease.stop_token(), [&wake] { wake.notify(); });
  Outcome out;
  std::optional<Clock::time_point> kill_at;
  std::array<pollfd, 2> fds{pollfd{signals.fd(), POLLIN, 0}, pollfd{wake.fd(), POLLIN, 0}};
  while (true) {
    int timeout = -1;
    if (kill_at && !out.sent_sigkill) {
      const auto left = std::chrono::ceil<milliseconds>(*kill_at - Clock::now()).count();
      timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
    }
    wait_for(fds, timeout);
    if ((fds[1].revents & POLLIN) != 0) wake.drain();
    if (!out.lost && lease.lost()) {
      out.lost = true;
      out.sent_sigterm = ::kill(pid, SIGTERM) == 0;
      kill_at = Clock::now() + kill_after;
    }
    for (const signalfd_siginfo& info : signals.take()) {
      const auto signo = static_cast<int>(info.ssi_signo);
      // SI_KERNEL: sent by the terminal to the whole foreground process group, which includes the command.
      if (signo != SIGCHLD && info.ssi_code != SI_KERNEL) ::kill(pid, signo);
    }
    if (kill_at && !out.sent_sigkill && Clock::now() >= *kill_at) out.sent_sigkill = ::kill(pid, SIGKILL) == 0;
    const pid_t done = ::waitpid(pid, &out.wait_status, WNOHANG);
    if (done == pid) break;
  }
  if (lease.lost()) out.lost = true;  // lost at the very end, or while the command was exiting
  return out;
}

/// The part of a library warning after "... on URL: ", up to "; ..." (the reason, without key or URL).
std::string reason_in(std::string_view warning, std::string_view database) {
  const std::string marker = " on " + std::string(database) + ": ";
  const std::size_t at = warning.find(marker);
  if (at == std::string_view::npos) return {};
  std::string_view reason = warning.substr(at + marker.size());
  reason = reason.substr(0, reason.find("; "));
  return std::string(reason);
}

int run(const RunOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("run", global);
  check_key(o.key, r);
  r.set_key(o.key);
  if (!invocation.has_separator)
    r.usage("missing \"--\" before the command", "write: distrlock run --key KEY -- CMD [ARGS...]");
  if (invocation.tail.empty())
    r.usage("missing the command after \"--\"", "write: distrlock run --key KEY -- CMD [ARGS...]");
  LeaseOptions lease_options;
  lease_options.ttl = parse_duration("--ttl", o.ttl, false, r);
  lease_options.wait = parse_duration("--wait", o.wait, true, r);
  if (!o.extend_every.empty()) lease_options.extend_every = parse_duration("--extend-every", o.extend_every, false, r);
  const milliseconds safety_margin = std::max(lease_options.ttl / 5, milliseconds{1});  // the library's default
  const milliseconds kill_after = o.kill_after.empty() ? std::min<milliseconds>(std::chrono::seconds(5), safety_margin)
                                                       : parse_duration("--kill-after", o.kill_after, true, r);

  const BlockedSignals signals;  // before the Manager: its heartbeat thread must inherit the mask
  Session session(global, r, o.owner);

  // Wait for the key; a terminating signal meanwhile cancels the wait.
  std::optional<Lease> lease;
  {
    InterruptWatcher watcher(signals);
    Call call;
    call.stop = watcher.stop_token();
    auto interrupted = [&] {
      const int signo = watcher.interrupted();
      return Failure(128 + signo,
                     r.line("interrupted by " + signal_name(signo) + " before the command started", "nothing ran"));
    };
    try {
      lease.emplace(session.with_table([&] {
        try {
          return session.manager().acquire(o.key, lease_options, call);
        } catch (const distrlock::error&) {
          if (watcher.interrupted() != 0) throw interrupted();
          throw;
        }
      }));
    } catch (const distrlock::error&) {  // busy: with_table ends the tool on every other error
      watcher.stop();
      session.fail_busy(o.key, lease_options.wait, o.conflict_exit_code);
    }
    watcher.stop();
    if (watcher.interrupted() != 0) {
      lease.reset();  // releases
      throw interrupted();
    }
  }

  const std::vector<std::string> env = {"DISTRLOCK_KEY=" + o.key, "DISTRLOCK_TOKEN=" + lease->token(),
                                        "DISTRLOCK_FENCE=" + std::to_string(lease->fencing_token())};
  const Child child = spawn(invocation.tail, env, signals.original());
  if (child.exec_errno != 0) {
    lease.reset();
    r.fail(child.exec_errno == ENOENT ? 127 : 126,
           "cannot run \"" + escape(invocation.tail.front()) + "\": " + errno_text(child.exec_errno),
           "check the command and $PATH");
  }

  const Outcome out = supervise(child.pid, *lease, signals, kill_after);
  const int status = WIFSIGNALED(out.wait_status) ? 128 + WTERMSIG(out.wait_status) : WEXITSTATUS(out.wait_status);
  bool lost = out.lost;
  try {
    lease->release();
  } catch (const distrlock::error& e) {
    if (e.code() == errc::already_released) {
      lost = true;  // it ended before the command did, though the heartbeat had not noticed yet
    } else if (!lost) {
      r.warn("the command finished but the key could not be released: " + reason_of(e),
             "it frees itself when the lease runs out (at most --ttl)");
    }
  }
  if (!lost) return status;

  std::string why = reason_in(last_library_warning("lease lost"), r.database());
  if (why.empty()) why = "the lease expired or another process took the key";
  const std::string heartbeat = reason_in(last_library_warning("heartbeat could not extend"), r.database());
  if (!heartbeat.empty()) why += " (last heartbeat error: " + heartbeat + ")";
  std::string what = "lost the lease while the command ran: " + why;
  if (out.sent_sigterm) what += "; sent the command SIGTERM";
  if (out.sent_sigkill) what += ", then SIGKILL after " + format_duration(kill_after);
  what += WIFSIGNALED(out.wait_status) ? "; it died of " + signal_name(WTERMSIG(out.wait_status))
                                       : "; it exited with status " + std::to_string(status);
  r.fail(exit_lease_lost, what,
         "its work may be incomplete or may overlap the next holder's; check the database, or use a longer --ttl "
         "with --extend-every well below it");
}

}  // namespace

Command add_run_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* app =
      parent.add_subcommand("run", "Hold KEY while CMD runs: distrlock run --key KEY [options] -- CMD [ARGS...]");
  app->add_option("--key", o->key, "Key to lock (1-255 bytes)")->type_name("KEY")->required();
  app->add_option("--ttl", o->ttl, "Lease length; extended while the command runs")
      ->type_name("DURATION")
      ->capture_default_str();
  app->add_option("--wait", o->wait, "Keep trying this long while the key is busy")
      ->type_name("DURATION")
      ->capture_default_str();
  app->add_option("--extend-every", o->extend_every, "Heartbeat period (default: ttl/3)")->type_name("DURATION");
  app->add_option("--kill-after", o->kill_after,
                  "On lease loss, SIGKILL this long after SIGTERM (default: min(5s, ttl/5))")
      ->type_name("DURATION");
  app->add_option("--owner", o->owner, "Owner string others see (default: hostname:pid)")->type_name("TEXT");
  app->add_option("--conflict-exit-code", o->conflict_exit_code, "Exit code when the key stays busy")
      ->check(CLI::Range(0, 255))
      ->capture_default_str();
  return {app, [o, &global](const Invocation& invocation) { return run(*o, global, invocation); }};
}

}  // namespace distrlock::cli
