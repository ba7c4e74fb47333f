// A separate process for tests that must change the client's environment (e.g. its clock via libfaketime).
//   lock_probe clock               prints this process's wall clock, seconds since the epoch
//   lock_probe URL KEY TTL_MS      tries once; prints "granted FENCE" or "busy"
#include <distrlock/distrlock.hpp>

#include <chrono>
#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  using namespace std::chrono;
  if (argc == 2 && std::string(argv[1]) == "clock") {
    std::printf("%lld\n", static_cast<long long>(duration_cast<seconds>(system_clock::now().time_since_epoch()).count()));
    return 0;
  }
  if (argc != 4) {
    std::fprintf(stderr, "usage: lock_probe clock | lock_probe URL KEY TTL_MS\n");
    return 64;
  }
  try {
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
