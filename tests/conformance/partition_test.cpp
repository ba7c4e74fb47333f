// Loss detection on the bad day: the holder's path to the database hangs or goes dark, and a contender with a
// direct connection polls for the key. The holder's stop must fire before the contender can be granted it.
#include <atomic>
#include <optional>
#include <thread>

#include "core/lease_clock.hpp"
#include "fixture.hpp"
#include "relay.hpp"

namespace dltest {
namespace {

using distrlock::Clock;
using distrlock::detail::LeaseClock;

class Partition : public ServerConformance {
 protected:
  struct Outcome {
    bool stop_fired = false;
    bool granted = false;
    LeaseClock::time_point stop_at{};
    LeaseClock::time_point grant_sent_at{};  // when the contender sent the attempt that was granted
    std::int64_t holder_fence = 0;
    std::int64_t contender_fence = 0;
  };

  /// A holder with a 3 s lease through a relay; the relay is cut in `mode`; a contender polls every 20 ms over a
  /// direct connection until it is granted the key or 12 s pass (TTL + the longest reconnect bound, with room).
  Outcome cut_holder_off(Relay::Mode mode) {
    Outcome out;
    Relay relay("127.0.0.1", url_port(url_));
    distrlock::Options o = options();
    distrlock::Manager holder = distrlock::Manager::open(relay.rewrite(url_), o);
    std::optional<distrlock::Lease> lease =
        holder.acquire(key(), {.ttl = std::chrono::seconds(3), .release_timeout = std::chrono::milliseconds(300)});
    out.holder_fence = lease->fencing_token();
    std::atomic<std::int64_t> stopped{0};
    std::stop_callback on_stop(lease->stop_token(),
                               [&] { stopped = LeaseClock::now().time_since_epoch().count(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // one extension may or may not get through
    if (!relay.set_mode(mode)) return out;

    distrlock::Manager contender = other_manager();
    distrlock::Lock lock = contender.lock(key());
    const auto give_up = Clock::now() + std::chrono::seconds(12);
    while (Clock::now() < give_up) {
      const LeaseClock::time_point sent = LeaseClock::now();
      if (lock.try_acquire(std::chrono::seconds(30))) {
        out.granted = true;
        out.grant_sent_at = sent;
        out.contender_fence = *lock.fencing_token();
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    out.stop_fired = stopped.load() != 0;
    out.stop_at = LeaseClock::time_point(LeaseClock::duration(stopped.load()));
    EXPECT_TRUE(lease->lost());
    relay.set_mode(Relay::Mode::forward);  // let the holder's release (and its Manager's shutdown) go quickly
    lease.reset();
    if (out.granted) lock.release();
    return out;
  }

  void expect_stopped_before_granted(const Outcome& o) {
    ASSERT_TRUE(o.granted) << "the contender never got the key: the holder's lease never expired?";
    ASSERT_TRUE(o.stop_fired) << "the holder's stop never fired";
    EXPECT_LT(o.stop_at, o.grant_sent_at)
        << "the holder was told to stop "
        << std::chrono::duration_cast<std::chrono::milliseconds>(o.stop_at - o.grant_sent_at).count()
        << " ms after the contender asked for (and got) the key";
    EXPECT_GT(o.contender_fence, o.holder_fence);
  }
};

TEST_P(Partition, AHolderWhosePathHangsIsStoppedBeforeAContenderIsGrantedTheKey) {
  expect_stopped_before_granted(cut_holder_off(Relay::Mode::hang));
}

TEST_P(Partition, AHolderWhosePathGoesDarkIsStoppedBeforeAContenderIsGrantedTheKey) {
  expect_stopped_before_granted(cut_holder_off(Relay::Mode::blackhole));
}

INSTANTIATE_TEST_SUITE_P(ServerBackends, Partition, ::testing::ValuesIn(server_backend_names()), backend_test_name);

}  // namespace
}  // namespace dltest
