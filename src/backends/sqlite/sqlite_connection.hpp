// SQLite plumbing: owning handles, one statement bounded by a call's deadline, and the pool of handles.
//
// Waiting in SQLite happens in two places, and both are bounded by the running call's OpContext:
//  * the busy handler, which SQLite calls while another connection holds the lock it needs: ours sleeps in
//    short steps and gives up at the deadline (or when the stop token is requested);
//  * the progress handler, which SQLite calls every few hundred virtual-machine instructions: ours
//    interrupts a statement still running at the deadline.
// Either way the call fails with errc::timeout (errc::cancelled for the stop token), never with a raw
// SQLITE_BUSY.
#pragma once

#include <sqlite3.h>

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/backend.hpp"
#include "core/pool.hpp"

namespace distrlock::detail::sqlite {

struct DbDeleter {
  void operator()(sqlite3* db) const noexcept { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbDeleter>;

struct StmtDeleter {
  void operator()(sqlite3_stmt* s) const noexcept { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtDeleter>;

/// Maps an SQLite extended result code (and, for SQLITE_ERROR, its message) to the library's error code.
/// The one place where native codes become distrlock codes. Waits that ended (busy, locked, interrupted)
/// become errc::timeout, or errc::cancelled when ctx.stop was requested.
errc map_result(int code, std::string_view message, const OpContext& ctx);

/// What the busy and progress handlers of one handle look at: the running call's context, or nothing
/// between calls (then they neither wait nor interrupt).
struct Watch {
  const OpContext* ctx = nullptr;
};

/// Installs the busy and progress handlers of `watch` on `db`.
void install_handlers(sqlite3* db, Watch* watch);

/// One column of a result row: an integer, or the bytes of a text or blob.
struct Cell {
  int type = SQLITE_NULL;
  std::int64_t integer = 0;
  std::string bytes;
};
using Row = std::vector<Cell>;

/// Binds bytes as a BLOB (keys, tokens) or as TEXT (owners). The bytes must stay alive until run() returns.
void bind_blob(sqlite3_stmt* stmt, int index, std::string_view bytes);
void bind_text(sqlite3_stmt* stmt, int index, std::string_view bytes);

/// Prepares the first statement of `sql`; `persistent` for statements cached for the handle's life. On
/// failure sets `ec` (no such table: errc::not_migrated) and returns null.
StmtPtr prepare(sqlite3* db, std::string_view sql, bool persistent, const OpContext& ctx, std::error_code& ec);

/// Steps a bound statement to completion and returns its rows. A lock another connection holds is waited
/// for (busy handler, then retries of the whole statement, which did nothing when it reported busy) until
/// ctx's deadline. Always leaves the statement reset with its bindings cleared. On failure sets `ec` and
/// the last detail, and returns no rows: a statement that failed after producing rows was rolled back.
std::vector<Row> run(sqlite3* db, sqlite3_stmt* stmt, const OpContext& ctx, std::error_code& ec);

/// Prepares and runs every statement of `sql` (no parameters) in order; returns the last one's rows.
std::vector<Row> exec(sqlite3* db, std::string_view sql, const OpContext& ctx, std::error_code& ec);

/// Creates the missing directories of `path`'s parent with mode 0700, like `mkdir -p`. On failure sets
/// `ec` to errc::unavailable.
void make_parent_directories(const std::string& path, std::error_code& ec);

/// A pooled handle, its handlers' watch and the statements prepared on it. Not movable: the handlers
/// point at `watch`.
struct Connection {
  static constexpr std::size_t max_statements = 8;
  Connection() = default;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection() = default;

  Watch watch;  // declared before db: it must outlive the handle whose handlers use it
  DbPtr db;
  std::array<StmtPtr, max_statements> statements{};  // finalized before db closes
};

/// Called once per process and file when the database could not be switched to WAL mode.
using WalWarning = std::function<void(const std::string& journal_mode)>;

/// How the pool opens handles on one file (see core/pool.hpp). Each handle is used by one thread at a time;
/// while lent, its watch points at the call's context.
class Opener {
 public:
  using Connection = sqlite::Connection;
  static constexpr bool retry_open = false;  // a file that cannot be opened now will not be openable in 50 ms
  static constexpr std::string_view noun = "SQLite handle";

  Opener(std::string path, WalWarning warn) : path_(std::move(path)), warn_(std::move(warn)) {}

  std::unique_ptr<Connection> open(const OpContext& ctx, std::error_code& ec);
  static bool alive(Connection&) noexcept { return true; }
  /// A handle left inside a transaction (a failed ROLLBACK) would hold the database lock: never reused.
  static bool reusable(Connection& c) noexcept { return sqlite3_get_autocommit(c.db.get()) != 0; }
  static void lend(Connection& c, const OpContext* ctx) noexcept { c.watch.ctx = ctx; }

 private:
  const std::string path_;
  const WalWarning warn_;
  std::once_flag warned_;
};

using Pool = detail::Pool<Opener>;

/// Lends our busy and progress handlers to a caller's handle for one call. SQLite cannot report the
/// handlers a handle had, so on the way out the handle gets back its busy timeout (read with
/// PRAGMA busy_timeout) and loses any progress handler; a custom busy handler is not restored.
class CallerHandlers {
 public:
  CallerHandlers(sqlite3* db, const OpContext& ctx);
  ~CallerHandlers();
  CallerHandlers(const CallerHandlers&) = delete;
  CallerHandlers& operator=(const CallerHandlers&) = delete;
  Watch& watch() noexcept { return watch_; }

 private:
  sqlite3* db_;
  Watch watch_;
  int busy_timeout_ms_ = 0;
};

}  // namespace distrlock::detail::sqlite
