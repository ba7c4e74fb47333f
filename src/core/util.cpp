#include "core/util.hpp"

#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <stdexcept>

namespace distrlock::detail {

std::string random_token() {
  std::array<unsigned char, 16> b{};
  std::size_t got = 0;
  while (got < b.size()) {
    const ssize_t n = ::getrandom(b.data() + got, b.size() - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    got += static_cast<std::size_t>(n);
  }
  b[6] = static_cast<unsigned char>((b[6] & 0x0f) | 0x40);  // version 4
  b[8] = static_cast<unsigned char>((b[8] & 0x3f) | 0x80);  // RFC 4122 variant
  std::string out;
  out.reserve(36);
  static constexpr char digits[] = "0123456789abcdef";
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(digits[b[i] >> 4]);
    out.push_back(digits[b[i] & 0xf]);
  }
  return out;
}

std::string check_key(std::string_view key) {
  if (key.empty()) return "key is empty (a key is 1-255 bytes)";
  if (key.size() > max_key_bytes) return "key is " + std::to_string(key.size()) + " bytes (a key is 1-255 bytes)";
  return {};
}

std::string check_token(std::string_view token) {
  if (token.empty()) return "token is empty (a token is 1-128 bytes)";
  if (token.size() > max_token_bytes)
    return "token is " + std::to_string(token.size()) + " bytes (a token is 1-128 bytes)";
  return {};
}

std::vector<std::string> parse_table_name(std::string_view table, std::string& reason) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = table.find('.', start);
    parts.emplace_back(table.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  auto fail = [&](std::string why) {
    reason = "table name \"" + printable(table) + "\" " + std::move(why);
    return std::vector<std::string>{};
  };
  if (parts.size() > 2) return fail("has more than one '.' (use name or schema.name)");
  for (const std::string& p : parts) {
    if (p.empty()) return fail("has an empty part");
    if (p.size() > max_table_part_bytes)
      return fail("has a part longer than " + std::to_string(max_table_part_bytes) + " bytes");
    for (std::size_t i = 0; i < p.size(); ++i) {
      const char c = p[i];
      const bool letter = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
      const bool digit = c >= '0' && c <= '9';
      if (!(letter || (digit && i > 0)))
        return fail("is not an identifier (allowed: letters, digits, '_', not starting with a digit)");
    }
  }
  return parts;
}

std::string quote_table_name(const std::vector<std::string>& parts, char quote, std::string_view suffix) {
  std::string out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += '.';
    out += quote + parts[i] + (i + 1 == parts.size() ? std::string(suffix) : std::string()) + quote;
  }
  return out;
}

std::string printable(std::string_view bytes, std::size_t max_shown) {
  std::string out;
  std::size_t shown = 0;
  for (const char ch : bytes) {
    if (shown++ == max_shown) {
      out += "...";
      break;
    }
    const auto c = static_cast<unsigned char>(ch);
    if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\' && c != '\'') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

std::string mask_password(std::string_view url) {
  std::string s(url);
  const std::size_t scheme = s.find("://");
  if (scheme != std::string::npos) {
    const std::size_t auth_start = scheme + 3;
    // The user info ends at the last '@' before the query: a password may hold an unencoded '/'.
    const std::size_t query = s.find_first_of("?#", auth_start);
    const std::size_t at = s.rfind('@', query == std::string::npos ? std::string::npos : query);
    if (at != std::string::npos && at > auth_start) {
      const std::size_t colon = s.find(':', auth_start);
      if (colon != std::string::npos && colon < at) {
        s.replace(colon + 1, at - colon - 1, "***");
      }
    }
    // Passwords may also ride in the query string, more than one (password=, sslpassword=, ...).
    for (std::size_t q = s.find("password=", std::min(s.size(), s.find('?'))); q != std::string::npos;
         q = s.find("password=", q + 1)) {
      const std::size_t value = q + 9;
      const std::size_t end = s.find('&', value);
      s.replace(value, (end == std::string::npos ? s.size() : end) - value, "***");
    }
    return s;
  }
  // libpq key=value form: password=secret or password='sec ret'
  std::size_t pos = 0;
  while ((pos = s.find("password", pos)) != std::string::npos) {
    std::size_t i = pos + 8;
    while (i < s.size() && s[i] == ' ') ++i;
    if (i >= s.size() || s[i] != '=') {
      pos = i;
      continue;
    }
    ++i;
    while (i < s.size() && s[i] == ' ') ++i;
    std::size_t end = i;
    if (end < s.size() && s[end] == '\'') {
      ++end;
      while (end < s.size() && s[end] != '\'') end += (s[end] == '\\') ? 2 : 1;
      end = end < s.size() ? end + 1 : s.size();
    } else {
      while (end < s.size() && s[end] != ' ') ++end;
    }
    s.replace(i, end - i, "***");
    pos = i + 3;
  }
  return s;
}

std::string default_owner() {
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0) std::snprintf(host, sizeof host, "unknown-host");
  return std::string(host) + ":" + std::to_string(::getpid());
}

std::string to_hex(std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char ch : bytes) {
    const auto c = static_cast<unsigned char>(ch);
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 0xf]);
  }
  return out;
}

std::string from_hex(std::string_view hex) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string out;
  out.reserve(hex.size() / 2);
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    const int hi = nibble(hex[i]);
    const int lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) break;
    out.push_back(static_cast<char>(hi * 16 + lo));
  }
  return out;
}

}  // namespace distrlock::detail
