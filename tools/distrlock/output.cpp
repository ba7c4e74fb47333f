// Text the tool prints: durations, escaped keys and owners, JSON strings, one-line messages.
#include <algorithm>
#include <cstdio>
#include <utility>

#include "common.hpp"

namespace distrlock::cli {

namespace {

/// Length of the valid UTF-8 sequence that starts at s[i] (1-4), or 0 if the bytes there are not valid UTF-8
/// (stray continuation bytes, overlong forms, surrogates, code points above U+10FFFF, truncation).
std::size_t utf8_length(std::string_view s, std::size_t i, char32_t* code_point = nullptr) noexcept {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  std::size_t n = 0;
  char32_t cp = 0;
  if (c < 0x80) {
    n = 1;
    cp = c;
  } else if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
    cp = c & 0x1fU;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    cp = c & 0x0fU;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    cp = c & 0x07U;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xc0U) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3fU);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  if (code_point != nullptr) *code_point = cp;
  return n;
}

void append_hex_escape(std::string& out, const char* format, unsigned value) {
  char buf[8];
  std::snprintf(buf, sizeof buf, format, value);
  out += buf;
}

}  // namespace

std::string format_duration(milliseconds d) {
  const long long ms = d.count() < 0 ? -d.count() : d.count();
  const char* sign = d.count() < 0 ? "-" : "";
  char buf[64];
  if (ms < 1000) {
    std::snprintf(buf, sizeof buf, "%s%lldms", sign, ms);
  } else if (ms < 60'000) {
    std::snprintf(buf, sizeof buf, "%s%lld.%llds", sign, ms / 1000, ms / 100 % 10);  // truncated to 0.1 s
  } else if (ms < 3'600'000) {
    std::snprintf(buf, sizeof buf, "%s%lldm%02llds", sign, ms / 60'000, ms / 1000 % 60);
  } else {
    std::snprintf(buf, sizeof buf, "%s%lldh%02lldm", sign, ms / 3'600'000, ms / 60'000 % 60);
  }
  return buf;
}

std::string escape(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (std::size_t i = 0; i < bytes.size();) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    char32_t cp = 0;
    const std::size_t n = utf8_length(bytes, i, &cp);
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (n == 0 || cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0)) {
      // control characters (C0, DEL, C1) would drive the terminal; invalid bytes would garble it
      for (std::size_t k = 0; k < std::max<std::size_t>(n, 1); ++k)
        append_hex_escape(out, "\\x%02x", static_cast<unsigned char>(bytes[i + k]));
    } else {
      out.append(bytes.substr(i, n));
    }
    i += std::max<std::size_t>(n, 1);
  }
  return out;
}

bool is_valid_utf8(std::string_view bytes) noexcept {
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t n = utf8_length(bytes, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string json_string(std::string_view bytes) {
  std::string out = "\"";
  for (std::size_t i = 0; i < bytes.size();) {
    const std::size_t n = utf8_length(bytes, i);
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (n == 0) {
      out += "\\ufffd";
      ++i;
      continue;
    }
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c < 0x20 || c == 0x7f) {
      append_hex_escape(out, "\\u%04x", c);
    } else {
      out.append(bytes.substr(i, n));
    }
    i += n;
  }
  out.push_back('"');
  return out;
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    out.push_back(digits[c >> 4U]);
    out.push_back(digits[c & 0xfU]);
  }
  return out;
}

namespace {

/// Terminal columns of one code point, as wcwidth(3) gives them in a UTF-8 locale, without depending on the
/// locale: 0 for combining marks and zero-width characters, 2 for East Asian wide and fullwidth characters and
/// emoji, 1 otherwise. (Control characters never get here: escape() has replaced them.)
int code_point_width(char32_t cp) noexcept {
  struct Range {
    char32_t first, last;
  };
  static constexpr Range zero[] = {{0x0300, 0x036f}, {0x0483, 0x0489},  {0x0591, 0x05bd}, {0x0610, 0x061a},
                                   {0x064b, 0x065f}, {0x0e31, 0x0e31},  {0x0e34, 0x0e3a}, {0x1ab0, 0x1aff},
                                   {0x1dc0, 0x1dff}, {0x200b, 0x200f},  {0x20d0, 0x20ff}, {0xfe00, 0xfe0f},
                                   {0xfe20, 0xfe2f}, {0xe0100, 0xe01ef}};
  static constexpr Range wide[] = {
      {0x1100, 0x115f},   {0x231a, 0x231b},   {0x2329, 0x232a},   {0x23e9, 0x23ec},   {0x25fd, 0x25fe},
      {0x2614, 0x2615},   {0x2648, 0x2653},   {0x26a1, 0x26a1},   {0x26aa, 0x26ab},   {0x26bd, 0x26be},
      {0x26c4, 0x26c5},   {0x2705, 0x2705},   {0x2728, 0x2728},   {0x274c, 0x274c},   {0x2753, 0x2755},
      {0x2795, 0x2797},   {0x2b1b, 0x2b1c},   {0x2e80, 0x303e},   {0x3041, 0x33ff},   {0x3400, 0x4dbf},
      {0x4e00, 0x9fff},   {0xa000, 0xa4cf},   {0xa960, 0xa97f},   {0xac00, 0xd7a3},   {0xf900, 0xfaff},
      {0xfe10, 0xfe19},   {0xfe30, 0xfe6f},   {0xff00, 0xff60},   {0xffe0, 0xffe6},   {0x16fe0, 0x16fe4},
      {0x17000, 0x18cff}, {0x1b000, 0x1b2ff}, {0x1f004, 0x1f004}, {0x1f0cf, 0x1f0cf}, {0x1f18e, 0x1f18e},
      {0x1f191, 0x1f19a}, {0x1f200, 0x1f251}, {0x1f300, 0x1f64f}, {0x1f680, 0x1f6ff}, {0x1f7e0, 0x1f7eb},
      {0x1f90c, 0x1f9ff}, {0x1fa70, 0x1faff}, {0x20000, 0x3fffd}};
  for (const Range& r : zero)
    if (cp >= r.first && cp <= r.last) return 0;
  for (const Range& r : wide)
    if (cp >= r.first && cp <= r.last) return 2;
  return 1;
}

/// The next unit of escaped text at s[i]: an escape ("\xNN", "\\", "\"") or one UTF-8 sequence; its length
/// in bytes and its width in columns.
std::pair<std::size_t, int> next_unit(std::string_view s, std::size_t i) noexcept {
  if (s[i] == '\\' && i + 1 < s.size()) {
    const std::size_t n = s[i + 1] == 'x' ? std::min<std::size_t>(4, s.size() - i) : 2;
    return {n, static_cast<int>(n)};
  }
  char32_t cp = 0;
  const std::size_t n = utf8_length(s, i, &cp);
  if (n == 0) return {1, 1};
  return {n, code_point_width(cp)};
}

}  // namespace

std::size_t display_width(std::string_view escaped) {
  std::size_t width = 0;
  for (std::size_t i = 0; i < escaped.size();) {
    const auto [n, w] = next_unit(escaped, i);
    width += static_cast<std::size_t>(w);
    i += n;
  }
  return width;
}

std::string fit_width(std::string_view escaped, std::size_t max_width) {
  if (display_width(escaped) <= max_width) return std::string(escaped);
  std::string out;
  std::size_t width = 0;
  for (std::size_t i = 0; i < escaped.size();) {
    const auto [n, w] = next_unit(escaped, i);
    if (width + static_cast<std::size_t>(w) + 1 > max_width) break;  // keep a column for the ellipsis
    out.append(escaped.substr(i, n));
    width += static_cast<std::size_t>(w);
    i += n;
  }
  return out + "\u2026";
}

std::string one_line(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  bool space = false;
  for (const char c : text) {
    if (c == '\n' || c == '\r' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space && c != ' ' && out.back() != ' ') out.push_back(' ');
    space = false;
    if (c == ' ' && !out.empty() && out.back() == ' ') continue;
    out.push_back(c);
  }
  return out;
}

}  // namespace distrlock::cli
