// Pure logic, no server: tokens, names, masking, the error category.
#include <gtest/gtest.h>

#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <regex>
#include <set>

#include "core/util.hpp"
#include "distrlock/error.hpp"

namespace {

// getrandom(2), interposed for CarryTheBytesTheKernelsCsprngReturned: it counts the bytes asked for and, while
// scripted_entropy is set, returns 0x00, 0x01, ... instead of the kernel's bytes.
std::atomic<bool> scripted_entropy{false};
std::atomic<std::size_t> getrandom_bytes{0};

}  // namespace

extern "C" ssize_t getrandom(void* buf, size_t n, unsigned int flags) {
  if (!scripted_entropy.load()) return ::syscall(SYS_getrandom, buf, n, flags);
  getrandom_bytes += n;
  auto* out = static_cast<unsigned char*>(buf);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<unsigned char>(i);
  return static_cast<ssize_t>(n);
}

namespace {

using namespace distrlock;
using namespace distrlock::detail;

TEST(Tokens, AreVersionFourUuidsWithoutRepeats) {
  const std::regex uuid("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}");
  std::set<std::string> seen;
  for (int i = 0; i < 10000; ++i) {
    const std::string t = random_token();
    ASSERT_TRUE(std::regex_match(t, uuid)) << t;
    seen.insert(t);
  }
  EXPECT_EQ(seen.size(), 10000U);
}

// A token must come from the OS CSPRNG on every draw, never from generator state kept in the process: such
// state is predictable from earlier tokens, and a forked child would repeat its parent's next tokens.
TEST(Tokens, AParentAndItsForkedChildDrawDifferentTokens) {
  (void)random_token();  // any state a userspace generator keeps is now initialised, and copied by fork()
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const std::string t = random_token() + random_token();
    const ssize_t written = ::write(fds[1], t.data(), t.size());
    ::_exit(written == static_cast<ssize_t>(t.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  const std::string mine = random_token() + random_token();
  std::string theirs(mine.size(), '\0');
  std::size_t got = 0;
  while (got < theirs.size()) {
    const ssize_t n = ::read(fds[0], theirs.data() + got, theirs.size() - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fds[0]);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ(got, mine.size());
  EXPECT_NE(theirs.substr(0, 36), mine.substr(0, 36)) << "the child repeated the parent's next token";
  EXPECT_NE(theirs.substr(36), mine.substr(36)) << "the child repeated the parent's next token";
}

// The token's 122 random bits are exactly what the kernel's CSPRNG (getrandom(2)) handed out for it: the test
// interposes getrandom (below) and makes it return a known pattern.
TEST(Tokens, CarryTheBytesTheKernelsCsprngReturned) {
  scripted_entropy = true;
  getrandom_bytes = 0;
  const std::string t = random_token();
  scripted_entropy = false;
  EXPECT_EQ(getrandom_bytes, 16U) << "a token takes 16 bytes from getrandom(2)";
  // Bytes 0x00..0x0f, with the version (4) and variant (10xx) bits set as RFC 4122 says.
  EXPECT_EQ(t, "00010203-0405-4607-8809-0a0b0c0d0e0f");
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
