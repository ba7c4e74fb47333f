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

#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

namespace dltest {
namespace {

/// Runs `body` in a child process whose /etc/resolv.conf names a DNS server that never answers (a UDP socket of
/// the child's own on 127.0.0.77:53 that reads nothing), in a mount namespace of its own so nothing else sees it.
/// Returns the child's exit status; 100+ means the setup failed.
template <class Body>
int with_a_resolver_that_never_answers(Body body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    char dir[] = "/tmp/distrlock-dns-XXXXXX";
    if (::mkdtemp(dir) == nullptr) ::_exit(101);
    const std::string conf = std::string(dir) + "/resolv.conf";
    std::ofstream(conf) << "nameserver 127.0.0.77\noptions timeout:5 attempts:2\n";
    if (::unshare(CLONE_NEWNS) != 0) ::_exit(102);
    if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) ::_exit(103);
    if (::mount(conf.c_str(), "/etc/resolv.conf", nullptr, MS_BIND, nullptr) != 0) ::_exit(104);
    const int udp = ::socket(AF_INET, SOCK_DGRAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    a.sin_addr.s_addr = htonl(0x7f00004d);  // 127.0.0.77
    if (udp < 0 || ::bind(udp, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) ::_exit(105);
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

TEST_P(Partition, AHostNameThatNeverResolvesFailsTheCallByItsDeadline) {
  // The server's URL with its host replaced by a name only DNS could answer for.
  std::string url = url_;
  const std::size_t host = url.find("127.0.0.1");
  ASSERT_NE(host, std::string::npos) << url;
  url.replace(host, 9, "db.distrlock.test");
  const int status = with_a_resolver_that_never_answers([&] {
    distrlock::Options o = options();
    o.connect_timeout = std::chrono::seconds(30);  // the call's deadline must be what bounds the lookup
    distrlock::Manager m = distrlock::Manager::open(url, o);
    distrlock::Lock lock = m.lock(key());
    std::error_code ec;
    const auto started = Clock::now();
    lock.try_acquire(std::chrono::seconds(30), ec, distrlock::Call{.deadline = Clock::now() + std::chrono::milliseconds(500)});
    const auto took = Clock::now() - started;
    if (ec != distrlock::errc::unavailable && ec != distrlock::errc::timeout) return 1;
    return took < std::chrono::milliseconds(500 + 500) ? 0 : 2;  // slack: 500 ms of scheduling
  });
  EXPECT_EQ(status, 0) << "1: the call did not fail as unavailable or timeout; 2: it ran past its deadline "
                          "(the resolver waits 5 s per try); 100+: the test's setup failed";
}

}  // namespace
}  // namespace dltest
