// libpq plumbing: owning handles, one statement with a deadline and server-side cancel, and the pool.
#pragma once

#include <libpq-fe.h>

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>

#include "core/backend.hpp"
#include "core/pool.hpp"

namespace distrlock::detail::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;

/// The synchronous_commit a grant or an extension commits with: `on`, or `remote_apply` when the session asks
/// for that (stronger: it also waits for a synchronous standby to apply the commit); never weaker than `on`.
constexpr std::string_view durable_commit_level =
    "CASE current_setting('synchronous_commit') WHEN 'remote_apply' THEN 'remote_apply' ELSE 'on' END";

/// Maps a SQLSTATE to the library's error code. The one place where native codes become distrlock codes.
errc map_sqlstate(std::string_view sqlstate);

/// How running a statement ended, beyond its error code.
struct RunState {
  bool sent = false;    // false: nothing reached the server, so retrying elsewhere is safe
  bool broken = false;  // the connection must not be used again
};

/// Asks the server to stop the statement running on a caller's connection, by the given deadline, without
/// blocking past it (see PostgresBackend: pg_cancel_backend() over a pooled connection).
using Canceller = std::function<void(Clock::time_point deadline)>;

/// Queues one command with `send` (a PQsend* call) and collects its results until ctx.deadline or ctx.stop, and
/// never later: no step of giving up waits on the network. If neither an answer nor the end comes first, the call
/// fails with errc::timeout (errc::cancelled for the stop token) and state.broken: a pooled connection is then
/// dropped by its owner; for a caller's connection, `cancel` is called shortly before the deadline. Returns the
/// last result (the first failing one, if any); on failure sets `ec` and the last detail.
ResultPtr run(PGconn* conn, const std::function<int(PGconn*)>& send, const OpContext& ctx, std::error_code& ec,
              RunState& state, const Canceller& cancel = {});

/// Opens a connection, giving up at the earlier of `deadline` and now + connect_timeout. With several hosts,
/// each is tried in turn with an equal share of the time left, from `*preferred_host` (if given), which is set
/// to the host that answered.
ConnPtr connect(const std::string& conninfo, Clock::time_point deadline, milliseconds connect_timeout,
                std::error_code& ec, std::atomic<std::size_t>* preferred_host = nullptr);

/// A pooled connection and the statements already prepared on it.
struct Connection {
  static constexpr std::size_t max_statements = 8;
  ConnPtr conn;
  std::array<bool, max_statements> prepared{};
};

/// How the pool opens and checks connections (see core/pool.hpp).
struct Opener {
  using Connection = pg::Connection;
  static constexpr bool retry_open = true;  // the server may be restarting: retry until the deadline
  static constexpr std::string_view noun = "connection";

  std::string conninfo;
  milliseconds connect_timeout;
  /// Of a multi-host URL, the host that answered last: tried first next time.
  mutable std::atomic<std::size_t> preferred_host{0};

  std::unique_ptr<Connection> open(const OpContext& ctx, std::error_code& ec) const;
  static bool alive(Connection& c) noexcept { return idle_socket_is_open(PQsocket(c.conn.get())); }
  /// Not left inside a transaction, and not broken.
  static bool reusable(Connection& c) noexcept {
    return PQstatus(c.conn.get()) == CONNECTION_OK && PQtransactionStatus(c.conn.get()) == PQTRANS_IDLE;
  }
  static void lend(Connection&, const OpContext*) noexcept {}
};

using Pool = detail::Pool<Opener>;

}  // namespace distrlock::detail::pg
