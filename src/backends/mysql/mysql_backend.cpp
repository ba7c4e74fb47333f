// The MySQL/MariaDB backend: every lock operation is one packet sent in autocommit (or in the caller's
// transaction), written in SQL that MariaDB 10.3+ and MySQL 8 both accept, except the acquire, which uses
// MariaDB's INSERT ... RETURNING where the server has it. docs/mysql.md explains the SQL.
#include "backends/mysql/mysql_backend.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <functional>
#include <initializer_list>
#include <map>
#include <set>

#include "backends/mysql/mysql_connection.hpp"
#include "core/state.hpp"
#include "core/util.hpp"

namespace distrlock::detail {
namespace {

using mysql::Answer;
using mysql::RunState;

// An acquire reports through LAST_INSERT_ID(), which reaches the client in the OK packet (mysql_insert_id()):
// a grant sets it to the new fencing token, a busy answer to this bit plus the holder's milliseconds left.
// Fencing tokens never come near 2^63.
constexpr std::uint64_t busy_flag = std::uint64_t{1} << 63;
// Leases per extend_many statement; a thousand 255-byte keys make a packet of about 1.3 MB.
constexpr std::size_t extend_batch = 1000;

// Microseconds since 1970-01-01 00:00:00 UTC by the server's clock, as of the start of the statement (constant
// within it). Both operands are DATETIMEs without a time zone: the session's time_zone, DST and midnight cannot
// change the difference. Never NOW() or CURRENT_TIMESTAMP (the session's local time; UNIX_TIMESTAMP(NOW(6))
// converts back through the time zone, ambiguous in the hour DST repeats) nor a TIMESTAMP column (converted
// through the session's time zone on every read and write).
constexpr std::string_view now_us = "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6))";

// The value `column` had in the row an INSERT ... ON DUPLICATE KEY UPDATE tried to insert. VALUES(column) is the
// only spelling MariaDB knows; MySQL 8 accepts it too but deprecates it from 8.0.20 in favour of a row alias
// (INSERT ... VALUES (...) AS new ON DUPLICATE KEY UPDATE c = new.c). Every use goes through here.
std::string inserted(std::string_view column) { return "VALUES(`" + std::string(column) + "`)"; }

// Binary-safe literals: hex needs no escaping, whatever the connection's character set or sql_mode
// (NO_BACKSLASH_ESCAPES, ANSI_QUOTES) says, and keeps NUL and invalid UTF-8 intact.
std::string bytes_literal(std::string_view bytes) { return "X'" + to_hex(bytes) + "'"; }
std::string text_literal(std::string_view text) { return "_utf8mb4 X'" + to_hex(text) + "'"; }

std::string bytes_list(const std::vector<std::string_view>& items) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) out += (i == 0 ? "" : ", ") + bytes_literal(items[i]);
  return out;
}

std::string_view field(MYSQL_ROW row, const unsigned long* lengths, unsigned int i) {
  return row[i] == nullptr ? std::string_view() : std::string_view(row[i], lengths[i]);
}

std::int64_t int_field(MYSQL_ROW row, const unsigned long* lengths, unsigned int i) {
  const std::string_view text = field(row, lengths, i);
  std::int64_t v = 0;
  std::from_chars(text.data(), text.data() + text.size(), v);
  return v;
}

/// FNV-1a: a stable hash for the migration lock's name (GET_LOCK names are limited to 64 characters).
std::uint64_t fnv1a(std::string_view s) {
  std::uint64_t h = 14695981039346656037ULL;
  for (const char c : s) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return h;
}

/// `pattern` with each {name} replaced by its value. Names not listed stay, braces and all, so a statement can be
/// filled in two steps: the fixed parts once, the arguments per call. (Nothing else in the SQL has braces:
/// identifiers are validated, literals are hex.)
std::string fill(std::string_view pattern,
                 std::initializer_list<std::pair<std::string_view, std::string_view>> values) {
  std::string out;
  out.reserve(pattern.size() + 512);
  std::size_t at = 0;
  while (at < pattern.size()) {
    const std::size_t open = pattern.find('{', at);
    const std::size_t close = open == std::string_view::npos ? open : pattern.find('}', open);
    if (close == std::string_view::npos) break;
    out += pattern.substr(at, open - at);
    const std::string_view name = pattern.substr(open + 1, close - open - 1);
    const auto* const it = std::find_if(values.begin(), values.end(), [&](const auto& v) { return v.first == name; });
    out += it != values.end() ? it->second : pattern.substr(open, close - open + 1);
    at = close + 1;
  }
  out += pattern.substr(std::min(at, pattern.size()));
  return out;
}

std::string micros(milliseconds d) { return std::to_string(d.count()) + "000"; }

class MysqlBackend final : public Backend {
 public:
  MysqlBackend(mysql::Endpoint where, const Options& options, std::vector<std::string> table)
      : table_parts_(std::move(table)),
        table_(quote_table_name(table_parts_, '`')),
        versions_table_(quote_table_name(table_parts_, '`', "_migrations")),
        floor_table_(quote_table_name(table_parts_, '`', "_floor")),
        pool_(options.pool_size, std::move(where), options.connect_timeout) {
    const std::string qualified = table_parts_.size() == 2 ? table_parts_[0] + "." + table_parts_[1]
                                                           : endpoint().database + "." + table_parts_[0];
    std::array<char, 16> hex{};
    const auto [end, err] = std::to_chars(hex.data(), hex.data() + hex.size(), fnv1a(qualified), 16);
    migration_lock_ = "distrlock_migrate_" + std::string(hex.data(), end);

    // A key the table does not have starts above the fence floor (the largest fence prune() deleted). The floor
    // is read with a shared lock: prune() raises it before deleting, under an exclusive lock, so an acquire
    // either reads the raised floor or finds the row still there (a plain read could be a snapshot from before
    // the raise, and the unique check then miss the row the delete took).
    const std::string first_fence =
        "(SELECT `floor` + 1 FROM " + floor_table_ + " WHERE `id` = 1 LOCK IN SHARE MODE)";
    const std::initializer_list<std::pair<std::string_view, std::string_view>> fixed = {{"table", table_},
                                                                                        {"first_fence", first_fence},
                                                                                        {"now", now_us},
                                                                                        {"busy", busy_text_},
                                                                                        {"new_token", new_token_},
                                                                                        {"new_expires", new_expires_},
                                                                                        {"new_owner", new_owner_}};
    // Acquire. Every assignment in ON DUPLICATE KEY UPDATE asks the same question, {takes}: is the row free,
    // expired, or ours? Assignments normally run left to right, each seeing the columns already assigned, but
    // sql_mode SIMULTANEOUS_ASSIGNMENT (part of sql_mode=ORACLE) makes them all see the old row. {takes} has the
    // same answer either way: `token` goes first, and once it is ours the question stays true; while it is not,
    // `expires` (assigned after `fence`) is still the old one. So a caller's connection in any sql_mode gets the
    // same decision; our own connections pin sql_mode anyway.
    const std::string takes =
        "(`token` IS NULL OR `expires` <= {now} OR `token` = {new_token})";
    acquire_sql_ = fill(fill(
        "{limit}INSERT INTO {table} (`key`, `token`, `fence`, `expires`, `owner`) "
        "VALUES ({key}, {token}, LAST_INSERT_ID({first_fence}), {now} + {ttl_us}, LEFT({owner}, 255)) "
        "ON DUPLICATE KEY UPDATE "
        "`token` = IF({takes}, {new_token}, `token`), "
        "`fence` = IF({takes}, LAST_INSERT_ID(`fence` + 1), "
        "`fence` + 0 * LAST_INSERT_ID({busy} + GREATEST(0, `expires` - {now}) DIV 1000)), "
        "`expires` = IF({takes}, {new_expires}, `expires`), "
        "`owner` = IF({takes}, {new_owner}, `owner`)",
        {{"takes", takes}}), fixed);
    holder_sql_ =
        fill("; {limit}SELECT `owner` FROM {table} WHERE `key` = {key} AND LAST_INSERT_ID() >= {busy}", fixed);
    // The same decision on MariaDB 10.5+, where the upsert itself returns the row as it left it: ours (granted,
    // with the new fence) or the holder's, untouched. One statement, no LAST_INSERT_ID(), owner and time left
    // included.
    acquire_returning_sql_ = fill(fill(
        "{limit}INSERT INTO {table} (`key`, `token`, `fence`, `expires`, `owner`) "
        "VALUES ({key}, {token}, {first_fence}, {now} + {ttl_us}, LEFT({owner}, 255)) "
        "ON DUPLICATE KEY UPDATE "
        "`token` = IF({takes}, {new_token}, `token`), "
        "`fence` = IF({takes}, `fence` + 1, `fence`), "
        "`expires` = IF({takes}, {new_expires}, `expires`), "
        "`owner` = IF({takes}, {new_owner}, `owner`) "
        "RETURNING `token` = {token}, `fence`, GREATEST(0, `expires` - {now}) DIV 1000, `owner`",
        {{"takes", takes}}), fixed);
    extend_sql_ = fill(
        "{limit}UPDATE {table} SET `expires` = {now} + {ttl_us}, `fence` = LAST_INSERT_ID(`fence`) "
        "WHERE `key` = {key} AND `token` = {token} AND `expires` > {now}",
        fixed);
    release_sql_ = fill(
        "{limit}UPDATE {table} SET `token` = NULL, `owner` = NULL, `expires` = {now}, `fence` = LAST_INSERT_ID(`fence`) "
        "WHERE `key` = {key} AND `token` = {token} AND `expires` > {now}",
        fixed);
    extend_many_sql_ = fill(
        "START TRANSACTION; "
        "{limit}UPDATE {table} AS l JOIN ({requests}) AS v ON l.`key` = v.k AND l.`token` = v.t "
        "SET l.`expires` = {now} + v.ttl WHERE l.`expires` > {now}; "
        "{limit}SELECT l.`key`, l.`token`, (l.`expires` - {now}) DIV 1000 FROM {table} AS l "
        "WHERE l.`key` IN ({keys}) AND l.`expires` > {now}; "
        "COMMIT",
        fixed);
    inspect_sql_ = fill(
        "{limit}SELECT `key`, `token` IS NOT NULL AND `expires` > {now}, COALESCE(`owner`, ''), `fence`, "
        "GREATEST(0, `expires` - {now}) DIV 1000 FROM {table}{where} ORDER BY `key`",
        fixed);
  }

  std::string_view name() const noexcept override { return "mysql"; }

  // The upsert: inserts the row for a key never seen, else takes it over when it is free, expired or already
  // ours. Where the server has INSERT ... RETURNING (MariaDB 10.5+) the statement returns the row; elsewhere
  // (MySQL 8) LAST_INSERT_ID() carries the answer (see busy_flag), and on a pooled connection a second statement
  // in the same packet reads the holder's owner string, but only after a busy answer.
  AcquireResult try_acquire(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                            std::string_view owner, std::error_code& ec) override {
    const std::string k = bytes_literal(key);
    const std::string t = bytes_literal(token);
    const std::string ttl_us = micros(ttl);
    const std::string o = text_literal(owner);
    bool returning = false;
    const std::vector<Answer> answers = with_connection(ctx, ec, [&](MYSQL* conn, RunState& st) {
      returning = endpoint().returning && mysql::has_insert_returning(conn);
      std::string sql = fill(returning ? acquire_returning_sql_ : acquire_sql_,
                             {{"key", k}, {"token", t}, {"ttl_us", ttl_us}, {"owner", o}});
      // A caller's connection may not allow multi-statements, and inside its transaction a plain SELECT could
      // read an old snapshot anyway: there, a busy answer without RETURNING carries the time left but no owner.
      if (!returning && !ctx.connection) sql += fill(holder_sql_, {{"key", k}});
      return mysql::run(conn, endpoint(), limited(sql, conn, ctx), ctx, ec, st);
    });
    AcquireResult out;
    if (ec) return out;
    return returning ? returned_answer(answers.at(0), ttl, ec) : insert_id_answer(answers, ttl, ec);
  }

  // `fence = LAST_INSERT_ID(fence)` leaves the fence as it is and marks a matched row in the OK packet; the
  // affected-rows count would not do (it is 0 for a row whose new values equal the old ones, and the caller's
  // connection may have CLIENT_FOUND_ROWS set).
  milliseconds extend(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                      std::error_code& ec) override {
    const std::string k = bytes_literal(key);
    const std::string t = bytes_literal(token);
    const std::string ttl_us = micros(ttl);
    const std::vector<Answer> answers =
        exec(ctx, fill(extend_sql_, {{"key", k}, {"token", t}, {"ttl_us", ttl_us}}), ec);
    if (ec || answers.at(0).insert_id == 0) return milliseconds{-1};
    return ttl;
  }

  bool release(const OpContext& ctx, std::string_view key, std::string_view token, std::error_code& ec) override {
    const std::string k = bytes_literal(key);
    const std::string t = bytes_literal(token);
    const std::vector<Answer> answers = exec(ctx, fill(release_sql_, {{"key", k}, {"token", t}}), ec);
    return !ec && answers.at(0).insert_id != 0;
  }

  // One packet per batch: a transaction that extends every lease still held (a multi-table UPDATE joined to
  // the requests) and then reads back which of them are held, by the same clock; MySQL has no UPDATE ...
  // RETURNING. The rows it extended stay locked until COMMIT, so the SELECT sees exactly those.
  std::vector<milliseconds> extend_many(const OpContext& ctx, std::span<const ExtendRequest> requests,
                                        std::error_code& ec) override {
    std::vector<milliseconds> left(requests.size(), milliseconds{-1});
    if (ctx.connection) {
      // In the caller's transaction, and without assuming multi-statements: one statement per lease.
      for (std::size_t i = 0; i < requests.size() && !ec; ++i)
        left[i] = extend(ctx, requests[i].key, requests[i].token, requests[i].ttl, ec);
      return left;
    }
    for (std::size_t first = 0; first < requests.size() && !ec; first += extend_batch) {
      const std::span<const ExtendRequest> chunk =
          requests.subspan(first, std::min(extend_batch, requests.size() - first));
      std::string values;
      std::vector<std::string_view> keys;
      for (std::size_t i = 0; i < chunk.size(); ++i) {
        // SELECT k, t, ttl UNION ALL SELECT ...: a derived table both servers accept (MariaDB's VALUES table
        // constructor and MySQL's VALUES ROW(...) are spelled differently).
        values += (i == 0 ? "SELECT " : " UNION ALL SELECT ") + bytes_literal(chunk[i].key) +
                  (i == 0 ? " AS k, " : ", ") + bytes_literal(chunk[i].token) + (i == 0 ? " AS t, " : ", ") +
                  micros(chunk[i].ttl) + (i == 0 ? " AS ttl" : "");
        keys.push_back(chunk[i].key);
      }
      const std::string key_list = bytes_list(keys);
      const std::string sql = fill(extend_many_sql_, {{"requests", values}, {"keys", key_list}});
      const std::vector<Answer> answers = exec(ctx, sql, ec);
      if (ec) break;
      if (answers.size() != 4 || !answers[2].rows) {
        fail(ec, errc::backend_error, "the batched extension returned an unexpected answer");
        break;
      }
      std::map<std::pair<std::string, std::string>, milliseconds> held;  // (key, token) -> time left
      MYSQL_RES* res = answers[2].rows.get();
      while (MYSQL_ROW row = mysql_fetch_row(res)) {
        const unsigned long* lengths = mysql_fetch_lengths(res);
        held[{std::string(field(row, lengths, 0)), std::string(field(row, lengths, 1))}] =
            milliseconds{std::max<std::int64_t>(0, int_field(row, lengths, 2))};
      }
      for (std::size_t i = 0; i < chunk.size(); ++i) {
        const auto it = held.find({std::string(chunk[i].key), std::string(chunk[i].token)});
        if (it != held.end()) left[first + i] = it->second;
      }
    }
    return left;
  }

  std::vector<LockStatus> inspect(const OpContext& ctx, const std::vector<std::string>& keys,
                                  std::error_code& ec) override {
    const std::string where =
        keys.empty() ? std::string() : " WHERE `key` IN (" + bytes_list({keys.begin(), keys.end()}) + ")";
    const std::vector<Answer> answers = exec(ctx, fill(inspect_sql_, {{"where", where}}), ec);
    if (ec) return {};
    std::vector<LockStatus> rows;
    MYSQL_RES* res = answers.at(0).rows.get();
    while (MYSQL_ROW row = mysql_fetch_row(res)) {
      const unsigned long* lengths = mysql_fetch_lengths(res);
      LockStatus st;
      st.key = std::string(field(row, lengths, 0));
      st.held = field(row, lengths, 1) == "1";
      st.owner = std::string(field(row, lengths, 2));
      st.fence = int_field(row, lengths, 3);
      st.expires_in = milliseconds{int_field(row, lengths, 4)};
      rows.push_back(std::move(st));
    }
    return rows;
  }

  std::vector<Migration> migrations() const override {
    return {Migration{1, "0001_create_lock_table",
                      "CREATE TABLE IF NOT EXISTS " + table_ +
                          " (\n"
                          "  `key`     VARBINARY(255) NOT NULL,\n"
                          "  `token`   VARBINARY(128) NULL,\n"
                          "  `fence`   BIGINT UNSIGNED NOT NULL,\n"
                          "  `expires` BIGINT NOT NULL COMMENT 'microseconds since 1970-01-01 UTC, server clock',\n"
                          "  `owner`   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,\n"
                          "  PRIMARY KEY (`key`),\n"
                          "  CHECK (LENGTH(`key`) BETWEEN 1 AND 255),\n"
                          "  CHECK (`token` IS NULL OR LENGTH(`token`) BETWEEN 1 AND 128)\n"
                          ") ENGINE=InnoDB",
                      "DROP TABLE IF EXISTS " + table_},
            Migration{2, "0002_create_fence_floor",
                      "CREATE TABLE IF NOT EXISTS " + floor_table_ +
                          " (\n"
                          "  `id`    TINYINT NOT NULL PRIMARY KEY,\n"
                          "  `floor` BIGINT UNSIGNED NOT NULL,\n"
                          "  CHECK (`id` = 1)\n"
                          ") ENGINE=InnoDB;\n"
                          "INSERT IGNORE INTO " + floor_table_ + " (`id`, `floor`) VALUES (1, 0)",
                      "DROP TABLE IF EXISTS " + floor_table_}};
  }

  // Raise, then delete, as two statements (each its own transaction on our connections): the floor rises to
  // the largest fence of the rows idle since one cutoff, and the delete then takes only rows whose fence the
  // committed floor covers (`fence <= floor`). A release that commits between the two statements can leave a
  // row idle since before the cutoff with a fence the raise did not see; that row stays for the next prune.
  // The exclusive lock the raise takes is what an acquire's shared read of the floor waits for.
  PruneResult prune(const OpContext& ctx, milliseconds idle, std::error_code& ec) override {
    PruneResult out;
    std::vector<Answer> got = exec(ctx, fill("{limit}SELECT {now} - " + micros(idle), {{"now", now_us}}), ec);
    MYSQL_ROW row = !ec && got.at(0).rows ? mysql_fetch_row(got[0].rows.get()) : nullptr;
    if (ec || row == nullptr || row[0] == nullptr) return out;
    const std::string cut = row[0];
    got = exec(ctx,
               "{limit}UPDATE " + floor_table_ + " SET `floor` = GREATEST(`floor`, COALESCE((SELECT MAX(`fence`) FROM " +
                   table_ + " WHERE `expires` <= " + cut + "), 0)) WHERE `id` = 1",
               ec);
    if (ec) return out;
    got = exec(ctx,
               "{limit}DELETE FROM " + table_ + " WHERE `expires` <= " + cut + " AND `fence` <= (SELECT `floor` FROM " +
                   floor_table_ + " WHERE `id` = 1)",
               ec);
    if (ec) return out;
    out.deleted = static_cast<std::int64_t>(got.at(0).affected_rows);
    got = exec(ctx, "{limit}SELECT `floor` FROM " + floor_table_ + " WHERE `id` = 1", ec);
    row = !ec && got.at(0).rows ? mysql_fetch_row(got[0].rows.get()) : nullptr;
    if (ec) return out;
    if (row == nullptr) {
      fail(ec, errc::not_migrated, "the fence floor row is missing: run migrate()");
      return out;
    }
    out.fence_floor = int_field(row, mysql_fetch_lengths(got[0].rows.get()), 0);
    return out;
  }

  void migrate(const OpContext& ctx, std::error_code& ec) override {
    locked_migration(ctx, ec, [&](const Exec& run, const std::set<int>& applied) {
      for (const Migration& m : migrations()) {
        if (applied.contains(m.version)) continue;
        // One statement per run: a caller's connection may not allow several in one packet.
        for (std::size_t at = 0; at < m.up.size();) {
          const std::size_t end = std::min(m.up.find(";\n", at), m.up.size());
          run(m.up.substr(at, end - at));
          at = end + 2;
        }
        run("INSERT INTO " + versions_table_ + " (`version`, `id`, `applied_at`) VALUES (" + std::to_string(m.version) +
            ", '" + m.id + "', UTC_TIMESTAMP(6))");
      }
    });
  }

  void migrate_down(const OpContext& ctx, std::error_code& ec) override {
    locked_migration(ctx, ec, [&](const Exec& run, const std::set<int>& applied) {
      const std::vector<Migration> all = migrations();
      for (auto m = all.rbegin(); m != all.rend(); ++m) {  // newest first
        if (!applied.contains(m->version)) continue;
        run(m->down);
        run("DELETE FROM " + versions_table_ + " WHERE `version` = " + std::to_string(m->version));
      }
      run("DROP TABLE IF EXISTS " + versions_table_);
    });
  }

 private:
  /// The row an INSERT ... RETURNING left: (ours?, fence, milliseconds left, owner).
  static AcquireResult returned_answer(const Answer& answer, milliseconds ttl, std::error_code& ec) {
    AcquireResult out;
    MYSQL_RES* res = answer.rows.get();
    MYSQL_ROW row = res == nullptr ? nullptr : mysql_fetch_row(res);
    if (row == nullptr) {
      fail(ec, errc::backend_error, "the acquire statement returned no row");
      return out;
    }
    const unsigned long* lengths = mysql_fetch_lengths(res);
    const std::string_view ours = field(row, lengths, 0);
    if (ours == "0") {
      out.expires_in = milliseconds{int_field(row, lengths, 2)};
      out.holder = std::string(field(row, lengths, 3));
      return out;
    }
    const std::int64_t fence = int_field(row, lengths, 1);
    if (ours != "1" || fence <= 0) {
      fail(ec, errc::backend_error, "the acquire statement returned an unexpected row");
      return out;
    }
    out.granted = true;
    out.fence = fence;
    out.expires_in = std::min(ttl, milliseconds{int_field(row, lengths, 2)});  // as the row says, never more
    return out;
  }

  /// The OK packet of the portable upsert (LAST_INSERT_ID(), see busy_flag), then the holder SELECT's rows.
  static AcquireResult insert_id_answer(const std::vector<Answer>& answers, milliseconds ttl, std::error_code& ec) {
    AcquireResult out;
    const std::uint64_t id = answers.at(0).insert_id;
    if (id >= busy_flag) {
      out.expires_in = milliseconds{static_cast<milliseconds::rep>(id - busy_flag)};
      if (answers.size() > 1 && answers[1].rows) {
        MYSQL_RES* res = answers[1].rows.get();
        if (MYSQL_ROW row = mysql_fetch_row(res)) out.holder = std::string(field(row, mysql_fetch_lengths(res), 0));
      }
      return out;
    }
    if (id == 0) {
      fail(ec, errc::backend_error, "the acquire statement reported no fencing token");
      return out;
    }
    out.granted = true;
    out.fence = static_cast<std::int64_t>(id);
    out.expires_in = ttl;  // expires = the statement's now + ttl
    return out;
  }

  /// Runs one statement of a migration; does nothing once an earlier one failed.
  using Exec = std::function<std::vector<Answer>(const std::string&)>;

  /// Runs `body` on one connection under a named server lock (GET_LOCK), which serialises concurrent
  /// migrators; the version table makes re-runs no-ops. DDL commits implicitly in MySQL, so on a caller's
  /// connection the caller's open transaction is committed by it; there is no transactional DDL to frame it.
  template <class Body>
  void locked_migration(const OpContext& ctx, std::error_code& ec, Body&& body) {
    auto script = [&](MYSQL* conn, RunState& st) {
      const Exec run = [&](const std::string& sql) -> std::vector<Answer> {
        if (ec) return {};
        return mysql::run(conn, endpoint(), sql, ctx, ec, st);
      };
      const auto secs =
          std::max<std::int64_t>(0, std::chrono::ceil<std::chrono::seconds>(ctx.deadline - Clock::now()).count());
      std::vector<Answer> got = run("SELECT GET_LOCK('" + migration_lock_ + "', " + std::to_string(secs) + ")");
      if (ec) return std::vector<Answer>{};
      MYSQL_ROW row = got.at(0).rows ? mysql_fetch_row(got[0].rows.get()) : nullptr;
      if (row == nullptr || row[0] == nullptr || std::string_view(row[0]) != "1") {
        fail(ec, errc::timeout, "another process held the migration lock " + migration_lock_ + " until the deadline");
        return std::vector<Answer>{};
      }
      run("CREATE TABLE IF NOT EXISTS " + versions_table_ +
          " (`version` INT NOT NULL PRIMARY KEY, `id` VARCHAR(255) NOT NULL, `applied_at` DATETIME(6) NOT NULL "
          "COMMENT 'UTC') ENGINE=InnoDB");
      std::set<int> applied;
      got = run("SELECT `version` FROM " + versions_table_);
      if (!ec && got.at(0).rows) {
        while (MYSQL_ROW r = mysql_fetch_row(got[0].rows.get()))
          applied.insert(static_cast<int>(int_field(r, mysql_fetch_lengths(got[0].rows.get()), 0)));
      }
      if (!ec) body(run, applied);
      // Release the named lock even after a failure, unless the connection is gone (which releases it).
      if (!st.broken) {
        std::error_code release_ec;
        RunState release_st;
        const OpContext release_ctx{std::max(ctx.deadline, Clock::now() + milliseconds{1000}), {}, ctx.connection};
        const std::string detail = ec ? take_last_detail() : std::string();
        mysql::run(conn, endpoint(), "SELECT RELEASE_LOCK('" + migration_lock_ + "')", release_ctx, release_ec,
                   release_st);
        if (ec) set_last_detail(detail);
        if (release_st.broken) st.broken = true;
      }
      return std::vector<Answer>{};
    };
    with_connection(ctx, ec, script);
  }

  static MYSQL* caller_connection(const OpContext& ctx, std::error_code& ec) {
    if (ctx.connection.kind() != NativeConnection::Kind::mysql) {
      fail(ec, errc::invalid_argument, "the connection passed in Call is not a MySQL/MariaDB connection");
      return nullptr;
    }
    auto* conn = static_cast<MYSQL*>(ctx.connection.handle());
    return mysql::prepare_caller_connection(conn, ec) ? conn : nullptr;
  }

  /// Runs `body` on a pooled connection. A connection that broke is dropped; when nothing reached the server,
  /// the attempt is repeated once on a fresh connection, which is safe because nothing can have happened.
  template <class Body>
  std::vector<Answer> on_pool(const OpContext& ctx, std::error_code& ec, Body&& body) {
    for (int attempt = 0;; ++attempt) {
      mysql::Pool::Handle h = pool_.get(ctx, ec);
      if (!h) {
        set_nothing_sent(true);
        return {};
      }
      RunState st;
      std::vector<Answer> answers = body(h->conn.get(), st);
      if (st.broken) h.discard();
      if (ec && !st.sent && st.broken && attempt == 0) {
        ec.clear();
        continue;
      }
      if (ec && !st.sent) set_nothing_sent(true);
      return answers;
    }
  }

  /// Runs `body` on the caller's connection if the call names one, else on a pooled connection.
  template <class Body>
  std::vector<Answer> with_connection(const OpContext& ctx, std::error_code& ec, Body&& body) {
    if (!ctx.connection) return on_pool(ctx, ec, body);
    MYSQL* conn = caller_connection(ctx, ec);
    if (conn == nullptr) return {};
    RunState st;
    return body(conn, st);
  }

  const mysql::Endpoint& endpoint() const noexcept { return pool_.opener().endpoint; }

  /// `sql` with each {limit} (before each statement that may wait) filled in for this connection and deadline.
  static std::string limited(const std::string& sql, MYSQL* conn, const OpContext& ctx) {
    return fill(sql, {{"limit", mysql::statement_limit(conn, ctx)}});
  }

  std::vector<Answer> exec(const OpContext& ctx, const std::string& sql, std::error_code& ec) {
    return with_connection(ctx, ec, [&](MYSQL* conn, RunState& st) {
      return mysql::run(conn, endpoint(), limited(sql, conn, ctx), ctx, ec, st);
    });
  }

  const std::vector<std::string> table_parts_;
  const std::string table_;
  const std::string versions_table_;
  const std::string floor_table_;
  const std::string busy_text_ = std::to_string(busy_flag);
  const std::string new_token_ = inserted("token");
  const std::string new_expires_ = inserted("expires");
  const std::string new_owner_ = inserted("owner");
  std::string migration_lock_;
  // The statements with table, clock and VALUES() filled in; {key}, {token}, ... are filled per call.
  std::string acquire_sql_, acquire_returning_sql_, holder_sql_, extend_sql_, release_sql_, extend_many_sql_,
      inspect_sql_;
  mysql::Pool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_mysql_backend(std::string location, const Options& options,
                                            std::vector<std::string> table) {
  mysql::Endpoint endpoint = mysql::parse_url(location);
  return std::make_unique<MysqlBackend>(std::move(endpoint), options, std::move(table));
}

}  // namespace distrlock::detail
