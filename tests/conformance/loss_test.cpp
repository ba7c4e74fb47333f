// The cases where a holder could believe in a lease someone else already had: a stalled row that hides other
// leases, a result produced under a lost lease, fences reissued by a session setting, one lock table per role.
#include <atomic>
#include <future>
#include <optional>
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

TEST_P(ServerConformance, ABusyAnswerInACallersOpenTransactionHidesNoOtherLeaseFromTheHeartbeat) {
  // Lease A is long; B is short and shares A's heartbeat. A caller's open transaction asks for A and hears "busy".
  // Whatever that leaves behind on A's row must not cost B its extensions: a third process must never be granted
  // B while its holder still believes in it.
  distrlock::Manager holder = other_manager();
  distrlock::Lease a = holder.acquire(key() + "/a", {.ttl = 60s, .extend_every = 300ms});  // due during the test
  distrlock::Lease b = holder.acquire(key() + "/b", {.ttl = 3s});
  auto caller = session();
  caller->query(backend_->isolation_levels.at(1).second);  // each backend's second level: read committed
  distrlock::Lock asker = manager().lock(key() + "/a");
  EXPECT_FALSE(asker.try_acquire(10s, Call{.connection = caller->native()}));

  distrlock::Lock third = manager().lock(key() + "/b");
  const auto until = Clock::now() + 6s;  // two of B's TTLs
  bool granted_while_believed = false;
  while (Clock::now() < until) {
    const bool believed = !b.lost();
    if (third.try_acquire(30s) && believed) granted_while_believed = true;
    if (third.token()) third.release();
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_FALSE(granted_while_believed);
  EXPECT_FALSE(b.lost()) << "B's extensions were held back by A's row";
  caller->query("ROLLBACK");
}

TEST_P(Conformance, DoExclusivelyReportsLeaseLostWhenAnotherTokenTookTheKeyWhileTheWorkRan) {
  std::error_code ec;
  const auto result = manager().do_exclusively(
      key(), {.ttl = 30s},
      [&](std::stop_token) {
        // A paused holder's lease, expired and taken over behind its back: its own clock never saw the deadline.
        session()->steal_key(key());
        return 42;
      },
      ec);
  EXPECT_EQ(ec, errc::lease_lost) << "the work's result was returned as valid";
  EXPECT_FALSE(result.has_value());
}

TEST_P(Conformance, DoExclusivelyReturnsTheResultWhenTheLeaseHeldThroughout) {
  std::error_code ec;
  const auto result = manager().do_exclusively(key(), {.ttl = 30s}, [](std::stop_token) { return 42; }, ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(result, 42);
}

}  // namespace
}  // namespace dltest

namespace dltest {
namespace {

/// Cases that need one server's own SQL to set up.
class OneServer : public Conformance {};

TEST_P(OneServer, TwoRolesWithSchemasOfTheirOwnShareOneLockTable) {
  // PostgreSQL 15's recommended layout: a schema per role, first on each role's search_path. An unqualified table
  // name resolved through it would give each role a lock table of its own, and two holders of every key.
  auto admin = session();
  const std::string a = unique_table(), b = unique_table();
  for (const std::string& role : {a, b}) {
    admin->query("CREATE ROLE " + role + " LOGIN");
    admin->query("CREATE SCHEMA " + role + " AUTHORIZATION " + role);
    admin->query("GRANT USAGE, CREATE ON SCHEMA public TO " + role);
  }
  const std::string table = unique_table();
  auto as = [&](const std::string& role) {
    distrlock::Options o = options();
    o.table = table;
    std::string url = url_;
    const std::size_t at = url.find("postgres@");
    url.replace(at, 8, role);
    return distrlock::Manager::open(url, o);
  };
  distrlock::Manager first = as(a);
  first.migrate();
  for (const std::string& t : {table, table + "_migrations", table + "_floor"})
    admin->query("GRANT ALL ON public." + t + " TO " + b);
  distrlock::Manager second = as(b);
  second.migrate();

  distrlock::Lock mine = first.lock(key());
  ASSERT_TRUE(mine.try_acquire(30s));
  distrlock::Lock theirs = second.lock(key());
  EXPECT_FALSE(theirs.try_acquire(30s)) << "each role found a lock table of its own";
  EXPECT_EQ(admin->query("SELECT count(*) FROM pg_tables WHERE tablename = '" + table + "'"), "1");
  mine.release();
  for (const std::string& role : {a, b}) {
    admin->query("DROP SCHEMA " + role + " CASCADE");
  }
  admin->query("DROP TABLE public." + table + ", public." + table + "_migrations, public." + table + "_floor");
  for (const std::string& role : {a, b}) {
    admin->query("REVOKE ALL ON SCHEMA public FROM " + role);
    admin->query("DROP ROLE " + role);
  }
}

INSTANTIATE_TEST_SUITE_P(Postgres, OneServer, ::testing::Values("postgres"), backend_test_name);

class MariadbSqlMode : public Conformance {};

TEST_P(MariadbSqlMode, SimultaneousAssignmentOnACallersConnectionStillGivesEveryGrantANewFence) {
  // sql_mode=ORACLE includes SIMULTANEOUS_ASSIGNMENT: every assignment of ON DUPLICATE KEY UPDATE sees the old row.
  auto caller = session();
  caller->query("SET SESSION sql_mode = CONCAT(@@sql_mode, ',SIMULTANEOUS_ASSIGNMENT')");
  std::vector<std::int64_t> fences;
  for (int i = 0; i < 3; ++i) {
    distrlock::Lock lock = manager().lock(key());
    ASSERT_TRUE(lock.try_acquire(distrlock::min_ttl, Call{.connection = caller->native()}));
    fences.push_back(*lock.fencing_token());
    EXPECT_LE(lock.expires_in(), distrlock::min_ttl);
    std::this_thread::sleep_for(distrlock::min_ttl + 20ms);  // let it expire: the next holder takes it over
  }
  EXPECT_LT(fences[0], fences[1]);
  EXPECT_LT(fences[1], fences[2]);

  distrlock::Lock holder = manager().lock(key());
  ASSERT_TRUE(holder.try_acquire(30s, Call{.connection = caller->native()}));
  distrlock::Lock rival = manager().lock(key());
  EXPECT_FALSE(rival.try_acquire(30s, Call{.connection = caller->native()})) << "a held key was granted again";
  EXPECT_TRUE(manager().status({key()}).at(0).held);
}

TEST_P(MariadbSqlMode, SimultaneousAssignmentAsTheServersDefaultChangesNothingOnOurOwnConnections) {
  auto admin = session();
  const std::string before = admin->query("SELECT @@GLOBAL.sql_mode");
  admin->query("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',SIMULTANEOUS_ASSIGNMENT')");
  std::vector<std::int64_t> fences;
  {
    distrlock::Manager fresh = other_manager();  // new connections start with the server's default
    for (int i = 0; i < 3; ++i) {
      distrlock::Lock lock = fresh.lock(key());
      EXPECT_TRUE(lock.try_acquire(30s));
      fences.push_back(lock.fencing_token().value_or(0));
      lock.release();
    }
  }
  admin->query("SET GLOBAL sql_mode = '" + before + "'");
  ASSERT_EQ(fences.size(), 3U);
  EXPECT_LT(fences[0], fences[1]);
  EXPECT_LT(fences[1], fences[2]);
}

INSTANTIATE_TEST_SUITE_P(Mariadb, MariadbSqlMode, ::testing::Values("mysql", "mysql_portable"), backend_test_name);

}  // namespace
}  // namespace dltest

namespace dltest {
namespace {

/// A caller's session whose durability setting can be read back, and the SQL to lower and read it.
struct DurabilityCase {
  std::string backend;
  std::string lower;  // makes the session's commits non-durable
  std::string read;   // the session's setting afterwards
  std::string durable;
};

class CallerDurability : public ::testing::TestWithParam<DurabilityCase> {};

TEST_P(CallerDurability, AGrantOnACallersConnectionCommitsDurablyWhateverTheSessionSays) {
  const BackendUnderTest& b = backend(GetParam().backend);
  const std::string url = server_url(b);
  ASSERT_FALSE(url.empty());
  distrlock::Manager manager = distrlock::Manager::open(url);
  manager.migrate();
  auto caller = b.open_session(url);
  caller->query(GetParam().lower);
  if (GetParam().backend != "sqlite") caller->query(b.isolation_levels.front().second);  // SQLite: see below
  distrlock::Lock lock = manager.lock(unique_key("durable"));
  ASSERT_TRUE(lock.try_acquire(30s, distrlock::Call{.connection = caller->native()}));
  EXPECT_EQ(caller->query(GetParam().read), GetParam().durable)
      << "the grant commits with the caller's transaction, which would not wait for the disk";
  if (GetParam().backend != "sqlite") caller->query("COMMIT");
}

TEST(CallerDurability, AGrantInsideASqliteTransactionThatIsNotDurableIsRefusedBeforeAnythingIsWritten) {
  const BackendUnderTest& b = backend("sqlite");
  const std::string url = server_url(b);
  ASSERT_FALSE(url.empty());
  distrlock::Manager manager = distrlock::Manager::open(url);
  manager.migrate();
  auto caller = b.open_session(url);
  caller->query("PRAGMA synchronous = OFF");
  caller->query("BEGIN");
  const std::string key = unique_key("not-durable");
  distrlock::Lock lock = manager.lock(key);
  std::error_code ec;
  EXPECT_FALSE(lock.try_acquire(30s, ec, distrlock::Call{.connection = caller->native()}));
  EXPECT_EQ(ec, distrlock::errc::invalid_argument) << ec.message();
  caller->query("COMMIT");
  EXPECT_EQ(manager.status({key}).at(0).fence, 0) << "nothing was written";
}

INSTANTIATE_TEST_SUITE_P(
    Backends, CallerDurability,
    ::testing::Values(DurabilityCase{"postgres", "SET synchronous_commit = off", "SHOW synchronous_commit", "on"},
                      DurabilityCase{"sqlite", "PRAGMA synchronous = OFF", "PRAGMA synchronous", "2"}),
    [](const auto& i) { return i.param.backend; });

}  // namespace
}  // namespace dltest

namespace dltest {
namespace {

TEST_P(Conformance, ALeaseThatOutlivesItsManagerIsStillExtendedAndThenReleased) {
  std::optional<distrlock::Manager> owner = other_manager();
  std::optional<distrlock::Lease> lease = owner->acquire(key(), {.ttl = 600ms, .extend_every = 150ms});
  owner.reset();  // the Lease keeps what it needs of the Manager
  std::this_thread::sleep_for(1500ms);  // longer than the TTL: only extensions keep it
  EXPECT_FALSE(lease->lost());
  distrlock::Lock rival = manager().lock(key());
  EXPECT_FALSE(rival.try_acquire(30s)) << "the lease was not extended after its Manager was gone";
  lease.reset();  // the last reference: releases, then the Manager's threads stop
  EXPECT_TRUE(rival.try_acquire(30s)) << "the last Lease did not release the key";
}

}  // namespace
}  // namespace dltest

namespace dltest {
namespace {

TEST_P(ServerConformance, ALeaseGrantedAfterAWaitLongerThanItsTtlIsUsableWhenAcquireReturns) {
  // A caller's open transaction holds the key's row; our acquire waits on the server for longer than its TTL, and
  // is granted when that transaction rolls back. A lease counted from its send would be over on arrival.
  {
    distrlock::Lock first = manager().lock(key());  // hold_row needs the key's row to exist
    ASSERT_TRUE(first.try_acquire(30s));
    first.release();
  }
  auto blocker = session();
  blocker->hold_row(key());
  std::thread release_later([&] {
    std::this_thread::sleep_for(1500ms);
    blocker->query("ROLLBACK");
  });
  std::error_code ec;
  std::optional<distrlock::Lease> lease = manager().acquire(key(), {.ttl = 1s}, ec);
  release_later.join();
  ASSERT_FALSE(ec) << ec.message();
  EXPECT_FALSE(lease->lost()) << "acquire returned a lease that was already over";
  EXPECT_FALSE(lease->stop_token().stop_requested());
}

}  // namespace
}  // namespace dltest
