#include <algorithm>

#include "core/state.hpp"

namespace distrlock::detail {

Heartbeat::~Heartbeat() {
  if (thread_.joinable()) {
    thread_.request_stop();
    cv_.notify_all();
    thread_.join();
  }
}

void Heartbeat::add(std::shared_ptr<Beat> beat) {
  {
    std::lock_guard lk(mu_);
    beat->registered = true;
    beat->next_due = Clock::now() + beat->extend_every;
    beats_.push_back(std::move(beat));
    changed_ = true;
    if (!thread_.joinable()) thread_ = std::jthread([this](std::stop_token st) { run(st); });
  }
  cv_.notify_all();
}

void Heartbeat::remove(const std::shared_ptr<Beat>& beat) {
  {
    std::lock_guard lk(mu_);
    beat->registered = false;
    std::erase(beats_, beat);
    changed_ = true;
  }
  cv_.notify_all();
}

void Heartbeat::mark_lost_locked(const std::shared_ptr<Beat>& beat, const char* why) {
  beat->registered = false;
  beat->lost.store(true);
  std::erase(beats_, beat);
  lost_.push_back({beat, why});
}

void Heartbeat::report_lost(std::unique_lock<std::mutex>& lk) {
  if (lost_.empty()) return;
  std::vector<Lost> lost = std::exchange(lost_, {});
  // Outside the lock: stop callbacks and the logger are user code, which may call back into the library.
  lk.unlock();
  for (const Lost& l : lost) {
    l.beat->stop.request_stop();
    manager_.log(LogLevel::warning, std::string("lease lost: ") + describe(l.beat->key, l.beat->token) + " fence=" +
                                        std::to_string(l.beat->fence) + " on " + manager_.masked_url + ": " + l.why +
                                        "; the work it guards was told to stop");
  }
  lk.lock();
}

void Heartbeat::run(std::stop_token stop) {
  std::unique_lock lk(mu_);
  while (!stop.stop_requested()) {
    Clock::time_point wake = Clock::time_point::max();
    for (const auto& b : beats_) wake = std::min({wake, b->next_due, b->valid_until - b->safety_margin});
    changed_ = false;
    if (wake == Clock::time_point::max()) {
      cv_.wait(lk, stop, [this] { return changed_; });
    } else {
      cv_.wait_until(lk, stop, wake, [this] { return changed_; });
    }
    if (stop.stop_requested()) break;

    const Clock::time_point now = Clock::now();
    std::vector<std::shared_ptr<Beat>> batch;
    std::vector<std::shared_ptr<Beat>> expiring;
    for (const auto& b : beats_) {
      if (now >= b->valid_until - b->safety_margin) {
        expiring.push_back(b);
      } else if (b->next_due - now <= b->extend_every / 2) {
        batch.push_back(b);  // due, or half-way there: extending it now lets it share this statement
      }
    }
    for (const auto& b : expiring)
      mark_lost_locked(b, "it came within its safety margin of expiring without a successful extension");
    report_lost(lk);
    std::erase_if(batch, [](const auto& b) { return !b->registered; });  // released while unlocked
    if (batch.empty()) continue;

    Clock::time_point deadline = now + manager_.options.operation_timeout;
    std::vector<ExtendRequest> requests;
    requests.reserve(batch.size());
    for (const auto& b : batch) {
      requests.push_back({b->key, b->token, b->ttl});  // key/token/ttl are immutable once registered
      deadline = std::min(deadline, b->valid_until - b->safety_margin);
    }
    lk.unlock();
    std::error_code ec;
    const Clock::time_point sent_at = Clock::now();
    const std::vector<milliseconds> left =
        manager_.backend->extend_many(OpContext{deadline, stop, {}}, requests, ec);
    const std::string detail = ec ? take_last_detail() : std::string();
    lk.lock();

    const Clock::time_point after = Clock::now();
    if (ec) {
      for (const auto& b : batch) {
        const milliseconds retry = std::clamp(b->extend_every / 4, milliseconds{10}, milliseconds{1000});
        b->next_due = after + retry;
      }
      lk.unlock();
      manager_.log(LogLevel::warning, "heartbeat could not extend " + std::to_string(batch.size()) +
                                          " lease(s) on " + manager_.masked_url + ": " + ec.message() +
                                          (detail.empty() ? "" : ": " + detail) + "; retrying");
      lk.lock();
      continue;
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      Beat& b = *batch[i];
      if (!b.registered) continue;  // released while the statement ran
      if (left[i] < milliseconds{0}) {
        mark_lost_locked(batch[i], "another token holds the key, or the lease expired");
      } else {
        b.valid_until = sent_at + left[i];
        b.next_due = after + b.extend_every;
      }
    }
    report_lost(lk);
  }
}

}  // namespace distrlock::detail
