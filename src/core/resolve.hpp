// Host name lookup bounded by a deadline. getaddrinfo() has no timeout of its own (the resolver's is seconds per
// server and attempt), and client libraries call it inside their "non-blocking" connects: the core looks names up
// first, here, and hands the libraries numeric addresses.
#pragma once

#include <string>
#include <system_error>

#include "distrlock/options.hpp"

namespace distrlock::detail {

/// True for an IPv4 or IPv6 literal, which needs no lookup.
bool is_numeric_host(const std::string& host);

/// The first address of `host` (numeric, as text), looked up on a helper thread and waited for until `deadline`
/// only. On failure or at the deadline, sets ec to errc::unavailable (with the detail) and returns "". The helper
/// thread finishes its lookup on its own afterwards, owning everything it touches.
std::string resolve_host(const std::string& host, Clock::time_point deadline, std::error_code& ec);

}  // namespace distrlock::detail
