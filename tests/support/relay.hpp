// The loopback relay of tools/torture/relay/loopback_relay.hpp (shared with distrlock-torture), for tests: a mode that
// cannot be set (blackhole without root or iptables) is recorded as a test failure.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "loopback_relay.hpp"  // tools/torture/relay/, through the distrlock_relay target

namespace dltest {

class Relay : public dlrelay::Relay {
 public:
  using dlrelay::Relay::Relay;

  /// Returns false, after recording a test failure, when the mode cannot be set.
  bool set_mode(Mode mode) {
    if (dlrelay::Relay::set_mode(mode)) return true;
    ADD_FAILURE() << last_error();
    return false;
  }
};

using dlrelay::url_port;

}  // namespace dltest
