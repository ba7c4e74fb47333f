// PLACEHOLDER: replaced by the real backend.
#include "backends/mysql/mysql_backend.hpp"

#include "distrlock/error.hpp"

namespace distrlock::detail {

std::unique_ptr<Backend> make_mysql_backend(std::string, const Options&, std::vector<std::string>) {
  throw error(errc::invalid_argument, "distrlock: the mysql backend is not implemented yet");
}

}  // namespace distrlock::detail
