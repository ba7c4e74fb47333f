// MySQL/MariaDB-specific behaviour: round trips, time zones, midnight, binary keys, KILL QUERY and KILL
// CONNECTION, deadlocks and lock-wait timeouts, migrations, URLs.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <mysql.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <charconv>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <thread>

#include "support.hpp"

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

/// A plain Connector/C connection for the test's own bookkeeping (status counters, the process list).
class Sql {
 public:
  explicit Sql(const std::string& url) : conn_(connect(url, 0)) {}

  /// A blocking connection to mysql://user[:password]@host:port/database, as scripts/services prints it.
  static MYSQL* connect(const std::string& url, unsigned long flags, bool tls = false) {
    MYSQL* conn = mysql_init(nullptr);
    const my_bool yes = 1;
    if (tls) mysql_options(conn, MYSQL_OPT_SSL_ENFORCE, &yes);
    std::string rest = url.substr(url.find("://") + 3);
    const std::size_t slash = rest.find('/');
    const std::string database = rest.substr(slash + 1);
    rest = rest.substr(0, slash);
    const std::size_t at = rest.rfind('@');
    const std::string user_info = rest.substr(0, at);
    const std::string host_port = rest.substr(at + 1);
    const std::size_t colon = user_info.find(':');
    const std::string user = user_info.substr(0, colon);
    const std::string password = colon == std::string::npos ? "" : user_info.substr(colon + 1);
    const std::size_t port_colon = host_port.rfind(':');
    unsigned int port = 3306;
    std::from_chars(host_port.data() + port_colon + 1, host_port.data() + host_port.size(), port);
    if (mysql_real_connect(conn, host_port.substr(0, port_colon).c_str(), user.c_str(), password.c_str(),
                           database.c_str(), port, nullptr, flags) == nullptr)
      ADD_FAILURE() << "cannot connect to " << url << ": " << mysql_error(conn);
    return conn;
  }
  ~Sql() { mysql_close(conn_); }
  Sql(const Sql&) = delete;
  Sql& operator=(const Sql&) = delete;

  /// Every row of the statement's result, each column as text ("NULL" for NULL).
  std::vector<std::vector<std::string>> rows(const std::string& sql) {
    std::vector<std::vector<std::string>> out;
    if (mysql_real_query(conn_, sql.data(), sql.size()) != 0) {
      ADD_FAILURE() << sql << ": " << mysql_errno(conn_) << " " << mysql_error(conn_);
      return out;
    }
    MYSQL_RES* r = mysql_store_result(conn_);
    if (r == nullptr) return out;
    while (MYSQL_ROW row = mysql_fetch_row(r)) {
      const unsigned long* lengths = mysql_fetch_lengths(r);
      std::vector<std::string> cells;
      for (unsigned int i = 0; i < mysql_num_fields(r); ++i)
        cells.push_back(row[i] == nullptr ? "NULL" : std::string(row[i], lengths[i]));
      out.push_back(std::move(cells));
    }
    mysql_free_result(r);
    return out;
  }
  std::string value(const std::string& sql) {
    const auto r = rows(sql);
    return r.empty() || r[0].empty() ? std::string() : r[0][0];
  }
  /// SHOW GLOBAL STATUS counters (counted as Com_show_status, which no assertion looks at).
  std::map<std::string, long> global_status() {
    std::map<std::string, long> out;
    for (const auto& row : rows("SHOW GLOBAL STATUS WHERE Variable_name IN ('Questions', 'Com_insert', "
                                "'Com_update', 'Com_update_multi', 'Com_select', 'Com_begin', 'Com_commit')"))
      out[row[0]] = std::stol(row[1]);
    return out;
  }
  /// Ids of the server's client connections other than this one.
  std::set<std::string> connection_ids() {
    std::set<std::string> ids;
    for (const auto& row : rows("SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND "
                                "COMMAND <> 'Daemon' AND USER <> 'system user'"))
      ids.insert(row[0]);
    return ids;
  }

 private:
  MYSQL* conn_;
};

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

/// A TCP relay between the library and the server that counts the commands clients send. Every MySQL
/// command (COM_QUERY, COM_PING, ...) is a new packet whose sequence number is 0; every other client packet
/// (the handshake response, continuations of long packets) continues an exchange. So the count of
/// sequence-0 packets is the count of round trips, whatever the packets hold.
class CommandCounter {
 public:
  explicit CommandCounter(unsigned short server_port) : server_port_(server_port) {
    listener_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    socklen_t len = sizeof addr;
    if (::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listener_, 16) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len) != 0)
      ADD_FAILURE() << "cannot listen for the relay";
    port_ = ntohs(addr.sin_port);
    acceptor_ = std::jthread([this](std::stop_token stop) { accept_loop(stop); });
  }
  ~CommandCounter() {
    acceptor_.request_stop();
    acceptor_.join();
    std::lock_guard lk(mu_);
    for (auto& t : relays_) t.request_stop();
    relays_.clear();  // joins
    ::close(listener_);
  }
  unsigned short port() const { return port_; }
  long commands() const { return commands_.load(); }

 private:
  void accept_loop(const std::stop_token& stop) {
    while (!stop.stop_requested()) {
      pollfd p{listener_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      const int client = ::accept(listener_, nullptr, nullptr);
      if (client < 0) continue;
      const int server = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      addr.sin_port = htons(server_port_);
      if (::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        ::close(client);
        ::close(server);
        continue;
      }
      std::lock_guard lk(mu_);
      relays_.emplace_back([this, client, server](std::stop_token st) { relay(st, client, server); });
    }
  }

  void relay(const std::stop_token& stop, int client, int server) {
    unsigned char header[4];
    std::size_t have = 0;     // header bytes seen of the current client packet
    std::size_t payload = 0;  // payload bytes still to come
    char buf[65536];
    bool open = true;
    while (open && !stop.stop_requested()) {
      pollfd p[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      for (int side = 0; side < 2 && open; ++side) {
        if ((p[side].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = ::read(p[side].fd, buf, sizeof buf);
        if (n <= 0) {
          open = false;
          break;
        }
        if (side == 0) {
          for (ssize_t i = 0; i < n;) {
            if (payload > 0) {
              const std::size_t take = std::min<std::size_t>(payload, static_cast<std::size_t>(n - i));
              payload -= take;
              i += static_cast<ssize_t>(take);
              continue;
            }
            header[have++] = static_cast<unsigned char>(buf[i++]);
            if (have == 4) {
              payload = header[0] | (header[1] << 8) | (header[2] << 16);
              if (header[3] == 0) ++commands_;
              have = 0;
            }
          }
        }
        const int to = side == 0 ? server : client;
        for (ssize_t sent = 0; sent < n;) {
          const ssize_t w = ::write(to, buf + sent, static_cast<std::size_t>(n - sent));
          if (w <= 0) {
            open = false;
            break;
          }
          sent += w;
        }
      }
    }
    ::close(client);
    ::close(server);
  }

  const unsigned short server_port_;
  int listener_ = -1;
  unsigned short port_ = 0;
  std::atomic<long> commands_{0};
  std::mutex mu_;
  std::vector<std::jthread> relays_;
  std::jthread acceptor_;  // last: stops before the members it uses die
};

class Mysql : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = server_url(backend("mysql"));
    ASSERT_FALSE(url_.empty());
    admin_.emplace(url_);
    manager_.emplace(open());
    manager_->migrate();
    key_ = unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  distrlock::Manager open(distrlock::Options o = {}, const std::string& url = {}) {
    o.logger = log_.logger();
    return distrlock::Manager::open(url.empty() ? url_ : url, o);
  }
  std::unique_ptr<CallerSession> session() { return backend("mysql").open_session(url_); }
  /// What 20 cycles of {grant, busy answer, extend, release} on one pooled connection of a Manager opened with
  /// `query` appended to the URL sent through a relay that counts commands, and what the server counted.
  struct CycleCounts {
    long cycles = 20;
    long round_trips = 0;
    std::map<std::string, long> before, after;
    long delta(const std::string& name) const { return after.at(name) - before.at(name); }
  };
  CycleCounts count_cycles(const std::string& query) {
    CommandCounter relay(static_cast<unsigned short>(std::stoi(url_port(url_))));
    distrlock::Options o;
    o.pool_size = 1;
    auto m = open(o, with_port(url_, relay.port()) + query);
    distrlock::Lock lock = m.lock(key_);
    distrlock::Lock rival = m.lock(key_);
    CycleCounts n;
    EXPECT_TRUE(lock.try_acquire(30s));  // warm-up: opens the pooled connection
    lock.release();
    const long commands_before = relay.commands();
    n.before = admin_->global_status();
    for (long i = 0; i < n.cycles; ++i) {
      EXPECT_TRUE(lock.try_acquire(30s));
      EXPECT_FALSE(rival.try_acquire(30s));  // a busy answer, holder included, is one round trip too
      lock.extend();
      lock.release();
    }
    n.after = admin_->global_status();
    n.round_trips = relay.commands() - commands_before;
    return n;
  }
  /// A session whose open transaction holds key_'s row locked (through an acquire in it) until it rolls back.
  std::unique_ptr<CallerSession> hold_the_row_in_a_transaction() {
    auto s = session();
    s->query("START TRANSACTION");
    distrlock::Lock blocker = manager_->lock(key_);
    EXPECT_TRUE(blocker.try_acquire(30s, Call{.connection = s->native()}));
    return s;
  }
  /// Asserts that `waiter`'s acquire, blocked on the row lock, ends as a timeout at `call`'s 300 ms deadline: the
  /// statement carries max_statement_time a little inside the deadline (300 - min(100, 300 / 10) = 270 ms), so
  /// the server ends it itself; the call never runs past the deadline (the undo of the unknown outcome goes out
  /// from another thread). Slack: 250 ms of scheduling on a loaded VM.
  static void expect_killed_at_the_deadline(distrlock::Lock& waiter, const Call& call) {
    std::error_code ec;
    const auto started = Clock::now();
    EXPECT_FALSE(waiter.try_acquire(30s, ec, call));
    EXPECT_EQ(ec, errc::timeout) << ec.message();
    EXPECT_GE(Clock::now() - started, 270ms);
    EXPECT_LT(Clock::now() - started, 300ms + 250ms) << "the call ran past its deadline";
  }
  /// The connection ids a fresh single-connection Manager opened for `op`.
  std::set<std::string> new_connections(const std::set<std::string>& before) {
    std::set<std::string> out;
    for (const std::string& id : admin_->connection_ids())
      if (!before.contains(id)) out.insert(id);
    return out;
  }

  std::string url_;
  CapturedLog log_;
  std::optional<Sql> admin_;
  std::optional<distrlock::Manager> manager_;
  std::string key_;
};

TEST_F(Mysql, AcquireExtendAndReleaseAreOneRoundTripEach) {
  const CycleCounts n = count_cycles("");
  EXPECT_EQ(n.round_trips, 4 * n.cycles) << "every operation must be exactly one round trip";
  // What the packets held: each acquire one INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING (MariaDB 10.5+),
  // whose returned row names the holder; extend and release one UPDATE each; no BEGIN, no COMMIT.
  EXPECT_EQ(n.delta("Com_insert"), 2 * n.cycles);
  EXPECT_EQ(n.delta("Com_select"), 0);
  EXPECT_EQ(n.delta("Com_update"), 2 * n.cycles);
  EXPECT_EQ(n.delta("Com_begin") + n.delta("Com_commit"), 0);
  EXPECT_EQ(n.delta("Questions"), 4 * n.cycles + 1) << "+1: the second SHOW GLOBAL STATUS counts itself";
}

TEST_F(Mysql, WithoutReturningEveryOperationIsStillOneRoundTrip) {
  const CycleCounts n = count_cycles("?returning=off");
  EXPECT_EQ(n.round_trips, 4 * n.cycles) << "every operation must be exactly one round trip";
  // The statements MySQL 8 accepts: each acquire packet is the upsert plus the SELECT of the holder (which reads
  // nothing after a grant); extend and release one UPDATE each; no BEGIN, no COMMIT.
  EXPECT_EQ(n.delta("Com_insert"), 2 * n.cycles);
  EXPECT_EQ(n.delta("Com_select"), 2 * n.cycles);
  EXPECT_EQ(n.delta("Com_update"), 2 * n.cycles);
  EXPECT_EQ(n.delta("Com_begin") + n.delta("Com_commit"), 0);
  EXPECT_EQ(n.delta("Questions"), 6 * n.cycles + 1) << "+1: the second SHOW GLOBAL STATUS counts itself";
}

TEST_F(Mysql, ABusyAnswerNamesTheHolderAndItsTimeLeftFromTheSamePacket) {
  for (const std::string query : {"", "?returning=off"}) {
    SCOPED_TRACE(query.empty() ? "with RETURNING" : query);
    const std::string key = unique_key("busy");
    distrlock::Options o;
    o.owner = "report-host:42";
    auto holder_manager = open(o, url_ + query);
    distrlock::Lock holder = holder_manager.lock(key);
    ASSERT_TRUE(holder.try_acquire(30s));
    auto other_manager = open({}, url_ + query);
    distrlock::Lock other = other_manager.lock(key);
    try {
      other.acquire(30s);
      ADD_FAILURE() << "acquire of a held key did not throw";
    } catch (const distrlock::error& e) {
      EXPECT_EQ(e.code(), errc::already_acquired);
      const std::string what = e.what();
      EXPECT_NE(what.find("report-host:42"), std::string::npos) << what;
      EXPECT_NE(what.find("for another 29"), std::string::npos) << what;
    }
  }
}

TEST_F(Mysql, OnACallerConnectionABusyAnswerNamesTheHolderWhereTheServerHasReturning) {
  distrlock::Options o;
  o.owner = "report-host:43";
  auto holder_manager = open(o);
  distrlock::Lock holder = holder_manager.lock(key_);
  ASSERT_TRUE(holder.try_acquire(30s));
  MYSQL* conn = Sql::connect(url_, 0);
  const Call on_it{.connection = distrlock::NativeConnection::mysql(conn)};
  distrlock::Lock other = manager_->lock(key_);
  try {
    other.acquire(30s, 0s, on_it);
    ADD_FAILURE() << "acquire of a held key did not throw";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::already_acquired);
    EXPECT_NE(std::string(e.what()).find("report-host:43"), std::string::npos) << e.what();
  }
  mysql_close(conn);
}

TEST_F(Mysql, TheHeartbeatExtendsAThousandLeasesInAHandfulOfStatements) {
  constexpr int leases = 1000;
  std::vector<distrlock::Lease> held;
  held.reserve(leases);
  for (int i = 0; i < leases; ++i)
    held.push_back(manager_->acquire(key_ + "/" + std::to_string(i), {.ttl = 4s, .extend_every = 1s}));
  const auto before = admin_->global_status();
  std::this_thread::sleep_for(4500ms);  // longer than the TTL: only extensions keep them
  const auto after = admin_->global_status();
  const long batches = after.at("Com_update_multi") - before.at("Com_update_multi");
  // One batched UPDATE per heartbeat round: 4 or 5 rounds in 4.5 s at extend_every = 1 s, plus one split while
  // the leases' due times merge; at least 4 less one lost to a loaded VM (as for PostgreSQL).
  EXPECT_GE(batches, 3);
  EXPECT_LE(batches, 6) << "leases should be extended in batches, not one statement each";
  EXPECT_LE(after.at("Com_update") - before.at("Com_update"), 0) << "no lease should be extended on its own";
  int lost = 0;
  for (const auto& lease : held) lost += lease.lost() ? 1 : 0;
  EXPECT_EQ(lost, 0);
  auto other = open();
  for (int i = 0; i < leases; i += 97) {
    distrlock::Lock probe = other.lock(key_ + "/" + std::to_string(i));
    EXPECT_FALSE(probe.try_acquire(1s)) << "lease " << i << " expired";
  }
}

TEST_F(Mysql, SessionsWithDifferentTimeZonesCanNeverBothHoldAKey) {
  // Caller connections in autocommit, each with its own session time_zone: 19 hours apart in November.
  auto east = session();
  auto west = session();
  east->query("SET time_zone = 'Pacific/Kiritimati'");
  west->query("SET time_zone = 'America/New_York'");
  EXPECT_EQ(east->query("SELECT TIMESTAMPDIFF(HOUR, UTC_TIMESTAMP(), NOW())"), "14");
  const int west_offset = std::stoi(west->query("SELECT TIMESTAMPDIFF(HOUR, UTC_TIMESTAMP(), NOW())"));
  EXPECT_TRUE(west_offset == -5 || west_offset == -4) << west_offset;

  distrlock::Lock e = manager_->lock(key_);
  distrlock::Lock w = manager_->lock(key_);
  ASSERT_TRUE(e.try_acquire(2s, Call{.connection = east->native()}));
  EXPECT_FALSE(w.try_acquire(2s, Call{.connection = west->native()}))
      << "a session 19 hours behind saw a valid lease as expired";
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(w.try_acquire(2s, Call{.connection = west->native()}));
  std::this_thread::sleep_for(2s);
  const auto west_sent = Clock::now();
  ASSERT_TRUE(w.try_acquire(2s, Call{.connection = west->native()}))
      << "the lease should have expired by the server clock";
  EXPECT_FALSE(e.try_acquire(2s, Call{.connection = east->native()}))
      << "a session 19 hours ahead saw a valid lease as expired";
  // West's 2 s lease, as status reads it: at most 2 s, and no less than 2 s minus the time since its grant was
  // sent (the server shares this host's clock) and 1 ms of rounding, however slow the statements in between.
  const auto left = manager_->status({key_})[0].expires_in;
  const auto since_sent = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - west_sent);
  EXPECT_LE(left, 2s);
  EXPECT_GE(left, 2s - since_sent - 1ms) << "status misreads the time left of a lease taken in another time zone";
}

/// A second, throwaway MariaDB whose clock libfaketime shifts by an offset the test sets at will (read from a
/// file about once a second). The test's own process and the main test server keep the real clock.
class FakeClockServer {
 public:
  FakeClockServer() {
    std::string pattern = std::filesystem::temp_directory_path() / "distrlock-fakeclock-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp failed";
      return;
    }
    dir_ = pattern;
    // The server runs as the `mysql` user, which must be able to read the offset file.
    std::filesystem::permissions(dir_, std::filesystem::perms::owner_all | std::filesystem::perms::group_read |
                                           std::filesystem::perms::group_exec | std::filesystem::perms::others_read |
                                           std::filesystem::perms::others_exec);
    set_offset(0);
    const std::string out = services("start");
    const std::size_t q = out.find('\'');
    if (q == std::string::npos) {
      ADD_FAILURE() << "scripts/services start mariadb printed: " << out;
      return;
    }
    url_ = out.substr(q + 1, out.find('\'', q + 1) - q - 1);
  }
  ~FakeClockServer() {
    if (dir_.empty()) return;
    services("stop");
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  const std::string& url() const { return url_; }
  /// Shifts the server's wall clock by `seconds` from the real one (it notices within about a second).
  void set_offset(long long seconds) {
    std::ofstream(dir_ + "/offset") << (seconds >= 0 ? "+" : "") << seconds << "\n";
  }

 private:
  std::string services(const std::string& action) {
    const std::string cmd = "DISTRLOCK_SERVICES_DIR='" + dir_ + "/services' DISTRLOCK_MARIADB_FAKETIME_FILE='" + dir_ +
                            "/offset' " + DISTRLOCK_SOURCE_DIR + "/scripts/services " + action + " mariadb";
    std::string out;
    if (FILE* p = ::popen(cmd.c_str(), "r")) {
      char buf[512];
      while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
      ::pclose(p);
    }
    return out;
  }
  std::string dir_;
  std::string url_;
};

/// Seconds since the epoch of a UTC calendar time.
long long utc_epoch(int year, int month, int day, int hour, int minute, int second) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  return static_cast<long long>(::timegm(&tm));
}

TEST_F(Mysql, AnAcquireAt235950WithA30sTtlStaysValidPastMidnightAndExpiresThirtySecondsAfterTheGrant) {
  // "At 23:59:50" is a time on the server's clock, the only clock expiry uses: run a server whose clock reads
  // 2026-12-31 23:59:50 UTC (a day's, a month's and a year's end) when the lease is granted.
  FakeClockServer server;
  ASSERT_FALSE(server.url().empty());
  Sql clock(server.url());
  const std::string server_now = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1000000";
  auto server_seconds = [&] { return std::stod(clock.value("SELECT " + server_now)); };
  const long long grant_at = utc_epoch(2026, 12, 31, 23, 59, 50);
  long long offset = grant_at - 3 - static_cast<long long>(server_seconds());
  server.set_offset(offset);
  auto wait_for_server_clock = [&](long long epoch) {
    const auto give_up = Clock::now() + 15s;
    while (server_seconds() < static_cast<double>(epoch) && Clock::now() < give_up) std::this_thread::sleep_for(5ms);
    return server_seconds() >= static_cast<double>(epoch);
  };
  ASSERT_TRUE(wait_for_server_clock(grant_at)) << "the server clock did not move to 23:59:50";

  auto m = open({}, server.url());
  m.migrate();
  distrlock::Lock lock = m.lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s));
  const double granted_by = server_seconds();
  EXPECT_EQ(clock.value("SELECT DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d %H:%i')"), "2026-12-31 23:59");

  // Past midnight, into the new year, as seen from a New York session (19:00 the day before, local time).
  ASSERT_TRUE(wait_for_server_clock(grant_at + 11));
  EXPECT_EQ(clock.value("SELECT DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%d')"), "2027-01-01");
  auto new_york = backend("mysql").open_session(server.url());
  new_york->query("SET time_zone = 'America/New_York'");
  EXPECT_EQ(new_york->query("SELECT DATE_FORMAT(NOW(), '%Y-%m-%d %H')"), "2026-12-31 19");
  distrlock::Lock rival = m.lock(key_);
  EXPECT_FALSE(rival.try_acquire(30s, Call{.connection = new_york->native()})) << "the lease ended at midnight";
  // Time left by the server's clock: the grant came at or after grant_at and no later than granted_by (both server
  // times), so read around the status call it must lie in [grant_at + 30 - after, granted_by + 30 - before],
  // with 1 s of slack for rounding. No fixed figure: a loaded VM may take seconds between these statements.
  const double before_status = server_seconds();
  const auto left = m.status({key_})[0].expires_in;
  const double after_status = server_seconds();
  const double left_s = std::chrono::duration<double>(left).count();
  EXPECT_GE(left_s, static_cast<double>(grant_at) + 30 - after_status - 1.0);
  EXPECT_LE(left_s, granted_by + 30 - before_status + 1.0);

  // Move the server clock to just before, then just after, grant + 30 s (the grant came a few ms after
  // 23:59:50).
  offset += grant_at + 28 - static_cast<long long>(server_seconds());
  server.set_offset(offset);
  ASSERT_TRUE(wait_for_server_clock(grant_at + 28));
  EXPECT_FALSE(rival.try_acquire(30s, Call{.connection = new_york->native()})) << "expired before its 30 s";
  server.set_offset(offset + 4);
  ASSERT_TRUE(wait_for_server_clock(grant_at + 31));
  EXPECT_TRUE(rival.try_acquire(30s, Call{.connection = new_york->native()})) << "still held after its 30 s";
  EXPECT_GT(rival.fencing_token(), lock.fencing_token());
}

TEST_F(Mysql, KeysAreBinaryAndKeysDifferingOnlyInCaseOrTrailingSpaceAreDifferentLocks) {
  EXPECT_EQ(admin_->value("SELECT CONCAT(DATA_TYPE, ' ', COALESCE(COLLATION_NAME, 'binary')) FROM "
                          "information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = "
                          "'distributed_locks' AND COLUMN_NAME = 'key'"),
            "varbinary binary");
  // A PAD SPACE or case-insensitive collation would make some of these one key.
  const std::vector<std::string> keys = {key_ + "/Key",        key_ + "/key",        key_ + "/KEY",
                                         key_ + "/key ",       key_ + "/key  ",      key_ + std::string("/key\0", 5),
                                         key_ + "/key\t",      key_ + "/k\xc3\xa9y", key_ + "/k\xc3\x89y",
                                         key_ + "/ke\xcc\x81y"};
  std::vector<distrlock::Lock> locks;
  for (const std::string& k : keys) {
    locks.push_back(manager_->lock(k));
    EXPECT_TRUE(locks.back().try_acquire(30s)) << "\"" << k << "\" was taken as the same lock as another key";
  }
  auto other = open();
  for (const std::string& k : keys) EXPECT_FALSE(other.lock(k).try_acquire(30s)) << k;
  const auto st = manager_->status(keys);
  ASSERT_EQ(st.size(), keys.size());
  for (std::size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(st[i].key, keys[i]);
    EXPECT_TRUE(st[i].held);
  }
  for (auto& l : locks) l.release();
}

TEST_F(Mysql, AStatementPastItsDeadlineIsKilledOnTheServerAndTheConnectionStaysUsable) {
  distrlock::Options o;
  o.pool_size = 1;  // the next call must reuse the very connection whose statement was killed
  auto single = open(o);
  auto blocker_session = hold_the_row_in_a_transaction();
  const auto before = admin_->connection_ids();
  ASSERT_TRUE(single.lock(key_ + "/warm-up").try_acquire(30s));
  const std::set<std::string> mine = new_connections(before);
  ASSERT_EQ(mine.size(), 1U);
  const std::string id = *mine.begin();

  distrlock::Lock waiter = single.lock(key_);
  expect_killed_at_the_deadline(waiter, Call{.deadline = Clock::now() + 300ms});
  EXPECT_EQ(new_connections(before), mine) << "the server ended the statement: the connection was kept";
  // The server may list a connection as busy for a moment after it sent the answer (cleaning up); a statement
  // left waiting for the row lock would stay for innodb_lock_wait_timeout (50 s).
  auto idle_soon = [&] {
    const auto give_up = Clock::now() + 1s;
    std::string command;
    while ((command = admin_->value("SELECT COMMAND FROM information_schema.PROCESSLIST WHERE ID = " + id)) !=
               "Sleep" &&
           Clock::now() < give_up)
      std::this_thread::sleep_for(10ms);
    return command;
  };
  EXPECT_EQ(idle_soon(), "Sleep") << "the blocked statement is still running on the server";

  // The same with the caller's stop token.
  std::error_code ec;
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  EXPECT_FALSE(waiter.try_acquire(30s, ec, Call{.deadline = Clock::now() + 10s, .stop = stop.get_token()}));
  canceller.join();
  EXPECT_EQ(ec, errc::cancelled) << ec.message();
  // A stop request comes long before the statement's own limit: the connection is shut down at once and the
  // statement killed from a background connection, so it neither runs on nor grants the key to nobody.
  const std::string after_stop = idle_soon();
  EXPECT_TRUE(after_stop == "Sleep" || after_stop.empty() || after_stop == "Killed")
      << "the blocked statement is still running on the server: " << after_stop;
  blocker_session->query("ROLLBACK");

  distrlock::Lock later = single.lock(key_ + "/later");
  EXPECT_TRUE(later.try_acquire(30s)) << "the pool of one replaced the connection it gave up";
}

TEST_F(Mysql, TheNextOperationSucceedsAfterTheLibrarysConnectionIsKilled) {
  distrlock::Options o;
  o.pool_size = 1;
  auto single = open(o);
  const auto before = admin_->connection_ids();
  distrlock::Lock first = single.lock(key_);
  ASSERT_TRUE(first.try_acquire(30s));
  const std::set<std::string> mine = new_connections(before);
  ASSERT_EQ(mine.size(), 1U);
  const std::string killed = *mine.begin();
  admin_->rows("KILL CONNECTION " + killed);
  // The kill is done once the server no longer lists the connection (it may take a moment to clean up).
  const auto give_up = Clock::now() + 5s;
  while (admin_->value("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = " + killed) != "0" &&
         Clock::now() < give_up)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(admin_->value("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = " + killed), "0")
      << "the server still lists the killed connection";

  distrlock::Lock second = single.lock(key_ + "/next");
  std::error_code ec;
  EXPECT_TRUE(second.try_acquire(30s, ec)) << ec.message();
  first.extend(ec);
  EXPECT_FALSE(ec) << ec.message();
  first.release();
  // The pool of one replaced the killed connection with exactly one new one, which served the calls above.
  const std::set<std::string> now_mine = new_connections(before);
  ASSERT_EQ(now_mine.size(), 1U) << "the pool of one holds " << now_mine.size() << " connections";
  EXPECT_NE(*now_mine.begin(), killed) << "the calls claim to have run on the connection that was killed";
}

TEST_F(Mysql, ADeadlockBetweenTwoCallerTransactionsIsAConflict) {
  auto one = session();
  auto two = session();
  one->query("START TRANSACTION");
  two->query("START TRANSACTION");
  ASSERT_TRUE(manager_->lock(key_ + "/a").try_acquire(30s, Call{.connection = one->native()}));
  ASSERT_TRUE(manager_->lock(key_ + "/b").try_acquire(30s, Call{.connection = two->native()}));

  std::error_code ec_one;
  bool got_one = false;
  std::thread t([&] {  // one waits for b, which two holds ...
    distrlock::Lock l = manager_->lock(key_ + "/b");
    got_one = l.try_acquire(30s, ec_one, Call{.deadline = Clock::now() + 10s, .connection = one->native()});
  });
  std::this_thread::sleep_for(300ms);
  std::error_code ec_two;  // ... and two for a, which one holds: InnoDB picks a victim at once
  distrlock::Lock l = manager_->lock(key_ + "/a");
  const bool got_two = l.try_acquire(30s, ec_two, Call{.deadline = Clock::now() + 10s, .connection = two->native()});
  t.join();

  EXPECT_EQ((ec_one == errc::conflict ? 1 : 0) + (ec_two == errc::conflict ? 1 : 0), 1)
      << ec_one.message() << " / " << ec_two.message();
  EXPECT_NE(got_one, got_two) << "the survivor's acquire goes through";
  EXPECT_FALSE(ec_one && ec_one != errc::conflict) << ec_one.message();
  EXPECT_FALSE(ec_two && ec_two != errc::conflict) << ec_two.message();
  std::string ignored;
  one->query("ROLLBACK", &ignored);
  two->query("ROLLBACK", &ignored);
}

TEST_F(Mysql, ALockWaitTimeoutIsATimeoutReportedByTheServer) {
  auto holder = session();
  holder->query("START TRANSACTION");
  ASSERT_TRUE(manager_->lock(key_).try_acquire(30s, Call{.connection = holder->native()}));
  auto waiter = session();
  waiter->query("SET SESSION innodb_lock_wait_timeout = 1");

  distrlock::Lock l = manager_->lock(key_);
  std::error_code ec;
  const auto started = Clock::now();
  try {
    l.try_acquire(30s, Call{.deadline = Clock::now() + 10s, .connection = waiter->native()});
    ADD_FAILURE() << "no lock wait timeout";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::timeout);
    EXPECT_NE(std::string(e.what()).find("1205"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - started, 5s) << "the server's 1 s lock wait timeout, not the 10 s deadline, ended it";
  holder->query("ROLLBACK");
}

TEST_F(Mysql, ACallerConnectionWithFoundRowsAndWithoutMultiStatementsWorks) {
  // A connection as other drivers open it: CLIENT_FOUND_ROWS (affected rows = matched rows), no
  // multi-statements. The library must neither rely on the affected-rows count nor send two statements.
  MYSQL* conn = Sql::connect(url_, CLIENT_FOUND_ROWS);
  const Call on_it{.connection = distrlock::NativeConnection::mysql(conn)};
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s, on_it));
  const auto fence = lock.fencing_token();
  ASSERT_TRUE(lock.try_acquire(30s, on_it));  // a refresh with the same token: a new fence
  EXPECT_GT(lock.fencing_token(), fence);
  distrlock::Lock rival = manager_->lock(key_);
  EXPECT_FALSE(rival.try_acquire(30s, on_it));
  lock.extend(30s, on_it);
  lock.extend(30s, on_it);
  distrlock::Lock impostor = manager_->adopt(key_, "not-the-token");
  std::error_code ec;
  impostor.extend(30s, ec, on_it);
  EXPECT_EQ(ec, errc::already_released);
  lock.release(on_it);
  lock = manager_->adopt(key_, "not-the-token");
  lock.release(ec, on_it);
  EXPECT_EQ(ec, errc::already_released);
  EXPECT_FALSE(manager_->status({key_})[0].held);
  // The connection is still the caller's to use, with the blocking API.
  EXPECT_EQ(mysql_query(conn, "SELECT 1"), 0) << mysql_error(conn);
  mysql_free_result(mysql_store_result(conn));
  mysql_close(conn);
}

// A missing table is a conformance case; a table in a database that does not exist is MySQL's own.
TEST_F(Mysql, ATableInADatabaseThatDoesNotExistIsNotMigrated) {
  distrlock::Options o;
  o.table = "no_such_database_" + unique_table() + ".locks";
  auto nowhere = open(o);
  std::error_code ec;
  nowhere.lock(key_).try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::not_migrated) << ec.message();
}

TEST_F(Mysql, MigrationsAreVersionedUpAndDownSqlForTheConfiguredTable) {
  distrlock::Options o;
  o.table = "ops_" + unique_table() + ".my_locks";
  const std::string schema = o.table.substr(0, o.table.find('.'));
  auto m = open(o);
  const auto migrations = m.migrations();
  ASSERT_EQ(migrations.size(), 2U);
  EXPECT_EQ(migrations[0].version, 1);
  EXPECT_EQ(migrations[0].id, "0001_create_lock_table");
  EXPECT_NE(migrations[0].up.find("`" + schema + "`.`my_locks`"), std::string::npos) << migrations[0].up;
  EXPECT_NE(migrations[0].up.find("VARBINARY(255)"), std::string::npos);
  EXPECT_NE(migrations[0].up.find("ENGINE=InnoDB"), std::string::npos);
  EXPECT_EQ(migrations[0].down, "DROP TABLE IF EXISTS `" + schema + "`.`my_locks`");
  EXPECT_EQ(migrations[1].version, 2);
  EXPECT_EQ(migrations[1].id, "0002_create_fence_floor");
  EXPECT_EQ(migrations[1].down, "DROP TABLE IF EXISTS `" + schema + "`.`my_locks_floor`");

  // The up SQL works in the user's own migration tool (one statement at a time), and the down SQL undoes it.
  admin_->rows("CREATE DATABASE " + schema);
  for (const auto& migration : migrations)
    for (const std::string& statement : split_statements(migration.up)) admin_->rows(statement);
  const std::string exists = "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '" + schema +
                             "' AND TABLE_NAME LIKE 'my\\_locks%' AND ENGINE = 'InnoDB'";
  EXPECT_EQ(admin_->value(exists), "2");
  EXPECT_EQ(admin_->value("SELECT `floor` FROM `" + schema + "`.`my_locks_floor` WHERE `id` = 1"), "0");
  admin_->rows(migrations[1].down);
  admin_->rows(migrations[0].down);
  EXPECT_EQ(admin_->value(exists), "0");
}

TEST_F(Mysql, ExpiryIsStoredAsUtcMicrosecondsFromTheServerClock) {
  EXPECT_EQ(admin_->value("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND "
                          "TABLE_NAME = 'distributed_locks' AND COLUMN_NAME = 'expires'"),
            "bigint");
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(10s));
  // Read through a session in another time zone: the stored value does not depend on it. The time left is
  // computed against this process's own clock (the server runs on this host, so both read one clock), not
  // with the backend's expression for "now".
  admin_->rows("SET time_zone = 'America/New_York'");
  const double expires_s = std::stod(
      admin_->value("SELECT expires / 1e6 FROM "
                    "distributed_locks WHERE `key` = X'" +
                    [&] {
                      std::string hex;
                      char b[3];
                      for (const unsigned char c : key_) {
                        std::snprintf(b, sizeof b, "%02x", c);
                        hex += b;
                      }
                      return hex;
                    }() +
                    "'"));
  const double left =
      expires_s -
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  // A 10 s TTL granted just before: at most 10 s left, and at least 10 s less 2 s of slack for a loaded VM.
  EXPECT_GT(left, 8.0);
  EXPECT_LE(left, 10.0);
  const double unix_now = std::stod(admin_->value("SELECT UNIX_TIMESTAMP(NOW(6))"));
  const double stored_now =
      std::stod(admin_->value("SELECT TIMESTAMPDIFF(MICROSECOND, '1970-01-01', "
                              "UTC_TIMESTAMP(6)) / 1e6"));
  EXPECT_NEAR(stored_now, unix_now, 1.0) << "the epoch of the stored values is the Unix epoch, in UTC";
}

TEST_F(Mysql, MariadbUrlsAndPercentEncodedPasswordsWork) {
  const std::string user = "dl_" + unique_table().substr(2, 12);
  const std::string password = "p@ss:w/rd%?#&";
  admin_->rows("CREATE USER '" + user + "'@'127.0.0.1' IDENTIFIED BY '" + password + "'");
  admin_->rows("GRANT ALL ON distrlock_test.* TO '" + user + "'@'127.0.0.1'");
  const std::string url =
      "mariadb://" + user + ":p%40ss%3Aw%2Frd%25%3F%23%26@127.0.0.1:" + url_port(url_) + "/distrlock_test";
  auto m = distrlock::Manager::open(url);
  EXPECT_EQ(m.backend_name(), "mysql");
  EXPECT_EQ(m.masked_url().find("p%40ss"), std::string::npos) << m.masked_url();
  distrlock::Lock lock = m.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s));
  lock.release();
  admin_->rows("DROP USER '" + user + "'@'127.0.0.1'");
}

TEST_F(Mysql, BadUrlsAreInvalidArgumentsThatMaskThePassword) {
  for (const std::string url :
       {"mysql://user:hunter2@host:99999/db", "mysql://user:hunter2@host:port/db",
        "mysql://user:hunter2@host/db?sslmode=require", "mysql://user:hunter2@host/a/b",
        "mariadb://user:hunter2@[::1/db", "mysql://user:hunter2%zz@host/db",
        "mysql://user:hunter2@host/db?returning=on", "mysql://user:hunter2@host/db?ssl-mode=on",
        "mysql://user:hunter2@host/db?ssl-cert=/c.pem", "mysql://user:hunter2@host/db?ssl-mode=disabled&ssl-ca=/ca.pem",
        "mysql://user:hunter2@host/db?ssl-ca="}) {
    std::error_code ec;
    distrlock::Manager::open(url, {}, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << url;
    try {
      distrlock::Manager::open(url);
      ADD_FAILURE() << "no exception for " << url;
    } catch (const distrlock::error& e) {
      EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
    }
  }
}

/// A user the server only lets in over TLS, and the URL parts to log in as them.
class MysqlTls : public Mysql {
 protected:
  void SetUp() override {
    Mysql::SetUp();
    const char* ca = std::getenv("DISTRLOCK_TEST_MYSQL_CA");
    ca_ = ca == nullptr ? "" : ca;
    ASSERT_FALSE(ca_.empty()) << "DISTRLOCK_TEST_MYSQL_CA is not set: scripts/services start mariadb sets it";
    user_ = "tls_" + unique_table().substr(2, 12);
    admin_->rows("CREATE USER '" + user_ + "'@'127.0.0.1' IDENTIFIED BY 'secret' REQUIRE SSL");
    admin_->rows("GRANT ALL ON distrlock_test.* TO '" + user_ + "'@'127.0.0.1'");
  }
  void TearDown() override {
    if (!user_.empty()) admin_->rows("DROP USER '" + user_ + "'@'127.0.0.1'");
  }
  /// The test server's URL, logged in as the TLS-only user, with `query` appended.
  std::string tls_url(const std::string& query) const {
    return "mysql://" + user_ + ":secret@127.0.0.1:" + url_port(url_) + "/distrlock_test" + query;
  }
  /// A self-signed CA that has signed nothing, made with openssl in `dir`.
  static std::string unrelated_ca(const std::filesystem::path& dir) {
    std::filesystem::create_directories(dir);
    const std::string cmd =
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj '/CN=some other CA' -keyout '" +
        (dir / "key.pem").string() + "' -out '" + (dir / "ca.pem").string() + "' >/dev/null 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    return (dir / "ca.pem").string();
  }

  std::string ca_;
  std::string user_;
};

TEST_F(MysqlTls, AUserWhoMustUseTlsGetsInWithSslModeRequiredAndIsRefusedWithout) {
  auto plain = open({}, tls_url(""));
  std::error_code ec;
  plain.lock(key_).try_acquire(30s, ec, Call{.deadline = Clock::now() + 2s});
  EXPECT_EQ(ec, errc::unavailable) << ec.message();

  auto encrypted = open({}, tls_url("?ssl-mode=required"));
  distrlock::Lock lock = encrypted.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s));
  lock.release();
}

TEST_F(MysqlTls, VerifyIdentityConnectsWhenTheCertificateChainsToTheGivenCaAndNamesTheHost) {
  auto m = open({}, tls_url("?ssl-mode=verify-identity&ssl-ca=" + ca_));
  distrlock::Lock lock = m.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s));
  lock.release();
}

TEST_F(MysqlTls, VerifyIdentityRefusesAServerWhoseCertificateDoesNotChainToTheGivenCa) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / ("distrlock-ca-" + user_);
  const std::string other = unrelated_ca(dir);
  auto m = open({}, tls_url("?ssl-mode=verify-identity&ssl-ca=" + other));
  try {
    m.lock(key_).try_acquire(30s, Call{.deadline = Clock::now() + 1s});
    ADD_FAILURE() << "a server certificate from another CA was accepted";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_NE(std::string(e.what()).find("certificate"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST_F(MysqlTls, AStatementPastItsDeadlineOnATlsConnectionIsKilledOverTls) {
  // The KILL QUERY goes over a connection of its own, which must use TLS too for a TLS-only user.
  auto m = open({}, tls_url("?ssl-mode=required"));
  auto blocker_session = hold_the_row_in_a_transaction();
  distrlock::Lock waiter = m.lock(key_);
  expect_killed_at_the_deadline(waiter, Call{.deadline = Clock::now() + 300ms});
  blocker_session->query("ROLLBACK");
  EXPECT_TRUE(waiter.try_acquire(30s));
}

TEST_F(MysqlTls, OnACallersTlsConnectionAStatementPastItsDeadlineIsKilledAndTheCallerCanGoOn) {
  MYSQL* conn = Sql::connect(tls_url(""), 0, /*tls=*/true);
  ASSERT_NE(mysql_get_ssl_cipher(conn), nullptr) << "the caller's connection did not use TLS";
  auto m = open({}, tls_url("?ssl-mode=required"));  // the KILL QUERY uses the Manager's URL
  auto blocker_session = hold_the_row_in_a_transaction();
  distrlock::Lock waiter = m.lock(key_);
  expect_killed_at_the_deadline(
      waiter, Call{.deadline = Clock::now() + 300ms, .connection = distrlock::NativeConnection::mysql(conn)});
  blocker_session->query("ROLLBACK");
  // The caller's own blocking calls still work on the connection.
  EXPECT_EQ(mysql_query(conn, "SELECT 1"), 0) << mysql_error(conn);
  mysql_free_result(mysql_store_result(conn));
  mysql_close(conn);
}

TEST_F(Mysql, ARefusedLoginIsUnavailableAndSaysWhy) {
  auto wrong = open({}, "mysql://root:wrong-password@127.0.0.1:" + url_port(url_) + "/distrlock_test");
  try {
    wrong.lock(key_).try_acquire(30s, Call{.deadline = Clock::now() + 500ms});
    ADD_FAILURE() << "a wrong password was accepted";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::unavailable);
    EXPECT_NE(std::string(e.what()).find("1045"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("wrong-password"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dltest
