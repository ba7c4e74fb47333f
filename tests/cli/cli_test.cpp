// The `distrlock` tool, run as real processes: exit codes, output, signals and the lock table. Each test runs
// against the embedded default (no --db: the SQLite file under $XDG_STATE_HOME) and against every server
// backend in dltest::backend_names(). The "sqlite" entry there is left out because the embedded default is
// that same backend, reached the way a user reaches it.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "relay.hpp"
#include "support.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr int exit_usage = 64;
constexpr int exit_unavailable = 69;
constexpr int exit_busy = 75;
constexpr int exit_not_held = 76;
constexpr int exit_lease_lost = 77;
constexpr int exit_config = 78;

struct Result {
  int exit_code = -1;  // 128+N when the tool itself died of signal N
  std::string out;
  std::string err;
  std::chrono::milliseconds took{0};
};

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

/// Changes to the test's environment for one process: set to a value, or unset (nullopt).
using EnvChanges = std::vector<std::pair<std::string, std::optional<std::string>>>;

/// One child process with stdout and stderr captured in files and stdin from /dev/null. Killed and reaped on
/// destruction if it is still running, so a failing test leaves nothing behind.
class Process {
 public:
  /// `own_group`: the process leads a new process group (as a shell job or a systemd service does).
  Process(const std::vector<std::string>& argv, const EnvChanges& changes, const fs::path& dir,
          bool own_group = false) {
    static int counter = 0;
    const std::string n = std::to_string(counter++);
    out_ = dir / ("stdout." + n);
    err_ = dir / ("stderr." + n);

    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) {
      const std::string entry = *e;
      bool changed = false;
      for (const auto& [name, value] : changes) changed = changed || entry.starts_with(name + "=");
      if (!changed) env.push_back(entry);
    }
    for (std::size_t i = 0; i < changes.size(); ++i) {
      const auto& [name, value] = changes[i];
      bool overridden = false;  // a later change of the same variable wins
      for (std::size_t j = i + 1; j < changes.size(); ++j) overridden = overridden || changes[j].first == name;
      if (value && !overridden) env.push_back(name + "=" + *value);
    }
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = argv;
    std::vector<char*> argp;
    for (std::string& a : args) argp.push_back(a.data());
    argp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigset_t defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGPIPE}) sigaddset(&defaults, s);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setpgroup(&attr, 0);
    posix_spawnattr_setflags(&attr, static_cast<short>(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF |
                                                       (own_group ? POSIX_SPAWN_SETPGROUP : 0)));
    started_ = Clock::now();
    const int rc = posix_spawn(&pid_, argp[0], &actions, &attr, argp.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
      ADD_FAILURE() << "posix_spawn " << argv[0] << ": " << std::strerror(rc);
      pid_ = -1;
    }
  }
  Process(Process&& other) noexcept
      : pid_(std::exchange(other.pid_, -1)), started_(other.started_), out_(other.out_), err_(other.err_) {}
  Process& operator=(Process&&) = delete;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  ~Process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  pid_t pid() const { return pid_; }
  void signal(int signo) const { ::kill(pid_, signo); }

  /// Waits for the exit; after `timeout` the process is killed and the test fails.
  Result wait(std::chrono::milliseconds timeout = 60s) {
    Result r;
    if (pid_ <= 0) return r;
    int status = 0;
    while (true) {
      const pid_t done = ::waitpid(pid_, &status, WNOHANG);
      if (done == pid_) break;
      if (Clock::now() - started_ > timeout) {
        ADD_FAILURE() << "process " << pid_ << " still running after " << timeout.count() << " ms; killed";
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        break;
      }
      std::this_thread::sleep_for(5ms);
    }
    pid_ = -1;
    r.took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = read_file(out_);
    r.err = read_file(err_);
    return r;
  }

 private:
  pid_t pid_ = -1;
  Clock::time_point started_;
  fs::path out_;
  fs::path err_;
};

::testing::AssertionResult IsOneLine(const std::string& text) {
  if (text.empty()) return ::testing::AssertionFailure() << "nothing was printed";
  if (text.back() != '\n' || text.find('\n') != text.size() - 1)
    return ::testing::AssertionFailure() << "not exactly one line: \"" << text << "\"";
  return ::testing::AssertionSuccess();
}

std::string describe(const Result& r) {
  return "exit " + std::to_string(r.exit_code) + ", stdout: \"" + r.out + "\", stderr: \"" + r.err + "\"";
}

/// Waits until `path` exists.
bool wait_for_file(const fs::path& path, std::chrono::milliseconds timeout = 20s) {
  const auto give_up = Clock::now() + timeout;
  while (!fs::exists(path)) {
    if (Clock::now() > give_up) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

/// Waits until process `pid` blocks signal `signo` (its main thread's SigBlk in /proc): `distrlock run` does so
/// before it opens the database, so from then on the signal is the tool's to handle, not a default death.
bool wait_until_blocked(pid_t pid, int signo, std::chrono::milliseconds timeout = 20s) {
  const auto give_up = Clock::now() + timeout;
  while (Clock::now() < give_up) {
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);) {
      if (line.starts_with("SigBlk:") && ((std::stoull(line.substr(7), nullptr, 16) >> (signo - 1)) & 1U) != 0)
        return true;
    }
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

/// "default" (no --db) and every server backend; see the comment at the top.
std::vector<std::string> cli_backends() {
  std::vector<std::string> names = {"default"};
  for (const std::string& b : dltest::backend_names())
    if (b != "sqlite") names.push_back(b);
  return names;
}

/// A scratch directory, the environment and --db arguments for one database, and helpers to run the tool.
class ToolFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/distrlock-cli-test.XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    key_ = dltest::unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
    use_database("default");
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }

  /// "default": no --db, DISTRLOCK_DB unset, $XDG_STATE_HOME and $HOME in the scratch directory.
  /// Otherwise a backend of dltest::backend_names(), passed as --db URL.
  void use_database(const std::string& backend) {
    if (backend == "default") {
      url_.clear();
      db_.clear();
      env_ = {{"DISTRLOCK_DB", std::nullopt},
              {"XDG_STATE_HOME", (dir_ / "state").string()},
              {"HOME", (dir_ / "home").string()}};
    } else {
      url_ = dltest::server_url(dltest::backend(backend));
      ASSERT_FALSE(url_.empty());
      env_ = {{"DISTRLOCK_DB", std::nullopt}};
      db_ = {"--db", url_};
    }
  }

  /// distrlock [--db URL] ARGS...
  std::vector<std::string> command(const std::vector<std::string>& args) const {
    std::vector<std::string> argv = {DISTRLOCK_CLI};
    argv.insert(argv.end(), db_.begin(), db_.end());
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  Process start(const std::vector<std::string>& args) const { return Process(command(args), env_, dir_); }
  /// The same, with $DL (the tool) and the database in the environment (DISTRLOCK_DB for server backends), so
  /// that the command can call the tool on the same database; `own_group` as in Process.
  Process start_with_tool_env(const std::vector<std::string>& args, bool own_group = false) const {
    EnvChanges env = env_;
    env.emplace_back("DL", DISTRLOCK_CLI);
    if (!url_.empty()) env.emplace_back("DISTRLOCK_DB", url_);
    return Process(command(args), env, dir_, own_group);
  }
  Result run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 60s) const {
    return start(args).wait(timeout);
  }
  /// distrlock ARGS... with no --db added.
  Result run_without_db(const std::vector<std::string>& args, const EnvChanges& extra_env = {}) const {
    std::vector<std::string> argv = {DISTRLOCK_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    EnvChanges env = env_;
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    return Process(argv, env, dir_).wait();
  }
  /// sh -c SCRIPT ARGS... with $DL set to the tool and the database chosen through the environment only
  /// (DISTRLOCK_DB for server backends), as a cron job or a script would. In SCRIPT, ARGS are $0, $1, ...
  Result shell(const std::string& script, const std::vector<std::string>& args) const {
    EnvChanges env = env_;
    env.emplace_back("DL", DISTRLOCK_CLI);
    if (!url_.empty()) env.emplace_back("DISTRLOCK_DB", url_);
    std::vector<std::string> argv = {"/bin/sh", "-c", script};
    argv.insert(argv.end(), args.begin(), args.end());
    return Process(argv, env, dir_).wait();
  }

  /// `status --json` of `keys` (every key when empty), parsed; fails the test if it does not parse.
  Json status(const std::vector<std::string>& keys = {}, const std::vector<std::string>& global = {}) const {
    std::vector<std::string> args = global;
    args.emplace_back("status");
    args.emplace_back("--json");
    if (!keys.empty()) args.emplace_back("--");
    args.insert(args.end(), keys.begin(), keys.end());
    const Result r = run(args);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    try {
      return Json::parse(r.out);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "status --json does not parse: " << e.what() << "\n" << r.out;
      return Json::array();
    }
  }
  /// The token of a fresh lease on `key`.
  std::string acquire(const std::string& key, const std::string& ttl = "30s",
                      const std::vector<std::string>& global = {}) const {
    std::vector<std::string> args = global;
    args.insert(args.end(), {"acquire", "--key", key, "--ttl", ttl});
    const Result r = run(args);
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    return r.out.empty() ? std::string() : r.out.substr(0, r.out.size() - 1);
  }
  fs::path file(const std::string& name) const { return dir_ / name; }

  fs::path dir_;
  std::string url_;  // empty for the embedded default
  std::vector<std::string> db_;
  EnvChanges env_;
  std::string key_;
};

/// Parametrised by database: "default" or a backend name (see cli_backends()).
class Cli : public ToolFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    ToolFixture::SetUp();
    use_database(GetParam());
  }
};

// ---- run ----------------------------------------------------------------------------------------------

TEST_P(Cli, OfTwoConcurrentRunsOnOneKeyOneRunsAndTheOtherExits75NamingTheHolder) {
  Process holder = start({"run", "--key", key_, "--owner", "holder-of-the-key", "--", "sh", "-c",
                          "echo > \"$0\"; sleep 30", file("holder-started")});
  ASSERT_TRUE(wait_for_file(file("holder-started")));

  const Result second = run({"run", "--key", key_, "--", "touch", file("second-ran")});
  EXPECT_EQ(second.exit_code, exit_busy) << describe(second);
  EXPECT_TRUE(IsOneLine(second.err));
  EXPECT_NE(second.err.find(key_), std::string::npos) << second.err;
  EXPECT_NE(second.err.find("holder-of-the-key"), std::string::npos) << second.err;
  EXPECT_NE(second.err.find("for another"), std::string::npos) << "how long the lease has left: " << second.err;
  EXPECT_FALSE(fs::exists(file("second-ran")));

  holder.signal(SIGTERM);
  EXPECT_EQ(holder.wait().exit_code, 128 + SIGTERM);
}

TEST_P(Cli, RunWithWaitStartsTheCommandOnceTheHolderIsDone) {
  Process holder = start({"run", "--key", key_, "--", "sh", "-c", "echo > \"$0\"; sleep 1; echo > \"$1\"",
                          file("holder-started"), file("holder-done")});
  ASSERT_TRUE(wait_for_file(file("holder-started")));

  const Result waiter = run({"run", "--key", key_, "--wait", "10s", "--", "sh", "-c",
                             "test -e \"$0\" && echo ran-after-the-holder", file("holder-done")});
  EXPECT_EQ(waiter.exit_code, 0) << describe(waiter);
  EXPECT_EQ(waiter.out, "ran-after-the-holder\n");
  EXPECT_EQ(holder.wait().exit_code, 0);
}

TEST_P(Cli, RunExitsWithTheExitStatusOfTheCommand) {
  const Result r = run({"run", "--key", key_, "--", "sh", "-c", "exit 3"});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_EQ(r.err, "");
}

TEST_P(Cli, RunExits128PlusNWhenTheCommandDiesOfSignalN) {
  const Result r = run({"run", "--key", key_, "--", "sh", "-c", "kill -KILL $$"});
  EXPECT_EQ(r.exit_code, 128 + SIGKILL) << describe(r);
}

TEST_P(Cli, SigtermSentToRunReachesTheCommand) {
  Process tool = start({"run", "--key", key_, "--", "sh", "-c",
                        "trap 'echo TERM > \"$0\"; exit 42' TERM; echo > \"$1\"; while :; do sleep 0.05; done",
                        file("got"), file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  tool.signal(SIGTERM);
  const Result r = tool.wait();
  EXPECT_EQ(r.exit_code, 42) << describe(r);
  EXPECT_EQ(read_file(file("got")), "TERM\n");
  EXPECT_EQ(status({key_}).at(0).at("state"), "free") << "released after the command exited";
}

TEST_P(Cli, SigintSentToRunReachesTheCommand) {
  Process tool = start({"run", "--key", key_, "--", "sh", "-c",
                        "trap 'echo INT > \"$0\"; exit 43' INT; echo > \"$1\"; while :; do sleep 0.05; done",
                        file("got"), file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  tool.signal(SIGINT);
  const Result r = tool.wait();
  EXPECT_EQ(r.exit_code, 43) << describe(r);
  EXPECT_EQ(read_file(file("got")), "INT\n");
}

TEST_P(Cli, HupQuitUsr1AndUsr2SentToRunEachReachTheCommandOnce) {
  Process tool = start({"run", "--key", key_, "--", "sh", "-c",
                        R"(f="$0"; for s in HUP QUIT USR1 USR2; do trap "echo $s >> \"\$f\"" $s; done; )"
                        R"(trap 'exit 0' TERM; echo > "$1"; while :; do sleep 0.05; done)",
                        file("got"), file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  for (const int s : {SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2}) {
    tool.signal(s);
    std::this_thread::sleep_for(200ms);  // one at a time, so the order in the file is the order sent
  }
  tool.signal(SIGTERM);
  const Result r = tool.wait();
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(read_file(file("got")), "HUP\nQUIT\nUSR1\nUSR2\n") << "each signal forwarded exactly once";
}

TEST_P(Cli, TheCommandIsToldToStopWhenTheToolIsKilled) {
  // Nothing extends the lease once the tool is gone: the command must not run on unprotected.
  Process tool = start({"run", "--key", key_, "--", "sh", "-c",
                        "trap 'echo TERM > \"$0\"; exit 0' TERM; echo > \"$1\"; while :; do sleep 0.05; done",
                        file("got"), file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  tool.signal(SIGKILL);
  tool.wait();
  EXPECT_TRUE(wait_for_file(file("got"), 5s)) << "the command never heard that the tool died";
  EXPECT_EQ(read_file(file("got")), "TERM\n");
}

TEST_P(Cli, RunHoldsTheKeyPastItsTtlByExtendingIt) {
  Process tool = start({"run", "--key", key_, "--ttl", "1s", "--", "sh", "-c", "echo > \"$0\"; sleep 2.5",
                        file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  std::this_thread::sleep_for(1500ms);  // past the 1 s TTL: only extensions keep the key
  const Result busy = run({"acquire", "--key", key_, "--ttl", "30s"});
  EXPECT_EQ(busy.exit_code, exit_busy) << describe(busy);
  const Result r = tool.wait();
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_EQ(status({key_}).at(0).at("state"), "free") << "released after the command exited";
}

// The command makes its own lease lost: it releases the key with its token behind the tool's back, so the
// heartbeat's next extension (every ttl/3) finds it gone. The same as another process stealing the row.
const std::string lose_the_lease = R"("$DL" release --key "$DISTRLOCK_KEY" --token "$DISTRLOCK_TOKEN"; )";

TEST_P(Cli, LosingTheLeaseSignalsTheCommandAndExits77) {
  const Result r = start_with_tool_env({"run", "--key", key_, "--ttl", "1s", "--", "sh", "-c",
                                        "trap 'echo TERM > \"$0\"; exit 0' TERM; " + lose_the_lease +
                                            "exec 2>/dev/null; while :; do sleep 0.05; done",
                                        file("got")})
                       .wait(30s);
  EXPECT_EQ(r.exit_code, exit_lease_lost) << describe(r);
  EXPECT_EQ(read_file(file("got")), "TERM\n");
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("lost the lease"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(key_), std::string::npos) << r.err;
  // The command's own `distrlock release` (a second tool process: up to 1 s under TSan), then the next extension
  // finds the key gone (at most the 1 s TTL: the watchdog fires by its deadline anyway), then SIGTERM and exit.
  // Slack: 1 s of process start-up and scheduling on a loaded VM.
  EXPECT_LT(r.took, 1s + 1s + 1s);
}

TEST_P(Cli, ACommandThatIgnoresSigtermAfterLeaseLossIsKilledAfterTheGrace) {
  const Result r = start_with_tool_env({"run", "--key", key_, "--ttl", "1s", "--kill-after", "150ms", "--", "sh", "-c",
                                        "trap '' TERM; " + lose_the_lease + "while :; do sleep 0.05; done"})
                       .wait(30s);
  EXPECT_EQ(r.exit_code, exit_lease_lost) << describe(r);
  EXPECT_NE(r.err.find("SIGKILL"), std::string::npos) << r.err;
  // As above, plus the 150 ms --kill-after.
  EXPECT_LT(r.took, 1s + 1s + 150ms + 1s);
}

TEST_P(Cli, ByDefaultSigkillFollowsHalfTheSafetyMarginAfterSigtermSoBeforeTheLeaseExpires) {
  // --ttl 1s: the safety margin is ttl/5 = 200ms, so the default --kill-after is 100ms.
  const Result r = start_with_tool_env({"run", "--key", key_, "--ttl", "1s", "--", "sh", "-c",
                                        "trap '' TERM; " + lose_the_lease + "while :; do sleep 0.05; done"})
                       .wait(30s);
  EXPECT_EQ(r.exit_code, exit_lease_lost) << describe(r);
  EXPECT_NE(r.err.find("then SIGKILL after 100ms"), std::string::npos) << r.err;
}

/// True when no process `pid` exists any more (not even a zombie).
bool gone(const fs::path& pid_file) {
  const std::string text = read_file(pid_file);
  if (text.empty()) return false;
  return ::kill(std::stoi(text), 0) != 0 && errno == ESRCH;
}

TEST_P(Cli, LosingTheLeaseStopsTheCommandsGrandchildrenAndNoneOfThemOutlivesTheTool) {
  // A shell script that starts another: the grandchild would write "late" after the lease is gone.
  const Result r = start_with_tool_env({"run", "--key", key_, "--ttl", "1s", "--", "sh", "-c",
                                        "sh -c 'echo $$ > \"$1\"; sleep 3; echo late > \"$0\"' \"$0\" \"$1\" & "
                                        "while [ ! -s \"$1\" ]; do sleep 0.01; done; " +
                                            lose_the_lease + "wait",
                                        file("late"), file("grandchild.pid")})
                       .wait(30s);
  EXPECT_EQ(r.exit_code, exit_lease_lost) << describe(r);
  EXPECT_TRUE(gone(file("grandchild.pid"))) << "the grandchild outlived the tool";
  EXPECT_FALSE(fs::exists(file("late")));
}

TEST_P(Cli, ADaemonizingGrandchildThatIgnoresSigtermIsKilledBeforeTheToolExits77) {
  // setsid leaves the command's process group (and session); the tool, as subreaper, still finds it.
  const Result r = start_with_tool_env(
                       {"run", "--key", key_, "--ttl", "1s", "--", "sh", "-c",
                        "setsid sh -c 'trap \"\" TERM; echo $$ > \"$1\"; sleep 3; echo late > \"$0\"' \"$0\" \"$1\" & "
                        "while [ ! -s \"$1\" ]; do sleep 0.01; done; " +
                            lose_the_lease + "while :; do sleep 0.05; done",
                        file("late"), file("grandchild.pid")})
                       .wait(30s);
  EXPECT_EQ(r.exit_code, exit_lease_lost) << describe(r);
  EXPECT_TRUE(gone(file("grandchild.pid"))) << "the daemonized grandchild outlived the tool";
  EXPECT_FALSE(fs::exists(file("late")));
}

TEST_P(Cli, ProcessesTheCommandLeftRunningAreStoppedBeforeTheKeyIsReleased) {
  const Result r = run({"run", "--key", key_, "--", "sh", "-c", "sleep 30 & echo $! > \"$0\"", file("left.pid")});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(gone(file("left.pid"))) << "a background process of the command outlived the tool";
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("left 1 process"), std::string::npos) << r.err;
  EXPECT_EQ(status({key_}).at(0).at("state"), "free");
}

TEST_P(Cli, ASigtermToTheToolsWholeProcessGroupReachesTheCommandOnce) {
  // As `kill -TERM -PGID`, an interactive `kill %1` or systemd's KillMode=mixed send it.
  Process tool = start_with_tool_env({"run", "--key", key_, "--", "sh", "-c",
                                      "trap 'echo TERM >> \"$0\"' TERM; echo > \"$1\"; "
                                      "while [ ! -e \"$2\" ]; do sleep 0.05; done; exit 42",
                                      file("got"), file("started"), file("done")},
                                     /*own_group=*/true);
  ASSERT_TRUE(wait_for_file(file("started")));
  ASSERT_EQ(::kill(-tool.pid(), SIGTERM), 0);
  // A second delivery would come at once (the tool forwards as it reads the signal); 1 s of slack for a
  // loaded machine.
  std::this_thread::sleep_for(1s);
  std::ofstream(file("done")).put('\n');
  const Result r = tool.wait();
  EXPECT_EQ(r.exit_code, 42) << describe(r);
  EXPECT_EQ(read_file(file("got")), "TERM\n");
}

TEST_P(Cli, TheCommandSeesTheKeyTokenAndFencingTokenInItsEnvironment) {
  const std::string print = "printf '%s\\n%s\\n%s\\n' \"$DISTRLOCK_KEY\" \"$DISTRLOCK_TOKEN\" \"$DISTRLOCK_FENCE\"";
  const Result first = run({"run", "--key", key_, "--", "sh", "-c", print});
  const Result second = run({"run", "--key", key_, "--", "sh", "-c", print});
  ASSERT_EQ(first.exit_code, 0) << describe(first);
  ASSERT_EQ(second.exit_code, 0) << describe(second);
  std::istringstream a(first.out);
  std::istringstream b(second.out);
  std::string key1, token1, fence1, key2, token2, fence2;
  std::getline(a, key1), std::getline(a, token1), std::getline(a, fence1);
  std::getline(b, key2), std::getline(b, token2), std::getline(b, fence2);
  EXPECT_EQ(key1, key_);
  EXPECT_EQ(token1.size(), 36U) << token1;
  EXPECT_NE(token1, token2);
  EXPECT_GT(std::stoll(fence1), 0);
  EXPECT_GT(std::stoll(fence2), std::stoll(fence1));
  const Json st = status({key_});
  EXPECT_EQ(st.at(0).at("fence").get<long long>(), std::stoll(fence2));
}

TEST_P(Cli, ConflictExitCodeReplaces75WhenTheKeyIsBusy) {
  ASSERT_FALSE(acquire(key_).empty());
  const Result r = run({"run", "--key", key_, "--conflict-exit-code", "0", "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_FALSE(fs::exists(file("ran")));
}

TEST_P(Cli, RunWithWaitGivesUpWith75WhenTheHolderStays) {
  ASSERT_FALSE(acquire(key_).empty());
  const Result r = run({"run", "--key", key_, "--wait", "300ms", "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, exit_busy) << describe(r);
  EXPECT_NE(r.err.find("after waiting"), std::string::npos) << r.err;
  EXPECT_GE(r.took, 300ms);
  EXPECT_FALSE(fs::exists(file("ran")));
}

TEST_P(Cli, SigintWhileRunWaitsForTheKeyStopsTheWait) {
  ASSERT_FALSE(acquire(key_).empty());
  Process waiter = start({"run", "--key", key_, "--wait", "60s", "--", "touch", file("ran")});
  ASSERT_TRUE(wait_until_blocked(waiter.pid(), SIGINT));
  std::this_thread::sleep_for(100ms);  // into the wait
  waiter.signal(SIGINT);
  const Result r = waiter.wait(20s);
  EXPECT_EQ(r.exit_code, 128 + SIGINT) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_FALSE(fs::exists(file("ran")));
}

TEST_P(Cli, ACommandThatDoesNotExistExits127AndFreesTheKey) {
  const Result r = run({"run", "--key", key_, "--", "distrlock-test-no-such-command"});
  EXPECT_EQ(r.exit_code, 127) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_EQ(status({key_}).at(0).at("state"), "free");
}

TEST_P(Cli, RunPassesTheTtlAndTheLeasesExpiryToTheCommand) {
  const auto before = std::chrono::system_clock::now();
  const Result r = run({"run", "--key", key_, "--ttl", "20s", "--", "sh", "-c",
                        "echo \"$DISTRLOCK_TTL\"; echo \"$DISTRLOCK_EXPIRES_AT\""});
  const auto after = std::chrono::system_clock::now();
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  std::istringstream out(r.out);
  long long ttl = 0;
  long long expires_at = 0;
  out >> ttl >> expires_at;
  EXPECT_EQ(ttl, 20000);
  const auto ms = [](std::chrono::system_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count();
  };
  EXPECT_GE(expires_at, ms(before) + 20000) << r.out;
  EXPECT_LE(expires_at, ms(after) + 20000) << r.out;
}

TEST_P(Cli, QuietConflictPrintsNothingWhenBusyAndExitsWithTheConflictExitCode) {
  ASSERT_FALSE(acquire(key_).empty());
  const Result r = run({"run", "--key", key_, "-q", "-E", "3", "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, 3) << describe(r);
  EXPECT_EQ(r.err, "");
  EXPECT_FALSE(fs::exists(file("ran")));
  const Result a = run({"acquire", "--key", key_, "--quiet-conflict"});
  EXPECT_EQ(a.exit_code, exit_busy) << describe(a);
  EXPECT_EQ(a.err, "");
  EXPECT_EQ(a.out, "");
}

TEST_P(Cli, FlockStyleShortFlagsWork) {
  ASSERT_FALSE(acquire(key_).empty());
  const Result no_wait = run({"run", "--key", key_, "-n", "-E", "7", "-c", "touch ran"});
  EXPECT_EQ(no_wait.exit_code, 7) << describe(no_wait);
  const Result waited = run({"run", "--key", key_, "-w", "300ms", "-c", "touch ran"});
  EXPECT_EQ(waited.exit_code, exit_busy) << describe(waited);
  EXPECT_NE(waited.err.find("after waiting 300ms"), std::string::npos) << waited.err;
  EXPECT_FALSE(fs::exists(file("ran")));
  const Result shell = run({"run", "--key", key_ + "/free", "-c", "echo a; echo \"$DISTRLOCK_KEY\""});
  EXPECT_EQ(shell.exit_code, 0) << describe(shell);
  EXPECT_EQ(shell.out, "a\n" + key_ + "/free\n");
}

// ---- acquire, extend, release -----------------------------------------------------------------------

TEST_P(Cli, AcquireOwnerIsWhatOthersSee) {
  ASSERT_EQ(run({"acquire", "--key", key_, "--owner", "deploy-script@host3"}).exit_code, 0);
  EXPECT_EQ(status({key_}).at(0).at("owner"), "deploy-script@host3");
}

TEST_P(Cli, AcquireJsonPrintsABusyAnswerOnStdoutAndExits75) {
  ASSERT_EQ(run({"acquire", "--key", key_, "--owner", "the-holder"}).exit_code, 0);
  const Result r = run({"acquire", "--key", key_, "--json"});
  EXPECT_EQ(r.exit_code, exit_busy) << describe(r);
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j.at("key"), key_);
  EXPECT_EQ(j.at("state"), "busy");
  EXPECT_EQ(j.at("owner"), "the-holder");
  EXPECT_GT(j.at("expires_in_ms").get<long long>(), 0);
  EXPECT_TRUE(IsOneLine(r.err));
}

TEST_P(Cli, SigtermWhileAcquireWaitsExits128PlusNWithALineAndHoldsNothing) {
  ASSERT_FALSE(acquire(key_).empty());
  Process waiter = start({"acquire", "--key", key_, "--wait", "60s"});
  ASSERT_TRUE(wait_until_blocked(waiter.pid(), SIGTERM));
  std::this_thread::sleep_for(100ms);  // into the wait
  waiter.signal(SIGTERM);
  const Result r = waiter.wait(20s);
  EXPECT_EQ(r.exit_code, 128 + SIGTERM) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("interrupted by SIGTERM"), std::string::npos) << r.err;
  EXPECT_EQ(r.out, "");
}

TEST_P(Cli, Sigusr1WhileAcquireWaitsIsIgnored) {
  ASSERT_FALSE(acquire(key_).empty());
  Process waiter = start({"acquire", "--key", key_, "--wait", "1s"});
  ASSERT_TRUE(wait_until_blocked(waiter.pid(), SIGUSR1));
  waiter.signal(SIGUSR1);
  const Result r = waiter.wait(20s);
  EXPECT_EQ(r.exit_code, exit_busy) << "waited out its --wait: " << describe(r);
}

TEST_P(Cli, ExtendJsonPrintsTheNewTimeLeft) {
  const std::string token = acquire(key_, "5s");
  const Result r = run({"extend", "--key", key_, "--token", token, "--ttl", "60s", "--json"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j.at("key"), key_);
  EXPECT_GT(j.at("expires_in_ms").get<long long>(), 55000);
  EXPECT_LE(j.at("expires_in_ms").get<long long>(), 60000);
}

TEST_P(Cli, AcquireExtendAndReleaseWorkFromAShellScript) {
  const Result script = shell(
      "set -e\n"
      "token=$(\"$DL\" acquire --key \"$1\" --ttl 5s)\n"
      "\"$DL\" extend --key \"$1\" --token \"$token\" --ttl 60s\n"
      "\"$DL\" status --json \"$1\" > \"$0\"\n"
      "\"$DL\" release --key \"$1\" --token \"$token\"\n"
      "echo done\n",
      {file("held.json").string(), key_});
  ASSERT_EQ(script.exit_code, 0) << describe(script);
  EXPECT_EQ(script.out, "done\n");
  const Json held = Json::parse(read_file(file("held.json")));
  EXPECT_EQ(held.at(0).at("state"), "held");
  EXPECT_GT(held.at(0).at("expires_in_ms").get<long long>(), 5000) << "extended to 60 s";
  EXPECT_EQ(status({key_}).at(0).at("state"), "free");
}

TEST_P(Cli, ReleaseWithAWrongTokenExits76AndLeavesTheLeaseAlone) {
  const std::string token = acquire(key_);
  const Result r = run({"release", "--key", key_, "--token", "not-the-token"});
  EXPECT_EQ(r.exit_code, exit_not_held) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find(key_), std::string::npos) << r.err;
  EXPECT_EQ(status({key_}).at(0).at("state"), "held");
  EXPECT_EQ(run({"release", "--key", key_, "--token", token}).exit_code, 0);
}

TEST_P(Cli, ReleaseWithAnOldTokenExits76AfterTheKeyWasTakenOver) {
  const std::string old_token = acquire(key_, "200ms");
  std::this_thread::sleep_for(400ms);
  const std::string new_token = acquire(key_);
  ASSERT_NE(old_token, new_token);
  const Result r = run({"release", "--key", key_, "--token", old_token});
  EXPECT_EQ(r.exit_code, exit_not_held) << describe(r);
  EXPECT_EQ(status({key_}).at(0).at("state"), "held");
}

TEST_P(Cli, ReleaseTwiceExits76TheSecondTime) {
  const std::string token = acquire(key_);
  EXPECT_EQ(run({"release", "--key", key_, "--token", token}).exit_code, 0);
  const Result again = run({"release", "--key", key_, "--token", token});
  EXPECT_EQ(again.exit_code, exit_not_held) << describe(again);
}

TEST_P(Cli, ExtendWithATokenThatNoLongerHoldsTheKeyExits76) {
  const std::string token = acquire(key_);
  ASSERT_EQ(run({"release", "--key", key_, "--token", token}).exit_code, 0);
  const Result r = run({"extend", "--key", key_, "--token", token, "--ttl", "30s"});
  EXPECT_EQ(r.exit_code, exit_not_held) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
}

TEST_P(Cli, AcquireJsonPrintsKeyTokenFenceAndTimeLeft) {
  const Result r = run({"acquire", "--key", key_, "--ttl", "20s", "--json"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const Json j = Json::parse(r.out);
  EXPECT_EQ(j.at("key"), key_);
  EXPECT_EQ(j.at("token").get<std::string>().size(), 36U);
  EXPECT_GT(j.at("fence").get<long long>(), 0);
  EXPECT_GT(j.at("expires_in_ms").get<long long>(), 15000);
  EXPECT_LE(j.at("expires_in_ms").get<long long>(), 20000);
}

TEST_P(Cli, AcquireWithAStaticTokenReacquiresItsKeyAndOthersFindItBusy) {
  const Result first = run({"acquire", "--key", key_, "--token", "static-token", "--json"});
  const Result again = run({"acquire", "--key", key_, "--token", "static-token", "--json"});
  ASSERT_EQ(first.exit_code, 0) << describe(first);
  ASSERT_EQ(again.exit_code, 0) << describe(again);
  EXPECT_EQ(Json::parse(first.out).at("token"), "static-token");
  EXPECT_GT(Json::parse(again.out).at("fence").get<long long>(), Json::parse(first.out).at("fence").get<long long>());
  const Result other = run({"acquire", "--key", key_});
  EXPECT_EQ(other.exit_code, exit_busy) << describe(other);
  EXPECT_TRUE(IsOneLine(other.err));
}

// ---- status -------------------------------------------------------------------------------------------

TEST_P(Cli, StatusShowsAHeldLockWithItsOwner) {
  Process holder = start({"run", "--key", key_, "--owner", "nightly-report@host7", "--", "sh", "-c",
                          "echo > \"$0\"; sleep 30", file("started")});
  ASSERT_TRUE(wait_for_file(file("started")));
  const Result r = run({"status", key_});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("KEY"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(key_), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("held"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nightly-report@host7"), std::string::npos) << r.out;
  holder.signal(SIGTERM);
  holder.wait();
}

TEST_P(Cli, StatusJsonIsAnArrayWithKeyStateOwnerFenceAndTimeLeft) {
  const std::string free_key = key_ + "/never-locked";
  ASSERT_FALSE(acquire(key_).empty());
  const Json j = status({key_, free_key});
  ASSERT_TRUE(j.is_array());
  ASSERT_EQ(j.size(), 2U) << j.dump();
  EXPECT_EQ(j[0].at("key"), key_);
  EXPECT_EQ(j[0].at("state"), "held");
  EXPECT_TRUE(j[0].at("owner").is_string());
  EXPECT_FALSE(j[0].at("owner").get<std::string>().empty());
  EXPECT_GT(j[0].at("fence").get<long long>(), 0);
  EXPECT_GT(j[0].at("expires_in_ms").get<long long>(), 0);
  EXPECT_EQ(j[1].at("key"), free_key);
  EXPECT_EQ(j[1].at("state"), "free");
  EXPECT_EQ(j[1].at("fence").get<long long>(), 0);
  EXPECT_EQ(j[1].at("expires_in_ms").get<long long>(), 0);
}

TEST_P(Cli, StatusEscapesBinaryKeys) {
  const std::string key = key_ + "/\x01\xff\x1b[31m";
  ASSERT_FALSE(acquire(key).empty());
  const Result table = run({"status", key});
  EXPECT_EQ(table.exit_code, 0) << describe(table);
  EXPECT_NE(table.out.find("\\x01\\xff\\x1b[31m"), std::string::npos) << table.out;
  EXPECT_EQ(table.out.find('\x1b'), std::string::npos) << "no raw escape sequence reaches the terminal";
  const Json j = status({key});
  EXPECT_EQ(j.at(0).at("state"), "held");
  EXPECT_TRUE(j.at(0).contains("key_hex")) << j.dump();
}

TEST_P(Cli, StatusOnATableThatDoesNotExistExits78AndCreatesNothing) {
  const std::string table = dltest::unique_table();
  const Result r = run({"--table", table, "status"});
  EXPECT_EQ(r.exit_code, exit_config) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  EXPECT_EQ(run({"--table", table, "--no-migrate", "status"}).exit_code, exit_config) << "the table was created";
}

TEST_P(Cli, ATableInASchemaThatDoesNotExistExits78SayingSoForEveryCommand) {
  const std::string table = "no_such_schema_" + dltest::unique_table() + ".locks";
  const Result r = run({"--table", table, "run", "--key", key_, "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, exit_config) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("create the schema, or choose another --table"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("drop --no-migrate"), std::string::npos) << "advice for another error: " << r.err;
  EXPECT_FALSE(fs::exists(file("ran")));
  EXPECT_EQ(run({"--table", table, "status"}).exit_code, exit_config);
}

TEST_P(Cli, StatusHeldAndPrefixFilterTheKeys) {
  const std::string held = key_ + "/held";
  const std::string free = key_ + "/free";
  ASSERT_FALSE(acquire(held).empty());
  ASSERT_EQ(run({"release", "--key", free, "--token", acquire(free)}).exit_code, 0);
  const Result r = run({"status", "--json", "--held", "--prefix", key_ + "/"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  const Json only_held = Json::parse(r.out);
  ASSERT_EQ(only_held.size(), 1U) << r.out;
  EXPECT_EQ(only_held.at(0).at("key"), held);
  const Json both = Json::parse(run({"status", "--json", "--prefix", key_ + "/"}).out);
  EXPECT_EQ(both.size(), 2U) << both.dump();
}

TEST_P(Cli, PruneDeletesAFreeKeyAndTheKeyComesBackWithALargerFence) {
  const std::string table = dltest::unique_table();
  auto fence_of_a_run = [&] {
    const Result r = run({"--table", table, "run", "--key", key_, "--", "sh", "-c",
                          "printf '%s' \"$DISTRLOCK_FENCE\" > \"$0\"", file("fence")});
    EXPECT_EQ(r.exit_code, 0) << describe(r);
    return std::stoll(read_file(file("fence")));
  };
  const long long before = fence_of_a_run();
  const Result pruned = run({"--table", table, "prune", "--older-than", "0", "--json"});
  ASSERT_EQ(pruned.exit_code, 0) << describe(pruned);
  const Json j = Json::parse(pruned.out);
  EXPECT_EQ(j.at("deleted").get<long long>(), 1) << pruned.out;
  EXPECT_GE(j.at("fence_floor").get<long long>(), before) << pruned.out;
  const Json st = Json::parse(run({"--table", table, "status", "--json"}).out);
  EXPECT_TRUE(st.empty()) << st.dump();
  EXPECT_GT(fence_of_a_run(), before) << "a pruned key reissued a fencing token";
}

TEST_P(Cli, PruneKeepsHeldKeysAndKeysFreedMoreRecentlyThanItsAge) {
  const std::string table = dltest::unique_table();
  const Result held = run({"--table", table, "acquire", "--key", key_ + "/held", "--ttl", "1m"});
  ASSERT_EQ(held.exit_code, 0) << describe(held);
  ASSERT_EQ(run({"--table", table, "run", "--key", key_ + "/free", "--", "true"}).exit_code, 0);
  const Result r = run({"--table", table, "prune", "--older-than", "1h"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("deleted 0 rows"), std::string::npos) << r.out;
  EXPECT_EQ(Json::parse(run({"--table", table, "status", "--json"}).out).size(), 2U);
  const Json all = Json::parse(run({"--table", table, "prune", "--older-than", "0", "--json"}).out);
  EXPECT_EQ(all.at("deleted").get<long long>(), 1) << "the held key stays: " << all.dump();
}

TEST_P(Cli, PruneOnATableThatDoesNotExistExits78AndCreatesNothing) {
  const std::string table = dltest::unique_table();
  const Result r = run({"--table", table, "prune", "--older-than", "1h"});
  EXPECT_EQ(r.exit_code, exit_config) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_EQ(run({"--table", table, "--no-migrate", "status"}).exit_code, exit_config) << "the table was created";
}

TEST_P(Cli, PruneWithABadAgeExits64AndDeletesNothing) {
  const std::string table = dltest::unique_table();
  ASSERT_EQ(run({"--table", table, "run", "--key", key_, "--", "true"}).exit_code, 0);
  for (const char* bad : {"-1s", "soon", ""}) {
    const Result r = run({"--table", table, "prune", "--older-than", bad});
    EXPECT_EQ(r.exit_code, exit_usage) << bad << ": " << describe(r);
    EXPECT_TRUE(IsOneLine(r.err)) << r.err;
    EXPECT_NE(r.err.find("--older-than"), std::string::npos) << r.err;
  }
  EXPECT_EQ(Json::parse(run({"--table", table, "status", "--json"}).out).size(), 1U);
}

// ---- bad input ----------------------------------------------------------------------------------------

struct BadInput {
  std::string name;
  std::function<std::vector<std::string>(const std::string& key, const std::string& table)> args;
  std::string problem;  // a piece of the one-line message
  bool replaces_db = false;
};

std::vector<BadInput> make_bad_inputs() {
  auto run_with = [](std::vector<std::string> extra) {
    return [extra](const std::string& key, const std::string& table) {
      std::vector<std::string> a = {"--table", table, "run", "--key", key};
      a.insert(a.end(), extra.begin(), extra.end());
      return a;
    };
  };
  return {
      {"EmptyKey",
       [](const std::string&, const std::string& table) {
         return std::vector<std::string>{"--table", table, "run", "--key", "", "--", "true"};
       },
       "key is empty"},
      {"KeyOf256Bytes",
       [](const std::string&, const std::string& table) {
         return std::vector<std::string>{"--table", table, "run", "--key", std::string(256, 'k'), "--", "true"};
       },
       "256 bytes"},
      {"TtlZero", run_with({"--ttl", "0", "--", "true"}), "--ttl \"0\" must be greater than 0"},
      {"TtlAbc", run_with({"--ttl", "abc", "--", "true"}), "--ttl \"abc\" is not a duration"},
      {"TtlNegative", run_with({"--ttl", "-5s", "--", "true"}), "--ttl \"-5s\" is negative"},
      {"UnknownCommand",
       [](const std::string& key, const std::string& table) {
         return std::vector<std::string>{"--table", table, "frobnicate", "--key", key};
       },
       "unknown command \"frobnicate\""},
      {"MissingSeparator", run_with({"true"}), "missing \"--\""},
      {"MissingCommand", run_with({"--"}), "missing the command"},
      {"UnknownUrlScheme",
       [](const std::string& key, const std::string& table) {
         return std::vector<std::string>{"--db", "redis-ish://u:pw@host/0", "--table", table, "run", "--key", key, "--",
                                         "true"};
       },
       "unknown database URL scheme", true},
      {"TtlBelowTheMinimum", run_with({"--ttl", "50ms", "--", "true"}), "below the minimum of 100ms"},
      {"ExtendEveryNotBelowTheTtlLessItsMargin", run_with({"--ttl", "1s", "--extend-every", "1s", "--", "true"}),
       "--extend-every 1.0s is not shorter than --ttl"},
      {"KillAfterNotBelowTheSafetyMargin", run_with({"--ttl", "10s", "--kill-after", "2s", "--", "true"}),
       "--kill-after 2.0s is not shorter than the safety margin"},
      {"ShellCommandAndSeparatorTogether", run_with({"-c", "true", "--", "true"}), "both -c and a command"},
      {"NoWaitAndWaitTogether", run_with({"-n", "--wait", "1s", "--", "true"}), "excludes"},
      {"ExtendWithoutTtl",
       [](const std::string& key, const std::string& table) {
         return std::vector<std::string>{"--table", table, "extend", "--key", key, "--token", "t"};
       },
       "--ttl is required"},
      {"AcquireWithAnEmptyToken",
       [](const std::string& key, const std::string& table) {
         return std::vector<std::string>{"--table", table, "acquire", "--key", key, "--token", ""};
       },
       "the token is empty"},
      {"EmptyDb",
       [](const std::string& key, const std::string& table) {
         return std::vector<std::string>{"--db", "", "--table", table, "run", "--key", key, "--", "true"};
       },
       "--db is empty", true},
      {"TableNameWithAQuote",
       [](const std::string& key, const std::string&) {
         return std::vector<std::string>{"--table", "locks\"; DROP TABLE x; --", "run", "--key", key, "--", "true"};
       },
       "table name"},
  };
}

const std::vector<BadInput>& bad_inputs() {
  static const std::vector<BadInput> all = make_bad_inputs();
  return all;
}

/// Parametrised by "database:case", case an index into bad_inputs().
class CliBadInput : public ToolFixture, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    ToolFixture::SetUp();
    use_database(GetParam().substr(0, GetParam().find(':')));
  }
  const BadInput& bad() const {
    return bad_inputs().at(static_cast<std::size_t>(std::stoi(GetParam().substr(GetParam().find(':') + 1))));
  }
};

TEST_P(CliBadInput, Exits64WithOneLineNamingTheProblemAndChangesNothing) {
  const BadInput& bad = this->bad();
  // A table with one held lease, to compare before and after.
  const std::string table = dltest::unique_table();
  ASSERT_FALSE(acquire(key_, "60s", {"--table", table}).empty());
  const Json before = status({}, {"--table", table});

  const std::string new_key = key_ + "/new";
  std::vector<std::string> args = bad.args(new_key, table);
  const Result r = bad.replaces_db ? run_without_db(args) : run(args);
  EXPECT_EQ(r.exit_code, exit_usage) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find(bad.problem), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("pw@"), std::string::npos) << "password masked: " << r.err;

  const Json after = status({}, {"--table", table});
  ASSERT_EQ(after.size(), before.size()) << after.dump();
  for (std::size_t i = 0; i < before.size(); ++i) {
    for (const char* field : {"key", "state", "owner", "fence"})
      EXPECT_EQ(after[i].at(field), before[i].at(field)) << field << " of " << before[i].dump();
  }
}

std::vector<std::string> bad_input_params() {
  std::vector<std::string> out;
  for (const std::string& b : cli_backends())
    for (std::size_t i = 0; i < bad_inputs().size(); ++i) out.push_back(b + ":" + std::to_string(i));
  return out;
}

// ---- tables, databases, connections -------------------------------------------------------------------

TEST_P(Cli, TenProcessesStartingAtOnceCreateTheTableRaceSafely) {
  const std::string table = dltest::unique_table();
  std::vector<Process> tools;
  for (int i = 0; i < 10; ++i)
    tools.push_back(start({"--table", table, "run", "--key", key_ + "/" + std::to_string(i), "--", "true"}));
  for (Process& p : tools) {
    const Result r = p.wait();
    EXPECT_EQ(r.exit_code, 0) << describe(r);
  }
  const Json all = status({}, {"--table", table});
  EXPECT_EQ(all.size(), 10U) << all.dump();
}

TEST_P(Cli, NoMigrateOnAMissingTableExits78AndCreatesNothing) {
  const std::string table = dltest::unique_table();
  const Result r = run({"--table", table, "--no-migrate", "run", "--key", key_, "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, exit_config) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(file("ran")));
  const Result again = run({"--table", table, "--no-migrate", "status"});
  EXPECT_EQ(again.exit_code, exit_config) << describe(again);
}

TEST_P(Cli, MigrateUpCreatesTheTableAndDownDropsIt) {
  const std::string table = dltest::unique_table();
  const Result up = run({"--table", table, "migrate"});
  EXPECT_EQ(up.exit_code, 0) << describe(up);
  EXPECT_EQ(run({"--table", table, "--no-migrate", "status"}).exit_code, 0);
  const Result down = run({"--table", table, "migrate", "down"});
  EXPECT_EQ(down.exit_code, 0) << describe(down);
  EXPECT_EQ(run({"--table", table, "--no-migrate", "status"}).exit_code, exit_config);
}

TEST_P(Cli, HelpExitsZeroAndListsTheCommands) {
  const Result r = run({"--help"});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  for (const char* c : {"run", "acquire", "extend", "release", "status", "migrate"})
    EXPECT_NE(r.out.find(c), std::string::npos) << c;
}

// ---- not per backend ----------------------------------------------------------------------------------

using CliAlone = ToolFixture;

TEST_F(CliAlone, AnUnreachablePostgresExits69WithinTheConnectTimeoutAndMasksThePassword) {
  const Result r = run_without_db(
      {"--db", "postgresql://u:secret@127.0.0.1:1/db", "run", "--key", key_, "--", "touch", file("ran")});
  EXPECT_EQ(r.exit_code, exit_unavailable) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_EQ(r.err.find("secret"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("postgresql://u:***@127.0.0.1:1/db"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(key_), std::string::npos) << r.err;
  // A refused port fails every connect at once; the pool retries with backoff until the call's deadline (the
  // default --timeout, 5 s). Slack: 1.5 s of process start-up and scheduling.
  EXPECT_LT(r.took, 5s + 1500ms) << "the operation timeout is 5 s";
  EXPECT_FALSE(fs::exists(file("ran")));
}

TEST_F(CliAlone, PasswordsAreMaskedEvenWithASlashInThemOrTwoInTheQueryString) {
  for (const std::string url : {"postgresql://u:pa/ss@127.0.0.1:1/db", "postgresql://u@127.0.0.1:1/db?sslpassword=x1&password=s3cr3t"}) {
    // One line from the library's error (after opening), one from the tool's own check (before opening).
    for (const std::vector<std::string>& args : {std::vector<std::string>{"--db", url, "--timeout", "200ms", "status"},
                                                 std::vector<std::string>{"--db", url, "--table", "1bad", "status"}}) {
      const Result r = run_without_db(args);
      EXPECT_NE(r.exit_code, 0) << describe(r);
      EXPECT_NE(r.err.find("127.0.0.1:1/db"), std::string::npos) << "the line names the database: " << r.err;
      EXPECT_EQ(r.err.find("pa/ss"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("ss@"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("s3cr3t"), std::string::npos) << r.err;
      EXPECT_EQ(r.err.find("x1"), std::string::npos) << r.err;
    }
  }
}

TEST_F(CliAlone, TheDefaultDatabaseIsCreatedUnderXdgStateHome) {
  const fs::path state = dir_ / "not" / "there" / "yet";
  const Result r = run_without_db({"run", "--key", key_, "--", "true"}, {{"XDG_STATE_HOME", state.string()}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(fs::exists(state / "distrlock" / "locks.db"));
}

TEST_F(CliAlone, WithoutXdgStateHomeTheDefaultDatabaseIsUnderHome) {
  const Result r = run_without_db({"run", "--key", key_, "--", "true"}, {{"XDG_STATE_HOME", std::nullopt}});
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(fs::exists(dir_ / "home" / ".local" / "state" / "distrlock" / "locks.db"));
}

TEST_F(CliAlone, DistrlockDbChoosesTheDatabaseAndDbOverridesIt) {
  const fs::path from_env = dir_ / "from-env.db";
  const fs::path from_flag = dir_ / "from-flag.db";
  const EnvChanges env = {{"DISTRLOCK_DB", "sqlite:" + from_env.string()}};
  EXPECT_EQ(run_without_db({"run", "--key", key_, "--", "true"}, env).exit_code, 0);
  EXPECT_TRUE(fs::exists(from_env));
  EXPECT_EQ(run_without_db({"--db", "sqlite:" + from_flag.string(), "run", "--key", key_, "--", "true"}, env).exit_code,
            0);
  EXPECT_TRUE(fs::exists(from_flag));
  EXPECT_FALSE(fs::exists(dir_ / "state" / "distrlock" / "locks.db")) << "the default was not used";
}

TEST_F(CliAlone, AnEmptyDistrlockDbExits64InsteadOfUsingTheDefault) {
  // Cron's minimal environment: `--db "$OPS_DB"` with OPS_DB unset, or DISTRLOCK_DB= set to nothing.
  const Result r = run_without_db({"run", "--key", key_, "--", "touch", file("ran")}, {{"DISTRLOCK_DB", ""}});
  EXPECT_EQ(r.exit_code, exit_usage) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("DISTRLOCK_DB is set but empty"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(file("ran")));
  EXPECT_FALSE(fs::exists(dir_ / "state" / "distrlock" / "locks.db")) << "the default was used";
}

TEST_F(CliAlone, DistrlockTableChoosesTheTableAndTableOverridesIt) {
  const std::string from_env = dltest::unique_table();
  const std::string from_flag = dltest::unique_table();
  const EnvChanges env = {{"DISTRLOCK_TABLE", from_env}};
  ASSERT_EQ(run_without_db({"acquire", "--key", key_}, env).exit_code, 0);
  ASSERT_EQ(run_without_db({"--table", from_flag, "acquire", "--key", key_ + "/flag"}, env).exit_code, 0);
  const Json in_env_table = status({}, {"--table", from_env});
  ASSERT_EQ(in_env_table.size(), 1U) << in_env_table.dump();
  EXPECT_EQ(in_env_table.at(0).at("key"), key_);
  const Json in_flag_table = status({}, {"--table", from_flag});
  ASSERT_EQ(in_flag_table.size(), 1U) << in_flag_table.dump();
  EXPECT_EQ(in_flag_table.at(0).at("key"), key_ + "/flag");
  const Result empty = run_without_db({"status"}, {{"DISTRLOCK_TABLE", ""}});
  EXPECT_EQ(empty.exit_code, exit_usage) << describe(empty);
}

TEST_F(CliAlone, TheSqliteTempSchemaIsRefusedWithAdviceAboutTheTableNotTheDatabase) {
  const Result r = run_without_db({"--table", "temp.locks", "run", "--key", key_, "--", "true"});
  EXPECT_EQ(r.exit_code, exit_usage) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("choose another --table"), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("use --db"), std::string::npos) << r.err;
}

TEST_F(CliAlone, QuietConflictStillPrintsRealErrors) {
  const Result r = run_without_db({"--db", "postgresql://u@127.0.0.1:1/db", "run", "--key", key_, "-q", "--", "true"});
  EXPECT_EQ(r.exit_code, exit_unavailable) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
}

TEST_F(CliAlone, WaitAgainstAServerThatNeverAnswersTakesTheWaitPlusTheTimeout) {
  // A listener that never accepts: the connection is made by the kernel, and no greeting ever comes.
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(listener, 16), 0);
  socklen_t len = sizeof a;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&a), &len);
  const std::string url = "postgresql://u@127.0.0.1:" + std::to_string(ntohs(a.sin_port)) + "/db";
  const Result r = run_without_db({"--db", url, "--timeout", "1s", "run", "--key", key_, "--wait", "2s", "--", "true"});
  ::close(listener);
  EXPECT_EQ(r.exit_code, exit_unavailable) << describe(r);
  // The promise: about --wait + --timeout (3 s). Slack: 2 s for process start-up on a loaded 2-core VM and TSan.
  EXPECT_LT(r.took, 5s) << describe(r);
}

TEST_F(CliAlone, WithTheDatabaseGoneRunExitsWithinTheReleaseBoundAfterTheCommand) {
  const std::string pg = dltest::server_url(dltest::backend("postgres"));
  ASSERT_FALSE(pg.empty());
  dltest::Relay relay("127.0.0.1", dltest::url_port(pg));  // the shared test relay: hang = accept, answer nothing
  const std::string url = relay.rewrite(pg);
  Process tool(command({"--db", url, "run", "--key", key_, "--", "sh", "-c",
                        "echo > \"$0\"; while [ ! -e \"$1\" ]; do sleep 0.01; done", file("started"), file("go")}),
               env_, dir_);
  ASSERT_TRUE(wait_for_file(file("started")));
  ASSERT_TRUE(relay.set_mode(dltest::Relay::Mode::hang));
  std::ofstream(file("go")).put('\n');
  const auto command_done = Clock::now();
  const Result r = tool.wait(30s);
  const auto exit_after = Clock::now() - command_done;
  EXPECT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("warning"), std::string::npos) << r.err;
  // The promise: the tool exits at most min(--timeout, 2s) + 0.5s after the command. Slack: 1.5 s for the
  // command's 10 ms poll and the tool's exit on a loaded 2-core VM and under TSan. Before, the release could
  // wait out the 5 s operation timeout, or for ever in a cancel that blocks.
  EXPECT_LT(exit_after, 4s) << describe(r);
  // Nothing else was done to the key: it frees itself at the end of its TTL.
}

/// The tool as an interactive shell runs it: session leader of a fresh pseudo-terminal, in its foreground.
/// Killed and reaped on destruction if still running.
class OnATerminal {
 public:
  OnATerminal(std::vector<std::string> args, const EnvChanges& changes) {
    master_ = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master_ < 0 || ::grantpt(master_) != 0 || ::unlockpt(master_) != 0) {
      ADD_FAILURE() << "no pseudo-terminal: " << std::strerror(errno);
      return;
    }
    const std::string slave = ::ptsname(master_);
    std::vector<char*> argp;
    for (std::string& a : args) argp.push_back(a.data());
    argp.push_back(nullptr);
    std::vector<std::string> env = {"PATH=" + std::string(std::getenv("PATH"))};
    for (const auto& [name, value] : changes)
      if (value) env.push_back(name + "=" + *value);
    std::vector<char*> envp;
    for (std::string& e : env) envp.push_back(e.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    // Opened after setsid() (glibc does that first) and without O_NOCTTY: it becomes the controlling terminal.
    posix_spawn_file_actions_addopen(&actions, 0, slave.c_str(), O_RDWR, 0);
    posix_spawn_file_actions_adddup2(&actions, 0, 1);
    posix_spawn_file_actions_adddup2(&actions, 0, 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
    if (const int rc = ::posix_spawn(&pid_, argp[0], &actions, &attr, argp.data(), envp.data()); rc != 0) {
      ADD_FAILURE() << "posix_spawn: " << std::strerror(rc);
      pid_ = -1;
    }
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
  }
  ~OnATerminal() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (master_ >= 0) ::close(master_);
  }
  OnATerminal(const OnATerminal&) = delete;
  OnATerminal& operator=(const OnATerminal&) = delete;

  pid_t pid() const { return pid_; }
  /// Types `keys` (e.g. "\x03", Ctrl-C).
  void type(std::string_view keys) const {
    EXPECT_EQ(::write(master_, keys.data(), keys.size()), static_cast<ssize_t>(keys.size()));
  }
  /// The state letter of the tool in /proc (R, S, T for stopped, ...).
  char state() const {
    const std::string stat = read_file("/proc/" + std::to_string(pid_) + "/stat");
    const std::size_t paren = stat.rfind(')');
    return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
  }
  /// Waits for the exit, reading what the terminal shows meanwhile; the wait status, or -1 after `timeout`.
  int wait(std::chrono::milliseconds timeout) {
    const auto give_up = Clock::now() + timeout;
    int status = -1;
    char drain[4096];
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
      if (Clock::now() > give_up) return -1;
      pollfd p{master_, POLLIN, 0};
      if (::poll(&p, 1, 10) > 0) [[maybe_unused]]
        const ssize_t n = ::read(master_, drain, sizeof drain);
    }
    pid_ = -1;
    return status;
  }

 private:
  int master_ = -1;
  pid_t pid_ = -1;
};

TEST_F(CliAlone, InTheForegroundOfATerminalTheCommandGetsTheTerminalAndCtrlCReachesItOnce) {
  OnATerminal tool(command({"run", "--key", key_, "--", "sh", "-c",
                            "trap 'echo INT >> \"$0\"; exit 5' INT; cut -d' ' -f8 /proc/$$/stat > \"$1\"; "
                            "grep SigIgn /proc/$$/status > \"$3\"; echo $$ > \"$2\"; "
                            "while :; do sleep 0.05; done",
                            file("got"), file("tpgid"), file("started"), file("ignored")}),
                   env_);
  const bool started = wait_for_file(file("started"));
  std::this_thread::sleep_for(50ms);  // "started" is written after "tpgid"
  const std::string command_pid = read_file(file("started"));
  EXPECT_TRUE(started);
  EXPECT_EQ(read_file(file("tpgid")), command_pid) << "the terminal's foreground group is not the command's";
  const std::string ignored = read_file(file("ignored"));  // "SigIgn:\t<hex mask>\n"
  ASSERT_TRUE(ignored.starts_with("SigIgn:")) << ignored;
  EXPECT_EQ((std::stoull(ignored.substr(7), nullptr, 16) >> (SIGTTOU - 1)) & 1U, 0U)
      << "the tool's own SIGTTOU disposition leaked into the command";
  tool.type("\x03");  // Ctrl-C
  const int status = tool.wait(20s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 5) << "status " << status;
  EXPECT_EQ(read_file(file("got")), "INT\n") << "Ctrl-C reached the command a number of times other than once";
}

/// The state letter of process `pid` in /proc (R, S, T for stopped, ...), or '?' when it is gone.
char process_state(const std::string& pid) {
  const std::string stat = read_file("/proc/" + pid + "/stat");
  const std::size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() ? '?' : stat[paren + 2];
}

TEST_F(CliAlone, CtrlZStopsTheCommandAndTheToolAndContinuingTheToolContinuesBoth) {
  // `exec sleep`: dash runs a plain command through vfork(), and a Ctrl-Z landing between that vfork and the
  // exec stops the child while dash waits uninterruptibly for it, so no process the tool can wait for stops
  // (the same happens under an interactive shell without distrlock). Not what this test is about.
  OnATerminal tool(command({"run", "--key", key_, "--", "sh", "-c",
                            "echo $$ > \"$0.tmp\"; mv \"$0.tmp\" \"$0\"; exec sleep 30", file("command.pid")}),
                   env_);
  ASSERT_TRUE(wait_for_file(file("command.pid")));
  std::string command_pid = read_file(file("command.pid"));
  command_pid.pop_back();  // the newline
  tool.type("\x1a");       // Ctrl-Z, which the terminal sends to the command's group as SIGTSTP
  // The tool stops itself once it sees the command stopped, so its shell would see the job stopped. Slack: 5 s.
  const auto give_up = Clock::now() + 5s;
  while (tool.state() != 'T' && Clock::now() < give_up) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(tool.state(), 'T') << "the tool did not stop with its command";
  EXPECT_EQ(process_state(command_pid), 'T');
  ::kill(tool.pid(), SIGCONT);  // what the shell's `fg` sends; the tool continues the command
  const auto continued_by = Clock::now() + 5s;
  while (process_state(command_pid) == 'T' && Clock::now() < continued_by) std::this_thread::sleep_for(10ms);
  EXPECT_NE(process_state(command_pid), 'T') << "the command was not continued with the tool";
  EXPECT_NE(tool.state(), 'T');
  ::kill(std::stoi(command_pid), SIGTERM);  // ends the command; the tool exits with its status
  const int status = tool.wait(20s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 128 + SIGTERM) << "status " << status;
}

TEST_F(CliAlone, StatusPadsByDisplayWidthAndCutsLongKeysWithAnEllipsisOnlyInTheTable) {
  const std::string wide = key_ + "/日本語";  // 3 characters, 6 columns, 9 bytes
  const std::string narrow = key_ + "/abcdef";
  const std::string longest = key_ + "/" + std::string(255 - key_.size() - 1, 'x');  // the longest key
  for (const std::string& k : {wide, narrow, longest}) ASSERT_FALSE(acquire(k).empty());
  const Result r = run({"status", "--prefix", key_ + "/"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  std::istringstream lines(r.out);
  std::map<std::string, std::size_t> held_column;  // bytes before "held", less the extra bytes of wide characters
  for (std::string line; std::getline(lines, line);) {
    const std::size_t at = line.find("  held");
    if (at == std::string::npos) continue;
    // Bytes that take fewer columns: the wide characters (9 bytes, 6 columns), the ellipsis (3 bytes, 1 column).
    const bool is_wide = line.starts_with(wide);
    const bool is_narrow = line.starts_with(narrow);
    held_column[is_wide ? "wide" : is_narrow ? "narrow" : "long"] = at - (is_wide ? 3 : is_narrow ? 0 : 2);
  }
  ASSERT_EQ(held_column.size(), 3U) << r.out;
  EXPECT_EQ(held_column["wide"], held_column["narrow"]) << r.out;
  EXPECT_EQ(held_column["long"], held_column["narrow"]) << r.out;
  EXPECT_NE(r.out.find("\u2026"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find(longest), std::string::npos) << "cut in the table: " << r.out;
  const Json j = status({longest});
  EXPECT_EQ(j.at(0).at("key"), longest) << "whole in --json";
}

#ifdef DISTRLOCK_CLI_SPLIT
TEST_F(CliAlone, AnUnknownUrlSchemeExits64NamingItEvenWithoutDistrlockFull) {
  const fs::path alone = dir_ / "bin";
  fs::create_directories(alone);
  fs::copy_file(DISTRLOCK_CLI, alone / "distrlock");
  const Result r =
      Process({(alone / "distrlock").string(), "--db", "redis-ish://u:pw@host/0", "run", "--key", key_, "--", "true"},
              env_, dir_)
          .wait();
  EXPECT_EQ(r.exit_code, exit_usage) << describe(r);
  EXPECT_TRUE(IsOneLine(r.err));
  EXPECT_NE(r.err.find("unknown database URL scheme \"redis-ish\""), std::string::npos) << r.err;
  EXPECT_EQ(r.err.find("pw@"), std::string::npos) << r.err;
}

// Loading libpq and its ~20 dependencies costs milliseconds per process: the embedded default must not pay it
// (tools/distrlock/CMakeLists.txt).
TEST_F(CliAlone, TheEmbeddedDefaultLoadsNoServerClientLibrary) {
  const Result r = run_without_db({"run", "--key", key_, "--", "sh", "-c", "cat /proc/$PPID/maps"});
  ASSERT_EQ(r.exit_code, 0) << describe(r);
  EXPECT_NE(r.out.find("libsqlite3"), std::string::npos);
  EXPECT_EQ(r.out.find("libpq"), std::string::npos);
  EXPECT_EQ(r.out.find("libmariadb"), std::string::npos);
}
#endif

std::string backend_name(const ::testing::TestParamInfo<std::string>& param) { return param.param; }
std::string bad_input_name(const ::testing::TestParamInfo<std::string>& param) {
  const std::string& p = param.param;
  return p.substr(0, p.find(':')) + "_" +
         bad_inputs().at(static_cast<std::size_t>(std::stoi(p.substr(p.find(':') + 1)))).name;
}

INSTANTIATE_TEST_SUITE_P(Backends, Cli, ::testing::ValuesIn(cli_backends()), backend_name);
INSTANTIATE_TEST_SUITE_P(Backends, CliBadInput, ::testing::ValuesIn(bad_input_params()), bad_input_name);

}  // namespace
