// A separate process on a shared SQLite file, for the tests that need several real processes at once.
//   sqlite_probe contend URL KEY ROUNDS START_NS
//       from steady_clock START_NS on, ROUNDS times: acquire KEY (waiting), hold it ~1 ms, release it; prints
//       one line "FENCE GRANTED_NS RELEASING_NS" per round, steady_clock (CLOCK_MONOTONIC, shared by every
//       process on the host) read just after the grant and just before the release
//   sqlite_probe migrate URL TABLE START_NS
//       from START_NS on: migrates TABLE, then acquires and releases a key in it; prints "ok"
// Any failure prints "error WHAT" and exits 1.
#include <chrono>
#include <cstdio>
#include <distrlock/distrlock.hpp>
#include <string>
#include <thread>

namespace {

using Clock = std::chrono::steady_clock;

void wait_for_start(const char* start_ns) {
  std::this_thread::sleep_until(Clock::time_point(std::chrono::nanoseconds(std::stoll(start_ns))));
}

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

int contend(const char* url, const char* key, int rounds) {
  auto manager = distrlock::Manager::open(url);
  for (int i = 0; i < rounds; ++i) {
    distrlock::Lock lock = manager.lock(key);
    lock.acquire(std::chrono::seconds(30), std::chrono::seconds(60),
                 distrlock::Call{.deadline = Clock::now() + std::chrono::seconds(90)});
    const long long granted = now_ns();
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const long long releasing = now_ns();
    const long long fence = *lock.fencing_token();
    lock.release();
    std::printf("%lld %lld %lld\n", fence, granted, releasing);
  }
  return 0;
}

int migrate(const char* url, const char* table) {
  auto manager = distrlock::Manager::open(url, {.table = table});
  manager.migrate();
  distrlock::Lock lock = manager.lock("migrated");
  lock.acquire(std::chrono::seconds(30), std::chrono::seconds(30));
  lock.release();
  std::printf("ok\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string mode = argc > 1 ? argv[1] : "";
    if (mode == "contend" && argc == 6) {
      wait_for_start(argv[5]);
      return contend(argv[2], argv[3], std::stoi(argv[4]));
    }
    if (mode == "migrate" && argc == 5) {
      wait_for_start(argv[4]);
      return migrate(argv[2], argv[3]);
    }
    std::fprintf(stderr,
                 "usage: sqlite_probe contend URL KEY ROUNDS START_NS | sqlite_probe migrate URL TABLE START_NS\n");
    return 64;
  } catch (const std::exception& e) {
    std::printf("error %s\n", e.what());
    return 1;
  }
}
