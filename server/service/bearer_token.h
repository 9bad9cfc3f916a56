// The optional bearer-token check of every gqa.v1.Generation call (--auth_token_file): a call
// must carry the metadata "authorization: Bearer <token>". Health checks stay open for probes.
#pragma once

#include <string>

#include "grpcpp/grpcpp.h"

namespace gqa {

class BearerToken {
 public:
  BearerToken() = default;  // no token: every call passes
  explicit BearerToken(std::string token) : token_(std::move(token)) {}

  bool enabled() const { return !token_.empty(); }
  const std::string& token() const { return token_; }  // for the HTTP front end's check
  // OK, or UNAUTHENTICATED naming the metadata (never echoing what was sent).
  grpc::Status Check(const grpc::ServerContextBase& context) const;

 private:
  std::string token_;
};

}  // namespace gqa
