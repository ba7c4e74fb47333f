// prune(): rows of keys free for long enough go, and their fencing tokens never come back.
#include <atomic>
#include <future>
#include <random>
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::errc;

/// Conformance on a table of the test's own, so that prune() only ever sees the test's keys.
class Prune : public Conformance {
 protected:
  void SetUp() override {
    Conformance::SetUp();
    distrlock::Options o = options();
    o.table = unique_table();
    table_ = o.table;
    pruner_.emplace(distrlock::Manager::open(url_, o));
    pruner_->migrate();
  }
  distrlock::Manager& m() { return *pruner_; }
  /// The key's fence as the table has it (0: no row).
  std::int64_t stored_fence(const std::string& key) { return m().status({key}).at(0).fence; }
  /// Grants `key` and releases it `times` times; returns the last fence (0 if a grant failed, with a failure).
  std::int64_t grant_and_release(const std::string& key, int times) {
    std::int64_t last = 0;
    for (int i = 0; i < times; ++i) {
      distrlock::Lock lock = m().lock(key);
      if (!lock.try_acquire(30s)) {
        ADD_FAILURE() << key << " was busy";
        return 0;
      }
      last = *lock.fencing_token();
      lock.release();
    }
    return last;
  }

  std::string table_;
  std::optional<distrlock::Manager> pruner_;
};

TEST_P(Prune, APrunedKeyIsGrantedAFenceAboveEveryFenceItWasGrantedBefore) {
  const std::int64_t last = grant_and_release(key(), 3);
  ASSERT_GT(last, 0);
  const distrlock::PruneResult pruned = m().prune(0ms);
  ASSERT_EQ(pruned.deleted, 1);
  ASSERT_EQ(stored_fence(key()), 0) << "the row is gone";
  EXPECT_GE(pruned.fence_floor, last);

  distrlock::Lock again = m().lock(key());
  ASSERT_TRUE(again.try_acquire(30s));
  EXPECT_GT(*again.fencing_token(), last);
}

TEST_P(Prune, PruneDeletesOnlyKeysFreeForLongerThanItsAge) {
  const std::string held = key() + "/held", long_free = key() + "/long-free", just_released = key() + "/released";
  distrlock::Lock h = m().lock(held);
  ASSERT_TRUE(h.try_acquire(30s));
  distrlock::Lock expired = m().lock(long_free);
  ASSERT_TRUE(expired.try_acquire(100ms));
  const std::int64_t expired_fence = *expired.fencing_token();
  std::this_thread::sleep_for(1500ms);  // expired by the server's clock more than a second ago
  distrlock::Lock r = m().lock(just_released);
  ASSERT_TRUE(r.try_acquire(30s));
  const std::int64_t released_fence = *r.fencing_token();
  r.release();

  const distrlock::PruneResult pruned = m().prune(1s);
  EXPECT_EQ(pruned.deleted, 1);
  EXPECT_GE(pruned.fence_floor, expired_fence);
  EXPECT_EQ(stored_fence(long_free), 0);
  EXPECT_EQ(stored_fence(just_released), released_fence) << "released less than the age ago: kept";
  const auto st = m().status({held});
  EXPECT_TRUE(st.at(0).held);
  h.extend(30s);  // still the holder's, with its token
}

TEST_P(Prune, PruneWithAgeZeroKeepsEveryHeldLease) {
  distrlock::Lock h = m().lock(key());
  ASSERT_TRUE(h.try_acquire(30s));
  const std::int64_t fence = *h.fencing_token();
  EXPECT_EQ(m().prune(0ms).deleted, 0);
  EXPECT_EQ(stored_fence(key()), fence);
  h.extend(30s);
  h.release();
}

TEST_P(Prune, PruneRacingAcquiresOfOneKeyNeverReissuesAFence) {
  std::atomic<bool> done{false};
  std::atomic<std::int64_t> deleted{0};
  distrlock::Options o = options();
  o.table = table_;
  auto pruner = distrlock::Manager::open(url_, o);
  std::thread prunes([&] {
    while (!done.load()) {
      std::error_code ec;
      const distrlock::PruneResult r = pruner.prune(0ms, ec);
      if (!ec) deleted += r.deleted;
    }
  });
  // Grants go on until the prunes have deleted the key a few times between them (a fast server can run a
  // hundred cycles before a prune finds the key free), with a pause of 0-2 ms after each release to let them.
  std::vector<std::int64_t> fences;
  std::mt19937 rng(std::random_device{}());
  const auto give_up = distrlock::Clock::now() + 20s;
  while (distrlock::Clock::now() < give_up && (fences.size() < 100 || deleted.load() < 5)) {
    distrlock::Lock lock = m().lock(key());
    std::error_code ec;
    if (!lock.try_acquire(30s, ec)) continue;  // a conflict with the prune is a retry, never a grant
    fences.push_back(*lock.fencing_token());
    lock.release(ec);
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
  }
  done = true;
  prunes.join();
  EXPECT_GE(deleted.load(), 5) << "the prunes seldom deleted the key: the race was hardly run";
  ASSERT_GE(fences.size(), 100U);
  for (std::size_t i = 1; i < fences.size(); ++i)
    ASSERT_GT(fences[i], fences[i - 1]) << "grant " << i << " reissued or lowered a fence";
}

TEST_P(Prune, AReleaseThatCommitsWhileAPruneRunsNeverLetsThePruneDeleteAFenceTheFloorMissed) {
  // On MySQL/MariaDB also with the prune's connections at READ COMMITTED, where its look at the fences is a
  // plain read that does not wait for the release (at REPEATABLE READ it is a locking read, which does).
  std::vector<std::string> server_levels = {""};
  if (backend_->name.starts_with("mysql")) server_levels.emplace_back("READ COMMITTED");
  for (const std::string& server_level : server_levels) {
    SCOPED_TRACE(server_level.empty() ? "server default" : server_level);
    const std::string k = key() + "/" + (server_level.empty() ? "default" : "rc");
    auto admin = session();
    if (!server_level.empty()) admin->query("SET GLOBAL TRANSACTION ISOLATION LEVEL " + server_level);
    struct Restore {
      CallerSession* admin;
      bool on;
      ~Restore() {
        if (on) admin->query("SET GLOBAL TRANSACTION ISOLATION LEVEL REPEATABLE READ");
      }
    } restore{admin.get(), !server_level.empty()};

    distrlock::Lock lock = m().lock(k);
    ASSERT_TRUE(lock.try_acquire(30s));
    const std::int64_t fence = *lock.fencing_token();
    // The release waits, uncommitted, in a caller's transaction while the prune starts: the prune's cutoff is
    // after the release's expiry, but the release is not there yet when the prune looks at the fences.
    auto caller = session();
    caller->query(backend_->default_begin);
    lock.release(distrlock::Call{.connection = caller->native()});
    distrlock::Options o = options();
    o.table = table_;
    auto pruner = distrlock::Manager::open(url_, o);  // new connections, at the server's level now
    auto pruned = std::async(std::launch::async, [&] {
      std::error_code ec;
      pruner.prune(0ms, ec, distrlock::Call{.deadline = distrlock::Clock::now() + 10s});
      return ec;
    });
    std::this_thread::sleep_for(500ms);
    caller->query("COMMIT");
    EXPECT_FALSE(pruned.get());

    distrlock::Lock again = m().lock(k);
    ASSERT_TRUE(again.try_acquire(30s));
    EXPECT_GT(*again.fencing_token(), fence) << "the prune deleted the row without raising the floor over its fence";
  }
}

TEST_P(Prune, ACallersSnapshotFromBeforeAPruneNeverReissuesAPrunedFence) {
  for (const auto& [level, begin] : backend_->isolation_levels) {
    SCOPED_TRACE(level);
    const std::string k = key() + "/" + level;
    auto caller = session();
    caller->query(begin);
    // The snapshot, from a table the others do not write (a SERIALIZABLE read of the lock table would lock it):
    // k has no row yet, and the floor is as it was.
    caller->query("SELECT count(*) FROM " + table_ + "_migrations");
    const std::int64_t last = grant_and_release(k, 2);
    ASSERT_GT(last, 0);
    ASSERT_GE(m().prune(0ms).deleted, 1);

    distrlock::Lock mine = m().lock(k);
    std::error_code ec;
    const bool granted = mine.try_acquire(30s, ec, distrlock::Call{.connection = caller->native()});
    if (granted) {
      EXPECT_GT(*mine.fencing_token(), last) << "a grant on an old snapshot reissued a pruned fence";
    } else {
      EXPECT_TRUE(ec) << "the key is free: no grant must mean an error";
    }
    std::string ignored;
    caller->query("ROLLBACK", &ignored);
  }
}

TEST_P(Prune, PruneRefusesANegativeAgeAndDeletesNothing) {
  distrlock::Lock lock = m().lock(key());
  ASSERT_TRUE(lock.try_acquire(30s));
  lock.release();
  std::error_code ec;
  m().prune(-1ms, ec);
  EXPECT_EQ(ec, errc::invalid_argument);
  EXPECT_NE(stored_fence(key()), 0);
}

TEST_P(Prune, ATableFromBeforeTheFenceFloorIsUpgradedByMigrateAndKeepsItsFences) {
  std::int64_t last = grant_and_release(key(), 3);
  ASSERT_GT(last, 0);
  // Back to the schema of version 1: no fence floor.
  const std::vector<distrlock::Migration> all = m().migrations();
  ASSERT_GE(all.size(), 2U);
  auto admin = session();
  admin->query(all[1].down);
  admin->query("DELETE FROM " + table_ + "_migrations WHERE version = 2");
  distrlock::Options o = options();
  o.table = table_;
  auto old = distrlock::Manager::open(url_, o);  // fresh connections: nothing prepared against the old schema
  std::error_code ec;
  old.lock(key()).try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::not_migrated) << "an acquire needs the floor: " << ec.message();

  old.migrate();
  distrlock::Lock lock = old.lock(key());
  ASSERT_TRUE(lock.try_acquire(30s));
  EXPECT_GT(*lock.fencing_token(), last);
  last = *lock.fencing_token();
  lock.release();
  EXPECT_EQ(old.prune(0ms).deleted, 1);
  distrlock::Lock after = old.lock(key());
  ASSERT_TRUE(after.try_acquire(30s));
  EXPECT_GT(*after.fencing_token(), last);
}

INSTANTIATE_TEST_SUITE_P(AllBackends, Prune, ::testing::ValuesIn(backend_names()), backend_test_name);

}  // namespace
}  // namespace dltest
