// ssl-mode=required must refuse a connection that is not encrypted. Connector/C goes on in plain text when the
// server offers no TLS (it refuses only when told to verify the certificate), so the library checks every
// connection it opens, pooled or the one that sends KILL QUERY, once it is connected.
//
// The test server runs with TLS on (scripts/services), so a relay in front of it plays the server with TLS off:
// it clears CLIENT_SSL in the server's greeting, as a server without TLS (or an attacker on the way) would send
// it. The client then logs in without TLS; the server, which does not require TLS of root, lets it in.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

std::string url_port(const std::string& url) {
  const std::size_t slash = url.find('/', url.find("://") + 3);
  const std::size_t colon = url.rfind(':', slash);
  return url.substr(colon + 1, slash - colon - 1);
}

std::string with_port(const std::string& url, unsigned short port) {
  const std::size_t slash = url.find('/', url.find("://") + 3);
  const std::size_t colon = url.rfind(':', slash);
  return url.substr(0, colon + 1) + std::to_string(port) + url.substr(slash);
}

/// A TCP relay to the server on 127.0.0.1:`upstream` that removes the server's TLS capability from the greeting
/// of every connection after the first `keep_tls` ones.
class TlsStripper {
 public:
  TlsStripper(unsigned short upstream, int keep_tls) : upstream_(upstream), keep_tls_(keep_tls) {
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listener_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(listener_, 16), 0);
    socklen_t len = sizeof a;
    ::getsockname(listener_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { accept_loop(); });
  }
  ~TlsStripper() {
    stop_ = true;
    ::shutdown(listener_, SHUT_RDWR);
    acceptor_.join();  // first: then nothing adds to threads_ any more
    for (std::thread& t : threads_) t.join();
    ::close(listener_);
  }
  TlsStripper(const TlsStripper&) = delete;
  TlsStripper& operator=(const TlsStripper&) = delete;

  unsigned short port() const { return port_; }
  /// Connections whose greeting lost its TLS capability.
  int stripped() const { return stripped_.load(); }

 private:
  void accept_loop() {
    int n = 0;
    while (!stop_) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int client = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
      if (client < 0) continue;
      const bool strip = n++ >= keep_tls_;
      std::lock_guard lk(mu_);
      threads_.emplace_back([this, client, strip] { pump(client, strip); });
    }
  }

  void pump(int client, bool strip) {
    const int server = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(upstream_);
    if (::connect(server, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(client);
      ::close(server);
      return;
    }
    std::string greeting;  // the server's first packet, held back until it is whole
    bool greeted = false;
    char buf[16384];
    while (!stop_) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      if ((p[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t got = ::read(client, buf, sizeof buf);
        if (got <= 0 || ::send(server, buf, static_cast<std::size_t>(got), MSG_NOSIGNAL) != got) break;
      }
      if ((p[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t got = ::read(server, buf, sizeof buf);
        if (got <= 0) break;
        if (greeted) {
          if (::send(client, buf, static_cast<std::size_t>(got), MSG_NOSIGNAL) != got) break;
          continue;
        }
        greeting.append(buf, static_cast<std::size_t>(got));
        if (greeting.size() < 4) continue;
        const std::size_t length = static_cast<unsigned char>(greeting[0]) |
                                   (static_cast<unsigned char>(greeting[1]) << 8U) |
                                   (static_cast<unsigned char>(greeting[2]) << 16U);
        if (greeting.size() < 4 + length) continue;
        if (strip) {
          // Protocol 10 greeting: version byte, server version (NUL-terminated), thread id (4), scramble (8),
          // filler (1), then the low 16 capability bits; CLIENT_SSL is 0x0800.
          const std::size_t version_end = greeting.find('\0', 5);
          const std::size_t caps = version_end + 1 + 4 + 8 + 1;
          greeting[caps + 1] = static_cast<char>(static_cast<unsigned char>(greeting[caps + 1]) & ~0x08U);
          ++stripped_;
        }
        greeted = true;
        if (::send(client, greeting.data(), greeting.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(greeting.size()))
          break;
      }
    }
    ::close(client);
    ::close(server);
  }

  unsigned short upstream_;
  int keep_tls_;
  int listener_ = -1;
  unsigned short port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> stripped_{0};
  std::mutex mu_;
  std::vector<std::thread> threads_;  // GUARDED_BY(mu_) while the accept loop runs
  std::thread acceptor_;              // runs accept_loop(); joined before threads_
};

class MysqlTlsEnforced : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = dltest::server_url(dltest::backend("mysql"));
    ASSERT_FALSE(url_.empty());
    key_ = dltest::unique_key("tls");
    distrlock::Manager::open(url_).migrate();  // directly: the cases below may not get in
  }
  std::string url_;
  std::string key_;
};

TEST_F(MysqlTlsEnforced, SslModeRequiredRefusesAServerThatOffersNoTls) {
  TlsStripper relay(static_cast<unsigned short>(std::stoi(url_port(url_))), /*keep_tls=*/0);
  auto m = distrlock::Manager::open(with_port(url_, relay.port()) + "?ssl-mode=required");
  std::error_code ec;
  EXPECT_FALSE(m.lock(key_).try_acquire(30s, ec, Call{.deadline = Clock::now() + 2s}));
  EXPECT_EQ(ec, errc::unavailable) << ec.message();
  EXPECT_GE(relay.stripped(), 1) << "the relay did not take TLS away: the test proves nothing";
}

TEST_F(MysqlTlsEnforced, TheSameServerWithoutSslModeIsUsedInPlainText) {
  // The control for the test above: the relay itself works, and only ssl-mode makes the difference.
  TlsStripper relay(static_cast<unsigned short>(std::stoi(url_port(url_))), /*keep_tls=*/0);
  auto m = distrlock::Manager::open(with_port(url_, relay.port()));
  distrlock::Lock lock = m.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s));
  lock.release();
  EXPECT_GE(relay.stripped(), 1);
}

TEST_F(MysqlTlsEnforced, SslModeWithAnUnderscoreIsTheSameParameter) {
  TlsStripper relay(static_cast<unsigned short>(std::stoi(url_port(url_))), /*keep_tls=*/0);
  auto refused = distrlock::Manager::open(with_port(url_, relay.port()) + "?ssl_mode=REQUIRED");
  std::error_code ec;
  EXPECT_FALSE(refused.lock(key_).try_acquire(30s, ec, Call{.deadline = Clock::now() + 2s}));
  EXPECT_EQ(ec, errc::unavailable) << ec.message();

  auto direct = distrlock::Manager::open(url_ + "?ssl_mode=required");  // the real server has TLS on
  distrlock::Lock lock = direct.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s));
  lock.release();
}

TEST_F(MysqlTlsEnforced, TheKillQueryConnectionIsRefusedTooWhenItIsNotEncrypted) {
  // The pooled connection (the relay's first) keeps TLS; the one that would send KILL QUERY loses it.
  TlsStripper relay(static_cast<unsigned short>(std::stoi(url_port(url_))), /*keep_tls=*/1);
  distrlock::Options o;
  o.pool_size = 1;
  auto m = distrlock::Manager::open(with_port(url_, relay.port()) + "?ssl-mode=required", o);
  m.migrate();
  distrlock::Lock lock = m.lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s));  // opens the pooled connection, over TLS
  lock.release();
  ASSERT_EQ(relay.stripped(), 0);

  // Another session holds the row, so the acquire waits on its lock; a stop request then sends a KILL QUERY from
  // a background thread, over a connection of its own, which the relay strips of TLS.
  auto blocker = dltest::backend("mysql").open_session(url_);
  blocker->query("START TRANSACTION");
  distrlock::Lock holder = m.lock(key_);
  ASSERT_TRUE(holder.try_acquire(30s, Call{.connection = blocker->native()}));
  auto admin = dltest::backend("mysql").open_session(url_);
  const std::string waiting =
      "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Query' AND "
      "INFO LIKE CONCAT('%ON DUPLICATE', ' KEY UPDATE%')";  // split, so that this query does not count itself
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(300ms);
    stop.request_stop();
  });
  std::error_code ec;
  lock.try_acquire(30s, ec, Call{.deadline = Clock::now() + 10s, .stop = stop.get_token()});
  canceller.join();
  EXPECT_EQ(ec, errc::cancelled) << ec.message();
  const auto give_up = Clock::now() + 3s;
  while (relay.stripped() < 1 && Clock::now() < give_up) std::this_thread::sleep_for(10ms);
  EXPECT_GE(relay.stripped(), 1) << "no KILL QUERY connection was attempted";
  // Refused before sending anything: the statement still waits for the row on the server (until the blocker
  // rolls back, or its own max_statement_time).
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(admin->query(waiting), "1") << "the KILL QUERY went out over a connection that was not encrypted";
  blocker->query("ROLLBACK");
}

}  // namespace
