// Passwords never reach a log line or an error message: the cases a hostile URL can take.
#include <gtest/gtest.h>

#include "core/util.hpp"

namespace {

using distrlock::detail::mask_password;

TEST(MaskPassword, HidesEveryPasswordInTheQueryString) {
  const std::string masked = mask_password("postgresql://app@db/app?sslpassword=x&password=s3cr3t&user=app");
  EXPECT_EQ(masked.find("s3cr3t"), std::string::npos) << masked;
  EXPECT_EQ(masked.find("=x&"), std::string::npos) << masked;
  EXPECT_NE(masked.find("user=app"), std::string::npos) << masked;
}

TEST(MaskPassword, HidesAPasswordThatHoldsAnUnencodedSlash) {
  const std::string masked = mask_password("mysql://app:pa/ss@db:3306/app");
  EXPECT_EQ(masked.find("pa/ss"), std::string::npos) << masked;
  EXPECT_EQ(masked.find("ss@"), std::string::npos) << masked;
  EXPECT_NE(masked.find("db:3306/app"), std::string::npos) << masked;
}

TEST(MaskPassword, HidesTheUserInfoPasswordAndLeavesTheRest) {
  EXPECT_EQ(mask_password("postgresql://app:secret@db:5432/app?sslmode=require"),
            "postgresql://app:***@db:5432/app?sslmode=require");
}

TEST(MaskPassword, HidesKeyValuePasswordsQuotedOrNot) {
  const std::string masked = mask_password("host=db password='se cr et' user=app password=two");
  EXPECT_EQ(masked.find("se cr et"), std::string::npos) << masked;
  EXPECT_EQ(masked.find("two"), std::string::npos) << masked;
}

}  // namespace
