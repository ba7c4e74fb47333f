// libFuzzer target: the CLI's argument parsing, as tools/distrlock/main.cpp sets it up (CLI11 and every
// subcommand's options and checks), without running the chosen command. Input: arguments separated by
// NUL bytes. A parse error or a usage Failure is the expected answer to bad input; anything else that
// escapes is a finding.
#include <CLI/CLI.hpp>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::string> words{"distrlock"};
  std::string_view input(reinterpret_cast<const char*>(data), size);
  while (!input.empty() && words.size() < 64) {
    const std::size_t nul = input.find('\0');
    words.emplace_back(input.substr(0, nul));
    input = nul == std::string_view::npos ? std::string_view() : input.substr(nul + 1);
  }
  std::vector<const char*> argv;
  for (const std::string& w : words) argv.push_back(w.c_str());

  distrlock::cli::GlobalOptions global;
  CLI::App app{"fuzz", "distrlock"};
  app.add_option("--db", global.db);
  app.add_option("--table", global.table);
  app.add_flag("--no-migrate", global.no_migrate);
  app.require_subcommand(1);
  app.fallthrough();
  const std::vector<distrlock::cli::Command> commands = {
      distrlock::cli::add_run_command(app, global),    distrlock::cli::add_acquire_command(app, global),
      distrlock::cli::add_extend_command(app, global), distrlock::cli::add_release_command(app, global),
      distrlock::cli::add_status_command(app, global), distrlock::cli::add_migrate_command(app, global),
  };
  try {
    app.parse(static_cast<int>(argv.size()), argv.data());
  } catch (const CLI::Error&) {  // parse errors, --help
  } catch (const distrlock::cli::Failure&) {
  }
  return 0;
}
