// Direct connections to the database under test, beside the library's own: the guarded resource that checks
// fencing tokens, and what the fault injector needs to break the server for one connection.
//
// The guarded table (torture_guard) lives in the same database as the locks but is reached directly, never
// through a worker's relay: it stands for fencing-aware storage elsewhere, which a partition between the
// worker and the lock service does not cut. Its write is one statement that both compares and writes, so
// two writers cannot both pass the check with the order reversed.
//
// Thread safety: a NativeDb is used by one thread at a time.
#pragma once

#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include "events.hpp"

namespace torture {

struct DbError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class NativeDb {
 public:
  /// Connects to the same URLs the library takes (postgresql://, a libpq key=value string, mysql://,
  /// mariadb://, sqlite:PATH). Throws DbError.
  static std::unique_ptr<NativeDb> connect(const std::string& url);
  virtual ~NativeDb() = default;

  virtual void create_guard_table() = 0;
  /// Writes `fence` for `key` if it is >= the last one written (always, when !check_fence: the planted
  /// bug). `stop` abandons a write that waits for a lock (SQLite only; the others answer at once).
  virtual WriteResult fenced_write(const std::string& key, std::int64_t fence, bool check_fence,
                                   std::stop_token stop) = 0;

  /// Holds what a stalled server would: the lock row of `key` (PostgreSQL, MariaDB) or the database's write
  /// lock (SQLite), in an open transaction, until end_hold().
  virtual void begin_hold(const std::string& lock_table, const std::string& key) = 0;
  virtual void end_hold() noexcept = 0;

  /// Server process ids of the connections whose client port is in `ports` (PostgreSQL only; empty
  /// elsewhere: MariaDB serves every connection from one process).
  virtual std::vector<long> backend_pids(const std::vector<int>& ports) {
    (void)ports;
    return {};
  }
  /// Ends the server session whose client port is `port`, from outside. Returns false when none was found.
  virtual bool terminate(int port) {
    (void)port;
    return false;
  }
};

}  // namespace torture
