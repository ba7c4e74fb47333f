// Built against the installed package, both through find_package(distrlock) and through pkg-config, by
// tests/consumer/check.cmake. It needs no server: Manager::open validates its arguments and connects lazily.
// Exits 0 when every check holds, 1 otherwise, naming each failed check on stderr.
#include <distrlock/distrlock.hpp>
#include <iostream>
#include <string_view>
#include <system_error>

int main() {
  int failures = 0;
  const auto check = [&failures](bool ok, std::string_view what) {
    if (ok) return;
    ++failures;
    std::cerr << "consumer: check failed: " << what << '\n';
  };

  // Port 1 on loopback: nothing listens there, so any attempt to connect would fail.
  constexpr std::string_view url = "postgresql://nobody@127.0.0.1:1/none";

  std::error_code ec;
  distrlock::Manager::open(url, {.table = "bad;name"}, ec);
  check(ec == distrlock::errc::invalid_argument, "open with table \"bad;name\" reports errc::invalid_argument");
  check(ec.category().name() == std::string_view("distrlock"), "the error's category is named \"distrlock\"");

  try {
    distrlock::Manager::open(url, {.table = "bad;name"});
    check(false, "throwing open with a bad table name throws");
  } catch (const distrlock::error& e) {
    check(e.code() == distrlock::errc::invalid_argument, "throwing open throws errc::invalid_argument");
  }

  const distrlock::Manager manager = distrlock::Manager::open(url, {}, ec);
  check(!ec, "open with a valid URL succeeds without a server (it connects lazily)");
  if (!ec) check(manager.backend_name() == "postgres", "a postgresql:// URL opens the postgres backend");

  return failures == 0 ? 0 : 1;
}
