#include "backends/sqlite/sqlite_connection.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <thread>

#include "core/state.hpp"

namespace distrlock::detail::sqlite {
namespace {

// The progress handler runs every this many virtual-machine instructions: often enough to stop a long
// statement within microseconds of its deadline, rarely enough to cost nothing measurable.
constexpr int progress_period = 1000;
// Waiting for a lock: 100 µs doubling to 5 ms. Another writer holds the lock for tens of microseconds per
// statement, so short first naps keep latency low; the cap keeps a stop request noticed within 5 ms.
constexpr std::chrono::microseconds first_nap{100};
constexpr std::chrono::microseconds longest_nap{5000};

errc wait_reason(const OpContext& ctx) { return ctx.stop.stop_requested() ? errc::cancelled : errc::timeout; }

/// Sleeps before the `attempt`-th retry, never past the deadline. Returns false when the wait is over.
bool nap(int attempt, const OpContext& ctx) {
  const Clock::time_point now = Clock::now();
  if (ctx.stop.stop_requested() || now >= ctx.deadline) return false;
  const auto step = std::min(first_nap * (1 << std::min(attempt, 6)), longest_nap);
  std::this_thread::sleep_for(std::min<Clock::duration>(step, ctx.deadline - now));
  return true;
}

int on_busy(void* arg, int attempt) {
  const auto* w = static_cast<const Watch*>(arg);
  return w->ctx != nullptr && nap(attempt, *w->ctx) ? 1 : 0;
}

int on_progress(void* arg) {
  const auto* w = static_cast<const Watch*>(arg);
  if (w->ctx == nullptr) return 0;
  return w->ctx->stop.stop_requested() || Clock::now() >= w->ctx->deadline ? 1 : 0;
}

bool is_lock_wait(int rc) {
  return ((rc & 0xff) == SQLITE_BUSY && rc != SQLITE_BUSY_SNAPSHOT) || (rc & 0xff) == SQLITE_LOCKED;
}

/// The detail text of a failure: what happened in words, then SQLite's own message and code.
std::string describe_failure(int rc, const std::string& message, const OpContext& ctx) {
  const std::string native = " (SQLite: " + message + ", code " + std::to_string(rc) + ")";
  if (is_lock_wait(rc)) {
    return (ctx.stop.stop_requested() ? std::string("cancelled while another connection held the database lock")
                                      : std::string("another connection held the database lock until the deadline")) +
           native;
  }
  if ((rc & 0xff) == SQLITE_INTERRUPT) {
    return (ctx.stop.stop_requested() ? std::string("the statement was cancelled")
                                      : std::string("the statement was interrupted at the call's deadline")) +
           native;
  }
  return message + " (SQLite code " + std::to_string(rc) + ")";
}

Row read_row(sqlite3_stmt* stmt) {
  Row row(static_cast<std::size_t>(sqlite3_column_count(stmt)));
  for (int i = 0; i < static_cast<int>(row.size()); ++i) {
    Cell& cell = row[static_cast<std::size_t>(i)];
    cell.type = sqlite3_column_type(stmt, i);
    if (cell.type == SQLITE_INTEGER || cell.type == SQLITE_FLOAT) {
      cell.integer = sqlite3_column_int64(stmt, i);
    } else if (cell.type != SQLITE_NULL) {
      const void* data = sqlite3_column_blob(stmt, i);  // TEXT too, as stored, without conversion
      const int size = sqlite3_column_bytes(stmt, i);
      if (data != nullptr) cell.bytes.assign(static_cast<const char*>(data), static_cast<std::size_t>(size));
    }
  }
  return row;
}

}  // namespace

errc map_result(int code, std::string_view message, const OpContext& ctx) {
  switch (code & 0xff) {
    case SQLITE_BUSY:
      // A stale snapshot in the caller's transaction: only rolling that transaction back and retrying helps.
      if (code == SQLITE_BUSY_SNAPSHOT) return errc::conflict;
      return wait_reason(ctx);
    case SQLITE_LOCKED: return wait_reason(ctx);
    case SQLITE_INTERRUPT:
      // Ours at the deadline or stop request; anyone else's (sqlite3_interrupt on a caller's handle) is a
      // cancellation too.
      return ctx.stop.stop_requested() || Clock::now() < ctx.deadline ? errc::cancelled : errc::timeout;
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_NOLFS:
    case SQLITE_PROTOCOL:
    case SQLITE_AUTH: return errc::unavailable;
    case SQLITE_CONSTRAINT: return code == SQLITE_CONSTRAINT_CHECK ? errc::invalid_argument : errc::backend_error;
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
    case SQLITE_MISMATCH: return errc::invalid_argument;
    case SQLITE_ERROR:
      // A missing lock table, or a schema name that names no attached database.
      if (message.starts_with("no such table") || message.starts_with("unknown database")) return errc::not_migrated;
      return errc::backend_error;
    default: return errc::backend_error;
  }
}

void install_handlers(sqlite3* db, Watch* watch) {
  sqlite3_busy_handler(db, on_busy, watch);
  sqlite3_progress_handler(db, progress_period, on_progress, watch);
}

void bind_blob(sqlite3_stmt* stmt, int index, std::string_view bytes) {
  sqlite3_bind_blob64(stmt, index, bytes.empty() ? "" : bytes.data(), bytes.size(), SQLITE_STATIC);
}

void bind_text(sqlite3_stmt* stmt, int index, std::string_view bytes) {
  sqlite3_bind_text64(stmt, index, bytes.empty() ? "" : bytes.data(), bytes.size(), SQLITE_STATIC, SQLITE_UTF8);
}

StmtPtr prepare(sqlite3* db, std::string_view sql, bool persistent, const OpContext& ctx, std::error_code& ec) {
  for (int attempt = 0;; ++attempt) {
    sqlite3_stmt* raw = nullptr;
    const int rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()),
                                      persistent ? SQLITE_PREPARE_PERSISTENT : 0, &raw, nullptr);
    StmtPtr stmt(raw);
    if (rc == SQLITE_OK) {
      if (!stmt) fail(ec, errc::backend_error, "empty SQL statement");
      return stmt;
    }
    // Reading the schema can meet a lock (e.g. WAL recovery in progress): wait like a statement would.
    const int code = sqlite3_extended_errcode(db);
    if (is_lock_wait(code) && nap(attempt, ctx)) continue;
    const std::string message = sqlite3_errmsg(db);
    fail(ec, map_result(code, message, ctx), describe_failure(code, message, ctx));
    return nullptr;
  }
}

std::vector<Row> run(sqlite3* db, sqlite3_stmt* stmt, const OpContext& ctx, std::error_code& ec) {
  struct Reset {
    sqlite3_stmt* stmt;
    explicit Reset(sqlite3_stmt* s) : stmt(s) {}
    Reset(const Reset&) = delete;
    Reset& operator=(const Reset&) = delete;
    ~Reset() {
      sqlite3_reset(stmt);
      sqlite3_clear_bindings(stmt);  // the bound bytes belong to the caller and die after this call
    }
  } reset{stmt};
  if (ctx.stop.stop_requested()) {
    fail(ec, errc::cancelled, "cancelled before the statement ran");
    return {};
  }
  if (Clock::now() >= ctx.deadline) {
    fail(ec, errc::timeout, "the deadline passed before the statement ran");
    return {};
  }
  std::vector<Row> rows;
  for (int attempt = 0;;) {
    const int rc = sqlite3_step(stmt);
    if (rc == SQLITE_ROW) {
      rows.push_back(read_row(stmt));
      continue;
    }
    if (rc == SQLITE_DONE) return rows;
    // The extended code even on a caller's handle that did not ask for extended codes.
    const int code = sqlite3_extended_errcode(db);
    const std::string message = sqlite3_errmsg(db);
    sqlite3_reset(stmt);  // the statement (and, outside a transaction, its changes) is rolled back
    rows.clear();
    // Busy after the busy handler gave up, or busy without it (a caller's transaction upgrading its read
    // lock, a table locked by this very handle): the statement did nothing, so running it again is safe.
    if (is_lock_wait(code) && nap(attempt++, ctx)) continue;
    fail(ec, map_result(code, message, ctx), describe_failure(code, message, ctx));
    return {};
  }
}

std::vector<Row> exec(sqlite3* db, std::string_view sql, const OpContext& ctx, std::error_code& ec) {
  std::vector<Row> rows;
  while (true) {
    while (!sql.empty() && std::strchr(" \t\r\n;", sql.front()) != nullptr) sql.remove_prefix(1);
    if (sql.empty()) return rows;
    sqlite3_stmt* raw = nullptr;
    const char* tail = nullptr;
    int rc = SQLITE_OK;
    for (int attempt = 0;; ++attempt) {
      rc = sqlite3_prepare_v3(db, sql.data(), static_cast<int>(sql.size()), 0, &raw, &tail);
      if (rc == SQLITE_OK || !is_lock_wait(sqlite3_extended_errcode(db)) || !nap(attempt, ctx)) break;
    }
    StmtPtr stmt(raw);
    if (rc != SQLITE_OK) {
      const int code = sqlite3_extended_errcode(db);
      const std::string message = sqlite3_errmsg(db);
      fail(ec, map_result(code, message, ctx), describe_failure(code, message, ctx));
      return {};
    }
    sql.remove_prefix(static_cast<std::size_t>(tail - sql.data()));
    if (!stmt) continue;  // only a comment
    rows = run(db, stmt.get(), ctx, ec);
    if (ec) return {};
  }
}

void make_parent_directories(const std::string& path, std::error_code& ec) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  std::filesystem::path prefix;
  for (const std::filesystem::path& part : parent) {
    prefix /= part;
    if (part == prefix.root_path() || part.empty()) continue;
    struct stat st {};
    if (::stat(prefix.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) continue;
    if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      const std::error_code err(errno, std::generic_category());
      fail(ec, errc::unavailable, "cannot create directory " + prefix.string() + ": " + err.message());
      return;
    }
  }
}

std::unique_ptr<Connection> Opener::open(const OpContext& ctx, std::error_code& ec) {
  make_parent_directories(path_, ec);
  if (ec) return nullptr;
  auto c = std::make_unique<Connection>();
  sqlite3* raw = nullptr;
  // NOMUTEX: the pool lends each handle to one thread at a time, so SQLite's per-handle mutex is not needed.
  const int rc = sqlite3_open_v2(
      path_.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE,
      nullptr);
  c->db.reset(raw);
  if (rc != SQLITE_OK) {
    const std::string message = raw != nullptr ? sqlite3_errmsg(raw) : sqlite3_errstr(rc);
    fail(ec, errc::unavailable, "cannot open the SQLite database " + path_ + ": " + message);
    return nullptr;
  }
  install_handlers(raw, &c->watch);
  c->watch.ctx = &ctx;
  // WAL lets readers and the one writer proceed side by side and makes a commit one append. The mode is
  // stored in the file, so only the first handle ever switches it. FULL: a commit is on disk when it
  // returns, so a fencing token once granted is never granted again after a crash.
  const std::vector<Row> mode = exec(raw, "PRAGMA journal_mode=WAL", ctx, ec);
  if (!ec) exec(raw, "PRAGMA synchronous=FULL", ctx, ec);
  c->watch.ctx = nullptr;
  if (ec) return nullptr;
  const std::string journal = mode.empty() || mode[0].empty() ? std::string("unknown") : mode[0][0].bytes;
  if (journal != "wal" && warn_) std::call_once(warned_, warn_, journal);
  return c;
}

CallerHandlers::CallerHandlers(sqlite3* db, const OpContext& ctx) : db_(db) {
  watch_.ctx = &ctx;
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA busy_timeout", -1, &raw, nullptr) == SQLITE_OK) {
    StmtPtr stmt(raw);
    if (sqlite3_step(stmt.get()) == SQLITE_ROW) busy_timeout_ms_ = sqlite3_column_int(stmt.get(), 0);
  }
  install_handlers(db, &watch_);
}

CallerHandlers::~CallerHandlers() {
  sqlite3_progress_handler(db_, 0, nullptr, nullptr);
  sqlite3_busy_timeout(db_, busy_timeout_ms_);  // 0 removes our busy handler and installs none
}

}  // namespace distrlock::detail::sqlite
