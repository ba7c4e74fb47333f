// Exclusion between real processes, each with its own Manager, on every backend: what a deployment has.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <sstream>

#include "fixture.hpp"

namespace dltest {
namespace {

long long monotonic_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<long long>(ts.tv_sec) * 1'000'000'000LL + ts.tv_nsec;
}

/// A lock_probe child process whose stdout the test reads; killed (SIGKILL) and reaped when destroyed.
class Probe {
 public:
  explicit Probe(const std::vector<std::string>& args) {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) {
      ADD_FAILURE() << "pipe failed";
      return;
    }
    std::vector<char*> argv;
    std::vector<std::string> all{DISTRLOCK_LOCK_PROBE};
    all.insert(all.end(), args.begin(), args.end());
    for (std::string& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDOUT_FILENO);
      ::dup2(fds[1], STDERR_FILENO);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    ::close(fds[1]);
    out_ = ::fdopen(fds[0], "r");
  }
  ~Probe() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      wait();
    }
    if (out_ != nullptr) std::fclose(out_);
  }
  Probe(const Probe&) = delete;
  Probe& operator=(const Probe&) = delete;

  /// The next line of output ("" at the end).
  std::string line() {
    char buf[512];
    if (out_ == nullptr || std::fgets(buf, sizeof buf, out_) == nullptr) return {};
    return buf;
  }
  /// Everything left of the output, then the exit status (128 + N for signal N).
  std::string rest() {
    std::string all;
    for (std::string l = line(); !l.empty(); l = line()) all += l;
    return all;
  }
  int wait() {
    if (pid_ <= 0) return status_;
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = -1;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
  }
  void kill() const {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
  }

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
  int status_ = -1;
};

struct Grant {
  long long fence = 0;
  long long acquired = 0;   // CLOCK_MONOTONIC just after the grant came back to its process
  long long releasing = 0;  // CLOCK_MONOTONIC just before that process sent the release
  long busy = 0;            // busy answers the process got before this grant
  int process = 0;
};

TEST_P(Conformance, ProcessesContendingForOneKeyTakeItInTurnAndNeverHoldItTogether) {
  constexpr int processes = 6;
  constexpr int rounds = 15;
  const std::string marker =
      (std::filesystem::temp_directory_path() / ("distrlock-holder-" + unique_table())).string();
  // Every process starts contending at one instant, 2 s from now (time enough to start them all).
  const long long start = monotonic_ns() + 2'000'000'000LL;
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < processes; ++i)
    probes.push_back(std::make_unique<Probe>(std::vector<std::string>{
        "contend", url_, key(), std::to_string(rounds), "5", std::to_string(start), marker}));

  std::vector<Grant> grants;
  int overlaps = 0;
  for (int i = 0; i < processes; ++i) {
    const std::string out = probes[static_cast<std::size_t>(i)]->rest();
    EXPECT_EQ(probes[static_cast<std::size_t>(i)]->wait(), 0) << out;
    std::istringstream lines(out);
    for (std::string l; std::getline(lines, l);) {
      if (l.starts_with("overlap")) {
        ++overlaps;
        ADD_FAILURE() << "process " << i << ": " << l;
        continue;
      }
      Grant g;
      g.process = i;
      std::istringstream fields(l);
      if (fields >> g.fence >> g.acquired >> g.releasing >> g.busy) {
        grants.push_back(g);
      } else {
        ADD_FAILURE() << "process " << i << " printed: " << l;
      }
    }
  }
  std::filesystem::remove(marker);
  EXPECT_EQ(overlaps, 0) << "two processes were inside the guarded section at once";
  ASSERT_EQ(grants.size(), static_cast<std::size_t>(processes * rounds));

  std::sort(grants.begin(), grants.end(), [](const Grant& a, const Grant& b) { return a.fence < b.fence; });
  int switches = 0;
  for (std::size_t i = 1; i < grants.size(); ++i) {
    const Grant& before = grants[i - 1];
    const Grant& after = grants[i];
    ASSERT_GT(after.fence, before.fence) << "two grants share a fencing token";
    // Each holder's window, from its grant coming back to its release being sent, lies inside its real hold
    // on the server; no two windows may overlap, and they come in fence order.
    ASSERT_LE(before.releasing, after.acquired)
        << "fences " << before.fence << " (process " << before.process << ") and " << after.fence << " (process "
        << after.process << ") were held at the same time";
    if (after.process != before.process) ++switches;
  }
  // The processes really contended: each was refused while another held the key, and the key changed hands
  // between processes most of the time (a holder pauses 2 ms after its release, while the others poll every
  // 2 ms; a quarter of the grants is a generous floor against a loaded VM).
  std::map<int, long> busy_by_process;
  for (const Grant& g : grants) busy_by_process[g.process] += g.busy;
  for (int i = 0; i < processes; ++i) EXPECT_GT(busy_by_process[i], 0) << "process " << i << " never waited";
  EXPECT_GE(switches, processes * rounds / 4) << "grants did not interleave across processes";
}

TEST_P(Conformance, AKilledHoldersKeyGoesToAWaitingProcessOnceItsTtlHasPassed) {
  constexpr long ttl_ms = 1500;
  Probe holder({"hold", url_, key(), std::to_string(ttl_ms)});
  std::istringstream granted(holder.line());
  std::string word;
  long long holder_fence = 0, sent = 0, got = 0;
  ASSERT_TRUE(granted >> word >> holder_fence >> sent >> got && word == "granted") << granted.str();
  holder.kill();  // a crash: no release is ever sent
  EXPECT_EQ(holder.wait(), 128 + SIGKILL);

  Probe waiter({"wait", url_, key(), "30000", "10000"});
  std::istringstream taken(waiter.rest());
  long long waiter_fence = 0, taken_at = 0;
  ASSERT_TRUE(taken >> word >> waiter_fence >> taken_at && word == "granted") << taken.str();
  EXPECT_EQ(waiter.wait(), 0);
  EXPECT_GT(waiter_fence, holder_fence);
  // The server granted the first lease after `sent`, so it lasted until at least sent + TTL by the host's clock,
  // which the database server shares: no one may have the key earlier.
  EXPECT_GE(taken_at - sent, ttl_ms * 1'000'000LL) << "the key was taken before the killed holder's TTL had passed";
  // And the waiter gets it soon after the TTL: the lease ends at most at got + TTL; the waiter retries at the
  // holder's reported time left, plus 1 s of slack for a process start, backoff and a loaded VM.
  EXPECT_LE(taken_at - got, ttl_ms * 1'000'000LL + 1'000'000'000LL) << "the waiter was not woken by the expiry";
}

}  // namespace
}  // namespace dltest
