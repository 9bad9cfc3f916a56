// Checks a request against the model before it reaches the engine. Every error is
// INVALID_ARGUMENT and names the API field at fault.
#pragma once

#include "absl/status/status.h"
#include "engine/request.h"

namespace gqa {

struct ModelLimits {
  int vocab_size = 0;
  int max_model_len = 0;
};

absl::Status ValidateRequest(const Request& request, const ModelLimits& limits);

}  // namespace gqa
