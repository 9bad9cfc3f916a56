// The one place absl::Status becomes grpc::Status.
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace gqa {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace gqa
