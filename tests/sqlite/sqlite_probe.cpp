// A separate process on a shared SQLite file, for the tests that need several real processes at once.
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
    if (mode == "migrate" && argc == 5) {
      wait_for_start(argv[4]);
      return migrate(argv[2], argv[3]);
    }
    std::fprintf(stderr,
                 "usage: sqlite_probe migrate URL TABLE START_NS\n");
    return 64;
  } catch (const std::exception& e) {
    std::printf("error %s\n", e.what());
    return 1;
  }
}
