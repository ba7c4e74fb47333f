// A TCP relay on 127.0.0.1 between the library and a database server, which a test can cut on command.
//
// Modes:
//  * forward:   bytes flow both ways, as if the client were connected directly;
//  * hang:      the relay still accepts connections but forwards nothing, either way, on old or new ones: a
//               server that takes the connection and never answers (a stalled middlebox, a hung proxy);
//  * blackhole: nothing is answered at all. Packets to and from the relay's port are dropped by an iptables
//               rule on the loopback interface, so new SYNs go unanswered and established connections get no
//               ACKs, as when a network path dies. Needs root and iptables; set_mode() returns false (and
//               last_error() says why) when it cannot have it.
// Switching back to forward heals both: bytes held meanwhile are then delivered (TCP retransmits them).
//
// Shared by the tests (tests/support/relay.hpp) and distrlock-torture, which gives each worker its own relay.
//
// Thread safety: set_mode(), the counters and upstream_ports() may be used from any thread. The relay runs one thread
// of its own, stopped by the destructor, which also removes any iptables rule it added.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dlrelay {

class Relay {
 public:
  enum class Mode { forward, hang, blackhole };

  /// Listens on 127.0.0.1 (an ephemeral port) and relays to target_host:target_port.
  Relay(std::string target_host, int target_port);
  ~Relay();
  Relay(const Relay&) = delete;
  Relay& operator=(const Relay&) = delete;

  int port() const noexcept { return port_; }
  /// Returns false when the mode cannot be set (no iptables, not root), or when leaving blackhole mode
  /// could not remove its rule; last_error() then says why.
  bool set_mode(Mode mode);
  std::string last_error() const;
  Mode mode() const noexcept { return mode_.load(); }

  /// Connections accepted so far.
  std::uint64_t connections() const noexcept { return connections_.load(); }
  /// Client-to-server bursts: data the client sent after the server last spoke (or first, on a connection).
  /// A request-response protocol sends one burst per round trip.
  std::uint64_t client_bursts() const noexcept { return bursts_.load(); }
  std::uint64_t client_bytes() const noexcept { return client_bytes_.load(); }
  /// The local ports of the relay's open connections to the server: what the server sees as the client
  /// ports of the connections made through this relay (pg_stat_activity.client_port, processlist host).
  std::vector<int> upstream_ports() const;

  /// `url` (a postgresql:// or mysql:// URL, or a libpq key=value string) with its host and port replaced by
  /// this relay's.
  std::string rewrite(const std::string& url) const;

 private:
  void run();
  bool iptables(const char* action);

  std::string target_host_;
  int target_port_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  int port_ = 0;
  std::atomic<Mode> mode_{Mode::forward};
  std::atomic<std::uint64_t> connections_{0};
  std::atomic<std::uint64_t> bursts_{0};
  std::atomic<std::uint64_t> client_bytes_{0};
  std::atomic<bool> stop_{false};
  mutable std::mutex rule_mu_;
  bool rule_added_ = false;  // guarded by rule_mu_
  std::string last_error_;   // guarded by rule_mu_
  mutable std::mutex ports_mu_;
  std::vector<int> upstream_ports_;  // guarded by ports_mu_
  std::thread thread_;
};

/// The port of a postgresql:// or mysql:// URL, or of a libpq key=value string; 0 if none is found.
int url_port(const std::string& url);

}  // namespace dlrelay
