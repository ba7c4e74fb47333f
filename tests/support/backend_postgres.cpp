// PostgreSQL as a backend under test: its URL, isolation levels and a libpq session for caller transactions.
#include <gtest/gtest.h>
#include <libpq-fe.h>

#include "support.hpp"

namespace dltest {
namespace {

class PostgresSession final : public CallerSession {
 public:
  explicit PostgresSession(const std::string& url) : conn_(PQconnectdb(url.c_str())) {
    if (PQstatus(conn_) != CONNECTION_OK) ADD_FAILURE() << "cannot connect: " << PQerrorMessage(conn_);
  }
  ~PostgresSession() override { PQfinish(conn_); }

  std::string query(std::string_view sql, std::string* error_out) override {
    PGresult* r = PQexec(conn_, std::string(sql).c_str());
    std::string out;
    const ExecStatusType st = PQresultStatus(r);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
      if (error_out != nullptr) {
        *error_out = PQresultErrorMessage(r);
      } else {
        ADD_FAILURE() << sql << ": " << PQresultErrorMessage(r);
      }
    } else if (PQntuples(r) > 0 && PQnfields(r) > 0) {
      out = PQgetvalue(r, 0, 0);
    }
    PQclear(r);
    return out;
  }
  distrlock::NativeConnection native() override { return distrlock::NativeConnection::postgres(conn_); }
  std::string make_schema() override {
    const std::string name = unique_table();
    query("CREATE SCHEMA " + name, nullptr);
    return name;
  }
  void steal_key(std::string_view key) override {
    query("UPDATE distributed_locks SET token = 'thief' WHERE key = convert_to('" + std::string(key) + "', 'UTF8')",
          nullptr);
  }
  void steal(std::string_view token) override {
    query("UPDATE distributed_locks SET token = 'thief' WHERE token = '" + std::string(token) + "'", nullptr);
  }
  void hold_row(std::string_view key) override {
    query("BEGIN", nullptr);
    if (query("SELECT 1 FROM distributed_locks WHERE key = decode('" + to_hex(key) + "', 'hex') FOR UPDATE",
              nullptr) != "1")
      ADD_FAILURE() << "hold_row: no row for the key";
  }

 private:
  PGconn* conn_;
};

}  // namespace

BackendUnderTest postgres_backend_under_test() {
  BackendUnderTest b{
      "postgres",
      "DISTRLOCK_TEST_PG",
      "postgres",
      {{"read_uncommitted", "BEGIN ISOLATION LEVEL READ UNCOMMITTED"},
       {"read_committed", "BEGIN ISOLATION LEVEL READ COMMITTED"},
       {"repeatable_read", "BEGIN ISOLATION LEVEL REPEATABLE READ"},
       {"serializable", "BEGIN ISOLATION LEVEL SERIALIZABLE"}},
      [](const std::string& url) -> std::unique_ptr<CallerSession> { return std::make_unique<PostgresSession>(url); },
      "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename IN ",
  };
  b.default_begin = "BEGIN";  // READ COMMITTED unless the server or role says otherwise
  // From REPEATABLE READ up, a row changed by a transaction that committed after the snapshot cannot be updated
  // (SQLSTATE 40001, "could not serialize access due to concurrent update").
  b.levels_where_a_grant_committed_meanwhile_is_a_conflict = {"repeatable_read", "serializable"};
  return b;
}

}  // namespace dltest
