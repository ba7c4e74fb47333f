// The torture checks on hand-written records: each test is one property the analyser must see, or must not
// invent. No database: the events are what workers would have reported.
#include "checks.hpp"

#include <gtest/gtest.h>

namespace torture {
namespace {

constexpr std::int64_t ms = 1'000'000;

struct Builder {
  Record r;
  Builder() {
    r.ttl_ns = 1000 * ms;
    r.reconnect_bound_ns = 3000 * ms;
    r.keys = 1;
  }
  void add(EventKind kind, int slot, long pid, std::int64_t fence, std::int64_t t0, std::int64_t t1 = 0,
           std::int64_t value = 0, int key = 0) {
    r.events.push_back(Event{kind, slot, pid, key, fence, t0 * ms, t1 * ms, value});
  }
  /// want at `want`, grant + enter at `enter`, exit at `exit`.
  void section(int slot, long pid, std::int64_t fence, std::int64_t want, std::int64_t enter, std::int64_t exit) {
    add(EventKind::want, slot, pid, 0, want);
    add(EventKind::grant, slot, pid, fence, want, enter);
    add(EventKind::enter, slot, pid, fence, enter);
    add(EventKind::exit, slot, pid, fence, exit);
  }
  void write(int slot, long pid, std::int64_t fence, std::int64_t sent, std::int64_t answered, WriteResult res) {
    add(EventKind::write, slot, pid, fence, sent, answered, static_cast<std::int64_t>(res));
  }
  void fault(const std::string& kind, long pid, std::int64_t from, std::int64_t to) {
    Fault f;
    f.kind = kind;
    f.pid = pid;
    f.t_start = from * ms;
    f.t_end = to * ms;
    r.faults.push_back(f);
  }
};

TEST(TortureChecks, SectionsThatFollowEachOtherDoNotOverlap) {
  Builder b;
  b.section(0, 100, 1, 0, 10, 500);
  b.section(1, 101, 2, 20, 501, 900);
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 0U);
  EXPECT_EQ(f.acquisitions, 2U);
  EXPECT_TRUE(f.violations.empty());
}

TEST(TortureChecks, TwoHoldersInsideAtOnceAreAnOverlap) {
  Builder b;
  b.section(0, 100, 1, 0, 10, 500);
  b.section(1, 101, 2, 20, 400, 900);
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 1U);
  ASSERT_EQ(f.violations.size(), 1U);
  EXPECT_NE(f.violations[0].what.find("overlapping"), std::string::npos);
}

TEST(TortureChecks, ASectionPausedBySigstopIsExempt) {
  Builder b;
  b.section(0, 100, 1, 0, 10, 2500);
  b.fault("stop", 100, 100, 1900);
  b.section(1, 101, 2, 20, 1200, 1300);
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 0U);
  EXPECT_EQ(f.exempt_sections, 1U);
}

TEST(TortureChecks, AKilledHoldersSectionEndsWhenItWasKilled) {
  Builder b;
  b.add(EventKind::want, 0, 100, 0, 0);
  b.add(EventKind::grant, 0, 100, 1, 0, 10);
  b.add(EventKind::enter, 0, 100, 1, 10);
  b.r.deaths[100] = Death{0, 300 * ms, true, "signal 9"};
  b.section(1, 101, 2, 20, 1100, 1200);
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 0U);
  EXPECT_EQ(f.worker_crashes, 0U);
  EXPECT_NEAR(f.max_unavailability_ms, 800.0, 0.01);  // from the kill to the next grant
}

TEST(TortureChecks, AnOlderFenceAcceptedAfterANewerOneIsAStaleWrite) {
  Builder b;
  b.write(1, 101, 2, 100, 101, WriteResult::accepted);
  b.write(0, 100, 1, 200, 201, WriteResult::accepted);
  b.write(0, 100, 1, 300, 301, WriteResult::rejected);
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.stale_writes_accepted, 1U);
  EXPECT_EQ(f.stale_writes_rejected, 1U);
}

TEST(TortureChecks, WritesInFlightTogetherAreNotStale) {
  Builder b;
  b.write(1, 101, 2, 100, 150, WriteResult::accepted);
  b.write(0, 100, 1, 120, 160, WriteResult::accepted);  // sent before the newer one was answered
  EXPECT_EQ(analyse(b.r).stale_writes_accepted, 0U);
}

TEST(TortureChecks, TwoGrantsWithOneFenceAreADuplicate) {
  Builder b;
  b.section(0, 100, 7, 0, 10, 20);
  b.section(1, 101, 7, 30, 40, 50);
  EXPECT_EQ(analyse(b.r).duplicate_fences, 1U);
}

TEST(TortureChecks, AGapBeyondTtlPlusTheReconnectBoundIsReportedUnlessTheServerWasDown) {
  Builder b;
  b.section(0, 100, 1, 0, 10, 100);
  b.section(1, 101, 2, 50, 5100, 5200);  // wanted all along, granted 5 s after the key was free
  EXPECT_EQ(analyse(b.r).unavailability_over_bound, 1U);
  b.fault("restart", 0, 200, 2000);  // the server was away for 1.8 s of it
  EXPECT_EQ(analyse(b.r).unavailability_over_bound, 0U);
}

TEST(TortureChecks, AHolderFromBeforeAFailoverThatStopsWithinATtlOfItOverlapsWithoutAViolation) {
  Builder b;
  b.section(0, 100, 5, 0, 10, 2500);         // its grant was lost in the failover; it stops at its next extension
  b.fault("failover", 0, 100, 1800);
  b.section(1, 101, (1LL << 40), 1900, 2000, 2600);  // the new primary's first grant: a larger fence
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 0U);
  EXPECT_EQ(f.overlaps_across_failover, 1U);
  EXPECT_TRUE(f.violations.empty());
}

TEST(TortureChecks, AHolderFromBeforeAFailoverStillWorkingLongAfterItIsAnOverlap) {
  Builder b;
  b.section(0, 100, 5, 0, 10, 9000);  // beyond the switch's end + TTL + reconnect bound (1.8 + 1 + 3 s)
  b.fault("failover", 0, 100, 1800);
  b.section(1, 101, (1LL << 40), 1900, 2000, 2600);
  EXPECT_EQ(analyse(b.r).overlapping_critical_sections, 1U);
}

TEST(TortureChecks, AnOverlapAcrossAFailoverWithoutALargerFenceIsNotExcused) {
  Builder b;
  b.section(0, 100, 5, 0, 10, 2500);
  b.fault("failover", 0, 100, 1800);
  b.section(1, 101, 5, 1900, 2000, 2600);  // the new primary reissued the lost grant's fence
  const Findings f = analyse(b.r);
  EXPECT_EQ(f.overlapping_critical_sections, 1U);
  EXPECT_EQ(f.duplicate_fences, 1U);
}

TEST(TortureChecks, TheLossSignalIsMeasuredAgainstTheServerSideExpiry) {
  Builder b;
  b.add(EventKind::want, 0, 100, 0, 0);
  b.add(EventKind::grant, 0, 100, 3, 0, 10);
  b.add(EventKind::enter, 0, 100, 3, 10);
  b.add(EventKind::stop, 0, 100, 3, 800);
  b.add(EventKind::exit, 0, 100, 3, 801);
  Fault f;
  f.kind = "partition";
  f.pid = 100;
  f.key = 0;
  f.fence = 3;
  f.t_start = 100 * ms;
  f.t_end = 2000 * ms;
  f.expiry = 1000 * ms;
  b.r.faults.push_back(f);
  const Findings found = analyse(b.r);
  ASSERT_EQ(found.loss_signal_ms.size(), 1U);
  EXPECT_NEAR(found.loss_signal_ms[0], 200.0, 0.01);
  EXPECT_EQ(found.late_loss_signals, 0U);
}

TEST(TortureChecks, AHolderThatWorksPastItsServerSideExpiryIsALateSignal) {
  Builder b;
  b.add(EventKind::want, 0, 100, 0, 0);
  b.add(EventKind::grant, 0, 100, 3, 0, 10);
  b.add(EventKind::enter, 0, 100, 3, 10);
  b.add(EventKind::exit, 0, 100, 3, 1100);  // no stop at all: its work just ended
  Fault f;
  f.kind = "partition";
  f.pid = 100;
  f.key = 0;
  f.fence = 3;
  f.t_start = 100 * ms;
  f.t_end = 2000 * ms;
  f.expiry = 1000 * ms;
  b.r.faults.push_back(f);
  const Findings found = analyse(b.r);
  EXPECT_EQ(found.late_loss_signals, 1U);
  ASSERT_EQ(found.loss_signal_ms.size(), 1U);
  EXPECT_NEAR(found.loss_signal_ms[0], -100.0, 0.01);
}

TEST(TortureChecks, AWorkerThatDiedOfItselfIsACrash) {
  Builder b;
  b.r.deaths[100] = Death{0, 5 * ms, false, "signal 11"};
  b.r.deaths[101] = Death{1, 6 * ms, false, "exit 0"};
  EXPECT_EQ(analyse(b.r).worker_crashes, 1U);
}

TEST(TortureChecks, EventLinesSurviveTheRoundTrip) {
  const Event e{EventKind::write, 3, 4242, 1, 17, 123456789, 123456999, 1};
  const std::string line = format_event(e);
  ASSERT_EQ(line.back(), '\n');
  const std::optional<Event> back = parse_event(std::string_view(line).substr(0, line.size() - 1));
  ASSERT_TRUE(back);
  EXPECT_EQ(back->kind, e.kind);
  EXPECT_EQ(back->pid, e.pid);
  EXPECT_EQ(back->fence, e.fence);
  EXPECT_EQ(back->t1, e.t1);
  EXPECT_FALSE(parse_event("write 1 2 3"));
  EXPECT_FALSE(parse_event("nonsense 1 2 3 4 5 6 7"));
}

}  // namespace
}  // namespace torture
