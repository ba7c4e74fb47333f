#include <poll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <system_error>

#include "core/state.hpp"

namespace distrlock::detail {
namespace {

using std::chrono::duration_cast;

constexpr LeaseClock::time_point never = LeaseClock::time_point::max();

// A failed extension is retried after this share of the extension interval (within [10 ms, 1 s]).
milliseconds retry_after(const Beat& b) { return std::clamp(b.extend_every / 4, milliseconds{10}, milliseconds{1000}); }

// The latest moment a statement extending other leases may still run while `b` waits for its own extension:
// half-way from when `b` is due to when it would be lost, so that its own attempt keeps the other half.
LeaseClock::time_point yield_by(const Beat& b) { return b.next_due + (b.deadline() - b.next_due) / 2; }

}  // namespace

bool Beat::is_lost() noexcept {
  if (lost.load()) return true;
  if (LeaseClock::now() < deadline()) return false;
  lost.store(true);  // sticky: an extension confirmed a moment later must not make it valid again
  if (keeper != nullptr) keeper->wake_watchdog();
  return true;
}

Keeper::Keeper(std::shared_ptr<Backend> backend, Logger logger, std::string masked_url, milliseconds operation_timeout)
    : backend_(std::move(backend)),
      logger_(std::move(logger)),
      masked_url_(std::move(masked_url)),
      operation_timeout_(operation_timeout) {
  event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  timer_fd_ = ::timerfd_create(CLOCK_BOOTTIME, TFD_CLOEXEC | TFD_NONBLOCK);
  if (event_fd_ < 0 || timer_fd_ < 0) {
    const int e = errno;
    if (event_fd_ >= 0) ::close(event_fd_);
    if (timer_fd_ >= 0) ::close(timer_fd_);
    throw std::system_error(e, std::generic_category(), "distrlock: cannot create the lease watchdog's timer");
  }
}

Keeper::~Keeper() {
  ::close(event_fd_);
  ::close(timer_fd_);
}

void Keeper::log(LogLevel level, const std::string& message) noexcept {
  try {
    logger_(level, message);
  } catch (...) {  // a throwing logger must not take a lease thread down with it
  }
}

void Keeper::wake_watchdog() const noexcept {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(event_fd_, &one, sizeof one);
}

bool Keeper::on_watchdog_thread() const noexcept { return watchdog_id_.load() == std::this_thread::get_id(); }

void Keeper::start_locked() {
  if (started_) return;
  started_ = true;
  auto self = shared_from_this();
  watchdog_ = std::thread([self] { self->watchdog_loop(); });
  extender_ = std::thread([self] { self->extender_loop(false); });
  straggler_ = std::thread([self] { self->extender_loop(true); });
}

void Keeper::add(std::shared_ptr<Beat> beat) {
  {
    std::lock_guard lk(mu_);
    beat->keeper = this;
    beat->registered = true;
    beat->next_due = LeaseClock::now() + beat->extend_every;
    beats_.push_back(std::move(beat));
    ++changes_;
    start_locked();
  }
  cv_.notify_all();
  wake_watchdog();
}

void Keeper::remove(const std::shared_ptr<Beat>& beat) {
  {
    std::lock_guard lk(mu_);
    beat->registered = false;
    std::erase(beats_, beat);
    ++changes_;
  }
  cv_.notify_all();
}

void Keeper::release_later(std::string key, std::string token, milliseconds timeout) {
  {
    std::lock_guard lk(mu_);
    releases_.push_back({std::move(key), std::move(token), timeout});
    ++changes_;
    start_locked();
  }
  cv_.notify_all();
}

void Keeper::shutdown() {
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    ++changes_;
  }
  cv_.notify_all();
  wake_watchdog();
  for (std::thread* t : {&extender_, &straggler_, &watchdog_}) {
    if (!t->joinable()) continue;
    if (t->get_id() == std::this_thread::get_id()) {
      t->detach();  // a stop callback dropped the last Lease: this thread sees stopping_ and ends by itself
    } else {
      t->join();
    }
  }
}

void Keeper::watchdog_loop() {
  watchdog_id_ = std::this_thread::get_id();
  std::vector<std::shared_ptr<Beat>> due;
  while (true) {
    LeaseClock::time_point earliest = never;
    {
      std::lock_guard lk(mu_);
      if (stopping_) return;
      const LeaseClock::time_point now = LeaseClock::now();
      for (const auto& b : beats_) {
        if (b->lost.load() || now >= b->deadline()) {
          b->lost.store(true);
          b->fired = true;
          b->registered = false;
          due.push_back(b);
        } else {
          earliest = std::min(earliest, b->deadline());
        }
      }
      if (!due.empty()) {
        std::erase_if(beats_, [](const auto& b) { return b->fired; });
        ++changes_;
      }
    }
    if (!due.empty()) {
      // Every due lease is already lost() above; now their stops, in deadline order. Callbacks are user code and
      // run here: they must not block (as for any std::stop_callback), or later stops wait for them.
      std::sort(due.begin(), due.end(), [](const auto& a, const auto& b) { return a->deadline() < b->deadline(); });
      for (const auto& b : due) b->stop.request_stop();
      {
        std::lock_guard lk(mu_);
        for (const auto& b : due) {
          logs_.emplace_back(LogLevel::warning,
                             "lease lost: key=\"" + b->key + "\" token=" + b->token + " fence=" +
                                 std::to_string(b->fence) + " on " + masked_url_ + ": " +
                                 (b->why != nullptr ? b->why
                                                    : "it came within its safety margin of expiring without a "
                                                      "successful extension") +
                                 "; the work it guards was told to stop");
        }
        ++changes_;
      }
      cv_.notify_all();
      due.clear();
      continue;  // deadlines may have passed while the callbacks ran
    }
    // Armed with a relative time: the difference of two readings of our clock is right even where the clock's
    // value is not the kernel's (a process under libfaketime fakes CLOCK_BOOTTIME's value, not its rate). The
    // kernel then counts it on CLOCK_BOOTTIME, suspend included.
    itimerspec spec{};
    if (earliest != never) {
      const auto ns = std::max<LeaseClock::rep>(1, (earliest - LeaseClock::now()).count());
      spec.it_value.tv_sec = static_cast<time_t>(ns / 1'000'000'000);
      spec.it_value.tv_nsec = static_cast<long>(ns % 1'000'000'000);
    }
    ::timerfd_settime(timer_fd_, 0, &spec, nullptr);
    pollfd fds[2] = {{event_fd_, POLLIN, 0}, {timer_fd_, POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    std::uint64_t drained = 0;
    [[maybe_unused]] ssize_t n = ::read(event_fd_, &drained, sizeof drained);
    n = ::read(timer_fd_, &drained, sizeof drained);
  }
}

void Keeper::extender_loop(bool stragglers) {
  std::unique_lock lk(mu_);
  while (true) {
    if (!stragglers && (!logs_.empty() || !releases_.empty())) {
      auto logs = std::exchange(logs_, {});
      auto releases = std::exchange(releases_, {});
      lk.unlock();
      for (const auto& [level, text] : logs) log(level, text);
      for (const PendingRelease& r : releases) {
        std::error_code ec;
        backend_->release({Clock::now() + r.timeout, {}, {}}, r.key, r.token, ec);
        const std::string detail = ec ? take_last_detail() : std::string();
        if (ec && ec != errc::already_released) {
          log(LogLevel::warning, "could not release key=\"" + r.key + "\" token=" + r.token + " on " + masked_url_ +
                                     ": " + ec.message() + (detail.empty() ? "" : ": " + detail) +
                                     "; the lease ends by its TTL at the latest");
        }
      }
      lk.lock();
      continue;
    }
    if (stopping_) return;
    extend_once(lk, stragglers);
  }
}

void Keeper::extend_once(std::unique_lock<std::mutex>& lk, bool stragglers) {
  const LeaseClock::time_point now = LeaseClock::now();
  std::vector<std::shared_ptr<Beat>> batch;
  LeaseClock::time_point wake = never;
  if (!stragglers) {
    // A batch starts when a lease is due, and takes every lease at least half-way to due with it. (Taking
    // half-way leases at any other moment would catch them one by one, each as it crosses the half-way mark.)
    bool any_due = false;
    for (const auto& b : beats_) {
      if (b->suspect || b->in_flight) continue;
      if (b->next_due <= now) any_due = true;
      wake = std::min(wake, b->next_due);
    }
    if (any_due) {
      wake = never;
      for (const auto& b : beats_) {
        if (b->suspect || b->in_flight) continue;
        if (b->next_due - now <= duration_cast<LeaseClock::duration>(b->extend_every / 2)) batch.push_back(b);
      }
    }
  } else {
    // A lease whose last extension timed out goes alone, on this thread of its own, the one due first: whatever
    // stalls it (a row lock held elsewhere) cannot hold back the others' batch.
    std::shared_ptr<Beat> next;
    for (const auto& b : beats_) {
      if (!b->suspect || b->in_flight) continue;
      if (!next || b->next_due < next->next_due) next = b;
    }
    if (next && next->next_due <= now) {
      batch.push_back(next);
    } else if (next) {
      wake = next->next_due;
    }
  }
  if (batch.empty()) {
    const std::uint64_t seen = changes_;
    // Not safety-critical (the watchdog owns the deadlines), so a steady-clock wait in slices is enough.
    const auto slice = wake == never ? std::chrono::nanoseconds(std::chrono::seconds(1))
                                     : std::clamp<LeaseClock::duration>(wake - now, LeaseClock::duration(0),
                                                                        std::chrono::seconds(1));
    cv_.wait_for(lk, slice, [&] { return changes_ != seen || stopping_; });
    return;
  }

  // The statement must end in time for every lease: for those in it, early enough to try again; for those that
  // wait for the next one, early enough for theirs.
  LeaseClock::time_point deadline = now + duration_cast<LeaseClock::duration>(operation_timeout_);
  // Half the time a lease in it has left: should this attempt time out, another still fits before the deadline.
  for (const auto& b : batch) deadline = std::min(deadline, now + (b->deadline() - now) / 2);
  for (const auto& b : beats_) {
    // Each thread yields to the leases that wait for it: the extender to the healthy ones, the straggler thread to
    // the other stragglers (a batch that timed out made all its leases stragglers, the innocent ones too).
    if (b->suspect != stragglers || b->in_flight || std::find(batch.begin(), batch.end(), b) != batch.end()) continue;
    deadline = std::min(deadline, yield_by(*b));
  }
  deadline = std::max(deadline, now + std::chrono::milliseconds(1));
  std::vector<ExtendRequest> requests;
  requests.reserve(batch.size());
  for (const auto& b : batch) {
    b->in_flight = true;
    requests.push_back({b->key, b->token, b->ttl});  // immutable once registered
  }
  lk.unlock();
  std::error_code ec;
  const LeaseClock::time_point sent_at = LeaseClock::now();
  const std::vector<milliseconds> left =
      backend_->extend_many(OpContext{LeaseClock::to_call_clock(deadline), {}, {}}, requests, ec);
  const std::string detail = ec ? take_last_detail() : std::string();
  lk.lock();
  for (const auto& b : batch) b->in_flight = false;
  ++changes_;  // the other thread may have skipped these
  cv_.notify_all();

  const LeaseClock::time_point after = LeaseClock::now();
  if (ec) {
    for (const auto& b : batch) {
      b->next_due = after + retry_after(*b);
      if (ec == errc::timeout) b->suspect = true;
    }
    const std::string line = "heartbeat could not extend " + std::to_string(batch.size()) + " lease(s) on " +
                             masked_url_ + ": " + ec.message() + (detail.empty() ? "" : ": " + detail) + "; retrying";
    lk.unlock();
    log(LogLevel::warning, line);
    lk.lock();
    return;
  }
  bool lost_any = false;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    Beat& b = *batch[i];
    if (!b.registered || b.fired) continue;  // released, or already stopped, while the statement ran
    if (left[i] < milliseconds{0}) {
      b.why = "another token holds the key, or the lease expired";
      b.lost.store(true);
      lost_any = true;
      continue;
    }
    const LeaseClock::time_point moved = stop_deadline(sent_at, left[i], b.safety_margin);
    // Past its deadline the lease is over even if this answer says otherwise: the watchdog fires it. (The mutex
    // keeps the watchdog from looking in between; lost() readers set the sticky flag.)
    if (!b.lost.load() && LeaseClock::now() < b.deadline() && moved > b.deadline())
      b.stop_at.store(moved.time_since_epoch().count());
    b.next_due = after + b.extend_every;
    b.suspect = false;
  }
  if (lost_any) wake_watchdog();
}

}  // namespace distrlock::detail
