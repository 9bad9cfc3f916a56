#include "engine/validation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

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

// Refusals quote the value as sent: the shortest decimal that reads back as the same float.
TEST(ValidationTest, QuotesFloatsAsSent) {
  auto message = [](float temperature, float top_p) {
    Request r = Valid();
    r.sampling.temperature = temperature;
    r.sampling.top_p = top_p;
    return std::string(ValidateRequest(r, {100, 64}).message());
  };
  EXPECT_EQ(message(0, 1.0000001f), "sampling.top_p: 1.0000001 must be in (0, 1]");
  EXPECT_EQ(message(0, std::nextafter(1.0f, 2.0f)), "sampling.top_p: 1.0000001 must be in (0, 1]");
  EXPECT_EQ(message(0, 1.1f), "sampling.top_p: 1.1 must be in (0, 1]");
  EXPECT_EQ(message(0, -1e-45f), "sampling.top_p: -1e-45 must be in (0, 1]");
  EXPECT_EQ(message(-0.1f, 1),
            "sampling.temperature: -0.1 must be a finite number >= 0 (0 = greedy)");
  EXPECT_EQ(message(-1.25e-7f, 1),
            "sampling.temperature: -1.25e-07 must be a finite number >= 0 (0 = greedy)");
  EXPECT_EQ(message(INFINITY, 1),
            "sampling.temperature: inf must be a finite number >= 0 (0 = greedy)");
}

}  // namespace
}  // namespace gqa
