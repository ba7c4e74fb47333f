// distrlock: run a command, or take a lease, on only one host at a time (flock(1), across machines).
//
// main() only parses the command line and dispatches: each subcommand lives in its own file with its own
// options struct, and every failure ends as one stderr line and an exit code (common.hpp).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "common.hpp"

namespace {

using distrlock::cli::Command;
using distrlock::cli::exit_usage;
using distrlock::cli::Failure;
using distrlock::cli::GlobalOptions;
using distrlock::cli::Invocation;
using distrlock::cli::one_line;

constexpr const char* footer =
    R"(Database URLs: sqlite:PATH | postgresql://... (or postgres://, or a libpq key=value string) |
  mysql://user:pass@host:port/db (or mariadb://). Default: $DISTRLOCK_DB, else
  sqlite:${XDG_STATE_HOME:-~/.local/state}/distrlock/locks.db. An empty --db or DISTRLOCK_DB is an error.
Durations: 250ms, 30s, 5m, 1h; a bare number is seconds. --ttl >= 100ms; --extend-every < ttl - ttl/5;
  --kill-after < ttl/5.
Exit codes: 0 ok (run: the command's status, 128+N if it died of signal N) | 64 bad usage or input |
  69 database unreachable or failed | 75 busy (--conflict-exit-code overrides) |
  76 not held (extend/release with a token that no longer holds the key) | 77 lease lost while the command ran |
  78 configuration (table missing with --no-migrate or for status; schema missing) |
  128+N interrupted by signal N while waiting for the key.
See docs/cli.md for the full reference.)";

/// The first word of `args` that is not an option or an option's value: what the user meant as the command.
std::string_view command_word(const std::vector<const char*>& args) {
  for (std::size_t i = 1; i < args.size(); ++i) {
    const std::string_view a = args[i];
    if (a == "--db" || a == "--table" || a == "--timeout") {
      ++i;  // skip the value
    } else if (!a.starts_with("-")) {
      return a;
    }
  }
  return {};
}

#ifdef DISTRLOCK_CLI_FULL
/// The scheme of a URL this executable cannot serve, if distrlock-full could not serve it either: "" when the URL
/// is one of distrlock-full's (postgresql://, postgres://, mysql://, mariadb://, or a libpq key=value string).
std::string unknown_scheme(const std::string& url) {
  const std::size_t colon = url.find(':');
  const std::size_t equals = url.find('=');
  if (equals != std::string::npos && (colon == std::string::npos || equals < colon)) return {};  // key=value
  const std::string scheme = url.substr(0, colon);
  for (const char* known : {"postgresql://", "postgres://", "mysql://", "mariadb://"})
    if (url.starts_with(known)) return {};
  return scheme.empty() ? url : scheme;
}

/// This `distrlock` has the embedded SQLite backend only, because loading the server backends' client
/// libraries costs milliseconds per run (see tools/distrlock/CMakeLists.txt). Any other database is the job of
/// DISTRLOCK_CLI_FULL, the same tool with every backend, installed next to it: exec it with the same arguments.
int exec_full_tool(char** argv, const std::string& url) {
  std::string path(PATH_MAX, '\0');
  const ssize_t n = ::readlink("/proc/self/exe", path.data(), path.size() - 1);
  path.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  path = path.substr(0, path.rfind('/') + 1) + DISTRLOCK_CLI_FULL;
  ::execv(path.c_str(), argv);
  const int e = errno;
  std::fprintf(stderr,
               "distrlock: cannot run %s, which serves databases other than sqlite: (%s) (database %s); "
               "reinstall distrlock, or use a sqlite: database\n",
               path.c_str(), distrlock::cli::errno_text(e).c_str(), distrlock::cli::mask_url(url).c_str());
  return distrlock::cli::exit_unavailable;
}
#endif

int run_tool(int argc, char** argv) {
  // Everything after the first "--" belongs to `run`'s command (or is more `status` keys), never to CLI11.
  std::vector<const char*> head;
  Invocation invocation;
  for (int i = 0; i < argc; ++i) {
    if (i > 0 && std::string_view(argv[i]) == "--") {
      invocation.has_separator = true;
      invocation.tail.assign(argv + i + 1, argv + argc);
      break;
    }
    head.push_back(argv[i]);
  }

  GlobalOptions global;
  CLI::App app{"Leases on named keys in a shared database: run a command on one host at a time.", "distrlock"};
  app.footer(footer);
  app.set_version_flag("--version", "distrlock " DISTRLOCK_VERSION);
  CLI::Option* db_option =
      app.add_option("--db", global.db, "Database URL (default: $DISTRLOCK_DB, else the embedded SQLite file)")
          ->type_name("URL");
  CLI::Option* table_option =
      app.add_option("--table", global.table,
                     "Lock table, name or schema.name (default: $DISTRLOCK_TABLE, else distributed_locks)")
          ->type_name("NAME");
  app.add_flag("--no-migrate", global.no_migrate, "Never create the table; exit 78 when it is missing");
  app.add_option("--timeout", global.timeout_text, "Deadline of each database call and connection attempt")
      ->type_name("DURATION")
      ->capture_default_str();
  app.require_subcommand(1);
  app.fallthrough();  // global options may also follow the command

  const std::vector<Command> commands = {
      distrlock::cli::add_run_command(app, global),    distrlock::cli::add_acquire_command(app, global),
      distrlock::cli::add_extend_command(app, global), distrlock::cli::add_release_command(app, global),
      distrlock::cli::add_status_command(app, global), distrlock::cli::add_migrate_command(app, global),
      distrlock::cli::add_prune_command(app, global),
  };

  if (head.size() == 1 && !invocation.has_separator) {
    std::fputs(app.help().c_str(), stderr);
    return exit_usage;
  }

  try {
    app.parse(static_cast<int>(head.size()), head.data());
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    const std::vector<CLI::App*> chosen = app.get_subcommands();
    const std::string name = chosen.empty() ? std::string() : chosen.front()->get_name();
    std::string problem = e.what();
    std::string hint = "see `distrlock " + (name.empty() ? std::string() : name + " ") + "--help`";
    const std::string_view word = command_word(head);
    bool known = false;
    for (const Command& c : commands) known = known || c.app->get_name() == word;
    if (name.empty() && !word.empty() && !known) {
      problem = "unknown command \"" + distrlock::cli::escape(word) + "\"";
      hint = "the commands are run, acquire, extend, release, status, migrate and prune; see `distrlock --help`";
    } else if (name.empty() && word.empty() && dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      problem = "no command given";
      hint = "the commands are run, acquire, extend, release, status, migrate and prune; see `distrlock --help`";
    } else if (name == "run" && dynamic_cast<const CLI::ExtrasError*>(&e) != nullptr && !invocation.has_separator) {
      problem = "missing \"--\" before the command (" + problem + ")";
      hint = "write: distrlock run --key KEY -- CMD [ARGS...]";
    }
    std::fprintf(stderr, "distrlock%s%s: %s; %s\n", name.empty() ? "" : " ", name.c_str(), one_line(problem).c_str(),
                 one_line(hint).c_str());
    return exit_usage;
  }

  try {
    global.db_given = db_option->count() > 0;
    global.table_given = table_option->count() > 0;
    const std::vector<CLI::App*> chosen = app.get_subcommands();
    distrlock::cli::settle_globals(global, chosen.empty() ? std::string() : chosen.front()->get_name());

#ifdef DISTRLOCK_CLI_FULL
    if (const auto db = distrlock::cli::find_database(global); db && !db->url.starts_with("sqlite:")) {
      // Decided here, not by distrlock-full: a URL no build of the tool can serve is bad input (64), whether or
      // not distrlock-full is installed.
      if (const std::string scheme = unknown_scheme(db->url); !scheme.empty()) {
        distrlock::cli::Reporter r(chosen.empty() ? std::string() : chosen.front()->get_name());
        r.set_database(distrlock::cli::mask_url(db->url));
        r.usage("unknown database URL scheme \"" + distrlock::cli::escape(scheme) + "\"",
                "use --db (or DISTRLOCK_DB) sqlite:PATH, postgresql://..., postgres://..., a libpq key=value "
                "string, mysql://... or mariadb://...");
      }
      return exec_full_tool(argv, db->url);
    }
#endif

    for (const Command& c : commands) {
      if (c.app->parsed()) return c.run(invocation);
    }
    return exit_usage;  // unreachable: require_subcommand(1)
  } catch (const Failure& f) {
    std::fflush(stdout);
    if (*f.what() != '\0') std::fprintf(stderr, "%s\n", f.what());  // empty: --quiet-conflict
    return f.exit_code();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distrlock: unexpected error: %s; please report it\n", one_line(e.what()).c_str());
    return distrlock::cli::exit_unavailable;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_tool(argc, argv);
  } catch (const std::exception& e) {  // e.g. out of memory while setting up the command line
    std::fprintf(stderr, "distrlock: unexpected error: %s; please report it\n", one_line(e.what()).c_str());
    return distrlock::cli::exit_unavailable;
  }
}
