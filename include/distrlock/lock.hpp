// distrlock::Lock: manual control of one key.
//
// Thread safety: a Lock is a value owned by one thread at a time; distinct Locks (even on the same key) may be
// used concurrently. Creating one costs no round trip. A Lock remembers the token and fencing token of its
// current grant; it does not extend itself (use Lease for that) and does not release in its destructor.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <system_error>

#include "distrlock/options.hpp"

namespace distrlock {

namespace detail {
struct ManagerState;
}

class Lock {
 public:
  /// Tries once. Returns true and records the grant when the key was free, expired, or already held by this
  /// Lock's token; returns false when another token holds it. Each acquire by a Lock that holds nothing
  /// draws a fresh random token (128 bits from the OS CSPRNG, written as a UUID).
  bool try_acquire(milliseconds ttl, const Call& call = {});
  bool try_acquire(milliseconds ttl, std::error_code& ec, const Call& call = {}) noexcept;

  /// Retries with backoff while the key is busy, for at most `wait`. Throws errc::already_acquired when the
  /// key is still held by another token when the wait runs out.
  void acquire(milliseconds ttl, milliseconds wait = milliseconds{0}, const Call& call = {});
  void acquire(milliseconds ttl, milliseconds wait, std::error_code& ec, const Call& call = {}) noexcept;

  /// Acquires with a caller-chosen token (1-128 bytes). The same token re-acquires a key it holds; any other
  /// token gets errc::already_acquired while the lease is valid. Every grant takes a new fencing token.
  void acquire_with_static_token(std::string token, milliseconds ttl, const Call& call = {});
  void acquire_with_static_token(std::string token, milliseconds ttl, std::error_code& ec,
                                 const Call& call = {}) noexcept;

  /// Sets the lease to expire `ttl` from now by the database clock; no argument reuses the TTL of the last
  /// grant. errc::already_released when the lease expired or another token took the key.
  void extend(const Call& call = {});
  void extend(std::error_code& ec, const Call& call = {}) noexcept;
  void extend(milliseconds ttl, const Call& call = {});
  void extend(milliseconds ttl, std::error_code& ec, const Call& call = {}) noexcept;

  /// Frees the key. errc::already_released when this token no longer held a valid lease. After any
  /// answer from the server the Lock holds nothing; after an unknown outcome it still remembers the token.
  void release(const Call& call = {});
  void release(std::error_code& ec, const Call& call = {}) noexcept;

  const std::string& key() const noexcept { return key_; }
  /// The token of the current grant; empty when this Lock holds nothing.
  std::optional<std::string> token() const;
  /// The fencing token of the current grant: larger than every earlier grant's for this key. Empty when
  /// this Lock holds nothing, or holds an adopted lease whose grant it did not see.
  std::optional<std::int64_t> fencing_token() const noexcept;
  /// Server-measured time the lease had left when last granted or extended.
  milliseconds expires_in() const noexcept { return expires_in_; }

 private:
  friend class Manager;
  friend class Lease;
  Lock(std::shared_ptr<detail::ManagerState> state, std::string key);
  bool acquire_once(const std::string& token, milliseconds ttl, const Call& call, Clock::time_point deadline,
                    std::error_code& ec, milliseconds* holder_left);
  void acquire_waiting(std::string token, milliseconds ttl, milliseconds wait, std::error_code& ec,
                       const Call& call);
  void forget() noexcept;

  std::shared_ptr<detail::ManagerState> state_;
  std::string key_;
  std::string token_;  // empty: holds nothing
  std::int64_t fence_ = 0;
  milliseconds ttl_{0};
  milliseconds expires_in_{0};
  std::int64_t sent_at_ns_ = 0;  // when the last grant or extension was sent (CLOCK_BOOTTIME), for the Lease
};

}  // namespace distrlock
