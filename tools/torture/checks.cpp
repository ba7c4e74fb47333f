#include "checks.hpp"

#include <algorithm>
#include <cstdio>
#include <limits>
#include <tuple>

namespace torture {
namespace {

constexpr std::int64_t forever = std::numeric_limits<std::int64_t>::max();

struct Section {
  int key = 0;
  int slot = 0;
  long pid = 0;
  std::int64_t fence = 0;
  std::int64_t want = 0;
  std::int64_t enter = 0;
  std::int64_t end = forever;            ///< exit, else death, else forever
  bool exempt = false;                   ///< the worker was SIGSTOPped inside it
  std::int64_t effective_end = forever;  ///< when it stopped keeping others out by its own doing
};

double ms(std::int64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string fmt_ms(std::int64_t t, std::int64_t t0) {
  if (t == forever) return "(never)";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", ms(t - t0));
  return buf;
}

std::int64_t overlap(std::int64_t a0, std::int64_t a1, std::int64_t b0, std::int64_t b1) {
  return std::max<std::int64_t>(0, std::min(a1, b1) - std::max(a0, b0));
}

std::vector<Section> sections_of(const Record& r) {
  std::map<long, std::vector<const Event*>> by_pid;
  for (const Event& e : r.events) by_pid[e.pid].push_back(&e);
  std::vector<Section> out;
  for (const auto& [pid, evs] : by_pid) {
    std::int64_t want = 0;
    std::optional<Section> open;
    for (const Event* e : evs) {
      if (e->kind == EventKind::want) want = e->t0;
      if (e->kind == EventKind::enter) {
        open = Section{e->key, e->slot, pid, e->fence, want, e->t0};
      } else if (e->kind == EventKind::exit && open) {
        open->end = e->t0;
        out.push_back(*open);
        open.reset();
      }
    }
    if (open) {
      const auto d = r.deaths.find(pid);
      if (d != r.deaths.end()) open->end = d->second.t;
      out.push_back(*open);
    }
  }
  for (Section& s : out) {
    s.effective_end = s.end;
    for (const Fault& f : r.faults) {
      if (f.kind != "stop" || f.pid != s.pid || overlap(f.t_start, f.t_end, s.enter, s.end) == 0) continue;
      s.exempt = true;
      s.effective_end = std::min(s.effective_end, std::max(f.t_start, s.enter));
    }
  }
  return out;
}

std::string describe(const Section& s, std::int64_t t0) {
  return "w" + std::to_string(s.slot) + " (pid " + std::to_string(s.pid) + ", fence " + std::to_string(s.fence) +
         ") in [" + fmt_ms(s.enter, t0) + ", " + fmt_ms(s.end, t0) + "] ms";
}

/// A granted before a failover finished, B after it began with a larger fence, and A stopped within a TTL plus
/// the reconnect bound of the switch's end: the overlap that asynchronous replication allows (A's grant may be
/// missing on the new primary, and A learns so at its next extension, or by its deadline).
bool across_failover(const Record& r, const Section& a, const Section& b) {
  if (a.fence >= b.fence) return false;
  for (const Fault& x : r.faults) {
    if (x.kind != "failover" || x.t_start == 0) continue;
    if (a.enter < x.t_end && x.t_start < b.enter && a.end <= x.t_end + r.ttl_ns + r.reconnect_bound_ns) return true;
  }
  return false;
}

/// Two holders at once: sections on one key that overlap on the monotonic clock. `sections` are sorted by
/// key, then entry.
void check_overlaps(const Record& r, const std::vector<Section>& sections, Findings& f) {
  for (std::size_t j = 0; j < sections.size(); ++j) {
    const Section& b = sections[j];
    if (b.exempt) {
      ++f.exempt_sections;
      continue;
    }
    // Sections last at most about 2 TTL and each worker has one open at a time, so a holder that still
    // overlaps is among the last few dozen to enter.
    for (std::size_t i = j, looked = 0; i-- > 0 && sections[i].key == b.key && looked < 64; ++looked) {
      const Section& a = sections[i];
      if (a.exempt || a.end <= b.enter) continue;
      if (across_failover(r, a, b)) {
        ++f.overlaps_across_failover;
        continue;
      }
      ++f.overlapping_critical_sections;
      f.violations.push_back({"overlapping critical sections on key " + std::to_string(b.key) + ": " +
                                  describe(a, r.t_start) + " and " + describe(b, r.t_start),
                              b.key, a.enter, std::max(b.end == forever ? b.enter : b.end, a.enter)});
    }
  }
}

/// How long a wanted key could not be had: from the later of "wanted" and "the previous holder stopped
/// keeping it", to the grant. Allowed: TTL + the reconnect bound + whatever server outage or fault on this
/// very worker overlapped the gap.
void check_unavailability(const Record& r, const std::vector<Section>& sections, Findings& f) {
  std::int64_t prev_end = 0;  // the latest effective end of the sections before, on the same key
  for (std::size_t j = 0; j < sections.size(); ++j) {
    const Section& s = sections[j];
    if (j == 0 || sections[j - 1].key != s.key) prev_end = 0;
    const std::int64_t from = std::max(s.want, prev_end);
    prev_end = std::max(prev_end, s.effective_end);
    if (from >= s.enter || from == forever) continue;
    const std::int64_t gap = s.enter - from;
    std::int64_t allowed = r.ttl_ns + r.reconnect_bound_ns;
    for (const Fault& x : r.faults)
      if (x.blocks_server() || x.pid == s.pid) allowed += overlap(x.t_start, x.t_end, from, s.enter);
    f.max_unavailability_ms = std::max(f.max_unavailability_ms, ms(gap));
    if (gap > allowed) {
      ++f.unavailability_over_bound;
      f.worst_unavailability_excess_ms = std::max(f.worst_unavailability_excess_ms, ms(gap - allowed));
      f.violations.push_back({"key " + std::to_string(s.key) + " could not be acquired for " + fmt_ms(gap, 0) +
                                  " ms (allowed " + fmt_ms(allowed, 0) + " ms) before " + describe(s, r.t_start),
                              s.key, from, s.enter});
    }
  }
}

/// Fenced writes: a write is stale when a higher fence for the key was accepted before it was sent. Also
/// counts acquisitions and failed acquires, from the same pass over the events.
void check_writes(const Record& r, Findings& f) {
  std::map<int, std::vector<const Event*>> accepted;
  for (const Event& e : r.events) {
    if (e.kind == EventKind::grant) ++f.acquisitions;
    if (e.kind == EventKind::acquire_failed) ++f.acquire_failures;
    if (e.kind != EventKind::write) continue;
    const auto res = static_cast<WriteResult>(e.value);
    if (res == WriteResult::accepted) {
      ++f.writes_accepted;
      accepted[e.key].push_back(&e);
    } else if (res == WriteResult::rejected) {
      ++f.stale_writes_rejected;  // the guard refused it: an older fence than one it had applied
    } else {
      ++f.writes_failed;
    }
  }
  for (auto& [key, writes] : accepted) {
    std::sort(writes.begin(), writes.end(), [](const Event* a, const Event* b) { return a->t1 < b->t1; });
    std::vector<std::size_t> best(writes.size());  // index of the highest fence among writes[0..i]
    for (std::size_t i = 0; i < writes.size(); ++i)
      best[i] = i > 0 && writes[best[i - 1]]->fence >= writes[i]->fence ? best[i - 1] : i;
    for (const Event* w : writes) {
      const auto done_before = std::lower_bound(writes.begin(), writes.end(), w->t0,
                                                [](const Event* e, std::int64_t t) { return e->t1 < t; });
      if (done_before == writes.begin()) continue;
      const Event* newer = writes[best[static_cast<std::size_t>(done_before - writes.begin()) - 1]];
      if (newer->fence <= w->fence) continue;
      ++f.stale_writes_accepted;
      f.violations.push_back({"stale write accepted on key " + std::to_string(key) + ": w" + std::to_string(w->slot) +
                                  " (pid " + std::to_string(w->pid) + ") wrote fence " + std::to_string(w->fence) +
                                  " at " + fmt_ms(w->t0, r.t_start) + " ms, after w" + std::to_string(newer->slot) +
                                  " (pid " + std::to_string(newer->pid) + ") had written fence " +
                                  std::to_string(newer->fence) + " at " + fmt_ms(newer->t1, r.t_start) + " ms",
                              key, newer->t0, w->t1});
    }
  }
}

/// Two grants of one key with one fencing token.
void check_fences(const Record& r, Findings& f) {
  std::map<std::pair<int, std::int64_t>, const Event*> grants;
  for (const Event& e : r.events) {
    if (e.kind != EventKind::grant) continue;
    const auto [it, fresh] = grants.emplace(std::pair{e.key, e.fence}, &e);
    if (fresh) continue;
    ++f.duplicate_fences;
    f.violations.push_back({"fence " + std::to_string(e.fence) + " granted twice on key " + std::to_string(e.key) +
                                ": to pid " + std::to_string(it->second->pid) + " at " +
                                fmt_ms(it->second->t1, r.t_start) + " ms and to pid " + std::to_string(e.pid) + " at " +
                                fmt_ms(e.t1, r.t_start) + " ms",
                            e.key, it->second->t0, e.t1});
  }
}

/// The loss signal: how long before the server-side expiry the holder's stop fired (negative: after it).
/// A holder that kept working past the expiry without a stop counts with its exit time.
void check_loss_signal(const Record& r, Findings& f) {
  for (const Fault& x : r.faults) {
    if (!x.expiry || x.key < 0) continue;
    ++f.loss_signal_faults;
    std::optional<std::int64_t> fired;
    std::optional<std::int64_t> left;
    for (const Event& e : r.events) {
      if (e.pid != x.pid || e.key != x.key || e.fence != x.fence) continue;
      if (e.kind == EventKind::stop && !fired) fired = e.t0;
      if (e.kind == EventKind::exit) left = e.t0;
    }
    std::optional<std::int64_t> signalled;  // the stop, or the exit of a holder that had none in time
    if (fired && (!left || *fired <= *left))
      signalled = fired;
    else if (left && *left > *x.expiry)
      signalled = left;
    if (!signalled) continue;
    f.loss_signal_ms.push_back(ms(*x.expiry - *signalled));
    f.loss_signal_ms_by_fault[x.kind + (x.detail.empty() ? "" : " (" + x.detail + ")")].push_back(
        ms(*x.expiry - *signalled));
    if (*signalled < *x.expiry) continue;
    ++f.late_loss_signals;
    f.violations.push_back({"w" + std::to_string(x.slot) + " (pid " + std::to_string(x.pid) + ", fence " +
                                std::to_string(x.fence) + ") on key " + std::to_string(x.key) + " " +
                                (signalled == fired ? "got its stop " : "never got a stop and left ") +
                                fmt_ms(*signalled - *x.expiry, 0) +
                                " ms after its lease expired on the server, under " + x.kind +
                                (x.detail.empty() ? "" : " (" + x.detail + ")"),
                            x.key, x.t_start, *signalled});
  }
}

void check_crashes_and_leaks(const Record& r, Findings& f) {
  for (const auto& [pid, d] : r.deaths)
    if (!d.injected && d.how != "exit 0") {
      ++f.worker_crashes;
      f.violations.push_back(
          {"worker w" + std::to_string(d.slot) + " (pid " + std::to_string(pid) + ") crashed: " + d.how, -1, d.t, d.t});
    }
  for (const int key : r.leaked_keys)
    f.violations.push_back(
        {"key " + std::to_string(key) + " still held after every worker shut down cleanly", key, 0, 0});
}

}  // namespace

Findings analyse(const Record& r) {
  Findings f;
  std::vector<Section> sections = sections_of(r);
  std::sort(sections.begin(), sections.end(),
            [](const Section& a, const Section& b) { return std::tie(a.key, a.enter) < std::tie(b.key, b.enter); });
  check_overlaps(r, sections, f);
  check_unavailability(r, sections, f);
  check_writes(r, f);
  check_fences(r, f);
  check_loss_signal(r, f);
  check_crashes_and_leaks(r, f);
  return f;
}

void print_interleaving(std::ostream& out, const Record& r, const Violation& v) {
  out << "distrlock-torture: FAILED: " << v.what << "\n";
  if (v.key < 0 && v.t_from == 0) return;
  const std::int64_t margin = 2 * r.ttl_ns;
  const std::int64_t from = v.t_from - margin;
  const std::int64_t to = v.t_to + margin;
  struct Line {
    std::int64_t t;
    std::string text;
  };
  std::vector<Line> lines;
  for (const Event& e : r.events) {
    const std::int64_t t = e.kind == EventKind::grant ? e.t1 : e.t0;
    if ((v.key >= 0 && e.key != v.key) || t < from || t > to) continue;
    if (e.kind == EventKind::start) continue;
    std::string text =
        "w" + std::to_string(e.slot) + " pid " + std::to_string(e.pid) + "  " + std::string(name_of(e.kind));
    if (e.kind != EventKind::want && e.kind != EventKind::acquire_failed) text += "  fence " + std::to_string(e.fence);
    if (e.kind == EventKind::write)
      text += std::string(e.value == 1   ? "  accepted"
                          : e.value == 0 ? "  REJECTED (stale)"
                                         : "  failed") +
              ", sent " + fmt_ms(e.t0, r.t_start) + ", answered " + fmt_ms(e.t1, r.t_start);
    if (e.kind == EventKind::grant) text += "  (asked at " + fmt_ms(e.t0, r.t_start) + ")";
    if ((e.kind == EventKind::released || e.kind == EventKind::acquire_failed) && e.value != 0)
      text += "  error " + std::to_string(e.value);
    lines.push_back({t, text});
  }
  for (const Fault& x : r.faults) {
    if (x.t_end < from || x.t_start > to) continue;
    std::string text = "FAULT " + x.kind + (x.detail.empty() ? "" : " (" + x.detail + ")");
    if (x.slot >= 0) text += " on w" + std::to_string(x.slot) + " pid " + std::to_string(x.pid);
    if (x.key >= 0) text += ", holding key " + std::to_string(x.key) + " fence " + std::to_string(x.fence);
    text += ", until " + fmt_ms(x.t_end, r.t_start);
    if (x.expiry) text += ", its lease expires at " + fmt_ms(*x.expiry, r.t_start);
    lines.push_back({x.t_start, text});
  }
  for (const auto& [pid, d] : r.deaths)
    if (d.t >= from && d.t <= to)
      lines.push_back({d.t, "w" + std::to_string(d.slot) + " pid " + std::to_string(pid) + "  died: " + d.how});
  std::stable_sort(lines.begin(), lines.end(), [](const Line& a, const Line& b) { return a.t < b.t; });
  out << "  key " << v.key << ", ms since start (" << lines.size() << " events):\n";
  std::size_t shown = 0;
  for (const Line& l : lines) {
    if (++shown > 120) {
      out << "    ... " << lines.size() - 120 << " more\n";
      break;
    }
    char t[32];
    std::snprintf(t, sizeof t, "%12.3f", ms(l.t - r.t_start));
    out << "    " << t << "  " << l.text << "\n";
  }
}

}  // namespace torture
