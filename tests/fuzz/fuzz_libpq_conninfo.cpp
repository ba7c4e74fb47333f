// libFuzzer target: a libpq key=value connection string ("host=... port=... password='...'"), as the
// library takes it when the URL has no scheme. The fixed "dbname=x " makes every input a key=value string.
#include <cstddef>
#include <cstdint>
#include <string>
#include <system_error>

#include "distrlock/distrlock.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string url = "dbname=x " + std::string(reinterpret_cast<const char*>(data), size);
  distrlock::Options options;
  options.logger = [](distrlock::LogLevel, std::string_view) {};
  std::error_code ec;
  const distrlock::Manager m = distrlock::Manager::open(url, options, ec);
  if (!ec) (void)m.masked_url();
  return 0;
}
