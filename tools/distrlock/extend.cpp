// distrlock extend: push back the expiry of a lease taken by `distrlock acquire`, by its token.
//
// --ttl is required: the lease's original TTL is not stored with it, and a default (once 30 s) silently
// shortened longer leases. Saying the new time left on every extend is the one way that cannot surprise.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct ExtendOptions {
  std::string key;    ///< required, 1-255 bytes
  std::string token;  ///< required: the token `acquire` printed
  std::string ttl;    ///< required: the lease then expires this long from now, by the database's clock
  bool json = false;  ///< print {"key","fence","expires_in_ms"} instead of nothing
};

int extend(const ExtendOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("extend", global);
  reject_tail(invocation, r);
  check_key(o.key, r);
  r.set_key(o.key);
  check_token(o.token, r);
  const milliseconds ttl = parse_ttl(o.ttl, r);

  Session session(global, r);
  Lock lock = session.manager().adopt(o.key, o.token);
  try {
    session.with_table([&] { lock.extend(ttl); });
  } catch (const distrlock::error&) {  // not held: with_table ends the tool on every other error
    r.fail(exit_not_held, "this token no longer holds the key (it was released, expired, or taken over)",
           "acquire the key again and use the new token");
  }
  if (o.json) {
    std::string out = "{\"key\":" + json_string(o.key);
    if (!is_valid_utf8(o.key)) out += ",\"key_hex\":\"" + to_hex(o.key) + "\"";
    out += ",\"expires_in_ms\":" + std::to_string(lock.expires_in().count()) + "}";
    std::printf("%s\n", out.c_str());
  }
  return exit_ok;
}

}  // namespace

Command add_extend_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<ExtendOptions>();
  CLI::App* app = parent.add_subcommand("extend", "Make a held lease expire --ttl from now; exit 76 if not held");
  app->add_option("--key", o->key, "Key of the lease")->type_name("KEY")->required();
  app->add_option("--token", o->token, "Token printed by `distrlock acquire`")->type_name("TOKEN")->required();
  app->add_option("--ttl", o->ttl, "New time left (at least 100ms); required: the lease's own TTL is not stored")
      ->type_name("DURATION")
      ->required();
  app->add_flag("--json", o->json, "Print key and expires_in_ms (the new time left) as JSON");
  return {app, [o, &global](const Invocation& invocation) { return extend(*o, global, invocation); }};
}

}  // namespace distrlock::cli
