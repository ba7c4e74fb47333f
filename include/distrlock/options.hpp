// distrlock option structs. Plain values: copy them freely, from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

// The native handles a caller may pass in; their client headers never reach users of distrlock.
struct pg_conn;   // libpq's PGconn
struct sqlite3;   // SQLite's sqlite3
struct st_mysql;  // MariaDB Connector/C's (and MySQL's) MYSQL

namespace distrlock {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// The shortest lease the library grants. Below it, a round trip, a commit and a thread's scheduling delay
/// leave no time to extend the lease before its safety margin: such a lease is lost on every try. A usable
/// TTL is also at least ten times the database's round trip, commit included.
inline constexpr milliseconds min_ttl{100};

enum class LogLevel { debug, info, warning, error };

/// Receives every message the library logs. Called from the calling thread or from the heartbeat thread,
/// possibly concurrently: it must be thread-safe. Messages name the key and token and never contain a
/// password.
using Logger = std::function<void(LogLevel level, std::string_view message)>;

/// A logger that writes warnings and errors to stderr, one line each. The default.
Logger stderr_logger(LogLevel min_level = LogLevel::warning);

/// How a Manager talks to its database.
struct Options {
  /// Lock table, optionally schema-qualified ("locks" or "ops.locks"). Each part must match
  /// [A-Za-z_][A-Za-z0-9_]* and be at most 52 bytes; anything else is errc::invalid_argument.
  std::string table = "distributed_locks";
  /// Most connections the pool opens (>= 1). Calls beyond that wait for a free one, up to their deadline.
  std::size_t pool_size = 4;
  /// Deadline of a call that is not given one. Must be > 0.
  milliseconds operation_timeout = std::chrono::seconds(5);
  /// Longest a single connection attempt may take. Must be > 0.
  milliseconds connect_timeout = std::chrono::seconds(5);
  /// Stored beside each lease so others can see who holds a key. Empty means "hostname:pid".
  std::string owner{};
  /// Where messages go. Empty means stderr_logger().
  Logger logger{};
};

/// A native connection owned by the caller. When a call is given one, the lock statement runs on it, inside
/// whatever transaction the caller has open, so the lock change commits or rolls back with the caller's
/// work. The connection must be idle (no result pending) and is never closed by distrlock.
class NativeConnection {
 public:
  NativeConnection() = default;
  static NativeConnection postgres(pg_conn* conn) noexcept { return NativeConnection(Kind::postgres, conn); }
  static NativeConnection sqlite(sqlite3* db) noexcept { return NativeConnection(Kind::sqlite, db); }
  static NativeConnection mysql(st_mysql* conn) noexcept { return NativeConnection(Kind::mysql, conn); }

  enum class Kind { none, postgres, sqlite, mysql };
  Kind kind() const noexcept { return kind_; }
  void* handle() const noexcept { return handle_; }
  explicit operator bool() const noexcept { return handle_ != nullptr; }

 private:
  NativeConnection(Kind kind, void* handle) noexcept : kind_(kind), handle_(handle) {}
  Kind kind_ = Kind::none;
  void* handle_ = nullptr;
};

/// Per-call settings. Every field is optional.
struct Call {
  /// The whole call, waiting included, ends by this time. Unset means now + Options::operation_timeout
  /// (plus the wait, for calls that wait). A statement still running at the deadline is cancelled on the
  /// server and the call fails with errc::timeout.
  std::optional<Clock::time_point> deadline{};
  /// Requesting it cancels the call like a deadline, with errc::cancelled.
  std::stop_token stop{};
  /// Run on this caller-owned connection instead of the pool (see NativeConnection).
  NativeConnection connection{};
};

/// The safety margin of a lease of `ttl` when LeaseOptions::safety_margin is 0: ttl / 5, at least 1 ms. The lease
/// is treated as lost this long before its expiry (counted from when its grant or extension was sent).
constexpr milliseconds default_safety_margin(milliseconds ttl) noexcept {
  return ttl / 5 > milliseconds{1} ? ttl / 5 : milliseconds{1};
}

/// Settings of an auto-extended Lease (Manager::acquire).
struct LeaseOptions {
  /// Lease length, by the database's clock. Must be >= min_ttl.
  milliseconds ttl = std::chrono::seconds(30);
  /// How long to keep retrying while the key is busy. 0 means one attempt.
  milliseconds wait{0};
  /// How often the heartbeat extends the lease. 0 means ttl / 3. Must be >= 0.
  milliseconds extend_every{0};
  /// The lease's stop_token is requested once the lease is this close to expiring without a successful
  /// extension. 0 means default_safety_margin(ttl): ttl / 5, at least 1 ms.
  milliseconds safety_margin{0};
  /// Deadline of the release done by ~Lease. 0 means Options::operation_timeout.
  milliseconds release_timeout{0};
};

/// Settings of Manager::do_exclusively.
struct ExclusiveOptions {
  milliseconds ttl = std::chrono::seconds(30);  ///< as LeaseOptions::ttl
  milliseconds extend_every{0};                 ///< as LeaseOptions::extend_every
  milliseconds release_timeout{0};              ///< as LeaseOptions::release_timeout
  milliseconds wait{0};                         ///< as LeaseOptions::wait
  milliseconds safety_margin{0};                ///< as LeaseOptions::safety_margin
};

}  // namespace distrlock
