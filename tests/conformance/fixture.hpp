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
class ServerConformance : public Conformance {};

inline std::string backend_test_name(const ::testing::TestParamInfo<std::string>& info) { return info.param; }

}  // namespace dltest
