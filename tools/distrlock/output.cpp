// Text the tool prints: durations, escaped keys and owners, JSON strings, one-line messages.
#include <cstdio>

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
