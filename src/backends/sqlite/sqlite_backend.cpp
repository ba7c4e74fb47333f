#include "backends/sqlite/sqlite_backend.hpp"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "backends/sqlite/sqlite_connection.hpp"
#include "core/state.hpp"
#include "core/util.hpp"
#include "distrlock/error.hpp"

namespace distrlock::detail {
namespace {

using sqlite::Row;

enum Stmt : std::size_t {
  acquire_stmt,
  extend_stmt,
  release_stmt,
  inspect_all_stmt,
  begin_stmt,
  commit_stmt,
  rollback_stmt,
  stmt_count
};
static_assert(stmt_count <= sqlite::Connection::max_statements);

// SQLite's clock as integer microseconds since the Unix epoch (UTC), computed inside SQLite and never by the
// client. julianday('now') is the host's system clock at millisecond resolution and stays the same for a
// whole statement; rounding to the millisecond removes the floating-point error of the conversion.
// (unixepoch('subsec') would say it more plainly, but needs SQLite 3.42.)
constexpr std::string_view now_us = "(CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000)";

// TTLs are bound in microseconds; this bound keeps now + ttl far inside a 64-bit integer.
constexpr std::int64_t max_ttl_ms = 100LL * 365 * 24 * 3600 * 1000;  // a century

// Statements on a caller's handle run inside the caller's transaction; several of them share a savepoint.
constexpr std::string_view savepoint = "distrlock";

bool starts_with_ignoring_case(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
    if (lower(s[i]) != lower(prefix[i])) return false;
  }
  return true;
}

milliseconds left_of(const Row& row, std::size_t column) {
  return milliseconds{std::max<std::int64_t>(0, row.at(column).integer)};
}

/// One call's handle: a pooled one with its cached statements, or the caller's, on which statements are
/// prepared for the call alone and finalized after it.
class Session {
 public:
  explicit Session(sqlite::Connection& pooled) : db_(pooled.db.get()), watch_(&pooled.watch), pooled_(&pooled) {}
  Session(sqlite3* callers, sqlite::Watch& watch) : db_(callers), watch_(&watch) {}

  sqlite3* db() const noexcept { return db_; }
  bool callers() const noexcept { return pooled_ == nullptr; }
  sqlite::Watch& watch() const noexcept { return *watch_; }

  /// Runs statement `id` (its SQL is `sql`) after `bind(stmt)` bound its parameters. A statement that failed
  /// other than by waiting is dropped from the cache, so that one whose table was dropped and created again
  /// is prepared afresh.
  template <class Bind>
  std::vector<Row> run(Stmt id, const std::string& sql, const OpContext& ctx, std::error_code& ec, Bind&& bind) {
    sqlite3_stmt* stmt = statement(id, sql, ctx, ec);
    if (stmt == nullptr) return {};
    bind(stmt);
    std::vector<Row> rows = sqlite::run(db_, stmt, ctx, ec);
    if (ec && ec != errc::timeout && ec != errc::cancelled) forget(id);
    return rows;
  }
  std::vector<Row> run(Stmt id, const std::string& sql, const OpContext& ctx, std::error_code& ec) {
    return run(id, sql, ctx, ec, [](sqlite3_stmt*) {});
  }

 private:
  sqlite3_stmt* statement(Stmt id, const std::string& sql, const OpContext& ctx, std::error_code& ec) {
    if (pooled_ != nullptr && pooled_->statements[id]) return pooled_->statements[id].get();
    sqlite::StmtPtr stmt = sqlite::prepare(db_, sql, pooled_ != nullptr, ctx, ec);
    if (!stmt) return nullptr;
    if (pooled_ == nullptr) return throwaway_.emplace_back(std::move(stmt)).get();
    pooled_->statements[id] = std::move(stmt);
    return pooled_->statements[id].get();
  }
  void forget(Stmt id) {
    if (pooled_ != nullptr) pooled_->statements[id].reset();
  }

  sqlite3* db_;
  sqlite::Watch* watch_;
  sqlite::Connection* pooled_ = nullptr;
  std::vector<sqlite::StmtPtr> throwaway_;
};

class SqliteBackend final : public Backend {
 public:
  SqliteBackend(const std::string& path, const Options& options, std::vector<std::string> table)
      : table_parts_(std::move(table)),
        table_(quote_table_name(table_parts_, '"')),
        versions_(quote_table_name(table_parts_, '"', "_migrations")),
        floor_(quote_table_name(table_parts_, '"', "_floor")),
        pool_(options.pool_size, path, [logger = options.logger, path](const std::string& mode) {
          try {
            logger(LogLevel::warning, "the SQLite database " + path +
                                          " could not be switched to WAL mode (it is in \"" + mode +
                                          "\" mode; is it on a network file system?): locks still work, but "
                                          "readers and the writer take turns");
          } catch (...) {  // a throwing logger must not break the call that opened the handle
          }
        }) {
    const std::string now(now_us);
    // Acquire: one upsert whose DO UPDATE always fires. Every column keeps its value unless the row is free,
    // expired, or already ours, so RETURNING shows either our grant or the holder, with its time left, from
    // the same statement. SET expressions all see the row as it was, and 'now' is one instant for the whole
    // statement, so the four CASEs agree. A busy answer rewrites the row unchanged, which SQLite recognises
    // and writes nothing to the WAL.
    const std::string takes = "(l.token IS NULL OR l.expires <= " + now + " OR l.token = excluded.token)";
    // A key the table does not have starts above the fence floor (the largest fence prune() deleted); SQLite
    // has one writer at a time, so the floor read here is the one prune() left.
    sql_[acquire_stmt] = "INSERT INTO " + table_ + " AS l (key, token, fence, expires, owner) VALUES (?1, ?2, " +
                         "(SELECT floor + 1 FROM " + floor_ + " WHERE id = 1), " +
                         now + " + ?3, ?4) ON CONFLICT (key) DO UPDATE SET token = CASE WHEN " + takes +
                         " THEN excluded.token ELSE l.token END, fence = CASE WHEN " + takes +
                         " THEN l.fence + 1 ELSE l.fence END, expires = CASE WHEN " + takes +
                         " THEN excluded.expires ELSE l.expires END, owner = CASE WHEN " + takes +
                         " THEN excluded.owner ELSE l.owner END RETURNING token = ?2, fence, (expires - " + now +
                         ") / 1000, coalesce(owner, '')";
    sql_[extend_stmt] = "UPDATE " + table_ + " SET expires = " + now + " + ?3 WHERE key = ?1 AND token = ?2 AND " +
                        "expires > " + now + " RETURNING (expires - " + now + ") / 1000";
    sql_[release_stmt] = "UPDATE " + table_ + " SET token = NULL, owner = NULL, expires = " + now +
                         " WHERE key = ?1 AND token = ?2 AND expires > " + now + " RETURNING fence";
    inspect_select_ = "SELECT key, token IS NOT NULL AND expires > " + now + ", coalesce(owner, ''), fence, max(0, (" +
                      "expires - " + now + ") / 1000) FROM " + table_;
    sql_[inspect_all_stmt] = inspect_select_ + " ORDER BY key";
    // IMMEDIATE: a transaction of ours takes the write lock up front, so it never has to upgrade a read lock
    // (which SQLite cannot wait for) half-way through.
    sql_[begin_stmt] = "BEGIN IMMEDIATE";
    sql_[commit_stmt] = "COMMIT";
    sql_[rollback_stmt] = "ROLLBACK";
  }

  std::string_view name() const noexcept override { return "sqlite"; }

  AcquireResult try_acquire(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                            std::string_view owner, std::error_code& ec) override {
    AcquireResult out;
    if (!check_ttl(ttl, ec)) return out;
    on_handle(ctx, ec, [&](Session& s) {
      durable(s, ctx, ec);
      if (ec) return;
      const std::vector<Row> rows = s.run(acquire_stmt, sql_[acquire_stmt], ctx, ec, [&](sqlite3_stmt* st) {
        sqlite::bind_blob(st, 1, key);
        sqlite::bind_blob(st, 2, token);
        sqlite3_bind_int64(st, 3, ttl.count() * 1000);
        sqlite::bind_text(st, 4, owner);
      });
      if (ec || rows.empty()) return;  // the upsert always returns its row
      out.granted = rows[0].at(0).integer == 1;
      out.fence = rows[0].at(1).integer;
      out.expires_in = left_of(rows[0], 2);
      if (!out.granted) out.holder = rows[0].at(3).bytes;
    });
    return out;
  }

  milliseconds extend(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                      std::error_code& ec) override {
    milliseconds left{-1};
    if (!check_ttl(ttl, ec)) return left;
    on_handle(ctx, ec, [&](Session& s) {
      durable(s, ctx, ec);
      if (ec) return;
      const std::vector<Row> rows =
          s.run(extend_stmt, sql_[extend_stmt], ctx, ec, [&](sqlite3_stmt* st) { bind_extend(st, key, token, ttl); });
      if (!ec && !rows.empty()) left = left_of(rows[0], 0);
    });
    return left;
  }

  bool release(const OpContext& ctx, std::string_view key, std::string_view token, std::error_code& ec) override {
    bool released = false;
    on_handle(ctx, ec, [&](Session& s) {
      const std::vector<Row> rows = s.run(release_stmt, sql_[release_stmt], ctx, ec, [&](sqlite3_stmt* st) {
        sqlite::bind_blob(st, 1, key);
        sqlite::bind_blob(st, 2, token);
      });
      released = !ec && !rows.empty();
    });
    return released;
  }

  /// SQLite has no round trips to save, but every commit is a disk sync: the extensions share one
  /// transaction that loops the prepared extend statement (one write lock, one commit). A single statement
  /// would need the keys as an array of blobs, which SQLite 3.40 cannot unpack without an extension.
  std::vector<milliseconds> extend_many(const OpContext& ctx, std::span<const ExtendRequest> requests,
                                        std::error_code& ec) override {
    std::vector<milliseconds> left(requests.size(), milliseconds{-1});
    if (requests.empty()) return left;
    on_handle(ctx, ec, [&](Session& s) {
      durable(s, ctx, ec);
      if (ec) return;
      transaction(s, ctx, ec, [&] {
        for (std::size_t i = 0; i < requests.size() && !ec; ++i) {
          const ExtendRequest& r = requests[i];
          const milliseconds ttl = std::clamp(r.ttl, milliseconds{1}, milliseconds{max_ttl_ms});
          const std::vector<Row> rows = s.run(extend_stmt, sql_[extend_stmt], ctx, ec,
                                              [&](sqlite3_stmt* st) { bind_extend(st, r.key, r.token, ttl); });
          if (!ec && !rows.empty()) left[i] = left_of(rows[0], 0);
        }
      });
    });
    if (ec) std::fill(left.begin(), left.end(), milliseconds{-1});
    return left;
  }

  std::vector<LockStatus> inspect(const OpContext& ctx, const std::vector<std::string>& keys,
                                  std::error_code& ec) override {
    std::vector<Row> rows;
    on_handle(ctx, ec, [&](Session& s) {
      if (keys.empty()) {
        rows = s.run(inspect_all_stmt, sql_[inspect_all_stmt], ctx, ec);
        return;
      }
      // One statement with a parameter per key (in chunks, should the keys outnumber SQLite's limit on
      // parameters); keys are blobs, which no array type of SQLite 3.40 can carry in one parameter.
      const std::size_t chunk =
          static_cast<std::size_t>(std::clamp(sqlite3_limit(s.db(), SQLITE_LIMIT_VARIABLE_NUMBER, -1), 1, 32766));
      for (std::size_t first = 0; first < keys.size() && !ec; first += chunk) {
        const std::size_t n = std::min(chunk, keys.size() - first);
        std::string sql = inspect_select_ + " WHERE key IN (?";
        for (std::size_t i = 1; i < n; ++i) sql += ",?";
        sql += ')';
        sqlite::StmtPtr stmt = sqlite::prepare(s.db(), sql, false, ctx, ec);
        if (!stmt) return;
        for (std::size_t i = 0; i < n; ++i) sqlite::bind_blob(stmt.get(), static_cast<int>(i + 1), keys[first + i]);
        std::vector<Row> part = sqlite::run(s.db(), stmt.get(), ctx, ec);
        std::move(part.begin(), part.end(), std::back_inserter(rows));
      }
    });
    if (ec) return {};
    std::vector<LockStatus> all;
    for (const Row& row : rows) {
      LockStatus st;
      st.key = row.at(0).bytes;
      st.held = row.at(1).integer == 1;
      st.owner = row.at(2).bytes;
      st.fence = row.at(3).integer;
      st.expires_in = left_of(row, 4);
      all.push_back(std::move(st));
    }
    return all;
  }

  std::vector<Migration> migrations() const override {
    // Keys and tokens are BLOBs rather than TEXT: they are arbitrary bytes (NUL and invalid UTF-8 included),
    // and BLOBs compare byte by byte. expires is microseconds since the Unix epoch by SQLite's clock.
    return {Migration{
        1, "0001_create_lock_table",
        "CREATE TABLE IF NOT EXISTS " + table_ +
            " (\n"
            "  key     BLOB NOT NULL PRIMARY KEY CHECK (typeof(key) = 'blob' AND length(key) BETWEEN 1 AND 255),\n"
            "  token   BLOB CHECK (token IS NULL OR (typeof(token) = 'blob' AND length(token) BETWEEN 1 AND 128)),\n"
            "  fence   INTEGER NOT NULL,\n"
            "  expires INTEGER NOT NULL,\n"
            "  owner   TEXT\n"
            ") WITHOUT ROWID",
        "DROP TABLE IF EXISTS " + table_},
            Migration{2, "0002_create_fence_floor",
                      "CREATE TABLE IF NOT EXISTS " + floor_ +
                          " (\n"
                          "  id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),\n"
                          "  floor INTEGER NOT NULL\n"
                          ");\n"
                          "INSERT OR IGNORE INTO " + floor_ + " (id, floor) VALUES (1, 0)",
                      "DROP TABLE IF EXISTS " + floor_}};
  }

  // One transaction with one cutoff: the floor rises to the largest fence of the rows it then deletes.
  PruneResult prune(const OpContext& ctx, milliseconds idle, std::error_code& ec) override {
    PruneResult out;
    const std::string cut = "(" + std::string(now_us) + " - " + std::to_string(idle.count()) + " * 1000)";
    on_handle(ctx, ec, [&](Session& s) {
      durable(s, ctx, ec);
      if (ec) return;
      transaction(s, ctx, ec, [&] {
        const std::vector<Row> at = sqlite::exec(s.db(), "SELECT " + cut, ctx, ec);
        if (ec || at.empty()) return;
        const std::string cutoff = std::to_string(at[0].at(0).integer);
        sqlite::exec(s.db(),
                     "UPDATE " + floor_ + " SET floor = max(floor, coalesce((SELECT max(fence) FROM " + table_ +
                         " WHERE expires <= " + cutoff + "), 0)) WHERE id = 1",
                     ctx, ec);
        if (ec) return;
        sqlite::exec(s.db(), "DELETE FROM " + table_ + " WHERE expires <= " + cutoff, ctx, ec);
        if (ec) return;
        out.deleted = sqlite3_changes64(s.db());
        const std::vector<Row> floor = sqlite::exec(s.db(), "SELECT floor FROM " + floor_ + " WHERE id = 1", ctx, ec);
        if (ec) return;
        if (floor.empty()) {
          fail(ec, errc::not_migrated, "the fence floor row is missing: run migrate()");
          return;
        }
        out.fence_floor = floor[0].at(0).integer;
      });
    });
    if (ec) return {};
    return out;
  }

  void migrate(const OpContext& ctx, std::error_code& ec) override {
    const std::vector<Migration> all = migrations();
    on_handle(ctx, ec, [&](Session& s) {
      // Everything applied already is the common case (the CLI migrates on every run): find that out
      // without taking the write lock.
      if (!s.callers()) {
        std::error_code probe;
        const std::set<int> applied = applied_versions(s, ctx, probe);
        if (!probe &&
            std::all_of(all.begin(), all.end(), [&](const Migration& m) { return applied.contains(m.version); }))
          return;
        if (probe && probe != errc::not_migrated) {
          ec = probe;  // the detail is set
          return;
        }
        take_last_detail();
      }
      transaction(s, ctx, ec, [&] {
        create_versions_table(s, ctx, ec);
        if (ec) return;
        const std::set<int> applied = applied_versions(s, ctx, ec);
        for (auto m = all.begin(); m != all.end() && !ec; ++m) {
          if (applied.contains(m->version)) continue;
          sqlite::exec(s.db(), m->up, ctx, ec);
          if (!ec)
            sqlite::exec(s.db(),
                         "INSERT INTO " + versions_ + " (version, id, applied_at) VALUES (" +
                             std::to_string(m->version) + ", '" + m->id + "', " + std::string(now_us) + ")",
                         ctx, ec);
        }
      });
    });
  }

  void migrate_down(const OpContext& ctx, std::error_code& ec) override {
    const std::vector<Migration> all = migrations();
    on_handle(ctx, ec, [&](Session& s) {
      transaction(s, ctx, ec, [&] {
        create_versions_table(s, ctx, ec);
        if (ec) return;
        const std::set<int> applied = applied_versions(s, ctx, ec);
        for (auto m = all.rbegin(); m != all.rend() && !ec; ++m) {
          if (!applied.contains(m->version)) continue;
          sqlite::exec(s.db(), m->down, ctx, ec);
          if (!ec)
            sqlite::exec(s.db(), "DELETE FROM " + versions_ + " WHERE version = " + std::to_string(m->version), ctx,
                         ec);
        }
        if (!ec) sqlite::exec(s.db(), "DROP TABLE " + versions_, ctx, ec);
      });
    });
  }

 private:
  static bool check_ttl(milliseconds ttl, std::error_code& ec) {
    if (ttl.count() <= max_ttl_ms) return true;
    fail(ec, errc::invalid_argument, "ttl must be at most a century (got " + std::to_string(ttl.count()) + " ms)");
    return false;
  }

  /// A grant or extension on a caller's handle commits with the caller's transaction, and must reach the disk
  /// when it does, whatever the handle's synchronous setting. Below FULL, outside a transaction, it is raised to
  /// FULL and left so; inside one, SQLite cannot change it, and the call fails with errc::invalid_argument before
  /// anything is written. Our own handles are opened with FULL.
  static void durable(Session& s, const OpContext& ctx, std::error_code& ec) {
    if (!s.callers()) return;
    const std::vector<Row> level = sqlite::exec(s.db(), "PRAGMA synchronous", ctx, ec);
    if (ec || (!level.empty() && !level[0].empty() && level[0][0].integer >= 2)) return;  // FULL (2) or EXTRA (3)
    if (sqlite3_get_autocommit(s.db()) == 0) {
      fail(ec, errc::invalid_argument,
           "the caller's SQLite handle has PRAGMA synchronous below FULL, so a grant committed with its transaction "
           "could be lost in a crash and its fencing token granted again: set PRAGMA synchronous = FULL on it "
           "before the transaction");
      return;
    }
    sqlite::exec(s.db(), "PRAGMA synchronous = FULL", ctx, ec);
  }

  static void bind_extend(sqlite3_stmt* st, std::string_view key, std::string_view token, milliseconds ttl) {
    sqlite::bind_blob(st, 1, key);
    sqlite::bind_blob(st, 2, token);
    sqlite3_bind_int64(st, 3, ttl.count() * 1000);
  }

  /// Runs `body(session)` on the caller's handle (ctx.connection), with our busy and progress handlers lent
  /// to it for the call, or on a pooled handle. A pooled handle whose file became unusable is dropped.
  template <class Body>
  void on_handle(const OpContext& ctx, std::error_code& ec, Body&& body) {
    if (ctx.connection) {
      if (ctx.connection.kind() != NativeConnection::Kind::sqlite) {
        fail(ec, errc::invalid_argument, "the connection passed in Call is not an SQLite handle");
        return;
      }
      auto* db = static_cast<sqlite3*>(ctx.connection.handle());
      sqlite::CallerHandlers handlers(db, ctx);
      Session s(db, handlers.watch());
      body(s);
      return;
    }
    sqlite::Pool::Handle h = pool_.get(ctx, ec);
    if (!h) {
      set_nothing_sent(true);  // the file could not be opened, or no handle came free before the deadline
      return;
    }
    {
      Session s(*h.operator->());
      body(s);
    }
    if (ec == errc::unavailable) h.discard();
  }

  /// Runs `body` as one transaction: BEGIN IMMEDIATE ... COMMIT on a pooled handle; a savepoint inside
  /// whatever transaction the caller has open on a caller's handle. Rolled back when `body` or the commit
  /// fails.
  template <class Body>
  void transaction(Session& s, const OpContext& ctx, std::error_code& ec, Body&& body) {
    if (s.callers()) {
      sqlite::exec(s.db(), "SAVEPOINT " + std::string(savepoint), ctx, ec);
    } else {
      s.run(begin_stmt, sql_[begin_stmt], ctx, ec);
    }
    if (ec) return;
    body();
    if (!ec) {
      if (s.callers()) {
        sqlite::exec(s.db(), "RELEASE " + std::string(savepoint), ctx, ec);
      } else {
        s.run(commit_stmt, sql_[commit_stmt], ctx, ec);
      }
    }
    if (!ec) return;
    // Undo under a short deadline of its own: the call's may be what just ran out. A failure here leaves a
    // pooled handle inside its transaction, and the pool drops such a handle.
    const std::string detail = take_last_detail();
    const OpContext undo{Clock::now() + milliseconds{2000}, {}, {}};
    const OpContext* const watched = s.watch().ctx;
    s.watch().ctx = &undo;
    std::error_code ignored;
    if (s.callers()) {
      // The caller's transaction may be gone already (an interrupted write rolls it back): then so is ours.
      sqlite::exec(s.db(), "ROLLBACK TO " + std::string(savepoint), undo, ignored);
      sqlite::exec(s.db(), "RELEASE " + std::string(savepoint), undo, ignored);
    } else if (sqlite3_get_autocommit(s.db()) == 0) {
      s.run(rollback_stmt, sql_[rollback_stmt], undo, ignored);
    }
    s.watch().ctx = watched;
    set_last_detail(detail);
  }

  void create_versions_table(Session& s, const OpContext& ctx, std::error_code& ec) {
    sqlite::exec(s.db(),
                 "CREATE TABLE IF NOT EXISTS " + versions_ +
                     " (version INTEGER PRIMARY KEY, id TEXT NOT NULL, applied_at INTEGER NOT NULL)",
                 ctx, ec);
  }

  std::set<int> applied_versions(Session& s, const OpContext& ctx, std::error_code& ec) {
    std::set<int> applied;
    for (const Row& row : sqlite::exec(s.db(), "SELECT version FROM " + versions_, ctx, ec))
      applied.insert(static_cast<int>(row.at(0).integer));
    return applied;
  }

  const std::vector<std::string> table_parts_;
  const std::string table_;
  const std::string versions_;
  const std::string floor_;
  std::array<std::string, stmt_count> sql_;
  std::string inspect_select_;
  sqlite::Pool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_sqlite_backend(std::string location, const Options& options,
                                             std::vector<std::string> table) {
  if (location.empty()) throw error(errc::invalid_argument, "distrlock: sqlite: needs a file path (sqlite:PATH)");
  if (location == ":memory:")
    throw error(errc::invalid_argument,
                "distrlock: sqlite::memory: is private to one handle, so no other process or thread could see its "
                "locks: use a file path");
  if (table.size() == 2 && table[0].size() == 4 && starts_with_ignoring_case(table[0], "temp"))
    throw error(errc::invalid_argument,
                "distrlock: the SQLite temp schema is private to each handle, so no one else could see its locks: "
                "use a table in main");
  if (starts_with_ignoring_case(table.back(), "sqlite_"))
    throw error(errc::invalid_argument, "distrlock: SQLite reserves table names that start with sqlite_");
  // The location is a file path, never an SQLite URI, and is resolved once, against the working directory
  // at open: a later chdir must not move the locks to another file.
  std::error_code fs_ec;
  std::filesystem::path path = std::filesystem::absolute(location, fs_ec);
  if (fs_ec) path = location;
  return std::make_unique<SqliteBackend>(path.string(), options, std::move(table));
}

}  // namespace distrlock::detail
