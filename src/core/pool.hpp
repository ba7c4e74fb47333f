// The connection pool every backend uses: bounded, opened lazily, each connection lent to one thread at a time.
// A backend says only how to open one connection and what makes one fit to lend or to keep, through `Opener`:
//
//   using Connection = ...;
//   std::unique_ptr<Connection> open(const OpContext& ctx, std::error_code& ec);
//       one attempt, bounded by ctx.deadline; on failure sets ec (through fail(), with its detail)
//   bool alive(Connection& c);     an idle connection may be lent: the server has not closed it meanwhile
//   bool reusable(Connection& c);  a connection handed back healthy may be kept: not left inside a transaction
//   void lend(Connection& c, const OpContext* ctx);  called with the call's context when lent, nullptr on return
//   static constexpr bool retry_open;  true: retry a failed open with backoff (50 ms doubling to 1 s) until the
//                                      deadline, for a server that may be restarting; false: fail at once
//   static constexpr std::string_view noun;  "connection", "SQLite handle": for messages
#pragma once

#include <poll.h>

#include <algorithm>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "core/backend.hpp"
#include "core/state.hpp"
#include "core/thread_annotations.hpp"

namespace distrlock::detail {

/// For Opener::alive of a server connection: an idle connection has nothing to read unless the server closed it
/// (a terminated session, a restart, an idle timeout).
inline bool idle_socket_is_open(int fd) noexcept {
  pollfd p{fd, POLLIN, 0};
  return fd >= 0 && ::poll(&p, 1, 0) == 0;
}

template <class Opener>
class Pool {
 public:
  using Connection = typename Opener::Connection;

  /// At most `max_size` connections open at once; `opener_args` construct the Opener.
  template <class... Args>
  explicit Pool(std::size_t max_size, Args&&... opener_args)
      : opener_{std::forward<Args>(opener_args)...}, max_size_(max_size) {}
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  /// A lent connection; it goes back to the pool when the Handle dies, unless discard() was called.
  class Handle {
   public:
    Handle() = default;
    Handle(Handle&& o) noexcept : pool_(o.pool_), conn_(std::move(o.conn_)) {}
    Handle& operator=(Handle&& o) noexcept {
      if (this != &o) {
        give_back(true);
        pool_ = o.pool_;
        conn_ = std::move(o.conn_);
      }
      return *this;
    }
    Handle(const Handle&) = delete;
    Handle& operator=(const Handle&) = delete;
    ~Handle() { give_back(true); }

    Connection* operator->() const noexcept { return conn_.get(); }
    Connection& operator*() const noexcept { return *conn_; }
    explicit operator bool() const noexcept { return conn_ != nullptr; }
    /// Closes the connection instead of returning it (it broke, or its state is unknown).
    void discard() noexcept { give_back(false); }

   private:
    friend class Pool;
    Handle(Pool* pool, std::unique_ptr<Connection> c, const OpContext& ctx) : pool_(pool), conn_(std::move(c)) {
      pool_->opener_.lend(*conn_, &ctx);
    }
    void give_back(bool healthy) noexcept {
      if (conn_) pool_->put_back(std::move(conn_), healthy);
    }

    Pool* pool_ = nullptr;
    std::unique_ptr<Connection> conn_;
  };

  /// Lends an idle connection, or opens one while fewer than max_size are open, or waits for one to come back,
  /// until ctx.deadline or ctx.stop. On failure returns an empty Handle with ec set.
  Handle get(const OpContext& ctx, std::error_code& ec) {
    std::unique_lock lk(mu_);
    while (true) {
      while (!idle_.empty()) {
        std::unique_ptr<Connection> c = std::move(idle_.back());
        idle_.pop_back();
        // Checked before anything is sent on it, so that a statement only ever goes out on a live connection.
        if (opener_.alive(*c)) return Handle(this, std::move(c), ctx);
        --open_;
        lk.unlock();
        c.reset();  // closed outside the lock
        lk.lock();
      }
      if (open_ < max_size_) {
        ++open_;
        lk.unlock();
        std::unique_ptr<Connection> c;
        try {
          c = open_with_backoff(ctx, ec);
        } catch (...) {  // out of memory: the slot must not stay counted
          lk.lock();
          --open_;
          lk.unlock();
          cv_.notify_one();
          throw;
        }
        if (c) return Handle(this, std::move(c), ctx);
        lk.lock();
        --open_;
        lk.unlock();
        cv_.notify_one();
        return Handle();
      }
      if (!cv_.wait_until(lk, ctx.stop, ctx.deadline, [this] { return !idle_.empty() || open_ < max_size_; })) {
        fail(ec, ctx.stop.stop_requested() ? errc::cancelled : errc::timeout,
             "no pooled " + std::string(Opener::noun) + " became free before the deadline");
        return Handle();
      }
    }
  }

  const Opener& opener() const noexcept { return opener_; }

 private:
  std::unique_ptr<Connection> open_with_backoff(const OpContext& ctx, std::error_code& ec) {
    milliseconds backoff{50};
    while (true) {
      std::error_code open_ec;
      if (std::unique_ptr<Connection> c = opener_.open(ctx, open_ec)) return c;
      const Clock::time_point retry_at = Clock::now() + backoff;
      if (!Opener::retry_open || retry_at >= ctx.deadline || ctx.stop.stop_requested()) {
        ec = open_ec;  // its detail was set by open()
        return nullptr;
      }
      std::mutex sleep_mu;
      std::unique_lock sleep_lk(sleep_mu);
      std::condition_variable_any sleeper;
      sleeper.wait_until(sleep_lk, ctx.stop, retry_at, [] { return false; });
      backoff = std::min(backoff * 2, milliseconds{1000});
    }
  }

  void put_back(std::unique_ptr<Connection> c, bool healthy) noexcept {
    opener_.lend(*c, nullptr);
    const bool keep = healthy && opener_.reusable(*c);
    {
      std::lock_guard lk(mu_);
      if (keep) {
        idle_.push_back(std::move(c));
      } else {
        --open_;
      }
    }
    cv_.notify_one();
    // A dropped connection closes here, outside the lock.
  }

  Opener opener_;
  const std::size_t max_size_;
  std::mutex mu_;
  std::condition_variable_any cv_;
  std::vector<std::unique_ptr<Connection>> idle_ GUARDED_BY(mu_);
  std::size_t open_ GUARDED_BY(mu_) = 0;  // idle + lent + being opened
};

}  // namespace distrlock::detail
