// libFuzzer target: the MySQL/MariaDB URL parser (src/backends/mysql/mysql_connection.cpp parse_url), after a
// fixed "mysql://": credentials, host, port, database, percent-decoding and the ?socket/returning/ssl-*
// options. Called directly rather than through Manager::open so that it also runs in the clang-14 fuzz build,
// which has to leave the MySQL backend out (see CMakeLists.txt). Bad input must be errc::invalid_argument.
#include <cstddef>
#include <cstdint>
#include <string>

#include "backends/mysql/mysql_connection.hpp"
#include "distrlock/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string url = "mysql://" + std::string(reinterpret_cast<const char*>(data), size);
  try {
    const distrlock::detail::mysql::Endpoint ep = distrlock::detail::mysql::parse_url(url);
    // The masked form is what messages print: a URL with a password must show it masked. (Whether the
    // password's bytes appear elsewhere cannot be judged here: the user or database may contain them.)
    if (!ep.password.empty() && ep.masked.find("***") == std::string::npos) __builtin_trap();
  } catch (const distrlock::error& e) {
    if (e.code() != distrlock::errc::invalid_argument) __builtin_trap();
  }
  return 0;
}
