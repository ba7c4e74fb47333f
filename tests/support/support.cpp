#include "support.hpp"

#include <gtest/gtest.h>

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

namespace dltest {
namespace {

std::vector<BackendUnderTest> make_backends() {
  std::vector<BackendUnderTest> all;
  all.push_back(postgres_backend_under_test());
#ifdef DISTRLOCK_TEST_SQLITE
  all.push_back(sqlite_backend_under_test());
#endif
#ifdef DISTRLOCK_TEST_MYSQL
  all.push_back(mysql_backend_under_test());
  all.push_back(mysql_portable_backend_under_test());
#endif
  return all;
}

const std::vector<BackendUnderTest>& backends() {
  static const std::vector<BackendUnderTest> all = make_backends();
  return all;
}

std::string random_suffix() {
  static std::mt19937_64 rng(std::random_device{}());
  static std::atomic<int> counter{0};
  static std::mutex mu;
  std::lock_guard lk(mu);
  return std::to_string(rng() % 1'000'000'000'000ULL) + "_" + std::to_string(counter++);
}

}  // namespace

const BackendUnderTest& backend(std::string_view name) {
  for (const auto& b : backends())
    if (b.name == name) return b;
  throw std::invalid_argument("no backend under test named " + std::string(name));
}

std::vector<std::string> backend_names() {
  std::vector<std::string> names;
  for (const auto& b : backends()) names.push_back(b.name);
  return names;
}

std::vector<std::string> server_backend_names() {
  std::vector<std::string> names;
  for (const auto& b : backends())
    if (!b.service.empty()) names.push_back(b.name);
  return names;
}

namespace {

/// An embedded database needs no server: without its variable, a test process gets a fresh file of its own
/// under $TMPDIR, removed when the process exits. Conformance cases compare Managers within one process only.
std::string embedded_url(const BackendUnderTest& b) {
  static const std::string dir = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/distrlock-test-XXXXXX";
    if (::mkdtemp(pattern.data()) == nullptr) return std::string();
    static const std::string made = pattern;
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(made, ignored);
    });
    return pattern;
  }();
  if (dir.empty()) {
    ADD_FAILURE() << "cannot create a temporary directory for the " << b.name << " database";
    return {};
  }
  return b.name + ":" + dir + "/locks.db";
}

}  // namespace

std::string server_url(const BackendUnderTest& b) {
  const char* v = std::getenv(b.env_var.c_str());
  if ((v == nullptr || *v == '\0') && b.service.empty()) return embedded_url(b);
  if (v == nullptr || *v == '\0') {
    ADD_FAILURE() << b.env_var << " is not set: start the server with `eval \"$(scripts/services start " << b.service
                  << ")\"` or run scripts/test";
    return {};
  }
  std::string url = v;
  if (!b.url_suffix.empty()) url += (url.find('?') == std::string::npos ? "?" : "&") + b.url_suffix;
  return url;
}

std::vector<std::string> split_statements(const std::string& sql) {
  std::vector<std::string> out;
  for (std::size_t at = 0; at < sql.size();) {
    const std::size_t end = std::min(sql.find(";\n", at), sql.size());
    out.push_back(sql.substr(at, end - at));
    at = end + 2;
  }
  return out;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::string unique_key(std::string_view hint) { return "test/" + std::string(hint) + "/" + random_suffix(); }
std::string unique_table() { return "t_" + random_suffix(); }

int services(const std::string& action, const std::string& service) {
  const std::string cmd = std::string(DISTRLOCK_SOURCE_DIR) + "/scripts/services " + action + " " + service + " >&2";
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

namespace {

std::string first_line(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::string line;
  std::getline(in, line);
  return line;
}

/// True while `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone).
bool running(pid_t pid) {
  if (::kill(pid, 0) != 0) return false;
  const std::string stat = first_line("/proc/" + std::to_string(pid) + "/stat");
  const std::size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] != 'Z';
}

}  // namespace

bool crash(const std::string& service) {
  const char* dir = std::getenv("DISTRLOCK_SERVICES_DIR");
  const std::filesystem::path state = std::filesystem::path(dir != nullptr && *dir != '\0' ? dir : "/tmp/distrlock-services") / service;
  std::filesystem::path pid_file;
  int signal = SIGKILL;
  if (service == "postgres") {
    pid_file = std::filesystem::path(first_line(state / "datadir")) / "postmaster.pid";
    signal = SIGQUIT;  // immediate shutdown
  } else if (service == "mariadb") {
    pid_file = std::filesystem::path(first_line(state / "tmpdir")) / "mariadbd.pid";
  } else {
    ADD_FAILURE() << "crash: no server named " << service;
    return false;
  }
  const std::string pid_text = first_line(pid_file);
  const pid_t pid = static_cast<pid_t>(std::atol(pid_text.c_str()));
  if (pid <= 0 || ::kill(pid, signal) != 0) {
    ADD_FAILURE() << "crash: cannot signal the " << service << " server (pid file " << pid_file << ": \"" << pid_text
                  << "\")";
    return false;
  }
  const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (running(pid) && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  if (running(pid)) {
    ADD_FAILURE() << "crash: the " << service << " server (pid " << pid << ") is still running";
    return false;
  }
  return true;
}

distrlock::Logger CapturedLog::logger() {
  return [this](distrlock::LogLevel level, std::string_view message) {
    std::lock_guard lk(mu_);
    lines_.emplace_back(level, std::string(message));
  };
}

bool CapturedLog::contains(distrlock::LogLevel level, std::string_view needle) const {
  std::lock_guard lk(mu_);
  for (const auto& [l, text] : lines_)
    if (l == level && text.find(needle) != std::string::npos) return true;
  return false;
}

std::vector<std::string> CapturedLog::lines() const {
  std::lock_guard lk(mu_);
  std::vector<std::string> out;
  for (const auto& [l, text] : lines_) out.push_back(text);
  return out;
}

}  // namespace dltest
