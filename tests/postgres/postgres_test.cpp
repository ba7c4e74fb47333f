// PostgreSQL-specific behaviour: statement counts, time zones, client clocks, server-side cancel, migrations.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "relay.hpp"
#include "support.hpp"

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

class Postgres : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = server_url(backend("postgres"));
    ASSERT_FALSE(url_.empty());
    admin_ = backend("postgres").open_session(url_);
    manager_.emplace(open());
    manager_->migrate();
    key_ = unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  distrlock::Manager open(distrlock::Options o = {}) {
    o.logger = log_.logger();
    return distrlock::Manager::open(url_, o);
  }
  /// Statements executed in this database since the last reset, leaving out the test's own bookkeeping.
  long statements(std::string_view like = "%") {
    return std::stol(admin_->query(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
        "WHERE datname = current_database()) AND query NOT LIKE '%pg_stat%' AND query LIKE '" +
        std::string(like) + "'"));
  }
  void reset_statements() { admin_->query("SELECT pg_stat_statements_reset()"); }

  std::string url_;
  CapturedLog log_;
  std::unique_ptr<CallerSession> admin_;
  std::optional<distrlock::Manager> manager_;
  std::string key_;
};

TEST_F(Postgres, AcquireExtendAndReleaseAreOneStatementEach) {
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s));  // warm-up: opens and prepares on a pooled connection
  lock.extend();
  lock.release();
  distrlock::Lock rival = manager_->lock(key_);
  ASSERT_TRUE(rival.try_acquire(30s));
  ASSERT_FALSE(lock.try_acquire(30s));
  rival.release();

  reset_statements();
  constexpr int cycles = 20;
  for (int i = 0; i < cycles; ++i) {
    ASSERT_TRUE(lock.try_acquire(30s));
    ASSERT_FALSE(rival.try_acquire(30s));  // a busy answer, holder included, is one statement too
    lock.extend();
    lock.release();
  }
  EXPECT_EQ(statements(), 4 * cycles) << "every operation must be exactly one statement, with no BEGIN/COMMIT";
}

/// 20 cycles of {grant, busy answer, extend, release}, and the client-to-server bursts (round trips) that a
/// dltest::Relay between the library and the server counted over them. pg_stat_statements counts executions,
/// so a re-prepare or a BEGIN/COMMIT pair around each statement would pass it; the relay sees every exchange.
struct RoundTrips {
  long cycles = 20;
  long bursts = 0;
};

TEST_F(Postgres, AcquireExtendAndReleaseAreOneRoundTripEachOnAPooledConnection) {
  Relay relay("127.0.0.1", url_port(url_));
  distrlock::Options o;
  o.pool_size = 1;
  auto m = distrlock::Manager::open(relay.rewrite(url_), o);
  distrlock::Lock lock = m.lock(key_);
  distrlock::Lock rival = m.lock(key_);
  // Warm-up: opens the pooled connection and prepares every statement the cycle uses.
  ASSERT_TRUE(lock.try_acquire(30s));
  ASSERT_FALSE(rival.try_acquire(30s));
  lock.extend();
  lock.release();
  ASSERT_EQ(relay.connections(), 1U) << "the pool of one must have gone through the relay";

  RoundTrips n;
  const auto before = relay.client_bursts();
  for (long i = 0; i < n.cycles; ++i) {
    ASSERT_TRUE(lock.try_acquire(30s));
    ASSERT_FALSE(rival.try_acquire(30s));  // a busy answer, holder included, is one round trip too
    lock.extend();
    lock.release();
  }
  n.bursts = static_cast<long>(relay.client_bursts() - before);
  EXPECT_EQ(n.bursts, 4 * n.cycles) << "every operation must be exactly one round trip";
  EXPECT_EQ(relay.connections(), 1U) << "the pool must have kept its one connection";
}

TEST_F(Postgres, AcquireExtendAndReleaseAreOneRoundTripEachOnACallersConnection) {
  Relay relay("127.0.0.1", url_port(url_));
  auto caller = backend("postgres").open_session(relay.rewrite(url_));
  const Call on_caller{.connection = caller->native()};
  distrlock::Lock lock = manager_->lock(key_);
  distrlock::Lock rival = manager_->lock(key_);
  ASSERT_EQ(relay.connections(), 1U);

  RoundTrips n;
  const auto before = relay.client_bursts();
  for (long i = 0; i < n.cycles; ++i) {
    ASSERT_TRUE(lock.try_acquire(30s, on_caller));
    ASSERT_FALSE(rival.try_acquire(30s, on_caller));
    lock.extend(30s, on_caller);
    lock.release(on_caller);
  }
  n.bursts = static_cast<long>(relay.client_bursts() - before);
  EXPECT_EQ(n.bursts, 4 * n.cycles) << "every operation must be exactly one round trip, with no prepare";
}

TEST_F(Postgres, TheHeartbeatExtendsAThousandLeasesInAHandfulOfStatements) {
  constexpr int leases = 1000;
  std::vector<distrlock::Lease> held;
  held.reserve(leases);
  for (int i = 0; i < leases; ++i)
    held.push_back(manager_->acquire(key_ + "/" + std::to_string(i), {.ttl = 4s, .extend_every = 1s}));
  reset_statements();
  std::this_thread::sleep_for(4500ms);  // longer than the TTL: only extensions keep them
  const long batches = statements("%unnest%");
  const long all = statements();
  // The promise: one heartbeat extends all of a Manager's leases in as few statements as the backend allows,
  // here one batched UPDATE per round. In 4.5 s with extend_every = 1 s there are 4 or 5 rounds; the leases,
  // acquired one after another, may first fall due in two groups, which the heartbeat then merges (it
  // extends every lease due within half a period). So: at least 4 rounds less one lost to a loaded VM, and
  // at most 5 rounds plus one split.
  EXPECT_GE(batches, 3);
  const std::vector<std::string> lines = log_.lines();
  EXPECT_LE(batches, 6) << "leases should be extended in batches, not one statement each; first log line: "
                        << (lines.empty() ? std::string("(none)") : lines.front());
  EXPECT_EQ(all, batches) << "no statement but the batched extension may run: no lease is extended on its own";
  int lost = 0;
  for (const auto& lease : held) lost += lease.lost() ? 1 : 0;
  EXPECT_EQ(lost, 0);
  auto other = open();
  for (int i = 0; i < leases; i += 97) {
    distrlock::Lock probe = other.lock(key_ + "/" + std::to_string(i));
    EXPECT_FALSE(probe.try_acquire(1s)) << "lease " << i << " expired";
  }
}

TEST_F(Postgres, SessionsWithDifferentTimeZonesCanNeverBothHoldAKey) {
  const std::string sep = url_.find('?') == std::string::npos ? "?" : "&";
  const std::string east_url = url_ + sep + "options=-c%20TimeZone%3DPacific/Kiritimati";
  const std::string west_url = url_ + sep + "options=-c%20TimeZone%3DPacific/Pago_Pago";
  // The URLs really set the sessions' time zones, 25 hours apart (a mistyped option would leave both at the
  // server's default and prove nothing).
  EXPECT_EQ(backend("postgres").open_session(east_url)->query("SHOW TimeZone"), "Pacific/Kiritimati");
  EXPECT_EQ(backend("postgres").open_session(west_url)->query("SHOW TimeZone"), "Pacific/Pago_Pago");
  EXPECT_EQ(backend("postgres").open_session(east_url)->query("SELECT extract(timezone_hour FROM now())"), "14");
  EXPECT_EQ(backend("postgres").open_session(west_url)->query("SELECT extract(timezone_hour FROM now())"), "-11");
  auto east = distrlock::Manager::open(east_url);
  auto west = distrlock::Manager::open(west_url);
  distrlock::Lock e = east.lock(key_);
  distrlock::Lock w = west.lock(key_);
  ASSERT_TRUE(e.try_acquire(2s));
  EXPECT_FALSE(w.try_acquire(2s)) << "a session 25 hours behind saw a valid lease as expired";
  std::this_thread::sleep_for(500ms);
  EXPECT_FALSE(w.try_acquire(2s));
  std::this_thread::sleep_for(2s);
  ASSERT_TRUE(w.try_acquire(2s)) << "the lease should have expired by the server clock";
  EXPECT_FALSE(e.try_acquire(2s)) << "a session 25 hours ahead saw a valid lease as expired";
}

/// Runs the probe under libfaketime with the client clock shifted by `offset` ("+2h", "-2h").
std::string probe(const std::string& offset, const std::string& args) {
  const std::string cmd =
      "LD_PRELOAD=" + std::string(DISTRLOCK_FAKETIME_LIB) + " FAKETIME='" + offset +
      "' FAKETIME_DONT_FAKE_MONOTONIC=1 DONT_FAKE_MONOTONIC=1 ASAN_OPTIONS=verify_asan_link_order=0 " +
      DISTRLOCK_LOCK_PROBE + " " + args + " 2>&1";
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[512];
  while (fgets(buf, sizeof buf, p) != nullptr) out += buf;
  pclose(p);
  return out;
}

TEST_F(Postgres, AClientClockSkewedByTwoHoursChangesNoOutcome) {
  for (const std::string offset : {"+2h", "-2h"}) {
    SCOPED_TRACE(offset);
    const std::string key = key_ + offset;
    // The probe reports its own wall clock: prove the skew is really in effect.
    const std::string clock = probe(offset, "clock");
    const auto probe_epoch = std::stoll(clock);
    const auto our_epoch =
        std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    EXPECT_GT(std::llabs(probe_epoch - our_epoch), 7000) << clock;

    // A lease held here looks busy to the skewed client.
    distrlock::Lock mine = manager_->lock(key);
    ASSERT_TRUE(mine.try_acquire(30s));
    EXPECT_EQ(probe(offset, "'" + url_ + "' '" + key + "' 2000"), "busy\n");
    mine.release();

    // A lease the skewed client takes lasts its TTL by the server clock: busy now, free after it.
    EXPECT_EQ(probe(offset, "'" + url_ + "' '" + key + "' 1500").substr(0, 7), "granted");
    distrlock::Lock after = manager_->lock(key);
    EXPECT_FALSE(after.try_acquire(30s));
    std::this_thread::sleep_for(2s);
    EXPECT_TRUE(after.try_acquire(30s));
  }
}

TEST_F(Postgres, AClientClockJumpWhileALeaseIsHeldChangesNothingForOthers) {
  // The holder runs under libfaketime with its offset read from a file on every clock call, so the test can
  // move the holder's wall clock while it holds an auto-extended lease (TTL 2 s, held 5 s).
  std::string dir = (std::filesystem::temp_directory_path() / "distrlock-clockjump-XXXXXX").string();
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string offset_file = dir + "/faketime";
  auto set_offset = [&](const char* offset) { std::ofstream(offset_file) << offset << "\n"; };
  set_offset("+0");
  const std::string cmd = "LD_PRELOAD=" + std::string(DISTRLOCK_FAKETIME_LIB) + " FAKETIME_TIMESTAMP_FILE='" +
                          offset_file +
                          "' FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1 DONT_FAKE_MONOTONIC=1 "
                          "ASAN_OPTIONS=verify_asan_link_order=0 " +
                          DISTRLOCK_LOCK_PROBE + " lease '" + url_ + "' '" + key_ + "' 2000 5000 2>&1";
  FILE* holder = popen(cmd.c_str(), "r");
  ASSERT_NE(holder, nullptr);
  auto next_line = [&] {
    char buf[512];
    return std::fgets(buf, sizeof buf, holder) != nullptr ? std::string(buf) : std::string();
  };
  const std::string granted = next_line();
  long long fence = 0, wall_at_grant = 0;
  ASSERT_EQ(std::sscanf(granted.c_str(), "granted %lld %lld", &fence, &wall_at_grant), 2) << granted;

  // While it holds the key, jump its clock 2 h ahead, then 3 h back; a rival on the real clock polls.
  distrlock::Lock rival = manager_->lock(key_);
  int rival_grants = 0;
  const auto started = Clock::now();
  bool ahead = false, back = false;
  while (Clock::now() < started + 4500ms) {
    if (!ahead && Clock::now() >= started + 1s) {
      set_offset("+2h");
      ahead = true;
    }
    if (!back && Clock::now() >= started + 2500ms) {
      set_offset("-3h");
      back = true;
    }
    if (rival.try_acquire(30s)) ++rival_grants;
    std::this_thread::sleep_for(100ms);
  }
  const std::string held = next_line();
  int lost = -1;
  long long wall_at_end = 0;
  ASSERT_EQ(std::sscanf(held.c_str(), "held %d %lld", &lost, &wall_at_end), 2) << held;
  const std::string released = next_line();
  const int status = pclose(holder);
  std::filesystem::remove_all(dir);

  // The jump really happened: 5 s after the grant the holder's wall clock read about 3 h earlier.
  EXPECT_LT(wall_at_end - wall_at_grant, -3 * 3600 + 60) << granted << held;
  EXPECT_EQ(rival_grants, 0) << "another client got the key while the holder's clock jumped";
  EXPECT_EQ(lost, 0) << "the holder believed its lease lost because its wall clock jumped";
  EXPECT_EQ(released, "released\n");
  EXPECT_EQ(status, 0);
  EXPECT_TRUE(rival.try_acquire(30s)) << "the holder's release must have freed the key";
}

TEST_F(Postgres, AStatementPastItsDeadlineEndsOnTheServerSoonAfterItsConnectionIsDropped) {
  distrlock::Options o;
  o.pool_size = 1;
  auto single = open(o);
  admin_->query("BEGIN");
  distrlock::Lock blocker = manager_->lock(key_);
  ASSERT_TRUE(blocker.try_acquire(30s, Call{.connection = admin_->native()}));

  distrlock::Lock waiter = single.lock(key_);
  const std::string waiting_query =
      "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'distrlock' AND datname = "
      "current_database() AND wait_event_type = 'Lock'";
  // While the statement is blocked, the query below sees it: so its 0 afterwards means something.
  std::string seen_waiting = "0";
  std::jthread watcher([&](std::stop_token stop) {
    auto observer = backend("postgres").open_session(url_);
    while (!stop.stop_requested() && seen_waiting == "0") {
      const std::string n = observer->query(waiting_query);
      if (n != "0") seen_waiting = n;
      std::this_thread::sleep_for(5ms);
    }
  });
  std::error_code ec;
  const auto started = Clock::now();
  EXPECT_FALSE(waiter.try_acquire(30s, ec, Call{.deadline = Clock::now() + 500ms}));
  const auto took = Clock::now() - started;
  watcher.request_stop();
  watcher.join();
  EXPECT_EQ(ec, errc::timeout);
  // Giving up never waits on the network, and the undo of the unknown outcome goes out from another thread:
  // the call ends at its deadline. Slack: 250 ms of scheduling on a loaded VM.
  EXPECT_GE(took, 500ms);
  EXPECT_LT(took, 500ms + 250ms);
  EXPECT_EQ(seen_waiting, "1") << "the blocked statement was never seen waiting on a lock";
  // The connection was dropped; the server notices within client_connection_check_interval (250 ms) and ends
  // the statement instead of letting it wait for the row (and perhaps grant the key to nobody). Slack: 1 s.
  const auto give_up = Clock::now() + 250ms + 1s;
  std::string waiting;
  while ((waiting = admin_->query(waiting_query)) != "0" && Clock::now() < give_up) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(waiting, "0") << "the blocked statement is still running on the server";
  admin_->query("ROLLBACK");

  distrlock::Lock later = single.lock(key_ + "/later");
  EXPECT_TRUE(later.try_acquire(30s)) << "the pool of one replaced the connection it dropped";
}

TEST_F(Postgres, TheNextOperationSucceedsAfterTheLibrarysConnectionIsTerminated) {
  // The pids of the library's connections to this database, other than the ones in `before`.
  const std::string pids_query =
      "SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '') FROM pg_stat_activity WHERE application_name "
      "= 'distrlock' AND datname = current_database() AND pid <> pg_backend_pid()";
  auto new_pids = [&](const std::string& before) {
    return admin_->query(pids_query + (before.empty() ? "" : " AND pid NOT IN (" + before + ")"));
  };
  const std::string before = admin_->query(pids_query);
  distrlock::Options o;
  o.pool_size = 1;
  auto single = open(o);
  distrlock::Lock first = single.lock(key_);
  ASSERT_TRUE(first.try_acquire(30s));
  const std::string pid = new_pids(before);  // the pool of one's connection, and nothing else
  ASSERT_FALSE(pid.empty()) << "the library's connection is not listed under application_name 'distrlock'";
  ASSERT_EQ(pid.find(','), std::string::npos) << "a pool of one opened several connections: " << pid;
  EXPECT_EQ(admin_->query("SELECT pg_terminate_backend(" + pid + ", 5000)"), "t");

  distrlock::Lock second = single.lock(key_ + "/next");
  std::error_code ec;
  EXPECT_TRUE(second.try_acquire(30s, ec)) << ec.message();
  first.release();
  const std::string replaced_by = new_pids(before);
  EXPECT_FALSE(replaced_by.empty());
  EXPECT_EQ(replaced_by.find(','), std::string::npos) << replaced_by;
  EXPECT_NE(replaced_by, pid) << "the calls claim to have run on the terminated connection";
}

TEST_F(Postgres, MigrationsAreVersionedUpAndDownSqlForTheConfiguredTable) {
  distrlock::Options o;
  o.table = "ops.my_locks";
  auto m = open(o);
  const auto migrations = m.migrations();
  ASSERT_EQ(migrations.size(), 2U);
  EXPECT_EQ(migrations[0].version, 1);
  EXPECT_EQ(migrations[0].id, "0001_create_lock_table");
  EXPECT_NE(migrations[0].up.find("\"ops\".\"my_locks\""), std::string::npos) << migrations[0].up;
  EXPECT_NE(migrations[0].up.find("timestamptz"), std::string::npos);
  EXPECT_EQ(migrations[0].down, "DROP TABLE IF EXISTS \"ops\".\"my_locks\"");
  EXPECT_EQ(migrations[1].version, 2);
  EXPECT_EQ(migrations[1].id, "0002_create_fence_floor");
  EXPECT_EQ(migrations[1].down, "DROP TABLE IF EXISTS \"ops\".\"my_locks_floor\"");

  // The up SQL works in the user's own migration tool, and the down SQL undoes it.
  admin_->query("CREATE SCHEMA IF NOT EXISTS ops");
  for (const auto& migration : migrations) admin_->query(migration.up);
  EXPECT_EQ(admin_->query("SELECT to_regclass('ops.my_locks') IS NOT NULL"), "t");
  EXPECT_EQ(admin_->query("SELECT floor FROM ops.my_locks_floor WHERE id = 1"), "0");
  admin_->query(migrations[1].down);
  admin_->query(migrations[0].down);
  EXPECT_EQ(admin_->query("SELECT to_regclass('ops.my_locks') IS NULL AND to_regclass('ops.my_locks_floor') IS NULL"),
            "t");
}

/// url_ with a host that accepts connections but never answers (a dead primary whose packets vanish) listed
/// first, and target_session_attrs=read-write, as a cluster's URL has.
std::string behind_a_dead_first_host(const std::string& url, const dltest::Relay& dead) {
  const std::string at = "127.0.0.1:" + std::to_string(dltest::url_port(url));
  std::string out = url;
  out.replace(out.find(at), at.size(), "127.0.0.1:" + std::to_string(dead.port()) + "," + at);
  return out + (out.find('?') == std::string::npos ? "?" : "&") + "target_session_attrs=read-write";
}

TEST_F(Postgres, AMultiHostUrlWhoseFirstHostNeverAnswersGrantsThroughTheNextHostWithinTheDeadline) {
  dltest::Relay dead("127.0.0.1", dltest::url_port(url_));
  ASSERT_TRUE(dead.set_mode(dltest::Relay::Mode::hang));
  distrlock::Options o;
  o.connect_timeout = 3s;
  o.logger = log_.logger();
  auto m = distrlock::Manager::open(behind_a_dead_first_host(url_, dead), o);
  const auto started = distrlock::Clock::now();
  std::error_code ec;
  distrlock::Lock lock = m.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s, ec)) << ec.message();
  EXPECT_LT(distrlock::Clock::now() - started, 3s) << "the second host must get its turn within connect_timeout";
  EXPECT_EQ(manager_->status({key_}).at(0).fence, lock.fencing_token().value_or(-1));
}

TEST_F(Postgres, AGrantOnACallersRemoteApplySessionKeepsRemoteApplyAndRaisesAnythingWeakerToOn) {
  for (const auto& [session_level, granted_level] :
       std::vector<std::pair<std::string, std::string>>{{"remote_apply", "remote_apply"}, {"on", "on"},
                                                        {"remote_write", "on"}, {"local", "on"}, {"off", "on"}}) {
    admin_->query("SET synchronous_commit = " + session_level);
    admin_->query("BEGIN");
    distrlock::Lock lock = manager_->lock(key_ + "/" + session_level);
    ASSERT_TRUE(lock.try_acquire(30s, Call{.connection = admin_->native()}));
    EXPECT_EQ(admin_->query("SHOW synchronous_commit"), granted_level) << "the session had " << session_level;
    admin_->query("COMMIT");
  }
  admin_->query("RESET synchronous_commit");
}

TEST_F(Postgres, AReleaseInsideACallerTransactionLeavesItsCommitSynchronous) {
  admin_->query("BEGIN");
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s, Call{.connection = admin_->native()}));
  lock.release(Call{.connection = admin_->native()});
  EXPECT_EQ(admin_->query("SHOW synchronous_commit"), "on")
      << "the caller's transaction must commit as durably as the caller asked";
  admin_->query("COMMIT");
}

/// Whether all WAL written so far has been flushed: right after a commit that waited for its flush, it has (no
/// other session writes here: the tests run one at a time, and nothing else is released meanwhile).
bool wal_flushed(CallerSession& admin) {
  return admin.query("SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()") == "t";
}

TEST_F(Postgres, GrantsOnOurOwnConnectionsAreDurableWhenTheDatabaseDefaultIsSynchronousCommitOff) {
  const std::string db = admin_->query("SELECT current_database()");
  admin_->query("ALTER DATABASE " + db + " SET synchronous_commit = off");
  int unflushed = 0;
  {
    distrlock::Options o;
    o.pool_size = 1;
    auto fresh = open(o);  // new connections, which start with the database's default
    std::vector<distrlock::Lock> held;
    for (int i = 0; i < 10; ++i) {
      held.push_back(fresh.lock(key_ + "/" + std::to_string(i)));
      ASSERT_TRUE(held.back().try_acquire(30s));
      if (!wal_flushed(*admin_)) ++unflushed;
    }
    // A release relaxes synchronous_commit for its own transaction only: the next grant on the same (only)
    // connection is durable again, and its flush takes the release's WAL with it.
    held.front().release();
    distrlock::Lock again = fresh.lock(key_ + "/0");
    ASSERT_TRUE(again.try_acquire(30s));
    if (!wal_flushed(*admin_)) ++unflushed;
    for (std::size_t i = 1; i < held.size(); ++i) held[i].release();
    again.release();
  }
  admin_->query("ALTER DATABASE " + db + " RESET synchronous_commit");
  EXPECT_EQ(unflushed, 0) << "grants returned before their commit reached the disk";
}

TEST_F(Postgres, ExpiryIsStoredAsTimestamptzFromTheServerClock) {
  EXPECT_EQ(admin_->query("SELECT data_type FROM information_schema.columns WHERE table_name = "
                          "'distributed_locks' AND column_name = 'expires'"),
            "timestamp with time zone");
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(10s));
  const double left = std::stod(admin_->query(
      "SELECT extract(epoch FROM expires - clock_timestamp()) FROM distributed_locks WHERE key = '" + key_ + "'"));
  EXPECT_GT(left, 8.0);
  EXPECT_LE(left, 10.0);
}

TEST_F(Postgres, AnUnparsableConnectionStringIsAnInvalidArgumentThatMasksThePassword) {
  std::error_code ec;
  distrlock::Manager::open("postgresql://user:hunter2@host/db?no_such_option=1", {}, ec);
  EXPECT_EQ(ec, errc::invalid_argument);
  try {
    distrlock::Manager::open("postgresql://user:hunter2@host/db?no_such_option=1");
    FAIL() << "no exception";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(std::string(e.what()).find("hunter2"), std::string::npos) << e.what();
  }
}

TEST_F(Postgres, TheDefaultLoggerReportsALostLeaseOnStderrWithKeyAndTokenAndNoPassword) {
  // The test server trusts local connections, so any password is accepted and must never be printed.
  std::string with_password = url_;
  with_password.replace(with_password.find("postgres@"), 9, "postgres:hunter2@");
  auto m = distrlock::Manager::open(with_password);  // default logger: stderr
  ::testing::internal::CaptureStderr();
  {
    distrlock::Lease lease = m.acquire(key_, {.ttl = 1s, .extend_every = 100ms});
    admin_->steal(lease.token());
    const auto give_up = Clock::now() + 3s;
    while (!lease.lost() && Clock::now() < give_up) std::this_thread::sleep_for(10ms);
    ASSERT_TRUE(lease.lost());
    const std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_NE(err.find("lease lost"), std::string::npos) << err;
    EXPECT_NE(err.find(key_), std::string::npos) << err;
    EXPECT_NE(err.find(lease.token()), std::string::npos) << err;
    EXPECT_NE(err.find("postgres:***@"), std::string::npos) << err;
    EXPECT_EQ(err.find("hunter2"), std::string::npos) << err;
  }
}

}  // namespace
}  // namespace dltest
