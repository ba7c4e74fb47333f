// A separate process for tests that need real processes: one that changes the client's environment (e.g. its
// clock via libfaketime), several that contend for a key, or a holder that is killed.
//   lock_probe clock               prints this process's wall clock, seconds since the epoch
//   lock_probe URL KEY TTL_MS      tries once; prints "granted FENCE" or "busy"
//   lock_probe contend URL KEY ROUNDS HOLD_MS START_NS MARKER
//       from CLOCK_MONOTONIC START_NS on, ROUNDS times: take KEY (try_acquire every 2 ms while busy, for at
//       most 60 s), hold it HOLD_MS, release it, pause 2 ms. While holding, it owns the file MARKER (created
//       with O_EXCL, removed before the release): finding it already there means another process holds the
//       key too, and prints "overlap". Prints one line per round:
//         "FENCE ACQUIRED_NS RELEASING_NS BUSY"
//       ACQUIRED_NS is read just after the grant came back, RELEASING_NS just before the release is sent, both
//       on CLOCK_MONOTONIC (one clock for every process on the host); BUSY counts the busy answers before it.
//   lock_probe hold URL KEY TTL_MS
//       takes KEY once with TTL_MS and never releases it: prints "granted FENCE SENT_NS GOT_NS" (CLOCK_MONOTONIC
//       before the acquire was sent and after its grant came back), then sleeps until it is killed
//   lock_probe wait URL KEY TTL_MS WAIT_MS
//       acquire KEY, waiting up to WAIT_MS; prints "granted FENCE GOT_NS"
//   lock_probe lease URL KEY TTL_MS HOLD_MS
//       holds KEY as an auto-extended Lease for HOLD_MS, then releases it. Prints "granted FENCE WALL_S" once
//       granted, then "held LOST WALL_S" after HOLD_MS (LOST: 1 if the lease was reported lost), then
//       "released"; WALL_S is the wall clock (seconds since the epoch), which a test may fake
// Any failure prints "error WHAT" and exits 1.
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <distrlock/distrlock.hpp>
#include <string>
#include <thread>

namespace {

using namespace std::chrono;

long long monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

void sleep_until_monotonic(long long ns) {
  timespec ts{static_cast<time_t>(ns / 1'000'000'000LL), static_cast<long>(ns % 1'000'000'000LL)};
  while (::clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr) != 0) {
  }
}

int contend(const char* url, const char* key, int rounds, milliseconds hold, const char* marker) {
  auto manager = distrlock::Manager::open(url);
  for (int i = 0; i < rounds; ++i) {
    distrlock::Lock lock = manager.lock(key);
    long busy = 0;
    const auto give_up = steady_clock::now() + 60s;
    while (!lock.try_acquire(30s)) {
      ++busy;
      if (steady_clock::now() > give_up) throw std::runtime_error("not granted within 60 s");
      std::this_thread::sleep_for(2ms);
    }
    const long long acquired = monotonic_ns();
    const int fd = ::open(marker, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) std::printf("overlap at fence %lld\n", static_cast<long long>(*lock.fencing_token()));
    std::this_thread::sleep_for(hold);
    if (fd >= 0) {
      ::close(fd);
      ::unlink(marker);
    }
    const long long fence = *lock.fencing_token();
    const long long releasing = monotonic_ns();
    lock.release();
    std::printf("%lld %lld %lld %ld\n", fence, acquired, releasing, busy);
    std::fflush(stdout);
    std::this_thread::sleep_for(2ms);
  }
  return 0;
}

int hold(const char* url, const char* key, milliseconds ttl) {
  auto manager = distrlock::Manager::open(url);
  distrlock::Lock lock = manager.lock(key);
  const long long sent = monotonic_ns();
  if (!lock.try_acquire(ttl)) {
    std::printf("busy\n");
    return 1;
  }
  const long long got = monotonic_ns();
  std::printf("granted %lld %lld %lld\n", static_cast<long long>(*lock.fencing_token()), sent, got);
  std::fflush(stdout);
  for (;;) ::pause();
}

int wait(const char* url, const char* key, milliseconds ttl, milliseconds wait_for) {
  auto manager = distrlock::Manager::open(url);
  distrlock::Lock lock = manager.lock(key);
  lock.acquire(ttl, wait_for);
  const long long got = monotonic_ns();
  std::printf("granted %lld %lld\n", static_cast<long long>(*lock.fencing_token()), got);
  return 0;
}

long long wall_s() { return duration_cast<seconds>(system_clock::now().time_since_epoch()).count(); }

int lease(const char* url, const char* key, milliseconds ttl, milliseconds hold) {
  auto manager = distrlock::Manager::open(url);
  distrlock::Lease held = manager.acquire(key, {.ttl = ttl});
  std::printf("granted %lld %lld\n", static_cast<long long>(held.fencing_token()), wall_s());
  std::fflush(stdout);
  std::this_thread::sleep_for(hold);  // steady_clock: the test fakes only the wall clock
  std::printf("held %d %lld\n", held.lost() ? 1 : 0, wall_s());
  std::fflush(stdout);
  held.release();
  std::printf("released\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (argc == 2 && mode == "clock") {
    std::printf("%lld\n", static_cast<long long>(duration_cast<seconds>(system_clock::now().time_since_epoch()).count()));
    return 0;
  }
  try {
    if (mode == "contend" && argc == 8) {
      sleep_until_monotonic(std::stoll(argv[6]));
      return contend(argv[2], argv[3], std::stoi(argv[4]), milliseconds{std::stol(argv[5])}, argv[7]);
    }
    if (mode == "hold" && argc == 5) return hold(argv[2], argv[3], milliseconds{std::stol(argv[4])});
    if (mode == "lease" && argc == 6)
      return lease(argv[2], argv[3], milliseconds{std::stol(argv[4])}, milliseconds{std::stol(argv[5])});
    if (mode == "wait" && argc == 6)
      return wait(argv[2], argv[3], milliseconds{std::stol(argv[4])}, milliseconds{std::stol(argv[5])});
    if (argc != 4) {
      std::fprintf(stderr,
                   "usage: lock_probe clock | lock_probe URL KEY TTL_MS | lock_probe contend URL KEY ROUNDS HOLD_MS "
                   "START_NS MARKER | lock_probe hold URL KEY TTL_MS | lock_probe wait URL KEY TTL_MS WAIT_MS | "
                   "lock_probe lease URL KEY TTL_MS HOLD_MS\n");
      return 64;
    }
    auto manager = distrlock::Manager::open(argv[1]);
    distrlock::Lock lock = manager.lock(argv[2]);
    if (lock.try_acquire(milliseconds{std::stol(argv[3])})) {
      std::printf("granted %lld\n", static_cast<long long>(*lock.fencing_token()));
    } else {
      std::printf("busy\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::printf("error %s\n", e.what());
    return 1;
  }
}
