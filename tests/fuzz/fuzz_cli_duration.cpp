// libFuzzer target: the CLI's duration parser (tools/distrlock/common.cpp parse_duration): "250ms", "30s",
// "5m", "1h", bare seconds. Bad input must end as a usage Failure (exit 64), never a crash, and a good one
// must respect the documented range.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const distrlock::cli::Reporter reporter("fuzz");
  for (const bool zero_ok : {false, true}) {
    try {
      const auto ms = distrlock::cli::parse_duration("--ttl", text, zero_ok, reporter);
      constexpr long long max_ms = 365LL * 24 * 3'600'000;
      if (ms.count() < 0 || ms.count() > max_ms || (!zero_ok && ms.count() == 0)) __builtin_trap();
    } catch (const distrlock::cli::Failure& f) {
      if (f.exit_code() != distrlock::cli::exit_usage) __builtin_trap();
    }
  }
  return 0;
}
