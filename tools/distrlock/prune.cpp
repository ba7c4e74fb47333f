// distrlock prune --older-than DURATION: delete the rows of keys that have been free that long, so that keys
// used once (`invoice-42`) do not grow the table without bound. Fencing tokens stay safe: the table's fence
// floor rises to the largest fence deleted, in the same transaction, and a pruned key starts above it.
// Like status, it never creates the table.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct PruneOptions {
  std::string older_than;  ///< required: a key must have been free (released or expired) this long
  bool json = false;       ///< print {"deleted","fence_floor"} instead of a sentence
};

int prune(const PruneOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("prune", global);
  reject_tail(invocation, r);
  const milliseconds idle = parse_duration("--older-than", o.older_than, true, r);
  Session session(global, r);
  const PruneResult done = session.reading([&] { return session.manager().prune(idle); });
  if (o.json) {
    std::printf("{\"deleted\":%lld,\"fence_floor\":%lld}\n", static_cast<long long>(done.deleted),
                static_cast<long long>(done.fence_floor));
  } else {
    std::printf("deleted %lld rows of keys free for at least %s from \"%s\" on %s; fence floor %lld\n",
                static_cast<long long>(done.deleted), o.older_than.c_str(), escape(global.table).c_str(),
                r.database().c_str(), static_cast<long long>(done.fence_floor));
  }
  return exit_ok;
}

}  // namespace

Command add_prune_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<PruneOptions>();
  CLI::App* app = parent.add_subcommand(
      "prune", "Delete the rows of keys free for at least --older-than; their fencing tokens never repeat");
  app->add_option("--older-than", o->older_than,
                  "How long a key must have been free (released or expired), by the database's clock; 0 for every "
                  "free key")
      ->type_name("DURATION")
      ->required();
  app->add_flag("--json", o->json, "Print deleted (rows) and fence_floor as JSON");
  return {app, [o, &global](const Invocation& invocation) { return prune(*o, global, invocation); }};
}

}  // namespace distrlock::cli
