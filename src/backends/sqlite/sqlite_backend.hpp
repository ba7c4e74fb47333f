// Factory for the sqlite backend. Internal: the core includes this, users never do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"

namespace distrlock::detail {

std::unique_ptr<Backend> make_sqlite_backend(std::string location, const Options& options,
                                           std::vector<std::string> table);

}  // namespace distrlock::detail
