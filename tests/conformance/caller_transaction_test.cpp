// Locks taken inside the caller's own transactions: blocking, deadlines and rollback.
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
  // It blocked on the first transaction's row until the server was asked to stop it, shortly before the
  // deadline (PostgreSQL: a cancel 200 ms ahead; MariaDB: max_statement_time 100 ms inside); never past it.
  EXPECT_GE(waited, 700ms) << "the second acquire should have blocked on the first transaction's row";
  EXPECT_LT(waited, 1s + 250ms) << "the call ran past its deadline (slack: 250 ms of scheduling)";
  EXPECT_FALSE(b_lock.token().has_value());
  first->query("ROLLBACK");
  second->query("ROLLBACK");
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

TEST_P(RowLockingConformance, TwoDifferentKeysInConcurrentTransactionsBothSucceed) {
  auto first = session();
  auto second = session();
  first->query(backend_->isolation_levels.front().second);
  second->query(backend_->isolation_levels.front().second);
  distrlock::Lock a = manager().lock(key() + "/a");
  distrlock::Lock b = manager().lock(key() + "/b");

  EXPECT_TRUE(a.try_acquire(10s, Call{.deadline = Clock::now() + 2s, .connection = first->native()}));
  EXPECT_TRUE(b.try_acquire(10s, Call{.deadline = Clock::now() + 2s, .connection = second->native()}));
  first->query("COMMIT");
  second->query("COMMIT");
}

TEST_P(Conformance, TwoTransactionsSharingOneDeadlineTheSecondTimesOutAndBothRollBackCleanly) {
  auto first = session();
  auto second = session();
  first->query(backend_->isolation_levels.front().second);
  second->query(backend_->isolation_levels.front().second);
  const Call shared{.deadline = Clock::now() + 1s};

  distrlock::Lock a = manager().lock(key());
  Call on_first = shared;
  on_first.connection = first->native();
  ASSERT_TRUE(a.try_acquire(10s, on_first));

  distrlock::Lock b = manager().lock(key());
  Call on_second = shared;
  on_second.connection = second->native();
  std::error_code ec;
  EXPECT_FALSE(b.try_acquire(10s, ec, on_second));
  EXPECT_EQ(ec, errc::timeout) << ec.message();
  // Giving up fits inside the deadline: the server is asked to stop the statement shortly before it (PostgreSQL:
  // a cancel 200 ms ahead; MariaDB: max_statement_time 100 ms inside), so the timeout may come that much early.
  EXPECT_GE(Clock::now(), *shared.deadline - 250ms);
  EXPECT_LT(Clock::now(), *shared.deadline + 250ms) << "the call ran past its deadline (slack: 250 ms of scheduling)";
  EXPECT_FALSE(b.token().has_value());

  for (CallerSession* s : {first.get(), second.get()}) {
    std::string error;
    s->query("ROLLBACK", &error);
    EXPECT_TRUE(error.empty() || error.find("cancel") != std::string::npos ||
                error.find("timeout") != std::string::npos)
        << "rollback raised: " << error;
  }
}

TEST_P(Conformance, AnAcquireInsideARolledBackCallerTransactionLeavesTheKeyFree) {
  auto caller = session();
  caller->query(backend_->isolation_levels.front().second);
  distrlock::Lock mine = manager().lock(key());
  ASSERT_TRUE(mine.try_acquire(30s, Call{.connection = caller->native()}));
  caller->query("ROLLBACK");

  distrlock::Lock other = other_manager().lock(key());
  EXPECT_TRUE(other.try_acquire(30s));
}

TEST_P(Conformance, AnAcquireInsideACommittedCallerTransactionHoldsTheKey) {
  auto caller = session();
  caller->query(backend_->isolation_levels.front().second);
  distrlock::Lock mine = manager().lock(key());
  ASSERT_TRUE(mine.try_acquire(30s, Call{.connection = caller->native()}));
  caller->query("COMMIT");

  distrlock::Lock other = other_manager().lock(key());
  EXPECT_FALSE(other.try_acquire(30s));
  mine.release();
}

}  // namespace
}  // namespace dltest
