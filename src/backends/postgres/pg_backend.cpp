#include "backends/postgres/pg_backend.hpp"

#include <algorithm>
#include <charconv>
#include <map>

#include "backends/postgres/pg_connection.hpp"
#include "core/state.hpp"
#include "core/util.hpp"

namespace distrlock::detail {
namespace {

using pg::ResultPtr;
using pg::RunState;

// Fixed OIDs of built-in types (pg_type.h): bytea, int8, text.
constexpr Oid bytea_oid = 17;
constexpr Oid int8_oid = 20;
constexpr Oid text_oid = 25;

enum Stmt : std::size_t { acquire_stmt, extend_stmt, release_stmt, extend_many_stmt, inspect_stmt, stmt_count };
constexpr const char* stmt_names[stmt_count] = {"distrlock_acquire", "distrlock_extend", "distrlock_release",
                                                "distrlock_extend_many", "distrlock_inspect"};
static_assert(stmt_count <= pg::Connection::max_statements);

// Milliseconds a timestamptz has left by the server's clock (never the client's).
std::string millis_left(std::string_view column) {
  return "floor(extract(epoch FROM " + std::string(column) + " - clock_timestamp()) * 1000)::int8";
}

/// `text` with every placeholder replaced by its value.
std::string fill(std::string text, std::initializer_list<std::pair<std::string_view, std::string>> values) {
  for (const auto& [placeholder, value] : values) {
    for (std::size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at + value.size()))
      text.replace(at, placeholder.size(), value);
  }
  return text;
}

/// An unqualified table lives in schema public: resolving it through each role's search_path would give roles
/// with a schema of their own (PostgreSQL 15's recommended layout) a lock table each, and two holders per key.
std::vector<std::string> qualified(std::vector<std::string> table) {
  if (table.size() == 1) table.insert(table.begin(), "public");
  return table;
}

std::int64_t to_int(const char* text) {
  std::int64_t v = 0;
  std::from_chars(text, text + std::char_traits<char>::length(text), v);
  return v;
}

class PostgresBackend final : public Backend {
 public:
  PostgresBackend(std::string conninfo, const Options& options, std::vector<std::string> table)
      : table_parts_(qualified(std::move(table))),
        table_(quote_table_name(table_parts_, '"')),
        pool_(options.pool_size, std::move(conninfo), options.connect_timeout) {
    const std::string ttl = "$3::float8 * interval '1 millisecond'";
    // Acquire: one upsert that takes the row when it is free, expired, or already ours; when it is not, the
    // same statement returns the holder instead. Expiry is clock_timestamp() (not now(), which is the
    // transaction's start) stored as timestamptz, so session time zones cannot skew it.
    //
    // `ON CONFLICT DO UPDATE` locks the conflicting row even when its WHERE is false, and inside a caller's open
    // transaction that lock would last until it ends, stalling the holder's extensions. So the upsert only runs
    // when the statement's snapshot shows the row free, expired or ours; a busy answer reads the row and locks
    // nothing. (A holder that committed after the snapshot still meets the WHERE under the row lock.)
    //
    // A takeover counts its expiry from when it updates the row, after any wait for the row lock, not from when
    // the statement began (`excluded.expires`): a grant after a long wait would otherwise be over on arrival.
    //
    // {durable}: on a caller's connection, the grant commits with the caller's transaction, which must then wait
    // for its WAL flush whatever synchronous_commit the session has (our own connections set it at connect).
    //
    // Fences (see docs/semantics.md, "Pruning" and "Failover"): a grant's fence is greater than the key's last
    // one, than the table's fence floor (which covers the rows prune() deleted) and than every fence of an
    // earlier timeline: the epoch is (timeline - 1) << 40, and the timeline grows at every promotion.
    // The floor is read with FOR KEY SHARE, not from the snapshot: the row may have been granted again and
    // pruned since the snapshot was taken (a caller's REPEATABLE READ snapshot can be old), and only the
    // floor as it is now covers that. prune() locks the floor FOR UPDATE before it deletes anything, so it
    // waits for an acquire that has read the floor, and an acquire waits for a prune in progress (and then,
    // in READ COMMITTED, reads its raised floor; in REPEATABLE READ, fails with a serialization error).
    const std::string epoch =
        "(SELECT CASE WHEN pg_is_in_recovery() THEN 0 ELSE ((('x' || substr(pg_walfile_name(pg_current_wal_lsn()), "
        "1, 8))::bit(32)::int8 - 1) << " + std::to_string(fence_epoch_shift) + ") END)";
    const std::string acquire =
        "WITH cur AS (SELECT token, expires, fence FROM " + table_ + " WHERE key = $1), " +
        "base AS (SELECT " + epoch + " AS epoch), " +
        "granted AS (INSERT INTO " + table_ + " AS l (key, token, fence, expires, owner) SELECT $1, $2, " +
        "greatest(coalesce((SELECT fence FROM cur), 0) + 1, (SELECT floor + 1 FROM " + floor_table() +
        " WHERE id = 1 FOR KEY SHARE), " +
        "base.epoch), clock_timestamp() + " + ttl + ", $4 FROM base WHERE NOT EXISTS (SELECT 1 FROM cur " +
        "WHERE cur.token IS NOT NULL AND cur.expires > clock_timestamp() AND cur.token <> $2) " +
        "ON CONFLICT (key) DO UPDATE SET token = excluded.token, " +
        "fence = greatest(l.fence + 1, (SELECT epoch FROM base)), expires = clock_timestamp() + " + ttl + ", " +
        "owner = excluded.owner " +
        "WHERE l.token IS NULL OR l.expires <= clock_timestamp() OR l.token = excluded.token " +
        "RETURNING l.fence, l.expires){durable_cte} " +
        "SELECT true, fence, " + millis_left("expires") + ", NULL::text FROM granted{durable_from} UNION ALL " +
        "SELECT false, fence, " + millis_left("expires") + ", owner FROM " + table_ +
        "{durable_from} WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM granted)";
    sql_[acquire_stmt] = acquire;
    sql_[extend_stmt] = "UPDATE " + table_ + " SET expires = clock_timestamp() + " + ttl +
                        "{durable_join} WHERE key = $1 AND token = $2 AND expires > clock_timestamp() RETURNING " +
                        millis_left("expires");
    const std::string release_set = " SET token = NULL, owner = NULL, expires = clock_timestamp()";
    const std::string release_where = " WHERE key = $1 AND token = $2 AND expires > clock_timestamp() RETURNING fence";
    sql_[release_stmt] = "UPDATE " + table_ + release_set + release_where;
    sql_[extend_many_stmt] =
        "UPDATE " + table_ + " AS l SET expires = clock_timestamp() + v.ttl * interval '1 millisecond' " +
        "FROM unnest($1::text[], $2::text[], $3::float8[]) AS v(k, t, ttl){durable_comma} " +
        "WHERE l.key = decode(v.k, 'hex') " +
        "AND l.token = decode(v.t, 'hex') AND l.expires > clock_timestamp() RETURNING encode(l.key, 'hex'), " +
        "encode(l.token, 'hex'), " + millis_left("l.expires");
    // On the library's own connections a release commits without waiting for its WAL flush
    // (synchronous_commit off for this one implicit transaction only). That is safe in the one direction that
    // matters: a release lost in a server crash leaves the key held until its TTL runs out, and can never let
    // two holders in. Grants and extensions stay synchronous: losing one of those could. A caller's
    // connection keeps the plain statement, since the setting would cover the caller's whole transaction.
    const std::string pooled_release = "UPDATE " + table_ + release_set +
                                       " FROM (SELECT set_config('synchronous_commit', 'off', true)) AS relaxed" +
                                       release_where;
    // $1 NULL lists every key.
    sql_[inspect_stmt] =
        "SELECT encode(key, 'hex'), token IS NOT NULL AND expires > clock_timestamp(), "
        "coalesce(owner, ''), fence, greatest(0, " +
        millis_left("expires") + ") FROM " + table_ +
        " WHERE $1::text[] IS NULL OR key IN (SELECT decode(k, 'hex') FROM unnest($1::text[]) k) "
        "ORDER BY key";
    pool_sql_ = sql_;
    pool_sql_[release_stmt] = pooled_release;
    for (std::string& q : sql_) q = sql_durable(q);
    for (std::string& q : pool_sql_) q = sql_pooled(q);
  }

  std::string_view name() const noexcept override { return "postgres"; }

  AcquireResult try_acquire(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                            std::string_view owner, std::error_code& ec) override {
    const std::string ttl_text = std::to_string(ttl.count());
    const std::string owner_text(owner);
    const char* values[] = {key.data(), token.data(), ttl_text.c_str(), owner_text.c_str()};
    const int lengths[] = {static_cast<int>(key.size()), static_cast<int>(token.size()), 0, 0};
    const int formats[] = {1, 1, 0, 0};
    ResultPtr r = exec(ctx, acquire_stmt, 4, values, lengths, formats, ec);
    AcquireResult out;
    if (ec) return out;
    if (PQntuples(r.get()) == 0) return out;  // the holder committed after our snapshot: busy, holder unknown
    out.granted = PQgetvalue(r.get(), 0, 0)[0] == 't';
    out.fence = to_int(PQgetvalue(r.get(), 0, 1));
    out.expires_in = milliseconds{std::max<std::int64_t>(0, to_int(PQgetvalue(r.get(), 0, 2)))};
    if (!out.granted) out.holder = PQgetvalue(r.get(), 0, 3);
    return out;
  }

  milliseconds extend(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                      std::error_code& ec) override {
    const std::string ttl_text = std::to_string(ttl.count());
    const char* values[] = {key.data(), token.data(), ttl_text.c_str()};
    const int lengths[] = {static_cast<int>(key.size()), static_cast<int>(token.size()), 0};
    const int formats[] = {1, 1, 0};
    ResultPtr r = exec(ctx, extend_stmt, 3, values, lengths, formats, ec);
    if (ec || PQntuples(r.get()) == 0) return milliseconds{-1};
    return milliseconds{std::max<std::int64_t>(0, to_int(PQgetvalue(r.get(), 0, 0)))};
  }

  bool release(const OpContext& ctx, std::string_view key, std::string_view token, std::error_code& ec) override {
    const char* values[] = {key.data(), token.data()};
    const int lengths[] = {static_cast<int>(key.size()), static_cast<int>(token.size())};
    const int formats[] = {1, 1};
    ResultPtr r = exec(ctx, release_stmt, 2, values, lengths, formats, ec);
    return !ec && PQntuples(r.get()) > 0;
  }

  std::vector<milliseconds> extend_many(const OpContext& ctx, std::span<const ExtendRequest> requests,
                                        std::error_code& ec) override {
    std::vector<milliseconds> left(requests.size(), milliseconds{-1});
    if (requests.empty()) return left;
    // Arrays travel as text literals of hex strings, which need no quoting inside {...}.
    std::string keys = "{", tokens = "{", ttls = "{";
    std::map<std::string, std::vector<std::size_t>> index;
    for (std::size_t i = 0; i < requests.size(); ++i) {
      const std::string k = to_hex(requests[i].key);
      const std::string t = to_hex(requests[i].token);
      const char* sep = i == 0 ? "" : ",";
      keys += sep + k;
      tokens += sep + t;
      ttls += sep + std::to_string(requests[i].ttl.count());
      index[k + ':' + t].push_back(i);
    }
    keys += '}';
    tokens += '}';
    ttls += '}';
    const char* values[] = {keys.c_str(), tokens.c_str(), ttls.c_str()};
    ResultPtr r = exec(ctx, extend_many_stmt, 3, values, nullptr, nullptr, ec);
    if (ec) return left;
    for (int row = 0; row < PQntuples(r.get()); ++row) {
      const auto it = index.find(std::string(PQgetvalue(r.get(), row, 0)) + ':' + PQgetvalue(r.get(), row, 1));
      if (it == index.end()) continue;
      for (const std::size_t i : it->second)
        left[i] = milliseconds{std::max<std::int64_t>(0, to_int(PQgetvalue(r.get(), row, 2)))};
    }
    return left;
  }

  std::vector<LockStatus> inspect(const OpContext& ctx, const std::vector<std::string>& keys,
                                  std::error_code& ec) override {
    std::string array;
    if (!keys.empty()) {
      array = "{";
      for (std::size_t i = 0; i < keys.size(); ++i) array += (i == 0 ? "" : ",") + to_hex(keys[i]);
      array += '}';
    }
    const char* values[] = {keys.empty() ? nullptr : array.c_str()};
    ResultPtr r = exec(ctx, inspect_stmt, 1, values, nullptr, nullptr, ec);
    if (ec) return {};
    std::vector<LockStatus> rows;
    for (int row = 0; row < PQntuples(r.get()); ++row) {
      LockStatus st;
      st.key = from_hex(PQgetvalue(r.get(), row, 0));
      st.held = PQgetvalue(r.get(), row, 1)[0] == 't';
      st.owner = PQgetvalue(r.get(), row, 2);
      st.fence = to_int(PQgetvalue(r.get(), row, 3));
      st.expires_in = milliseconds{to_int(PQgetvalue(r.get(), row, 4))};
      rows.push_back(std::move(st));
    }
    return rows;
  }

  std::vector<Migration> migrations() const override {
    return {Migration{1, "0001_create_lock_table",
                      "CREATE TABLE IF NOT EXISTS " + table_ +
                          " (\n"
                          "  key     bytea PRIMARY KEY CHECK (octet_length(key) BETWEEN 1 AND 255),\n"
                          "  token   bytea CHECK (octet_length(token) BETWEEN 1 AND 128),\n"
                          "  fence   bigint NOT NULL,\n"
                          "  expires timestamptz NOT NULL,\n"
                          "  owner   text\n"
                          ")",
                      "DROP TABLE IF EXISTS " + table_},
            Migration{2, "0002_create_fence_floor",
                      "CREATE TABLE IF NOT EXISTS " + floor_table() +
                          " (\n"
                          "  id    smallint PRIMARY KEY CHECK (id = 1),\n"
                          "  floor bigint NOT NULL\n"
                          ");\n"
                          "INSERT INTO " + floor_table() + " (id, floor) VALUES (1, 0) ON CONFLICT (id) DO NOTHING",
                      "DROP TABLE IF EXISTS " + floor_table()}};
  }

  // One statement, so one transaction: the rows go and the floor rises together. The floor row is locked
  // FOR UPDATE before the first row is deleted (the delete's one-time filter), which is what an acquire's
  // FOR KEY SHARE read of the floor waits for (see the acquire).
  PruneResult prune(const OpContext& ctx, milliseconds idle, std::error_code& ec) override {
    const std::string sql = "WITH locked AS (SELECT floor FROM " + floor_table() +
                            " WHERE id = 1 FOR UPDATE), gone AS (DELETE FROM " + table_ +
                            " WHERE expires <= clock_timestamp() - $1::float8 * interval '1 millisecond' "
                            "AND EXISTS (SELECT 1 FROM locked) RETURNING fence), raised AS (UPDATE " + floor_table() +
                            " SET floor = greatest(floor, (SELECT max(fence) FROM gone)) WHERE id = 1 "
                            "RETURNING floor){durable_cte} "
                            "SELECT (SELECT count(*) FROM gone), (SELECT floor FROM raised){durable_from}";
    const std::string idle_text = std::to_string(idle.count());
    const char* values[] = {idle_text.c_str()};
    const std::string filled = ctx.connection ? sql_durable(sql) : sql_pooled(sql);
    ResultPtr r = run_unprepared(ctx, ec, [&](PGconn* c) {
      return PQsendQueryParams(c, filled.c_str(), 1, nullptr, values, nullptr, nullptr, 0);
    });
    PruneResult out;
    if (ec) return out;
    if (PQntuples(r.get()) != 1) {
      fail(ec, errc::not_migrated, "the fence floor row is missing: run migrate()");
      return out;
    }
    out.deleted = to_int(PQgetvalue(r.get(), 0, 0));
    out.fence_floor = to_int(PQgetvalue(r.get(), 0, 1));
    return out;
  }

  void migrate(const OpContext& ctx, std::error_code& ec) override {
    std::string body;
    for (const Migration& m : migrations()) {
      body += "DO $distrlock$ BEGIN IF NOT EXISTS (SELECT 1 FROM " + versions_table() +
              " WHERE version = " + std::to_string(m.version) + ") THEN\n" + m.up + ";\nINSERT INTO " +
              versions_table() + " (version, id) VALUES (" + std::to_string(m.version) + ", '" + m.id +
              "');\nEND IF; END $distrlock$;\n";
    }
    run_migration_script(ctx, body, ec);
  }

  void migrate_down(const OpContext& ctx, std::error_code& ec) override {
    std::string body;
    const std::vector<Migration> all = migrations();
    for (auto m = all.rbegin(); m != all.rend(); ++m) {
      body += "DO $distrlock$ BEGIN IF EXISTS (SELECT 1 FROM " + versions_table() +
              " WHERE version = " + std::to_string(m->version) + ") THEN\n" + m->down + ";\nDELETE FROM " +
              versions_table() + " WHERE version = " + std::to_string(m->version) + ";\nEND IF; END $distrlock$;\n";
    }
    body += "DROP TABLE " + versions_table() + ";\n";
    run_migration_script(ctx, body, ec);
  }

 private:
  std::string versions_table() const { return quote_table_name(table_parts_, '"', "_migrations"); }
  std::string floor_table() const { return quote_table_name(table_parts_, '"', "_floor"); }

  static std::string sql_durable(const std::string& q) {
    const std::string set = "SELECT set_config('synchronous_commit', " + std::string(pg::durable_commit_level) + ", true)";
    const std::string durable = "(" + set + ") AS durable";
    return fill(q, {{"{durable_cte}", ", durable AS (" + set + ")"},
                    {"{durable_from}", ", durable"},
                    {"{durable_join}", " FROM " + durable},
                    {"{durable_comma}", ", " + durable}});
  }
  static std::string sql_pooled(const std::string& q) {
    return fill(q, {{"{durable_cte}", ""}, {"{durable_from}", ""}, {"{durable_join}", ""}, {"{durable_comma}", ""}});
  }

  /// Runs one unprepared command, queued by `send` (a PQsend* call), on the caller's connection (with a cancel
  /// before the deadline) or on a pooled one.
  template <class Send>
  ResultPtr run_unprepared(const OpContext& ctx, std::error_code& ec, Send&& send) {
    if (ctx.connection) {
      PGconn* conn = caller_connection(ctx, ec);
      if (conn == nullptr) return nullptr;
      RunState st;
      return pg::run(conn, send, ctx, ec, st, canceller(conn));
    }
    return on_pool(ctx, ec, [&](pg::Connection& c, RunState& st) { return pg::run(c.conn.get(), send, ctx, ec, st); });
  }

  /// Runs `body` in one script, one round trip. The advisory lock serialises concurrent migrators; the
  /// version table makes re-runs no-ops. On a caller's connection the caller's transaction frames it.
  void run_migration_script(const OpContext& ctx, const std::string& body, std::error_code& ec) {
    const std::string locked = "SELECT pg_advisory_xact_lock(7242018419356113);\nCREATE TABLE IF NOT EXISTS " +
                               versions_table() +
                               " (version int PRIMARY KEY, id text NOT NULL, "
                               "applied_at timestamptz NOT NULL DEFAULT clock_timestamp());\n" +
                               body;
    const std::string script = ctx.connection ? locked : "BEGIN;\n" + locked + "COMMIT;";
    run_unprepared(ctx, ec, [&script](PGconn* c) { return PQsendQuery(c, script.c_str()); });
  }

  /// Cancels the statement running on a caller's connection from one of our own, by `deadline`: PQcancel would
  /// block (a connect and a read without timeout) and the caller's connection cannot be dropped. Best effort: a
  /// role that may not signal the caller's backend leaves the statement to the caller's own limits.
  pg::Canceller canceller(PGconn* conn) {
    const std::string pid = std::to_string(PQbackendPID(conn));
    return [this, pid](Clock::time_point deadline) {
      std::error_code ignored;
      const std::string detail = take_last_detail();
      const char* values[] = {pid.c_str()};
      const OpContext ctx{deadline, {}, {}};
      on_pool(ctx, ignored, [&](pg::Connection& c, RunState& st) {
        return pg::run(
            c.conn.get(),
            [&](PGconn* pc) {
              return PQsendQueryParams(pc, "SELECT pg_cancel_backend($1::int)", 1, nullptr, values, nullptr, nullptr, 0);
            },
            ctx, ignored, st);
      });
      set_last_detail(detail);
    };
  }

  PGconn* caller_connection(const OpContext& ctx, std::error_code& ec) const {
    if (ctx.connection.kind() != NativeConnection::Kind::postgres) {
      fail(ec, errc::invalid_argument, "the connection passed in Call is not a PostgreSQL connection");
      return nullptr;
    }
    return static_cast<PGconn*>(ctx.connection.handle());
  }

  /// Runs `body` on a pooled connection. A connection that broke is dropped; when nothing reached the server,
  /// the attempt is repeated once on a fresh connection, which is safe because nothing can have happened.
  template <class Body>
  ResultPtr on_pool(const OpContext& ctx, std::error_code& ec, Body&& body) {
    for (int attempt = 0;; ++attempt) {
      pg::Pool::Handle h = pool_.get(ctx, ec);
      if (!h) {
        set_nothing_sent(true);
        return nullptr;
      }
      RunState st;
      ResultPtr r = body(*h, st);
      if (st.broken) h.discard();
      if (ec && !st.sent && st.broken && attempt == 0) {
        ec.clear();
        continue;
      }
      if (ec && !st.sent) set_nothing_sent(true);
      return r;
    }
  }

  ResultPtr exec(const OpContext& ctx, Stmt id, int n, const char* const* values, const int* lengths,
                 const int* formats, std::error_code& ec) {
    static constexpr Oid types[stmt_count][4] = {{bytea_oid, bytea_oid, int8_oid, text_oid},
                                                 {bytea_oid, bytea_oid, int8_oid, 0},
                                                 {bytea_oid, bytea_oid, 0, 0},
                                                 {0, 0, 0, 0},
                                                 {0, 0, 0, 0}};
    const std::string& sql = sql_[id];
    if (ctx.connection) {
      // The caller's connection: unnamed statement, so nothing is left behind in the caller's session.
      PGconn* conn = caller_connection(ctx, ec);
      if (conn == nullptr) return nullptr;
      RunState st;
      return pg::run(
          conn, [&](PGconn* c) { return PQsendQueryParams(c, sql.c_str(), n, types[id], values, lengths, formats, 0); },
          ctx, ec, st, canceller(conn));
    }
    const std::string& pooled = pool_sql_[id];
    return on_pool(ctx, ec, [&](pg::Connection& c, RunState& st) -> ResultPtr {
      if (!c.prepared[id]) {
        pg::run(
            c.conn.get(), [&](PGconn* pc) { return PQsendPrepare(pc, stmt_names[id], pooled.c_str(), n, types[id]); },
            ctx, ec, st);
        if (ec) return nullptr;
        c.prepared[id] = true;
      }
      return pg::run(
          c.conn.get(),
          [&](PGconn* pc) { return PQsendQueryPrepared(pc, stmt_names[id], n, values, lengths, formats, 0); }, ctx, ec,
          st);
    });
  }

  const std::vector<std::string> table_parts_;
  const std::string table_;
  std::array<std::string, stmt_count> sql_;       // on a caller's connection
  std::array<std::string, stmt_count> pool_sql_;  // on the library's own connections
  pg::Pool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_postgres_backend(std::string conninfo, const Options& options,
                                               std::vector<std::string> table) {
  char* err = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), &err);
  if (parsed == nullptr) {
    std::string why = err != nullptr ? err : "out of memory";
    if (err != nullptr) PQfreemem(err);
    while (!why.empty() && why.back() == '\n') why.pop_back();
    throw error(errc::invalid_argument,
                "distrlock: bad PostgreSQL connection string " + mask_password(conninfo) + ": " + why);
  }
  PQconninfoFree(parsed);
  return std::make_unique<PostgresBackend>(std::move(conninfo), options, std::move(table));
}

}  // namespace distrlock::detail
