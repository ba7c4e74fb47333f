// Migrations on every backend: a missing table, and many migrators at once.
#include <future>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::errc;

TEST_P(Conformance, AcquireAndStatusBeforeMigrateFailWithNotMigrated) {
  distrlock::Options o = options();
  o.table = unique_table();
  auto fresh = distrlock::Manager::open(url_, o);
  distrlock::Lock lock = fresh.lock(key());
  std::error_code ec;
  lock.try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::not_migrated) << ec.message();
  fresh.status({key()}, ec);
  EXPECT_EQ(ec, errc::not_migrated) << ec.message();
  fresh.migrate();
  EXPECT_TRUE(lock.try_acquire(30s));
}

TEST_P(Conformance, MigrateIsIdempotentAndSafeWhenRunConcurrently) {
  distrlock::Options o = options();
  o.table = unique_table();
  std::vector<std::future<std::error_code>> runs;
  for (int i = 0; i < 8; ++i) {
    runs.push_back(std::async(std::launch::async, [&] {
      auto m = distrlock::Manager::open(url_, o);
      std::error_code ec;
      m.migrate(ec);
      if (!ec) m.migrate(ec);
      return ec;
    }));
  }
  for (auto& r : runs) EXPECT_FALSE(r.get()) << "a concurrent migrate failed";
  auto admin = session();
  const auto versions = distrlock::Manager::open(url_, o).migrations().size();
  EXPECT_EQ(admin->query("SELECT count(*) FROM " + o.table + "_migrations"), std::to_string(versions));
  EXPECT_EQ(admin->query("SELECT count(*) FROM " + o.table), "0");
}

TEST_P(Conformance, MigrateDownDropsEveryTableAndMigrateRecreatesThemWithFencingFromOne) {
  distrlock::Options o = options();
  o.table = unique_table();
  o.pool_size = 1;  // one connection, with statements prepared against the dropped table, serves every call
  auto m = distrlock::Manager::open(url_, o);
  m.migrate();
  ASSERT_TRUE(m.lock(key()).try_acquire(30s));
  m.migrate_down();
  EXPECT_EQ(session()->query(backend_->count_tables_named + "('" + o.table + "', '" + o.table + "_migrations', '" + o.table + "_floor')"), "0");
  std::error_code ec;
  m.lock(key()).try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::not_migrated) << ec.message();
  m.migrate();
  distrlock::Lock again = m.lock(key());
  EXPECT_TRUE(again.try_acquire(30s));
  EXPECT_EQ(again.fencing_token(), 1) << "the table is new, so fencing starts again";
}

}  // namespace
}  // namespace dltest
