// Shared test support: the backends under test, caller-owned sessions, unique names, server control.
// A test that needs a server and does not find one fails; it never skips.
#pragma once

#include <distrlock/distrlock.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dltest {

using namespace std::chrono_literals;

/// A connection owned by the test, for running the library inside the caller's transaction.
class CallerSession {
 public:
  virtual ~CallerSession() = default;
  /// Runs SQL; returns the first column of the first row ("" if none). Fails the test on error unless
  /// `error_out` is given, in which case the error text is stored there.
  virtual std::string query(std::string_view sql, std::string* error_out = nullptr) = 0;
  virtual distrlock::NativeConnection native() = 0;
  /// Creates a fresh schema (or database, or attached file) for a schema-qualified table; returns its name.
  virtual std::string make_schema() = 0;
  /// Gives the lease held by `token` in the default table to another token, as a takeover behind the
  /// holder's back (a paused holder whose lease expired and was re-granted) would.
  virtual void steal(std::string_view token) = 0;
  /// The same for whatever token holds `key` (ASCII) in the default table.
  virtual void steal_key(std::string_view key) = 0;
  /// Opens a transaction that keeps the library from writing `key`'s row in the default table until this
  /// session's ROLLBACK: the row locked FOR UPDATE on a server (it must exist), the database's write lock on
  /// SQLite. Lets a test make a statement hang on the server for as long as it likes.
  virtual void hold_row(std::string_view key) = 0;
};

/// The statements of a migration's SQL, which separates them with ";\n" (for tools that run one at a time).
std::vector<std::string> split_statements(const std::string& sql);

/// `bytes` as upper-case hex digits, for SQL literals (X'..', decode('..', 'hex')).
std::string to_hex(std::string_view bytes);

struct BackendUnderTest {
  std::string name;     // "postgres"
  std::string env_var;  // where scripts/services puts its URL
  std::string service;  // the scripts/services name; empty for an embedded database (no server)
  /// SQL that opens a transaction at each isolation level the backend offers.
  std::vector<std::pair<std::string, std::string>> isolation_levels;
  std::function<std::unique_ptr<CallerSession>(const std::string& url)> open_session;
  /// A query counting the tables of the current database/schema whose names are in the list appended to it,
  /// e.g. + "('a', 'b')".
  std::string count_tables_named;
  std::string url_suffix;  // a URL parameter added to the server's URL, e.g. "returning=off"
  /// SQL that opens a transaction at the session's default level, as most applications do.
  std::string default_begin = "BEGIN";
  /// The levels (names in isolation_levels) at which an acquire that waited on another transaction's grant, which
  /// then committed, fails with errc::conflict (a serialization failure: retry the transaction). At the
  /// others it is a busy answer.
  std::vector<std::string> levels_where_a_grant_committed_meanwhile_is_a_conflict;
};

/// Each backend's entry, defined in support/backend_<name>.cpp.
BackendUnderTest postgres_backend_under_test();
BackendUnderTest sqlite_backend_under_test();
BackendUnderTest mysql_backend_under_test();
/// MariaDB again, through the statements written for MySQL 8 (no INSERT ... RETURNING): "?returning=off".
BackendUnderTest mysql_portable_backend_under_test();

/// The backends the conformance suite runs against, by name.
const BackendUnderTest& backend(std::string_view name);
std::vector<std::string> backend_names();
/// The backends that have a server process (which can be stopped, restarted, or have connections killed).
std::vector<std::string> server_backend_names();

/// The value of `var`, or an empty string after recording a test failure that says how to start the server.
std::string server_url(const BackendUnderTest& b);

/// A key no other test (or earlier run) uses.
std::string unique_key(std::string_view hint = "k");
/// A table name no other test uses.
std::string unique_table();

/// Runs `scripts/services ACTION SERVICE` and returns its exit status.
int services(const std::string& action, const std::string& service);
/// Crashes the server of `service` (in $DISTRLOCK_SERVICES_DIR, as scripts/services keeps it): PostgreSQL gets an
/// immediate shutdown (SIGQUIT to the postmaster: no checkpoint, crash recovery at the next start), MariaDB a
/// SIGKILL. Returns once the server process is gone (false, after a test failure, if it cannot). Bring it back
/// with services("up", service).
bool crash(const std::string& service);

/// A logger that records every line, for asserting on what the library reported.
class CapturedLog {
 public:
  distrlock::Logger logger();
  bool contains(distrlock::LogLevel level, std::string_view needle) const;
  std::vector<std::string> lines() const;

 private:
  mutable std::mutex mu_;
  std::vector<std::pair<distrlock::LogLevel, std::string>> lines_;
};

}  // namespace dltest
