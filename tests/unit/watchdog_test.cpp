// The lease watchdog, driven through a fault-injecting backend at the Backend seam: statements that never return,
// a batch where one lease fails, a key taken behind a holder's back. No server: the faults are the point.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <distrlock/distrlock.hpp>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include <time.h>

#include "core/lease_clock.hpp"
#include "core/state.hpp"

namespace {

using namespace std::chrono_literals;
using distrlock::Clock;
using distrlock::errc;
using distrlock::milliseconds;
using distrlock::detail::LeaseClock;

// How late a thread may be scheduled on a loaded 2-core VM (also under TSan): the slack of every timing bound.
constexpr auto scheduling_slack = 150ms;

/// An in-memory lock table with switches that break it. Time is the test process's own clock; the server's view
/// of a lease is "granted at the call, expires ttl later".
class FaultBackend final : public distrlock::detail::Backend {
 public:
  struct Row {
    std::string token;
    std::int64_t fence = 0;
    LeaseClock::time_point expires{};
  };

  // Faults. Each may be flipped from the test thread at any time.
  std::atomic<bool> extends_never_return{false};  // extend_many blocks, ignoring its deadline, until healed
  std::atomic<bool> extends_fail_for_one{false};  // extend_many reports `failing_key` as no longer held
  std::string failing_key;                        // set before flipping the switch above
  std::string stalled_key;                        // extend_many with this key waits until its deadline, then times out

  std::atomic<int> extend_calls{0};
  std::atomic<int> releases{0};

  void heal() {
    extends_never_return = false;
    cv_.notify_all();
  }
  void steal(const std::string& key) {
    std::lock_guard lk(mu_);
    rows_[key].token = "thief";
    rows_[key].expires = LeaseClock::now() + 1h;
  }

  std::string_view name() const noexcept override { return "fault"; }

  distrlock::detail::AcquireResult try_acquire(const distrlock::detail::OpContext&, std::string_view key,
                                               std::string_view token, milliseconds ttl, std::string_view,
                                               std::error_code&) override {
    std::lock_guard lk(mu_);
    Row& r = rows_[std::string(key)];
    const auto now = LeaseClock::now();
    distrlock::detail::AcquireResult out;
    if (!r.token.empty() && r.expires > now && r.token != token) {
      out.expires_in = std::chrono::duration_cast<milliseconds>(r.expires - now);
      return out;
    }
    r.token = token;
    r.fence += 1;
    r.expires = now + ttl;
    out.granted = true;
    out.fence = r.fence;
    out.expires_in = ttl;
    return out;
  }

  milliseconds extend(const distrlock::detail::OpContext&, std::string_view key, std::string_view token,
                      milliseconds ttl, std::error_code&) override {
    std::lock_guard lk(mu_);
    return extend_locked(std::string(key), token, ttl);
  }

  bool release(const distrlock::detail::OpContext&, std::string_view key, std::string_view token,
               std::error_code&) override {
    ++releases;
    std::lock_guard lk(mu_);
    Row& r = rows_[std::string(key)];
    if (r.token != token || r.expires <= LeaseClock::now()) return false;
    r.token.clear();
    return true;
  }

  std::vector<milliseconds> extend_many(const distrlock::detail::OpContext& ctx,
                                        std::span<const distrlock::detail::ExtendRequest> requests,
                                        std::error_code& ec) override {
    ++extend_calls;
    std::unique_lock lk(mu_);
    cv_.wait(lk, [this] { return !extends_never_return.load(); });
    for (const auto& r : requests) {
      if (!stalled_key.empty() && r.key == stalled_key) {
        // A row lock held elsewhere: the statement waits until its deadline and is then cancelled.
        lk.unlock();
        std::this_thread::sleep_until(ctx.deadline);
        ec = errc::timeout;
        return std::vector<milliseconds>(requests.size(), milliseconds{-1});
      }
    }
    std::vector<milliseconds> left;
    for (const auto& r : requests) {
      const bool failing = extends_fail_for_one.load() && r.key == failing_key;
      left.push_back(failing ? milliseconds{-1} : extend_locked(std::string(r.key), r.token, r.ttl));
    }
    return left;
  }

  std::vector<distrlock::LockStatus> inspect(const distrlock::detail::OpContext&, const std::vector<std::string>&,
                                             std::error_code&) override {
    return {};
  }
  distrlock::PruneResult prune(const distrlock::detail::OpContext&, milliseconds, std::error_code&) override {
    return {};
  }
  std::vector<distrlock::Migration> migrations() const override { return {}; }
  void migrate(const distrlock::detail::OpContext&, std::error_code&) override {}
  void migrate_down(const distrlock::detail::OpContext&, std::error_code&) override {}

 private:
  milliseconds extend_locked(const std::string& key, std::string_view token, milliseconds ttl) {
    Row& r = rows_[key];
    const auto now = LeaseClock::now();
    if (r.token != token || r.expires <= now) return milliseconds{-1};
    r.expires = now + ttl;
    return ttl;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Row> rows_;
};

struct Harness {
  FaultBackend* backend = nullptr;  // owned by the Manager
  std::optional<distrlock::Manager> manager;

  Harness() {
    auto b = std::make_unique<FaultBackend>();
    backend = b.get();
    distrlock::Options o;
    o.logger = [](distrlock::LogLevel, std::string_view) {};
    manager.emplace(distrlock::detail::ManagerAccess::open_with_backend(std::move(b), o, "fault:"));
  }
  ~Harness() {
    if (backend != nullptr && manager) backend->heal();
  }
};

/// Waits until `done()` or `limit`; returns whether it happened.
template <class Pred>
bool eventually(Pred done, Clock::duration limit) {
  const auto give_up = Clock::now() + limit;
  while (!done() && Clock::now() < give_up) std::this_thread::sleep_for(2ms);
  return done();
}

TEST(Watchdog, StopsALeaseAtItsDeadlineWhileTheExtenderIsStuckInAStatementThatNeverReturns) {
  Harness h;
  h.backend->extends_never_return = true;
  const auto sent = LeaseClock::now();
  distrlock::Lease lease = h.manager->acquire("k", {.ttl = 1s, .extend_every = 200ms, .safety_margin = 300ms});
  // The promise: stop no later than sent + ttl - margin (less the clock-rate allowance), counted from the send.
  const auto deadline = distrlock::detail::stop_deadline(sent, 1s, 300ms);
  std::atomic<std::int64_t> stopped_at{0};
  std::stop_callback on_stop(lease.stop_token(),
                             [&] { stopped_at = LeaseClock::now().time_since_epoch().count(); });
  ASSERT_TRUE(eventually([&] { return stopped_at.load() != 0; }, 3s)) << "the stop never fired";
  const LeaseClock::time_point fired{LeaseClock::duration(stopped_at.load())};
  EXPECT_LE(fired, deadline + scheduling_slack) << "fired "
                                                << std::chrono::duration_cast<milliseconds>(fired - deadline).count()
                                                << " ms after the deadline";
  EXPECT_GE(h.backend->extend_calls.load(), 1) << "the extender was stuck in its statement meanwhile";
  EXPECT_TRUE(lease.lost());
}

TEST(Watchdog, LostIsTrueFromTheDeadlineOnEvenIfTheWatchdogHasNotRunYet) {
  Harness h;
  h.backend->extends_never_return = true;
  distrlock::Lease lease = h.manager->acquire("k", {.ttl = 500ms, .extend_every = 100ms, .safety_margin = 100ms});
  const auto give_up = Clock::now() + 2s;
  bool flipped_back = false;
  bool seen_lost = false;
  while (Clock::now() < give_up) {
    const bool lost = lease.lost();
    if (seen_lost && !lost) flipped_back = true;
    seen_lost = seen_lost || lost;
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_TRUE(seen_lost);
  EXPECT_FALSE(flipped_back) << "lost() must stay true once it was true";
}

TEST(Watchdog, ALeaseTheServerNoLongerHoldsIsStoppedWhileTheOthersInItsBatchGoOn) {
  Harness h;
  distrlock::Lease doomed = h.manager->acquire("doomed", {.ttl = 2s, .extend_every = 100ms});
  distrlock::Lease fine = h.manager->acquire("fine", {.ttl = 2s, .extend_every = 100ms});
  h.backend->failing_key = "doomed";
  h.backend->extends_fail_for_one = true;
  EXPECT_TRUE(eventually([&] { return doomed.stop_token().stop_requested(); }, 1s));
  std::this_thread::sleep_for(2500ms);  // longer than the TTL: only extensions keep `fine`
  EXPECT_FALSE(fine.lost());
  EXPECT_FALSE(fine.stop_token().stop_requested());
}

TEST(Watchdog, ALeaseWhoseExtensionStallsDoesNotHoldBackTheOthers) {
  Harness h;
  h.backend->stalled_key = "stalled";
  distrlock::Lease stalled = h.manager->acquire("stalled", {.ttl = 60s, .extend_every = 100ms});
  distrlock::Lease quick = h.manager->acquire("quick", {.ttl = 600ms, .extend_every = 150ms});
  std::this_thread::sleep_for(3s);  // five of quick's TTLs, while every statement with `stalled` in it hangs
  EXPECT_FALSE(quick.lost()) << "a stalled lease's statement held back another lease's extension";
  EXPECT_FALSE(stalled.lost()) << "its own deadline is still 50 s away";
}

TEST(Watchdog, AStopCallbackMayDropTheLastLeaseAfterItsManagerIsGone) {
  auto h = std::make_unique<Harness>();
  FaultBackend* backend = h->backend;
  std::optional<distrlock::Lease> lease = h->manager->acquire("k", {.ttl = 1s, .extend_every = 100ms});
  std::atomic<bool> dropped{false};
  std::stop_callback on_stop(lease->stop_token(), [&] {
    lease.reset();  // the last reference to the Manager's state goes with it, on the watchdog thread
    dropped = true;
  });
  h->manager.reset();  // the Manager is gone; the Lease keeps what it needs alive
  backend->failing_key = "k";
  backend->extends_fail_for_one = true;
  EXPECT_TRUE(eventually([&] { return dropped.load(); }, 3s));
  // No std::terminate (a thread joining itself), and the release still went out, from the extender thread. The
  // backend died with the last lease, so the count was read inside the callback's aftermath only if it lives:
  // reaching this line without an abort is the point.
  h->backend = nullptr;
}

TEST(Watchdog, DoExclusivelyReportsLeaseLostWhenTheFinalReleaseFindsTheKeyTaken) {
  Harness h;
  std::error_code ec;
  const auto result = h.manager->do_exclusively(
      "k", {.ttl = 30s},
      [&](std::stop_token) {
        h.backend->steal("k");  // a paused holder's lease, taken over behind its back
        return 42;
      },
      ec);
  EXPECT_EQ(ec, errc::lease_lost);
  EXPECT_FALSE(result.has_value());
}

TEST(Watchdog, LeaseDeadlinesAreKeptOnTheBootClock) {
  // CLOCK_MONOTONIC (steady_clock) stops while the machine is suspended, CLOCK_BOOTTIME does not: a holder
  // resumed after the server expired its lease must find its deadline passed. Suspend cannot be staged in a
  // test; pin the clock the deadlines use instead.
  timespec boot{};
  ::clock_gettime(CLOCK_BOOTTIME, &boot);
  const auto expected = std::chrono::seconds(boot.tv_sec) + std::chrono::nanoseconds(boot.tv_nsec);
  const auto got = LeaseClock::now().time_since_epoch();
  EXPECT_GE(got, expected);
  EXPECT_LT(got - expected, std::chrono::milliseconds(100));
}

TEST(Watchdog, AMovedFromLeaseIsSafeToObserve) {
  Harness h;
  distrlock::Lease lease = h.manager->acquire("k", {.ttl = 30s});
  distrlock::Lease moved = std::move(lease);
  // NOLINTBEGIN(bugprone-use-after-move): observing a moved-from Lease is the behaviour under test
  EXPECT_TRUE(lease.key().empty());
  EXPECT_TRUE(lease.token().empty());
  EXPECT_EQ(lease.fencing_token(), 0);
  EXPECT_TRUE(lease.lost());
  EXPECT_TRUE(lease.stop_token().stop_requested());
  std::error_code ec;
  lease.release(ec);
  EXPECT_EQ(ec, errc::already_released);
  // NOLINTEND(bugprone-use-after-move)
  EXPECT_FALSE(moved.lost());
}

TEST(Watchdog, ALeaseDestroyedInItsStopCallbackIsReleasedByTheExtender) {
  Harness h;
  std::optional<distrlock::Lease> lease = h.manager->acquire("k", {.ttl = 1s, .extend_every = 100ms});
  std::atomic<bool> dropped{false};
  std::stop_callback on_stop(lease->stop_token(), [&] {
    lease.reset();
    dropped = true;
  });
  h.backend->extends_never_return = true;  // the lease runs out; the extender is stuck until healed
  EXPECT_TRUE(eventually([&] { return dropped.load(); }, 3s));
  const int before = h.backend->releases.load();
  h.backend->heal();
  EXPECT_TRUE(eventually([&] { return h.backend->releases.load() > before; }, 2s))
      << "the release was handed to the extender thread";
}

}  // namespace
