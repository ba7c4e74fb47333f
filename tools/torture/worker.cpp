#include "worker.hpp"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <iostream>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <stop_token>
#include <thread>

#include "distrlock/distrlock.hpp"
#include "events.hpp"
#include "native_db.hpp"

namespace torture {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

class EventSink {
 public:
  EventSink(int fd, int slot) : fd_(fd), slot_(slot), pid_(::getpid()) {}

  /// One write(2) per line, from any thread (the stop callback runs on the library's heartbeat thread).
  void emit(EventKind kind, int key, std::int64_t fence, std::int64_t t0, std::int64_t t1 = 0,
            std::int64_t value = 0) const noexcept {
    try {
      const std::string line = format_event(Event{kind, slot_, pid_, key, fence, t0, t1, value});
      ssize_t n = 0;
      do {
        n = ::write(fd_, line.data(), line.size());
      } while (n < 0 && errno == EINTR);
    } catch (...) {  // out of memory while formatting: the parent will see a missing event, not a crash
    }
  }

 private:
  int fd_;
  int slot_;
  long pid_;
};

/// The guarded table through a direct connection, reconnected after any failure.
class Guard {
 public:
  Guard(std::string url, bool check_fence) : url_(std::move(url)), check_fence_(check_fence) {}

  WriteResult write(const std::string& key, std::int64_t fence, std::stop_token stop) {
    try {
      if (!db_) db_ = NativeDb::connect(url_);
      const WriteResult r = db_->fenced_write(key, fence, check_fence_, std::move(stop));
      if (r == WriteResult::failed) db_.reset();
      return r;
    } catch (const DbError&) {
      db_.reset();
      return WriteResult::failed;
    }
  }

 private:
  std::string url_;
  bool check_fence_;
  std::unique_ptr<NativeDb> db_;
};

std::int64_t errc_value(std::error_code ec) { return ec ? ec.value() : 0; }

}  // namespace

std::string key_name(const std::string& run_id, int k) { return "torture/" + run_id + "/" + std::to_string(k); }

int run_worker(const WorkerConfig& cfg) {
  // SIGTERM/SIGINT end the loop gracefully: a thread waits for them, so no handler touches library state.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  std::stop_source shutdown;
  std::jthread signals([&set, &shutdown] {
    int sig = 0;
    sigwait(&set, &sig);
    shutdown.request_stop();
  });
  // On any way out (an exception included) the signal thread must end before it is joined.
  struct WakeOnExit {
    std::jthread& t;
    std::stop_source& s;
    WakeOnExit(std::jthread& thread, std::stop_source& source) : t(thread), s(source) {}
    WakeOnExit(const WakeOnExit&) = delete;
    WakeOnExit& operator=(const WakeOnExit&) = delete;
    ~WakeOnExit() {
      // Not a termination: the signal is blocked everywhere and that thread takes it with sigwait().
      if (!s.stop_requested()) pthread_kill(t.native_handle(), SIGTERM);  // NOLINT(bugprone-bad-signal-to-kill-thread)
    }
  } wake_on_exit{signals, shutdown};

  const EventSink events(cfg.event_fd, cfg.slot);
  events.emit(EventKind::start, 0, 0, mono_ns(), 0, cfg.skew_hours);

  distrlock::Manager mgr = distrlock::Manager::open(
      cfg.db, distrlock::Options{.table = cfg.table,
                                 .pool_size = 2,
                                 .owner = "torture-w" + std::to_string(cfg.slot) + "-" + std::to_string(::getpid()),
                                 .logger = distrlock::stderr_logger(distrlock::LogLevel::error)});
  Guard guard(cfg.guard_db, !cfg.skip_fence_check);
  std::mt19937_64 rng(cfg.seed);
  const auto uniform_ms = [&rng](milliseconds lo, milliseconds hi) {
    return milliseconds(std::uniform_int_distribution<std::int64_t>(lo.count(), hi.count())(rng));
  };
  // Long enough to outlast a dead holder's lease plus a reconnect, so a wait that gives up is news.
  const milliseconds wait = 4 * cfg.ttl + 3s;
  std::mutex mu;
  std::condition_variable_any cv;

  while (!shutdown.stop_requested()) {
    const int k = static_cast<int>(std::uniform_int_distribution<int>(0, cfg.keys - 1)(rng));
    const std::string key = key_name(cfg.run_id, k);
    const std::int64_t t_want = mono_ns();
    events.emit(EventKind::want, k, 0, t_want);
    std::error_code ec;
    std::optional<distrlock::Lease> lease =
        mgr.acquire(key, distrlock::LeaseOptions{.ttl = cfg.ttl, .wait = wait, .release_timeout = cfg.ttl}, ec,
                    distrlock::Call{.stop = shutdown.get_token()});
    if (!lease) {
      events.emit(EventKind::acquire_failed, k, 0, mono_ns(), 0, errc_value(ec));
      // Not a hot loop while the server is away; jittered so workers do not come back in step.
      std::unique_lock lk(mu);
      cv.wait_for(lk, shutdown.get_token(), uniform_ms(10ms, 50ms), [] { return false; });
      continue;
    }
    const std::int64_t fence = lease->fencing_token();
    events.emit(EventKind::grant, k, fence, t_want, mono_ns());
    const std::stop_token lost = lease->stop_token();
    // Work ends at once when the lease's stop fires (unless that is the planted bug) or at shutdown.
    std::stop_source work_stop;
    std::atomic<bool> in_section{true};  // a stop requested by our own release is not a loss signal
    const std::stop_callback on_loss(lost, [&] {
      if (in_section.load()) events.emit(EventKind::stop, k, fence, mono_ns());
      if (!cfg.ignore_stop) work_stop.request_stop();
    });
    const std::stop_callback on_shutdown(shutdown.get_token(), [&] { work_stop.request_stop(); });

    events.emit(EventKind::enter, k, fence, mono_ns());
    const auto fenced_write = [&] {
      if (!cfg.ignore_stop && lost.stop_requested()) return;
      const std::int64_t t0 = mono_ns();
      const WriteResult r = guard.write(key, fence, work_stop.get_token());
      events.emit(EventKind::write, k, fence, t0, mono_ns(), static_cast<std::int64_t>(r));
    };
    fenced_write();
    // Work for up to 2 TTL, so that most sections need an extension and a holder hit by a partition or a
    // stall is often still inside when its lease is lost; a fenced write every TTL/4.
    const auto work_end = std::chrono::steady_clock::now() + uniform_ms(cfg.ttl / 20, cfg.ttl * 2);
    while (!work_stop.stop_requested()) {
      const auto now = std::chrono::steady_clock::now();
      if (now >= work_end) break;
      std::unique_lock lk(mu);
      const auto step = std::min<std::chrono::steady_clock::duration>(work_end - now, cfg.ttl / 4);
      if (cv.wait_for(lk, work_stop.get_token(), step, [] { return false; }) || work_stop.stop_requested()) break;
      lk.unlock();
      fenced_write();
    }
    events.emit(EventKind::exit, k, fence, mono_ns());
    in_section = false;
    lease->release(ec);
    events.emit(EventKind::released, k, fence, mono_ns(), 0, errc_value(ec));
  }
  return 0;
}

}  // namespace torture
