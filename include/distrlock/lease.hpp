// distrlock::Lease: an RAII guard on one key, extended automatically by its Manager's heartbeat thread.
//
// Thread safety: a Lease is move-only and owned by one thread; its observers (stop_token(), lost(),
// fencing_token()) may be read from any thread while it lives. The destructor is noexcept: it stops the
// heartbeat for this lease and releases the key within LeaseOptions::release_timeout, reporting any failure
// to the Manager's logger.
#pragma once

#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <system_error>

#include "distrlock/options.hpp"

namespace distrlock {

namespace detail {
struct LeaseState;
}

class Lease {
 public:
  Lease(Lease&&) noexcept;
  Lease& operator=(Lease&&) noexcept;
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease();

  const std::string& key() const noexcept;
  const std::string& token() const noexcept;
  std::int64_t fencing_token() const noexcept;

  /// Requested once the lease is lost (another token holds the key, or it expired) or comes within the
  /// safety margin of expiring without a successful extension. Work guarded by the lease must stop then.
  std::stop_token stop_token() const noexcept;
  /// True once stop_token() has been requested for loss or near-expiry.
  bool lost() const noexcept;

  /// Releases now instead of in the destructor. errc::already_released if the lease was already gone.
  void release();
  void release(std::error_code& ec) noexcept;

 private:
  friend class Manager;
  explicit Lease(std::shared_ptr<detail::LeaseState> state) noexcept;
  void finish(std::error_code& ec) noexcept;
  std::shared_ptr<detail::LeaseState> state_;
};

}  // namespace distrlock
