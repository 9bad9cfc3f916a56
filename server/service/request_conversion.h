// A GenerateRequest from the wire turned into the engine's Request, with the per-request limits
// on what a client may send. Every error is INVALID_ARGUMENT naming the field and the value.
// Free of gRPC and of the engine, so a fuzzer can drive it with arbitrary messages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "chat_template/chat_template.h"
#include "engine/request.h"
#include "gqa/v1/generation.pb.h"
#include "tokenizer/tokenizer.h"

namespace gqa {

// Beyond these: INVALID_ARGUMENT.
inline constexpr size_t kMaxRequestIdBytes = 256;
inline constexpr int kMaxStopStrings = 32;
inline constexpr size_t kMaxStopStringBytes = 512;
inline constexpr int kMaxChatMessages = 10000;

struct RequestDefaults {
  const Tokenizer* tokenizer = nullptr;  // text prompts and stop strings need one
  int max_model_len = 0;
  int default_max_new_tokens = 256;
  const chat::LoadedChatTemplate* chat_template = nullptr;  // prompt.messages needs one
};

// GenerateRequest.logprobs: an unset count stays -1 (off); more than 20 is refused.
absl::Status LogprobsFromProto(const gqa::v1::LogprobsParams& proto, LogprobsParams* params);
// Appends the engine's logprobs to a GenerateResponse's logprobs or prompt_logprobs.
void AddLogprobsToProto(const std::vector<TokenLogprob>& logprobs,
                        google::protobuf::RepeatedPtrField<gqa::v1::TokenLogprob>* into);

// `generated_id` names a request that brings no request_id; `random_seed` seeds one that brings
// no sampling seed.
absl::StatusOr<Request> RequestFromProto(const gqa::v1::GenerateRequest& proto,
                                         const RequestDefaults& defaults,
                                         const std::string& generated_id, uint64_t random_seed);

}  // namespace gqa
