#include "distrlock/error.hpp"

namespace distrlock {
namespace {

class Category final : public std::error_category {
 public:
  const char* name() const noexcept override { return "distrlock"; }
  std::string message(int value) const override {
    switch (static_cast<errc>(value)) {
      case errc::already_acquired: return "the key is held by another token";
      case errc::already_released: return "the lease is no longer held by this token";
      case errc::timeout: return "deadline exceeded";
      case errc::cancelled: return "cancelled";
      case errc::unavailable: return "database unavailable";
      case errc::invalid_argument: return "invalid argument";
      case errc::not_migrated: return "lock table missing: run migrate()";
      case errc::lease_lost: return "lease lost while the protected work ran";
      case errc::conflict: return "transaction conflict: retry the transaction";
      case errc::backend_error: return "database error";
    }
    return "unknown distrlock error";
  }
};

}  // namespace

const std::error_category& category() noexcept {
  static const Category instance;
  return instance;
}

std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), category()}; }

bool outcome_may_be_unknown(std::error_code ec) noexcept {
  return ec == errc::timeout || ec == errc::cancelled || ec == errc::unavailable;
}

}  // namespace distrlock
