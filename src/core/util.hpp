// Small pure helpers shared by the core and the backends. No I/O except the CSPRNG and gethostname.
#pragma once

#include <string>
#include <string_view>
#include <system_error>
#include <vector>

namespace distrlock::detail {

inline constexpr std::size_t max_key_bytes = 255;
inline constexpr std::size_t max_token_bytes = 128;
inline constexpr std::size_t max_table_part_bytes = 52;  // leaves room for the "_migrations" suffix in 63

/// 128 bits from the OS CSPRNG (getrandom), formatted as an RFC 4122 version-4 UUID.
std::string random_token();

/// An empty string when `key` is acceptable, else a one-line reason.
std::string check_key(std::string_view key);
std::string check_token(std::string_view token);

/// Splits "name" or "schema.name" into validated parts; empty result plus a reason when invalid.
std::vector<std::string> parse_table_name(std::string_view table, std::string& reason);
/// The parts parse_table_name gave, each quoted with `quote` (" or `) and joined with '.'; `suffix` goes on
/// the last part (for "<table>_migrations"). Safe only for validated parts: nothing is escaped.
std::string quote_table_name(const std::vector<std::string>& parts, char quote, std::string_view suffix = {});

/// Bytes shown printable: quotes and non-printables become \xNN, and long input is cut with "...".
std::string printable(std::string_view bytes, std::size_t max_shown = 255);

/// The URL or key=value string with its password replaced by "***".
std::string mask_password(std::string_view url);

/// "hostname:pid".
std::string default_owner();

std::string to_hex(std::string_view bytes);
/// The inverse of to_hex; stops at the first character that is not a hex digit pair.
std::string from_hex(std::string_view hex);

}  // namespace distrlock::detail
