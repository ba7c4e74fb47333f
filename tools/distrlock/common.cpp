#include "common.hpp"

#include <sys/stat.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>

namespace distrlock::cli {

// ---- the one error line --------------------------------------------------------------------------------

void Reporter::set_key(std::string_view key) { key_ = "\"" + escape(key) + "\""; }

std::string Reporter::line(std::string_view problem, std::string_view hint) const {
  std::string out = command_.empty() ? "distrlock: " : "distrlock " + command_ + ": ";
  out += one_line(problem);
  if (key_ || !database_.empty()) {
    out += " (";
    if (key_) out += "key " + *key_;
    if (key_ && !database_.empty()) out += ", ";
    if (!database_.empty()) out += "database " + database_;
    out += ")";
  }
  if (!hint.empty()) out += "; " + one_line(hint);
  return out;
}

void Reporter::fail(int exit_code, std::string_view problem, std::string_view hint) const {
  throw Failure(exit_code, line(problem, hint));
}

void Reporter::fail(const distrlock::error& e) const {
  const std::string what = reason_of(e);
  const std::error_code ec = e.code();
  const char* hint = "check the database (permissions, disk space, server log)";
  if (ec == errc::already_acquired) {
    hint = "retry later, or pass --wait to queue behind the holder";
  } else if (ec == errc::already_released) {
    hint = "the lease was released, expired or taken over: acquire the key again";
  } else if (ec == errc::timeout || ec == errc::cancelled || ec == errc::unavailable) {
    hint = "check that the database is up and reachable from this host and that --db / DISTRLOCK_DB is right";
  } else if (ec == errc::invalid_argument) {
    hint = "fix the argument (see distrlock --help)";
  } else if (ec == errc::not_migrated) {
    hint = "run `distrlock migrate` once, or drop --no-migrate";
  } else if (ec == errc::conflict) {
    hint = "retry";
  }
  fail(exit_code_for(ec), what, hint);
}

void Reporter::warn(std::string_view problem, std::string_view hint) const {
  const std::string text = line(std::string("warning: ") + std::string(problem), hint);
  std::fprintf(stderr, "%s\n", text.c_str());
}

int exit_code_for(std::error_code ec) noexcept {
  if (ec.category() != distrlock::category()) return exit_unavailable;
  switch (static_cast<errc>(ec.value())) {
    case errc::already_acquired: return exit_busy;
    case errc::already_released: return exit_not_held;
    case errc::invalid_argument: return exit_usage;
    case errc::not_migrated: return exit_config;
    case errc::lease_lost: return exit_lease_lost;
    case errc::timeout:
    case errc::cancelled:
    case errc::unavailable:
    case errc::conflict:
    case errc::backend_error: return exit_unavailable;
  }
  return exit_unavailable;
}

// ---- input ----------------------------------------------------------------------------------------------

milliseconds parse_duration(std::string_view flag, std::string_view text, bool zero_ok, const Reporter& r) {
  const std::string shown = std::string(flag) + " \"" + escape(text) + "\"";
  const char* const syntax = "write e.g. 250ms, 30s, 5m, 1h, or a bare number of seconds";
  std::string_view s = text;
  if (s.starts_with('-')) r.usage(shown + " is negative", std::string("a duration is positive: ") + syntax);
  // number: digits, optionally '.' and more digits
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  std::size_t i = 0;
  std::size_t digits = 0;
  for (; i < s.size() && is_digit(s[i]); ++i) ++digits;
  if (i < s.size() && s[i] == '.') {
    for (++i; i < s.size() && is_digit(s[i]); ++i) ++digits;
  }
  const std::string_view number = s.substr(0, i);
  const std::string_view unit = s.substr(i);
  double per_unit_ms = 0;
  if (unit.empty() || unit == "s") {
    per_unit_ms = 1000;
  } else if (unit == "ms") {
    per_unit_ms = 1;
  } else if (unit == "m") {
    per_unit_ms = 60'000;
  } else if (unit == "h") {
    per_unit_ms = 3'600'000;
  }
  if (digits == 0 || per_unit_ms == 0 || number.size() > 30) r.usage(shown + " is not a duration", syntax);
  const double value = std::strtod(std::string(number).c_str(), nullptr) * per_unit_ms;
  constexpr double max_ms = 365.0 * 24 * 3'600'000;
  if (value > max_ms) r.usage(shown + " is too long", "a duration is at most 365 days (8760h)");
  const auto ms = milliseconds(std::llround(value));
  if (ms.count() == 0 && value > 0) r.usage(shown + " is shorter than 1ms", syntax);
  if (ms.count() == 0 && !zero_ok) r.usage(shown + " must be greater than 0", syntax);
  return ms;
}

void reject_tail(const Invocation& invocation, const Reporter& r) {
  if (!invocation.has_separator) return;
  std::string shown;
  for (const std::string& a : invocation.tail) shown += (shown.empty() ? "\"" : " \"") + escape(a) + "\"";
  r.usage("unexpected arguments after \"--\"" + (shown.empty() ? std::string() : ": " + shown),
          "only `run` takes a command after \"--\"");
}

void check_key(std::string_view key, const Reporter& r) {
  if (key.empty()) r.usage("the key is empty", "a key is 1-255 bytes: pass --key NAME");
  if (key.size() > 255)
    r.usage("the key is " + std::to_string(key.size()) + " bytes long", "a key is 1-255 bytes: use a shorter --key");
}

void check_token(std::string_view token, const Reporter& r) {
  // The same checks serve `acquire --token` (a token the caller chooses) and extend/release (one acquire printed):
  // the advice names both, since an empty value is usually a shell variable that was never set.
  if (token.empty())
    r.usage("the token is empty",
            "pass a token of 1-128 bytes (for extend/release: the one `distrlock acquire` printed; is the shell "
            "variable that holds it set?)");
  if (token.size() > 128)
    r.usage("the token is " + std::to_string(token.size()) + " bytes long", "a token is at most 128 bytes");
}

milliseconds parse_ttl(std::string_view text, const Reporter& r) {
  const milliseconds ttl = parse_duration("--ttl", text, false, r);
  if (ttl < distrlock::min_ttl) {
    r.usage("--ttl \"" + escape(text) + "\" is below the minimum of " + format_duration(distrlock::min_ttl),
            "a shorter lease cannot be extended in time and is lost on every try: pass --ttl " +
                format_duration(distrlock::min_ttl) + " or more (at least ten database round trips)");
  }
  return ttl;
}

// ---- the database ---------------------------------------------------------------------------------------

void settle_globals(GlobalOptions& global, const std::string& command) {
  const Reporter r(command);
  const char* const unset_hint = "an empty value is usually a shell variable that is not set";
  if (global.db_given && global.db.empty())
    r.usage("--db is empty", std::string(unset_hint) + ": pass a database URL, or leave out --db for the default");
  if (const char* env = std::getenv("DISTRLOCK_DB"); !global.db_given && env != nullptr && *env == '\0')
    r.usage("DISTRLOCK_DB is set but empty",
            std::string(unset_hint) + ": set it to a database URL, or unset it for the default");
  if (global.table_given && global.table.empty())
    r.usage("--table is empty", "pass a table name, or leave out --table");
  if (const char* env = std::getenv("DISTRLOCK_TABLE"); !global.table_given && env != nullptr) {
    if (*env == '\0')
      r.usage("DISTRLOCK_TABLE is set but empty", "set it to a table name, or unset it for distributed_locks");
    global.table = env;
  }
  global.timeout = parse_duration("--timeout", global.timeout_text, false, r);
}

std::optional<DatabaseUrl> find_database(const GlobalOptions& global) {
  // An empty --db or DISTRLOCK_DB never selects the default: settle_globals() refuses both.
  if (global.db_given) return global.db.empty() ? std::nullopt : std::optional(DatabaseUrl{global.db, false, {}});
  if (const char* env = std::getenv("DISTRLOCK_DB"); env != nullptr)
    return *env == '\0' ? std::nullopt : std::optional(DatabaseUrl{env, false, {}});
  std::string dir;
  // The XDG base directory spec says relative paths in XDG_* are invalid and must be ignored.
  if (const char* xdg = std::getenv("XDG_STATE_HOME"); xdg != nullptr && *xdg == '/') {
    dir = xdg;
  } else if (const char* home = std::getenv("HOME"); home != nullptr && *home == '/') {
    dir = std::string(home) + "/.local/state";
  } else {
    return std::nullopt;
  }
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  dir += "/distrlock";
  return DatabaseUrl{"sqlite:" + dir + "/locks.db", true, dir};
}

DatabaseUrl resolve_database(const GlobalOptions& global, const Reporter& r) {
  std::optional<DatabaseUrl> db = find_database(global);
  if (!db) {
    r.fail(exit_config, "no database given, and neither $XDG_STATE_HOME nor $HOME is set to find the default one",
           "pass --db URL or set DISTRLOCK_DB");
  }
  return std::move(*db);
}

Reporter make_reporter(std::string command, const GlobalOptions& global) {
  Reporter r(std::move(command));
  if (std::optional<DatabaseUrl> db = find_database(global)) r.set_database(mask_url(db->url));
  return r;
}

std::string reason_of(const distrlock::error& e) {
  std::string_view what = e.what();
  if (what.starts_with("distrlock: ")) what.remove_prefix(11);
  const std::string suffix = ": " + e.code().message();
  if (what.ends_with(suffix)) what.remove_suffix(suffix.size());
  return std::string(what);
}

namespace {

/// mkdir -p, with mode 0700 for what it creates (the XDG spec's mode for state directories).
void make_directories(const std::string& dir, const Reporter& r) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return;
  for (std::size_t slash = dir.find('/', 1);; slash = dir.find('/', slash + 1)) {
    const std::string part = dir.substr(0, slash);
    if (::mkdir(part.c_str(), 0700) != 0 && errno != EEXIST) {
      r.fail(exit_config,
             "cannot create the directory of the default database " + escape(part) + ": " + errno_text(errno),
             "pass --db URL or set DISTRLOCK_DB to a database you can write");
    }
    if (slash == std::string::npos) break;
  }
}

}  // namespace

std::string mask_url(std::string_view url) {
  std::string s(url);
  if (const std::size_t scheme = s.find("://"); scheme != std::string::npos) {
    const std::size_t auth = scheme + 3;
    // The user info ends at the last '@' before the query: a password may hold an unencoded '/'.
    const std::size_t auth_end = std::min(s.find_first_of("?#", auth), s.size());
    const std::size_t at = s.rfind('@', auth_end - 1);
    if (at != std::string::npos && at >= auth) {
      const std::size_t colon = s.find(':', auth);
      if (colon != std::string::npos && colon < at) s.replace(colon + 1, at - colon - 1, "***");
    }
  }
  // password=... in a query string or a libpq key=value string
  for (std::size_t pos = s.find("password"); pos != std::string::npos; pos = s.find("password", pos + 1)) {
    std::size_t i = pos + 8;
    while (i < s.size() && s[i] == ' ') ++i;
    if (i >= s.size() || s[i] != '=') continue;
    ++i;
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t end = i;
    if (end < s.size() && s[end] == '\'') {
      for (++end; end < s.size() && s[end] != '\''; end += s[end] == '\\' ? 2 : 1) {
      }
      end = std::min(end + 1, s.size());
    } else {
      while (end < s.size() && s[end] != ' ' && s[end] != '&') ++end;
    }
    s.replace(i, end - i, "***");
  }
  return s;
}

namespace {

struct LogState {
  std::mutex mu;
  std::deque<std::string> warnings;  // the most recent few
};

LogState& log_state() {
  static LogState state;
  return state;
}

}  // namespace

distrlock::Logger tool_logger() {
  return [](LogLevel level, std::string_view message) {
    LogState& st = log_state();
    std::lock_guard lk(st.mu);
    if (level == LogLevel::error) {
      std::fprintf(stderr, "distrlock: error: %s\n", one_line(message).c_str());
    } else if (level == LogLevel::warning) {
      st.warnings.emplace_back(message);
      if (st.warnings.size() > 16) st.warnings.pop_front();
    }
  };
}

std::string last_library_warning(std::string_view needle) {
  LogState& st = log_state();
  std::lock_guard lk(st.mu);
  for (auto it = st.warnings.rbegin(); it != st.warnings.rend(); ++it)  // newest first
    if (it->find(needle) != std::string::npos) return *it;
  return {};
}

std::string errno_text(int error_number) { return std::error_code(error_number, std::generic_category()).message(); }

namespace {

distrlock::Manager open_manager(const GlobalOptions& global, Reporter& r, std::string owner) {
  const DatabaseUrl db = resolve_database(global, r);
  r.set_database(mask_url(db.url));
  distrlock::Options options;
  options.table = global.table;
  options.owner = std::move(owner);
  options.pool_size = 2;  // the command's own calls and the heartbeat
  options.operation_timeout = global.timeout;
  options.connect_timeout = global.timeout;
  options.logger = tool_logger();
  try {
    distrlock::Manager m = distrlock::Manager::open(db.url, std::move(options));  // no I/O: only validates
    r.set_database(m.masked_url());
    if (db.is_default) make_directories(db.default_dir, r);
    return m;
  } catch (const distrlock::error& e) {
    if (e.code() != errc::invalid_argument) r.fail(e);
    // "open URL: invalid argument: REASON"
    std::string reason = reason_of(e);
    const std::string code_text = ": " + e.code().message() + ": ";
    if (const std::size_t at = reason.find(code_text); at != std::string::npos) reason.erase(0, at + code_text.size());
    if (reason.starts_with("distrlock: ")) reason.erase(0, 11);
    if (const std::string suffix = ": " + e.code().message(); reason.ends_with(suffix))
      reason.erase(reason.size() - suffix.size());
    if (reason.find("table name") != std::string::npos) {
      r.usage(reason, "a --table name is letters, digits and _ (not starting with a digit), optionally schema.name");
    }
    if (reason.find("schema") != std::string::npos || reason.find("table") != std::string::npos) {
      r.usage(reason, "choose another --table (or DISTRLOCK_TABLE)");
    }
    if (reason.find("timeout") != std::string::npos) r.usage(reason, "pass a longer --timeout");
    r.usage(reason,
            "use --db (or DISTRLOCK_DB) sqlite:PATH, postgresql://..., postgres://..., a libpq key=value "
            "string, mysql://... or mariadb://...");
  }
}

}  // namespace

Session::Session(const GlobalOptions& global, Reporter& reporter, std::string owner)
    : global_(global), reporter_(reporter), manager_(open_manager(global, reporter, std::move(owner))) {}

void Session::create_table() {
  if (global_.no_migrate) {
    reporter_.fail(exit_config, "the lock table \"" + escape(global_.table) + "\" does not exist (--no-migrate)",
                   "run `distrlock migrate` once, or drop --no-migrate");
  }
  try {
    manager_.migrate();
  } catch (const distrlock::error& e) {
    if (e.code() == errc::not_migrated) fail_missing_table(e, true);  // its schema or database is missing
    reporter_.fail(e);
  }
}

void Session::fail_missing_table(const distrlock::error& e, bool creating) {
  const std::string table = "\"" + escape(global_.table) + "\"";
  if (creating) {
    reporter_.fail(exit_config,
                   "cannot create the lock table " + table + ": its schema (or MySQL database) does not exist (" +
                       reason_of(e) + ")",
                   "distrlock creates tables, never schemas: create the schema, or choose another --table");
  }
  reporter_.fail(exit_config, "the lock table " + table + " does not exist",
                 "check --table (or DISTRLOCK_TABLE); `distrlock migrate` creates it, and so does the first run, "
                 "acquire, extend or release");
}

std::optional<LockStatus> Session::holder(const std::string& key) {
  try {
    const std::vector<LockStatus> st = manager_.status({key});
    if (!st.empty() && st.front().held) return st.front();
  } catch (const distrlock::error&) {
  }
  return std::nullopt;
}

void Session::fail_busy(const std::string& key, milliseconds waited, int exit_code, bool quiet,
                        std::optional<std::optional<LockStatus>> known_holder) {
  if (quiet) throw Failure(exit_code, {});
  std::string problem =
      waited.count() > 0 ? "the key is still busy after waiting " + format_duration(waited) : "the key is busy";
  std::string hint = waited.count() > 0 ? "retry later, or pass a longer --wait"
                                        : "retry later, or pass --wait DURATION to queue behind the holder";
  const std::optional<LockStatus> st = known_holder ? *known_holder : holder(key);
  if (st) {
    problem += ": held by \"" + escape(st->owner) + "\" for another " + format_duration(st->expires_in);
  } else {
    problem += ": the holder has released it since, or its owner could not be read; retry now";
  }
  reporter_.fail(exit_code, problem, hint);
}

}  // namespace distrlock::cli
