// Factory for the embedded SQLite backend. Internal: the core includes this, users never do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/backend.hpp"

namespace distrlock::detail {

/// `location` is the file path after "sqlite:" (never an SQLite URI; relative paths are resolved against the
/// working directory now). The file and its missing parent directories (mode 0700) are created on first use.
/// `table` holds validated identifier parts; with two, the first names an SQLite schema (`main`, or a
/// database attached to a caller's handle). Throws distrlock::error(invalid_argument) for an empty path,
/// ":memory:", the per-handle `temp` schema, or a table name SQLite reserves (sqlite_...).
std::unique_ptr<Backend> make_sqlite_backend(std::string location, const Options& options,
                                             std::vector<std::string> table);

}  // namespace distrlock::detail
