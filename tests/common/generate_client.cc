#include "common/generate_client.h"

#include <chrono>

namespace gqa::testing {

GenerateOutcome GenerateAll(gqa::v1::Generation::Stub& stub,
                            const gqa::v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  GenerateOutcome out;
  auto reader = stub.Generate(&context, request);
  gqa::v1::GenerateResponse r;
  while (reader->Read(&r)) {
    out.tokens.insert(out.tokens.end(), r.token_ids().begin(), r.token_ids().end());
    out.logprobs.insert(out.logprobs.end(), r.logprobs().begin(), r.logprobs().end());
    if (r.has_usage()) out.usage = r.usage();
    out.messages.push_back(r);
  }
  out.status = reader->Finish();
  return out;
}

gqa::v1::GenerateRequest TokenIdRequest(const std::vector<uint32_t>& prompt, int max_new_tokens) {
  gqa::v1::GenerateRequest req;
  for (uint32_t t : prompt) req.mutable_token_ids()->add_ids(t);
  req.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  req.mutable_stopping()->set_ignore_eos(true);
  return req;
}

}  // namespace gqa::testing
