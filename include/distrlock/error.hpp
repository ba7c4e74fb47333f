// distrlock errors: one std::error_code category for the whole library.
//
// Every throwing call throws distrlock::error (a std::system_error) carrying one of these codes, and has a
// twin that takes std::error_code& instead and never throws for these conditions. Busy is a result, not an
// error, for try_acquire(); only calls that promise a lock (acquire, acquire_with_static_token) report it as
// errc::already_acquired. Thread safety: everything here is stateless and safe to use from any thread.
#pragma once

#include <string>
#include <system_error>

namespace distrlock {

enum class errc {
  // 0 is success, as for every std::error_code.
  already_acquired = 1,  ///< another token holds the key and its lease is valid
  already_released,      ///< this token no longer holds the key (released, expired, or taken over)
  timeout,               ///< the deadline passed; if a statement was in flight, its outcome is unknown
  cancelled,             ///< the caller's std::stop_token was requested; outcome unknown if in flight
  unavailable,           ///< the database could not be reached, or the connection broke
  invalid_argument,      ///< bad key, token, TTL, table name or URL; nothing was sent
  not_migrated,          ///< the lock table does not exist: call Manager::migrate()
  lease_lost,            ///< the lease ended (lost or about to expire) while the protected work ran
  conflict,              ///< serialization failure or deadlock in the caller's transaction: retry it
  backend_error,         ///< any other database error; the message carries the native text
};

/// The category of errc; its name() is "distrlock".
const std::error_category& category() noexcept;

std::error_code make_error_code(errc e) noexcept;

/// Thrown by every throwing call of the library. what() is one line that names the operation, the key and,
/// where known, the native error.
class error : public std::system_error {
 public:
  error(errc e, const std::string& what) : std::system_error(make_error_code(e), what) {}
  error(std::error_code ec, const std::string& what) : std::system_error(ec, what) {}
};

/// True when an operation that reported `ec` may have taken effect on the server anyway (a timeout,
/// cancellation or broken connection after the statement was sent). Never treat such an outcome as success.
bool outcome_may_be_unknown(std::error_code ec) noexcept;

}  // namespace distrlock

template <>
struct std::is_error_code_enum<distrlock::errc> : std::true_type {};
