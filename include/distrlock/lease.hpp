// distrlock::Lease: an RAII guard on one key, extended automatically by its Manager's heartbeat thread.
//
// Thread safety: a Lease is move-only and owned by one thread; its observers (stop_token(), lost(),
// fencing_token()) may be read from any thread while it lives. A moved-from Lease holds nothing: its key and
// token are empty, its fencing token 0, lost() is true and its stop_token() is requested. The destructor is
// noexcept: it stops extending the lease and releases the key within LeaseOptions::release_timeout, reporting
// any failure to the Manager's logger.
//
// Loss is signalled by the Manager's watchdog thread, which does no I/O: no later than
// `expiry - safety_margin`, with expiry counted on this host's clock from when the grant or the last successful
// extension was *sent*, lost() is true and stop_token() is requested, whatever the network or the database is
// doing (docs/semantics.md states the guarantee and its assumptions). Stop callbacks run on the watchdog thread
// and must not block: one that does delays the stops of the Manager's other leases (their lost() still turns
// true on time). A callback may destroy the Lease: its release then runs on the Manager's extender thread.
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
  /// True once the lease is lost or within its safety margin of expiring unextended. Computed from the
  /// deadline itself, so it is true at the deadline even before the watchdog has run; once true, it stays true.
  bool lost() const noexcept;

  /// Releases now instead of in the destructor. errc::already_released if the lease was already gone.
  /// Afterwards the Lease holds nothing: lost() is true and stop_token() is requested, whatever the outcome.
  void release();
  void release(std::error_code& ec) noexcept;

 private:
  friend class Manager;
  explicit Lease(std::shared_ptr<detail::LeaseState> state) noexcept;
  void finish(std::error_code& ec) noexcept;
  /// The end of do_exclusively: releases now and sets `ec` to errc::lease_lost when the work's result cannot be
  /// trusted (the lease was lost before the work returned, or the release found another token holding the key).
  void finish_exclusive(std::error_code& ec) noexcept;
  std::shared_ptr<detail::LeaseState> state_;
};

}  // namespace distrlock
