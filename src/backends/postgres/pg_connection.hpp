// libpq plumbing: owning handles, one statement with a deadline and server-side cancel, and the pool.
#pragma once

#include <libpq-fe.h>

#include <array>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <vector>

#include "core/backend.hpp"
#include "core/thread_annotations.hpp"

namespace distrlock::detail::pg {

struct ResultDeleter {
  void operator()(PGresult* r) const noexcept { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

struct ConnDeleter {
  void operator()(PGconn* c) const noexcept { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;

/// Maps a SQLSTATE to the library's error code. The one place where native codes become distrlock codes.
errc map_sqlstate(std::string_view sqlstate);

/// How running a statement ended, beyond its error code.
struct RunState {
  bool sent = false;    // false: nothing reached the server, so retrying elsewhere is safe
  bool broken = false;  // the connection must not be used again
};

/// Queues one command with `send` (a PQsend* call) and collects its results until ctx.deadline or
/// ctx.stop, cancelling it on the server (PQcancel) if either comes first. Returns the last result (the
/// first failing one, if any); on failure sets `ec` and the last detail. The connection stays usable
/// unless state.broken is set.
ResultPtr run(PGconn* conn, const std::function<int(PGconn*)>& send, const OpContext& ctx, std::error_code& ec,
              RunState& state);

/// Opens a connection, giving up at the earlier of `deadline` and now + connect_timeout.
ConnPtr connect(const std::string& conninfo, Clock::time_point deadline, milliseconds connect_timeout,
                std::error_code& ec);

/// A pooled connection and the statements already prepared on it.
struct Connection {
  static constexpr std::size_t max_statements = 8;
  ConnPtr conn;
  std::array<bool, max_statements> prepared{};
};

/// A bounded pool. Idle connections found closed by the server are dropped before use; new ones are opened
/// with backoff until the call's deadline.
class Pool {
 public:
  Pool(std::string conninfo, std::size_t max_size, milliseconds connect_timeout)
      : conninfo_(std::move(conninfo)), max_size_(max_size), connect_timeout_(connect_timeout) {}

  /// Lends a connection; it returns to the pool when the Handle dies, unless discard() was called.
  class Handle {
   public:
    Handle() = default;
    Handle(Pool* pool, std::unique_ptr<Connection> c) : pool_(pool), conn_(std::move(c)) {}
    Handle(Handle&& o) noexcept = default;
    Handle& operator=(Handle&& o) noexcept;
    ~Handle();
    Connection* operator->() const noexcept { return conn_.get(); }
    explicit operator bool() const noexcept { return conn_ != nullptr; }
    void discard() noexcept;

   private:
    Pool* pool_ = nullptr;
    std::unique_ptr<Connection> conn_;
  };

  Handle get(const OpContext& ctx, std::error_code& ec);

 private:
  void put_back(std::unique_ptr<Connection> c, bool healthy) noexcept;

  const std::string conninfo_;
  const std::size_t max_size_;
  const milliseconds connect_timeout_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::vector<std::unique_ptr<Connection>> idle_ GUARDED_BY(mu_);
  std::size_t open_ GUARDED_BY(mu_) = 0;  // idle + lent + being opened
};

}  // namespace distrlock::detail::pg
