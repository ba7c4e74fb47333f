// distrlock-torture: runs worker processes that fight over a few keys while faults are injected, and checks
// the safety properties of DESIGN.md on what they report (issue 9; see docs/reliability.md).
//
//   distrlock-torture --db URL [--workers 4] [--keys 2] [--seconds 60] [--ttl 1s]
//                     [--faults kill,stop,partition,stall,terminate,restart,skew,failover] [--restart-cmd CMD]
//                     [--failover-cmd CMD] [--json]
//
// The parent forks P workers (this same program in a hidden worker mode). Each loops: acquire a random key
// as an auto-extended Lease (waiting), enter, fenced writes to a guarded table while it works a random
// short time (stopping at once when the lease's stop fires), exit, release; it reports every step on a pipe.
// The parent injects one fault at a time, at random, on a random holder, then checks what happened.
//
// Output: the last line on stdout is one JSON object (with --json, the only line). Exit status: 0 when every
// "must" held, 1 when one failed (the interleaving that broke it is printed on stderr), 64 bad usage,
// 69 setup failed (database unreachable, tools missing), 130 interrupted (Ctrl-C: faults healed, workers
// stopped, the checks still printed).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <set>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "checks.hpp"
#include "distrlock/distrlock.hpp"
#include "events.hpp"
#include "loopback_relay.hpp"
#include "native_db.hpp"
#include "process.hpp"
#include "worker.hpp"

extern char** environ;

namespace torture {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr int exit_failed = 1;
constexpr int exit_interrupted = 130;  // as a shell reports death by SIGINT; the run was cleaned up
constexpr int exit_usage = 64;
constexpr int exit_setup = 69;

constexpr std::array<std::string_view, 8> all_faults = {"kill",      "stop",    "partition", "stall",
                                                        "terminate", "restart", "skew",      "failover"};
constexpr std::array<std::string_view, 4> sqlite_faults = {"kill", "stop", "stall", "skew"};

constexpr const char* usage_text =
    "usage: distrlock-torture --db URL [options]\n"
    "  --db URL            database under test (default: $DISTRLOCK_DB); traffic must stay on 127.0.0.1\n"
    "  --table NAME        lock table (default distributed_locks)\n"
    "  --workers P         worker processes (1-64, default 4)\n"
    "  --keys K            keys they fight over (default 2)\n"
    "  --seconds S         run length (default 60; 1800 for the long mode)\n"
    "  --ttl D             lease TTL: 250ms, 1s, ... (default 1s)\n"
    "  --faults LIST       comma-separated: kill,stop,partition,stall,terminate,restart,skew,failover\n"
    "                      (sqlite: kill,stop,stall,skew). Default: none\n"
    "  --restart-cmd CMD   how the restart fault restarts the server (run by /bin/sh); repeat it to\n"
    "                      alternate between ways, e.g. a fast restart and a crash + start\n"
    "  --failover-cmd CMD  how the failover fault replaces the primary with its standby (run by /bin/sh;\n"
    "                      --db must name both, e.g. a multi-host PostgreSQL URL); repeatable like --restart-cmd\n"
    "  --skew-hours H      skew: wall clocks up to H hours off (default 12); 0 changes only the time zone\n"
    "  --reconnect-bound D longest a key may stay unavailable beyond the TTL after a fault (default 3s)\n"
    "  --min-faults N      fail unless every listed fault was injected at least N times (default 0)\n"
    "  --seed N            random seed (default: random; printed in the JSON)\n"
    "  --json              print only the JSON line on stdout\n"
    "exit: 0 every check held, 1 a check failed (details on stderr), 64 bad usage, 69 setup failed,\n"
    "      130 interrupted\n";

/// True for a URL that lists several hosts (a primary and its standbys: "h1:p1,h2:p2" or "host=h1,h2"). The
/// relays follow one server, so the faults that need them cannot be used there.
bool names_several_hosts(const std::string& url) {
  const std::size_t scheme = url.find("://");
  if (scheme != std::string::npos) {
    const std::size_t start = scheme + 3;
    const std::size_t end = url.find_first_of("/?", start);
    return url.substr(start, end == std::string::npos ? std::string::npos : end - start).find(',') !=
           std::string::npos;
  }
  const std::size_t host = url.find("host=");
  return host != std::string::npos && url.substr(host, url.find(' ', host) - host).find(',') != std::string::npos;
}

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Config {
  std::string db;
  std::string table = "distributed_locks";
  int workers = 4;
  int keys = 2;
  double seconds = 60;
  milliseconds ttl{1000};
  std::vector<std::string> faults;
  std::vector<std::string> restart_cmds;
  std::vector<std::string> failover_cmds;
  milliseconds reconnect_bound{3000};
  int skew_hours = 12;
  int min_faults = 0;
  std::uint64_t seed = 0;
  bool json = false;
  std::string plant;  // hidden: "ignore-stop" or "skip-fence-check"
  // Hidden worker mode.
  bool worker = false;
  WorkerConfig w;
};

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (err != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

/// 250ms, 1s, 2m, or a bare number of seconds.
std::optional<milliseconds> parse_duration(std::string_view text) {
  double per_unit = 1000;
  if (text.ends_with("ms")) {
    per_unit = 1;
    text.remove_suffix(2);
  } else if (text.ends_with("s")) {
    text.remove_suffix(1);
  } else if (text.ends_with("m")) {
    per_unit = 60'000;
    text.remove_suffix(1);
  }
  const auto v = parse_number<double>(text);
  if (!v || !(*v > 0) || *v * per_unit > 86'400'000.0) return std::nullopt;
  return milliseconds(std::llround(*v * per_unit));
}

std::string backend_of(std::string_view url) {
  if (url.starts_with("sqlite:")) return "sqlite";
  if (url.starts_with("mysql://") || url.starts_with("mariadb://")) return "mysql";
  return "postgres";
}

Config parse_args(std::span<char* const> args) {
  Config c;
  const auto need = [&](std::size_t& i) -> std::string_view {
    if (i + 1 >= args.size()) throw UsageError(std::string(args[i]) + " needs a value");
    return args[++i];
  };
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string_view a = args[i];
    const auto bad = [&](const char* rule, std::string_view v) {
      return UsageError(std::string(a) + " must be " + rule + ", got \"" + std::string(v) + "\"");
    };
    if (a == "--help" || a == "-h") {
      std::cout << usage_text;
      std::exit(0);
    } else if (a == "--json") {
      c.json = true;
    } else if (a == "--worker") {
      c.worker = true;
    } else if (a == "--db") {
      c.db = need(i);
    } else if (a == "--table") {
      c.table = need(i);
    } else if (a == "--workers") {
      const std::string_view v = need(i);
      const auto n = parse_number<int>(v);
      if (!n || *n < 1 || *n > 64) throw bad("an integer from 1 to 64", v);
      c.workers = *n;
    } else if (a == "--keys") {
      const std::string_view v = need(i);
      const auto n = parse_number<int>(v);
      if (!n || *n < 1 || *n > 100000) throw bad("an integer from 1 to 100000", v);
      c.keys = *n;
    } else if (a == "--seconds") {
      const std::string_view v = need(i);
      const auto n = parse_number<double>(v);
      if (!n || !(*n > 0) || *n > 86400) throw bad("a number > 0 and <= 86400", v);
      c.seconds = *n;
    } else if (a == "--ttl" || a == "--reconnect-bound") {
      const std::string_view v = need(i);
      const auto d = parse_duration(v);
      if (!d) throw bad("a duration such as 250ms, 1s or 2m", v);
      (a == "--ttl" ? c.ttl : c.reconnect_bound) = *d;
    } else if (a == "--faults") {
      std::string_view v = need(i);
      while (!v.empty()) {
        const std::size_t comma = v.find(',');
        const std::string_view f = v.substr(0, comma);
        if (std::find(all_faults.begin(), all_faults.end(), f) == all_faults.end())
          throw UsageError("unknown fault \"" + std::string(f) +
                           "\" (known: kill, stop, partition, stall, terminate, restart, skew, failover)");
        if (std::find(c.faults.begin(), c.faults.end(), f) == c.faults.end()) c.faults.emplace_back(f);
        v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
      }
    } else if (a == "--min-faults") {
      const std::string_view v = need(i);
      const auto n = parse_number<int>(v);
      if (!n || *n < 0) throw bad("an integer >= 0", v);
      c.min_faults = *n;
    } else if (a == "--restart-cmd") {
      c.restart_cmds.emplace_back(need(i));
    } else if (a == "--failover-cmd") {
      c.failover_cmds.emplace_back(need(i));
    } else if (a == "--seed") {
      const std::string_view v = need(i);
      const auto n = parse_number<std::uint64_t>(v);
      if (!n) throw bad("an unsigned integer", v);
      c.seed = *n;
    } else if (a == "--plant") {
      c.plant = need(i);
      if (c.plant != "ignore-stop" && c.plant != "skip-fence-check")
        throw UsageError("--plant must be ignore-stop or skip-fence-check");
    } else if (a == "--guard-db") {
      c.w.guard_db = need(i);
    } else if (a == "--run-id") {
      c.w.run_id = need(i);
    } else if (a == "--skew-hours" && !c.worker) {
      const std::string_view v = need(i);
      const auto n = parse_number<int>(v);
      if (!n || *n < 0 || *n > 100000) throw bad("an integer from 0 to 100000", v);
      c.skew_hours = *n;
    } else if (a == "--slot" || a == "--skew-hours") {  // worker mode (--worker comes first)
      const auto n = parse_number<int>(need(i));
      if (!n) throw UsageError(std::string(a) + " needs an integer");
      (a == "--slot" ? c.w.slot : c.w.skew_hours) = *n;
    } else {
      throw UsageError("unknown argument \"" + std::string(a) + "\"");
    }
  }
  if (c.db.empty()) {
    const char* env = std::getenv("DISTRLOCK_DB");  // NOLINT(concurrency-mt-unsafe): no thread runs yet
    if (env == nullptr || *env == '\0') throw UsageError("missing --db URL (and $DISTRLOCK_DB is not set)");
    c.db = env;
  }
  if (c.ttl < distrlock::min_ttl) throw UsageError("--ttl must be at least 100ms (the library's minimum)");
  if (backend_of(c.db) == "sqlite") {
    for (const std::string& f : c.faults)
      if (std::find(sqlite_faults.begin(), sqlite_faults.end(), f) == sqlite_faults.end())
        throw UsageError("fault \"" + f + "\" does not apply to sqlite (it has no server): use kill,stop,stall,skew");
  }
  if (std::find(c.faults.begin(), c.faults.end(), "restart") != c.faults.end() && c.restart_cmds.empty())
    throw UsageError("the restart fault needs --restart-cmd, e.g. \"scripts/services restart postgres\"");
  if (names_several_hosts(c.db)) {
    for (const std::string& f : c.faults)
      if (f == "partition" || f == "stall" || f == "terminate")
        throw UsageError("fault \"" + f + "\" follows one server through a relay: it needs a --db URL with one host");
  }
  if (std::find(c.faults.begin(), c.faults.end(), "failover") != c.faults.end() && c.failover_cmds.empty())
    throw UsageError("the failover fault needs --failover-cmd, e.g. \"scripts/services failover postgres-pair\"");
#ifndef DISTRLOCK_FAKETIME_LIB
  if (std::find(c.faults.begin(), c.faults.end(), "skew") != c.faults.end())
    throw UsageError("the skew fault needs libfaketime, which this build did not find (Debian: faketime)");
#endif
  if (c.seed == 0) c.seed = std::random_device{}() | (std::uint64_t{std::random_device{}()} << 32U);
  return c;
}

std::string self_exe() {
  std::string path(4096, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  if (n <= 0) throw std::runtime_error("cannot find my own executable (/proc/self/exe)");
  path.resize(static_cast<std::size_t>(n));
  return path;
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and turns them into a flag: a Ctrl-C ends the run early but
/// through the normal shutdown, which heals every fault and reaps every worker.
class Interrupts {
 public:
  Interrupts() {
    sigemptyset(&set_);
    for (const int s : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&set_, s);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);
    thread_ = std::jthread([this](std::stop_token st) {
      const timespec slice{0, 100'000'000};
      while (!st.stop_requested())
        if (sigtimedwait(&set_, nullptr, &slice) > 0) requested_ = true;
    });
  }
  bool requested() const noexcept { return requested_.load(); }

 private:
  sigset_t set_{};
  std::atomic<bool> requested_{false};
  std::jthread thread_;
};

/// What the reader threads collect, and who is in a critical section right now (for picking targets).
class EventLog {
 public:
  void add(std::string_view line) {
    const std::optional<Event> e = parse_event(line);
    if (!e) return;
    std::lock_guard lk(mu_);
    events_.push_back(*e);
    if (e->kind == EventKind::enter) holding_[e->pid] = {e->slot, e->key, e->fence, e->t0};
    if (e->kind == EventKind::exit) holding_.erase(e->pid);
  }
  struct Holding {
    int slot;
    int key;
    std::int64_t fence;
    std::int64_t entered;
  };
  std::optional<Holding> holding(long pid) const {
    std::lock_guard lk(mu_);
    const auto it = holding_.find(pid);
    return it == holding_.end() ? std::nullopt : std::optional<Holding>(it->second);
  }
  void forget(long pid) {
    std::lock_guard lk(mu_);
    holding_.erase(pid);
  }
  std::vector<Event> take() {
    std::lock_guard lk(mu_);
    return std::move(events_);
  }

 private:
  mutable std::mutex mu_;
  std::vector<Event> events_;        // guarded by mu_
  std::map<long, Holding> holding_;  // guarded by mu_
};

/// Keeps a process SIGSTOPped for its lifetime (a worker, or a PostgreSQL backend).
class Stopped {
 public:
  explicit Stopped(std::vector<long> pids) : pids_(std::move(pids)) {
    for (const long p : pids_) ::kill(static_cast<pid_t>(p), SIGSTOP);
  }
  ~Stopped() {
    for (const long p : pids_) ::kill(static_cast<pid_t>(p), SIGCONT);
  }
  Stopped(const Stopped&) = delete;
  Stopped& operator=(const Stopped&) = delete;

 private:
  std::vector<long> pids_;
};

/// Heals a partition when it goes out of scope.
class Partitioned {
 public:
  Partitioned(dlrelay::Relay& relay, dlrelay::Relay::Mode mode) : relay_(relay) { ok_ = relay_.set_mode(mode); }
  ~Partitioned() {
    if (!relay_.set_mode(dlrelay::Relay::Mode::forward))
      std::cerr << "distrlock-torture: healing a partition failed: " << relay_.last_error() << "\n";
  }
  Partitioned(const Partitioned&) = delete;
  Partitioned& operator=(const Partitioned&) = delete;
  bool ok() const noexcept { return ok_; }

 private:
  dlrelay::Relay& relay_;
  bool ok_ = false;
};

class Torture {
 public:
  Torture(const Config& cfg, const Interrupts& interrupts)
      : cfg_(cfg), interrupts_(interrupts), backend_(backend_of(cfg.db)), rng_(cfg.seed), exe_(self_exe()) {
    char id[17];
    std::snprintf(id, sizeof id, "%016llx", static_cast<unsigned long long>(rng_()));
    run_id_ = id;
  }

  int run();

 private:
  bool server_backend() const { return backend_ != "sqlite"; }
  std::int64_t ttl_ns() const { return std::chrono::nanoseconds(cfg_.ttl).count(); }
  milliseconds random_ms(milliseconds lo, milliseconds hi) {
    return milliseconds(std::uniform_int_distribution<std::int64_t>(lo.count(), hi.count())(rng_));
  }

  /// Hours of clock offset for a skewed start: +-1..--skew-hours, or tz_only.
  int random_skew() {
    if (cfg_.skew_hours == 0) return tz_only;
    const int hours = static_cast<int>(rng_() % static_cast<std::uint64_t>(cfg_.skew_hours)) + 1;
    return rng_() % 2 == 0 ? -hours : hours;
  }
  static constexpr int tz_only = 1'000'000;  // a skewed start with the true wall clock, in another time zone

  void setup();
  /// skew_hours: 0 plain, tz_only, or an offset for faketime.
  void start_worker(int slot, int skew_hours);
  void reap();
  /// Sleeps for `d`, reaping and replacing dead workers meanwhile; returns early on Ctrl-C.
  void idle(std::chrono::steady_clock::duration d);
  /// A running worker, preferring one inside its critical section (waits up to a TTL for one). With
  /// `fresh`, the holder that entered last: it has the most work left, so it is still inside when its lease
  /// is lost and the loss signal can be measured.
  WorkerProcess* pick_target(bool holder_only, bool fresh = false);
  Fault inject(const std::string& kind);
  std::optional<std::int64_t> server_expiry(int key, long pid);
  NativeDb& admin_db();
  /// Adds a remark to the JSON's "notes", once per distinct text.
  void note(const std::string& text) {
    if (notes_.find(text) == std::string::npos) notes_ += (notes_.empty() ? "" : "; ") + text;
  }
  void shutdown();
  int report(const Record& rec, const Findings& f, double elapsed_s);

  const Config& cfg_;
  const Interrupts& interrupts_;
  std::string backend_;
  std::mt19937_64 rng_;
  std::string exe_;
  std::string run_id_;
  std::optional<distrlock::Manager> admin_;
  std::unique_ptr<NativeDb> admin_db_;
  std::vector<std::unique_ptr<dlrelay::Relay>> relays_;  // one per slot; outlive the workers
  EventLog log_;
  std::vector<std::unique_ptr<WorkerProcess>> workers_;  // live, one per slot
  std::vector<std::unique_ptr<WorkerProcess>> retired_;  // ended; their readers are joined at the end
  std::vector<int> pending_skew_;                        // per slot: hours for the next start, 0 none
  std::map<std::string, int> fault_counts_;
  std::vector<Fault> faults_;
  std::map<long, Death> deaths_;
  bool shutting_down_ = false;
  bool partition_hang_next_ = true;
  bool blackhole_works_ = true;
  bool stall_row_next_ = true;
  std::int64_t last_kill_ = 0;
  int skewed_starts_ = 0;
  std::size_t restarts_ = 0;
  std::size_t failovers_ = 0;
  std::uint64_t shutdown_kills_ = 0;
  std::string notes_;
};

void Torture::setup() {
  admin_.emplace(distrlock::Manager::open(cfg_.db, distrlock::Options{.table = cfg_.table, .pool_size = 2}));
  admin_->migrate();
  admin_db().create_guard_table();
  if (server_backend() && !names_several_hosts(cfg_.db)) {
    const int port = dlrelay::url_port(cfg_.db);
    if (port == 0) throw std::runtime_error("cannot find the server's port in --db (the relays need it)");
    for (int s = 0; s < cfg_.workers; ++s) relays_.push_back(std::make_unique<dlrelay::Relay>("127.0.0.1", port));
  }
  pending_skew_.assign(static_cast<std::size_t>(cfg_.workers), 0);
}

NativeDb& Torture::admin_db() {
  if (!admin_db_) admin_db_ = NativeDb::connect(cfg_.db);
  return *admin_db_;
}

void Torture::start_worker(int slot, int skew_hours) {
  // Through the worker's relay, for the faults that act on its connections; straight to the servers when the URL
  // lists several hosts (the relays follow one server, and a failover moves the primary).
  const std::string db = relays_.empty() ? cfg_.db : relays_[static_cast<std::size_t>(slot)]->rewrite(cfg_.db);
  std::vector<std::string> argv = {exe_,           "--worker",
                                   "--db",         db,
                                   "--guard-db",   cfg_.db,
                                   "--table",      cfg_.table,
                                   "--run-id",     run_id_,
                                   "--slot",       std::to_string(slot),
                                   "--keys",       std::to_string(cfg_.keys),
                                   "--ttl",        std::to_string(cfg_.ttl.count()) + "ms",
                                   "--seed",       std::to_string(rng_() | 1U),
                                   "--skew-hours", std::to_string(skew_hours == tz_only ? 0 : skew_hours)};
  if (!cfg_.plant.empty()) argv.insert(argv.end(), {"--plant", cfg_.plant});
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view v = *e;
    if (skew_hours != 0 && (v.starts_with("TZ=") || v.starts_with("FAKETIME") || v.starts_with("LD_PRELOAD=")))
      continue;
    env.emplace_back(v);
  }
#ifdef DISTRLOCK_FAKETIME_LIB
  if (skew_hours != 0) {
    // The wall clock hours off and another time zone; the monotonic clock stays true (see events.hpp).
    static constexpr std::array<const char*, 5> zones = {"Pacific/Chatham", "America/St_Johns", "Asia/Kathmandu",
                                                         "Australia/Lord_Howe", "America/Los_Angeles"};
    env.push_back(std::string("LD_PRELOAD=") + DISTRLOCK_FAKETIME_LIB);
    const int offset = skew_hours == tz_only ? 0 : skew_hours;
    env.push_back("FAKETIME=" + std::string(offset >= 0 ? "+" : "") + std::to_string(offset) + "h");
    env.emplace_back("FAKETIME_DONT_FAKE_MONOTONIC=1");
    env.push_back(std::string("TZ=") + zones[static_cast<std::size_t>(rng_() % zones.size())]);
    ++skewed_starts_;
  }
#endif
  workers_[static_cast<std::size_t>(slot)] =
      std::make_unique<WorkerProcess>(slot, argv, env, [this](std::string_view line) { log_.add(line); });
}

void Torture::reap() {
  for (auto& w : workers_) {
    if (!w) continue;
    const std::optional<int> st = w->poll();
    if (!st) continue;
    const int slot = w->slot();
    deaths_[w->pid()] = Death{slot, w->killed_at.value_or(mono_ns()), w->injected, describe_status(*st)};
    log_.forget(w->pid());
    retired_.push_back(std::move(w));
    if (!shutting_down_) {
      const int skew = std::exchange(pending_skew_[static_cast<std::size_t>(slot)], 0);
      start_worker(slot, skew);
    }
  }
}

void Torture::idle(std::chrono::steady_clock::duration d) {
  const auto end = std::chrono::steady_clock::now() + d;
  while (!interrupts_.requested()) {
    reap();
    const auto now = std::chrono::steady_clock::now();
    if (now >= end) break;
    std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(end - now, 10ms));
  }
}

WorkerProcess* Torture::pick_target(bool holder_only, bool fresh) {
  const auto deadline = std::chrono::steady_clock::now() + cfg_.ttl;
  for (;;) {
    std::vector<WorkerProcess*> holders, all;
    WorkerProcess* newest = nullptr;
    std::int64_t newest_enter = 0;
    for (auto& w : workers_) {
      if (!w || !w->running()) continue;
      all.push_back(w.get());
      const auto h = log_.holding(w->pid());
      if (!h) continue;
      holders.push_back(w.get());
      if (h->entered > newest_enter) {
        newest_enter = h->entered;
        newest = w.get();
      }
    }
    if (fresh && newest != nullptr) return newest;
    if (!holders.empty()) return holders[rng_() % holders.size()];
    if (std::chrono::steady_clock::now() >= deadline || interrupts_.requested()) {
      if (holder_only || all.empty()) return nullptr;
      return all[rng_() % all.size()];
    }
    idle(5ms);
  }
}

std::optional<std::int64_t> Torture::server_expiry(int key, long pid) {
  // Asked once the fault is in place, so no extension can land after it; status() reads the server's clock.
  const std::int64_t before = mono_ns();
  std::error_code ec;
  const auto st = admin_->status({key_name(run_id_, key)}, ec,
                                 distrlock::Call{.deadline = std::chrono::steady_clock::now() + cfg_.ttl});
  if (ec) {
    note("status() for the loss signal failed: " + ec.message());
    return std::nullopt;
  }
  // Not (or no longer) held by the target: it finished before the fault bit, so there is nothing to measure.
  if (st.size() != 1 || !st[0].held || !st[0].owner.ends_with("-" + std::to_string(pid))) return std::nullopt;
  return before + std::chrono::nanoseconds(st[0].expires_in).count();
}

Fault Torture::inject(const std::string& kind) {
  Fault f;
  f.kind = kind;
  const Fault not_injected = f;  // t_start 0: not counted
  WorkerProcess* target = pick_target(kind == "stall", kind == "stall" || kind == "partition");
  const auto hold_for = [&] { return random_ms(cfg_.ttl * 3 / 2, cfg_.ttl * 2); };
  const bool server_wide = kind == "restart" || kind == "failover";
  if (target != nullptr && !server_wide) {
    f.slot = target->slot();
    f.pid = target->pid();
    if (const auto h = log_.holding(target->pid())) {
      f.key = h->key;
      f.fence = h->fence;
    }
  }
  if (target == nullptr && !server_wide) return f;  // nobody to hit; not counted
  f.t_start = mono_ns();
  if (kind == "kill") {
    target->injected = true;
    target->killed_at = f.t_start;
    target->signal(SIGKILL);
    last_kill_ = f.t_start;
  } else if (kind == "stop") {
    Stopped stopped({target->pid()});
    idle(hold_for());
  } else if (kind == "partition") {
    auto mode =
        partition_hang_next_ || !blackhole_works_ ? dlrelay::Relay::Mode::hang : dlrelay::Relay::Mode::blackhole;
    partition_hang_next_ = !partition_hang_next_;
    dlrelay::Relay& relay = *relays_[static_cast<std::size_t>(f.slot)];
    std::optional<Partitioned> cut(std::in_place, relay, mode);
    if (!cut->ok() && mode == dlrelay::Relay::Mode::blackhole) {
      // Not root, or no iptables: every later partition hangs instead, and the JSON says so.
      blackhole_works_ = false;
      note("blackhole partitions fell back to hang: " + relay.last_error());
      cut.reset();
      mode = dlrelay::Relay::Mode::hang;
      cut.emplace(relay, mode);
    }
    if (!cut->ok()) throw std::runtime_error(relay.last_error());
    f.detail = mode == dlrelay::Relay::Mode::hang ? "hang" : "blackhole";
    if (f.key >= 0) f.expiry = server_expiry(f.key, f.pid);
    idle(hold_for());
  } else if (kind == "stall") {
    if (target == nullptr || f.key < 0) return not_injected;
    const bool row = backend_ != "postgres" || stall_row_next_;
    stall_row_next_ = !stall_row_next_;
    if (row) {
      f.detail = backend_ == "sqlite" ? "write lock held by another connection (BEGIN IMMEDIATE)" : "row lock";
      try {
        admin_db().begin_hold(cfg_.table, key_name(run_id_, f.key));
      } catch (const DbError& e) {
        admin_db_.reset();
        note(std::string("a stall was skipped: ") + e.what());
        return not_injected;
      }
      f.t_start = mono_ns();
      f.expiry = server_expiry(f.key, f.pid);
      idle(hold_for());
      admin_db().end_hold();
    } else {
      f.detail = "server backend SIGSTOPped";
      std::vector<long> pids;
      try {
        pids = admin_db().backend_pids(relays_[static_cast<std::size_t>(f.slot)]->upstream_ports());
      } catch (const DbError&) {
        admin_db_.reset();
      }
      if (pids.empty()) return not_injected;
      Stopped stopped(pids);
      f.t_start = mono_ns();
      f.expiry = server_expiry(f.key, f.pid);
      // The library may drop the stuck connections and extend the lease over new ones (new backends, not
      // stopped): then the lease is legitimately still valid. Follow its expiry on the server while the stall
      // lasts, so that the loss signal is measured against the expiry that really held.
      const auto until = std::chrono::steady_clock::now() + hold_for();
      while (std::chrono::steady_clock::now() < until) {
        idle(std::min<std::chrono::milliseconds>(
            50ms, std::chrono::ceil<std::chrono::milliseconds>(until - std::chrono::steady_clock::now())));
        if (!f.expiry) continue;
        if (const auto later = server_expiry(f.key, f.pid); later && *later > *f.expiry) f.expiry = later;
      }
    }
  } else if (kind == "terminate") {
    if (target == nullptr) return not_injected;
    const std::vector<int> ports = relays_[static_cast<std::size_t>(f.slot)]->upstream_ports();
    if (ports.empty()) return not_injected;
    const int port = ports[rng_() % ports.size()];
    bool done = false;
    try {
      done = admin_db().terminate(port);
    } catch (const DbError&) {
      admin_db_.reset();
    }
    if (!done) return not_injected;
    f.detail = backend_ == "postgres" ? "pg_terminate_backend" : "KILL CONNECTION";
  } else if (server_wide) {
    // restart: the server goes away and comes back; failover: the primary dies and its standby takes over,
    // perhaps without the last grants (the command decides how much the standby misses).
    admin_db_.reset();  // its session dies with the server
    std::vector<std::string> env;
    for (char** e = environ; *e != nullptr; ++e) env.emplace_back(*e);
    const bool restart = kind == "restart";
    const std::vector<std::string>& cmds = restart ? cfg_.restart_cmds : cfg_.failover_cmds;
    // Its stdout goes to our stderr: stdout is for the JSON line only.
    const std::size_t which = (restart ? restarts_ : failovers_)++ % cmds.size();
    const pid_t pid = spawn({"/bin/sh", "-c", cmds[which]}, env, -1, true);
    // Waited for even after a Ctrl-C: a server left half restarted would be worse than a late exit.
    int st = 0;
    while (::waitpid(pid, &st, WNOHANG) == 0) {
      reap();
      std::this_thread::sleep_for(20ms);
    }
    f.detail = std::string(restart ? "--restart-cmd #" : "--failover-cmd #") + std::to_string(which + 1) + ": " +
               describe_status(st);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) note("a " + kind + " command failed (" + f.detail + ")");
  } else if (kind == "skew") {
    // A graceful restart of one worker under another wall clock and time zone.
    const int hours = random_skew();
    pending_skew_[static_cast<std::size_t>(f.slot)] = hours;
    target->injected = true;
    target->signal(SIGTERM);
    f.detail = "next start at " +
               (hours == tz_only ? std::string("+0h") : (hours > 0 ? "+" : "") + std::to_string(hours) + "h");
  }
  f.t_end = mono_ns();
  return f;
}

void Torture::shutdown() {
  shutting_down_ = true;
  for (auto& w : workers_)
    if (w) {
      w->signal(SIGCONT);
      w->signal(SIGTERM);
    }
  const auto deadline = std::chrono::steady_clock::now() + std::max<milliseconds>(5s, 4 * cfg_.ttl);
  for (;;) {
    reap();
    if (std::all_of(workers_.begin(), workers_.end(), [](const auto& w) { return !w; })) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      for (auto& w : workers_)
        if (w) {
          w->injected = true;
          w->killed_at = mono_ns();
          last_kill_ = *w->killed_at;
          w->signal(SIGKILL);
          ++shutdown_kills_;
        }
    }
    std::this_thread::sleep_for(10ms);
  }
  for (auto& w : retired_) w->join_reader();
}

int Torture::run() {
  setup();
  const std::int64_t t_start = mono_ns();
  workers_.resize(static_cast<std::size_t>(cfg_.workers));
  const bool skew = std::find(cfg_.faults.begin(), cfg_.faults.end(), "skew") != cfg_.faults.end();
  for (int s = 0; s < cfg_.workers; ++s) start_worker(s, skew && s == cfg_.workers - 1 ? random_skew() : 0);

  const auto run_end =
      std::chrono::steady_clock::now() +
      std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(cfg_.seconds));
  // Faults stop early enough for every one of them to heal and every lease to expire before the end.
  const auto faults_end = run_end - 2 * cfg_.ttl - 1s;
  std::vector<std::string> bag;
  idle(cfg_.ttl);  // let the workers connect and start fighting
  while (!interrupts_.requested() && !cfg_.faults.empty() && std::chrono::steady_clock::now() < faults_end) {
    if (bag.empty()) {
      // Every kind once per round, in a random order: a short run still gets each kind several times.
      bag = cfg_.faults;
      std::shuffle(bag.begin(), bag.end(), rng_);
    }
    const std::string kind = bag.back();
    bag.pop_back();
    Fault f = inject(kind);
    if (f.t_start != 0) {
      ++fault_counts_[kind];
      faults_.push_back(std::move(f));
    }
    idle(random_ms(cfg_.ttl / 4, cfg_.ttl));
  }
  while (!interrupts_.requested() && std::chrono::steady_clock::now() < run_end) idle(50ms);
  shutdown();
  const double elapsed = static_cast<double>(mono_ns() - t_start) / 1e9;

  Record rec;
  rec.t_start = t_start;
  rec.ttl_ns = ttl_ns();
  rec.reconnect_bound_ns = std::chrono::nanoseconds(cfg_.reconnect_bound).count();
  rec.keys = cfg_.keys;
  rec.faults = faults_;
  rec.deaths = deaths_;
  rec.events = log_.take();
  // Leases of killed workers run out by themselves; after that nothing may still hold a key.
  const std::int64_t quiet_from = last_kill_ + ttl_ns() + 200'000'000;
  if (mono_ns() < quiet_from) std::this_thread::sleep_for(std::chrono::nanoseconds(quiet_from - mono_ns()));
  std::vector<std::string> keys;
  for (int k = 0; k < cfg_.keys; ++k) keys.push_back(key_name(run_id_, k));
  const std::vector<distrlock::LockStatus> st = admin_->status(keys);
  for (int k = 0; k < cfg_.keys; ++k)
    if (st[static_cast<std::size_t>(k)].held) rec.leaked_keys.push_back(k);
  return report(rec, analyse(rec), elapsed);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto i = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

double round1(double v) { return std::round(v * 10.0) / 10.0; }

int Torture::report(const Record& rec, const Findings& f, double elapsed_s) {
  const std::uint64_t leaked = rec.leaked_keys.size();
  std::vector<std::string> too_few;
  for (const std::string& k : cfg_.faults)
    if (fault_counts_[k] < cfg_.min_faults) too_few.push_back(k);
  const bool ok = f.overlapping_critical_sections == 0 && f.stale_writes_accepted == 0 && f.duplicate_fences == 0 &&
                  f.late_loss_signals == 0 && f.unavailability_over_bound == 0 && leaked == 0 &&
                  f.worker_crashes == 0 && too_few.empty() && !interrupts_.requested();
  for (const std::string& k : too_few)
    std::cerr << "distrlock-torture: FAILED: fault " << k << " was injected " << fault_counts_[k]
              << " times, fewer than --min-faults " << cfg_.min_faults << " (run longer)\n";
  if (!ok) {
    std::size_t shown = 0;
    for (const Violation& v : f.violations) {
      if (++shown > 5) {
        std::cerr << "distrlock-torture: ... and " << f.violations.size() - 5 << " more violations\n";
        break;
      }
      print_interleaving(std::cerr, rec, v);
    }
  }
  nlohmann::ordered_json j;
  j["backend"] = backend_;
  j["workers"] = cfg_.workers;
  j["keys"] = cfg_.keys;
  j["seconds"] = cfg_.seconds;
  j["ttl_ms"] = cfg_.ttl.count();
  j["seed"] = cfg_.seed;
  j["plant"] = cfg_.plant.empty() ? nullptr : nlohmann::ordered_json(cfg_.plant);
  nlohmann::ordered_json faults = nlohmann::ordered_json::object();
  for (const std::string& k : cfg_.faults) faults[k] = fault_counts_[k];
  j["faults"] = faults;
  j["acquisitions"] = f.acquisitions;
  j["acquire_failures"] = f.acquire_failures;
  j["overlapping_critical_sections"] = f.overlapping_critical_sections;
  j["exempt_sections"] = f.exempt_sections;
  j["overlaps_across_failover"] = f.overlaps_across_failover;
  j["stale_writes_accepted"] = f.stale_writes_accepted;
  j["stale_writes_rejected"] = f.stale_writes_rejected;
  j["writes_accepted"] = f.writes_accepted;
  j["writes_failed"] = f.writes_failed;
  j["duplicate_fences"] = f.duplicate_fences;
  const auto summary = [](const std::vector<double>& v) {
    return nlohmann::ordered_json{{"samples", v.size()},
                                  {"p50", round1(percentile(v, 0.5))},
                                  {"max", round1(v.empty() ? 0 : *std::max_element(v.begin(), v.end()))},
                                  {"min", round1(v.empty() ? 0 : *std::min_element(v.begin(), v.end()))}};
  };
  nlohmann::ordered_json signal = summary(f.loss_signal_ms);
  signal["late"] = f.late_loss_signals;
  // A fault gives no sample when its target finished its work before the loss would have fired.
  signal["faults_measured"] = f.loss_signal_faults;
  nlohmann::ordered_json by_fault = nlohmann::ordered_json::object();
  for (const auto& [kind, v] : f.loss_signal_ms_by_fault) by_fault[kind] = summary(v);
  signal["by_fault"] = by_fault;
  j["lease_loss_signal_ms"] = signal;
  j["max_unavailability_ms"] = round1(f.max_unavailability_ms);
  j["unavailability_bound_ms"] = (cfg_.ttl + cfg_.reconnect_bound).count();
  j["unavailability_over_bound"] = f.unavailability_over_bound;
  j["leaked_locks_at_end"] = leaked;
  j["worker_crashes"] = f.worker_crashes;
  j["skewed_worker_starts"] = skewed_starts_;
  j["skew_max_hours"] = cfg_.skew_hours;
  j["shutdown_kills"] = shutdown_kills_;
  j["elapsed_s"] = std::round(elapsed_s * 1000.0) / 1000.0;
  if (!notes_.empty()) j["notes"] = notes_;
  j["interrupted"] = interrupts_.requested();
  j["passed"] = ok;
  std::cout << j.dump() << std::endl;
  if (interrupts_.requested()) return exit_interrupted;
  return ok ? 0 : exit_failed;
}

}  // namespace
}  // namespace torture

int main(int argc, char** argv) {
  using namespace torture;
  try {
    const Config cfg = parse_args(std::span<char* const>(argv, static_cast<std::size_t>(argc)));
    if (cfg.worker) {
      WorkerConfig w = cfg.w;
      w.db = cfg.db;
      w.table = cfg.table;
      w.keys = cfg.keys;
      w.ttl = cfg.ttl;
      w.seed = cfg.seed;
      w.ignore_stop = cfg.plant == "ignore-stop";
      w.skip_fence_check = cfg.plant == "skip-fence-check";
      return run_worker(w);
    }
    const Interrupts interrupts;  // before any thread starts, so every thread inherits the blocked mask
    Torture t(cfg, interrupts);
    return t.run();
  } catch (const UsageError& e) {
    std::cerr << "distrlock-torture: " << e.what() << " (see --help)\n";
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "distrlock-torture: " << e.what() << "\n";
    return exit_setup;
  }
}
