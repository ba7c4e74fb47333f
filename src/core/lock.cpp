#include "distrlock/lock.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <random>

#include "core/lease_clock.hpp"
#include "core/state.hpp"
#include "core/util.hpp"

namespace distrlock {

using detail::fail;
using detail::throw_error;

namespace {

bool check_ttl(milliseconds ttl, std::error_code& ec) {
  if (ttl >= min_ttl) return true;
  fail(ec, errc::invalid_argument,
       "ttl must be at least " + std::to_string(min_ttl.count()) + " ms (got " + std::to_string(ttl.count()) + " ms)");
  return false;
}

/// Sleeps for `d` unless `stop` is requested first. Returns false when stopped.
bool sleep_for(milliseconds d, const std::stop_token& stop) {
  std::mutex mu;
  std::condition_variable_any cv;
  std::unique_lock lk(mu);
  return !cv.wait_for(lk, stop, d, [] { return false; }) && !stop.stop_requested();
}

}  // namespace

Lock::Lock(std::shared_ptr<detail::ManagerState> state, std::string key)
    : state_(std::move(state)), key_(std::move(key)) {}

std::optional<std::string> Lock::token() const {
  if (token_.empty()) return std::nullopt;
  return token_;
}

std::optional<std::int64_t> Lock::fencing_token() const noexcept {
  if (token_.empty() || fence_ == 0) return std::nullopt;
  return fence_;
}

void Lock::forget() noexcept {
  token_.clear();
  fence_ = 0;
  expires_in_ = milliseconds{0};
}

bool Lock::acquire_once(const std::string& token, milliseconds ttl, const Call& call, Clock::time_point deadline,
                        std::error_code& ec, milliseconds* holder_left) {
  detail::OpContext ctx{deadline, call.stop, call.connection};
  const auto sent_at = detail::LeaseClock::now();
  detail::set_nothing_sent(false);
  const detail::AcquireResult r = state_->backend->try_acquire(ctx, key_, token, ttl, state_->options.owner, ec);
  if (ec) {
    if (outcome_may_be_unknown(ec) && !detail::nothing_sent() && !call.connection) {
      // The grant may have happened: undo it with the same token, best effort, so the key is not left held
      // for a whole TTL by nobody. A caller's connection is left alone: its transaction decides. When the
      // backend knows nothing reached the database (no connection), nothing happened and nothing is undone:
      // a held lease being refreshed stays as it was.
      // The release goes out from the Manager's extender thread, so that this call still ends by its deadline.
      const auto cleanup = std::min(state_->options.operation_timeout, milliseconds{1000});
      state_->keeper->release_later(key_, token, cleanup);
      if (token == token_) forget();  // a refresh of a held lease: whatever happened, it is not held now
      state_->log(LogLevel::warning, "acquire " + detail::describe(key_, token) + " ended with an unknown outcome (" +
                                         ec.message() + "); releasing it with the same token, best effort");
    }
    return false;
  }
  if (!r.granted) {
    if (token == token_) forget();  // someone else holds the key now
    if (holder_left != nullptr) *holder_left = r.expires_in;
    detail::set_last_detail("held by \"" + detail::printable(r.holder) + "\" for another " +
                            std::to_string(r.expires_in.count()) + " ms");
    return false;
  }
  token_ = token;
  fence_ = r.fence;
  ttl_ = ttl;
  expires_in_ = r.expires_in;
  sent_at_ns_ = sent_at.time_since_epoch().count();  // the server counted from a moment after: errs early
  return true;
}

bool Lock::try_acquire(milliseconds ttl, const Call& call) {
  std::error_code ec;
  const bool ok = try_acquire(ttl, ec, call);
  if (ec) throw_error(ec, "try_acquire " + detail::describe(key_, {}));
  return ok;
}

bool Lock::try_acquire(milliseconds ttl, std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  try {
    if (std::string reason = detail::check_key(key_); !reason.empty()) return !fail(ec, errc::invalid_argument, reason);
    if (!check_ttl(ttl, ec)) return false;
    const std::string token = token_.empty() ? detail::random_token() : token_;
    const bool ok = acquire_once(token, ttl, call, state_->context(call).deadline, ec, nullptr);
    if (!ok && !ec) detail::take_last_detail();  // busy is a result, not an error
    return ok;
  } catch (const std::exception& e) {
    return !fail(ec, errc::backend_error, e.what());
  }
}

void Lock::acquire_waiting(std::string token, milliseconds ttl, milliseconds wait, std::error_code& ec,
                           const Call& call) {
  if (std::string reason = detail::check_key(key_); !reason.empty()) {
    fail(ec, errc::invalid_argument, reason);
    return;
  }
  if (!check_ttl(ttl, ec)) return;
  if (wait < milliseconds{0}) {
    fail(ec, errc::invalid_argument, "wait must be >= 0");
    return;
  }
  const Clock::time_point start = Clock::now();
  const Clock::time_point give_up = start + wait;
  const Clock::time_point deadline = state_->context(call, wait).deadline;
  thread_local std::minstd_rand jitter(std::random_device{}());
  milliseconds backoff{10};
  while (true) {
    milliseconds holder_left{0};
    if (acquire_once(token, ttl, call, deadline, ec, &holder_left)) return;
    if (ec) return;
    const Clock::time_point now = Clock::now();
    if (now >= give_up || now >= deadline) {
      ec = errc::already_acquired;  // detail (holder, time left) set by acquire_once
      return;
    }
    // Sleep for the backoff, but no longer than the holder's lease has left or the wait allows.
    milliseconds nap = backoff / 2 + milliseconds{std::uniform_int_distribution<long>(0, backoff.count() / 2)(jitter)};
    if (holder_left > milliseconds{0}) nap = std::min(nap, holder_left + milliseconds{1});
    nap = std::min(nap, std::chrono::ceil<milliseconds>(std::min(give_up, deadline) - now));
    if (!sleep_for(nap, call.stop)) {
      fail(ec, errc::cancelled, "while waiting for the key");
      return;
    }
    backoff = std::min(backoff * 2, milliseconds{250});
  }
}

void Lock::acquire(milliseconds ttl, milliseconds wait, const Call& call) {
  std::error_code ec;
  acquire(ttl, wait, ec, call);
  if (ec) throw_error(ec, "acquire " + detail::describe(key_, {}));
}

void Lock::acquire(milliseconds ttl, milliseconds wait, std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  try {
    acquire_waiting(token_.empty() ? detail::random_token() : token_, ttl, wait, ec, call);
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
  }
}

void Lock::acquire_with_static_token(std::string token, milliseconds ttl, const Call& call) {
  std::error_code ec;
  acquire_with_static_token(std::move(token), ttl, ec, call);
  if (ec) throw_error(ec, "acquire_with_static_token " + detail::describe(key_, {}));
}

void Lock::acquire_with_static_token(std::string token, milliseconds ttl, std::error_code& ec,
                                     const Call& call) noexcept {
  ec.clear();
  try {
    if (std::string reason = detail::check_token(token); !reason.empty()) {
      fail(ec, errc::invalid_argument, reason);
      return;
    }
    acquire_waiting(std::move(token), ttl, milliseconds{0}, ec, call);
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
  }
}

void Lock::extend(const Call& call) { extend(ttl_, call); }
void Lock::extend(std::error_code& ec, const Call& call) noexcept { extend(ttl_, ec, call); }

void Lock::extend(milliseconds ttl, const Call& call) {
  std::error_code ec;
  extend(ttl, ec, call);
  if (ec) throw_error(ec, "extend " + detail::describe(key_, token_));
}

void Lock::extend(milliseconds ttl, std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  try {
    if (token_.empty()) {
      fail(ec, errc::already_released, "this Lock holds nothing");
      return;
    }
    if (ttl_ == milliseconds{0} && ttl == milliseconds{0}) {
      fail(ec, errc::invalid_argument, "an adopted lease needs an explicit ttl to extend");
      return;
    }
    if (!check_ttl(ttl, ec)) return;
    const auto sent_at = detail::LeaseClock::now();
    const milliseconds left = state_->backend->extend(state_->context(call), key_, token_, ttl, ec);
    if (ec) return;
    if (left < milliseconds{0}) {
      forget();
      fail(ec, errc::already_released, "the lease expired or another token took the key");
      return;
    }
    ttl_ = ttl;
    expires_in_ = left;
    sent_at_ns_ = sent_at.time_since_epoch().count();
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
  }
}

void Lock::release(const Call& call) {
  std::error_code ec;
  const std::string token = token_;
  release(ec, call);
  if (ec) throw_error(ec, "release " + detail::describe(key_, token));
}

void Lock::release(std::error_code& ec, const Call& call) noexcept {
  ec.clear();
  try {
    if (token_.empty()) {
      fail(ec, errc::already_released, "this Lock holds nothing");
      return;
    }
    const bool released = state_->backend->release(state_->context(call), key_, token_, ec);
    if (ec) return;  // unknown outcome: keep the token so the caller can retry the release
    forget();
    if (!released) fail(ec, errc::already_released, "the lease had expired or another token took the key");
  } catch (const std::exception& e) {
    fail(ec, errc::backend_error, e.what());
  }
}

}  // namespace distrlock
