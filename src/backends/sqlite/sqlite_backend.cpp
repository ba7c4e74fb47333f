// PLACEHOLDER: replaced by the real backend.
#include "backends/sqlite/sqlite_backend.hpp"

#include "distrlock/error.hpp"

namespace distrlock::detail {

std::unique_ptr<Backend> make_sqlite_backend(std::string, const Options&, std::vector<std::string>) {
  throw error(errc::invalid_argument, "distrlock: the sqlite backend is not implemented yet");
}

}  // namespace distrlock::detail
