#include "native_db.hpp"

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#ifdef DISTRLOCK_TORTURE_POSTGRES
#include <libpq-fe.h>
#endif
#ifdef DISTRLOCK_TORTURE_MYSQL
#include <mysql.h>
#endif
#ifdef DISTRLOCK_TORTURE_SQLITE
#include <sqlite3.h>
#endif

namespace torture {
namespace {

/// `"a"."b"` from `a.b`; the name was already validated by Manager::open.
std::string quoted(std::string_view table, char q) {
  std::string out(1, q);
  for (const char c : table) {
    if (c == '.') {
      out += q;
      out += '.';
      out += q;
    } else {
      out += c;
    }
  }
  out += q;
  return out;
}

// Timeouts of the direct connections: short, so a restarting server fails a write quickly instead of
// holding a worker inside its critical section.
constexpr int connect_timeout_s = 2;
constexpr int statement_timeout_ms = 2000;

#ifdef DISTRLOCK_TORTURE_POSTGRES
struct PgResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using PgResult = std::unique_ptr<PGresult, PgResultDeleter>;
struct PgConnDeleter {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};

class PgDb final : public NativeDb {
 public:
  explicit PgDb(const std::string& url) {
    const std::string timeout = std::to_string(connect_timeout_s);
    const std::string options = "-c statement_timeout=" + std::to_string(statement_timeout_ms);
    const char* keys[] = {"dbname", "connect_timeout", "options", "application_name", nullptr};
    const char* values[] = {url.c_str(), timeout.c_str(), options.c_str(), "distrlock-torture", nullptr};
    conn_.reset(PQconnectdbParams(keys, values, 1));
    if (PQstatus(conn_.get()) != CONNECTION_OK) throw DbError(std::string("postgres: ") + PQerrorMessage(conn_.get()));
    // "relation already exists, skipping" and the like are no news: keep stderr for the interleavings.
    PQsetNoticeProcessor(
        conn_.get(), [](void*, const char*) {}, nullptr);
  }

  void create_guard_table() override {
    exec(
        "CREATE TABLE IF NOT EXISTS torture_guard (k text PRIMARY KEY, fence bigint NOT NULL, "
        "writes bigint NOT NULL)");
  }

  WriteResult fenced_write(const std::string& key, std::int64_t fence, bool check_fence, std::stop_token) override {
    const char* sql =
        check_fence ? "INSERT INTO torture_guard AS g (k, fence, writes) VALUES ($1, $2, 1) ON CONFLICT (k) "
                      "DO UPDATE SET fence = EXCLUDED.fence, writes = g.writes + 1 WHERE g.fence <= EXCLUDED.fence"
                    : "INSERT INTO torture_guard AS g (k, fence, writes) VALUES ($1, $2, 1) ON CONFLICT (k) "
                      "DO UPDATE SET fence = EXCLUDED.fence, writes = g.writes + 1";
    const std::string f = std::to_string(fence);
    const char* params[] = {key.c_str(), f.c_str()};
    PgResult r(PQexecParams(conn_.get(), sql, 2, nullptr, params, nullptr, nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) return WriteResult::failed;
    return std::string_view(PQcmdTuples(r.get())) == "1" ? WriteResult::accepted : WriteResult::rejected;
  }

  void begin_hold(const std::string& lock_table, const std::string& key) override {
    exec("BEGIN");
    exec("SET LOCAL lock_timeout = '2s'");
    const std::string sql =
        "SELECT 1 FROM " + quoted(lock_table, '"') + " WHERE key = convert_to($1, 'UTF8') FOR UPDATE";
    const char* params[] = {key.c_str()};
    PgResult r(PQexecParams(conn_.get(), sql.c_str(), 1, nullptr, params, nullptr, nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) {
      end_hold();
      throw DbError(std::string("postgres: row lock: ") + PQresultErrorMessage(r.get()));
    }
  }

  void end_hold() noexcept override { PgResult r(PQexec(conn_.get(), "ROLLBACK")); }

  std::vector<long> backend_pids(const std::vector<int>& ports) override {
    std::vector<long> pids;
    for (const int port : ports) {
      const std::string p = std::to_string(port);
      const char* params[] = {p.c_str()};
      PgResult r(PQexecParams(conn_.get(), "SELECT pid FROM pg_stat_activity WHERE client_port = $1::int", 1, nullptr,
                              params, nullptr, nullptr, 0));
      if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) throw DbError(PQresultErrorMessage(r.get()));
      for (int i = 0; i < PQntuples(r.get()); ++i) pids.push_back(std::stol(PQgetvalue(r.get(), i, 0)));
    }
    return pids;
  }

  bool terminate(int port) override {
    const std::string p = std::to_string(port);
    const char* params[] = {p.c_str()};
    PgResult r(PQexecParams(conn_.get(),
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = $1::int", 1,
                            nullptr, params, nullptr, nullptr, 0));
    if (PQresultStatus(r.get()) != PGRES_TUPLES_OK) throw DbError(PQresultErrorMessage(r.get()));
    return PQntuples(r.get()) > 0;
  }

 private:
  void exec(const char* sql) {
    PgResult r(PQexec(conn_.get(), sql));
    const ExecStatusType st = PQresultStatus(r.get());
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
      throw DbError(std::string("postgres: ") + sql + ": " + PQresultErrorMessage(r.get()));
  }
  void exec(const std::string& sql) { exec(sql.c_str()); }

  std::unique_ptr<PGconn, PgConnDeleter> conn_;
};
#endif

#ifdef DISTRLOCK_TORTURE_MYSQL
struct MysqlDeleter {
  void operator()(MYSQL* m) const noexcept { mysql_close(m); }
};
struct MysqlResultDeleter {
  void operator()(MYSQL_RES* r) const noexcept { mysql_free_result(r); }
};

/// mysql://user[:password]@host[:port]/database[?...]; the query options (TLS, socket) are not needed on
/// the loopback test servers this tool runs against, and are ignored.
class MysqlDb final : public NativeDb {
 public:
  explicit MysqlDb(const std::string& url) {
    std::string_view rest = url;
    rest.remove_prefix(rest.find("://") + 3);
    const std::size_t q = rest.find('?');
    if (q != std::string_view::npos) rest = rest.substr(0, q);
    std::string user = "root", password, host = "127.0.0.1", db;
    unsigned port = 3306;
    const std::size_t at = rest.rfind('@');
    if (at != std::string_view::npos) {
      const std::string_view cred = rest.substr(0, at);
      const std::size_t colon = cred.find(':');
      user = cred.substr(0, colon);
      if (colon != std::string_view::npos) password = cred.substr(colon + 1);
      rest.remove_prefix(at + 1);
    }
    const std::size_t slash = rest.find('/');
    std::string_view hostport = rest.substr(0, slash);
    if (slash != std::string_view::npos) db = rest.substr(slash + 1);
    const std::size_t colon = hostport.rfind(':');
    if (colon != std::string_view::npos) {
      port = static_cast<unsigned>(std::stoul(std::string(hostport.substr(colon + 1))));
      hostport = hostport.substr(0, colon);
    }
    if (!hostport.empty()) host = hostport;
    conn_.reset(mysql_init(nullptr));
    const unsigned connect_timeout = connect_timeout_s;
    const unsigned io_timeout = statement_timeout_ms / 1000;
    mysql_options(conn_.get(), MYSQL_OPT_CONNECT_TIMEOUT, &connect_timeout);
    mysql_options(conn_.get(), MYSQL_OPT_READ_TIMEOUT, &io_timeout);
    mysql_options(conn_.get(), MYSQL_OPT_WRITE_TIMEOUT, &io_timeout);
    if (mysql_real_connect(conn_.get(), host.c_str(), user.c_str(), password.c_str(), db.c_str(), port, nullptr, 0) ==
        nullptr)
      throw DbError(std::string("mysql: ") + mysql_error(conn_.get()));
    // The guard's statement assigns columns in order, left to right: pin the mode that keeps that rule.
    exec("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'");
  }

  void create_guard_table() override {
    exec(
        "CREATE TABLE IF NOT EXISTS torture_guard (k VARCHAR(255) PRIMARY KEY, fence BIGINT NOT NULL, "
        "writes BIGINT NOT NULL) ENGINE=InnoDB");
  }

  WriteResult fenced_write(const std::string& key, std::int64_t fence, bool check_fence, std::stop_token) override {
    // `writes` is assigned first, so both assignments still see the old fence. Affected rows: 1 inserted,
    // 2 updated, 0 left alone (the fence was older).
    const std::string f = std::to_string(fence);
    const std::string sql =
        "INSERT INTO torture_guard (k, fence, writes) VALUES (" + literal(key) + ", " + f + ", 1) " +
        (check_fence ? "ON DUPLICATE KEY UPDATE writes = IF(fence <= VALUES(fence), writes + 1, writes), "
                       "fence = IF(fence <= VALUES(fence), VALUES(fence), fence)"
                     : "ON DUPLICATE KEY UPDATE writes = writes + 1, fence = VALUES(fence)");
    if (mysql_real_query(conn_.get(), sql.data(), sql.size()) != 0) return WriteResult::failed;
    return mysql_affected_rows(conn_.get()) > 0 ? WriteResult::accepted : WriteResult::rejected;
  }

  void begin_hold(const std::string& lock_table, const std::string& key) override {
    exec("SET SESSION innodb_lock_wait_timeout = 2");
    exec("START TRANSACTION");
    const std::string sql =
        "SELECT 1 FROM " + quoted(lock_table, '`') + " WHERE `key` = " + literal(key) + " FOR UPDATE";
    if (mysql_real_query(conn_.get(), sql.data(), sql.size()) != 0) {
      const std::string why = mysql_error(conn_.get());
      end_hold();
      throw DbError("mysql: row lock: " + why);
    }
    std::unique_ptr<MYSQL_RES, MysqlResultDeleter> r(mysql_store_result(conn_.get()));
  }

  void end_hold() noexcept override { mysql_query(conn_.get(), "ROLLBACK"); }

  bool terminate(int port) override {
    const std::string sql =
        "SELECT id FROM information_schema.processlist WHERE host LIKE '%:" + std::to_string(port) + "'";
    if (mysql_real_query(conn_.get(), sql.data(), sql.size()) != 0) throw DbError(mysql_error(conn_.get()));
    std::unique_ptr<MYSQL_RES, MysqlResultDeleter> r(mysql_store_result(conn_.get()));
    std::vector<std::string> ids;
    while (MYSQL_ROW row = mysql_fetch_row(r.get())) ids.emplace_back(row[0]);
    for (const std::string& id : ids) exec("KILL CONNECTION " + id);
    return !ids.empty();
  }

 private:
  std::string literal(const std::string& s) {
    std::string out(s.size() * 2 + 1, '\0');
    out.resize(mysql_real_escape_string(conn_.get(), out.data(), s.data(), static_cast<unsigned long>(s.size())));
    return "'" + out + "'";
  }
  void exec(const std::string& sql) {
    if (mysql_real_query(conn_.get(), sql.data(), sql.size()) != 0)
      throw DbError("mysql: " + sql + ": " + mysql_error(conn_.get()));
    std::unique_ptr<MYSQL_RES, MysqlResultDeleter> r(mysql_store_result(conn_.get()));
  }

  std::unique_ptr<MYSQL, MysqlDeleter> conn_;
};
#endif

#ifdef DISTRLOCK_TORTURE_SQLITE
struct SqliteDeleter {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
struct StmtDeleter {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};

class SqliteDb final : public NativeDb {
 public:
  explicit SqliteDb(const std::string& path) {
    sqlite3* db = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr);
    db_.reset(db);
    if (rc != SQLITE_OK) throw DbError("sqlite: cannot open " + path + ": " + sqlite3_errstr(rc));
    // Waiting for the write lock goes through busy() below, which gives up when the worker's stop fires.
    sqlite3_busy_handler(db_.get(), &SqliteDb::busy, this);
  }

  void create_guard_table() override {
    exec(
        "CREATE TABLE IF NOT EXISTS torture_guard (k TEXT PRIMARY KEY, fence INTEGER NOT NULL, "
        "writes INTEGER NOT NULL)");
  }

  WriteResult fenced_write(const std::string& key, std::int64_t fence, bool check_fence,
                           std::stop_token stop) override {
    stop_ = std::move(stop);
    busy_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(statement_timeout_ms);
    const char* sql = check_fence ? "INSERT INTO torture_guard (k, fence, writes) VALUES (?, ?, 1) ON CONFLICT (k) "
                                    "DO UPDATE SET fence = excluded.fence, writes = writes + 1 "
                                    "WHERE fence <= excluded.fence"
                                  : "INSERT INTO torture_guard (k, fence, writes) VALUES (?, ?, 1) ON CONFLICT (k) "
                                    "DO UPDATE SET fence = excluded.fence, writes = writes + 1";
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v2(db_.get(), sql, -1, &raw, nullptr) != SQLITE_OK) return WriteResult::failed;
    std::unique_ptr<sqlite3_stmt, StmtDeleter> st(raw);
    sqlite3_bind_text(st.get(), 1, key.data(), static_cast<int>(key.size()), SQLITE_TRANSIENT);
    sqlite3_bind_int64(st.get(), 2, fence);
    const int rc = sqlite3_step(st.get());
    stop_ = {};
    if (rc != SQLITE_DONE) return WriteResult::failed;
    return sqlite3_changes(db_.get()) > 0 ? WriteResult::accepted : WriteResult::rejected;
  }

  void begin_hold(const std::string&, const std::string&) override {
    stop_ = {};
    busy_until_ = std::chrono::steady_clock::now() + std::chrono::milliseconds(statement_timeout_ms);
    exec("BEGIN IMMEDIATE");
  }
  void end_hold() noexcept override { sqlite3_exec(db_.get(), "ROLLBACK", nullptr, nullptr, nullptr); }

 private:
  static int busy(void* self, int) {
    auto* me = static_cast<SqliteDb*>(self);
    if (me->stop_.stop_requested() || std::chrono::steady_clock::now() >= me->busy_until_) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    return 1;
  }
  void exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_.get(), sql, nullptr, nullptr, &err) != SQLITE_OK) {
      const std::string why = err != nullptr ? err : "?";
      sqlite3_free(err);
      throw DbError(std::string("sqlite: ") + sql + ": " + why);
    }
  }

  std::unique_ptr<sqlite3, SqliteDeleter> db_;
  std::stop_token stop_;
  std::chrono::steady_clock::time_point busy_until_{};
};
#endif

}  // namespace

std::unique_ptr<NativeDb> NativeDb::connect(const std::string& url) {
  const std::string_view u = url;
#ifdef DISTRLOCK_TORTURE_SQLITE
  if (u.starts_with("sqlite:")) return std::make_unique<SqliteDb>(std::string(u.substr(7)));
#endif
#ifdef DISTRLOCK_TORTURE_MYSQL
  if (u.starts_with("mysql://") || u.starts_with("mariadb://")) return std::make_unique<MysqlDb>(url);
#endif
#ifdef DISTRLOCK_TORTURE_POSTGRES
  if (u.starts_with("postgresql://") || u.starts_with("postgres://") || u.find('=') != std::string_view::npos)
    return std::make_unique<PgDb>(url);
#endif
  throw DbError("no direct connection for this URL's backend in this build: " + url);
}

}  // namespace torture
