// Factory for the MySQL/MariaDB backend. Internal: the core includes this, users never do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"

namespace distrlock::detail {

/// `location` is the whole "mysql://user:pass@host:port/db[?socket=PATH]" (or "mariadb://...") URL; `table`
/// holds validated identifier parts ("name" or "database", "name"). Throws distrlock::error(invalid_argument),
/// with the password masked, for a URL it cannot parse. Connects lazily.
std::unique_ptr<Backend> make_mysql_backend(std::string location, const Options& options,
                                            std::vector<std::string> table);

}  // namespace distrlock::detail
