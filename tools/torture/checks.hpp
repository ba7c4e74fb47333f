// The checks distrlock-torture runs after the workers are gone, on what they reported and what the parent
// did to them. Pure functions of the record: no I/O but the failure report.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "events.hpp"

namespace torture {

/// One fault the parent injected, over [t_start, t_end] on the monotonic clock.
struct Fault {
  std::string kind;    ///< kill, stop, partition, stall, terminate, restart, skew, failover
  std::string detail;  ///< e.g. "hang", "row lock", "backend SIGSTOP"
  int slot = -1;       ///< target worker slot, -1 for none
  long pid = 0;
  int key = -1;  ///< the key its target held, -1 if none
  std::int64_t fence = 0;
  std::int64_t t_start = 0;
  std::int64_t t_end = 0;
  /// Server-side expiry of the target's lease on the monotonic clock, from status() once the fault was in
  /// place: partition and stall only, when the target held a key.
  std::optional<std::int64_t> expiry;
  /// True for faults that make the whole key (or server) unavailable while they last: restart, stall, failover.
  bool blocks_server() const { return kind == "restart" || kind == "stall" || kind == "failover"; }
};

/// A worker process the parent saw end.
struct Death {
  int slot = 0;
  std::int64_t t = 0;     ///< when it was killed (injected) or reaped
  bool injected = false;  ///< SIGKILLed by a kill fault or at shutdown
  std::string how;        ///< "exit 0", "signal 9", ...
};

struct Record {
  std::vector<Event> events;
  std::vector<Fault> faults;
  std::map<long, Death> deaths;  ///< by pid
  std::int64_t t_start = 0;      ///< workers started
  std::int64_t ttl_ns = 0;
  std::int64_t reconnect_bound_ns = 0;
  int keys = 0;
  std::vector<int> leaked_keys;  ///< held after the clean shutdown
};

struct Violation {
  std::string what;  ///< one line
  int key = -1;
  std::int64_t t_from = 0;
  std::int64_t t_to = 0;
};

struct Findings {
  std::uint64_t acquisitions = 0;
  std::uint64_t overlapping_critical_sections = 0;
  std::uint64_t exempt_sections = 0;  ///< sections whose worker was SIGSTOPped inside them
  /// Overlaps of a holder granted before a failover with one granted after it, with a larger fence, while the
  /// old holder had not yet learnt that its grant was lost (asynchronous replication). Not violations while
  /// the old holder stops within a TTL plus the reconnect bound of the switch; later, they are.
  std::uint64_t overlaps_across_failover = 0;
  std::uint64_t stale_writes_accepted = 0;
  std::uint64_t stale_writes_rejected = 0;
  std::uint64_t writes_accepted = 0;
  std::uint64_t writes_failed = 0;
  std::uint64_t duplicate_fences = 0;
  std::uint64_t acquire_failures = 0;
  std::vector<double> loss_signal_ms;  ///< per measured fault: ms from the stop to the server-side expiry
  std::map<std::string, std::vector<double>> loss_signal_ms_by_fault;  ///< the same, per fault kind
  std::uint64_t loss_signal_faults = 0;  ///< partitions and stalls whose target's expiry could be read
  std::uint64_t late_loss_signals = 0;   ///< of those, at or after the expiry: the holder worked on unprotected
  double max_unavailability_ms = 0;
  double worst_unavailability_excess_ms = 0;  ///< beyond the bound; > 0 fails
  std::uint64_t unavailability_over_bound = 0;
  std::uint64_t worker_crashes = 0;
  std::vector<Violation> violations;
};

Findings analyse(const Record& r);

/// Everything that happened on `v.key` (and every fault) around the violation, one line per event, times in
/// ms since the start of the run.
void print_interleaving(std::ostream& out, const Record& r, const Violation& v);

}  // namespace torture
