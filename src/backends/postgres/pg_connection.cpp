#include "backends/postgres/pg_connection.hpp"

#include <poll.h>

#include <algorithm>
#include <atomic>
#include <vector>
#include <thread>

#include "core/resolve.hpp"
#include "core/state.hpp"

namespace distrlock::detail::pg {
namespace {

// Without a stop_token to watch, poll sleeps until the deadline; with one, it wakes this often to look.
constexpr milliseconds stop_poll_slice{20};
// On a caller's connection, which cannot simply be dropped, the cancel is sent this long before the deadline
// (at most a quarter of the call), so that the server's answer to it can still arrive in time.
constexpr milliseconds caller_cancel_lead{200};

std::string trimmed(const char* message) {
  std::string s = message != nullptr ? message : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

int poll_ms(Clock::time_point until, bool slice) {
  auto left = std::chrono::ceil<milliseconds>(until - Clock::now());
  if (slice) left = std::min(left, stop_poll_slice);
  return static_cast<int>(std::clamp<milliseconds::rep>(left.count(), 0, 60'000));
}

}  // namespace

errc map_sqlstate(std::string_view s) {
  if (s == "42P01" || s == "3F000") return errc::not_migrated;  // undefined table / schema
  if (s == "40001" || s == "40P01") return errc::conflict;      // serialization failure, deadlock
  if (s == "57014") return errc::cancelled;                     // query_canceled (by someone else)
  if (s == "55P03") return errc::timeout;                       // lock_not_available (lock_timeout)
  // read_only_sql_transaction: a standby (or a read-only session); another host of the URL may take writes.
  if (s == "25006") return errc::unavailable;
  if (s.starts_with("08") || s == "57P01" || s == "57P02" || s == "57P03" || s.starts_with("53"))
    return errc::unavailable;
  if (s.starts_with("22") || s == "23514") return errc::invalid_argument;  // data exception, check violation
  return errc::backend_error;
}

ResultPtr run(PGconn* conn, const std::function<int(PGconn*)>& send, const OpContext& ctx, std::error_code& ec,
              RunState& state, const Canceller& cancel) {
  state = RunState{};
  const bool was_nonblocking = PQisnonblocking(conn) == 1;
  if (!was_nonblocking) PQsetnonblocking(conn, 1);
  struct Restore {
    PGconn* conn;
    bool was_nonblocking;
    ~Restore() {
      if (!was_nonblocking && PQstatus(conn) == CONNECTION_OK) PQsetnonblocking(conn, 0);
    }
  } restore{conn, was_nonblocking};

  if (ctx.stop.stop_requested() || Clock::now() >= ctx.deadline) {  // known outcome: nothing was sent
    fail(ec, ctx.stop.stop_requested() ? errc::cancelled : errc::timeout, "the deadline passed before sending");
    return nullptr;
  }
  const Clock::time_point started = Clock::now();
  if (send(conn) == 0) {
    state.broken = PQstatus(conn) != CONNECTION_OK;
    fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn)));
    return nullptr;
  }
  state.sent = true;

  // Giving up must fit inside the deadline, and must never wait on the network: a pooled connection is simply
  // dropped at the deadline (the server's client_connection_check_interval then ends the statement, where the
  // server can still hear us); a caller's connection gets a cancel sent through `cancel` a little earlier.
  const Clock::time_point cancel_at =
      cancel ? ctx.deadline - std::min<Clock::duration>(caller_cancel_lead, (ctx.deadline - started) / 4)
             : Clock::time_point::max();
  const int fd = PQsocket(conn);
  bool cancelled = false;
  ResultPtr kept;
  while (true) {
    const int flushed = PQflush(conn);  // 0: all sent, 1: more to send, -1: failed
    if (flushed < 0) {
      state.broken = true;
      fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn)));
      return nullptr;
    }
    if (flushed == 0 && PQisBusy(conn) == 0) {
      PGresult* r = PQgetResult(conn);
      if (r == nullptr) break;  // the command is complete
      const bool failed = PQresultStatus(r) == PGRES_FATAL_ERROR;
      if (!kept || (failed && PQresultStatus(kept.get()) != PGRES_FATAL_ERROR))
        kept.reset(r);
      else
        PQclear(r);
      continue;
    }
    const Clock::time_point now = Clock::now();
    const bool stopped = ctx.stop.stop_requested();
    if (stopped || now >= ctx.deadline) {
      state.broken = true;  // an answer may still come: nothing more can be sent on this connection
      fail(ec, stopped ? errc::cancelled : errc::timeout,
           std::string(stopped ? "cancelled" : "the deadline passed") + " before the server answered" +
               (cancel ? (cancelled ? "; a cancel was sent" : "") : "; the connection was dropped"));
      return nullptr;
    }
    if (!cancelled && now >= cancel_at) {
      cancelled = true;
      cancel(ctx.deadline);
      continue;
    }
    pollfd p{fd, static_cast<short>(POLLIN | (flushed == 1 ? POLLOUT : 0)), 0};
    const int n = ::poll(&p, 1, poll_ms(std::min(cancel_at, ctx.deadline), ctx.stop.stop_possible()));
    if (n > 0 && (p.revents & (POLLIN | POLLERR | POLLHUP)) != 0 && PQconsumeInput(conn) == 0) {
      state.broken = true;
      fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn)));
      return nullptr;
    }
  }
  if (PQstatus(conn) != CONNECTION_OK) state.broken = true;
  if (!kept) {
    fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn)));
    return nullptr;
  }
  const ExecStatusType status = PQresultStatus(kept.get());
  if (status == PGRES_FATAL_ERROR || status == PGRES_BAD_RESPONSE || status == PGRES_NONFATAL_ERROR) {
    const char* sqlstate = PQresultErrorField(kept.get(), PG_DIAG_SQLSTATE);
    const std::string_view code = sqlstate != nullptr ? sqlstate : "";
    errc e = code.empty() ? errc::unavailable : map_sqlstate(code);
    if (cancelled && code == "57014") e = ctx.stop.stop_requested() ? errc::cancelled : errc::timeout;
    std::string hint;
    if (code == "25006") {
      // Drop the connection: the next one may reach the new primary of a multi-host URL.
      state.broken = true;
      hint = "; the server takes no writes (a read-only standby?): list every host of the cluster in the URL "
             "with target_session_attrs=read-write";
    }
    fail(ec, e, (code.empty() ? "" : std::string(code) + " ") + trimmed(PQresultErrorMessage(kept.get())) + hint);
  }
  return kept;
}

namespace {

std::vector<std::string> split_list(const std::string& list) {
  std::vector<std::string> out;
  if (list.empty()) return out;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = list.find(',', start);
    out.push_back(list.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

/// One connection attempt with the URL's settings and `overrides` (later keywords win), until `limit`.
ConnPtr connect_once(const std::string& conninfo, const std::vector<std::pair<const char*, std::string>>& overrides,
                     Clock::time_point limit, milliseconds connect_timeout, std::error_code& ec) {
  std::vector<const char*> keys = {"dbname", "fallback_application_name"};
  std::vector<const char*> values = {conninfo.c_str(), "distrlock"};
  for (const auto& [k, v] : overrides) {
    keys.push_back(k);
    values.push_back(v.c_str());
  }
  keys.push_back(nullptr);
  values.push_back(nullptr);
  ConnPtr conn(PQconnectStartParams(keys.data(), values.data(), 1));
  if (!conn) {
    fail(ec, errc::unavailable, "out of memory opening a connection");
    return nullptr;
  }
  if (PQstatus(conn.get()) == CONNECTION_BAD) {
    fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn.get())));
    return nullptr;
  }
  PostgresPollingStatusType st = PGRES_POLLING_WRITING;
  while (st != PGRES_POLLING_OK) {
    if (st == PGRES_POLLING_FAILED) {
      fail(ec, errc::unavailable, trimmed(PQerrorMessage(conn.get())));
      return nullptr;
    }
    pollfd p{PQsocket(conn.get()), static_cast<short>(st == PGRES_POLLING_READING ? POLLIN : POLLOUT), 0};
    if (Clock::now() >= limit || ::poll(&p, 1, poll_ms(limit, false)) == 0) {
      fail(ec, errc::unavailable,
           "connecting took longer than " + std::to_string(connect_timeout.count()) + " ms or the call's deadline");
      return nullptr;
    }
    st = PQconnectPoll(conn.get());
  }
  // Server notices (e.g. "relation already exists, skipping" from an idempotent migrate) are not errors
  // and must not reach the application's stderr through libpq's default processor.
  PQsetNoticeProcessor(
      conn.get(), [](void*, const char*) {}, nullptr);
  return conn;
}

/// Raises the session's synchronous_commit to `on` unless it is `on` or `remote_apply` already (the role's,
/// the database's or the URL's options=). One round trip, once per connection.
bool raise_commit_level(PGconn* conn, Clock::time_point limit, std::error_code& ec) {
  const std::string sql = "SELECT set_config('synchronous_commit', " + std::string(durable_commit_level) + ", false)";
  RunState st;
  run(
      conn, [&](PGconn* c) { return PQsendQuery(c, sql.c_str()); }, OpContext{limit, {}, {}}, ec, st);
  return !ec;
}

}  // namespace

ConnPtr connect(const std::string& conninfo, Clock::time_point deadline, milliseconds connect_timeout,
                std::error_code& ec, std::atomic<std::size_t>* preferred_host) {
  // Session settings of our own connections, after whatever the URL's options= asks for (later -c wins):
  //  * synchronous_commit at least `on` (see durable_commit_level; set once connected): a grant or extension is
  //    durable whatever the role's or database's default is (a release relaxes it for its own transaction only);
  //  * client_connection_check_interval: a statement whose client gave up and dropped the connection is ended by
  //    the server within this interval, instead of running on (and perhaps granting a key to nobody).
  std::string options, host, hostaddr, port;
  if (PQconninfoOption* parsed = PQconninfoParse(conninfo.c_str(), nullptr)) {
    for (PQconninfoOption* o = parsed; o->keyword != nullptr; ++o) {
      const std::string_view k = o->keyword;
      if (o->val == nullptr) continue;
      if (k == "options") options = o->val;
      if (k == "host") host = o->val;
      if (k == "hostaddr") hostaddr = o->val;
      if (k == "port") port = o->val;
    }
    PQconninfoFree(parsed);
  }
  options += " -c client_connection_check_interval=250";
  const Clock::time_point limit = std::min(deadline, Clock::now() + connect_timeout);
  // libpq looks host names up inside PQconnectPoll, with getaddrinfo and no timeout: look them up here instead,
  // within the deadline, and pass the addresses as hostaddr (host still names the server for TLS).
  if (hostaddr.empty() && !host.empty() && host.find_first_of("/@") == std::string::npos) {
    for (const std::string& name : split_list(host)) {
      const std::string address = resolve_host(name, limit, ec);
      if (ec) return nullptr;
      hostaddr += (hostaddr.empty() ? "" : ",") + address;
    }
  }
  const std::vector<std::string> hosts = split_list(host), addrs = split_list(hostaddr), ports = split_list(port);
  const std::size_t n = std::max(hosts.size(), addrs.size());
  if (n <= 1) {
    std::vector<std::pair<const char*, std::string>> overrides = {{"options", options}};
    if (!hostaddr.empty()) overrides.emplace_back("hostaddr", hostaddr);
    ConnPtr conn = connect_once(conninfo, overrides, limit, connect_timeout, ec);
    return conn && raise_commit_level(conn.get(), limit, ec) ? std::move(conn) : nullptr;
  }
  // Several hosts (a primary and its standbys): libpq would try them in turn but, driven asynchronously, gives
  // a host that never answers (a dead primary whose packets vanish) the whole time, and never reaches the next.
  // So each host gets an attempt of its own, with an equal share of the time left, starting from the one that
  // worked last: after a failover, new connections go straight to the new primary. target_session_attrs still
  // applies to each attempt, so a standby fails its attempt and the next host is tried.
  const std::size_t first = preferred_host != nullptr ? preferred_host->load() % n : 0;
  std::string why;
  for (std::size_t tried = 0; tried < n; ++tried) {
    const std::size_t i = (first + tried) % n;
    const Clock::time_point now = Clock::now();
    if (now >= limit) break;
    const Clock::time_point share = now + (limit - now) / static_cast<long>(n - tried);
    std::vector<std::pair<const char*, std::string>> overrides = {{"options", options}};
    if (i < hosts.size()) overrides.emplace_back("host", hosts[i]);
    if (i < addrs.size()) overrides.emplace_back("hostaddr", addrs[i]);
    if (!ports.empty()) overrides.emplace_back("port", ports[std::min(i, ports.size() - 1)]);  // one port: for all
    std::error_code attempt;
    if (ConnPtr conn = connect_once(conninfo, overrides, share, connect_timeout, attempt);
        conn && raise_commit_level(conn.get(), share, attempt)) {
      if (preferred_host != nullptr) preferred_host->store(i);
      ec.clear();
      return conn;
    }
    const std::string detail = take_last_detail();
    why += (why.empty() ? "" : "; ") + std::string("host ") + std::to_string(i + 1) + ": " + detail;
  }
  fail(ec, errc::unavailable, why.empty() ? "the call's deadline passed before any host was tried" : why);
  return nullptr;
}

std::unique_ptr<Connection> Opener::open(const OpContext& ctx, std::error_code& ec) const {
  ConnPtr conn = connect(conninfo, ctx.deadline, connect_timeout, ec, &preferred_host);
  if (!conn) return nullptr;
  auto c = std::make_unique<Connection>();
  c->conn = std::move(conn);
  return c;
}

}  // namespace distrlock::detail::pg
