#include "distrlock/lease.hpp"

#include <algorithm>

#include "core/lease_clock.hpp"
#include "core/state.hpp"
#include "core/util.hpp"
#include "distrlock/manager.hpp"

namespace distrlock {
namespace detail {

/// Everything a Lease owns: the manager (kept alive for the release), the lock, and the heartbeat entry.
struct LeaseState {
  std::shared_ptr<ManagerState> manager;
  Lock lock;
  std::shared_ptr<Beat> beat;
  milliseconds release_timeout{0};
  bool finished = false;
};

}  // namespace detail

using detail::fail;
using detail::throw_error;

Lease::Lease(std::shared_ptr<detail::LeaseState> state) noexcept : state_(std::move(state)) {}
Lease::Lease(Lease&&) noexcept = default;

Lease& Lease::operator=(Lease&& other) noexcept {
  if (this != &other) {
    std::error_code ignored;
    finish(ignored);
    state_ = std::move(other.state_);
  }
  return *this;
}

Lease::~Lease() {
  std::error_code ignored;
  finish(ignored);
}

namespace {

const std::string& no_text() {
  static const std::string empty;
  return empty;
}

std::stop_token stopped_token() {
  static const std::stop_source stopped = [] {
    std::stop_source s;
    s.request_stop();
    return s;
  }();
  return stopped.get_token();
}

}  // namespace

const std::string& Lease::key() const noexcept { return state_ ? state_->beat->key : no_text(); }
const std::string& Lease::token() const noexcept { return state_ ? state_->beat->token : no_text(); }
std::int64_t Lease::fencing_token() const noexcept { return state_ ? state_->beat->fence : 0; }
std::stop_token Lease::stop_token() const noexcept {
  return state_ ? state_->beat->stop.get_token() : stopped_token();
}
bool Lease::lost() const noexcept { return !state_ || state_->beat->is_lost(); }

void Lease::release() {
  std::error_code ec;
  release(ec);
  if (ec) throw_error(ec, "release " + detail::describe(key(), token()));
}

void Lease::release(std::error_code& ec) noexcept {
  ec.clear();
  if (!state_ || state_->finished) {
    fail(ec, errc::already_released, "the lease was already released");
    return;
  }
  detail::ManagerState& m = *state_->manager;
  state_->finished = true;
  m.keeper->remove(state_->beat);
  const bool was_lost = lost();
  state_->beat->lost.store(true);     // released: whoever still looks must stop
  state_->beat->stop.request_stop();  // the guarded work must not go on past the release
  Call call;
  call.deadline = Clock::now() + state_->release_timeout;
  state_->lock.release(ec, call);
  if (was_lost && !ec) {
    // The deadline passed, yet the server still had it: released now, but the work was stopped.
    m.log(LogLevel::info, "released " + detail::describe(key(), token()) + " after it was reported lost");
  }
}

void Lease::finish(std::error_code& ec) noexcept {
  if (!state_ || state_->finished) return;
  detail::ManagerState& m = *state_->manager;
  if (m.keeper->on_watchdog_thread()) {
    // Destroyed in a stop callback: the watchdog must not wait on I/O, so the extender releases it.
    state_->finished = true;
    m.keeper->remove(state_->beat);
    state_->beat->lost.store(true);
    state_->beat->stop.request_stop();
    m.keeper->release_later(key(), token(), state_->release_timeout);
    return;
  }
  const bool was_lost = lost();
  release(ec);
  if (!ec) return;
  const std::string detail = detail::take_last_detail();
  if (ec == errc::already_released && was_lost) return;  // the loss itself was already reported
  m.log(outcome_may_be_unknown(ec) ? LogLevel::error : LogLevel::warning,
        "could not release " + detail::describe(key(), token()) + " on " + m.masked_url + ": " + ec.message() +
            (detail.empty() ? "" : ": " + detail) +
            (outcome_may_be_unknown(ec) ? "; the lease ends by its TTL at the latest" : ""));
}

void Lease::finish_exclusive(std::error_code& ec) noexcept {
  ec.clear();
  const bool lost_while_working = lost();
  std::error_code released;
  release(released);
  const std::string detail = released ? detail::take_last_detail() : std::string();
  detail::ManagerState& m = *state_->manager;
  if (lost_while_working || released == errc::already_released) {
    m.log(LogLevel::warning, "do_exclusively " + detail::describe(key(), token()) + " on " + m.masked_url +
                                 ": the lease was lost before the work returned" +
                                 (lost_while_working ? std::string() : " (the release found another token holding it)") +
                                 "; its result was discarded");
    fail(ec, errc::lease_lost, "the work's result was discarded");
    return;
  }
  if (released) {
    m.log(LogLevel::error, "could not release " + detail::describe(key(), token()) + " on " + m.masked_url + ": " +
                               released.message() + (detail.empty() ? "" : ": " + detail) +
                               "; the lease ends by its TTL at the latest");
  }
}

Lease Manager::acquire(std::string key, const LeaseOptions& options, const Call& call) {
  std::error_code ec;
  std::optional<Lease> lease = acquire(key, options, ec, call);
  if (ec) throw_error(ec, "acquire " + detail::describe(key, {}));
  return std::move(*lease);
}

std::optional<Lease> Manager::acquire(std::string key, const LeaseOptions& options, std::error_code& ec,
                                      const Call& call) noexcept {
  ec.clear();
  try {
    const milliseconds extend_every =
        options.extend_every > milliseconds{0} ? options.extend_every : std::max(options.ttl / 3, milliseconds{1});
    const milliseconds margin =
        options.safety_margin > milliseconds{0} ? options.safety_margin : default_safety_margin(options.ttl);
    if (options.extend_every < milliseconds{0} || options.safety_margin < milliseconds{0} ||
        options.release_timeout < milliseconds{0}) {
      fail(ec, errc::invalid_argument, "extend_every, safety_margin and release_timeout must be >= 0");
      return std::nullopt;
    }
    if (call.connection) {
      // A Lease is extended and released on the Manager's own connections, so it may only stand on a grant that
      // has committed. On a caller's connection the grant commits or rolls back with the caller's transaction,
      // later: after a rollback another Manager would be granted the key, with the same fencing token, while
      // this Lease still looked valid.
      fail(ec, errc::invalid_argument,
           "a Lease cannot be acquired on a caller's connection (Call::connection): its grant would commit or "
           "roll back with the caller's transaction; use Lock::try_acquire on that connection, or acquire the "
           "Lease without one");
      return std::nullopt;
    }
    if (options.ttl < min_ttl) {
      fail(ec, errc::invalid_argument,
           "ttl must be at least " + std::to_string(min_ttl.count()) + " ms (got " +
               std::to_string(options.ttl.count()) + " ms)");
      return std::nullopt;
    }
    if (margin >= options.ttl) {
      fail(ec, errc::invalid_argument, "safety_margin must be shorter than ttl");
      return std::nullopt;
    }
    Lock lock = this->lock(std::move(key), ec);
    if (ec) return std::nullopt;
    lock.acquire(options.ttl, options.wait, ec, call);
    if (ec) return std::nullopt;
    auto deadline_of = [&] {
      const detail::LeaseClock::time_point sent_at{detail::LeaseClock::duration(lock.sent_at_ns_)};
      return detail::stop_deadline(sent_at, lock.expires_in(), margin);
    };
    if (deadline_of() <= detail::LeaseClock::now()) {
      // The grant came back too late to be of use: the statement waited on the server (for a row lock, say)
      // longer than the lease is counted from its send. Refresh it once with the same token, which takes no wait.
      const std::string token = *lock.token();
      lock.acquire(options.ttl, milliseconds{0}, ec, call);
      if (!ec && deadline_of() <= detail::LeaseClock::now())
        fail(ec, errc::timeout, "the grant came back after its lease would already have been over; released");
      if (ec) {
        const std::string detail = detail::take_last_detail();
        state_->keeper->release_later(lock.key(), token,
                                      std::min(state_->options.operation_timeout, milliseconds{1000}));
        detail::set_last_detail(detail);
        return std::nullopt;
      }
    }

    auto beat = std::make_shared<detail::Beat>();
    beat->key = lock.key();
    beat->token = *lock.token();
    beat->fence = *lock.fencing_token();
    beat->ttl = options.ttl;
    beat->extend_every = extend_every;
    beat->safety_margin = margin;
    beat->stop_at = deadline_of().time_since_epoch().count();
    auto state = std::make_shared<detail::LeaseState>(detail::LeaseState{
        state_, std::move(lock), beat,
        options.release_timeout > milliseconds{0} ? options.release_timeout : state_->options.operation_timeout});
    state_->keeper->add(beat);
    return Lease(std::move(state));
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
    return std::nullopt;
  }
}

}  // namespace distrlock
