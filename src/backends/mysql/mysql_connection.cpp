#include "backends/mysql/mysql_connection.hpp"

#include <errmsg.h>
#include <fcntl.h>
#include <mysqld_error.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "core/resolve.hpp"
#include "core/state.hpp"
#include "core/util.hpp"

namespace distrlock::detail::mysql {
namespace {

// Connect, read and write timeout of the connection that sends a KILL QUERY (to servers without per-statement
// limits): that connection runs on a thread of its own, which this bounds.
constexpr milliseconds kill_grace{2000};
// Without a stop_token to watch, poll sleeps until the deadline; with one, it wakes this often to look.
constexpr milliseconds stop_poll_slice{20};

// Error numbers that MariaDB's headers lack (MySQL 8 only), spelled out where they are mapped.
constexpr unsigned int mysql8_query_timeout = 3024;               // ER_QUERY_TIMEOUT (MAX_EXECUTION_TIME)
constexpr unsigned int mysql8_check_constraint_violated = 3819;   // ER_CHECK_CONSTRAINT_VIOLATED
constexpr unsigned int mysql8_lock_nowait = 3572;                 // ER_LOCK_NOWAIT
constexpr unsigned int mysql8_client_interaction_timeout = 4031;  // ER_CLIENT_INTERACTION_TIMEOUT

/// Client-side (Connector/C) errors: the connection's state is unknown afterwards, so it is not reused.
bool is_client_error(unsigned int code) {
  return (code >= CR_MIN_ERROR && code < 3000) || (code >= 5000 && code < 6000);
}

/// Server errors after which the server has closed (or is closing) the connection.
bool closes_connection(unsigned int code) {
  return code == ER_CONNECTION_KILLED || code == ER_SERVER_SHUTDOWN || code == ER_ABORTING_CONNECTION ||
         code == ER_NEW_ABORTING_CONNECTION || code == mysql8_client_interaction_timeout;
}

std::string describe_error(MYSQL* conn) {
  const unsigned int code = mysql_errno(conn);
  std::string s = std::to_string(code);
  const char* state = mysql_sqlstate(conn);
  if (state != nullptr && *state != '\0' && std::string_view(state) != "00000") s += " (" + std::string(state) + ")";
  const char* message = mysql_error(conn);
  if (message != nullptr && *message != '\0') s += " " + std::string(message);
  std::replace(s.begin(), s.end(), '\n', ' ');
  return s;
}

int poll_ms(Clock::time_point until, bool slice) {
  auto left = std::chrono::ceil<milliseconds>(until - Clock::now());
  if (slice) left = std::min(left, stop_poll_slice);
  return static_cast<int>(std::clamp<milliseconds::rep>(left.count(), 0, 60'000));
}

unsigned int whole_seconds(milliseconds d) {
  return static_cast<unsigned int>(std::max<milliseconds::rep>(1, (d.count() + 999) / 1000));
}

const char* or_null(const std::string& s) { return s.empty() ? nullptr : s.c_str(); }

/// mysql_init() initialises Connector/C on first use, which is not thread-safe: do it once, first.
MYSQL* new_handle() {
  static std::once_flag initialised;
  std::call_once(initialised, [] { mysql_library_init(0, nullptr, nullptr); });
  return mysql_init(nullptr);
}

/// Asks for TLS as the endpoint says (before connecting). Connector/C refuses a server without TLS only when it
/// is also told to verify the certificate: with ssl-mode=required (MYSQL_OPT_SSL_ENFORCE alone) it goes on in
/// plain text, so every connection is checked after connecting too (tls_refusal).
void use_tls(MYSQL* m, const Endpoint& ep) {
  if (ep.tls == Endpoint::Tls::off) return;
  const my_bool yes = 1;
  const my_bool verify = ep.tls == Endpoint::Tls::verify_identity ? 1 : 0;
  mysql_options(m, MYSQL_OPT_SSL_ENFORCE, &yes);
  mysql_options(m, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify);
  if (!ep.tls_ca.empty()) mysql_options(m, MYSQL_OPT_SSL_CA, ep.tls_ca.c_str());
  if (!ep.tls_cert.empty()) mysql_options(m, MYSQL_OPT_SSL_CERT, ep.tls_cert.c_str());
  if (!ep.tls_key.empty()) mysql_options(m, MYSQL_OPT_SSL_KEY, ep.tls_key.c_str());
}

/// Why connection `m`, just connected, must not be used: the endpoint asks for TLS and the connection is not
/// encrypted (the server has TLS off, or something on the way stripped it). Empty when it may be used.
std::string tls_refusal(MYSQL* m, const Endpoint& ep) {
  if (ep.tls == Endpoint::Tls::off || mysql_get_ssl_cipher(m) != nullptr) return {};
  return "the connection to " + ep.masked +
         " is not encrypted, but ssl-mode asks for TLS (the server has TLS switched off, or something between "
         "strips it); refused";
}

/// Stops the statement running on connection `thread_id` from a connection of its own, as PQcancel does for
/// PostgreSQL, on a detached thread: nothing waits for it. Only for servers that cannot bound a statement
/// themselves (MySQL 8; MariaDB statements carry max_statement_time). Each of its steps is bounded by kill_grace.
void kill_query_in_background(const Endpoint& ep, unsigned long thread_id) {
  try {
    std::thread([ep, thread_id] {
      ConnPtr killer(new_handle());
      if (!killer) return;
      const unsigned int secs = whole_seconds(kill_grace);
      mysql_options(killer.get(), MYSQL_OPT_CONNECT_TIMEOUT, &secs);
      mysql_options(killer.get(), MYSQL_OPT_READ_TIMEOUT, &secs);
      mysql_options(killer.get(), MYSQL_OPT_WRITE_TIMEOUT, &secs);
      use_tls(killer.get(), ep);
      if (mysql_real_connect(killer.get(), or_null(ep.host), ep.user.c_str(), ep.password.c_str(), nullptr, ep.port,
                             or_null(ep.socket), 0) == nullptr)
        return;
      if (!tls_refusal(killer.get(), ep).empty()) return;  // never in clear
      const std::string sql = "KILL QUERY " + std::to_string(thread_id);
      mysql_real_query(killer.get(), sql.data(), sql.size());
    }).detach();
  } catch (...) {  // no thread to be had: the statement ends by itself, or with its connection
  }
}

/// Runs Connector/C non-blocking calls to completion while watching the deadline and the stop token. When either
/// comes, it gives up at once: the socket is shut down, so the call ends with an error and the connection is
/// unusable. Giving up never waits on the network. It also asks the server (from a background thread) to stop the
/// statement: on a stop request always, at the deadline only with `kill` (MariaDB statements carry their own
/// max_statement_time instead).
class Driver {
 public:
  Driver(MYSQL* conn, const Endpoint& ep, const OpContext& ctx, bool kill)
      : conn_(conn), ep_(ep), ctx_(ctx), kill_(kill), thread_id_(mysql_thread_id(conn)) {}

  /// `start()` and `cont(events)` return Connector/C's wait status (0: done). Returns false when the call had
  /// to be abandoned (the socket is shut down, the connection is unusable).
  template <class Start, class Cont>
  bool complete(Start&& start, Cont&& cont) {
    int status = start();
    while (status != 0) {
      const int events = wait(status);
      if (events < 0) {
        abandon(status, cont);
        return false;
      }
      status = cont(events);
    }
    return true;
  }

  bool stopping() const noexcept { return stopping_; }
  errc reason() const noexcept { return reason_; }

 private:
  /// Waits for what Connector/C asked for; returns the events to pass on, or -1 to give up.
  int wait(int status) {
    const int fd = mysql_get_socket(conn_);
    const Clock::time_point lib_until = (status & MYSQL_WAIT_TIMEOUT) != 0
                                            ? Clock::now() + milliseconds{mysql_get_timeout_value_ms(conn_)}
                                            : Clock::time_point::max();
    while (true) {
      const Clock::time_point now = Clock::now();
      if (ctx_.stop.stop_requested() || now >= ctx_.deadline) {
        stopping_ = true;
        reason_ = ctx_.stop.stop_requested() ? errc::cancelled : errc::timeout;
        // A deadline is the server's own limit too (max_statement_time); a stop request comes at any time.
        if (kill_ || reason_ == errc::cancelled) kill_query_in_background(ep_, thread_id_);
        return -1;
      }
      if (now >= lib_until) return MYSQL_WAIT_TIMEOUT;
      const Clock::time_point until = std::min(ctx_.deadline, lib_until);
      pollfd p{fd, 0, 0};
      if ((status & MYSQL_WAIT_READ) != 0) p.events |= POLLIN;
      if ((status & MYSQL_WAIT_WRITE) != 0) p.events |= POLLOUT;
      if ((status & MYSQL_WAIT_EXCEPT) != 0) p.events |= POLLPRI;
      const int n = ::poll(&p, 1, poll_ms(until, ctx_.stop.stop_possible()));
      if (n < 0 && errno != EINTR) return status & (MYSQL_WAIT_READ | MYSQL_WAIT_WRITE);  // let it see the error
      if (n > 0) {
        int events = 0;
        if ((p.revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) != 0) events |= MYSQL_WAIT_READ;
        if ((p.revents & (POLLOUT | POLLHUP | POLLERR | POLLNVAL)) != 0) events |= MYSQL_WAIT_WRITE;
        if ((p.revents & POLLPRI) != 0) events |= MYSQL_WAIT_EXCEPT;
        return events & (status | MYSQL_WAIT_EXCEPT);
      }
    }
  }

  /// Ends a suspended call: with the socket shut down, every read and write fails at once.
  template <class Cont>
  void abandon(int status, Cont&& cont) {
    const int fd = mysql_get_socket(conn_);
    if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
    for (int i = 0; i < 1000 && status != 0; ++i)
      status = cont(MYSQL_WAIT_READ | MYSQL_WAIT_WRITE | MYSQL_WAIT_TIMEOUT);
  }

  MYSQL* const conn_;
  const Endpoint& ep_;
  const OpContext& ctx_;
  const bool kill_;
  const unsigned long thread_id_;
  bool stopping_ = false;
  errc reason_ = errc::timeout;
};

std::string percent_decode(std::string_view s, bool& ok) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    unsigned int v = 0;
    if (i + 2 >= s.size()) {
      ok = false;
      return {};
    }
    const auto [end, err] = std::from_chars(s.data() + i + 1, s.data() + i + 3, v, 16);
    if (err != std::errc() || end != s.data() + i + 3) {
      ok = false;
      return {};
    }
    out.push_back(static_cast<char>(v));
    i += 2;
  }
  return out;
}

}  // namespace

Endpoint parse_url(std::string_view url) {
  auto bad = [&](const std::string& why) {
    return error(errc::invalid_argument, "distrlock: bad MySQL URL " + mask_password(url) + ": " + why);
  };
  std::string_view rest;
  if (url.starts_with("mysql://")) {
    rest = url.substr(8);
  } else if (url.starts_with("mariadb://")) {
    rest = url.substr(10);
  } else {
    throw bad("expected mysql://user:password@host:port/database (or mariadb://)");
  }
  Endpoint ep;
  ep.masked = mask_password(url);
  bool ok = true;
  auto decode = [&](std::string_view part, const char* what) {
    std::string v = percent_decode(part, ok);
    if (!ok) throw bad(std::string("bad percent-encoding in the ") + what);
    return v;
  };
  if (rest.find('#') != std::string_view::npos) throw bad("a URL fragment ('#') is not allowed");

  const std::size_t authority_end = rest.find_first_of("/?");
  const std::string_view authority = rest.substr(0, authority_end);
  std::string_view host_port = authority;
  if (const std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
    const std::string_view user_info = authority.substr(0, at);
    host_port = authority.substr(at + 1);
    const std::size_t colon = user_info.find(':');
    ep.user = decode(user_info.substr(0, colon), "user name");
    if (colon != std::string_view::npos) ep.password = decode(user_info.substr(colon + 1), "password");
  }
  std::string_view port_text;
  if (host_port.starts_with('[')) {  // [IPv6]:port
    const std::size_t close = host_port.find(']');
    if (close == std::string_view::npos) throw bad("unterminated '[' in the host");
    ep.host = std::string(host_port.substr(1, close - 1));
    const std::string_view after = host_port.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') throw bad("unexpected text after ']'");
      port_text = after.substr(1);
      if (port_text.empty()) throw bad("empty port");
    }
  } else {
    const std::size_t colon = host_port.rfind(':');
    ep.host = decode(host_port.substr(0, colon), "host");
    if (colon != std::string_view::npos) {
      port_text = host_port.substr(colon + 1);
      if (port_text.empty()) throw bad("empty port");
    }
  }
  if (!port_text.empty()) {
    unsigned int port = 0;
    const auto [end, err] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (err != std::errc() || end != port_text.data() + port_text.size() || port == 0 || port > 65535)
      throw bad("the port must be a number from 1 to 65535");
    ep.port = port;
  }

  std::string_view path_and_query =
      authority_end == std::string_view::npos ? std::string_view() : rest.substr(authority_end);
  const std::size_t q = path_and_query.find('?');
  std::string_view path = path_and_query.substr(0, q);
  if (path.starts_with('/')) path.remove_prefix(1);
  ep.database = decode(path, "database name");
  if (ep.database.find('/') != std::string::npos) throw bad("the path must be a single database name");

  std::optional<Endpoint::Tls> tls_mode;
  if (q != std::string_view::npos) {
    std::string_view query = path_and_query.substr(q + 1);
    while (!query.empty()) {
      const std::size_t amp = query.find('&');
      const std::string_view item = query.substr(0, amp);
      query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
      if (item.empty()) continue;
      const std::size_t eq = item.find('=');
      std::string name = decode(item.substr(0, eq), "parameter name");
      // ssl_mode, ssl_ca, ...: the spelling of MySQL's option files and Connector/J, beside the command line's.
      if (name.starts_with("ssl_")) name[3] = '-';
      const std::string value = eq == std::string_view::npos ? std::string() : decode(item.substr(eq + 1), "parameter");
      if (name == "socket") {
        if (value.empty()) throw bad("socket= needs a path");
        ep.socket = value;
      } else if (name == "returning") {
        if (value != "auto" && value != "off") throw bad("returning= must be auto or off");
        ep.returning = value == "auto";
      } else if (name == "ssl-mode") {
        std::string mode = value;
        std::transform(mode.begin(), mode.end(), mode.begin(),
                       [](unsigned char ch) { return ch == '_' ? '-' : static_cast<char>(std::tolower(ch)); });
        if (mode == "disabled") {
          tls_mode = Endpoint::Tls::off;
        } else if (mode == "required") {
          tls_mode = Endpoint::Tls::required;
        } else if (mode == "verify-identity") {
          tls_mode = Endpoint::Tls::verify_identity;
        } else {
          throw bad("ssl-mode= must be disabled, required or verify-identity");
        }
      } else if (name == "ssl-ca" || name == "ssl-cert" || name == "ssl-key") {
        if (value.empty()) throw bad(name + "= needs a path");
        (name == "ssl-ca" ? ep.tls_ca : name == "ssl-cert" ? ep.tls_cert : ep.tls_key) = value;
      } else {
        throw bad("unknown parameter \"" + printable(name) +
                  "\" (known: socket, returning, ssl-mode, ssl-ca, ssl-cert, ssl-key; ssl_mode etc. also)");
      }
    }
  }
  if (ep.tls_cert.empty() != ep.tls_key.empty()) throw bad("ssl-cert= and ssl-key= go together");
  const bool files = !ep.tls_ca.empty() || !ep.tls_cert.empty();
  if (tls_mode == Endpoint::Tls::off && files) throw bad("ssl-mode=disabled with ssl-ca/ssl-cert/ssl-key");
  // Certificate files without ssl-mode ask for TLS: checked against the CA when one is given.
  ep.tls = tls_mode.value_or(!files              ? Endpoint::Tls::off
                             : ep.tls_ca.empty() ? Endpoint::Tls::required
                                                 : Endpoint::Tls::verify_identity);
  return ep;
}

bool has_statement_limits(MYSQL* conn) {
  const char* info = mysql_get_server_info(conn);
  return info != nullptr && std::string_view(info).find("MariaDB") != std::string_view::npos;
}

std::string statement_limit(MYSQL* conn, const OpContext& ctx) {
  if (!has_statement_limits(conn)) return {};
  // A little inside the call's deadline, so that the server's own error, not our giving up, usually ends it and
  // the connection stays usable.
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(ctx.deadline - Clock::now());
  const auto limit = std::max<std::chrono::microseconds>(
      std::chrono::milliseconds(1), left - std::min<std::chrono::microseconds>(std::chrono::milliseconds(100), left / 10));
  char text[64];
  std::snprintf(text, sizeof text, "SET STATEMENT max_statement_time=%lld.%06lld FOR ",
                static_cast<long long>(limit.count() / 1'000'000), static_cast<long long>(limit.count() % 1'000'000));
  return text;
}

bool has_insert_returning(MYSQL* conn) {
  const char* info = mysql_get_server_info(conn);
  constexpr unsigned long mariadb_10_5 = 100500;
  return info != nullptr && std::string_view(info).find("MariaDB") != std::string_view::npos &&
         mysql_get_server_version(conn) >= mariadb_10_5;
}

errc map_errno(unsigned int code) {
  switch (code) {
    case ER_LOCK_DEADLOCK:  // InnoDB rolled the whole transaction back
      return errc::conflict;
    case ER_LOCK_WAIT_TIMEOUT:  // innodb_lock_wait_timeout: the statement was rolled back, the wait ran out
    case ER_STATEMENT_TIMEOUT:  // MariaDB max_statement_time
    case mysql8_query_timeout:  // MySQL MAX_EXECUTION_TIME
    case mysql8_lock_nowait: return errc::timeout;
    case ER_QUERY_INTERRUPTED:  // KILL QUERY from someone else (ours are mapped by the caller)
      return errc::cancelled;
    case ER_NO_SUCH_TABLE:
    case ER_BAD_DB_ERROR:  // a schema-qualified table in a database that does not exist
      return errc::not_migrated;
    case ER_NO_DB_ERROR:  // the URL names no database and the table is not schema-qualified
    case ER_DATA_TOO_LONG:
    case ER_TRUNCATED_WRONG_VALUE_FOR_FIELD:
    case ER_WARN_DATA_OUT_OF_RANGE:
    case ER_DATA_OUT_OF_RANGE:              // a TTL too long for microseconds in a BIGINT
    case ER_INVALID_CHARACTER_STRING:       // an owner string that is not UTF-8
    case ER_CONSTRAINT_FAILED:              // MariaDB CHECK
    case mysql8_check_constraint_violated:  // MySQL CHECK
      return errc::invalid_argument;
    case ER_CON_COUNT_ERROR:
    case ER_TOO_MANY_USER_CONNECTIONS:
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
    case ER_ABORTING_CONNECTION:
    case ER_NEW_ABORTING_CONNECTION:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_HOST_IS_BLOCKED:
    case mysql8_client_interaction_timeout:
    case CR_CONNECTION_ERROR:   // 2002: no server on the socket
    case CR_CONN_HOST_ERROR:    // 2003: no server at host:port
    case CR_UNKNOWN_HOST:       // 2005
    case CR_SERVER_GONE_ERROR:  // 2006: the connection was gone before the statement was sent
    case CR_SERVER_LOST:        // 2013: the connection broke while the statement ran
    case CR_SERVER_LOST_EXTENDED:
    case CR_ERR_NET_READ:
    case CR_ERR_NET_WRITE: return errc::unavailable;
    default: return errc::backend_error;
  }
}

/// Connector/C leaves a TLS connection's socket in blocking mode after the handshake, and its non-blocking API
/// then blocks inside SSL_read until the server answers: no deadline, no KILL QUERY. (Seen with MariaDB
/// Connector/C 3.3.) Over a non-blocking socket SSL_read reports that it would block, and the API yields as it
/// does without TLS. A caller's connection gets its socket's flags back afterwards; Connector/C's blocking calls
/// wait for a socket that would block either way.
class NonBlockingTls {
 public:
  explicit NonBlockingTls(MYSQL* conn) {
    if (mysql_get_ssl_cipher(conn) == nullptr) return;
    const int fd = mysql_get_socket(conn);
    const int flags = fd < 0 ? -1 : ::fcntl(fd, F_GETFL);
    if (flags < 0 || (flags & O_NONBLOCK) != 0) return;
    if (::fcntl(fd, F_SETFL, flags | O_NONBLOCK) == 0) fd_ = fd, flags_ = flags;
  }
  ~NonBlockingTls() {
    if (fd_ >= 0) ::fcntl(fd_, F_SETFL, flags_);
  }
  NonBlockingTls(const NonBlockingTls&) = delete;
  NonBlockingTls& operator=(const NonBlockingTls&) = delete;

 private:
  int fd_ = -1;
  int flags_ = 0;
};

std::vector<Answer> run(MYSQL* conn, const Endpoint& endpoint, std::string_view sql, const OpContext& ctx,
                        std::error_code& ec, RunState& state) {
  const NonBlockingTls non_blocking(conn);
  std::vector<Answer> answers;
  Driver driver(conn, endpoint, ctx, /*kill=*/!has_statement_limits(conn));
  auto give_up = [&] {
    state.sent = true;
    state.broken = true;
    fail(ec, driver.reason(),
         std::string(driver.reason() == errc::cancelled ? "cancelled" : "the deadline passed") +
             " before the server answered; the connection was shut down");
    return std::move(answers);
  };

  int failed = 0;
  if (!driver.complete([&] { return mysql_real_query_start(&failed, conn, sql.data(), sql.size()); },
                       [&](int events) { return mysql_real_query_cont(&failed, conn, events); }))
    return give_up();
  // A statement the client could not even write (2006: the connection was already gone) never ran.
  if (!(failed != 0 && mysql_errno(conn) == CR_SERVER_GONE_ERROR)) state.sent = true;

  while (failed == 0) {
    Answer answer;
    if (mysql_field_count(conn) > 0) {
      MYSQL_RES* rows = nullptr;
      if (!driver.complete([&] { return mysql_store_result_start(&rows, conn); },
                           [&](int events) { return mysql_store_result_cont(&rows, conn, events); }))
        return give_up();
      if (rows == nullptr) {
        failed = 1;
        break;
      }
      answer.rows.reset(rows);
    } else {
      answer.affected_rows = mysql_affected_rows(conn);
      answer.insert_id = mysql_insert_id(conn);
    }
    answers.push_back(std::move(answer));
    if (mysql_more_results(conn) == 0) return answers;
    int next = 0;
    if (!driver.complete([&] { return mysql_next_result_start(&next, conn); },
                         [&](int events) { return mysql_next_result_cont(&next, conn, events); }))
      return give_up();
    if (next < 0) return answers;  // no more results
    failed = next;
  }

  const unsigned int code = mysql_errno(conn);
  errc e = code == 0 ? errc::unavailable : map_errno(code);
  if (driver.stopping() && (code == ER_QUERY_INTERRUPTED || code == ER_STATEMENT_TIMEOUT)) e = driver.reason();
  if (code == 0 || is_client_error(code) || closes_connection(code)) state.broken = true;
  fail(ec, e, describe_error(conn));
  return answers;
}

ConnPtr connect(const Endpoint& endpoint, Clock::time_point deadline, milliseconds connect_timeout,
                std::error_code& ec) {
  ConnPtr conn(new_handle());
  if (!conn) {
    fail(ec, errc::unavailable, "out of memory opening a connection");
    return nullptr;
  }
  MYSQL* m = conn.get();
  const my_bool no = 0;
  const unsigned int no_infile = 0;
  const unsigned int secs = whole_seconds(connect_timeout);
  if (mysql_options(m, MYSQL_OPT_NONBLOCK, nullptr) != 0) {
    fail(ec, errc::unavailable, "cannot enable the non-blocking API: " + describe_error(m));
    return nullptr;
  }
  mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
  mysql_options(m, MYSQL_OPT_RECONNECT, &no);  // a reconnect would silently drop the session's state
  mysql_options(m, MYSQL_OPT_LOCAL_INFILE, &no_infile);
  mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &secs);
  // Every statement must commit on its own, whatever the server's default (init_connect, autocommit=0); and its
  // SQL means what it says whatever the server's sql_mode (ORACLE's SIMULTANEOUS_ASSIGNMENT, ANSI_QUOTES, ...).
  mysql_options(m, MYSQL_INIT_COMMAND,
                "SET autocommit = 1, sql_mode = 'STRICT_TRANS_TABLES,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION'");
  mysql_optionsv(m, MYSQL_OPT_CONNECT_ATTR_ADD, "program_name", "distrlock");
  use_tls(m, endpoint);

  const Clock::time_point limit = std::min(deadline, Clock::now() + connect_timeout);
  // Connector/C looks host names up with a blocking getaddrinfo inside its "non-blocking" connect: look the name
  // up here, within the deadline, and connect to the address. Not with verify-identity, whose certificate check
  // needs the name itself (there the lookup is bounded only by the resolver's own timeouts). "localhost" means
  // the unix socket to MySQL clients, so it stays.
  std::string host = endpoint.host;
  if (!host.empty() && host != "localhost" && endpoint.tls != Endpoint::Tls::verify_identity) {
    host = resolve_host(host, limit, ec);
    if (ec) return nullptr;
  }
  const OpContext ctx{limit, {}, {}};
  Driver driver(m, endpoint, ctx, /*kill=*/false);
  MYSQL* ret = nullptr;
  const bool finished = driver.complete(
      [&] {
        return mysql_real_connect_start(&ret, m, or_null(host), endpoint.user.c_str(),
                                        endpoint.password.c_str(), or_null(endpoint.database), endpoint.port,
                                        or_null(endpoint.socket), CLIENT_MULTI_STATEMENTS);
      },
      [&](int events) { return mysql_real_connect_cont(&ret, m, events); });
  if (!finished) {
    fail(ec, errc::unavailable,
         "connecting to " + endpoint.masked + " took longer than " + std::to_string(connect_timeout.count()) +
             " ms or the call's deadline");
    return nullptr;
  }
  if (ret == nullptr) {
    fail(ec, errc::unavailable, describe_error(m));
    return nullptr;
  }
  if (std::string refused = tls_refusal(m, endpoint); !refused.empty()) {
    fail(ec, errc::unavailable, refused);
    return nullptr;
  }
  // For good: see NonBlockingTls.
  if (mysql_get_ssl_cipher(m) != nullptr) {
    const int fd = mysql_get_socket(m);
    const int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_NONBLOCK) == 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  }
  return conn;
}

bool prepare_caller_connection(MYSQL* conn, std::error_code& ec) {
  my_bool nonblocking = 0;
  if (mysql_get_optionv(conn, MYSQL_OPT_NONBLOCK, &nonblocking) == 0 && nonblocking != 0) return true;
  if (mysql_options(conn, MYSQL_OPT_NONBLOCK, nullptr) != 0) {
    fail(ec, errc::invalid_argument,
         "cannot enable Connector/C's non-blocking API on the caller's connection: " + describe_error(conn));
    return false;
  }
  return true;
}

std::unique_ptr<Connection> Opener::open(const OpContext& ctx, std::error_code& ec) const {
  ConnPtr conn = connect(endpoint, ctx.deadline, connect_timeout, ec);
  if (!conn) return nullptr;
  auto c = std::make_unique<Connection>();
  c->conn = std::move(conn);
  return c;
}

bool Opener::reusable(Connection& c) noexcept {
  unsigned int status = 0;
  return mysql_get_socket(c.conn.get()) >= 0 &&
         mariadb_get_infov(c.conn.get(), MARIADB_CONNECTION_SERVER_STATUS, &status) == 0 &&
         (status & SERVER_STATUS_IN_TRANS) == 0;
}

}  // namespace distrlock::detail::mysql
