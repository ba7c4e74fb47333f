// libFuzzer target: keys and tokens as the API takes them (Manager::lock, Manager::adopt): no round trip
// happens, only validation. Input: "<key>\0<token>" (no NUL: the whole input is the key).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <system_error>

#include "distrlock/distrlock.hpp"

namespace {
const distrlock::Manager& manager() {
  // Never connected: lock() and adopt() do no I/O. The path does not exist and is never created.
  static const distrlock::Manager m =
      distrlock::Manager::open("sqlite:/nonexistent/distrlock-fuzz/locks.db",
                               distrlock::Options{.logger = [](distrlock::LogLevel, std::string_view) {}});
  return m;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const std::size_t nul = input.find('\0');
  const std::string key(input.substr(0, nul));
  std::error_code ec;
  const distrlock::Lock lock = manager().lock(key, ec);
  if (!ec && (key.empty() || key.size() > 255)) __builtin_trap();  // the documented rule: 1-255 bytes
  if (nul != std::string_view::npos) {
    std::error_code ec2;
    const distrlock::Lock adopted = manager().adopt(key, std::string(input.substr(nul + 1)), ec2);
    (void)adopted;
  }
  return 0;
}
