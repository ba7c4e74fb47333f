// SQLite as a backend under test: an embedded file (no server), and an sqlite3 handle for caller transactions.
//
// Isolation levels: SQLite has none to choose. Every transaction is serializable, because the whole database
// has one writer at a time; what a caller chooses is when its transaction takes the write lock: BEGIN
// DEFERRED at its first write, BEGIN IMMEDIATE or EXCLUSIVE at BEGIN itself. Only DEFERRED fits the
// isolation-level case ("the second transaction blocks on the first in the library and fails at its deadline
// with timeout, holding no token"): the first transaction's acquire takes the write lock, and the second
// transaction's acquire waits for it in distrlock's busy handler until its deadline. With IMMEDIATE or
// EXCLUSIVE the second caller would already block in its own BEGIN, before distrlock is called at all, so
// those modes test SQLite rather than distrlock and are left out.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include "support.hpp"

namespace dltest {
namespace {

class SqliteSession final : public CallerSession {
 public:
  explicit SqliteSession(const std::string& url) {
    const std::string path = url.substr(url.find(':') + 1);
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) != SQLITE_OK)
      ADD_FAILURE() << "cannot open " << path << ": " << sqlite3_errmsg(db_);
    // The test's own statements (BEGIN, COMMIT, counts) wait for other writers, as an application's would.
    sqlite3_busy_timeout(db_, 10'000);
  }
  ~SqliteSession() override { sqlite3_close_v2(db_); }

  std::string query(std::string_view sql, std::string* error_out) override {
    std::string out;
    bool first_row = true;
    const char* next = sql.data();
    const char* const end = sql.data() + sql.size();
    while (next < end) {
      sqlite3_stmt* stmt = nullptr;
      const char* tail = nullptr;
      int rc = sqlite3_prepare_v2(db_, next, static_cast<int>(end - next), &stmt, &tail);
      next = tail;
      if (rc == SQLITE_OK && stmt == nullptr) continue;  // trailing whitespace
      if (rc == SQLITE_OK) {
        while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
          if (first_row && sqlite3_column_count(stmt) > 0) {
            const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
            out = text != nullptr ? std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(stmt, 0))) : "";
            first_row = false;
          }
        }
      }
      if (rc != SQLITE_DONE) {
        const std::string message = sqlite3_errmsg(db_);
        sqlite3_finalize(stmt);
        if (error_out != nullptr) {
          *error_out = message;
        } else {
          ADD_FAILURE() << sql << ": " << message;
        }
        return out;
      }
      sqlite3_finalize(stmt);
    }
    return out;
  }

  distrlock::NativeConnection native() override { return distrlock::NativeConnection::sqlite(db_); }

  // The library's own handles see only the file's `main` schema: a database ATTACHed here would be invisible
  // to them. So the schema-qualified table lives in `main`, freshly emptied of any earlier run's table.
  std::string make_schema() override {
    query("DROP TABLE IF EXISTS main.locks; DROP TABLE IF EXISTS main.locks_migrations", nullptr);
    return "main";
  }

  // Keys and tokens are BLOBs: compare and store them as such.
  void steal_key(std::string_view key) override {
    query("UPDATE distributed_locks SET token = CAST('thief' AS BLOB) WHERE key = CAST('" + std::string(key) +
              "' AS BLOB)",
          nullptr);
  }
  void steal(std::string_view token) override {
    query("UPDATE distributed_locks SET token = CAST('thief' AS BLOB) WHERE token = CAST('" + std::string(token) +
              "' AS BLOB)",
          nullptr);
  }

  void hold_row(std::string_view) override { query("BEGIN IMMEDIATE", nullptr); }

 private:
  sqlite3* db_ = nullptr;
};

}  // namespace

BackendUnderTest sqlite_backend_under_test() {
  BackendUnderTest b{
      "sqlite",
      "DISTRLOCK_TEST_SQLITE",  // optional: unset, each test process gets a fresh file (see server_url)
      "",                       // embedded: no server to stop, restart or cut off
      {{"deferred", "BEGIN DEFERRED"}},
      [](const std::string& url) -> std::unique_ptr<CallerSession> { return std::make_unique<SqliteSession>(url); },
      "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ",
  };
  b.default_begin = "BEGIN";  // DEFERRED
  b.levels_where_a_grant_committed_meanwhile_is_a_conflict = {};
  return b;
}

}  // namespace dltest
