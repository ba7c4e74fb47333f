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

TEST_P(ServerConformance, ALeaseDestroyedWhileTheServerIsDownDoesNotThrowAndLogsTheFailure) {
  {
    auto lease = std::make_optional(manager().acquire(key(), {.ttl = 30s, .release_timeout = 500ms}));
    ASSERT_EQ(services("down", backend_->service), 0);
    const auto started = Clock::now();
    EXPECT_NO_THROW(lease.reset());
    EXPECT_LT(Clock::now() - started, 5s);
  }
  ASSERT_EQ(services("up", backend_->service), 0);
  EXPECT_TRUE(log_.contains(distrlock::LogLevel::error, "could not release"))
      << "the failed release must be reported to the logger";
}

TEST_P(ServerConformance, AnOperationAgainstAStoppedServerFailsWithUnavailableWithinItsDeadline) {
  ASSERT_EQ(services("down", backend_->service), 0);
  distrlock::Options o = options();
  o.connect_timeout = 500ms;
  auto fresh = distrlock::Manager::open(url_, o);
  distrlock::Lock lock = fresh.lock(key());
  std::error_code ec;
  const auto started = Clock::now();
  lock.try_acquire(30s, ec, Call{.deadline = Clock::now() + 1s});
  const auto took = Clock::now() - started;
  ASSERT_EQ(services("up", backend_->service), 0);
  EXPECT_EQ(ec, errc::unavailable) << ec.message();
  EXPECT_LT(took, 3s);
  EXPECT_FALSE(lock.token().has_value());
}

}  // namespace
}  // namespace dltest
