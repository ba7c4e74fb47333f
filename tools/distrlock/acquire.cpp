// distrlock acquire: take a lease that outlives the tool; a script extends and releases it by its token.
//
// While it waits (--wait), SIGINT/SIGTERM/SIGHUP/SIGQUIT end the wait with exit 128+N and a line, as in
// `run`: the signals are blocked and read by a watcher thread (signals.hpp). SIGUSR1/SIGUSR2 are ignored.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>

#include "common.hpp"
#include "signals.hpp"

namespace distrlock::cli {
namespace {

struct AcquireOptions {
  std::string key;          ///< required, 1-255 bytes
  std::string ttl = "30s";  ///< lease length, >= min_ttl
  std::string wait = "0";   ///< how long to retry while busy; 0 = one attempt
  bool no_wait = false;     ///< -n: --wait 0
  std::string token;        ///< static token (1-128 bytes); only when token_given
  bool token_given = false;
  std::string owner;                   ///< shown to others in busy messages and status; empty = hostname:pid
  int conflict_exit_code = exit_busy;  ///< exit code when the key stays busy, 0-255
  bool quiet_conflict = false;         ///< busy: no stderr line (real errors still print)
  bool json = false;  ///< print {"key","token","fence","expires_in_ms"} (busy: {"key","state":"busy",...})
};

/// acquire_with_static_token tries once; --wait retries it with the library's backoff (10 ms doubling to 250 ms).
void acquire_static(Lock& lock, const std::string& token, milliseconds ttl, milliseconds wait, const Call& call) {
  const Clock::time_point give_up = Clock::now() + wait;
  milliseconds backoff{10};
  std::mutex mu;
  std::condition_variable_any cv;
  while (true) {
    try {
      lock.acquire_with_static_token(token, ttl, call);
      return;
    } catch (const distrlock::error& e) {
      const Clock::time_point now = Clock::now();
      if (e.code() != errc::already_acquired || now >= give_up) throw;
      std::unique_lock lk(mu);
      std::stop_token stop = call.stop;
      if (cv.wait_for(lk, stop, std::min<Clock::duration>(backoff, give_up - now), [] { return false; }) ||
          stop.stop_requested())
        throw distrlock::error(errc::cancelled, "distrlock: acquire cancelled");
      backoff = std::min(backoff * 2, milliseconds{250});
    }
  }
}

std::string key_json(const std::string& key) {
  std::string out = "\"key\":" + json_string(key);
  if (!is_valid_utf8(key)) out += ",\"key_hex\":\"" + to_hex(key) + "\"";
  return out;
}

int acquire(const AcquireOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("acquire", global);
  reject_tail(invocation, r);
  check_key(o.key, r);
  r.set_key(o.key);
  const milliseconds ttl = parse_ttl(o.ttl, r);
  const milliseconds wait = o.no_wait ? milliseconds{0} : parse_duration("--wait", o.wait, true, r);
  if (o.token_given) check_token(o.token, r);

  const BlockedSignals signals;  // before the Manager: its threads must inherit the mask
  Session session(global, r, o.owner);
  Lock lock = session.manager().lock(o.key);
  InterruptWatcher watcher(signals);
  auto interrupted = [&] {
    const int signo = watcher.interrupted();
    return Failure(128 + signo,
                   r.line("interrupted by " + signal_name(signo) + " while waiting for the key", "nothing is held"));
  };
  Call call;
  call.stop = watcher.stop_token();
  try {
    session.with_table([&] {
      try {
        if (o.token_given) {
          acquire_static(lock, o.token, ttl, wait, call);
        } else {
          lock.acquire(ttl, wait, call);
        }
      } catch (const distrlock::error&) {
        if (watcher.interrupted() != 0) throw interrupted();
        throw;
      }
    });
  } catch (const distrlock::error&) {  // busy: with_table ends the tool on every other error
    watcher.stop();
    if (!o.json) session.fail_busy(o.key, wait, o.conflict_exit_code, o.quiet_conflict);
    // The busy answer as JSON on stdout, for scripts that parse it; the exit code still says busy.
    const std::optional<LockStatus> holder = session.holder(o.key);
    std::string out = "{" + key_json(o.key) + ",\"state\":\"busy\"";
    out += ",\"owner\":" + (holder ? json_string(holder->owner) : std::string("null"));
    out += ",\"expires_in_ms\":" + (holder ? std::to_string(holder->expires_in.count()) : std::string("null")) + "}";
    std::printf("%s\n", out.c_str());
    session.fail_busy(o.key, wait, o.conflict_exit_code, o.quiet_conflict, holder);
  }
  watcher.stop();
  if (watcher.interrupted() != 0) {  // granted as the signal came: give it back, as nothing will use it
    try {
      lock.release();
    } catch (const distrlock::error&) {
    }
    throw interrupted();
  }

  const std::string token = lock.token().value_or("");
  if (o.json) {
    const std::string out = "{" + key_json(o.key) + ",\"token\":" + json_string(token) +
                            ",\"fence\":" + std::to_string(lock.fencing_token().value_or(0)) +
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
  app->add_option("--ttl", o->ttl, "Lease length (at least 100ms)")->type_name("DURATION")->capture_default_str();
  CLI::Option* wait = app->add_option("-w,--wait", o->wait, "Keep trying this long while the key is busy")
                          ->type_name("DURATION")
                          ->capture_default_str();
  app->add_flag("-n,--no-wait", o->no_wait, "Try once (--wait 0), as flock -n")->excludes(wait);
  CLI::Option* token = app->add_option("--token", o->token,
                                       "Use this token (1-128 bytes) instead of a random one; "
                                       "the same token re-acquires a key it holds")
                           ->type_name("TOKEN");
  app->add_option("--owner", o->owner, "Owner string others see (default: hostname:pid of this process)")
      ->type_name("TEXT");
  app->add_option("-E,--conflict-exit-code", o->conflict_exit_code, "Exit code when the key stays busy")
      ->check(CLI::Range(0, 255))
      ->capture_default_str();
  app->add_flag("-q,--quiet-conflict", o->quiet_conflict,
                "Busy: print no error line, just exit with the conflict exit code (errors still print)");
  app->add_flag("--json", o->json,
                "Print key, token, fence and expires_in_ms as JSON (busy: key, state, owner, expires_in_ms)");
  return {app, [o, token, &global](const Invocation& invocation) {
            o->token_given = token->count() > 0;
            return acquire(*o, global, invocation);
          }};
}

}  // namespace distrlock::cli
