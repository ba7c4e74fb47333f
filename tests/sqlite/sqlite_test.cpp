// SQLite-specific behaviour (exclusion across processes is a conformance case, process_test.cpp): WAL, busy waits bounded by deadlines, SQLite's clock,
// BLOB keys, the parent directory, migrations, and the caller's own sqlite3 handle.
#include <dlfcn.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <future>
#include <sstream>
#include <thread>

#include "support.hpp"

// Every handle opened in this process, the library's included, counts its commits and its UPDATE statements:
// sqlite3_open_v2 is interposed here (the library is linked into this executable, so its calls land here) and
// forwards to SQLite's own.
namespace {
std::atomic<long> commits_seen{0};
std::atomic<long> updates_seen{0};
}  // namespace

extern "C" int sqlite3_open_v2(const char* filename, sqlite3** db, int flags, const char* vfs) {
  using Open = int (*)(const char*, sqlite3**, int, const char*);
  static const auto real = reinterpret_cast<Open>(::dlsym(RTLD_NEXT, "sqlite3_open_v2"));
  const int rc = real(filename, db, flags, vfs);
  if (rc == SQLITE_OK && *db != nullptr) {
    sqlite3_commit_hook(
        *db,
        [](void*) {
          ++commits_seen;
          return 0;
        },
        nullptr);
    sqlite3_trace_v2(
        *db, SQLITE_TRACE_STMT,
        [](unsigned, void*, void* stmt, void*) {
          const char* sql = sqlite3_sql(static_cast<sqlite3_stmt*>(stmt));
          if (sql != nullptr && std::string_view(sql).starts_with("UPDATE")) ++updates_seen;
          return 0;
        },
        nullptr);
  }
  return rc;
}

namespace dltest {
namespace {

using distrlock::Call;
using distrlock::Clock;
using distrlock::errc;

// SQLite's clock in microseconds since the epoch, written independently of the backend's own expression.
constexpr const char* sqlite_now_us = "(CAST(strftime('%s', 'now') AS INTEGER) * 1000000)";

std::string hex_literal(std::string_view bytes) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out = "X'";
  for (const unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out + "'";
}

long long steady_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

struct Finished {
  std::string output;
  int status = -1;
};

/// Starts every command at once (through the shell), then collects each one's output and exit status.
std::vector<Finished> run_all(const std::vector<std::string>& commands) {
  std::vector<FILE*> pipes;
  for (const std::string& cmd : commands) pipes.push_back(popen((cmd + " 2>&1").c_str(), "r"));
  std::vector<Finished> done;
  for (FILE* p : pipes) {
    Finished f;
    if (p == nullptr) {
      f.output = "popen failed";
      done.push_back(f);
      continue;
    }
    char buf[512];
    while (fgets(buf, sizeof buf, p) != nullptr) f.output += buf;
    const int rc = pclose(p);
    f.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
    done.push_back(f);
  }
  return done;
}

class Sqlite : public ::testing::Test {
 protected:
  void SetUp() override {
    url_ = server_url(backend("sqlite"));
    ASSERT_FALSE(url_.empty());
    path_ = url_.substr(std::string_view("sqlite:").size());
    admin_ = backend("sqlite").open_session(url_);
    manager_.emplace(open());
    manager_->migrate();
    key_ = unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  distrlock::Manager open(distrlock::Options o = {}) { return open(url_, std::move(o)); }
  distrlock::Manager open(const std::string& url, distrlock::Options o = {}) {
    o.logger = log_.logger();
    return distrlock::Manager::open(url, o);
  }
  /// A fresh directory path beside the database file (not created), removed with it when the process exits.
  std::string scratch_path() const { return (std::filesystem::path(path_).parent_path() / unique_table()).string(); }
  std::string where_key(std::string_view key) const { return " WHERE key = " + hex_literal(key); }

  std::string url_;
  std::string path_;
  CapturedLog log_;
  std::unique_ptr<CallerSession> admin_;
  std::optional<distrlock::Manager> manager_;
  std::string key_;
};

TEST_F(Sqlite, TheDatabaseFileIsInWalMode) {
  EXPECT_EQ(admin_->query("PRAGMA journal_mode"), "wal");
  EXPECT_TRUE(std::filesystem::exists(path_ + "-wal"));
}

TEST_F(Sqlite, ABusyDatabaseTimesOutAtTheDeadlineWithTimeoutAndNeverARawBusyError) {
  distrlock::Lock held = manager_->lock(key_ + "/held");
  ASSERT_TRUE(held.try_acquire(30s));
  admin_->query("BEGIN IMMEDIATE");  // another writer holds the database's write lock

  const auto check = [&](const char* what, auto&& call, std::chrono::milliseconds slack) {
    SCOPED_TRACE(what);
    std::error_code ec;
    const auto started = Clock::now();
    const auto deadline = started + 300ms;
    call(Call{.deadline = deadline}, ec);
    EXPECT_EQ(ec, errc::timeout) << ec.message();
    EXPECT_EQ(&ec.category(), &distrlock::category());
    EXPECT_GE(Clock::now(), deadline);
    EXPECT_LT(Clock::now() - started, 300ms + slack);
  };
  // An acquire whose outcome is unknown is followed by a best-effort release (at most 1 s), as on any backend.
  check(
      "try_acquire", [&](const Call& c, std::error_code& ec) { manager_->lock(key_).try_acquire(30s, ec, c); }, 2500ms);
  check(
      "extend", [&](const Call& c, std::error_code& ec) { held.extend(30s, ec, c); }, 1000ms);
  check(
      "release", [&](const Call& c, std::error_code& ec) { held.release(ec, c); }, 1000ms);
  check(
      "migrate_down", [&](const Call& c, std::error_code& ec) { manager_->migrate_down(ec, c); }, 1000ms);
  admin_->query("ROLLBACK");
  held.release();
}

TEST_F(Sqlite, ReadersAreNotBlockedByAWriter) {
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s));
  admin_->query("BEGIN IMMEDIATE");
  std::error_code ec;
  const auto st = manager_->status({key_}, ec, Call{.deadline = Clock::now() + 300ms});
  EXPECT_FALSE(ec) << ec.message();
  ASSERT_EQ(st.size(), 1U);
  EXPECT_TRUE(st[0].held);
  admin_->query("ROLLBACK");
}

TEST_F(Sqlite, AStopRequestEndsABusyWaitWithCancelled) {
  admin_->query("BEGIN IMMEDIATE");
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(200ms);
    stop.request_stop();
  });
  distrlock::Lock lock = manager_->lock(key_);
  std::error_code ec;
  const auto started = Clock::now();
  lock.try_acquire(30s, ec, Call{.deadline = Clock::now() + 10s, .stop = stop.get_token()});
  const auto took = Clock::now() - started;
  canceller.join();
  admin_->query("ROLLBACK");
  EXPECT_EQ(ec, errc::cancelled) << ec.message();
  EXPECT_LT(took, 3s) << "200 ms until the stop, then at most 1 s of best-effort release";
}

TEST_F(Sqlite, ExpiryIsStoredAsMicrosecondsSinceTheEpochFromSqlitesClock) {
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(10s));
  EXPECT_EQ(admin_->query("SELECT typeof(expires) FROM distributed_locks" + where_key(key_)), "integer");
  const long long left_us = std::stoll(
      admin_->query("SELECT expires - " + std::string(sqlite_now_us) + " FROM distributed_locks" + where_key(key_)));
  // strftime('%s') truncates to the second, so the lease seems up to 1 s longer than its 10 s.
  EXPECT_GT(left_us, 9'000'000);
  EXPECT_LE(left_us, 11'000'000);
}

TEST_F(Sqlite, KeysAndTokensAreStoredAsBlobsByteForByte) {
  std::string key = "nul";
  key.push_back('\0');
  key += "\xff\xfe quote' " + key_;
  distrlock::Lock lock = manager_->lock(key);
  lock.acquire_with_static_token(std::string("tok\0en", 6), 30s);
  EXPECT_EQ(admin_->query("SELECT typeof(key) || ',' || typeof(token) || ',' || length(key) || ',' || "
                          "length(token) FROM distributed_locks" +
                          where_key(key)),
            "blob,blob," + std::to_string(key.size()) + ",6");
  const auto st = manager_->status({key});
  ASSERT_EQ(st.size(), 1U);
  EXPECT_EQ(st[0].key, key);
  EXPECT_TRUE(st[0].held);
  const auto all = manager_->status();
  EXPECT_NE(std::find_if(all.begin(), all.end(), [&](const auto& s) { return s.key == key; }), all.end());
}

TEST_F(Sqlite, ABusyAnswerNamesTheHolderAndItsTimeLeftAndWritesNothing) {
  distrlock::Options o;
  o.owner = "holder-host:4242";
  auto holder_manager = open(o);
  distrlock::Lock holder = holder_manager.lock(key_);
  ASSERT_TRUE(holder.try_acquire(30s));

  const std::string before = admin_->query("PRAGMA data_version");
  distrlock::Lock rival = manager_->lock(key_);
  for (int i = 0; i < 20; ++i) ASSERT_FALSE(rival.try_acquire(30s));
  EXPECT_EQ(admin_->query("PRAGMA data_version"), before) << "a busy answer must not commit a change";
  try {
    rival.acquire(30s);
    FAIL() << "acquire of a held key did not throw";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::already_acquired);
    EXPECT_NE(std::string(e.what()).find("holder-host:4242"), std::string::npos) << e.what();
  }
  holder.release();
  ASSERT_TRUE(rival.try_acquire(30s));
  EXPECT_NE(admin_->query("PRAGMA data_version"), before) << "control: a grant does commit a change";
}

TEST_F(Sqlite, TheParentDirectoryIsCreatedWithMode0700) {
  const std::string top = scratch_path();
  const std::string dir = top + "/state/distrlock";
  auto m = open("sqlite:" + dir + "/locks.db");
  EXPECT_FALSE(std::filesystem::exists(top)) << "opening a Manager touches nothing";
  m.migrate();
  EXPECT_TRUE(m.lock(key_).try_acquire(30s));
  for (const std::string& d : {top, top + "/state", dir}) {
    struct stat st {};
    ASSERT_EQ(::stat(d.c_str(), &st), 0) << d;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << d;
    EXPECT_EQ(st.st_mode & 0777, 0700U) << d;
  }
  EXPECT_TRUE(std::filesystem::exists(dir + "/locks.db"));
}

TEST_F(Sqlite, ALocationThatCannotBeCreatedFailsWithUnavailable) {
  const std::string top = scratch_path();
  std::filesystem::create_directories(top);
  {
    std::FILE* f = std::fopen((top + "/plain-file").c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fclose(f);
  }
  auto m = open("sqlite:" + top + "/plain-file/sub/locks.db");
  std::error_code ec;
  m.migrate(ec);
  EXPECT_EQ(ec, errc::unavailable) << ec.message();
  m.lock(key_).try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::unavailable) << ec.message();
}

TEST_F(Sqlite, TenProcessesMigratingAFreshFileAtOnceAllSucceed) {
  const std::string url = "sqlite:" + scratch_path() + "/fresh.db";
  const std::string table = unique_table();
  const long long start = steady_ns(Clock::now() + 2s);
  std::vector<std::string> commands;
  for (int i = 0; i < 10; ++i)
    commands.push_back(std::string(DISTRLOCK_SQLITE_PROBE) + " migrate '" + url + "' " + table + " " +
                       std::to_string(start));
  for (const Finished& f : run_all(commands)) {
    EXPECT_EQ(f.status, 0) << f.output;
    EXPECT_EQ(f.output, "ok\n");
  }
  auto fresh = backend("sqlite").open_session(url);
  EXPECT_EQ(fresh->query("SELECT count(*) || ',' || min(id) || ',' || max(id) FROM " + table + "_migrations"),
            "2,0001_create_lock_table,0002_create_fence_floor");
  EXPECT_EQ(fresh->query("PRAGMA journal_mode"), "wal");
}

TEST_F(Sqlite, MigrationsAreVersionedUpAndDownSqlThatSqliteRuns) {
  distrlock::Options o;
  o.table = "main.my_locks";
  auto m = open(o);
  const auto migrations = m.migrations();
  ASSERT_EQ(migrations.size(), 2U);
  EXPECT_EQ(migrations[0].version, 1);
  EXPECT_EQ(migrations[0].id, "0001_create_lock_table");
  EXPECT_NE(migrations[0].up.find("\"main\".\"my_locks\""), std::string::npos) << migrations[0].up;
  EXPECT_NE(migrations[0].up.find("key     BLOB"), std::string::npos) << migrations[0].up;
  EXPECT_EQ(migrations[0].down, "DROP TABLE IF EXISTS \"main\".\"my_locks\"");
  EXPECT_EQ(migrations[1].version, 2);
  EXPECT_EQ(migrations[1].id, "0002_create_fence_floor");
  EXPECT_EQ(migrations[1].down, "DROP TABLE IF EXISTS \"main\".\"my_locks_floor\"");

  for (const auto& migration : migrations)
    for (const std::string& statement : split_statements(migration.up)) admin_->query(statement);
  EXPECT_EQ(admin_->query("SELECT count(*) FROM sqlite_schema WHERE name = 'my_locks'"), "1");
  EXPECT_EQ(admin_->query("SELECT floor FROM main.my_locks_floor WHERE id = 1"), "0");
  admin_->query(migrations[1].down);
  admin_->query(migrations[0].down);
  EXPECT_EQ(admin_->query("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'my_locks%'"), "0");
}

TEST_F(Sqlite, AMemoryDatabaseAnEmptyPathAndTheTempSchemaAreInvalidArguments) {
  for (const std::string url : {"sqlite::memory:", "sqlite:"}) {
    std::error_code ec;
    distrlock::Manager::open(url, {}, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << url;
  }
  for (const std::string table : {"temp.locks", "TEMP.locks", "sqlite_locks"}) {
    std::error_code ec;
    distrlock::Manager::open(url_, {.table = table}, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << table;
  }
}

TEST_F(Sqlite, AcquireExtendAndReleaseAreOneStatementEachOnACallersHandle) {
  auto* db = static_cast<sqlite3*>(admin_->native().handle());
  std::vector<std::string> statements;
  sqlite3_trace_v2(
      db, SQLITE_TRACE_STMT,
      [](unsigned, void* seen, void* stmt, void*) {
        const std::string sql = sqlite3_sql(static_cast<sqlite3_stmt*>(stmt));
        // distrlock reads the handle's busy timeout (to give it back after the call) and its synchronous level
        // (a grant must be durable): local pragmas, not lock statements.
        if (sql != "PRAGMA busy_timeout" && sql != "PRAGMA synchronous")
          static_cast<std::vector<std::string>*>(seen)->push_back(sql);
        return 0;
      },
      &statements);
  const Call on_caller{.connection = admin_->native()};
  distrlock::Lock lock = manager_->lock(key_);
  distrlock::Lock rival = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s, on_caller));
  ASSERT_FALSE(rival.try_acquire(30s, on_caller));  // the holder's owner and time left come in the same statement
  lock.extend(30s, on_caller);
  lock.release(on_caller);
  sqlite3_trace_v2(db, 0, nullptr, nullptr);
  EXPECT_EQ(statements.size(), 4U);
  for (const std::string& sql : statements) EXPECT_EQ(sql.find("BEGIN"), std::string::npos) << sql;
}

TEST_F(Sqlite, ACallersRolledBackTransactionUndoesItsOwnWriteAndTheLockTogether) {
  const std::string work = unique_table();
  admin_->query("CREATE TABLE " + work + " (done INTEGER)");
  admin_->query("BEGIN");
  admin_->query("INSERT INTO " + work + " VALUES (1)");
  distrlock::Lock mine = manager_->lock(key_);
  ASSERT_TRUE(mine.try_acquire(30s, Call{.connection = admin_->native()}));
  admin_->query("ROLLBACK");

  EXPECT_EQ(admin_->query("SELECT count(*) FROM " + work), "0");
  EXPECT_EQ(admin_->query("SELECT count(*) FROM distributed_locks" + where_key(key_)), "0");
  distrlock::Lock other = open().lock(key_);
  EXPECT_TRUE(other.try_acquire(30s));
}

TEST_F(Sqlite, ACallersTransactionWhoseSnapshotWentStaleGetsConflict) {
  admin_->query("BEGIN DEFERRED");
  admin_->query("SELECT count(*) FROM distributed_locks");  // the transaction now reads a snapshot
  distrlock::Lock elsewhere = open().lock(key_ + "/elsewhere");
  ASSERT_TRUE(elsewhere.try_acquire(30s));  // another handle commits after that snapshot
  distrlock::Lock mine = manager_->lock(key_);
  std::error_code ec;
  EXPECT_FALSE(mine.try_acquire(30s, ec, Call{.deadline = Clock::now() + 2s, .connection = admin_->native()}));
  EXPECT_EQ(ec, errc::conflict) << ec.message();
  admin_->query("ROLLBACK");
  EXPECT_TRUE(mine.try_acquire(30s, Call{.connection = admin_->native()})) << "retrying the transaction works";
  mine.release();
}

TEST_F(Sqlite, ACallersBusyTimeoutIsGivenBackAfterTheCall) {
  admin_->query("PRAGMA busy_timeout = 4321");
  distrlock::Lock lock = manager_->lock(key_);
  ASSERT_TRUE(lock.try_acquire(30s, Call{.connection = admin_->native()}));
  EXPECT_EQ(admin_->query("PRAGMA busy_timeout"), "4321");
  lock.release(Call{.connection = admin_->native()});
}

TEST_F(Sqlite, AnAttachedDatabaseServesASchemaQualifiedTableOnACallersHandleOnly) {
  const std::string dir = scratch_path();
  std::filesystem::create_directories(dir);
  admin_->query("ATTACH DATABASE '" + dir + "/ops.db' AS ops");
  auto m = open(distrlock::Options{.table = "ops.locks"});
  const Call on_caller{.connection = admin_->native()};
  m.migrate(on_caller);
  distrlock::Lock lock = m.lock(key_);
  EXPECT_TRUE(lock.try_acquire(30s, on_caller));
  EXPECT_EQ(admin_->query("SELECT count(*) FROM ops.locks"), "1");
  // The library's own handles open the file alone: no database is attached to them.
  std::error_code ec;
  m.lock(key_).try_acquire(30s, ec);
  EXPECT_EQ(ec, errc::not_migrated) << ec.message();
  admin_->query("DETACH DATABASE ops");
}

TEST_F(Sqlite, AStatementStillRunningAtItsDeadlineIsInterrupted) {
  distrlock::Options o;
  o.table = unique_table();
  auto m = open(o);
  m.migrate();
  admin_->query("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) INSERT INTO " +
                o.table +
                " (key, token, fence, expires, owner) SELECT CAST(printf('k%08d', i) AS BLOB), NULL, 1, 0, "
                "NULL FROM n");
  const auto full_started = Clock::now();
  ASSERT_EQ(m.status().size(), 300000U);
  const auto full = Clock::now() - full_started;
  ASSERT_GT(full, 100ms) << "listing the table must outlast the deadline below";

  const auto started = Clock::now();
  try {
    m.status({}, Call{.deadline = started + 50ms});
    ADD_FAILURE() << "a status of 300,000 keys finished within 50 ms";
  } catch (const distrlock::error& e) {
    EXPECT_EQ(e.code(), errc::timeout) << e.what();
    EXPECT_NE(std::string(e.what()).find("interrupted at the call's deadline"), std::string::npos) << e.what();
  }
  EXPECT_LT(Clock::now() - started, full) << "the statement must end at its deadline, not run to completion";
  EXPECT_EQ(m.status({"k00000001"}).size(), 1U) << "the handle stays usable";
}

TEST_F(Sqlite, TheHeartbeatKeepsTwoHundredLeasesAliveWithBatchedExtensions) {
  constexpr int leases = 200;
  std::vector<distrlock::Lease> held;
  for (int i = 0; i < leases; ++i)
    held.push_back(manager_->acquire(key_ + "/" + std::to_string(i), {.ttl = 3s, .extend_every = 500ms}));
  // The interposed sqlite3_open_v2 must have seen the library's handles, or the counts below mean nothing.
  ASSERT_GE(commits_seen.load(), leases) << "the library's commits are not being counted";
  const long commits_before = commits_seen.load();
  const long updates_before = updates_seen.load();
  std::this_thread::sleep_for(4s);  // longer than the TTL: only extensions keep them
  const long commits = commits_seen.load() - commits_before;
  const long updates = updates_seen.load() - updates_before;
  // Batched: one transaction per heartbeat round, holding every lease's UPDATE. In 4 s with extend_every =
  // 500 ms there are 7 or 8 rounds; leases that first fall due in two groups are merged after one round (the
  // heartbeat takes every lease due within half a period). So: at most 8 rounds plus one split and one
  // partial round. One transaction per lease would be about 1,500. The floor (half the rounds) only shows
  // the heartbeat ran; that it kept every lease is checked below.
  EXPECT_GE(commits, 4);
  EXPECT_LE(commits, 10) << "each heartbeat round should commit all its extensions in one transaction";
  EXPECT_GE(updates, 4L * leases) << "every lease is extended in every round";
  EXPECT_GE(updates, commits * leases / 2) << "a transaction should carry many leases' extensions";
  int lost = 0;
  for (const auto& lease : held) lost += lease.lost() ? 1 : 0;
  EXPECT_EQ(lost, 0);
  auto other = open();
  for (int i = 0; i < 200; i += 17) EXPECT_FALSE(other.lock(key_ + "/" + std::to_string(i)).try_acquire(1s)) << i;
}

}  // namespace
}  // namespace dltest
