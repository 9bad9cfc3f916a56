// libFuzzer: a GenerateRequest message from fuzz bytes, through the server's conversion (with a
// tokenizer, so text prompts and stop strings are exercised) and the engine's validation.
#include "engine/validation.h"
#include "fuzz_util.h"
#include "service/request_conversion.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gqa::v1::GenerateRequest proto;
  if (!proto.ParseFromArray(data, static_cast<int>(size))) return 0;
  const gqa::Tokenizer& tokenizer = gqa::fuzz::TrainedTokenizer();
  const gqa::RequestDefaults defaults{&tokenizer, 4096, 256};
  auto request = gqa::RequestFromProto(proto, defaults, "fuzz-id", 1234);
  if (!request.ok()) {
    if (request.status().code() != absl::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  const absl::Status valid = gqa::ValidateRequest(*request, {tokenizer.vocab_size(), 4096});
  if (!valid.ok() && valid.code() != absl::StatusCode::kInvalidArgument) std::abort();
  return 0;
}
