#include "loopback_relay.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace dlrelay {
namespace {

int listen_on_loopback(int& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("relay: socket failed");
  const int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 64) != 0) {
    ::close(fd);
    throw std::runtime_error("relay: cannot listen on 127.0.0.1");
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port = ntohs(a.sin_port);
  return fd;
}

int local_port(int fd) {
  sockaddr_in a{};
  socklen_t len = sizeof a;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) return 0;
  return ntohs(a.sin_port);
}

int connect_to(const std::string& host, int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, host == "localhost" ? "127.0.0.1" : host.c_str(), &a.sin_addr) != 1 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

bool write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, data, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

struct Pair {
  int client = -1;
  int server = -1;
  int server_local_port = 0;
  bool server_spoke_last = true;  // the next client data starts a burst
};

/// host and port of the URL's authority ("user:pass@host:port"), as [begin, end) offsets; npos if not a URL.
std::pair<std::size_t, std::size_t> host_port_span(const std::string& url) {
  const std::size_t scheme = url.find("://");
  if (scheme == std::string::npos) return {std::string::npos, std::string::npos};
  const std::size_t start = scheme + 3;
  const std::size_t end = std::min(url.find_first_of("/?", start), url.size());
  const std::size_t at = url.rfind('@', end);
  return {at != std::string::npos && at >= start ? at + 1 : start, end};
}

}  // namespace

Relay::Relay(std::string target_host, int target_port)
    : target_host_(std::move(target_host)), target_port_(target_port) {
  listen_fd_ = listen_on_loopback(port_);
  if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw std::runtime_error("relay: pipe failed");
  thread_ = std::thread([this] { run(); });
}

Relay::~Relay() {
  stop_ = true;
  [[maybe_unused]] const ssize_t n = ::write(wake_[1], "x", 1);
  thread_.join();
  {
    std::lock_guard lk(rule_mu_);
    if (rule_added_) iptables("-D");
  }
  ::close(listen_fd_);
  ::close(wake_[0]);
  ::close(wake_[1]);
}

bool Relay::iptables(const char* action) {
  // Both directions on the loopback interface: what the client sends to the relay and what the relay sends back.
  // Whatever iptables prints goes to stderr: a tool's stdout may be reserved for its results.
  const auto rule = [this, action](const char* dir) {
    const std::string cmd = std::string("iptables -w ") + action + " INPUT -i lo -p tcp " + dir + " " +
                            std::to_string(port_) + " -j DROP 1>&2";
    const int rc = std::system(cmd.c_str());
    if (WIFEXITED(rc) && WEXITSTATUS(rc) == 0) return true;
    last_error_ = "relay: `" + cmd + "` failed (blackhole mode needs root and iptables)";
    return false;
  };
  if (!rule("--dport")) return false;
  if (rule("--sport")) return true;
  if (std::string_view(action) == "-I") {  // never leave half a blackhole behind
    const std::string undo = "iptables -w -D INPUT -i lo -p tcp --dport " + std::to_string(port_) + " -j DROP 1>&2";
    [[maybe_unused]] const int rc = std::system(undo.c_str());
  }
  return false;
}

bool Relay::set_mode(Mode mode) {
  bool ok = true;
  {
    std::lock_guard lk(rule_mu_);
    if (mode == Mode::blackhole && !rule_added_) {
      if (!iptables("-I")) return false;
      rule_added_ = true;
    } else if (mode != Mode::blackhole && rule_added_) {
      ok = iptables("-D");  // the mode changes anyway: forwarding resumes as far as the relay can tell
      rule_added_ = false;
    }
  }
  mode_ = mode;
  [[maybe_unused]] const ssize_t n = ::write(wake_[1], "x", 1);
  return ok;
}

std::string Relay::last_error() const {
  std::lock_guard lk(rule_mu_);
  return last_error_;
}

std::vector<int> Relay::upstream_ports() const {
  std::lock_guard lk(ports_mu_);
  return upstream_ports_;
}

std::string Relay::rewrite(const std::string& url) const {
  const auto [begin, end] = host_port_span(url);
  if (begin != std::string::npos) return url.substr(0, begin) + "127.0.0.1:" + std::to_string(port_) + url.substr(end);
  // libpq key=value: host and port given last win.
  return url + " host=127.0.0.1 port=" + std::to_string(port_);
}

void Relay::run() {
  std::vector<Pair> pairs;
  std::vector<char> buf(64 * 1024);
  auto close_pair = [this](Pair& p) {
    if (p.client >= 0) ::close(p.client);
    if (p.server >= 0) ::close(p.server);
    p.client = p.server = -1;
    std::lock_guard lk(ports_mu_);
    std::erase(upstream_ports_, p.server_local_port);
  };
  while (!stop_) {
    const bool forwarding = mode_.load() != Mode::hang;
    std::vector<pollfd> fds{{wake_[0], POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    // While hanging, the pairs are not polled at all (a negative fd is skipped): POLLHUP and POLLERR are
    // reported even for no requested events, so a peer that gave up would wake this loop over and over and
    // spin a core until the mode changed.
    for (const Pair& p : pairs) {
      fds.push_back({forwarding ? p.client : -1, POLLIN, 0});
      fds.push_back({forwarding ? p.server : -1, POLLIN, 0});
    }
    if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) break;
    const std::size_t polled = pairs.size();  // pairs accepted below were not polled yet
    if ((fds[0].revents & POLLIN) != 0) {
      char drain[64];
      while (::read(wake_[0], drain, sizeof drain) > 0) {
      }
    }
    if ((fds[1].revents & POLLIN) != 0) {
      const int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) {
        ++connections_;
        const int one = 1;
        ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        const int s = connect_to(target_host_, target_port_);
        if (s < 0) {
          ::close(c);
        } else {
          const int upstream = local_port(s);
          pairs.push_back({c, s, upstream, true});
          std::lock_guard lk(ports_mu_);
          upstream_ports_.push_back(upstream);
        }
      }
    }
    if (mode_.load() == Mode::hang) continue;  // mode may have changed since the poll: forward nothing now
    for (std::size_t i = 0; i < polled; ++i) {
      Pair& p = pairs[i];
      const pollfd& cf = fds[2 + 2 * i];
      const pollfd& sf = fds[3 + 2 * i];
      if ((cf.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = ::recv(p.client, buf.data(), buf.size(), 0);
        if (n <= 0 || !write_all(p.server, buf.data(), static_cast<std::size_t>(n))) {
          close_pair(p);
          continue;
        }
        client_bytes_ += static_cast<std::uint64_t>(n);
        if (p.server_spoke_last) ++bursts_;
        p.server_spoke_last = false;
      }
      if ((sf.revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = ::recv(p.server, buf.data(), buf.size(), 0);
        if (n <= 0 || !write_all(p.client, buf.data(), static_cast<std::size_t>(n))) {
          close_pair(p);
          continue;
        }
        p.server_spoke_last = true;
      }
    }
    std::erase_if(pairs, [](const Pair& p) { return p.client < 0; });
  }
  for (Pair& p : pairs) close_pair(p);
}

int url_port(const std::string& url) {
  const auto [begin, end] = host_port_span(url);
  std::string host_port;
  if (begin != std::string::npos) {
    host_port = url.substr(begin, end - begin);
    const std::size_t colon = host_port.rfind(':');
    return colon == std::string::npos ? 0 : std::atoi(host_port.c_str() + colon + 1);
  }
  const std::size_t at = url.rfind("port=");
  return at == std::string::npos ? 0 : std::atoi(url.c_str() + at + 5);
}

}  // namespace dlrelay
