// What the e2e tests send over gRPC and read back: a token-id GenerateRequest, and a whole
// Generate stream read to its end.
#pragma once

#include <cstdint>
#include <vector>

#include "gqa/v1/generation.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace gqa::testing {

// A Generate stream as the client saw it.
struct GenerateOutcome {
  grpc::Status status;
  std::vector<gqa::v1::GenerateResponse> messages;
  std::vector<uint32_t> tokens;                 // every message's token_ids, in order
  std::vector<gqa::v1::TokenLogprob> logprobs;  // every message's logprobs, in order
  gqa::v1::Usage usage;                         // the last usage sent (the final message's)
  const gqa::v1::GenerateResponse& final_message() const { return messages.back(); }
};

// Sends `request` and reads every message until the stream ends (deadline: 120 s).
GenerateOutcome GenerateAll(gqa::v1::Generation::Stub& stub,
                            const gqa::v1::GenerateRequest& request);

// A request for exactly `max_new_tokens` (EOS ignored) after the token ids `prompt`.
gqa::v1::GenerateRequest TokenIdRequest(const std::vector<uint32_t>& prompt, int max_new_tokens);

}  // namespace gqa::testing
