// The Lock operations, with the meaning the original package gave them.
#include <atomic>
#include <latch>
#include <set>
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::Clock;
using distrlock::errc;

TEST_P(Conformance, AcquiringAHeldKeyWithANewTokenFailsWithAlreadyAcquired) {
  distrlock::Lock holder = manager().lock(key());
  holder.acquire(30s);

  distrlock::Lock other = manager().lock(key());
  std::error_code ec;
  other.acquire(30s, 0ms, ec);
  EXPECT_EQ(ec, errc::already_acquired);
  EXPECT_FALSE(other.token().has_value());
}

TEST_P(Conformance, TryAcquireOfABusyKeyReturnsFalseWithoutAnError) {
  distrlock::Lock holder = manager().lock(key());
  ASSERT_TRUE(holder.try_acquire(30s));
  distrlock::Lock other = manager().lock(key());
  std::error_code ec;
  EXPECT_FALSE(other.try_acquire(30s, ec));
  EXPECT_FALSE(ec) << ec.message();
}

TEST_P(Conformance, AcquireReleaseThenAcquireAgainSucceeds) {
  distrlock::Lock lock = manager().lock(key());
  lock.acquire(30s);
  lock.release();
  EXPECT_FALSE(lock.token().has_value());
  lock.acquire(30s);
  EXPECT_TRUE(lock.token().has_value());
}

TEST_P(Conformance, OfTenConcurrentAcquirersOfOneKeyExactlyOneWins) {
  std::atomic<int> wins{0};
  std::atomic<int> busy{0};
  std::atomic<int> other_errors{0};
  std::latch start(10);  // every thread is ready before any sends its acquire
  std::vector<std::thread> threads;
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([&] {
      distrlock::Lock lock = manager().lock(key());
      std::error_code ec;
      start.arrive_and_wait();
      lock.acquire(30s, 0ms, ec);
      if (!ec) {
        ++wins;
      } else if (ec == errc::already_acquired) {
        ++busy;
      } else {
        ++other_errors;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 1);
  EXPECT_EQ(busy.load(), 9);
  EXPECT_EQ(other_errors.load(), 0);
}

/// Ten Managers, as ten processes would have, each with its connection already open, race for a fresh key at
/// one instant, twenty times over: each race has exactly one winner, and the losers are told the key is busy.
TEST_P(Conformance, TenManagersRacingForAFreshKeyAtOnceGrantItToExactlyOne) {
  constexpr int racers = 10;
  constexpr int rounds = 20;
  std::vector<distrlock::Manager> managers;
  for (int i = 0; i < racers; ++i) {
    managers.push_back(other_manager());
    // Warm-up: open the pooled connection, so the race is between statements, not between connects.
    ASSERT_TRUE(managers.back().lock(key() + "/warm-up/" + std::to_string(i)).try_acquire(30s));
  }
  for (int round = 0; round < rounds; ++round) {
    const std::string k = key() + "/" + std::to_string(round);
    std::atomic<int> wins{0};
    std::atomic<int> busy{0};
    std::atomic<int> errors{0};
    std::latch start(racers);
    std::vector<std::thread> threads;
    for (int i = 0; i < racers; ++i) {
      threads.emplace_back([&, i] {
        distrlock::Lock lock = managers[static_cast<std::size_t>(i)].lock(k);
        std::error_code ec;
        start.arrive_and_wait();
        if (lock.try_acquire(30s, ec)) {
          ++wins;
        } else if (!ec) {
          ++busy;
        } else {
          ++errors;
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(wins.load(), 1) << "round " << round;
    EXPECT_EQ(busy.load(), racers - 1) << "round " << round;
    EXPECT_EQ(errors.load(), 0) << "round " << round;
  }
}

/// Ten Managers take one key in turn, each retrying every 10 ms; while one holds it (from its grant until it
/// sends its release) no other Manager's grant may arrive. All start at one instant.
TEST_P(Conformance, TenManagersRetryingEvery10msAllWinInTurnAndNeverTogether) {
  constexpr int racers = 10;
  std::vector<distrlock::Manager> managers;
  for (int i = 0; i < racers; ++i) managers.push_back(other_manager());
  std::atomic<int> wins{0};
  std::atomic<int> holders{0};
  std::atomic<int> max_holders{0};
  std::atomic<int> errors{0};
  std::latch start(racers);
  std::vector<std::thread> threads;
  for (int i = 0; i < racers; ++i) {
    threads.emplace_back([&, i] {
      distrlock::Lock lock = managers[static_cast<std::size_t>(i)].lock(key());
      start.arrive_and_wait();
      const auto give_up = Clock::now() + 60s;
      while (Clock::now() < give_up) {
        std::error_code ec;
        if (lock.try_acquire(30s, ec)) {
          const int now_holding = ++holders;
          int seen = max_holders.load();
          while (now_holding > seen && !max_holders.compare_exchange_weak(seen, now_holding)) {
          }
          std::this_thread::sleep_for(5ms);
          --holders;
          lock.release(ec);
          if (ec) ++errors;
          ++wins;
          return;
        }
        if (ec) ++errors;
        std::this_thread::sleep_for(10ms);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), racers);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(max_holders.load(), 1);
}

TEST_P(Conformance, TenWorkersRetryingEvery10msAllWinInTurn) {
  std::atomic<int> wins{0};
  std::atomic<int> holders{0};
  std::atomic<int> max_holders{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 10; ++i) {
    threads.emplace_back([&] {
      distrlock::Lock lock = manager().lock(key());
      const auto give_up = Clock::now() + 30s;
      while (Clock::now() < give_up) {
        std::error_code ec;
        if (lock.try_acquire(30s, ec)) {
          const int now_holding = ++holders;
          int seen = max_holders.load();
          while (now_holding > seen && !max_holders.compare_exchange_weak(seen, now_holding)) {
          }
          std::this_thread::sleep_for(5ms);
          --holders;
          lock.release(ec);
          if (ec) ++errors;
          ++wins;
          return;
        }
        if (ec) ++errors;
        std::this_thread::sleep_for(10ms);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wins.load(), 10);
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(max_holders.load(), 1);
}

TEST_P(Conformance, ReleaseAfterTheTtlHasPassedFailsWithAlreadyReleased) {
  distrlock::Lock lock = manager().lock(key());
  lock.acquire(300ms);
  std::this_thread::sleep_for(600ms);
  std::error_code ec;
  lock.release(ec);
  EXPECT_EQ(ec, errc::already_released);
}

TEST_P(Conformance, AStaticTokenReacquiresReleasesThenLosesToARandomToken) {
  const std::string token = "static-" + unique_key();
  distrlock::Lock first = manager().lock(key());
  first.acquire_with_static_token(token, 30s);
  const auto first_fence = first.fencing_token();

  ASSERT_TRUE(first_fence.has_value());

  distrlock::Lock again = manager().lock(key());
  again.acquire_with_static_token(token, 30s);  // same token: re-acquires the held key
  EXPECT_EQ(again.token(), token);
  ASSERT_TRUE(again.fencing_token().has_value());
  EXPECT_GT(*again.fencing_token(), *first_fence);
  const std::int64_t again_fence = *again.fencing_token();

  again.release();
  EXPECT_FALSE(again.token().has_value());

  // The released key goes to a random token, with a fresh grant ...
  distrlock::Lock random = manager().lock(key());
  ASSERT_TRUE(random.try_acquire(30s));
  ASSERT_TRUE(random.fencing_token().has_value());
  EXPECT_GT(*random.fencing_token(), again_fence);

  // ... and the static token, which no longer holds it, is refused while the random token does.
  distrlock::Lock late = manager().lock(key());
  std::error_code ec;
  late.acquire_with_static_token(token, 30s, ec);
  EXPECT_EQ(ec, errc::already_acquired);
  EXPECT_FALSE(late.token().has_value());
  std::error_code extended;
  random.extend(30s, extended);
  EXPECT_FALSE(extended) << "the refused static token must not have disturbed the holder: " << extended.message();
}

TEST_P(Conformance, ExtendingAtHalfTheTtlKeepsTheLeaseAndAnUnextendedLeaseIsReleased) {
  distrlock::Lock lock = manager().lock(key());
  lock.acquire(1s);
  distrlock::Lock rival = manager().lock(key());
  for (int i = 0; i < 3; ++i) {
    std::this_thread::sleep_for(500ms);
    lock.extend();
    EXPECT_FALSE(rival.try_acquire(1s)) << "extension " << i << " did not keep the lease";
  }
  std::this_thread::sleep_for(2s);
  std::error_code ec;
  lock.extend(ec);
  EXPECT_EQ(ec, errc::already_released);
  EXPECT_FALSE(lock.token().has_value());
}

TEST_P(Conformance, AnExpiredLeaseCanBeTakenByAnotherToken) {
  distrlock::Lock first = manager().lock(key());
  first.acquire(200ms);
  std::this_thread::sleep_for(400ms);
  distrlock::Lock second = manager().lock(key());
  EXPECT_TRUE(second.try_acquire(30s));
  EXPECT_GT(second.fencing_token(), first.fencing_token());
}

TEST_P(Conformance, AcquireWithAWaitGetsTheKeyOnceTheHolderReleasesIt) {
  distrlock::Lock holder = manager().lock(key());
  holder.acquire(30s);
  const auto started = Clock::now();
  std::thread releaser([&] {
    std::this_thread::sleep_for(300ms);
    holder.release();
  });
  distrlock::Lock waiter = manager().lock(key());
  std::error_code ec;
  waiter.acquire(30s, 5s, ec);
  const auto took = Clock::now() - started;
  releaser.join();
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(waiter.token().has_value());
  // The release comes at 300 ms; a waiter retries at least every 250 ms (its longest backoff), so it has the key
  // by 550 ms, plus 500 ms of slack for a loaded VM.
  EXPECT_LT(took, 1050ms);
}

TEST_P(Conformance, AWaitingAcquireGetsTheKeyWhenTheHoldersLeaseExpires) {
  distrlock::Lock holder = other_manager().lock(key());
  const auto holder_sent = Clock::now();
  ASSERT_TRUE(holder.try_acquire(1s));  // never extended, never released
  const auto holder_got = Clock::now();
  distrlock::Lock waiter = manager().lock(key());
  std::error_code ec;
  waiter.acquire(30s, 5s, ec);
  const auto got = Clock::now();
  EXPECT_FALSE(ec) << ec.message();
  ASSERT_TRUE(waiter.fencing_token().has_value());
  EXPECT_GT(*waiter.fencing_token(), *holder.fencing_token());
  // Not before the holder's lease ran out (it began after holder_sent, on the server's clock, which this host
  // shares) ...
  EXPECT_GE(got - holder_sent, 1s) << "the key was granted while the holder's lease was valid";
  // ... and soon after: a waiter sleeps no longer than the holder's time left, then retries; 500 ms of slack
  // for a loaded VM.
  EXPECT_LT(got - holder_got, 1500ms) << "the waiter was not woken by the holder's expiry";
}

TEST_P(Conformance, AcquireWithAWaitFailsWithAlreadyAcquiredWhenTheWaitRunsOut) {
  distrlock::Lock holder = manager().lock(key());
  holder.acquire(30s);
  distrlock::Lock waiter = manager().lock(key());
  std::error_code ec;
  const auto started = Clock::now();
  waiter.acquire(30s, 300ms, ec);
  EXPECT_EQ(ec, errc::already_acquired);
  EXPECT_GE(Clock::now() - started, 300ms);
  // The wait ends when it runs out: 300 ms, plus 500 ms of slack for a loaded VM.
  EXPECT_LT(Clock::now() - started, 800ms);
}

TEST_P(Conformance, AStopTokenCancelsAWaitingAcquire) {
  distrlock::Lock holder = manager().lock(key());
  holder.acquire(30s);
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  distrlock::Lock waiter = manager().lock(key());
  std::error_code ec;
  const auto started = Clock::now();
  waiter.acquire(30s, 10s, ec, distrlock::Call{.stop = stop.get_token()});
  const auto took = Clock::now() - started;
  canceller.join();
  EXPECT_EQ(ec, errc::cancelled);
  // The stop comes at 200 ms and ends the wait at once: plus 500 ms of slack for a loaded VM.
  EXPECT_LT(took, 700ms);
  EXPECT_FALSE(waiter.token().has_value());
}

TEST_P(Conformance, ThrowingCallsThrowTheSameCodeTheirTwinsReport) {
  distrlock::Lock holder = manager().lock(key());
  holder.acquire(30s);
  distrlock::Lock other = manager().lock(key());
  try {
    other.acquire(30s);
    FAIL() << "acquire of a held key did not throw";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::already_acquired);
    EXPECT_NE(std::string(e.what()).find(key()), std::string::npos) << "the message names the key: " << e.what();
  }
}

TEST_P(Conformance, FencingTokensStrictlyIncreaseOverAThousandMixedGrants) {
  const std::string static_token = "fence-" + unique_key();
  std::vector<std::int64_t> fences;
  auto record = [&](const distrlock::Lock& lock) {
    // A grant without a fencing token is a failure; its 0 then also breaks the strict order checked below.
    if (!lock.fencing_token().has_value()) ADD_FAILURE() << "grant " << fences.size() << " reported no fencing token";
    fences.push_back(lock.fencing_token().value_or(0));
  };
  while (fences.size() < 1000) {
    distrlock::Lock lock = manager().lock(key());
    switch (fences.size() % 10) {
      case 0:  // every fiftieth: a grant left to expire; the next grant takes the expired row over
        if (fences.size() % 50 == 0) {
          ASSERT_TRUE(lock.try_acquire(distrlock::min_ttl));
          record(lock);
          std::this_thread::sleep_for(distrlock::min_ttl + 10ms);
          break;
        }
        [[fallthrough]];
      case 1:  // a static-token grant, re-acquired while held (a second grant), then released
        lock.acquire_with_static_token(static_token, 30s);
        record(lock);
        lock.acquire_with_static_token(static_token, 30s);
        record(lock);
        lock.release();
        break;
      default:  // a random-token grant, released
        ASSERT_TRUE(lock.try_acquire(30s));
        record(lock);
        lock.release();
    }
  }
  ASSERT_FALSE(fences.empty());
  EXPECT_GE(fences.front(), 1) << "fencing tokens start at 1 on a fresh key";
  for (std::size_t i = 1; i < fences.size(); ++i) ASSERT_GT(fences[i], fences[i - 1]) << "grant " << i;
}

}  // namespace
}  // namespace dltest
