// MariaDB Connector/C plumbing: the URL, owning handles, one packet of statements with a deadline and a
// server-side KILL QUERY, and the pool. Works against MariaDB 10.3+ and MySQL 8.
#pragma once

#include <mysql.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "core/backend.hpp"
#include "core/pool.hpp"

namespace distrlock::detail::mysql {

struct ConnDeleter {
  void operator()(MYSQL* m) const noexcept { mysql_close(m); }
};
using ConnPtr = std::unique_ptr<MYSQL, ConnDeleter>;

struct ResultDeleter {
  void operator()(MYSQL_RES* r) const noexcept { mysql_free_result(r); }
};
using ResultPtr = std::unique_ptr<MYSQL_RES, ResultDeleter>;

/// Where and as whom to connect, from "mysql://user:pass@host:port/db?socket=PATH" (or "mariadb://").
struct Endpoint {
  std::string user;
  std::string password;
  std::string host;  // "localhost" (or empty) means the unix socket, as for every MySQL client
  unsigned int port = 3306;
  std::string database;   // may be empty: then the table must be schema-qualified
  std::string socket;     // unix socket path; empty: the client library's default
  bool returning = true;  // ?returning=off: never use INSERT ... RETURNING, even where the server has it
  /// TLS: off (plain TCP, as every MySQL client without TLS options), required (encrypted, the certificate
  /// is not checked), or verify_identity (encrypted, the certificate must chain to tls_ca, or to the
  /// system's CAs, and name the host).
  enum class Tls { off, required, verify_identity } tls = Tls::off;
  std::string tls_ca, tls_cert, tls_key;  // PEM files; cert and key for client authentication, both or none
  std::string masked;                     // the URL with its password masked, for messages
};

/// Parses a mysql:// or mariadb:// URL (parameters: socket=PATH, returning=auto|off, ssl-mode, ssl-ca,
/// ssl-cert, ssl-key); user, password, database and
/// parameter values are percent-decoded. Throws distrlock::error(invalid_argument), with the password masked, for
/// anything it does not understand.
Endpoint parse_url(std::string_view url);

/// Whether the server at the other end of `conn` runs INSERT ... ON DUPLICATE KEY UPDATE ... RETURNING: MariaDB
/// 10.5 and later (MySQL 8 has no RETURNING). Read from the handshake: no round trip.
bool has_insert_returning(MYSQL* conn);

/// Whether the server bounds a statement itself (MariaDB's SET STATEMENT max_statement_time=... FOR ...).
bool has_statement_limits(MYSQL* conn);
/// "SET STATEMENT max_statement_time=S FOR " with S a little inside ctx's deadline, on a server that has it;
/// "" elsewhere. Prefixed to each statement, so that the server ends it on its own, with no second connection.
std::string statement_limit(MYSQL* conn, const OpContext& ctx);

/// Maps a MySQL/MariaDB server error number or Connector/C client error number to the library's error code.
/// The one place where native codes become distrlock codes.
errc map_errno(unsigned int code);

/// How running a packet ended, beyond its error code.
struct RunState {
  bool sent = false;    // false: nothing reached the server, so retrying elsewhere is safe
  bool broken = false;  // the connection must not be used again
};

/// The answer to one statement of a packet: an OK packet (affected rows, insert id) or a result set.
struct Answer {
  std::uint64_t affected_rows = 0;
  std::uint64_t insert_id = 0;  // LAST_INSERT_ID(expr) set in the statement, else 0
  ResultPtr rows;               // null for statements without a result set
};

/// Sends `sql` (one statement, or several separated by ';' on a connection opened with multi-statements) as
/// one packet and reads every answer, until ctx.deadline or ctx.stop and never later. If either comes first, the
/// socket is shut down (state.broken; errc::timeout or errc::cancelled); on a server without statement limits,
/// a KILL QUERY is also sent to `endpoint` from a background thread that nothing waits for.
/// On failure sets `ec` and the last detail, and returns the answers read before it.
std::vector<Answer> run(MYSQL* conn, const Endpoint& endpoint, std::string_view sql, const OpContext& ctx,
                        std::error_code& ec, RunState& state);

/// Opens a pooled connection (non-blocking API, utf8mb4, autocommit, multi-statements), giving up at the
/// earlier of `deadline` and now + connect_timeout.
ConnPtr connect(const Endpoint& endpoint, Clock::time_point deadline, milliseconds connect_timeout,
                std::error_code& ec);

/// Makes a caller's connection usable by run(): enables Connector/C's non-blocking API on it (the handle then
/// keeps a small coroutine stack until it is closed). Returns false, with ec set, if that is impossible.
bool prepare_caller_connection(MYSQL* conn, std::error_code& ec);

/// A pooled connection.
struct Connection {
  ConnPtr conn;
};

/// How the pool opens and checks connections (see core/pool.hpp).
struct Opener {
  using Connection = mysql::Connection;
  static constexpr bool retry_open = true;  // the server may be restarting: retry until the deadline
  static constexpr std::string_view noun = "connection";

  Endpoint endpoint;
  milliseconds connect_timeout;

  std::unique_ptr<Connection> open(const OpContext& ctx, std::error_code& ec) const;
  static bool alive(Connection& c) noexcept { return idle_socket_is_open(mysql_get_socket(c.conn.get())); }
  /// Not broken, and not left inside a transaction (a packet that failed half-way): closing rolls it back.
  static bool reusable(Connection& c) noexcept;
  static void lend(Connection&, const OpContext*) noexcept {}
};

using Pool = detail::Pool<Opener>;

}  // namespace distrlock::detail::mysql
