// Logprobs over gRPC against the built gqa-server: per-token logprobs and their alternatives,
// prompt logprobs in the first message, refusals, and gqa-cli --logprobs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "common/generate_client.h"
#include "common/test_checkpoint.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

using Stream = GenerateOutcome;

Stream StreamOf(pb::Generation::Stub& stub, const pb::GenerateRequest& request) {
  return GenerateAll(stub, request);
}

// top, prompt_top: -1 leaves the field unset; anything else is sent as a uint32.
pb::GenerateRequest LogprobsRequest(const std::vector<uint32_t>& prompt, int max_new, int64_t top,
                                    int64_t prompt_top) {
  pb::GenerateRequest req = TokenIdRequest(prompt, max_new);
  if (top >= 0) req.mutable_logprobs()->set_top_logprobs(static_cast<uint32_t>(top));
  if (prompt_top >= 0) {
    req.mutable_logprobs()->set_prompt_top_logprobs(static_cast<uint32_t>(prompt_top));
  }
  return req;
}

// k alternatives, most likely first, ties by lower id; a logprob is never positive.
void ExpectOrdered(const pb::TokenLogprob& lp, int k, const std::string& where) {
  ASSERT_EQ(lp.top_size(), k) << where;
  EXPECT_LE(lp.logprob(), 0.0f) << where;
  for (int i = 0; i + 1 < k; ++i) {
    EXPECT_GE(lp.top(i).logprob(), lp.top(i + 1).logprob()) << where;
    if (lp.top(i).logprob() == lp.top(i + 1).logprob()) {
      EXPECT_LT(lp.top(i).token_id(), lp.top(i + 1).token_id()) << where << ": ties by lower id";
    }
  }
}

class LogprobsServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir();
    WriteRandomCheckpoint(model_->path(), E2eConfig(2), std::random_device{}());
    // Small steps: a 40-token prompt's logprobs take several chunks.
    server_ =
        new ServerProcess(model_->path(), {"--max_num_batched_tokens=16", "--max_num_seqs=16"});
    ASSERT_TRUE(server_->started()) << server_->Log();
  }
  static void TearDownTestSuite() {
    delete server_;
    delete model_;
  }
  void SetUp() override { ASSERT_TRUE(server_->started()); }
  // The CPU backend computes in float32; the GPU in bfloat16, with kernels that differ between
  // a prefill chunk and a decode step.
  static double Tolerance() { return E2eBackend() == "cpu" ? 2e-3 : 0.15; }

  static TempDir* model_;
  static ServerProcess* server_;
};
TempDir* LogprobsServerTest::model_ = nullptr;
ServerProcess* LogprobsServerTest::server_ = nullptr;

// The logprobs of a greedy continuation equal the prompt logprobs of the prompt extended by
// that continuation: the same numbers computed once by decode steps, once by chunked prefill.
TEST_F(LogprobsServerTest, GeneratedLogprobsEqualThePromptLogprobsOfTheContinuation) {
  auto stub = server_->Stub();
  std::vector<uint32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(2 + (i * 13) % 120);
  const Stream gen = StreamOf(*stub, LogprobsRequest(prompt, 10, 4, 3));
  ASSERT_TRUE(gen.status.ok()) << gen.status.error_message();
  ASSERT_EQ(gen.tokens.size(), 10u);
  ASSERT_EQ(gen.logprobs.size(), 10u);
  for (const auto& m : gen.messages) EXPECT_EQ(m.logprobs_size(), m.token_ids_size());
  ASSERT_EQ(gen.messages[0].prompt_logprobs_size(), 40) << "prompt logprobs in the first message";
  for (size_t i = 1; i < gen.messages.size(); ++i) {
    EXPECT_EQ(gen.messages[i].prompt_logprobs_size(), 0) << "and only there";
  }
  const auto& first = gen.messages[0].prompt_logprobs(0);
  EXPECT_EQ(first.token_id(), prompt[0]);
  EXPECT_EQ(first.logprob(), 0.0f);
  EXPECT_EQ(first.top_size(), 0);
  for (int j = 1; j < 40; ++j) {
    EXPECT_EQ(gen.messages[0].prompt_logprobs(j).token_id(), prompt[j]);
    ExpectOrdered(gen.messages[0].prompt_logprobs(j), 3, "prompt " + std::to_string(j));
  }
  for (size_t i = 0; i < 10; ++i) {
    EXPECT_EQ(gen.logprobs[i].token_id(), gen.tokens[i]);
    ExpectOrdered(gen.logprobs[i], 4, "generated " + std::to_string(i));
    EXPECT_EQ(gen.logprobs[i].top(0).token_id(), gen.tokens[i]) << "greedy: the most likely";
  }

  std::vector<uint32_t> extended = prompt;
  extended.insert(extended.end(), gen.tokens.begin(), gen.tokens.end());
  const Stream again = StreamOf(*stub, LogprobsRequest(extended, 1, -1, 4));
  ASSERT_TRUE(again.status.ok()) << again.status.error_message();
  EXPECT_TRUE(again.logprobs.empty()) << "top_logprobs unset: no per-token logprobs";
  ASSERT_EQ(again.messages[0].prompt_logprobs_size(), 50);
  for (size_t i = 0; i < 10; ++i) {
    const pb::TokenLogprob& p = again.messages[0].prompt_logprobs(40 + i);
    EXPECT_EQ(p.token_id(), gen.tokens[i]);
    EXPECT_NEAR(p.logprob(), gen.logprobs[i].logprob(), Tolerance()) << "token " << i;
    if (E2eBackend() == "cpu") {  // bf16 near-ties may order differently between kernels
      EXPECT_EQ(p.top(0).token_id(), gen.logprobs[i].top(0).token_id()) << "token " << i;
    }
  }
  for (int j = 1; j < 40; ++j) {  // the shared prompt's, computed in other chunks
    EXPECT_NEAR(again.messages[0].prompt_logprobs(j).logprob(),
                gen.messages[0].prompt_logprobs(j).logprob(), Tolerance())
        << "prompt " << j;
  }
}

TEST_F(LogprobsServerTest, MoreThanTwentyIsRefusedNamingTheField) {
  auto stub = server_->Stub();
  Stream out = StreamOf(*stub, LogprobsRequest({3, 4, 5}, 2, 21, -1));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message(), "logprobs.top_logprobs: 21 must be in [0, 20]");
  out = StreamOf(*stub, LogprobsRequest({3, 4, 5}, 2, -1, 4000000000u));
  EXPECT_EQ(out.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(out.status.error_message(),
            "logprobs.prompt_top_logprobs: 4000000000 must be in [0, 20]");
  out = StreamOf(*stub, LogprobsRequest({3, 4, 5}, 2, 0, 0));  // 0: the tokens' own logprobs only
  ASSERT_TRUE(out.status.ok()) << out.status.error_message();
  ASSERT_EQ(out.logprobs.size(), 2u);
  EXPECT_EQ(out.logprobs[0].top_size(), 0);
  ASSERT_EQ(out.messages[0].prompt_logprobs_size(), 3);
  EXPECT_LT(out.messages[0].prompt_logprobs(2).logprob(), 0.0f);
}

TEST_F(LogprobsServerTest, CliPrintsLogprobs) {
  auto [code, output] =
      RunCommand({CliBin(), "--server=" + server_->address(), "--ids=3,4,5", "--max_new_tokens=2",
                  "--ignore_eos", "--logprobs=2", "--prompt_logprobs=1", "--json"});
  EXPECT_EQ(code, 0) << output;
  EXPECT_NE(output.find("\"logprobs\":[{\"logprob\":"), std::string::npos) << output;
  EXPECT_NE(output.find("\"prompt_logprobs\":[{\"logprob\":0.0"), std::string::npos) << output;
  auto [human_code, human] = RunCommand({CliBin(), "--server=" + server_->address(), "--ids=3,4,5",
                                         "--max_new_tokens=2", "--ignore_eos", "--logprobs=1"});
  EXPECT_EQ(human_code, 0) << human;
  EXPECT_NE(human.find("\nlogprob "), std::string::npos) << human;
}

}  // namespace
}  // namespace gqa::testing
