#include "process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string_view>

namespace torture {

pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, int event_fd,
            bool stdout_to_stderr) {
  // Everything the child needs is built before fork(): after it, only async-signal-safe calls.
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw std::runtime_error(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    if (event_fd >= 0 && ::dup2(event_fd, 3) < 0) ::_exit(127);
    if (stdout_to_stderr) ::dup2(2, 1);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  return pid;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

WorkerProcess::WorkerProcess(int slot, const std::vector<std::string>& argv, const std::vector<std::string>& env,
                             std::function<void(std::string_view)> on_line)
    : slot_(slot) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));
  try {
    pid_ = spawn(argv, env, fds[1], false);
  } catch (...) {
    ::close(fds[0]);
    ::close(fds[1]);
    throw;
  }
  ::close(fds[1]);
  const int rfd = fds[0];
  reader_ = std::jthread([rfd, on_line = std::move(on_line)] {
    std::string buf;
    char chunk[4096];
    for (;;) {
      const ssize_t n = ::read(rfd, chunk, sizeof chunk);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      buf.append(chunk, static_cast<std::size_t>(n));
      std::size_t start = 0;
      for (std::size_t nl = 0; (nl = buf.find('\n', start)) != std::string::npos; start = nl + 1)
        on_line(std::string_view(buf).substr(start, nl - start));
      buf.erase(0, start);
    }
    ::close(rfd);
  });
}

WorkerProcess::~WorkerProcess() {
  if (!status_) {
    ::kill(pid_, SIGKILL);  // ends a SIGSTOPped process too
    int st = 0;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
  }
  join_reader();
}

std::optional<int> WorkerProcess::poll() {
  if (status_) return status_;
  int st = 0;
  if (::waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
  return status_;
}

void WorkerProcess::signal(int sig) const noexcept {
  if (!status_) ::kill(pid_, sig);
}

}  // namespace torture
