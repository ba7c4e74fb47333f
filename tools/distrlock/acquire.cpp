// distrlock acquire: take a lease that outlives the tool; a script extends and releases it by its token.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <thread>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct AcquireOptions {
  std::string key;          ///< required, 1-255 bytes
  std::string ttl = "30s";  ///< lease length, > 0
  std::string wait = "0";   ///< how long to retry while busy; 0 = one attempt
  std::string token;        ///< static token (1-128 bytes); only when token_given
  bool token_given = false;
  bool json = false;  ///< print {"key","token","fence","expires_in_ms"} instead of the bare token
};

/// acquire_with_static_token tries once; --wait retries it with the library's backoff (10 ms doubling to 250 ms).
void acquire_static(Lock& lock, const std::string& token, milliseconds ttl, milliseconds wait) {
  const Clock::time_point give_up = Clock::now() + wait;
  milliseconds backoff{10};
  while (true) {
    try {
      lock.acquire_with_static_token(token, ttl);
      return;
    } catch (const distrlock::error& e) {
      const Clock::time_point now = Clock::now();
      if (e.code() != errc::already_acquired || now >= give_up) throw;
      std::this_thread::sleep_for(std::min<Clock::duration>(backoff, give_up - now));
      backoff = std::min(backoff * 2, milliseconds{250});
    }
  }
}

int acquire(const AcquireOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("acquire", global);
  reject_tail(invocation, r);
  check_key(o.key, r);
  r.set_key(o.key);
  const milliseconds ttl = parse_duration("--ttl", o.ttl, false, r);
  const milliseconds wait = parse_duration("--wait", o.wait, true, r);
  if (o.token_given) check_token(o.token, r);

  Session session(global, r);
  Lock lock = session.manager().lock(o.key);
  try {
    session.with_table([&] {
      if (o.token_given) {
        acquire_static(lock, o.token, ttl, wait);
      } else {
        lock.acquire(ttl, wait);
      }
    });
  } catch (const distrlock::error&) {  // busy: with_table ends the tool on every other error
    session.fail_busy(o.key, wait, exit_busy);
  }

  const std::string token = lock.token().value_or("");
  if (o.json) {
    std::string out = "{\"key\":" + json_string(o.key);
    if (!is_valid_utf8(o.key)) out += ",\"key_hex\":\"" + to_hex(o.key) + "\"";
    out += ",\"token\":" + json_string(token) + ",\"fence\":" + std::to_string(lock.fencing_token().value_or(0)) +
           ",\"expires_in_ms\":" + std::to_string(lock.expires_in().count()) + "}";
    std::printf("%s\n", out.c_str());
  } else {
    std::printf("%s\n", token.c_str());
  }
  return exit_ok;
}

}  // namespace

Command add_acquire_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<AcquireOptions>();
  CLI::App* app = parent.add_subcommand(
      "acquire", "Take a lease and print its token; it lasts --ttl unless `extend`ed, until `release`");
  app->add_option("--key", o->key, "Key to lock (1-255 bytes)")->type_name("KEY")->required();
  app->add_option("--ttl", o->ttl, "Lease length")->type_name("DURATION")->capture_default_str();
  app->add_option("--wait", o->wait, "Keep trying this long while the key is busy")
      ->type_name("DURATION")
      ->capture_default_str();
  CLI::Option* token = app->add_option("--token", o->token,
                                       "Use this token (1-128 bytes) instead of a random one; "
                                       "the same token re-acquires a key it holds")
                           ->type_name("TOKEN");
  app->add_flag("--json", o->json, "Print key, token, fence and expires_in_ms as JSON");
  return {app, [o, token, &global](const Invocation& invocation) {
            o->token_given = token->count() > 0;
            return acquire(*o, global, invocation);
          }};
}

}  // namespace distrlock::cli
