#include "engine/validation.h"

#include <gtest/gtest.h>

#include <cmath>

namespace gqa {
namespace {

Request Valid() {
  Request r;
  r.prompt = {1, 2, 3};
  r.stopping.max_new_tokens = 10;
  return r;
}

void ExpectInvalid(const Request& r, const std::string& field) {
  const absl::Status st = ValidateRequest(r, {100, 64});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << field;
  EXPECT_EQ(st.message().rfind(field, 0), 0u) << st.message();
}

TEST(ValidationTest, AcceptsAValidRequest) {
  EXPECT_TRUE(ValidateRequest(Valid(), {100, 64}).ok());
}

TEST(ValidationTest, NamesTheFieldAtFault) {
  Request r = Valid();
  r.prompt.clear();
  ExpectInvalid(r, "prompt.token_ids");
  r = Valid();
  r.prompt[1] = 100;
  ExpectInvalid(r, "prompt.token_ids[1]");
  r = Valid();
  r.prompt[0] = -5;  // a uint32 id past INT32_MAX
  ExpectInvalid(r, "prompt.token_ids[0]");
  r = Valid();
  r.stopping.max_new_tokens = 0;
  ExpectInvalid(r, "stopping.max_new_tokens");
  r = Valid();
  r.stopping.max_new_tokens = 62;  // 3 + 62 > 64
  ExpectInvalid(r, "stopping.max_new_tokens");
  r = Valid();
  r.sampling.temperature = -0.1f;
  ExpectInvalid(r, "sampling.temperature");
  r = Valid();
  r.sampling.temperature = std::nanf("");
  ExpectInvalid(r, "sampling.temperature");
  r = Valid();
  r.sampling.temperature = INFINITY;
  ExpectInvalid(r, "sampling.temperature");
  for (float p : {0.0f, -0.5f, 1.5f, std::nanf("")}) {
    r = Valid();
    r.sampling.top_p = p;
    ExpectInvalid(r, "sampling.top_p");
  }
  r = Valid();
  r.sampling.top_k = -1;
  ExpectInvalid(r, "sampling.top_k");
  r = Valid();
  r.stopping.stop_token_ids = {5, 1000};
  ExpectInvalid(r, "stopping.stop_token_ids[1]");
}

}  // namespace
}  // namespace gqa
