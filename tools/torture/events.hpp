// What workers tell the parent, and how: one text line per event, written with one write(2) to a pipe, so a
// line is never torn even when the worker is killed mid-way (lines stay far below PIPE_BUF).
//
// Every time is CLOCK_MONOTONIC in nanoseconds: all processes run on one host, so one clock orders them all.
// Workers under faketime keep the real monotonic clock (FAKETIME_DONT_FAKE_MONOTONIC=1), as a host whose
// wall clock is off still counts seconds at the normal rate.
#pragma once

#include <time.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace torture {

inline std::int64_t mono_ns() noexcept {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1'000'000'000 + ts.tv_nsec;
}

enum class EventKind {
  start,           ///< worker up; value: clock skew in hours (0: none)
  want,            ///< about to acquire `key`; t0
  grant,           ///< acquired `key` with `fence`; t0: acquire call started, t1: it returned
  enter,           ///< critical section entered; t0
  write,           ///< fenced write with `fence`; t0..t1; value: WriteResult
  stop,            ///< the lease's stop_token fired; t0
  exit,            ///< critical section left; t0
  released,        ///< release returned; t0; value: 0 ok, else the distrlock errc
  acquire_failed,  ///< acquire gave up; t0; value: the distrlock errc
};

enum class WriteResult { rejected = 0, accepted = 1, failed = 2 };

struct Event {
  EventKind kind{};
  int slot = 0;  ///< worker slot (0..P-1); a replacement keeps its slot
  long pid = 0;
  int key = 0;  ///< key index (0..K-1)
  std::int64_t fence = 0;
  std::int64_t t0 = 0;
  std::int64_t t1 = 0;
  std::int64_t value = 0;
};

std::string_view name_of(EventKind k) noexcept;
std::string format_event(const Event& e);                 ///< one line, with its '\n'
std::optional<Event> parse_event(std::string_view line);  ///< nothing for a malformed line

}  // namespace torture
