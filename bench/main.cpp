// distrlock-bench: drives the public API from N client threads and reports throughput and latency.
//
//   distrlock-bench --db URL --scenario cycle --clients N --seconds S [--keys K] [--json]
//
// Scenario "cycle": every client thread owns its own Manager with a one-connection pool (so N clients hold N
// connections, as N pgbench clients do) and loops Lock::try_acquire(30s) + Lock::release() on random keys of
// its own, "bench/<client>/<k>" with k < K, so no two clients ever contend. One op is one acquire + release
// cycle, timed with steady_clock from Manager::lock() to the end of release(). Each client first runs a few
// untimed cycles (connect, prepare statements); then all clients start together.
//
// Output: with --json, exactly one line of JSON on stdout; without it, one human-readable line. Latencies go
// into a fixed-size log-linear histogram per client (relative error < 0.8%), so memory does not grow with S.
// Exit status: 0 ok, 1 when any operation failed (counted in "errors"), 64 bad usage.
#include <algorithm>
#include <atomic>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <latch>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "distrlock/distrlock.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int exit_errors = 1;
constexpr int exit_usage = 64;
constexpr int warmup_cycles = 20;
constexpr std::chrono::milliseconds lease_ttl = 30s;
constexpr std::chrono::milliseconds error_backoff = 10ms;  // keeps a dead server from turning into a hot loop

constexpr const char* usage_text =
    "usage: distrlock-bench --db URL --scenario cycle --clients N --seconds S [--keys K] [--json]\n"
    "  --db URL        database URL (default: $DISTRLOCK_DB)\n"
    "  --scenario S    cycle: uncontended try_acquire(30s) + release per op\n"
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

[[noreturn]] void usage_error(const std::string& message) {
  std::cerr << "distrlock-bench: " << message << " (see --help)\n";
  std::exit(exit_usage);
}

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const char* end = text.data() + text.size();
  const auto [ptr, err] = std::from_chars(text.data(), end, value);
  if (err != std::errc() || ptr != end || text.empty()) return std::nullopt;
  return value;
}

Config parse_args(int argc, char** argv) {
  Config cfg;
  std::optional<int> clients;
  std::optional<double> seconds;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::cout << usage_text;
      std::exit(0);
    }
    if (arg == "--json") {
      cfg.json = true;
      continue;
    }
    // Every other option takes a value: "--name value" or "--name=value".
    std::string_view name = arg;
    std::optional<std::string_view> value;
    if (const std::size_t eq = arg.find('='); arg.starts_with("--") && eq != std::string_view::npos) {
      name = arg.substr(0, eq);
      value = arg.substr(eq + 1);
    }
    if (name != "--db" && name != "--scenario" && name != "--clients" && name != "--seconds" && name != "--keys")
      usage_error("unknown argument \"" + std::string(arg) + "\"");
    if (!value) {
      if (i + 1 >= argc) usage_error(std::string(name) + " needs a value");
      value = argv[++i];
    }
    if (name == "--db") {
      if (value->empty()) usage_error("--db needs a non-empty URL");
      cfg.db = *value;
    } else if (name == "--scenario") {
      cfg.scenario = *value;
    } else if (name == "--clients") {
      clients = parse_number<int>(*value);
      if (!clients || *clients < 1 || *clients > 1024)
        usage_error("--clients must be an integer from 1 to 1024, got \"" + std::string(*value) + "\"");
    } else if (name == "--seconds") {
      seconds = parse_number<double>(*value);
      if (!seconds || !(*seconds > 0) || *seconds > 86400)
        usage_error("--seconds must be a number > 0 and <= 86400, got \"" + std::string(*value) + "\"");
    } else {  // --keys
      const auto keys = parse_number<std::uint64_t>(*value);
      if (!keys || *keys < 1) usage_error("--keys must be an integer >= 1, got \"" + std::string(*value) + "\"");
      cfg.keys = *keys;
    }
  }
  if (cfg.db.empty()) {
    if (const char* env = std::getenv("DISTRLOCK_DB"); env != nullptr && *env != '\0') cfg.db = env;
    else usage_error("missing --db URL (and $DISTRLOCK_DB is not set)");
  }
  if (cfg.scenario.empty()) usage_error("missing --scenario");
  if (cfg.scenario != "cycle")
    usage_error("unknown or not yet implemented scenario \"" + cfg.scenario + "\" (available: cycle)");
  if (!clients) usage_error("missing --clients N");
  if (!seconds) usage_error("missing --seconds S");
  cfg.clients = *clients;
  cfg.seconds = *seconds;
  return cfg;
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
  double mean_ns() const noexcept { return count_ == 0 ? 0.0 : static_cast<double>(sum_) / static_cast<double>(count_); }
  double max_ns() const noexcept { return static_cast<double>(max_); }

  /// The value at quantile q (0..1]: the middle of the bucket holding the ceil(q * count)-th smallest value.
  double quantile_ns(double q) const noexcept {
    if (count_ == 0) return 0.0;
    const auto rank = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(count_))));
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
};

/// What the main thread hands the clients once they are all warmed up. Written before `go` is counted
/// down and read after `go.wait()`, which orders the accesses.
struct Schedule {
  Clock::time_point end{};
};

void run_cycle_client(const Config& cfg, int id, ClientResult& out, std::latch& warmed, std::latch& go,
                      const Schedule& schedule) {
  auto note_error = [&out](std::string_view what, std::error_code ec) {
    ++out.errors;
    if (out.first_error.empty()) out.first_error = std::string(what) + ": " + ec.message();
  };

  std::error_code ec;
  std::optional<distrlock::Manager> mgr;
  {
    distrlock::Manager m = distrlock::Manager::open(cfg.db, distrlock::Options{.pool_size = 1}, ec);
    if (!ec) mgr.emplace(std::move(m));
    else note_error("open", ec);
  }

  std::mt19937_64 rng(std::random_device{}() ^ (static_cast<std::uint64_t>(id) << 32));
  std::uniform_int_distribution<std::uint64_t> pick(0, cfg.keys - 1);
  const std::string prefix = "bench/" + std::to_string(id) + "/";
  std::string key = prefix;
  key.reserve(prefix.size() + 20);

  // One acquire + release on a random key. Returns false on an error (already counted).
  auto cycle = [&](Histogram* latency) -> bool {
    char digits[24];
    const auto [end, conv_ec] = std::to_chars(std::begin(digits), std::end(digits), pick(rng));
    key.resize(prefix.size());
    key.append(digits, end);

    const Clock::time_point t0 = Clock::now();
    distrlock::Lock lock = mgr->lock(key, ec);
    if (ec) return note_error("lock", ec), false;
    const bool acquired = lock.try_acquire(lease_ttl, ec);
    if (ec) return note_error("try_acquire", ec), false;
    if (!acquired) {
      ++out.busy;
      return true;
    }
    lock.release(ec);
    const Clock::time_point t1 = Clock::now();
    if (ec) return note_error("release", ec), false;
    if (latency != nullptr) {
      latency->record(static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(t1 - t0).count()));
      ++out.ops;
    }
    return true;
  };

  if (mgr) {
    for (int i = 0; i < warmup_cycles; ++i)
      if (!cycle(nullptr)) break;  // a broken server would make every warm-up cycle wait for its timeout
  }
  out.busy = 0;  // count only the timed run's
  warmed.count_down();
  go.wait();

  if (mgr) {
    while (Clock::now() < schedule.end) {
      if (!cycle(&out.latency)) std::this_thread::sleep_for(error_backoff);
    }
  }
  out.finished = Clock::now();
}

double round1(double v) { return std::round(v * 10.0) / 10.0; }

}  // namespace

int main(int argc, char** argv) {
  const Config cfg = parse_args(argc, argv);

  // Open once up front to validate the URL and create the table; the clients open their own Managers.
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
  std::latch warmed(cfg.clients);
  std::latch go(1);
  Schedule schedule;
  std::vector<std::jthread> threads;
  threads.reserve(results.size());
  for (int i = 0; i < cfg.clients; ++i)
    threads.emplace_back(run_cycle_client, std::cref(cfg), i, std::ref(results[static_cast<std::size_t>(i)]),
                         std::ref(warmed), std::ref(go), std::cref(schedule));

  warmed.wait();
  const Clock::time_point start = Clock::now();
  schedule.end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(cfg.seconds));
  go.count_down();
  for (std::jthread& t : threads) t.join();

  Histogram latency;
  std::uint64_t ops = 0, errors = 0, busy = 0;
  Clock::time_point last_finish = start;
  std::string first_error;
  for (const ClientResult& r : results) {
    latency.merge(r.latency);
    ops += r.ops;
    errors += r.errors;
    busy += r.busy;
    last_finish = std::max(last_finish, r.finished);
    if (first_error.empty()) first_error = r.first_error;
  }
  const double elapsed = std::chrono::duration<double>(last_finish - start).count();
  const double ops_per_sec = elapsed > 0 ? static_cast<double>(ops) / elapsed : 0.0;

  if (cfg.json) {
    nlohmann::ordered_json j;
    j["scenario"] = cfg.scenario;
    j["backend"] = backend;
    j["clients"] = cfg.clients;
    if (cfg.seconds == std::floor(cfg.seconds)) j["seconds"] = static_cast<std::int64_t>(cfg.seconds);
    else j["seconds"] = cfg.seconds;
    j["ops"] = ops;
    j["ops_per_sec"] = round1(ops_per_sec);
    j["latency_us"] = {{"p50", round1(latency.quantile_ns(0.50) / 1e3)},
                       {"p90", round1(latency.quantile_ns(0.90) / 1e3)},
                       {"p99", round1(latency.quantile_ns(0.99) / 1e3)},
                       {"p999", round1(latency.quantile_ns(0.999) / 1e3)},
                       {"max", round1(latency.max_ns() / 1e3)},
                       {"mean", round1(latency.mean_ns() / 1e3)}};
    j["errors"] = errors;
    j["busy"] = busy;
    j["keys"] = cfg.keys;
    j["elapsed_s"] = std::round(elapsed * 1000.0) / 1000.0;
    std::cout << j.dump() << std::endl;
  } else {
    std::printf("%s on %s: %d clients, %.3f s: %llu ops, %.1f ops/s, latency p50 %.1f us, p99 %.1f us, "
                "max %.1f us; %llu errors, %llu busy\n",
                cfg.scenario.c_str(), backend.c_str(), cfg.clients, elapsed, static_cast<unsigned long long>(ops),
                ops_per_sec, latency.quantile_ns(0.50) / 1e3, latency.quantile_ns(0.99) / 1e3,
                latency.max_ns() / 1e3, static_cast<unsigned long long>(errors),
                static_cast<unsigned long long>(busy));
    std::fflush(stdout);
  }
  if (errors > 0) {
    std::cerr << "distrlock-bench: " << errors << " operations failed; first: " << first_error << "\n";
    return exit_errors;
  }
  return 0;
}
