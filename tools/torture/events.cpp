#include "events.hpp"

#include <array>
#include <charconv>

namespace torture {
namespace {

constexpr std::array<std::string_view, 9> names = {"start", "want", "grant",    "enter",         "write",
                                                   "stop",  "exit", "released", "acquire_failed"};

}  // namespace

std::string_view name_of(EventKind k) noexcept { return names.at(static_cast<std::size_t>(k)); }

std::string format_event(const Event& e) {
  std::string s(name_of(e.kind));
  for (const std::int64_t v :
       {std::int64_t{e.slot}, std::int64_t{e.pid}, std::int64_t{e.key}, e.fence, e.t0, e.t1, e.value}) {
    s += ' ';
    s += std::to_string(v);
  }
  s += '\n';
  return s;
}

std::optional<Event> parse_event(std::string_view line) {
  const std::size_t sp = line.find(' ');
  if (sp == std::string_view::npos) return std::nullopt;
  Event e;
  std::size_t k = 0;
  while (k < names.size() && names[k] != line.substr(0, sp)) ++k;
  if (k == names.size()) return std::nullopt;
  e.kind = static_cast<EventKind>(k);
  std::array<std::int64_t, 7> v{};
  const char* p = line.data() + sp;
  const char* end = line.data() + line.size();
  for (std::int64_t& x : v) {
    if (p == end || *p != ' ') return std::nullopt;
    const auto [next, err] = std::from_chars(p + 1, end, x);
    if (err != std::errc()) return std::nullopt;
    p = next;
  }
  if (p != end) return std::nullopt;
  e.slot = static_cast<int>(v[0]);
  e.pid = static_cast<long>(v[1]);
  e.key = static_cast<int>(v[2]);
  e.fence = v[3];
  e.t0 = v[4];
  e.t1 = v[5];
  e.value = v[6];
  return e;
}

}  // namespace torture
