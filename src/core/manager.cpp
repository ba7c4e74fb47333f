#include "distrlock/manager.hpp"

#include <cstdio>
#include <map>
#include <mutex>

#include "core/state.hpp"
#include "core/util.hpp"

#ifdef DISTRLOCK_WITH_POSTGRES
#include "backends/postgres/pg_backend.hpp"
#endif
#ifdef DISTRLOCK_WITH_SQLITE
#include "backends/sqlite/sqlite_backend.hpp"
#endif
#ifdef DISTRLOCK_WITH_MYSQL
#include "backends/mysql/mysql_backend.hpp"
#endif

namespace distrlock {
namespace detail {

namespace {
thread_local std::string last_detail;
thread_local bool last_call_sent_nothing = false;
}  // namespace

void set_last_detail(std::string detail) { last_detail = std::move(detail); }
std::string take_last_detail() { return std::exchange(last_detail, std::string()); }
void set_nothing_sent(bool nothing_sent) noexcept { last_call_sent_nothing = nothing_sent; }
bool nothing_sent() noexcept { return last_call_sent_nothing; }

std::error_code fail(std::error_code& ec, errc e, std::string detail) {
  set_last_detail(std::move(detail));
  ec = e;
  return ec;
}

void throw_error(std::error_code ec, const std::string& what) {
  const std::string detail = take_last_detail();
  throw error(ec, "distrlock: " + what + ": " + ec.message() + (detail.empty() ? "" : ": " + detail));
}

std::string describe(std::string_view key, std::string_view token) {
  std::string s = "key=\"" + printable(key) + "\"";
  if (!token.empty()) s += " token=" + printable(token);
  return s;
}

void ManagerState::log(LogLevel level, const std::string& message) const noexcept {
  try {
    options.logger(level, message);
  } catch (...) {  // a throwing logger must not take the heartbeat or a destructor down with it
  }
}

OpContext ManagerState::context(const Call& call, milliseconds extra) const {
  return OpContext{call.deadline.value_or(Clock::now() + extra + options.operation_timeout), call.stop,
                   call.connection};
}

Manager ManagerAccess::open_with_backend(std::unique_ptr<Backend> backend, Options options, std::string masked_url) {
  if (options.owner.empty()) options.owner = default_owner();
  if (!options.logger) options.logger = stderr_logger();
  auto state = std::make_shared<ManagerState>();
  state->masked_url = std::move(masked_url);
  state->backend = std::move(backend);
  state->keeper = std::make_shared<Keeper>(state->backend, options.logger, state->masked_url, options.operation_timeout);
  state->options = std::move(options);
  return Manager(std::move(state));
}

}  // namespace detail

Logger stderr_logger(LogLevel min_level) {
  return [min_level](LogLevel level, std::string_view message) {
    if (level < min_level) return;
    static std::mutex mu;  // keep concurrent lines whole
    const char* name = level == LogLevel::error ? "error" : level == LogLevel::warning ? "warning" : "info";
    std::lock_guard lk(mu);
    std::fprintf(stderr, "distrlock: %s: %.*s\n", name, static_cast<int>(message.size()), message.data());
  };
}

using detail::fail;
using detail::throw_error;

Manager::Manager(std::shared_ptr<detail::ManagerState> state) noexcept : state_(std::move(state)) {}

Manager Manager::open(std::string_view url, Options options) {
  std::error_code ec;
  Manager m = open(url, std::move(options), ec);
  if (ec) throw_error(ec, "open " + detail::mask_password(url));
  return m;
}

Manager Manager::open(std::string_view url, Options options, std::error_code& ec) noexcept {
  ec.clear();
  try {
    const std::string masked = detail::mask_password(url);
    std::string reason;
    const std::vector<std::string> table = detail::parse_table_name(options.table, reason);
    if (table.empty()) return (fail(ec, errc::invalid_argument, reason), Manager(nullptr));
    if (options.pool_size == 0) return (fail(ec, errc::invalid_argument, "pool_size must be >= 1"), Manager(nullptr));
    if (options.operation_timeout <= milliseconds{0} || options.connect_timeout <= milliseconds{0})
      return (fail(ec, errc::invalid_argument, "operation_timeout and connect_timeout must be > 0"), Manager(nullptr));
    if (options.owner.empty()) options.owner = detail::default_owner();
    if (!options.logger) options.logger = stderr_logger();

    auto state = std::make_shared<detail::ManagerState>();
    state->masked_url = masked;
    const bool is_pg_url = url.starts_with("postgresql://") || url.starts_with("postgres://");
    const bool is_pg_kv = url.find("://") == std::string_view::npos && url.find('=') != std::string_view::npos &&
                          !url.starts_with("sqlite:");
    [[maybe_unused]] auto not_built = [&](const char* which) {
      fail(ec, errc::invalid_argument, std::string("this build of distrlock has no ") + which + " backend: " + masked);
      return Manager(nullptr);
    };
    if (is_pg_url || is_pg_kv) {
#ifdef DISTRLOCK_WITH_POSTGRES
      state->backend = detail::make_postgres_backend(std::string(url), options, table);
#else
      return not_built("PostgreSQL");
#endif
    } else if (url.starts_with("sqlite:")) {
#ifdef DISTRLOCK_WITH_SQLITE
      state->backend = detail::make_sqlite_backend(std::string(url.substr(7)), options, table);
#else
      return not_built("SQLite");
#endif
    } else if (url.starts_with("mysql://") || url.starts_with("mariadb://")) {
#ifdef DISTRLOCK_WITH_MYSQL
      state->backend = detail::make_mysql_backend(std::string(url), options, table);
#else
      return not_built("MySQL/MariaDB");
#endif
    } else {
      const std::size_t colon = url.find(':');
      const std::string scheme(url.substr(0, colon == std::string_view::npos ? url.size() : colon));
      fail(ec, errc::invalid_argument,
           "unknown database URL scheme \"" + detail::printable(scheme) +
               "\" (expected sqlite:PATH, postgresql://, postgres://, a libpq key=value string, mysql:// or "
               "mariadb://)");
      return Manager(nullptr);
    }
    state->keeper =
        std::make_shared<detail::Keeper>(state->backend, options.logger, masked, options.operation_timeout);
    state->options = std::move(options);
    return Manager(std::move(state));
  } catch (const error& e) {
    fail(ec, errc::invalid_argument, e.what());
    return Manager(nullptr);
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
    return Manager(nullptr);
  }
}

std::vector<Migration> Manager::migrations() const { return state_->backend->migrations(); }

void Manager::migrate(const Call& call) {
  std::error_code ec;
  migrate(ec, call);
  if (ec) throw_error(ec, "migrate " + state_->masked_url);
}

void Manager::migrate(std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  state_->backend->migrate(state_->context(call), ec);
}

PruneResult Manager::prune(milliseconds idle, const Call& call) {
  std::error_code ec;
  PruneResult out = prune(idle, ec, call);
  if (ec) throw_error(ec, "prune " + state_->masked_url);
  return out;
}

PruneResult Manager::prune(milliseconds idle, std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  if (idle < milliseconds::zero()) {
    detail::fail(ec, errc::invalid_argument, "prune: idle must not be negative (got " + std::to_string(idle.count()) + " ms)");
    return {};
  }
  return state_->backend->prune(state_->context(call), idle, ec);
}

void Manager::migrate_down(const Call& call) {
  std::error_code ec;
  migrate_down(ec, call);
  if (ec) throw_error(ec, "migrate down " + state_->masked_url);
}

void Manager::migrate_down(std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  state_->backend->migrate_down(state_->context(call), ec);
}

std::vector<LockStatus> Manager::status(const std::vector<std::string>& keys, const Call& call) {
  std::error_code ec;
  std::vector<LockStatus> out = status(keys, ec, call);
  if (ec) throw_error(ec, "status on " + state_->masked_url);
  return out;
}

std::vector<LockStatus> Manager::status(const std::vector<std::string>& keys, std::error_code& ec,
                                        const Call& call) noexcept {
  ec.clear();
  try {
    for (const std::string& key : keys) {
      if (std::string reason = detail::check_key(key); !reason.empty()) {
        fail(ec, errc::invalid_argument, reason);
        return {};
      }
    }
    std::vector<LockStatus> found = state_->backend->inspect(state_->context(call), keys, ec);
    if (ec) return {};
    for (LockStatus& st : found) {
      if (st.held) continue;
      st.owner.clear();  // a released or expired lease has no owner and no time left, whatever the row says
      st.expires_in = milliseconds{0};
    }
    if (keys.empty()) return found;
    // One entry per requested key, in the caller's order; a key the table has never seen is free, fence 0.
    std::map<std::string, LockStatus> by_key;
    for (LockStatus& st : found) by_key.emplace(st.key, std::move(st));
    std::vector<LockStatus> out;
    out.reserve(keys.size());
    for (const std::string& key : keys) {
      const auto it = by_key.find(key);
      out.push_back(it != by_key.end() ? it->second : LockStatus{.key = key});
    }
    return out;
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
    return {};
  }
}

Lock Manager::adopt(std::string key, std::string token) const {
  std::error_code ec;
  Lock l = adopt(std::move(key), std::move(token), ec);
  if (ec) throw_error(ec, "adopt");
  return l;
}

Lock Manager::adopt(std::string key, std::string token, std::error_code& ec) const noexcept {
  Lock l = lock(std::move(key), ec);
  if (ec) return l;
  if (std::string reason = detail::check_token(token); !reason.empty()) {
    fail(ec, errc::invalid_argument, reason);
    return l;
  }
  l.token_ = std::move(token);
  return l;
}

Lock Manager::lock(std::string key) const {
  std::error_code ec;
  Lock l = lock(std::move(key), ec);
  if (ec) throw_error(ec, "lock");
  return l;
}

Lock Manager::lock(std::string key, std::error_code& ec) const noexcept {
  ec.clear();
  if (std::string reason = detail::check_key(key); !reason.empty()) fail(ec, errc::invalid_argument, reason);
  return Lock(state_, std::move(key));
}

const std::string& Manager::masked_url() const noexcept { return state_->masked_url; }
std::string_view Manager::backend_name() const noexcept { return state_->backend->name(); }

void Manager::throw_exclusive_error(std::error_code ec, const std::string& key) {
  if (ec == errc::lease_lost) detail::set_last_detail("the work's result was discarded");
  throw_error(ec, "do_exclusively " + detail::describe(key, {}));
}

}  // namespace distrlock
