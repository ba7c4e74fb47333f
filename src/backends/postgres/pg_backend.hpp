// Factory for the PostgreSQL backend. Internal: the core includes this, users never do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"

namespace distrlock::detail {

/// `conninfo` is a postgresql:// URL or a libpq key=value string; `table` holds validated identifier parts.
/// Throws distrlock::error(invalid_argument) when libpq cannot parse `conninfo`.
std::unique_ptr<Backend> make_postgres_backend(std::string conninfo, const Options& options,
                                               std::vector<std::string> table);

}  // namespace distrlock::detail
