// distrlock status: who holds which key, by the database's clock.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <cstdio>
#include <memory>

#include "common.hpp"

namespace distrlock::cli {
namespace {

struct StatusOptions {
  std::vector<std::string> keys;  ///< empty: every key in the table; more may follow "--"
  bool json = false;              ///< an array of {key, state, owner, fence, expires_in_ms}
};

/// Terminal columns of escaped text: every UTF-8 lead byte counts one (wide characters are rare in keys).
std::size_t columns(std::string_view text) {
  return static_cast<std::size_t>(
      std::count_if(text.begin(), text.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xc0U) != 0x80; }));
}

void print_table(const std::vector<LockStatus>& rows) {
  std::vector<std::array<std::string, 5>> cells;
  cells.push_back({"KEY", "STATE", "OWNER", "FENCE", "EXPIRES IN"});
  for (const LockStatus& s : rows) {
    cells.push_back({escape(s.key), s.held ? "held" : "free", s.held ? escape(s.owner) : "-", std::to_string(s.fence),
                     s.held ? format_duration(s.expires_in) : "-"});
  }
  std::array<std::size_t, 5> width{};
  for (const auto& row : cells)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], columns(row[c]));
  for (const auto& row : cells) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::size_t pad = width[c] - columns(row[c]);
      if (c == 3) line.append(pad, ' ');  // numbers right-aligned
      line += row[c];
      if (c + 1 < row.size()) line.append((c == 3 ? 0 : pad) + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

void print_json(const std::vector<LockStatus>& rows) {
  std::string out = "[";
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const LockStatus& s = rows[i];
    out += i == 0 ? "\n  {" : ",\n  {";
    out += "\"key\":" + json_string(s.key);
    if (!is_valid_utf8(s.key)) out += ",\"key_hex\":\"" + to_hex(s.key) + "\"";
    out += std::string(",\"state\":") + (s.held ? "\"held\"" : "\"free\"");
    out += ",\"owner\":" + (s.held ? json_string(s.owner) : std::string("null"));
    out += ",\"fence\":" + std::to_string(s.fence);
    out += ",\"expires_in_ms\":" + std::to_string(s.held ? s.expires_in.count() : 0) + "}";
  }
  out += rows.empty() ? "]" : "\n]";
  std::printf("%s\n", out.c_str());
}

int status(const StatusOptions& o, const GlobalOptions& global, const Invocation& invocation) {
  Reporter r = make_reporter("status", global);
  std::vector<std::string> keys = o.keys;
  keys.insert(keys.end(), invocation.tail.begin(), invocation.tail.end());
  for (const std::string& key : keys) {
    Reporter about_key = make_reporter("status", global);
    about_key.set_key(key);
    check_key(key, about_key);
  }
  if (keys.size() == 1) r.set_key(keys.front());

  Session session(global, r);
  const std::vector<LockStatus> rows = session.with_table([&] { return session.manager().status(keys); });
  if (o.json) {
    print_json(rows);
  } else {
    print_table(rows);
  }
  return exit_ok;
}

}  // namespace

Command add_status_command(CLI::App& parent, const GlobalOptions& global) {
  auto o = std::make_shared<StatusOptions>();
  CLI::App* app = parent.add_subcommand(
      "status", "Show key, state, owner, fencing token and time left of KEYs (default: every key in the table)");
  app->add_option("keys", o->keys, "Keys to show (after \"--\" for keys that start with '-')")->type_name("KEY");
  app->add_flag("--json", o->json, "Print a JSON array of {key, state, owner, fence, expires_in_ms}");
  return {app, [o, &global](const Invocation& invocation) { return status(*o, global, invocation); }};
}

}  // namespace distrlock::cli
