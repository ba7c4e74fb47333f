// distrlock run: hold a key while a command runs; flock(1) across machines.
//
// Process model: the tool blocks the signals it forwards (and SIGCHLD) before any thread exists, and reads
// them from a signalfd (signals.hpp), so neither the library's heartbeat thread nor a stray delivery can act
// on them. While waiting for the key, a watcher thread turns SIGINT/SIGTERM/SIGHUP/SIGQUIT into a
// cancellation. Once the lease is held, the command runs as a child in a process group of its own, with the
// caller's original signal mask, and the tool is its subreaper (PR_SET_CHILD_SUBREAPER), so that even a
// grandchild that daemonizes stays the tool's descendant. If the tool runs in the foreground of a terminal,
// the terminal is handed to the command's group (and taken back afterwards), so the command reads the
// terminal and gets Ctrl-C and Ctrl-Z as it would without the tool. The tool then sleeps in poll() on the
// signalfd and an eventfd that the lease's stop_token triggers:
//   * a signal that reaches the tool (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) is forwarded once
//     to the command's process group. The command is not in the tool's group, so a signal sent to the
//     tool's group (`kill -TERM -PGID`, systemd's KillMode=mixed) reaches it once, through the tool;
//   * lease lost or about to expire unextended: SIGTERM to the command's group straight from the lease's
//     stop_callback (kill() never blocks, so no thread of the tool has to be scheduled first), SIGTERM to any
//     descendant that left the group, and SIGKILL to all of them --kill-after later, before the expiry;
//   * SIGCHLD: the command (and any orphan reparented to the tool) is reaped. Descendants still running once
//     the command has exited get SIGTERM, then SIGKILL after --kill-after: the key is released next, after
//     which they would run unprotected. Then the tool exits with the command's status (128+N for death by
//     signal N), or 77 if the lease was lost meanwhile.
// The child also gets PR_SET_PDEATHSIG=SIGTERM: if the tool itself is killed, nothing extends the lease any
// more, so the command is told to stop rather than run on unprotected.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <system_error>
#include <thread>

#include "common.hpp"
#include "signals.hpp"

namespace distrlock::cli {
namespace {

struct RunOptions {
  std::string key;                     ///< required, 1-255 bytes
  std::string ttl = "30s";             ///< lease length, >= min_ttl
  std::string wait = "0";              ///< how long to retry while busy; 0 = one attempt
  bool no_wait = false;                ///< -n: --wait 0, spelled as flock(1) does
  std::string extend_every;            ///< heartbeat period, > 0 and < ttl - safety margin; empty = ttl/3
  std::string kill_after;              ///< SIGTERM-to-SIGKILL grace, < safety margin; empty = min(5s, margin/2)
  std::string owner;                   ///< shown to others in busy messages and status; empty = hostname:pid
  int conflict_exit_code = exit_busy;  ///< exit code when the key stays busy, 0-255
  bool quiet_conflict = false;         ///< busy: print nothing (real errors still print)
  std::string shell_command;           ///< -c: run this through `sh -c` instead of the command after "--"
  bool shell_command_given = false;
};

/// The controlling terminal, when the tool runs in its foreground: the command's group gets it while it runs.
class Terminal {
 public:
  Terminal() {
    fd_ = ::open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd_ >= 0 && ::tcgetpgrp(fd_) != ::getpgrp()) {  // no terminal, or the tool is a background job
      ::close(fd_);
      fd_ = -1;
    }
    // While the command has the terminal, the tool is a background process of it: with `stty tostop`, a line
    // it writes (a library error, a warning) would stop it with SIGTTOU. Ignored, the write goes through.
    // The command gets the caller's disposition back (spawn).
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    if (fd_ >= 0) ::sigaction(SIGTTOU, &ignore, &original_ttou_);
  }
  ~Terminal() {
    if (fd_ >= 0) ::close(fd_);
  }
  Terminal(const Terminal&) = delete;
  Terminal& operator=(const Terminal&) = delete;

  /// -1 when the tool is not in the foreground of a terminal.
  int fd() const noexcept { return fd_; }
  /// SIGTTOU's disposition as the tool found it (valid when fd() >= 0).
  const struct sigaction& original_ttou() const noexcept { return original_ttou_; }
  /// Makes `pgid` the terminal's foreground group. SIGTTOU is blocked around the call: a process outside the
  /// foreground group may hand the terminal over only then.
  void give_to(pid_t pgid) const noexcept {
    if (fd_ < 0) return;
    sigset_t ttou;
    sigset_t before;
    sigemptyset(&ttou);
    sigaddset(&ttou, SIGTTOU);
    ::pthread_sigmask(SIG_BLOCK, &ttou, &before);
    ::tcsetpgrp(fd_, pgid);
    ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
  }
  void take_back() const noexcept { give_to(::getpgrp()); }

 private:
  int fd_ = -1;
  struct sigaction original_ttou_ {};
};

/// The command, started with fork+execvpe as the leader of a new process group (its pgid is its pid).
struct Child {
  pid_t pid = -1;
  int exec_errno = 0;  ///< non-zero: the command could not be started (and has been reaped)
};

Child spawn(const std::vector<std::string>& command, const std::vector<std::string>& extra_env,
            const sigset_t& child_mask, const Terminal& terminal) {
  // Everything the child needs is built before fork(): after it, only async-signal-safe calls are allowed
  // (the heartbeat thread may hold the allocator's lock at that moment).
  std::vector<char*> argv;
  argv.reserve(command.size() + 1);
  for (const std::string& a : command) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view entry = *e;
    bool replaced = false;
    for (const std::string& x : extra_env) replaced = replaced || entry.starts_with(x.substr(0, x.find('=') + 1));
    if (!replaced) envp.push_back(*e);
  }
  for (const std::string& e : extra_env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  sigset_t ttou;
  sigemptyset(&ttou);
  sigaddset(&ttou, SIGTTOU);

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
    ::setpgid(0, 0);
    if (terminal.fd() >= 0) {  // before exec, so the command never reads the terminal from the background
      ::pthread_sigmask(SIG_BLOCK, &ttou, nullptr);
      ::tcsetpgrp(terminal.fd(), ::getpid());
      ::sigaction(SIGTTOU, &terminal.original_ttou(), nullptr);
    }
    ::pthread_sigmask(SIG_SETMASK, &child_mask, nullptr);
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != parent) ::_exit(128 + SIGTERM);  // the tool died before prctl took effect
    ::execvpe(argv[0], argv.data(), envp.data());
    const int e = errno;
    [[maybe_unused]] const ssize_t n = ::write(report[1], &e, sizeof e);
    ::_exit(e == ENOENT ? 127 : 126);
  }
  ::setpgid(pid, pid);  // as well as in the child: whichever runs first, the group exists before either goes on
  terminal.give_to(pid);
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
    terminal.take_back();
  }
  return child;
}

/// The children of process `pid`, from /proc/PID/task/*/children (each thread lists the ones it forked or, for
/// a subreaper, inherited). nullopt when the kernel does not offer those files (CONFIG_PROC_CHILDREN).
std::optional<std::vector<pid_t>> children_of(pid_t pid) {
  const std::string tasks = "/proc/" + std::to_string(pid) + "/task";
  DIR* d = ::opendir(tasks.c_str());
  if (d == nullptr) return std::vector<pid_t>{};  // gone meanwhile
  std::vector<pid_t> out;
  bool offered = false;
  while (const dirent* entry = ::readdir(d)) {
    if (entry->d_name[0] == '.') continue;
    std::ifstream f(tasks + "/" + entry->d_name + "/children");
    offered = offered || f.is_open();
    for (long child = 0; f >> child;) out.push_back(static_cast<pid_t>(child));
  }
  ::closedir(d);
  if (!offered) return std::nullopt;
  return out;
}

/// Whether /proc/PID/stat says zombie (or gone).
bool is_zombie(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  std::getline(f, stat);
  const std::size_t paren = stat.rfind(')');  // the command name may contain anything, ')' included
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z' || stat[paren + 2] == 'X';
}

/// The same from every /proc/PID/stat, for kernels without the children files.
std::vector<pid_t> children_by_scan(pid_t parent) {
  std::vector<pid_t> out;
  if (DIR* d = ::opendir("/proc")) {
    while (const dirent* entry = ::readdir(d)) {
      char* end = nullptr;
      const long pid = std::strtol(entry->d_name, &end, 10);
      if (pid <= 0 || *end != '\0') continue;
      std::ifstream f(std::string("/proc/") + entry->d_name + "/stat");
      std::string stat;
      std::getline(f, stat);
      const std::size_t paren = stat.rfind(')');
      if (paren == std::string::npos) continue;
      char state = 0;
      long ppid = 0;
      if (std::sscanf(stat.c_str() + paren + 1, " %c %ld", &state, &ppid) == 2 && ppid == parent)
        out.push_back(static_cast<pid_t>(pid));
    }
    ::closedir(d);
  }
  return out;
}

/// The tool's live (not zombie) descendants: the command's whole tree, including processes that left its
/// group or daemonized (they are reparented to the tool, its subreaper). Cheap when there are none (the usual
/// case at exit): one small file per thread of the tool.
std::vector<pid_t> live_descendants() {
  std::vector<pid_t> tree = {::getpid()};
  std::vector<pid_t> live;
  for (std::size_t i = 0; i < tree.size(); ++i) {
    std::optional<std::vector<pid_t>> children = children_of(tree[i]);
    if (!children) children = children_by_scan(tree[i]);
    for (const pid_t child : *children) {
      tree.push_back(child);
      if (!is_zombie(child)) live.push_back(child);
    }
  }
  return live;
}

/// How the supervision ended.
struct Outcome {
  int wait_status = 0;
  bool lost = false;          ///< the lease's stop_token fired while the command's tree ran
  bool sent_sigterm = false;  ///< ... and the tree was told to stop
  bool sent_sigkill = false;  ///< ... and did not within --kill-after
  int leftovers_stopped = 0;  ///< descendants still running after the command exited, stopped by the tool
};

/// Runs until the command and every descendant are gone and reaped.
class Supervisor {
 public:
  Supervisor(const Child& child, const Lease& lease, const BlockedSignals& signals, const Terminal& terminal,
             milliseconds kill_after)
      : pid_(child.pid), lease_(lease), signals_(signals), terminal_(terminal), kill_after_(kill_after) {
    // Straight from the thread that finds the lease lost: kill() is async-signal-safe and never blocks. The
    // group cannot be another's meanwhile: the command is not reaped (its pid stays taken) while this lives.
    on_stop_.emplace(lease.stop_token(), [this] {
      ::kill(-pid_, SIGTERM);
      wake_.notify();
    });
  }

  Outcome run() {
    std::array<pollfd, 2> fds{pollfd{signals_.fd(), POLLIN, 0}, pollfd{wake_.fd(), POLLIN, 0}};
    while (true) {
      reap();
      notice_loss();
      if (command_done_) {
        const std::vector<pid_t> left = live_descendants();
        if (left.empty()) {
          reap();  // the ones that died since the reap above: the tool leaves no zombie behind
          break;
        }
        if (!out_.lost && !kill_at_) {  // leftovers after a normal exit: the key is about to be released
          out_.leftovers_stopped = static_cast<int>(left.size());
          signal_all(left, SIGTERM);
          kill_at_ = Clock::now() + kill_after_;
        }
      }
      if (kill_at_ && !killed_ && Clock::now() >= *kill_at_) {
        killed_ = true;
        give_up_at_ = Clock::now() + std::chrono::seconds(5);
        const std::vector<pid_t> left = live_descendants();
        out_.sent_sigkill = !left.empty();
        if (!command_done_) ::kill(-pid_, SIGKILL);
        signal_all(left, SIGKILL);
      }
      if (give_up_at_ && command_done_ && Clock::now() >= *give_up_at_) break;  // e.g. stuck in the kernel (D)
      int timeout = -1;
      if (kill_at_ && !killed_) {
        const auto left = std::chrono::ceil<milliseconds>(*kill_at_ - Clock::now()).count();
        timeout = static_cast<int>(std::clamp<long long>(left, 0, 60'000));
      } else if (command_done_) {
        timeout = 20;  // SIGKILLed processes that are not our children: nothing tells us they are gone
      }
      wait_for(fds, timeout);
      if ((fds[1].revents & POLLIN) != 0) wake_.drain();
      for (const signalfd_siginfo& info : signals_.take()) {
        const auto signo = static_cast<int>(info.ssi_signo);
        if (signo == SIGCHLD) continue;
        if (!command_done_) {
          ::kill(-pid_, signo);  // once, to the command's group; see the top of this file
        } else {
          signal_all(live_descendants(), signo);
        }
      }
    }
    if (lease_.lost()) out_.lost = true;  // lost at the very end, or while the command was exiting
    return out_;
  }

 private:
  /// Lease lost: SIGTERM to the descendants that left the group (the group had it from the callback), and
  /// SIGKILL to everything --kill-after later.
  void notice_loss() {
    if (out_.lost || !lease_.lost()) return;
    out_.lost = true;
    out_.sent_sigterm = true;
    std::vector<pid_t> outside;
    for (const pid_t p : live_descendants())
      if (command_done_ || ::getpgid(p) != pid_) outside.push_back(p);
    signal_all(outside, SIGTERM);
    const Clock::time_point at = Clock::now() + kill_after_;
    kill_at_ = kill_at_ ? std::min(*kill_at_, at) : at;
  }

  static void signal_all(const std::vector<pid_t>& pids, int signo) {
    for (const pid_t p : pids) ::kill(p, signo);
  }

  /// Reaps exited children (the command, and orphans reparented to the tool) without blocking. The command
  /// is reaped only after the stop_callback is gone, so that callback never signals a reused group id.
  void reap() {
    siginfo_t info{};
    if (!command_done_ && terminal_.fd() >= 0 && ::waitid(P_PID, pid_, &info, WSTOPPED | WNOHANG) == 0 &&
        info.si_pid == pid_)
      suspend_like_the_command();
    while (true) {
      info = {};
      if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid == 0) return;
      if (info.si_pid != pid_) {
        ::waitpid(info.si_pid, nullptr, WNOHANG);
        continue;
      }
      on_stop_.reset();  // waits for a callback that is running
      ::waitpid(pid_, &out_.wait_status, 0);
      command_done_ = true;
      terminal_.take_back();
    }
  }

  /// Ctrl-Z stopped the command (it has the terminal): stop the tool too, so the shell sees its job stopped,
  /// and when the shell continues the tool, give the terminal back and continue the command. The lease is not
  /// extended while the tool is stopped; if it runs out meanwhile, the command is stopped as on any loss.
  void suspend_like_the_command() {
    terminal_.take_back();
    ::kill(::getpid(), SIGSTOP);
    terminal_.give_to(pid_);
    ::kill(-pid_, SIGCONT);
  }

  const pid_t pid_;
  const Lease& lease_;
  const BlockedSignals& signals_;
  const Terminal& terminal_;
  const milliseconds kill_after_;
  Wakeup wake_;
  Outcome out_;
  bool command_done_ = false;
  bool killed_ = false;  ///< SIGKILL went out
  std::optional<Clock::time_point> kill_at_;
  std::optional<Clock::time_point> give_up_at_;
  std::optional<std::stop_callback<std::function<void()>>> on_stop_;  // last: uses the members above
};

/// Once the command has finished, bounds what is left of the tool's life (releasing the key, closing the
/// connections) by the clock, whatever a database call does: a call may overrun its deadline inside the client
/// library (PostgreSQL 15's PQcancel blocks on a host that stopped answering). Past the bound, it prints a
/// warning and ends the process with the exit code it was armed with; the key then frees itself when its lease
/// runs out. Declared before the Session, so that it also covers the Session's destruction.
class ExitDeadline {
 public:
  ExitDeadline() = default;
  ~ExitDeadline() {
    {
      std::lock_guard lk(mu_);
      done_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  ExitDeadline(const ExitDeadline&) = delete;
  ExitDeadline& operator=(const ExitDeadline&) = delete;

  /// Starts the clock: exit with `exit_code` and `warning` (one line) if the tool is still alive `after` from now.
  void arm(milliseconds after, int exit_code, std::string warning) {
    exit_code_ = exit_code;
    thread_ = std::thread([this, after, warning = std::move(warning)] {
      std::unique_lock lk(mu_);
      if (cv_.wait_for(lk, after, [this] { return done_; })) return;
      std::fflush(stdout);
      std::fprintf(stderr, "%s\n", warning.c_str());
      std::fflush(stderr);
      ::_exit(exit_code_.load());
    });
  }
  /// What the tool learnt since arm() (the lease turned out lost) changes the exit code.
  void set_exit_code(int exit_code) noexcept { exit_code_ = exit_code; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;  // GUARDED_BY(mu_)
  std::atomic<int> exit_code_{0};
  std::thread thread_;
};

/// The part of a library warning after "... on URL: ", up to "; ..." (the reason, without key or URL).
std::string reason_in(std::string_view warning, std::string_view database) {
  const std::string marker = " on " + std::string(database) + ": ";
  const std::size_t at = warning.find(marker);
  if (at == std::string_view::npos) return {};
  std::string_view reason = warning.substr(at + marker.size());
  reason = reason.substr(0, reason.find("; "));
  return std::string(reason);
}

/// The lease's timing, checked against the rules that make a lease keepable (exit 64 naming the rule).
struct Timing {
  LeaseOptions lease;
  milliseconds kill_after{0};
};

Timing check_timing(const RunOptions& o, const Invocation& invocation, const GlobalOptions& global, const Reporter& r) {
  Timing t;
  t.lease.ttl = parse_ttl(o.ttl, r);
  t.lease.wait = o.no_wait ? milliseconds{0} : parse_duration("--wait", o.wait, true, r);
  const milliseconds margin = distrlock::default_safety_margin(t.lease.ttl);
  if (!o.extend_every.empty()) {
    t.lease.extend_every = parse_duration("--extend-every", o.extend_every, false, r);
    // The lease's stop fires at ttl - margin without an extension: an extension must come before that.
    if (t.lease.extend_every >= t.lease.ttl - margin) {
      const std::string limit = format_duration(t.lease.ttl) + " - ttl/5 = " + format_duration(t.lease.ttl - margin);
      r.usage("--extend-every " + format_duration(t.lease.extend_every) +
                  " is not shorter than --ttl minus its safety margin (" + limit +
                  "), so the lease would be lost before its first extension",
              "leave out --extend-every (ttl/3), or pass one well below --ttl");
    }
  }
  // SIGTERM goes out at expiry - margin (by the local estimate); SIGKILL must land before the expiry.
  t.kill_after = std::min<milliseconds>(std::chrono::seconds(5), margin / 2);
  if (!o.kill_after.empty()) {
    t.kill_after = parse_duration("--kill-after", o.kill_after, true, r);
    if (t.kill_after >= margin)
      r.usage("--kill-after " + format_duration(t.kill_after) + " is not shorter than the safety margin (ttl/5 = " +
                  format_duration(margin) + "), so the command could still run when its lease expires",
              "pass a --kill-after below " + format_duration(margin) + ", or a longer --ttl");
  }
  // After the command, the release waits at most this long: a database that is gone must not hold up the
  // tool's exit; the key then frees itself at the end of its TTL.
  t.lease.release_timeout = std::min<milliseconds>(global.timeout, std::chrono::seconds(2));
  if (o.shell_command_given && invocation.has_separator)
    r.usage("both -c and a command after \"--\" were given", "pass one of them");
  if (!o.shell_command_given) {
    if (!invocation.has_separator)
      r.usage("missing \"--\" before the command", "write: distrlock run --key KEY -- CMD [ARGS...]");
    if (invocation.tail.empty())
      r.usage("missing the command after \"--\"", "write: distrlock run --key KEY -- CMD [ARGS...]");
  } else if (o.shell_command.empty()) {
    r.usage("-c is empty", "pass the shell command to run: -c 'CMD'");
  }
  return t;
}

/// Milliseconds since the Unix epoch, by this host's clock.
long long unix_ms(std::chrono::system_clock::time_point t) {
  return std::chrono::duration_cast<milliseconds>(t.time_since_epoch()).count();
}

int run(const RunOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("run", global);
  check_key(o.key, r);
  r.set_key(o.key);
  const Timing timing = check_timing(o, invocation, global, r);
  const std::vector<std::string> command =
      o.shell_command_given ? std::vector<std::string>{"/bin/sh", "-c", o.shell_command} : invocation.tail;

  const BlockedSignals signals;  // before the Manager: its heartbeat thread must inherit the mask
  ExitDeadline exit_deadline;
  Session session(global, r, o.owner);

  // Wait for the key; a terminating signal meanwhile cancels the wait.
  std::optional<Lease> lease;
  std::chrono::system_clock::time_point granted;
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
          return session.manager().acquire(o.key, timing.lease, call);
        } catch (const distrlock::error&) {
          if (watcher.interrupted() != 0) throw interrupted();
          throw;
        }
      }));
      granted = std::chrono::system_clock::now();
    } catch (const distrlock::error&) {  // busy: with_table ends the tool on every other error
      watcher.stop();
      session.fail_busy(o.key, timing.lease.wait, o.conflict_exit_code, o.quiet_conflict);
    }
    watcher.stop();
    if (watcher.interrupted() != 0) {
      lease.reset();  // releases
      throw interrupted();
    }
  }

  // Orphans of the command's tree (a daemonizing grandchild) become the tool's children, not init's, so the
  // tool can still stop them.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  const Terminal terminal;
  const std::vector<std::string> env = {
      "DISTRLOCK_KEY=" + o.key,
      "DISTRLOCK_TOKEN=" + lease->token(),
      "DISTRLOCK_FENCE=" + std::to_string(lease->fencing_token()),
      "DISTRLOCK_TTL=" + std::to_string(timing.lease.ttl.count()),
      "DISTRLOCK_EXPIRES_AT=" + std::to_string(unix_ms(granted + timing.lease.ttl)),
  };
  const Child child = spawn(command, env, signals.original(), terminal);
  if (child.exec_errno != 0) {
    lease.reset();
    r.fail(child.exec_errno == ENOENT ? 127 : 126,
           "cannot run \"" + escape(command.front()) + "\": " + errno_text(child.exec_errno),
           "check the command and $PATH");
  }

  const Outcome out = Supervisor(child, *lease, signals, terminal, timing.kill_after).run();
  const int status = WIFSIGNALED(out.wait_status) ? 128 + WTERMSIG(out.wait_status) : WEXITSTATUS(out.wait_status);
  bool lost = out.lost;
  // The release's own deadline, plus a little for closing the connections.
  exit_deadline.arm(
      timing.lease.release_timeout + milliseconds{500}, lost ? exit_lease_lost : status,
      r.line("warning: the database did not answer within " + format_duration(timing.lease.release_timeout) +
                 " after the command finished; exiting without releasing the key",
             "it frees itself when the lease runs out (at most --ttl)"));
  try {
    lease->release();
  } catch (const distrlock::error& e) {
    if (e.code() == errc::already_released) {
      lost = true;  // it ended before the command did, though the heartbeat had not noticed yet
    } else if (!lost) {
      r.warn("the command finished but the key could not be released within " +
                 format_duration(timing.lease.release_timeout) + ": " + reason_of(e),
             "it frees itself when the lease runs out (at most --ttl)");
    }
  }
  if (out.leftovers_stopped > 0 && !lost) {
    r.warn("the command left " + std::to_string(out.leftovers_stopped) +
               " process(es) running; they were stopped (SIGTERM, then SIGKILL) before the key was released",
           "wait for background processes in the command, or run them outside distrlock");
  }
  if (!lost) return status;
  exit_deadline.set_exit_code(exit_lease_lost);

  std::string why = reason_in(last_library_warning("lease lost"), r.database());
  if (why.empty()) why = "the lease expired or another process took the key";
  const std::string heartbeat = reason_in(last_library_warning("heartbeat could not extend"), r.database());
  if (!heartbeat.empty()) why += " (last heartbeat error: " + heartbeat + ")";
  std::string what = "lost the lease while the command ran: " + why;
  if (out.sent_sigterm) what += "; sent the command's process tree SIGTERM";
  if (out.sent_sigkill) what += ", then SIGKILL after " + format_duration(timing.kill_after);
  what += WIFSIGNALED(out.wait_status) ? "; it died of " + signal_name(WTERMSIG(out.wait_status))
                                       : "; it exited with status " + std::to_string(status);
  r.fail(exit_lease_lost, what,
         "its work may be incomplete or may overlap the next holder's; check the database, or use a longer --ttl "
         "with --extend-every well below it");
}

}  // namespace

Command add_run_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* app = parent.add_subcommand(
      "run", "Hold KEY while CMD runs: distrlock run --key KEY [options] -- CMD [ARGS...]  (or -c 'CMD')");
  app->add_option("--key", o->key, "Key to lock (1-255 bytes)")->type_name("KEY")->required();
  app->add_option("--ttl", o->ttl, "Lease length (at least 100ms); extended while the command runs")
      ->type_name("DURATION")
      ->capture_default_str();
  CLI::Option* wait = app->add_option("-w,--wait", o->wait, "Keep trying this long while the key is busy")
                          ->type_name("DURATION")
                          ->capture_default_str();
  app->add_flag("-n,--no-wait", o->no_wait, "Try once (--wait 0), as flock -n")->excludes(wait);
  app->add_option("--extend-every", o->extend_every, "Heartbeat period (default: ttl/3; below ttl - ttl/5)")
      ->type_name("DURATION");
  app->add_option("--kill-after", o->kill_after,
                  "SIGKILL this long after SIGTERM (default: min(5s, ttl/10); below ttl/5)")
      ->type_name("DURATION");
  app->add_option("--owner", o->owner, "Owner string others see (default: hostname:pid)")->type_name("TEXT");
  app->add_option("-E,--conflict-exit-code", o->conflict_exit_code, "Exit code when the key stays busy")
      ->check(CLI::Range(0, 255))
      ->capture_default_str();
  app->add_flag("-q,--quiet-conflict", o->quiet_conflict,
                "Busy: print nothing, just exit with the conflict exit code (errors still print)");
  CLI::Option* shell =
      app->add_option("-c,--command", o->shell_command, "Run CMD through sh -c (instead of -- CMD)")->type_name("CMD");
  return {app, [o, shell, &global](const Invocation& invocation) {
            o->shell_command_given = shell->count() > 0;
            return run(*o, global, invocation);
          }};
}

}  // namespace distrlock::cli
