#include "service/bearer_token.h"

#include <cstdint>
#include <string_view>

#include "service/status_conversion.h"

namespace gqa {
namespace {

// Compares in time that depends only on the lengths, not on where the bytes differ.
bool SameBytes(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  uint8_t difference = 0;
  for (size_t i = 0; i < a.size(); ++i) difference |= uint8_t(a[i]) ^ uint8_t(b[i]);
  return difference == 0;
}

}  // namespace

grpc::Status BearerToken::Check(const grpc::ServerContextBase& context) const {
  if (!enabled()) return grpc::Status::OK;
  constexpr std::string_view kScheme = "Bearer ";
  const auto& metadata = context.client_metadata();
  for (auto it = metadata.find("authorization");
       it != metadata.end() && it->first == "authorization"; ++it) {
    const std::string_view value(it->second.data(), it->second.size());
    if (value.substr(0, kScheme.size()) == kScheme &&
        SameBytes(value.substr(kScheme.size()), token_)) {
      return grpc::Status::OK;
    }
  }
  return ToGrpcStatus(absl::UnauthenticatedError(
      "authorization: send the metadata \"authorization: Bearer <token>\" with the "
      "server's token (--auth_token_file)"));
}

}  // namespace gqa
