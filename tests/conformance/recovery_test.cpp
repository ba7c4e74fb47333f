// What the library does when the server goes away and comes back.
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

TEST_P(ServerConformance, ThePoolRecoversAfterAServerRestart) {
  distrlock::Lock before = manager().lock(key() + "/before");
  ASSERT_TRUE(before.try_acquire(30s));
  ASSERT_EQ(services("restart", backend_->service), 0);

  distrlock::Lock after = manager().lock(key() + "/after");
  EXPECT_TRUE(after.try_acquire(30s, Call{.deadline = Clock::now() + 20s}));
  before.release();
}

TEST_P(ServerConformance, FencingTokensKeepGrowingAcrossARestartAndACrash) {
  // A grant of the shortest TTL, never released: the server goes down right after it (so only a durable grant
  // survives), and the next grant, after the restart or the crash, takes the expired row over. Its fence must
  // be larger. (No release: releases may commit asynchronously, and a lost one would leave the key busy.)
  auto grant = [&](const char* when) -> std::int64_t {
    SCOPED_TRACE(when);
    distrlock::Manager m = other_manager();  // a fresh pool: no connection from before the restart or crash
    distrlock::Lock lock = m.lock(key());
    std::error_code ec;
    // 20 s: the server may still be finishing its crash recovery.
    EXPECT_TRUE(lock.try_acquire(distrlock::min_ttl, ec, Call{.deadline = Clock::now() + 20s})) << ec.message();
    return lock.fencing_token().value_or(0);
  };
  const std::int64_t before = grant("before");
  ASSERT_GT(before, 0);
  ASSERT_EQ(services("restart", backend_->service), 0);
  const std::int64_t after_restart = grant("after a restart");
  EXPECT_GT(after_restart, before) << "a restart lost the fence";
  ASSERT_TRUE(crash(backend_->service));
  ASSERT_EQ(services("up", backend_->service), 0);
  const std::int64_t after_crash = grant("after a crash");
  EXPECT_GT(after_crash, after_restart) << "a crash lost the fence: the grant was not durable";
}

TEST_P(ServerConformance, ALeaseDestroyedWhileTheServerIsDownDoesNotThrowAndLogsTheFailure) {
  {
    auto lease = std::make_optional(manager().acquire(key(), {.ttl = 30s, .release_timeout = 500ms}));
    ASSERT_EQ(services("down", backend_->service), 0);
    const auto started = Clock::now();
    lease.reset();  // noexcept: a throw would terminate the test
    // Refused at once and retried until the 500 ms release_timeout, plus 500 ms of slack for a loaded VM. (The
    // timeout against a server that never answers is exercised in outcome_test.cpp.)
    EXPECT_LT(Clock::now() - started, 1s);
  }
  ASSERT_EQ(services("up", backend_->service), 0);
  EXPECT_TRUE(log_.contains(distrlock::LogLevel::error, "could not release"))
      << "the failed release must be reported to the logger";
}

TEST_P(ServerConformance, AnOperationAgainstAStoppedServerFailsWithUnavailableWithinItsDeadline) {
  const AttemptWhileDown a = try_acquire_while_the_server_is_down(500ms, 1s);
  EXPECT_EQ(a.ec, errc::unavailable) << a.ec.message();
  // The 1 s deadline, plus 500 ms of slack for a loaded VM (a refused connect returns at once).
  EXPECT_LT(a.took, 1500ms);
  EXPECT_FALSE(a.has_token);
}

TEST_P(ServerConformance, AnAcquireThatNeverReachedTheServerIsNotFollowedByAReleaseAttempt) {
  const AttemptWhileDown a = try_acquire_while_the_server_is_down(300ms, 500ms);
  EXPECT_EQ(a.ec, errc::unavailable) << a.ec.message();
  // No connection, so no grant can have happened: the outcome is known and there is nothing to undo. The call
  // returns at its 500 ms deadline, plus 400 ms of slack for a loaded VM; a release attempt after it (up to
  // 1 s of connection attempts) would overrun that. (That nothing is sent when no connection is free is
  // counted through a relay in outcome_test.cpp.)
  EXPECT_LT(a.took, 900ms);
  EXPECT_FALSE(log_.contains(distrlock::LogLevel::warning, "unknown outcome"))
      << ::testing::PrintToString(log_.lines());
}

}  // namespace
}  // namespace dltest
