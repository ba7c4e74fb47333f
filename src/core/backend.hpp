// The one seam between the core and a database. Everything above it (waiting, heartbeats, RAII leases,
// do_exclusively) is written once; a backend only runs statements. All calls report failure through
// std::error_code and never throw; a backend must be thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <stop_token>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "distrlock/manager.hpp"
#include "distrlock/options.hpp"

namespace distrlock::detail {

using std::chrono::milliseconds;

/// Where and until when one statement may run.
struct OpContext {
  Clock::time_point deadline;
  std::stop_token stop;
  NativeConnection connection;  // empty: use the backend's pool
};

/// The answer to an acquire attempt: a grant, or the current holder.
struct AcquireResult {
  bool granted = false;
  std::int64_t fence = 0;   // granted: the new fencing token
  milliseconds expires_in{0};  // granted: lease left; busy: holder's lease left (0 if unknown)
  std::string holder;       // busy: the holder's owner string, if known
};

struct ExtendRequest {
  std::string_view key;
  std::string_view token;
  milliseconds ttl;
};

/// The fences a backend grants for one key strictly increase, across everything the server may forget:
///  * rows prune() deleted: a table-wide fence floor, raised in the same transaction as the delete, bounds
///    every fence granted before; a new row starts above it;
///  * grants lost in a failover: a backend whose server has replicas puts a promotion epoch that only grows
///    (PostgreSQL: the WAL timeline) in the bits from this one up, so every fence granted after a promotion is
///    larger than any the old primary granted. Within one epoch a key has 2^40 grants; epochs go up to 2^23.
/// A backend without such an epoch (SQLite has no replicas; MariaDB has no promotion counter) uses epoch 0.
constexpr int fence_epoch_shift = 40;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const noexcept = 0;

  virtual AcquireResult try_acquire(const OpContext& ctx, std::string_view key, std::string_view token,
                                    milliseconds ttl, std::string_view owner, std::error_code& ec) = 0;
  /// Returns the lease's new time left, or a negative duration when `token` no longer holds the key.
  virtual milliseconds extend(const OpContext& ctx, std::string_view key, std::string_view token, milliseconds ttl,
                              std::error_code& ec) = 0;
  /// Returns false when `token` no longer held a valid lease on the key.
  virtual bool release(const OpContext& ctx, std::string_view key, std::string_view token, std::error_code& ec) = 0;
  /// Extends many leases in as few statements as the backend allows. Returns, per request, the new time
  /// left, or a negative duration for a lease that is no longer held.
  virtual std::vector<milliseconds> extend_many(const OpContext& ctx, std::span<const ExtendRequest> requests,
                                                std::error_code& ec) = 0;

  /// The rows of `keys` that exist, in any order, or every row ordered by key when `keys` is empty, as stored
  /// (owner and time left even of a lease that is not held). The core clears those for leases not held, puts
  /// the rows in the caller's order and fills in the keys the table has never seen.
  virtual std::vector<LockStatus> inspect(const OpContext& ctx, const std::vector<std::string>& keys,
                                          std::error_code& ec) = 0;

  /// Deletes the rows of keys that have been free for at least `idle` by the server's clock (released or
  /// expired that long ago), raising the table's fence floor to their largest fence in the same transaction.
  virtual PruneResult prune(const OpContext& ctx, milliseconds idle, std::error_code& ec) = 0;

  virtual std::vector<Migration> migrations() const = 0;
  /// Applies missing migrations; idempotent and safe to run concurrently.
  virtual void migrate(const OpContext& ctx, std::error_code& ec) = 0;
  /// Reverts applied migrations, newest first.
  virtual void migrate_down(const OpContext& ctx, std::error_code& ec) = 0;
};

}  // namespace distrlock::detail
