// Child processes of distrlock-torture, owned RAII-style: a WorkerProcess that is destroyed while its process
// still runs continues it (it may be SIGSTOPped), kills it and reaps it, so no worker outlives the parent's
// scope, Ctrl-C included. Workers also die with the parent (PR_SET_PDEATHSIG) if it is killed outright.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace torture {

/// fork + execve of `argv` with `env`; in the child, `event_fd` (if >= 0) becomes fd 3, stdout goes to
/// stderr when `stdout_to_stderr`, and the signal mask is cleared. Returns the pid; throws on failure.
pid_t spawn(const std::vector<std::string>& argv, const std::vector<std::string>& env, int event_fd,
            bool stdout_to_stderr);

/// "exit N" or "signal N" for a waitpid() status.
std::string describe_status(int status);

/// One worker process and the thread that reads its event pipe.
class WorkerProcess {
 public:
  /// Starts `argv` with the event pipe on fd 3; `on_line` gets every line it writes there (from the reader
  /// thread).
  WorkerProcess(int slot, const std::vector<std::string>& argv, const std::vector<std::string>& env,
                std::function<void(std::string_view)> on_line);
  ~WorkerProcess();
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  int slot() const noexcept { return slot_; }
  pid_t pid() const noexcept { return pid_; }
  bool running() const noexcept { return !status_; }
  /// Reaps the process if it has ended; returns its waitpid() status then.
  std::optional<int> poll();
  /// Waits for the end of the event stream (after the process ended).
  void join_reader() {
    if (reader_.joinable()) reader_.join();
  }
  void signal(int sig) const noexcept;

  /// Set by the parent for deaths it caused (kill fault, shutdown).
  bool injected = false;
  std::optional<std::int64_t> killed_at;

 private:
  int slot_;
  pid_t pid_ = -1;
  std::optional<int> status_;
  std::jthread reader_;
};

}  // namespace torture
