// Bad input gets errc::invalid_argument and changes nothing; odd but valid input works.
#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::errc;

TEST_P(Conformance, TableNamesWithQuotesSemicolonsOrSpacesAreInvalidArguments) {
  for (const std::string table : {"locks\"; DROP TABLE x; --", "a;b", "two words", "it's", "a.b.c", "", "1abc", "a."}) {
    distrlock::Options o = options();
    o.table = table;
    std::error_code ec;
    distrlock::Manager::open(url_, o, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << "table name: " << table;
  }
}

TEST_P(Conformance, SchemaQualifiedTableNamesAreAccepted) {
  auto admin = session();
  const std::string schema = admin->make_schema();
  distrlock::Options o = options();
  o.table = schema + ".locks";
  auto m = distrlock::Manager::open(url_, o);
  m.migrate();
  distrlock::Lock lock = m.lock(key());
  EXPECT_TRUE(lock.try_acquire(30s));
  EXPECT_EQ(admin->query("SELECT count(*) FROM " + schema + ".locks"), "1");
}

TEST_P(Conformance, EmptyAnd256ByteKeysAreInvalidArgumentsAndWriteNothing) {
  auto admin = session();
  const std::string rows_before = admin->query("SELECT count(*) FROM distributed_locks");
  for (const std::string& bad : {std::string(), std::string(256, 'k')}) {
    std::error_code ec;
    distrlock::Lock lock = manager().lock(bad, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << bad.size() << "-byte key";
    EXPECT_FALSE(lock.try_acquire(30s, ec));
    EXPECT_EQ(ec, errc::invalid_argument);
    EXPECT_THROW(manager().acquire(bad), distrlock::error);
  }
  EXPECT_EQ(admin->query("SELECT count(*) FROM distributed_locks"), rows_before);
}

TEST_P(Conformance, ANonPositiveTtlIsAnInvalidArgument) {
  distrlock::Lock lock = manager().lock(key());
  for (const distrlock::milliseconds ttl : {0ms, -5000ms}) {
    std::error_code ec;
    EXPECT_FALSE(lock.try_acquire(ttl, ec));
    EXPECT_EQ(ec, errc::invalid_argument);
    lock.acquire(ttl, 0ms, ec);
    EXPECT_EQ(ec, errc::invalid_argument);
  }
  EXPECT_TRUE(lock.try_acquire(30s)) << "the rejected calls must not have taken the key";
}

TEST_P(Conformance, AnEmptyOrOversizedStaticTokenIsAnInvalidArgument) {
  distrlock::Lock lock = manager().lock(key());
  for (const std::string& token : {std::string(), std::string(129, 't')}) {
    std::error_code ec;
    lock.acquire_with_static_token(token, 30s, ec);
    EXPECT_EQ(ec, errc::invalid_argument) << token.size() << "-byte token";
  }
}

TEST_P(Conformance, A255ByteKeyHoldingQuotesNulAndNonUtf8BytesWorks) {
  std::string key = "quote' double\" nul";
  key.push_back('\0');
  key += "\xff\xfe\xc3\x28 backslash\\ ";
  key += unique_key();
  key.resize(255, '\x80');
  distrlock::Lock lock = manager().lock(key);
  ASSERT_TRUE(lock.try_acquire(30s));
  distrlock::Lock rival = other_manager().lock(key);
  EXPECT_FALSE(rival.try_acquire(30s));
  std::string almost = key;
  almost.back() = '\x81';
  distrlock::Lock neighbour = manager().lock(almost);
  EXPECT_TRUE(neighbour.try_acquire(30s)) << "a key differing in its last byte is another lock";
  lock.extend();
  lock.release();
  EXPECT_TRUE(rival.try_acquire(30s));
}

TEST_P(Conformance, AnUnknownUrlSchemeIsAnInvalidArgument) {
  for (const std::string url : {"ftp://host/db", "oracle://x", "nonsense"}) {
    std::error_code ec;
    distrlock::Manager::open(url, options(), ec);
    EXPECT_EQ(ec, errc::invalid_argument) << url;
  }
}

}  // namespace
}  // namespace dltest
