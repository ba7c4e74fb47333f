// Failover on a PostgreSQL primary and its streaming standby (scripts/services postgres-pair): a grant the failover
// lost is never followed by the same or a smaller fence, its holder learns of the loss, multi-host URLs with
// target_session_attrs=read-write find the primary, and a standby refuses to grant with a clear error.
//
// These tests break the pair on purpose (the primary stopped in immediate mode, the standby promoted), so each one
// asks scripts/services for an intact pair first: `start postgres-pair` reuses the pair while it is intact and builds
// a fresh one otherwise, and prints the URLs to use. They never touch the shared `postgres` server.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <thread>

#include "relay.hpp"
#include "support.hpp"

namespace dltest {
namespace {

using distrlock::Clock;
using distrlock::errc;

/// Where scripts/services put the pair.
struct Pair {
  std::string primary;       // postgresql://postgres@127.0.0.1:P1/distrlock_test
  std::string standby;       // postgresql://postgres@127.0.0.1:P2/distrlock_test
  std::string primary_data;  // the primary's data directory
  std::string bindir;        // PostgreSQL's server binaries (pg_ctl)
};

std::string services_script() {
  const char* s = std::getenv("DISTRLOCK_SERVICES_SCRIPT");
  return s != nullptr && *s != '\0' ? s : std::string(DISTRLOCK_SOURCE_DIR) + "/scripts/services";
}

/// An intact pair from `scripts/services start postgres-pair` (the one scripts/test started, or a fresh one if an
/// earlier test broke it), or nullopt after recording a test failure. Fails, never skips, when the environment has
/// no pair: DISTRLOCK_TEST_PG_PRIMARY says that one was started for this run.
std::optional<Pair> intact_pair() {
  const char* configured = std::getenv("DISTRLOCK_TEST_PG_PRIMARY");
  if (configured == nullptr || *configured == '\0') {
    ADD_FAILURE() << "DISTRLOCK_TEST_PG_PRIMARY is not set: start the pair with "
                     "`eval \"$(scripts/services start postgres-pair)\"` or run scripts/test";
    return std::nullopt;
  }
  const std::string cmd = services_script() + " start postgres-pair";
  FILE* out = ::popen(cmd.c_str(), "r");
  if (out == nullptr) {
    ADD_FAILURE() << "cannot run " << cmd;
    return std::nullopt;
  }
  std::string line;
  char buf[4096];
  while (std::fgets(buf, sizeof buf, out) != nullptr) line += buf;
  const int rc = ::pclose(out);
  if (rc != 0) {
    ADD_FAILURE() << cmd << " failed (status " << rc << ")";
    return std::nullopt;
  }
  std::map<std::string, std::string> env;
  static const std::regex assignment(R"(([A-Z_]+)='([^']*)')");
  for (std::sregex_iterator it(line.begin(), line.end(), assignment), end; it != end; ++it)
    env[(*it)[1].str()] = (*it)[2].str();
  Pair p{env["DISTRLOCK_TEST_PG_PRIMARY"], env["DISTRLOCK_TEST_PG_STANDBY"], env["DISTRLOCK_TEST_PG_PRIMARY_DATA"],
         env["DISTRLOCK_TEST_PG_BINDIR"]};
  if (p.primary.empty() || p.standby.empty() || p.primary_data.empty() || p.bindir.empty()) {
    ADD_FAILURE() << cmd << " printed an unexpected line: " << line;
    return std::nullopt;
  }
  return p;
}

/// postgresql://postgres@127.0.0.1:A,127.0.0.1:B/distrlock_test?target_session_attrs=read-write
std::string multi_host_url(const std::string& first, const std::string& second) {
  return "postgresql://postgres@127.0.0.1:" + std::to_string(url_port(first)) +
         ",127.0.0.1:" + std::to_string(url_port(second)) + "/distrlock_test?target_session_attrs=read-write";
}

/// Polls `probe` until it is true or `limit` has passed.
template <class Probe>
bool eventually(Probe probe, std::chrono::milliseconds limit) {
  const auto give_up = Clock::now() + limit;
  while (!probe()) {
    if (Clock::now() >= give_up) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

class Failover : public ::testing::Test {
 protected:
  void SetUp() override {
    auto p = intact_pair();
    ASSERT_TRUE(p.has_value());
    pair_ = *p;
    primary_sql_ = backend("postgres").open_session(pair_.primary);
    standby_sql_ = backend("postgres").open_session(pair_.standby);
    open(pair_.primary).migrate();
    ASSERT_TRUE(standby_replayed_primary()) << "the standby did not replay the migration";
    key_ = unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  distrlock::Manager open(const std::string& url) {
    distrlock::Options o;
    o.logger = log_.logger();
    o.operation_timeout = 3s;
    o.connect_timeout = 1s;
    return distrlock::Manager::open(url, o);
  }

  /// True once the standby has replayed everything the primary has written so far (within 10 s).
  bool standby_replayed_primary() {
    const std::string lsn = primary_sql_->query("SELECT pg_current_wal_lsn()");
    return eventually([&] { return standby_sql_->query("SELECT pg_last_wal_replay_lsn() >= '" + lsn + "'") == "t"; },
                      10s);
  }

  /// `pg_ctl stop -m immediate` on the primary: no checkpoint, no goodbye to the standby, as in a crash.
  void stop_primary_immediately() {
    primary_sql_.reset();
    const std::string as_postgres = ::geteuid() == 0 ? "runuser -u postgres -- " : "";
    const std::string cmd = as_postgres + pair_.bindir + "/pg_ctl stop -s -m immediate -w -D '" + pair_.primary_data +
                            "' >&2";
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  }

  Pair pair_;
  CapturedLog log_;
  std::unique_ptr<CallerSession> primary_sql_;
  std::unique_ptr<CallerSession> standby_sql_;
  std::string key_;
};

TEST_F(Failover, AGrantTheFailoverLostIsNeitherRepeatedNorUndercutAndItsHolderLearnsOfItBeforeTheNextGrant) {
  // a. The standby replicates through a relay the test controls: point its primary_conninfo at the relay (a reload
  //    restarts its WAL receiver) and wait until it streams through it.
  Relay relay("127.0.0.1", url_port(pair_.primary));
  standby_sql_->query("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=" + std::to_string(relay.port()) +
                      " user=postgres application_name=standby'");
  standby_sql_->query("SELECT pg_reload_conf()");
  ASSERT_TRUE(eventually(
      [&] {
        return standby_sql_->query("SELECT status || ':' || sender_port FROM pg_stat_wal_receiver") ==
               "streaming:" + std::to_string(relay.port());
      },
      15s))
      << "the standby does not stream through the relay";

  // The first grant of K (fence f1) reaches the standby; then the relay stops forwarding, either way.
  distrlock::Manager first_manager = open(pair_.primary);
  distrlock::Lock first = first_manager.lock(key_);
  constexpr auto first_ttl = 6s;  // on the promoted standby, K stays busy this long: the next grant waits for it
  ASSERT_TRUE(first.try_acquire(first_ttl));
  const std::int64_t f1 = first.fencing_token().value_or(0);
  ASSERT_TRUE(standby_replayed_primary()) << "the first grant did not reach the standby";
  ASSERT_TRUE(relay.set_mode(Relay::Mode::hang));

  // b. The first holder releases and a second one, through a multi-host URL, is granted K (fence f2): the lost
  //    grant. Neither reaches the standby.
  first.release();
  distrlock::Manager holder_manager = open(multi_host_url(pair_.primary, pair_.standby));
  distrlock::Lease lost_lease = holder_manager.acquire(key_, {.ttl = 4s, .extend_every = 200ms});
  const std::int64_t f2 = lost_lease.fencing_token();
  ASSERT_GT(f2, f1);
  std::atomic<Clock::rep> lost_at{0};
  std::stop_callback on_lost(lost_lease.stop_token(), [&] { lost_at = Clock::now().time_since_epoch().count(); });
  const std::string lost_grant_lsn = primary_sql_->query("SELECT pg_current_wal_lsn()");
  std::this_thread::sleep_for(300ms);  // time enough for a standby that still received WAL to replay it
  ASSERT_EQ(standby_sql_->query("SELECT pg_last_wal_replay_lsn() < '" + lost_grant_lsn + "'"), "t")
      << "the standby replayed the second grant: the relay did not cut replication";

  // c. The primary dies without a checkpoint; the standby is promoted.
  stop_primary_immediately();
  ASSERT_EQ(standby_sql_->query("SELECT pg_promote(true, 30)"), "t") << "the standby was not promoted";
  const auto promoted_at = Clock::now();
  first_manager = open(pair_.standby);  // the first holder's pool pointed at the dead primary
  const std::vector<distrlock::LockStatus> after = first_manager.status({key_});
  ASSERT_EQ(after.size(), 1U);
  ASSERT_LT(after[0].fence, f2) << "the new primary has the second grant: the failover lost nothing";

  // d. A contender on the new primary polls for K until the first grant's lease ends there.
  distrlock::Manager contender_manager = open(pair_.standby);
  distrlock::Lease contender = contender_manager.acquire(key_, {.ttl = 5s, .wait = 15s});
  const auto granted_at = Clock::now();
  const std::int64_t f3 = contender.fencing_token();

  EXPECT_GT(f3, f2) << "the fence of the lost grant (" << f2 << ") was issued again or undercut on the new primary";
  EXPECT_GT(f3, f1);
  ASSERT_TRUE(lost_lease.lost()) << "the holder of the lost grant still believes it holds K";
  ASSERT_NE(lost_at.load(), 0) << "lost() is true but the lease's stop was not requested";
  const Clock::time_point lost{Clock::duration(lost_at.load())};
  EXPECT_LE(lost, granted_at) << "the holder of the lost grant learned of it only after the contender was granted K";
  std::printf("lost grant: holder lost K %lld ms after pg_promote() returned, contender granted it %lld ms after; "
              "fences f1=%lld f2=%lld f3=%lld\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(lost - promoted_at).count()),
              static_cast<long long>(
                  std::chrono::duration_cast<std::chrono::milliseconds>(granted_at - promoted_at).count()),
              static_cast<long long>(f1), static_cast<long long>(f2), static_cast<long long>(f3));

  // The holder's Manager reaches the new primary through its multi-host URL.
  std::error_code ec;
  std::optional<distrlock::Lease> other = holder_manager.acquire(key_ + "/other", {.ttl = 5s}, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(other.has_value());
}

TEST_F(Failover, AManagerWhoseUrlNamesOnlyTheStandbyGetsAReadOnlyErrorNotABusyAnswer) {
  distrlock::Manager on_standby = open(pair_.standby);
  try {
    distrlock::Lease lease = on_standby.acquire(key_, {.ttl = 5s});
    ADD_FAILURE() << "a standby granted " << key_;
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::unavailable) << "another host of a multi-host URL may take writes: " << e.what();
    const std::string what = e.what();
    std::printf("acquire on the standby: %s (%s)\n", what.c_str(), e.code().message().c_str());
    EXPECT_TRUE(what.find("read-only") != std::string::npos || what.find("standby") != std::string::npos)
        << "the error does not say that the server is a standby: " << what;
  }
}

TEST_F(Failover, AMultiHostUrlWithTargetSessionAttrsReadWriteSkipsAStandbyListedFirst) {
  distrlock::Manager m = open(multi_host_url(pair_.standby, pair_.primary));
  distrlock::Lease lease = m.acquire(key_, {.ttl = 5s});
  const std::vector<distrlock::LockStatus> on_primary = open(pair_.primary).status({key_});
  ASSERT_EQ(on_primary.size(), 1U);
  EXPECT_TRUE(on_primary[0].held);
  EXPECT_EQ(on_primary[0].fence, lease.fencing_token());
}

TEST_F(Failover, ASessionAskingForRemoteApplyGrantsOnlyOnceTheSynchronousStandbyHasAppliedIt) {
  // The standby becomes synchronous, and stops applying what it receives.
  primary_sql_->query("ALTER SYSTEM SET synchronous_standby_names = '*'");
  primary_sql_->query("SELECT pg_reload_conf()");
  struct Restore {
    CallerSession* primary;
    CallerSession* standby;
    ~Restore() {
      std::string ignored;
      standby->query("SELECT pg_wal_replay_resume()", &ignored);
      primary->query("ALTER SYSTEM RESET synchronous_standby_names", &ignored);
      primary->query("SELECT pg_reload_conf()", &ignored);
    }
  } restore{primary_sql_.get(), standby_sql_.get()};
  ASSERT_TRUE(eventually([&] { return primary_sql_->query("SELECT count(*) FROM pg_stat_replication "
                                                          "WHERE sync_state = 'sync'") == "1"; },
                         10s));
  standby_sql_->query("SELECT pg_wal_replay_pause()");
  ASSERT_TRUE(eventually([&] { return standby_sql_->query("SELECT pg_get_wal_replay_pause_state()") == "paused"; }, 5s));

  // The library's sessions are at least `on`: flushed on the standby is enough, applied is not waited for.
  distrlock::Manager on = open(pair_.primary);
  EXPECT_TRUE(on.lock(key_ + "/on").try_acquire(5s));
  // A URL that asks for remote_apply keeps it: the grant waits for the paused standby, until its deadline.
  distrlock::Manager apply = open(pair_.primary + "?options=-c%20synchronous_commit%3Dremote_apply");
  std::error_code ec;
  distrlock::Lock waiting = apply.lock(key_ + "/remote_apply");
  EXPECT_FALSE(waiting.try_acquire(5s, ec, distrlock::Call{.deadline = Clock::now() + 1500ms}));
  EXPECT_EQ(ec, errc::timeout) << ec.message();
}

}  // namespace
}  // namespace dltest
