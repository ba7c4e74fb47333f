// distrlock::Manager: the entry point. Opens a backend from a URL, owns its connection pool and the one
// heartbeat thread that extends every Lease it handed out.
//
// Thread safety: a Manager is thread-safe; share one per process and database. It is cheap to move. Locks
// and Leases keep what they need of it alive, so it may be destroyed before them; the heartbeat thread stops
// when the last of them is gone.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

#include "distrlock/error.hpp"
#include "distrlock/lease.hpp"
#include "distrlock/lock.hpp"
#include "distrlock/options.hpp"

namespace distrlock {

namespace detail {
struct ManagerState;
struct ManagerAccess;
}

/// What the lock table says about one key, by the server's clock.
struct LockStatus {
  std::string key;
  bool held = false;             ///< a lease is valid now
  std::string owner{};           ///< the holder's owner string; empty when free
  std::int64_t fence = 0;        ///< the last fencing token granted for the key; 0 if never granted
  milliseconds expires_in{0};    ///< time the lease has left; 0 when free
};

/// What Manager::prune() did.
struct PruneResult {
  std::int64_t deleted = 0;      ///< rows of free keys deleted
  std::int64_t fence_floor = 0;  ///< the table's fence floor afterwards: every later grant's fence is above it
};

/// One versioned schema change. IDs are stable across releases, so the SQL can be fed to any migration tool.
struct Migration {
  int version = 0;
  std::string id;
  std::string up;
  std::string down;
};

class Manager {
 public:
  /// Opens "postgresql://user:pass@host:port/db?..." (also "postgres://", or a libpq "key=value ..."
  /// string). Connects lazily: no round trip happens here. errc::invalid_argument for an unknown scheme,
  /// a table name that is not a plain (optionally schema-qualified) identifier, or bad options.
  static Manager open(std::string_view url, Options options = {});
  static Manager open(std::string_view url, Options options, std::error_code& ec) noexcept;

  /// The schema as versioned up/down SQL for this Manager's table, in version order.
  std::vector<Migration> migrations() const;
  /// Applies the missing migrations. Idempotent, and safe when several processes run it at once.
  void migrate(const Call& call = {});
  void migrate(std::error_code& ec, const Call& call = {}) noexcept;

  /// Reverts every applied migration, newest first: drops the lock table. Fencing tokens start again from 1
  /// afterwards, so never run it while any holder or fenced storage may still be live.
  void migrate_down(const Call& call = {});
  void migrate_down(std::error_code& ec, const Call& call = {}) noexcept;

  /// The state of `keys` (one entry each, in order; a key never seen is free with fence 0), or of every key
  /// in the table, ordered by key, when `keys` is empty. One statement.
  std::vector<LockStatus> status(const std::vector<std::string>& keys = {}, const Call& call = {});
  std::vector<LockStatus> status(const std::vector<std::string>& keys, std::error_code& ec,
                                 const Call& call = {}) noexcept;

  /// Deletes the rows of keys that have been free for at least `idle` by the server's clock (released, or
  /// expired, that long ago), so that keys used once (`invoice-42`) do not grow the table without bound. Held
  /// keys are never touched. Fencing tokens stay safe: in the same transaction the table's fence floor rises to
  /// the largest fence deleted, and a key that has no row starts above the floor, so a pruned key never
  /// reissues a token. errc::invalid_argument for a negative `idle`. Safe to run while others lock.
  PruneResult prune(milliseconds idle, const Call& call = {});
  PruneResult prune(milliseconds idle, std::error_code& ec, const Call& call = {}) noexcept;

  /// A handle on `key` (1-255 arbitrary bytes). No round trip. errc::invalid_argument for a bad key.
  Lock lock(std::string key) const;
  Lock lock(std::string key, std::error_code& ec) const noexcept;
  /// A handle on a lease granted elsewhere (another process, or `distrlock acquire`), identified by its
  /// token. No round trip: extend(ttl) and release() check the token on the server. Its fencing_token() is
  /// unknown (empty) until it acquires again.
  Lock adopt(std::string key, std::string token) const;
  Lock adopt(std::string key, std::string token, std::error_code& ec) const noexcept;

  /// Acquires `key` and keeps extending it from the heartbeat thread until the Lease is destroyed.
  /// errc::already_acquired when the key is still busy after options.wait. A Lease is extended and released
  /// on the Manager's own connections, so it only ever stands on a committed grant: a `call` with a
  /// Call::connection is errc::invalid_argument, and nothing is sent (use Lock::try_acquire inside the
  /// caller's transaction instead). do_exclusively takes no Call, so it always runs on the pool.
  Lease acquire(std::string key, const LeaseOptions& options = {}, const Call& call = {});
  std::optional<Lease> acquire(std::string key, const LeaseOptions& options, std::error_code& ec,
                               const Call& call = {}) noexcept;

  /// Acquires `key`, runs fn(stop_token) while the heartbeat extends the lease, then releases it within
  /// release_timeout, even if fn throws. Returns fn's result or rethrows its exception. If the lease is lost
  /// while fn runs, fn's stop_token is requested, the loss is logged, and the call throws
  /// errc::lease_lost once fn returns, because fn's result was not produced under a valid lease. The same
  /// happens when the final release finds that another token holds the key. A release whose outcome is unknown
  /// does not void a result produced while the lease was valid: it is logged, and the lease ends by its TTL.
  template <class Fn>
  std::invoke_result_t<Fn&, std::stop_token> do_exclusively(std::string key, const ExclusiveOptions& options,
                                                              Fn&& fn);
  /// The same, reporting the library's own failures (busy, lease lost, ...) through `ec` instead of
  /// throwing: returns the result only when `ec` is clear. Exceptions thrown by fn still propagate.
  template <class Fn>
  auto do_exclusively(std::string key, const ExclusiveOptions& options, Fn&& fn, std::error_code& ec)
      -> std::conditional_t<std::is_void_v<std::invoke_result_t<Fn&, std::stop_token>>, void,
                            std::optional<std::invoke_result_t<Fn&, std::stop_token>>>;

  /// The URL with any password replaced by "***"; safe to log.
  const std::string& masked_url() const noexcept;
  /// "postgres", "sqlite" or "mysql".
  std::string_view backend_name() const noexcept;

 private:
  friend struct detail::ManagerAccess;
  explicit Manager(std::shared_ptr<detail::ManagerState> state) noexcept;
  static LeaseOptions lease_options(const ExclusiveOptions& o) noexcept {
    return LeaseOptions{.ttl = o.ttl,
                        .wait = o.wait,
                        .extend_every = o.extend_every,
                        .safety_margin = o.safety_margin,
                        .release_timeout = o.release_timeout};
  }
  /// Throws distrlock::error for a do_exclusively failure on `key`, with the library's detail text.
  [[noreturn]] static void throw_exclusive_error(std::error_code ec, const std::string& key);
  std::shared_ptr<detail::ManagerState> state_;
};

template <class Fn>
std::invoke_result_t<Fn&, std::stop_token> Manager::do_exclusively(std::string key, const ExclusiveOptions& options,
                                                                     Fn&& fn) {
  std::error_code ec;
  const std::string name = key;
  if constexpr (std::is_void_v<std::invoke_result_t<Fn&, std::stop_token>>) {
    do_exclusively(std::move(key), options, std::forward<Fn>(fn), ec);
    if (ec) throw_exclusive_error(ec, name);
  } else {
    auto result = do_exclusively(std::move(key), options, std::forward<Fn>(fn), ec);
    if (ec) throw_exclusive_error(ec, name);
    return std::move(*result);
  }
}

template <class Fn>
auto Manager::do_exclusively(std::string key, const ExclusiveOptions& options, Fn&& fn, std::error_code& ec)
    -> std::conditional_t<std::is_void_v<std::invoke_result_t<Fn&, std::stop_token>>, void,
                          std::optional<std::invoke_result_t<Fn&, std::stop_token>>> {
  using Result = std::invoke_result_t<Fn&, std::stop_token>;
  // ~Lease releases on every way out, exceptions from fn included, within release_timeout.
  std::optional<Lease> lease = acquire(std::move(key), lease_options(options), ec);
  if constexpr (std::is_void_v<Result>) {
    if (ec) return;
    std::invoke(fn, lease->stop_token());
    lease->finish_exclusive(ec);
  } else {
    if (ec) return std::nullopt;
    std::optional<Result> result(std::invoke(fn, lease->stop_token()));
    lease->finish_exclusive(ec);
    if (!ec) return result;
    return std::nullopt;
  }
}

}  // namespace distrlock
