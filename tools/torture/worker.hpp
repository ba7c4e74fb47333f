// The hidden worker mode of distrlock-torture: one process that loops acquire -> fenced writes while working
// -> release on random keys, and reports every step as an event line on a pipe to the parent.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace torture {

struct WorkerConfig {
  std::string db;        ///< the library's URL: through this worker's relay for the server backends
  std::string guard_db;  ///< direct URL of the guarded table
  std::string table;     ///< lock table
  std::string run_id;    ///< keys are "torture/<run_id>/<k>"
  int slot = 0;
  int keys = 1;
  std::chrono::milliseconds ttl{1000};
  int event_fd = 3;
  std::uint64_t seed = 0;
  int skew_hours = 0;             ///< only reported: the parent set up faketime
  bool ignore_stop = false;       ///< planted bug: keep working and writing after the stop fired
  bool skip_fence_check = false;  ///< planted bug: the guarded write does not compare fences
};

/// The key name of index `k`.
std::string key_name(const std::string& run_id, int k);

/// Runs until SIGTERM/SIGINT (then finishes the current critical section at once and releases). Returns the
/// process exit status: 0 after a clean shutdown.
int run_worker(const WorkerConfig& cfg);

}  // namespace torture
