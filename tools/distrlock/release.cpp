// distrlock release: free a key held by a lease taken with `distrlock acquire`, by its token.
#include <CLI/CLI.hpp>
#include <memory>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct ReleaseOptions {
  std::string key;    ///< required, 1-255 bytes
  std::string token;  ///< required: the token `acquire` printed
};

int release(const ReleaseOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("release", global);
  reject_tail(invocation, r);
  check_key(o.key, r);
  r.set_key(o.key);
  check_token(o.token, r);

  Session session(global, r);
  Lock lock = session.manager().adopt(o.key, o.token);
  try {
    session.with_table([&] { lock.release(); });
  } catch (const distrlock::error&) {  // not held: with_table ends the tool on every other error
    r.fail(exit_not_held, "this token no longer holds the key (it was released, expired, or taken over)",
           "nothing to release; if work ran under it, check its fencing token");
  }
  return exit_ok;
}

}  // namespace

Command add_release_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<ReleaseOptions>();
  CLI::App* app = parent.add_subcommand("release", "Free a key held by this token; exit 76 if not held");
  app->add_option("--key", o->key, "Key of the lease")->type_name("KEY")->required();
  app->add_option("--token", o->token, "Token printed by `distrlock acquire`")->type_name("TOKEN")->required();
  return {app, [o, &global](const Invocation& invocation) { return release(*o, global, invocation); }};
}

}  // namespace distrlock::cli
