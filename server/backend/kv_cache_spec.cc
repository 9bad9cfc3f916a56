#include "backend/kv_cache_spec.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace gqa {

absl::StatusOr<KvCacheDType> ParseKvCacheDType(std::string_view option, DType compute) {
  const std::string name = absl::AsciiStrToLower(std::string(option));
  if (name == "auto") return KvCacheDType::kCompute;
  if (name == "fp8_e4m3" || name == "fp8") return KvCacheDType::kFp8E4M3;
  const std::optional<DType> named = ParseDTypeName(name);
  if (named && *named == compute) return KvCacheDType::kCompute;
  const std::string value = absl::StrCat("--kv_cache_dtype=", std::string(option));
  if (named) {
    return absl::InvalidArgumentError(
        absl::StrCat(value, ": this backend computes in ", std::string(DTypeTorchName(compute)),
                     " and stores K/V either in it (auto) or as fp8_e4m3"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(value, ": expected auto, bfloat16, float16 or fp8_e4m3"));
}

}  // namespace gqa
