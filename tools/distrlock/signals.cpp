#include "signals.hpp"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

namespace distrlock::cli {

std::string signal_name(int signo) {
  const char* abbrev = sigabbrev_np(signo);
  return abbrev != nullptr ? std::string("SIG") + abbrev : "signal " + std::to_string(signo);
}

bool terminates(int signo) noexcept {
  return signo == SIGINT || signo == SIGTERM || signo == SIGHUP || signo == SIGQUIT;
}

BlockedSignals::BlockedSignals() {
  ::signal(SIGCHLD, SIG_DFL);  // SIG_IGN inherited from the caller would make the kernel reap the command
  sigemptyset(&set_);
  for (const int s : forwarded_signals) sigaddset(&set_, s);
  sigaddset(&set_, SIGCHLD);
  ::pthread_sigmask(SIG_BLOCK, &set_, &original_);
  fd_ = ::signalfd(-1, &set_, SFD_CLOEXEC | SFD_NONBLOCK);
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "signalfd");
}

BlockedSignals::~BlockedSignals() { ::close(fd_); }

std::vector<signalfd_siginfo> BlockedSignals::take() const {
  std::vector<signalfd_siginfo> out;
  signalfd_siginfo info{};
  while (::read(fd_, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) out.push_back(info);
  return out;
}

Wakeup::Wakeup() : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "eventfd");
}

Wakeup::~Wakeup() { ::close(fd_); }

void Wakeup::notify() const noexcept {
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(fd_, &one, sizeof one);
}

void Wakeup::drain() const noexcept {
  std::uint64_t value = 0;
  [[maybe_unused]] const ssize_t n = ::read(fd_, &value, sizeof value);
}

void wait_for(std::span<pollfd> fds, int timeout_ms) {
  for (pollfd& p : fds) p.revents = 0;
  while (::poll(fds.data(), fds.size(), timeout_ms) < 0 && errno == EINTR) {
  }
}

InterruptWatcher::InterruptWatcher(const BlockedSignals& signals) : signals_(signals), thread_([this] { watch(); }) {}

void InterruptWatcher::stop() {
  if (!thread_.joinable()) return;
  done_.notify();
  thread_.join();
}

void InterruptWatcher::watch() {
  std::array<pollfd, 2> fds{pollfd{signals_.fd(), POLLIN, 0}, pollfd{done_.fd(), POLLIN, 0}};
  while (true) {
    wait_for(fds, -1);
    if ((fds[1].revents & POLLIN) != 0) return;
    for (const signalfd_siginfo& info : signals_.take()) {
      if (terminates(static_cast<int>(info.ssi_signo))) {
        interrupted_ = static_cast<int>(info.ssi_signo);
        cancel_.request_stop();
        return;
      }
    }
  }
}

}  // namespace distrlock::cli
