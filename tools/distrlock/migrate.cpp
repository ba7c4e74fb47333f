// distrlock migrate [up|down]: create (or drop) the lock table explicitly. The other commands create it on
// first use anyway, unless --no-migrate.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct MigrateOptions {
  std::string direction = "up";  ///< "up": apply missing migrations; "down": revert all (drops the table)
};

int migrate(const MigrateOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("migrate " + o.direction, global);
  reject_tail(invocation, r);
  Session session(global, r);
  try {
    if (o.direction == "down") {
      session.manager().migrate_down();
      std::printf("dropped the lock table \"%s\" on %s\n", escape(global.table).c_str(), r.database().c_str());
    } else {
      session.manager().migrate();
      std::printf("the lock table \"%s\" on %s is up to date\n", escape(global.table).c_str(), r.database().c_str());
    }
  } catch (const distrlock::error& e) {
    r.fail(e);
  }
  return exit_ok;
}

}  // namespace

Command add_migrate_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<MigrateOptions>();
  CLI::App* app = parent.add_subcommand(
      "migrate", "Create the lock table (up, the default), or drop it (down: fencing tokens restart from 1)");
  app->add_option("direction", o->direction, "up or down")->check(CLI::IsMember({"up", "down"}))->capture_default_str();
  return {app, [o, &global](const Invocation& invocation) { return migrate(*o, global, invocation); }};
}

}  // namespace distrlock::cli
