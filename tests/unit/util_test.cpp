// Pure logic, no server: tokens, names, masking, the error category.
#include <gtest/gtest.h>

#include <regex>
#include <set>

#include "core/util.hpp"
#include "distrlock/error.hpp"

namespace {

using namespace distrlock;
using namespace distrlock::detail;

TEST(Tokens, AreVersionFourUuidsFromTheCsprng) {
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    const std::string t = random_token();
    ASSERT_TRUE(std::regex_match(t, uuid)) << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 10000U);
}

TEST(Keys, OneTo255BytesAreAcceptedAndNothingElse) {
  EXPECT_FALSE(check_key("").empty());
  EXPECT_TRUE(check_key("k").empty());
  EXPECT_TRUE(check_key(std::string(255, '\0')).empty());
  EXPECT_FALSE(check_key(std::string(256, 'k')).empty());
}

TEST(TableNames, PlainAndSchemaQualifiedIdentifiersAreAccepted) {
  std::string reason;
  EXPECT_EQ(parse_table_name("locks", reason), (std::vector<std::string>{"locks"}));
  EXPECT_EQ(parse_table_name("ops.Locks_2", reason), (std::vector<std::string>{"ops", "Locks_2"}));
}

TEST(TableNames, AnythingThatIsNotAnIdentifierIsRejectedWithAReason) {
  for (const char* bad : {"", "a b", "a;b", "a\"b", "a'b", "1a", "a.b.c", ".a", "a.", "a-b", "ä"}) {
    std::string reason;
    EXPECT_TRUE(parse_table_name(bad, reason).empty()) << bad;
    EXPECT_FALSE(reason.empty()) << bad;
  }
  std::string reason;
  EXPECT_TRUE(parse_table_name(std::string(max_table_part_bytes + 1, 'a'), reason).empty());
}

TEST(Urls, PasswordsAreMaskedInUrlsAndKeyValueStrings) {
  EXPECT_EQ(mask_password("postgresql://app:s3cret@db:5432/app"), "postgresql://app:***@db:5432/app");
  EXPECT_EQ(mask_password("postgresql://app@db/app?password=s3cret&x=1"), "postgresql://app@db/app?password=***&x=1");
  EXPECT_EQ(mask_password("host=db password=s3cret user=app"), "host=db password=*** user=app");
  EXPECT_EQ(mask_password("host=db password = 'se cret' user=app"), "host=db password = *** user=app");
  EXPECT_EQ(mask_password("postgresql://app@db/app"), "postgresql://app@db/app");
}

TEST(Printable, QuotesAndNonPrintableBytesAreEscaped) {
  EXPECT_EQ(printable(std::string("a'\0\xff", 4)), "a\\x27\\x00\\xff");
  EXPECT_EQ(printable(std::string(100, 'x'), 3), "xxx...");
}

TEST(Errors, EveryCodeHasAMessageAndTheCategoryIsNamed) {
  EXPECT_STREQ(category().name(), "distrlock");
  for (int i = 1; i <= static_cast<int>(errc::backend_error); ++i)
    EXPECT_NE(make_error_code(static_cast<errc>(i)).message(), "unknown distrlock error") << i;
}

TEST(Errors, TimeoutsCancellationsAndLostConnectionsAreUnknownOutcomes) {
  EXPECT_TRUE(outcome_may_be_unknown(errc::timeout));
  EXPECT_TRUE(outcome_may_be_unknown(errc::cancelled));
  EXPECT_TRUE(outcome_may_be_unknown(errc::unavailable));
  EXPECT_FALSE(outcome_may_be_unknown(errc::already_acquired));
  EXPECT_FALSE(outcome_may_be_unknown(errc::invalid_argument));
}

}  // namespace
