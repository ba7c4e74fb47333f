// What every subcommand of the `distrlock` tool shares: global options, exit codes, duration parsing, the
// database URL and its default, opening a Manager (and creating the table on first use), and the one-line
// error every failure ends in.
//
// Thread safety: the tool is single-threaded apart from the library's heartbeat thread (and `run`'s signal
// watcher while it waits); nothing here is shared with those threads except the logger, which locks.
#pragma once

#include <chrono>
#include <distrlock/distrlock.hpp>
#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace CLI {
class App;
}

namespace distrlock::cli {

using std::chrono::milliseconds;

/// The tool's exit codes (DESIGN.md, "Command-line tool"); the numbers are sysexits.h's where one fits.
enum ExitCode : int {
  exit_ok = 0,
  exit_usage = 64,        ///< bad usage or input (EX_USAGE); nothing was changed
  exit_unavailable = 69,  ///< the database could not be reached or failed (EX_UNAVAILABLE)
  exit_busy = 75,         ///< the key stayed busy for the whole --wait (EX_TEMPFAIL); --conflict-exit-code overrides
  exit_not_held = 76,     ///< extend/release with a token that no longer holds the key
  exit_lease_lost = 77,   ///< run: the lease was lost while the command ran
  exit_config = 78,       ///< configuration: e.g. the table is missing and --no-migrate was given (EX_CONFIG)
};

/// Options that come before the command:
/// `distrlock [--db URL] [--table NAME] [--no-migrate] [--timeout D] COMMAND ...`.
/// settle_globals() fills in what the environment says and checks the rest before anything is opened.
struct GlobalOptions {
  std::string db;                           ///< only when db_given; "" is refused, never a default
  bool db_given = false;                    ///< false: $DISTRLOCK_DB, else the embedded default
  std::string table = "distributed_locks";  ///< --table, else $DISTRLOCK_TABLE, else this; checked by Manager::open
  bool table_given = false;
  bool no_migrate = false;                        ///< true: a missing table is exit 78 instead of being created
  std::string timeout_text = "5s";                ///< --timeout: deadline of each database call and of each connect
  milliseconds timeout{std::chrono::seconds(5)};  ///< timeout_text, parsed by settle_globals()
};

/// Applies $DISTRLOCK_TABLE, parses --timeout, and refuses an empty --db, $DISTRLOCK_DB, --table or
/// $DISTRLOCK_TABLE (exit 64): an empty value is almost always an unset shell variable, and falling back to
/// the embedded default would run the job on every host. Only an absent option and variable select it.
void settle_globals(GlobalOptions& global, const std::string& command);

/// What comes after the first "--" on the command line (run's command, or more status keys).
struct Invocation {
  bool has_separator = false;
  std::vector<std::string> tail;
};

/// A subcommand: its CLI11 app (to know whether it was chosen) and what runs it.
struct Command {
  CLI::App* app = nullptr;
  std::function<int(const Invocation&)> run;
};

Command add_run_command(CLI::App& parent, const GlobalOptions& global);
Command add_acquire_command(CLI::App& parent, const GlobalOptions& global);
Command add_extend_command(CLI::App& parent, const GlobalOptions& global);
Command add_release_command(CLI::App& parent, const GlobalOptions& global);
Command add_status_command(CLI::App& parent, const GlobalOptions& global);
Command add_migrate_command(CLI::App& parent, const GlobalOptions& global);
Command add_prune_command(CLI::App& parent, const GlobalOptions& global);

/// A failure the tool reports and exits with. `line` is the whole stderr line, without the newline; an empty
/// line prints nothing (a busy key under --quiet-conflict).
class Failure : public std::exception {
 public:
  Failure(int exit_code, std::string line) : exit_code_(exit_code), line_(std::move(line)) {}
  int exit_code() const noexcept { return exit_code_; }
  const char* what() const noexcept override { return line_.c_str(); }

 private:
  int exit_code_;
  std::string line_;
};

/// Builds the one error line of a subcommand: `distrlock CMD: PROBLEM (key "K", database URL); HINT`.
/// The key and the (password-masked) database are added once they are known.
class Reporter {
 public:
  explicit Reporter(std::string command) : command_(std::move(command)) {}
  void set_key(std::string_view key);
  void set_database(std::string masked_url) { database_ = std::move(masked_url); }
  const std::string& database() const noexcept { return database_; }

  std::string line(std::string_view problem, std::string_view hint) const;
  [[noreturn]] void fail(int exit_code, std::string_view problem, std::string_view hint) const;
  [[noreturn]] void usage(std::string_view problem, std::string_view hint) const { fail(exit_usage, problem, hint); }
  /// Fails with the exit code and a hint that fit a library error (see exit_code_for).
  [[noreturn]] void fail(const distrlock::error& e) const;
  /// Prints a line that does not end the tool (same format, "warning: " before the problem).
  void warn(std::string_view problem, std::string_view hint) const;

 private:
  std::string command_;
  std::optional<std::string> key_;
  std::string database_;
};

/// The tool's exit code for a library error code.
int exit_code_for(std::error_code ec) noexcept;

/// Parses `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds (decimals allowed: `1.5s`, `0.25`).
/// Negative, zero (unless `zero_ok`), garbage, below 1 ms or above 365 days: exit 64 naming `flag`.
milliseconds parse_duration(std::string_view flag, std::string_view text, bool zero_ok, const Reporter& r);

/// Exit 64 when something followed "--" for a command that takes nothing there.
void reject_tail(const Invocation& invocation, const Reporter& r);

/// Checks a key (1-255 bytes) and a token (1-128 bytes) before anything is opened; exit 64 otherwise.
void check_key(std::string_view key, const Reporter& r);
void check_token(std::string_view token, const Reporter& r);

/// Parses --ttl: a duration of at least distrlock::min_ttl (exit 64 naming the flag and the minimum).
milliseconds parse_ttl(std::string_view text, const Reporter& r);

/// The database URL: --db, else $DISTRLOCK_DB, else sqlite:${XDG_STATE_HOME:-$HOME/.local/state}/distrlock/locks.db.
struct DatabaseUrl {
  std::string url;
  bool is_default = false;
  std::string default_dir;  ///< the directory of the default database (created when missing)
};
DatabaseUrl resolve_database(const GlobalOptions& global, const Reporter& r);
/// The same, or nothing when no default location can be found (no $XDG_STATE_HOME, no $HOME).
std::optional<DatabaseUrl> find_database(const GlobalOptions& global);

/// A Reporter for `command` that already names the database (masked), when one can be resolved: so even
/// errors found before anything is opened say which database they were meant for.
Reporter make_reporter(std::string command, const GlobalOptions& global);

/// The reason in a library error's what(): without the "distrlock: " prefix and the ": <code message>" that
/// std::system_error appends.
std::string reason_of(const distrlock::error& e);

/// The URL with any password replaced by "***", for messages printed before a Manager exists.
std::string mask_url(std::string_view url);

/// Library log lines, as the tool wants them: errors go to stderr (one line each); warnings are kept for the
/// error line that ends the tool (run's lease loss names the heartbeat's last complaint), not printed.
distrlock::Logger tool_logger();
/// The last library warning that contains `needle`, or "".
std::string last_library_warning(std::string_view needle);

/// strerror, thread-safe.
std::string errno_text(int error_number);

/// An open Manager plus what the messages need; creates the lock table on first use.
class Session {
 public:
  /// Resolves the URL, creates the default database's directory, and opens the Manager (no round trip).
  /// Exit 64 for an unknown URL scheme or a bad table name, 78 when no default location can be found.
  Session(const GlobalOptions& global, Reporter& reporter, std::string owner = {});

  distrlock::Manager& manager() { return manager_; }
  const GlobalOptions& global() const noexcept { return global_; }

  /// Runs `op`. If it fails because the lock table does not exist, creates the table (Manager::migrate(),
  /// race-safe) and runs `op` once more, unless --no-migrate was given: then exit 78. Library errors other
  /// than busy and not-held end the tool with their exit code; those two are rethrown for the caller.
  /// Runs `op`, which only reads: a missing table is never created but reported (exit 78, naming the table).
  template <class Op>
  decltype(auto) reading(Op&& op) {
    try {
      return op();
    } catch (const distrlock::error& e) {
      if (e.code() == distrlock::errc::not_migrated) fail_missing_table(e, false);
      reporter_.fail(e);
    }
  }

  template <class Op>
  decltype(auto) with_table(Op&& op) {
    for (int attempt = 0;; ++attempt) {
      try {
        return op();
      } catch (const distrlock::error& e) {
        if (e.code() == distrlock::errc::not_migrated && attempt == 0) {
          create_table();
          continue;
        }
        if (e.code() == distrlock::errc::already_acquired || e.code() == distrlock::errc::already_released) throw;
        reporter_.fail(e);
      }
    }
  }

  /// Who holds `key` now (one status round trip), or nothing when it cannot be read or is free again.
  std::optional<LockStatus> holder(const std::string& key);
  /// Ends the tool for a busy key with `exit_code` and a line naming the holder and its time left (from
  /// `holder`, read when not given). `quiet` (--quiet-conflict): no line and no round trip.
  [[noreturn]] void fail_busy(const std::string& key, milliseconds waited, int exit_code, bool quiet,
                              std::optional<std::optional<LockStatus>> known_holder = std::nullopt);

 private:
  void create_table();
  /// Exit 78 for a table that does not exist (`creating`: nor could it be created, as its schema or database
  /// is missing).
  [[noreturn]] void fail_missing_table(const distrlock::error& e, bool creating);

  const GlobalOptions& global_;
  Reporter& reporter_;
  distrlock::Manager manager_;
};

/// "850ms", "24.8s", "4m05s", "2h03m".
std::string format_duration(milliseconds d);

/// Bytes made safe for a terminal and quoted contexts: valid UTF-8 text stays, `"` and `\` are escaped, and
/// control characters and invalid bytes become \xNN.
std::string escape(std::string_view bytes);

/// Terminal columns of text made by escape(): East Asian wide characters count 2, combining marks 0.
std::size_t display_width(std::string_view escaped);
/// The text cut to at most `max_width` columns, ending in "…" when it was cut (never inside an escape).
std::string fit_width(std::string_view escaped, std::size_t max_width);

/// A JSON string literal. Invalid UTF-8 becomes U+FFFD (see is_valid_utf8 for when to add an exact form).
std::string json_string(std::string_view bytes);
bool is_valid_utf8(std::string_view bytes) noexcept;
std::string to_hex(std::string_view bytes);

/// Folds a multi-line message (native database errors often are) into one line.
std::string one_line(std::string_view text);

}  // namespace distrlock::cli
