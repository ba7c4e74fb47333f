// libFuzzer target: Manager::open with an arbitrary database URL and lock-table name. Opening does no I/O
// (connections are made lazily), so every input exercises only the library's parsing: the scheme, libpq's
// URL and key=value parsing as the library drives it, MySQL URLs and their ?options, sqlite: paths, table
// names. Input: "<table>\n<url>" (no newline: the whole input is the URL, with the default table).
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <system_error>

#include "distrlock/distrlock.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  distrlock::Options options;
  options.logger = [](distrlock::LogLevel, std::string_view) {};
  std::string_view url = input;
  if (const std::size_t nl = input.find('\n'); nl != std::string_view::npos) {
    options.table = std::string(input.substr(0, nl));
    url = input.substr(nl + 1);
  }
  std::error_code ec;
  const distrlock::Manager m = distrlock::Manager::open(url, options, ec);
  if (!ec) {
    // A Manager that opened must describe itself without touching the server, and never show a password.
    (void)m.masked_url();
    (void)m.backend_name();
    (void)m.migrations();
  }
  return 0;
}
