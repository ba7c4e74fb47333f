// distrlock-bench: drives the public API from N client threads and reports throughput and latency.
//
//   distrlock-bench --db URL --scenario cycle|extend --clients N --seconds S [--keys K] [--json]
//
// Scenario "cycle": every client thread owns its own Manager with a one-connection pool (so N clients hold N
// connections, as N pgbench clients do) and loops Lock::try_acquire(30s) + Lock::release() on random keys of
// its own, "bench/<client>/<k>" with k < K, so no two clients ever contend. One op is one acquire + release
// cycle, timed with steady_clock from Manager::lock() to the end of release(). Each client first runs a few
// untimed cycles (connect, prepare statements); then all clients start together.
//
// Scenario "extend": every client holds one key of its own, "bench/<client>/extend/<random>", taken with
// Lock::try_acquire(30s) before the warm-up, and loops Lock::extend(30s) on it. One op is one extend: what
// a heartbeat round costs a holder of one lease (bench/replication.sh compares it across replication modes).
// The key is released at the end, so runs one after the other never find it busy.
//
// Output: with --json, exactly one line of JSON on stdout; without it, one human-readable line. Latencies go
// into a fixed-size log-linear histogram per client (relative error < 0.8%), so memory does not grow with S.
// Exit status: 0 ok, 1 when any operation failed (counted in "errors"), 64 bad usage.
#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iomanip>
#include <iostream>
#include <latch>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "distrlock/distrlock.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int exit_errors = 1;
constexpr int exit_usage = 64;
constexpr int warmup_cycles = 20;
constexpr std::chrono::milliseconds lease_ttl = 30s;
constexpr std::chrono::milliseconds error_backoff = 10ms;  // keeps a dead server from turning into a hot loop

constexpr int max_clients = 1024;
constexpr double max_seconds = 86400;

constexpr const char* usage_text =
    "usage: distrlock-bench --db URL --scenario cycle|extend --clients N --seconds S [--keys K] [--json]\n"
    "  --db URL        database URL (default: $DISTRLOCK_DB)\n"
    "  --scenario S    cycle: uncontended try_acquire(30s) + release per op\n"
    "                  extend: extend(30s) of one held key per client per op\n"
    "  --clients N     client threads, each with its own Manager and one connection (1-1024)\n"
    "  --seconds S     timed run length, after a short warm-up (> 0, fractions allowed)\n"
    "  --keys K        random keys per client (default 100000)\n"
    "  --json          print only one JSON object instead of a human-readable line\n"
    "exit: 0 ok, 1 some operation failed, 64 bad usage\n";

struct Config {
  std::string db;
  std::string scenario;
  int clients = 0;
  double seconds = 0;
  std::uint64_t keys = 100000;
  bool json = false;
};

/// A usage mistake: main() prints it as one line and exits 64.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// The whole of `text` as a number, or nothing.
template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const char* end = std::to_address(text.end());
  const auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (err != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

constexpr std::array<std::string_view, 5> value_options = {"--db", "--scenario", "--clients", "--seconds", "--keys"};

/// What parse_args() collects before checking that nothing is missing.
struct Parsed {
  Config cfg;
  std::optional<int> clients;
  std::optional<double> seconds;
};

void apply_option(std::string_view name, std::string_view value, Parsed& p) {
  const auto bad = [&](const char* rule) {
    return UsageError(std::string(name) + " must be " + rule + ", got \"" + std::string(value) + "\"");
  };
  if (name == "--db") {
    if (value.empty()) throw bad("a non-empty URL");
    p.cfg.db = value;
  } else if (name == "--scenario") {
    p.cfg.scenario = value;
  } else if (name == "--clients") {
    p.clients = parse_number<int>(value);
    if (!p.clients || *p.clients < 1 || *p.clients > max_clients) throw bad("an integer from 1 to 1024");
  } else if (name == "--seconds") {
    p.seconds = parse_number<double>(value);
    if (!p.seconds || !(*p.seconds > 0) || *p.seconds > max_seconds) throw bad("a number > 0 and <= 86400");
  } else if (name == "--keys") {
    const auto keys = parse_number<std::uint64_t>(value);
    if (!keys || *keys < 1) throw bad("an integer >= 1");
    p.cfg.keys = *keys;
  } else {
    throw UsageError("unknown argument \"" + std::string(name) + "\"");
  }
}

/// Returns nothing when --help was asked for (and printed).
std::optional<Config> parse_args(std::span<char* const> args) {
  Parsed p;
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string_view arg = args[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage_text;
      return std::nullopt;
    }
    if (arg == "--json") {
      p.cfg.json = true;
      continue;
    }
    // Every other option takes a value: "--name value" or "--name=value".
    const std::size_t eq = arg.find('=');
    if (arg.starts_with("--") && eq != std::string_view::npos) {
      apply_option(arg.substr(0, eq), arg.substr(eq + 1), p);
    } else if (!arg.starts_with("--")) {
      throw UsageError("unexpected argument \"" + std::string(arg) + "\"");
    } else if (i + 1 < args.size()) {
      apply_option(arg, args[++i], p);
    } else if (std::find(std::begin(value_options), std::end(value_options), arg) != std::end(value_options)) {
      throw UsageError(std::string(arg) + " needs a value");
    } else {
      throw UsageError("unknown argument \"" + std::string(arg) + "\"");
    }
  }
  if (p.cfg.db.empty()) {
    // Read before any thread starts, so getenv's lack of thread safety cannot bite.
    const char* env = std::getenv("DISTRLOCK_DB");  // NOLINT(concurrency-mt-unsafe)
    if (env == nullptr || *env == '\0') throw UsageError("missing --db URL (and $DISTRLOCK_DB is not set)");
    p.cfg.db = env;
  }
  if (p.cfg.scenario.empty()) throw UsageError("missing --scenario");
  if (p.cfg.scenario != "cycle" && p.cfg.scenario != "extend")
    throw UsageError("unknown or not yet implemented scenario \"" + p.cfg.scenario + "\" (available: cycle, extend)");
  if (!p.clients) throw UsageError("missing --clients N");
  if (!p.seconds) throw UsageError("missing --seconds S");
  p.cfg.clients = *p.clients;
  p.cfg.seconds = *p.seconds;
  return p.cfg;
}

/// Log-linear latency histogram in nanoseconds: exact below 128 ns, then 128 buckets per power of two, so
/// any recorded value is known to within 1/128 of itself. Fixed size (~58 KiB), whatever the run length.
class Histogram {
 public:
  Histogram() : counts_(bucket_count, 0) {}

  void record(std::uint64_t ns) noexcept {
    ++counts_[index(ns)];
    ++count_;
    sum_ += ns;
    max_ = std::max(max_, ns);
  }

  void merge(const Histogram& other) noexcept {
    for (std::size_t i = 0; i < bucket_count; ++i) counts_[i] += other.counts_[i];
    count_ += other.count_;
    sum_ += other.sum_;
    max_ = std::max(max_, other.max_);
  }

  std::uint64_t count() const noexcept { return count_; }
  double mean_ns() const noexcept {
    return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_);
  }
  double max_ns() const noexcept { return static_cast<double>(max_); }

  /// The value at quantile q (0..1]: the middle of the bucket holding the ceil(q * count)-th smallest value.
  double quantile_ns(double q) const noexcept {
    if (count_ == 0) return 0.0;
    const auto rank =
        std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < bucket_count; ++i) {
      seen += counts_[i];
      if (seen >= rank) return std::min(middle(i), max_ns());
    }
    return max_ns();
  }

 private:
  static constexpr int sub_bits = 7;
  static constexpr std::uint64_t sub = std::uint64_t{1} << sub_bits;
  static constexpr std::size_t bucket_count = (64 - sub_bits + 1) * sub;

  static std::size_t index(std::uint64_t v) noexcept {
    if (v < sub) return static_cast<std::size_t>(v);
    const int shift = static_cast<int>(std::bit_width(v)) - 1 - sub_bits;
    return static_cast<std::size_t>(shift + 1) * sub + static_cast<std::size_t>((v >> shift) - sub);
  }

  static double middle(std::size_t i) noexcept {
    if (i < sub) return static_cast<double>(i);
    const int shift = static_cast<int>(i / sub) - 1;
    const double low = std::ldexp(static_cast<double>(i % sub + sub), shift);
    return low + (std::ldexp(1.0, shift) - 1.0) / 2.0;
  }

  std::vector<std::uint64_t> counts_;
  std::uint64_t count_ = 0;
  std::uint64_t sum_ = 0;
  std::uint64_t max_ = 0;
};

struct ClientResult {
  Histogram latency;
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
  std::uint64_t busy = 0;  // try_acquire said "held by another token": a stale lease, never expected here
  Clock::time_point finished{};
  std::string first_error;

  void note_error(std::string_view what, const std::string& why) {
    ++errors;
    if (first_error.empty()) first_error = std::string(what) + ": " + why;
  }
};

/// Start and stop for every client. The main thread writes `end` before counting `go` down and the clients
/// read it after go.wait(), which orders the accesses.
struct Schedule {
  std::latch warmed;
  std::latch go{1};
  Clock::time_point end{};

  explicit Schedule(int clients) : warmed(clients) {}
};

/// One client of the "cycle" scenario: its own Manager with one connection, random keys of its own.
class CycleClient {
 public:
  CycleClient(const Config& cfg, int id, ClientResult& out)
      : extend_(cfg.scenario == "extend"),
        out_(out),
        rng_(std::random_device{}() ^ (static_cast<std::uint64_t>(id) << 32U)),
        pick_(0, cfg.keys - 1),
        prefix_("bench/" + std::to_string(id) + "/") {
    std::error_code ec;
    distrlock::Manager m = distrlock::Manager::open(cfg.db, distrlock::Options{.pool_size = 1}, ec);
    if (ec) {
      out_.note_error("open", ec.message());
      return;
    }
    mgr_.emplace(std::move(m));
    key_.reserve(prefix_.size() + 20);
  }

  bool ready() const noexcept { return mgr_.has_value(); }

  /// Releases what the scenario still holds (extend's key), untimed.
  void finish() {
    if (!held_) return;
    std::error_code ec;
    held_->release(ec);
    held_.reset();
    if (ec) failed("release", ec);
  }

  /// One op of the scenario, timed into `latency` unless it is null (warm-up). Returns false on an error, which
  /// is counted.
  bool op(Histogram* latency) { return extend_ ? extend(latency) : cycle(latency); }

 private:
  /// One extend(30s) of this client's held key; the first call takes the key (untimed).
  bool extend(Histogram* latency) {
    if (!held_) {
      bool ok = true;
      held_ = take(prefix_ + "extend/" + std::to_string(pick_(rng_)), ok);
      if (!held_) return ok;
    }
    std::error_code ec;
    const Clock::time_point t0 = Clock::now();
    held_->extend(lease_ttl, ec);
    const Clock::time_point t1 = Clock::now();
    if (ec) {
      held_.reset();  // take the key again on the next op
      return failed("extend", ec);
    }
    timed(latency, t0, t1);
    return true;
  }

  /// One try_acquire + release on a random key.
  bool cycle(Histogram* latency) {
    std::array<char, 24> digits{};
    const auto conv = std::to_chars(digits.begin(), digits.end(), pick_(rng_));
    key_.assign(prefix_).append(digits.data(), conv.ptr);

    const Clock::time_point t0 = Clock::now();
    bool ok = true;
    std::optional<distrlock::Lock> lock = take(key_, ok);
    if (!lock) return ok;
    std::error_code ec;
    lock->release(ec);
    const Clock::time_point t1 = Clock::now();
    if (ec) return failed("release", ec);
    timed(latency, t0, t1);
    return true;
  }

  /// `key`, acquired for lease_ttl. Empty when it was busy (counted; `ok` stays true) or a call failed (counted;
  /// `ok` false).
  std::optional<distrlock::Lock> take(const std::string& key, bool& ok) {
    std::error_code ec;
    distrlock::Lock lock = mgr_->lock(key, ec);
    if (ec) {
      ok = failed("lock", ec);
      return std::nullopt;
    }
    const bool acquired = lock.try_acquire(lease_ttl, ec);
    if (ec) {
      ok = failed("try_acquire", ec);
      return std::nullopt;
    }
    if (!acquired) {
      ++out_.busy;
      return std::nullopt;
    }
    return lock;
  }

  /// Counts one op and records its latency, unless it is warm-up (`latency` null).
  void timed(Histogram* latency, Clock::time_point t0, Clock::time_point t1) {
    if (latency == nullptr) return;
    latency->record(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
    ++out_.ops;
  }

  bool failed(std::string_view what, std::error_code ec) {
    out_.note_error(what, ec.message());
    return false;
  }

  bool extend_;
  ClientResult& out_;
  std::optional<distrlock::Manager> mgr_;
  std::optional<distrlock::Lock> held_;  // extend: this client's key
  std::mt19937_64 rng_;
  std::uniform_int_distribution<std::uint64_t> pick_;
  std::string prefix_;
  std::string key_;
};

void run_cycle_client(const Config& cfg, int id, ClientResult& out, Schedule& schedule) noexcept {
  bool arrived = false;
  try {
    CycleClient client(cfg, id, out);
    if (client.ready()) {
      for (int i = 0; i < warmup_cycles; ++i)
        if (!client.op(nullptr)) break;  // a dead server would make every warm-up cycle wait for its timeout
    }
    out.busy = 0;  // count only the timed run's
    arrived = true;
    schedule.warmed.count_down();
    schedule.go.wait();
    if (client.ready()) {
      while (Clock::now() < schedule.end)
        if (!client.op(&out.latency)) std::this_thread::sleep_for(error_backoff);
      client.finish();
    }
  } catch (const std::exception& e) {
    out.note_error("client thread", e.what());
    if (!arrived) schedule.warmed.count_down();
  }
  out.finished = Clock::now();
}

double round1(double v) { return std::round(v * 10.0) / 10.0; }

struct Totals {
  Histogram latency;
  std::uint64_t ops = 0;
  std::uint64_t errors = 0;
  std::uint64_t busy = 0;
  double elapsed = 0;
  std::string first_error;
};

Totals add_up(const std::vector<ClientResult>& results, Clock::time_point start) {
  Totals t;
  Clock::time_point last_finish = start;
  for (const ClientResult& r : results) {
    t.latency.merge(r.latency);
    t.ops += r.ops;
    t.errors += r.errors;
    t.busy += r.busy;
    last_finish = std::max(last_finish, r.finished);
    if (t.first_error.empty()) t.first_error = r.first_error;
  }
  t.elapsed = std::chrono::duration<double>(last_finish - start).count();
  return t;
}

void report(const Config& cfg, std::string_view backend, const Totals& t) {
  const double ops_per_sec = t.elapsed > 0 ? static_cast<double>(t.ops) / t.elapsed : 0.0;
  const auto us = [&t](double q) { return round1(t.latency.quantile_ns(q) / 1e3); };
  if (cfg.json) {
    nlohmann::ordered_json j;
    j["scenario"] = cfg.scenario;
    j["backend"] = backend;
    j["clients"] = cfg.clients;
    if (cfg.seconds == std::floor(cfg.seconds))
      j["seconds"] = static_cast<std::int64_t>(cfg.seconds);
    else
      j["seconds"] = cfg.seconds;
    j["ops"] = t.ops;
    j["ops_per_sec"] = round1(ops_per_sec);
    j["latency_us"] = {{"p50", us(0.50)},
                       {"p90", us(0.90)},
                       {"p99", us(0.99)},
                       {"p999", us(0.999)},
                       {"max", round1(t.latency.max_ns() / 1e3)},
                       {"mean", round1(t.latency.mean_ns() / 1e3)}};
    j["errors"] = t.errors;
    j["busy"] = t.busy;
    j["keys"] = cfg.keys;
    j["elapsed_s"] = std::round(t.elapsed * 1000.0) / 1000.0;
    std::cout << j.dump() << std::endl;
  } else {
    std::cout << std::fixed << std::setprecision(1) << cfg.scenario << " on " << backend << ": " << cfg.clients
              << " clients, " << std::setprecision(3) << t.elapsed << " s: " << t.ops << " ops, "
              << std::setprecision(1) << ops_per_sec << " ops/s, latency p50 " << us(0.50) << " us, p99 " << us(0.99)
              << " us, max " << t.latency.max_ns() / 1e3 << " us; " << t.errors << " errors, " << t.busy << " busy"
              << std::endl;
  }
}

int run(const Config& cfg) {
  // Open once up front to check the URL and create the table; the clients open their own Managers.
  std::string backend;
  {
    std::error_code ec;
    distrlock::Manager setup = distrlock::Manager::open(cfg.db, distrlock::Options{.pool_size = 1}, ec);
    if (ec) {
      std::cerr << "distrlock-bench: cannot open --db: " << ec.message() << "\n";
      return ec == distrlock::errc::invalid_argument ? exit_usage : exit_errors;
    }
    setup.migrate(ec);
    if (ec) {
      std::cerr << "distrlock-bench: migrate() on " << setup.masked_url() << " failed: " << ec.message() << "\n";
      return exit_errors;
    }
    backend = setup.backend_name();
  }

  std::vector<ClientResult> results(static_cast<std::size_t>(cfg.clients));
  Schedule schedule(cfg.clients);
  Clock::time_point start;
  {
    std::vector<std::jthread> threads;
    threads.reserve(results.size());
    for (int i = 0; i < cfg.clients; ++i)
      threads.emplace_back(run_cycle_client, std::cref(cfg), i, std::ref(results[static_cast<std::size_t>(i)]),
                           std::ref(schedule));
    schedule.warmed.wait();
    start = Clock::now();
    schedule.end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.seconds));
    schedule.go.count_down();
  }  // joins every client

  const Totals totals = add_up(results, start);
  report(cfg, backend, totals);
  if (totals.errors > 0) {
    std::cerr << "distrlock-bench: " << totals.errors << " operations failed; first: " << totals.first_error << "\n";
    return exit_errors;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::optional<Config> cfg = parse_args(std::span<char* const>(argv, static_cast<std::size_t>(argc)));
    return cfg ? run(*cfg) : 0;
  } catch (const UsageError& e) {
    std::cerr << "distrlock-bench: " << e.what() << " (see --help)\n";
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "distrlock-bench: " << e.what() << "\n";
    return exit_errors;
  }
}
