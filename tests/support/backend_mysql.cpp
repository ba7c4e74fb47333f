// MariaDB (or MySQL) as a backend under test: its URL, isolation levels and a Connector/C session for caller
// transactions.
#include <gtest/gtest.h>
#include <mysql.h>

#include <charconv>

#include "support.hpp"

namespace dltest {
namespace {

/// The parts of mysql://user[:password]@host[:port]/database the test sessions need (no percent-encoding:
/// the test servers' URLs have none).
struct MysqlUrl {
  std::string user, password, host, database;
  unsigned int port = 3306;
};

MysqlUrl parse(const std::string& url) {
  MysqlUrl u;
  std::string rest = url.substr(url.find("://") + 3);
  const std::size_t slash = rest.find('/');
  u.database = slash == std::string::npos ? "" : rest.substr(slash + 1, rest.find('?', slash) - slash - 1);
  rest = rest.substr(0, slash);
  if (const std::size_t at = rest.rfind('@'); at != std::string::npos) {
    const std::string user_info = rest.substr(0, at);
    rest = rest.substr(at + 1);
    const std::size_t colon = user_info.find(':');
    u.user = user_info.substr(0, colon);
    if (colon != std::string::npos) u.password = user_info.substr(colon + 1);
  }
  const std::size_t colon = rest.rfind(':');
  u.host = rest.substr(0, colon);
  if (colon != std::string::npos) std::from_chars(rest.data() + colon + 1, rest.data() + rest.size(), u.port);
  return u;
}

class MysqlSession final : public CallerSession {
 public:
  explicit MysqlSession(const std::string& url) : conn_(mysql_init(nullptr)) {
    const MysqlUrl u = parse(url);
    mysql_options(conn_, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    if (mysql_real_connect(conn_, u.host.c_str(), u.user.c_str(), u.password.c_str(),
                           u.database.empty() ? nullptr : u.database.c_str(), u.port, nullptr,
                           CLIENT_MULTI_STATEMENTS) == nullptr)
      ADD_FAILURE() << "cannot connect to " << url << ": " << mysql_error(conn_);
  }
  ~MysqlSession() override { mysql_close(conn_); }

  /// Runs one or more statements; returns the first column of the first row of the last result set that had
  /// rows ("" if none, "NULL" for NULL).
  std::string query(std::string_view sql, std::string* error_out) override {
    std::string out;
    std::string error;
    if (mysql_real_query(conn_, sql.data(), sql.size()) != 0) {
      error = std::to_string(mysql_errno(conn_)) + " " + mysql_error(conn_);
    } else {
      while (true) {
        if (MYSQL_RES* r = mysql_store_result(conn_)) {
          if (MYSQL_ROW row = mysql_fetch_row(r)) {
            const unsigned long* lengths = mysql_fetch_lengths(r);
            out = row[0] == nullptr ? "NULL" : std::string(row[0], lengths[0]);
          }
          mysql_free_result(r);
        } else if (mysql_field_count(conn_) != 0) {
          error = std::to_string(mysql_errno(conn_)) + " " + mysql_error(conn_);
          break;
        }
        const int next = mysql_next_result(conn_);
        if (next > 0) error = std::to_string(mysql_errno(conn_)) + " " + mysql_error(conn_);
        if (next != 0) break;
      }
    }
    if (!error.empty()) {
      if (error_out != nullptr) {
        *error_out = error;
      } else {
        ADD_FAILURE() << sql << ": " << error;
      }
    }
    return out;
  }
  distrlock::NativeConnection native() override { return distrlock::NativeConnection::mysql(conn_); }
  std::string make_schema() override {
    const std::string name = unique_table();
    query("CREATE DATABASE " + name, nullptr);
    return name;
  }
  void steal_key(std::string_view key) override {
    query("UPDATE distributed_locks SET token = 'thief' WHERE `key` = '" + std::string(key) + "'", nullptr);
  }
  void steal(std::string_view token) override {
    query("UPDATE distributed_locks SET token = 'thief' WHERE token = '" + std::string(token) + "'", nullptr);
  }
  void hold_row(std::string_view key) override {
    query("START TRANSACTION", nullptr);
    if (query("SELECT 1 FROM distributed_locks WHERE `key` = X'" + to_hex(key) + "' FOR UPDATE", nullptr) != "1")
      ADD_FAILURE() << "hold_row: no row for the key";
  }

 private:
  MYSQL* conn_;
};

}  // namespace

BackendUnderTest mysql_backend_under_test() {
  // MySQL has no BEGIN ISOLATION LEVEL: SET TRANSACTION applies to the next transaction only.
  BackendUnderTest b{
      "mysql",
      "DISTRLOCK_TEST_MYSQL",
      "mariadb",
      {{"read_uncommitted", "SET TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; START TRANSACTION"},
       {"read_committed", "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"},
       {"repeatable_read", "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; START TRANSACTION"},
       {"serializable", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; START TRANSACTION"}},
      [](const std::string& url) -> std::unique_ptr<CallerSession> { return std::make_unique<MysqlSession>(url); },
      "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN ",
  };
  b.default_begin = "START TRANSACTION";  // REPEATABLE READ, InnoDB's default
  // InnoDB's INSERT ... ON DUPLICATE KEY UPDATE reads the latest committed row under its lock at every level.
  b.levels_where_a_grant_committed_meanwhile_is_a_conflict = {};
  return b;
}

BackendUnderTest mysql_portable_backend_under_test() {
  BackendUnderTest b = mysql_backend_under_test();
  b.name = "mysql_portable";
  b.url_suffix = "returning=off";
  return b;
}

}  // namespace dltest
