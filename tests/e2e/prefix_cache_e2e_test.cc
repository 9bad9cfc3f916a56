// Prefix caching through the built gqa-server: many requests sharing a long system prompt under a
// small pool, each equal to its solo run on a server without the cache; usage, metrics and the
// startup line.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "common/generate_client.h"
#include "common/test_checkpoint.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

using Answer = GenerateOutcome;

Answer Generate(pb::Generation::Stub& stub, const pb::GenerateRequest& request) {
  return GenerateAll(stub, request);
}

// A 100-token system prompt (six full blocks of 16 and four tokens), then a user turn of its own.
pb::GenerateRequest SharedPrefixRequest(int i) {
  std::vector<uint32_t> prompt;
  for (int t = 0; t < 100; ++t) prompt.push_back(2 + (t * 13) % 120);
  for (int t = 0; t < 3 + i % 12; ++t) prompt.push_back(2 + (t * 7 + i * 5) % 120);
  pb::GenerateRequest req = TokenIdRequest(prompt, 16);
  if (i % 3 == 1) {
    req.mutable_sampling()->set_temperature(0.9f);
    req.mutable_sampling()->set_seed(i);
  }
  return req;
}

TEST(PrefixCacheServerTest, SharersUnderASmallPoolMatchTheirSoloRunsWithoutTheCache) {
  TempDir model;
  WriteRandomCheckpoint(model.path(), E2eConfig(2), std::random_device{}());
  ServerProcess plain(model.path(), {"--enable_prefix_caching=false"});
  ASSERT_TRUE(plain.started()) << plain.Log();
  // 24 blocks of 16 tokens: about two requests without sharing, several with it.
  ServerProcess cached(model.path(), {"--num_kv_blocks=24", "--block_size=16"});
  ASSERT_TRUE(cached.started()) << cached.Log();
  EXPECT_NE(plain.Log().find("prefix caching off"), std::string::npos) << plain.Log();
  EXPECT_NE(cached.Log().find("prefix caching on"), std::string::npos) << cached.Log();

  const int n = 24;
  auto plain_stub = plain.Stub();
  std::vector<std::vector<uint32_t>> solo(n);
  for (int i = 0; i < n; ++i) {
    Answer a = Generate(*plain_stub, SharedPrefixRequest(i));
    ASSERT_TRUE(a.status.ok()) << a.status.error_message();
    EXPECT_EQ(a.usage.cached_prompt_tokens(), 0u);
    solo[i] = a.tokens;
  }
  EXPECT_EQ(plain.Metric("gqa_prefix_cache_hits_tokens_total"), 0);

  auto stub = cached.Stub();
  std::vector<Answer> got(n);
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] { got[i] = Generate(*stub, SharedPrefixRequest(i)); });
  }
  for (auto& t : threads) t.join();
  int hits = 0;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(got[i].status.ok()) << i << ": " << got[i].status.error_message();
    // On the GPU a preempted request recomputes decoded tokens with the prefill kernel (README):
    // only its length is exact there.
    if (E2eBackend() == "cpu" || got[i].usage.preemptions() == 0) {
      EXPECT_EQ(got[i].tokens, solo[i]) << "request " << i;
    } else {
      EXPECT_EQ(got[i].tokens.size(), solo[i].size()) << "request " << i;
    }
    const uint32_t c = got[i].usage.cached_prompt_tokens();
    EXPECT_EQ(c % 16, 0u) << "request " << i;
    EXPECT_LE(c, 96u) << "request " << i;  // whole blocks of the shared part only
    hits += c > 0;
  }
  EXPECT_GT(hits, n / 2);
  // A last one alone, once the others are done: its whole shared part is cached.
  Answer last = Generate(*stub, SharedPrefixRequest(0));
  EXPECT_EQ(last.usage.cached_prompt_tokens(), 96u);
  EXPECT_EQ(last.tokens, solo[0]);

  EXPECT_GE(cached.Metric("gqa_prefix_cache_hits_tokens_total"), 96.0 * (hits + 1));
  EXPECT_GT(cached.Metric("gqa_prefix_cache_queries_tokens_total"),
            cached.Metric("gqa_prefix_cache_hits_tokens_total"));
  EXPECT_GE(cached.Metric("gqa_prefix_cache_blocks"), 6);
  EXPECT_EQ(cached.Metric("gqa_kv_cache_usage_ratio"), 0);  // cached but free counts as free
  EXPECT_EQ(cached.Metric("gqa_requests_finished_total{finish_reason=\"length\"}"), n + 1);
}

}  // namespace
}  // namespace gqa::testing
