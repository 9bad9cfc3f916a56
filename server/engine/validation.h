// Checks a request against the model before it reaches the engine. Every error is
// INVALID_ARGUMENT and names the API field at fault.
#pragma once

#include <cstdint>
#include <string_view>

#include "absl/status/status.h"
#include "engine/request.h"

namespace gqa {

struct ModelLimits {
  int vocab_size = 0;
  int max_model_len = 0;
};

// A logprobs count: -1 (off) or [0, kMaxTopLogprobs]; `field` names it in the error. (int64: the
// gRPC service checks the uint32 it received before narrowing it.)
absl::Status CheckTopLogprobs(std::string_view field, int64_t value);

absl::Status ValidateRequest(const Request& request, const ModelLimits& limits);

}  // namespace gqa
