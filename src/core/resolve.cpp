#include "core/resolve.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "core/state.hpp"

namespace distrlock::detail {

bool is_numeric_host(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 || ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

namespace {

struct Lookup {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::string address;
  std::string error;
};

}  // namespace

std::string resolve_host(const std::string& host, Clock::time_point deadline, std::error_code& ec) {
  if (is_numeric_host(host)) return host;
  auto lookup = std::make_shared<Lookup>();
  try {
    std::thread([lookup, host] {
      addrinfo hints{};
      hints.ai_family = AF_UNSPEC;
      hints.ai_socktype = SOCK_STREAM;
      addrinfo* found = nullptr;
      const int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &found);
      std::string address;
      std::string error;
      if (rc != 0) {
        error = ::gai_strerror(rc);
      } else {
        char text[INET6_ADDRSTRLEN] = {};
        const addrinfo* a = found;
        const void* raw = a->ai_family == AF_INET
                              ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a->ai_addr)->sin_addr)
                              : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a->ai_addr)->sin6_addr);
        if (::inet_ntop(a->ai_family, raw, text, sizeof text) != nullptr) address = text;
        ::freeaddrinfo(found);
      }
      {
        std::lock_guard lk(lookup->mu);
        lookup->done = true;
        lookup->address = std::move(address);
        lookup->error = std::move(error);
      }
      lookup->cv.notify_all();
    }).detach();
  } catch (const std::system_error& e) {
    fail(ec, errc::unavailable, "cannot start a thread to look up " + host + ": " + e.what());
    return {};
  }
  std::unique_lock lk(lookup->mu);
  if (!lookup->cv.wait_until(lk, deadline, [&] { return lookup->done; })) {
    fail(ec, errc::unavailable, "looking up the host name " + host + " took longer than the call's deadline");
    return {};
  }
  if (lookup->address.empty()) {
    fail(ec, errc::unavailable,
         "cannot look up the host name " + host + (lookup->error.empty() ? "" : ": " + lookup->error));
    return {};
  }
  return lookup->address;
}

}  // namespace distrlock::detail
