// The conformance fixture: each test runs once per backend in dltest::backend_names(), against a real server.
#pragma once

#include <gtest/gtest.h>

#include <optional>

#include "support.hpp"

namespace dltest {

class Conformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    backend_ = &backend(GetParam());
    url_ = server_url(*backend_);
    ASSERT_FALSE(url_.empty());
    manager_.emplace(distrlock::Manager::open(url_, options()));
    manager_->migrate();
    key_ = unique_key(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }

  distrlock::Options options() {
    distrlock::Options o;
    o.logger = log_.logger();
    return o;
  }
  /// Another Manager on the same database, as a second process would have.
  distrlock::Manager other_manager() { return distrlock::Manager::open(url_, options()); }
  std::unique_ptr<CallerSession> session() { return backend_->open_session(url_); }

  distrlock::Manager& manager() { return *manager_; }
  const std::string& key() const { return key_; }

  const BackendUnderTest* backend_ = nullptr;
  std::string url_;
  CapturedLog log_;
  std::optional<distrlock::Manager> manager_;
  std::string key_;
};

/// The conformance cases that need a server process to stop, restart or cut off; an embedded database has
/// none, so they run only for the backends in server_backend_names().
class ServerConformance : public Conformance {
 protected:
  struct AttemptWhileDown {
    std::error_code ec;
    distrlock::Clock::duration took{};
    bool has_token = false;
  };
  /// One try_acquire on a fresh Manager while the server is stopped; the server is back up when this returns.
  AttemptWhileDown try_acquire_while_the_server_is_down(std::chrono::milliseconds connect_timeout,
                                                        std::chrono::milliseconds deadline) {
    AttemptWhileDown out;
    EXPECT_EQ(services("down", backend_->service), 0);
    distrlock::Options o = options();
    o.connect_timeout = connect_timeout;
    auto fresh = distrlock::Manager::open(url_, o);
    distrlock::Lock lock = fresh.lock(key());
    const auto started = distrlock::Clock::now();
    lock.try_acquire(std::chrono::seconds{30}, out.ec, distrlock::Call{.deadline = distrlock::Clock::now() + deadline});
    out.took = distrlock::Clock::now() - started;
    out.has_token = lock.token().has_value();
    EXPECT_EQ(services("up", backend_->service), 0);
    return out;
  }
};

inline std::string backend_test_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

}  // namespace dltest
