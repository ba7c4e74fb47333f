// Locks taken inside the caller's own transactions: blocking, deadlines and rollback.
#include <algorithm>
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

struct IsolationCase {
  std::string backend;
  std::string level;
  std::string begin_sql;
  friend void PrintTo(const IsolationCase& c, std::ostream* os) { *os << c.backend << " " << c.level; }
};

std::vector<IsolationCase> isolation_cases() {
  std::vector<IsolationCase> cases;
  for (const std::string& name : backend_names())
    for (const auto& [level, sql] : backend(name).isolation_levels) cases.push_back({name, level, sql});
  return cases;
}

class IsolationLevels : public ::testing::TestWithParam<IsolationCase> {};

TEST_P(IsolationLevels, SecondTransactionBlocksOnTheFirstsRowAndTimesOutWithoutAToken) {
  const BackendUnderTest& b = backend(GetParam().backend);
  const std::string url = server_url(b);
  ASSERT_FALSE(url.empty());
  CapturedLog log;
  distrlock::Options options;
  options.logger = log.logger();
  auto manager = distrlock::Manager::open(url, options);
  manager.migrate();
  const std::string key = unique_key("isolation");
  auto first = b.open_session(url);
  auto second = b.open_session(url);
  first->query(GetParam().begin_sql);
  second->query(GetParam().begin_sql);

  distrlock::Lock a = manager.lock(key);
  ASSERT_TRUE(a.try_acquire(10s, Call{.connection = first->native()}));

  distrlock::Lock b_lock = manager.lock(key);
  std::error_code ec;
  const auto started = Clock::now();
  b_lock.acquire(10s, 0ms, ec, Call{.deadline = Clock::now() + 1s, .connection = second->native()});
  const auto waited = Clock::now() - started;

  EXPECT_EQ(ec, errc::timeout) << ec.message();
  // It blocked on the first transaction's row for most of its 1 s: the library may give up a little before the
  // deadline, to cancel the statement in time, but no earlier than half-way. And it ends by the deadline, plus
  // 500 ms of slack for a loaded VM.
  EXPECT_GE(waited, 500ms) << "the second acquire should have blocked on the first transaction's row";
  EXPECT_LT(waited, 1500ms);
  EXPECT_FALSE(b_lock.token().has_value());
  first->query("ROLLBACK");
  std::string ignored;  // the second transaction may have been aborted by the cancel
  second->query("ROLLBACK", &ignored);
}

// What depends on the level: the first transaction commits its grant while the second waits on its row. The
// second must not be granted the key; it is told busy, or, where the level cannot update a row changed after
// its snapshot, fails with conflict (a serialization failure the caller retries). Either way it holds no token,
// and it learns at the commit, not at its deadline.
TEST_P(IsolationLevels, AWaiterWhoseHolderCommitsMeanwhileIsToldBusyOrConflictAndGetsNoToken) {
  const BackendUnderTest& b = backend(GetParam().backend);
  const std::string url = server_url(b);
  ASSERT_FALSE(url.empty());
  distrlock::Options options;
  CapturedLog log;
  options.logger = log.logger();
  auto manager = distrlock::Manager::open(url, options);
  manager.migrate();
  const std::string key = unique_key("isolation-commit");
  auto first = b.open_session(url);
  auto second = b.open_session(url);
  first->query(GetParam().begin_sql);
  second->query(GetParam().begin_sql);

  distrlock::Lock a = manager.lock(key);
  ASSERT_TRUE(a.try_acquire(10s, Call{.connection = first->native()}));

  distrlock::Lock waiter = manager.lock(key);
  std::error_code ec;
  bool granted = true;
  Clock::time_point returned{};
  std::thread second_thread([&] {
    granted = waiter.try_acquire(10s, ec, Call{.deadline = Clock::now() + 5s, .connection = second->native()});
    returned = Clock::now();
  });
  std::this_thread::sleep_for(500ms);  // the second acquire is now waiting on the first transaction
  const Clock::time_point committed = Clock::now();
  first->query("COMMIT");
  second_thread.join();

  const auto& conflicting = b.levels_where_a_grant_committed_meanwhile_is_a_conflict;
  const bool conflict_expected =
      std::find(conflicting.begin(), conflicting.end(), GetParam().level) != conflicting.end();
  EXPECT_FALSE(granted) << "two transactions were granted one key";
  if (conflict_expected) {
    EXPECT_EQ(ec, errc::conflict) << ec.message();
  } else {
    EXPECT_FALSE(ec) << "expected a busy answer: " << ec.message();
  }
  EXPECT_FALSE(waiter.token().has_value());
  EXPECT_GE(returned, committed) << "the second acquire did not wait for the first transaction";
  // It ends at the commit (plus 1 s of slack for a loaded VM), long before its 5 s deadline.
  EXPECT_LT(returned - committed, 1s);
  std::string ignored;
  second->query("ROLLBACK", &ignored);

  // The committed grant stands, with its fence.
  const auto st = manager.status({key});
  ASSERT_EQ(st.size(), 1U);
  EXPECT_TRUE(st[0].held);
  EXPECT_EQ(st[0].fence, *a.fencing_token());
}

INSTANTIATE_TEST_SUITE_P(AllBackends, IsolationLevels, ::testing::ValuesIn(isolation_cases()),
                         [](const auto& i) { return i.param.backend + "_" + i.param.level; });

/// Client/server databases lock rows, so caller transactions that write different keys proceed side by side.
/// This cannot apply to an embedded SQLite file, which has one writer at a time: there, the second
/// transaction waits for the first to end, as the IsolationLevels case pins down. So this case runs for the
/// backends with a server only.
class RowLockingConformance : public Conformance {};

INSTANTIATE_TEST_SUITE_P(ServerBackends, RowLockingConformance, ::testing::ValuesIn(server_backend_names()),
                         backend_test_name);

/// The levels the caller-transaction cases run at: the backend's lowest, and its default (what most applications
/// get: READ COMMITTED in PostgreSQL, REPEATABLE READ in InnoDB, DEFERRED in SQLite).
std::vector<std::pair<std::string, std::string>> caller_levels(const BackendUnderTest& b) {
  return {b.isolation_levels.front(), {"default", b.default_begin}};
}

TEST_P(RowLockingConformance, TwoDifferentKeysInConcurrentTransactionsBothSucceed) {
  for (const auto& [level, begin] : caller_levels(*backend_)) {
    SCOPED_TRACE(level);
    auto first = session();
    auto second = session();
    first->query(begin);
    second->query(begin);
    distrlock::Lock a = manager().lock(key() + "/" + level + "/a");
    distrlock::Lock b = manager().lock(key() + "/" + level + "/b");

    EXPECT_TRUE(a.try_acquire(10s, Call{.deadline = Clock::now() + 2s, .connection = first->native()}));
    EXPECT_TRUE(b.try_acquire(10s, Call{.deadline = Clock::now() + 2s, .connection = second->native()}));
    first->query("COMMIT");
    second->query("COMMIT");
  }
}

TEST_P(Conformance, TwoTransactionsSharingOneDeadlineTheSecondTimesOutAndBothRollBackCleanly) {
  for (const auto& [level, begin] : caller_levels(*backend_)) {
    SCOPED_TRACE(level);
    const std::string k = key() + "/" + level;
    auto first = session();
    auto second = session();
    first->query(begin);
    second->query(begin);
    const Call shared{.deadline = Clock::now() + 1s};

    distrlock::Lock a = manager().lock(k);
    Call on_first = shared;
    on_first.connection = first->native();
    ASSERT_TRUE(a.try_acquire(10s, on_first));

    distrlock::Lock b = manager().lock(k);
    Call on_second = shared;
    on_second.connection = second->native();
    std::error_code ec;
    EXPECT_FALSE(b.try_acquire(10s, ec, on_second));
    EXPECT_EQ(ec, errc::timeout) << ec.message();
    // The second call used what was left of the shared deadline: it ends by it (the library may give up a
    // little early, to cancel in time; 500 ms at most here), plus 500 ms of slack for a loaded VM.
    EXPECT_GE(Clock::now(), *shared.deadline - 500ms);
    EXPECT_LT(Clock::now(), *shared.deadline + 500ms);
    EXPECT_FALSE(b.token().has_value());

    for (CallerSession* s : {first.get(), second.get()}) {
      std::string error;
      s->query("ROLLBACK", &error);
      EXPECT_TRUE(error.empty() || error.find("cancel") != std::string::npos ||
                  error.find("timeout") != std::string::npos)
          << "rollback raised: " << error;
    }
  }
}

TEST_P(Conformance, AnAcquireInsideARolledBackCallerTransactionLeavesTheKeyFree) {
  for (const auto& [level, begin] : caller_levels(*backend_)) {
    SCOPED_TRACE(level);
    const std::string k = key() + "/" + level;
    auto caller = session();
    caller->query(begin);
    distrlock::Lock mine = manager().lock(k);
    ASSERT_TRUE(mine.try_acquire(30s, Call{.connection = caller->native()}));
    caller->query("ROLLBACK");

    distrlock::Lock other = other_manager().lock(k);
    EXPECT_TRUE(other.try_acquire(30s));
  }
}

TEST_P(Conformance, ALeaseOnACallersConnectionIsRefusedAndWritesNothing) {
  for (const auto& [level, begin] : caller_levels(*backend_)) {
    SCOPED_TRACE(level);
    const std::string k = key() + "/" + level;
    auto caller = session();
    caller->query(begin);
    std::error_code ec;
    std::optional<distrlock::Lease> lease =
        manager().acquire(k, {.ttl = 30s}, ec, Call{.connection = caller->native()});
    EXPECT_EQ(ec, errc::invalid_argument) << ec.message();
    EXPECT_FALSE(lease.has_value());
    caller->query("ROLLBACK");

    // Nothing was written, in the caller's transaction or elsewhere: the key is free and has never been granted.
    const std::vector<distrlock::LockStatus> st = other_manager().status({k});
    ASSERT_EQ(st.size(), 1u);
    EXPECT_FALSE(st[0].held);
    EXPECT_EQ(st[0].fence, 0);
    distrlock::Lock other = other_manager().lock(k);
    EXPECT_TRUE(other.try_acquire(30s));
    other.release();
  }
}

TEST_P(Conformance, AnAcquireInsideACommittedCallerTransactionHoldsTheKey) {
  for (const auto& [level, begin] : caller_levels(*backend_)) {
    SCOPED_TRACE(level);
    const std::string k = key() + "/" + level;
    auto caller = session();
    caller->query(begin);
    distrlock::Lock mine = manager().lock(k);
    ASSERT_TRUE(mine.try_acquire(30s, Call{.connection = caller->native()}));
    caller->query("COMMIT");

    distrlock::Lock other = other_manager().lock(k);
    EXPECT_FALSE(other.try_acquire(30s));
    mine.release();
  }
}

}  // namespace
}  // namespace dltest
