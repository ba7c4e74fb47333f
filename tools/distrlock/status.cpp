// distrlock status: who holds which key, by the database's clock. It only reads: a missing table is reported
// (exit 78), never created, so a mistyped --table cannot leave a new table behind.
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
  bool held = false;              ///< only keys held now
  std::string prefix;             ///< only keys that start with these bytes; "" = all
};

// The table's widest key and owner cells, in terminal columns: longer ones end in "…" (--json has them whole),
// so that one 255-byte key does not push every other column off the screen.
constexpr std::size_t max_key_width = 96;
constexpr std::size_t max_owner_width = 40;

void print_table(const std::vector<LockStatus>& rows) {
  std::vector<std::array<std::string, 5>> cells;
  cells.push_back({"KEY", "STATE", "OWNER", "FENCE", "EXPIRES IN"});
  for (const LockStatus& s : rows) {
    cells.push_back({fit_width(escape(s.key), max_key_width), s.held ? "held" : "free",
                     s.held ? fit_width(escape(s.owner), max_owner_width) : "-", std::to_string(s.fence),
                     s.held ? format_duration(s.expires_in) : "-"});
  }
  std::array<std::size_t, 5> width{};
  for (const auto& row : cells)
    for (std::size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], display_width(row[c]));
  for (const auto& row : cells) {
    std::string line;
    for (std::size_t c = 0; c < row.size(); ++c) {
      const std::size_t pad = width[c] - display_width(row[c]);
      if (c == 3) line.append(pad, ' ');  // numbers right-aligned
      line += row[c];
      if (c + 1 < row.size()) line.append((c == 3 ? 0 : pad) + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
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
  std::vector<LockStatus> rows = session.reading([&] { return session.manager().status(keys); });
  std::erase_if(rows, [&](const LockStatus& s) { return (o.held && !s.held) || !s.key.starts_with(o.prefix); });
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
  app->add_flag("--held", o->held, "Only keys that are held now");
  app->add_option("--prefix", o->prefix, "Only keys that start with PREFIX")->type_name("PREFIX");
  return {app, [o, &global](const Invocation& invocation) { return status(*o, global, invocation); }};
}

}  // namespace distrlock::cli
