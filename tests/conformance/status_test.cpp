// Who holds what, and handles on leases granted elsewhere.
#include <algorithm>
#include <thread>

#include "fixture.hpp"

namespace dltest {
namespace {

using distrlock::errc;

TEST_P(Conformance, StatusShowsAHeldKeyWithItsOwnerFenceAndTimeLeft) {
  distrlock::Options o = options();
  o.owner = "report-host:42";
  auto m = distrlock::Manager::open(url_, o);
  distrlock::Lock lock = m.lock(key());
  ASSERT_TRUE(lock.try_acquire(30s));

  const auto st = manager().status({key()});
  ASSERT_EQ(st.size(), 1U);
  EXPECT_EQ(st[0].key, key());
  EXPECT_TRUE(st[0].held);
  EXPECT_EQ(st[0].owner, "report-host:42");
  EXPECT_EQ(st[0].fence, *lock.fencing_token());
  EXPECT_GT(st[0].expires_in, 25s);
  EXPECT_LE(st[0].expires_in, 30s);
}

TEST_P(Conformance, StatusShowsReleasedAndNeverSeenKeysAsFree) {
  distrlock::Lock lock = manager().lock(key());
  ASSERT_TRUE(lock.try_acquire(30s));
  const std::int64_t fence = *lock.fencing_token();
  lock.release();
  const std::string never = key() + "/never";

  const auto st = manager().status({never, key()});
  ASSERT_EQ(st.size(), 2U);
  EXPECT_EQ(st[0].key, never);
  EXPECT_FALSE(st[0].held);
  EXPECT_EQ(st[0].fence, 0);
  EXPECT_EQ(st[1].key, key());
  EXPECT_FALSE(st[1].held);
  EXPECT_EQ(st[1].fence, fence) << "a released key keeps its last fencing token";
  EXPECT_EQ(st[1].owner, "");
  EXPECT_EQ(st[1].expires_in, 0ms);
}

TEST_P(Conformance, StatusShowsAnExpiredLeaseAsFreeWithNeitherOwnerNorTimeLeft) {
  distrlock::Options o = options();
  o.owner = "gone-host:7";
  auto m = distrlock::Manager::open(url_, o);
  distrlock::Lock lock = m.lock(key());
  ASSERT_TRUE(lock.try_acquire(200ms));
  std::this_thread::sleep_for(400ms);  // expired by the database's clock; the row still names its owner

  const auto st = manager().status({key()});
  ASSERT_EQ(st.size(), 1U);
  EXPECT_FALSE(st[0].held);
  EXPECT_EQ(st[0].owner, "");
  EXPECT_EQ(st[0].expires_in, 0ms);
  EXPECT_EQ(st[0].fence, *lock.fencing_token());
}

TEST_P(Conformance, StatusWithoutKeysListsEveryKeyInTheTable) {
  distrlock::Lock lock = manager().lock(key());
  ASSERT_TRUE(lock.try_acquire(30s));
  const auto all = manager().status();
  const auto it = std::find_if(all.begin(), all.end(), [&](const auto& s) { return s.key == key(); });
  ASSERT_NE(it, all.end());
  EXPECT_TRUE(it->held);
  EXPECT_TRUE(std::is_sorted(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.key < b.key; }));
}

TEST_P(Conformance, AnAdoptedLeaseCanBeExtendedAndReleasedByItsToken) {
  distrlock::Lock original = manager().lock(key());
  ASSERT_TRUE(original.try_acquire(2s));
  distrlock::Lock adopted = other_manager().adopt(key(), *original.token());
  EXPECT_FALSE(adopted.fencing_token().has_value());
  adopted.extend(30s);
  EXPECT_GT(manager().status({key()})[0].expires_in, 25s);
  adopted.release();
  EXPECT_FALSE(manager().status({key()})[0].held);
}

TEST_P(Conformance, AnAdoptedWrongTokenCanNeitherExtendNorRelease) {
  distrlock::Lock original = manager().lock(key());
  ASSERT_TRUE(original.try_acquire(30s));
  distrlock::Lock impostor = manager().adopt(key(), "not-the-token");
  std::error_code ec;
  impostor.extend(30s, ec);
  EXPECT_EQ(ec, errc::already_released);
  impostor = manager().adopt(key(), "not-the-token");
  impostor.release(ec);
  EXPECT_EQ(ec, errc::already_released);
  EXPECT_TRUE(manager().status({key()})[0].held);
}

}  // namespace
}  // namespace dltest
