// The step-explaining metrics of the built server, on the backend under test: the bytes each
// step must read follow the roofline formula for the batch that ran, the roofline time is those
// bytes over the exported bandwidth, attention fits inside its step, and the scheduler's
// per-step counts add up. Timings are read, never asserted against a speed.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

#include "common/generate_client.h"
#include "common/test_checkpoint.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

void Generate(pb::Generation::Stub& stub, int prompt_len, int max_new, uint32_t salt) {
  std::vector<uint32_t> prompt;
  for (int i = 0; i < prompt_len; ++i) prompt.push_back(2 + (i * 13 + salt) % 120);
  const GenerateOutcome out = GenerateAll(stub, TokenIdRequest(prompt, max_new));
  ASSERT_TRUE(out.status.ok());
  ASSERT_EQ(out.tokens.size(), static_cast<size_t>(max_new));
}

// Bytes per element of the served weights and KV cache: the CPU backend reads the checkpoint's
// float32 in place and keeps an fp32 cache; the CUDA backend serves bfloat16.
double ElementBytes() { return E2eBackend() == "cpu" ? 4.0 : 2.0; }

// Written out independently of server/backend/roofline.cc: every matrix once, two norms per
// layer, the final norm and the lm_head.
double WeightBytes(const ModelConfig& c) {
  const double h = c.hidden_size, q = c.num_heads * c.head_dim, kv = c.num_kv_heads * c.head_dim;
  const double layer = h * q + 2 * h * kv + q * h + 3 * h * c.intermediate_size + 2 * h;
  return (c.num_layers * layer + double(c.vocab_size) * h + h) * ElementBytes();
}

// An FP8 cache (GQA_E2E_KV_CACHE_DTYPE=fp8_e4m3) stores 1 byte per K/V element.
double KvElementBytes() {
  const char* kv = std::getenv("GQA_E2E_KV_CACHE_DTYPE");
  return kv && std::string(kv) == "fp8_e4m3" ? 1.0 : ElementBytes();
}

double KvBytesPerToken(const ModelConfig& c) {
  return 2.0 * c.num_layers * c.num_kv_heads * c.head_dim * KvElementBytes();
}

class StepMetricsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir();
    WriteRandomCheckpoint(model_->path(), E2eConfig(2), std::random_device{}());
  }
  static void TearDownTestSuite() { delete model_; }
  static TempDir* model_;
};
TempDir* StepMetricsTest::model_ = nullptr;

TEST_F(StepMetricsTest, OneRequestAloneReadsWhatTheRooflineSays) {
  ServerProcess server(model_->path(), {"--step_profile_interval=1"});
  ASSERT_TRUE(server.started()) << server.Log();
  const ModelConfig c = E2eConfig(2);
  const int prompt = 20, generated = 6;  // one prefill step, then 5 decode steps
  Generate(*server.Stub(), prompt, generated, 1);
  auto m = [&](const std::string& series) { return server.Metric(series); };
  const double decode_steps = generated - 1;
  ASSERT_EQ(m("gqa_step_duration_seconds_count{phase=\"prefill\"}"), 1);
  ASSERT_EQ(m("gqa_step_duration_seconds_count{phase=\"decode\"}"), decode_steps);

  // Bytes: the weights once per step; K/V of the whole context, which grows by one per step.
  EXPECT_DOUBLE_EQ(m("gqa_step_read_bytes_total{phase=\"prefill\",kind=\"weights\"}"),
                   WeightBytes(c));
  EXPECT_DOUBLE_EQ(m("gqa_step_read_bytes_total{phase=\"decode\",kind=\"weights\"}"),
                   decode_steps * WeightBytes(c));
  EXPECT_DOUBLE_EQ(m("gqa_step_read_bytes_total{phase=\"prefill\",kind=\"kv\"}"),
                   prompt * KvBytesPerToken(c));
  double decode_context = 0;
  for (int ctx = prompt + 1; ctx < prompt + generated; ++ctx) decode_context += ctx;
  EXPECT_DOUBLE_EQ(m("gqa_step_read_bytes_total{phase=\"decode\",kind=\"kv\"}"),
                   decode_context * KvBytesPerToken(c));

  // The roofline: those bytes over the bandwidth the server measured and exports.
  const double bandwidth = m("gqa_device_read_bandwidth_bytes_per_second");
  ASSERT_GT(bandwidth, 1e8);
  const double decode_bytes = decode_steps * WeightBytes(c) + decode_context * KvBytesPerToken(c);
  EXPECT_NEAR(m("gqa_step_roofline_seconds_sum{phase=\"decode\"}"), decode_bytes / bandwidth,
              1e-9 * decode_bytes / bandwidth);
  EXPECT_EQ(m("gqa_step_roofline_fraction_count{phase=\"decode\"}"), decode_steps);

  // Every step profiled: attention inside its step, the device inside the wall time.
  for (const std::string phase : {"prefill", "decode"}) {
    const std::string label = "{phase=\"" + phase + "\"}";
    EXPECT_EQ(m("gqa_step_device_seconds_count" + label),
              m("gqa_step_duration_seconds_count" + label));
    EXPECT_EQ(m("gqa_step_attention_seconds_count" + label),
              m("gqa_step_duration_seconds_count" + label));
    EXPECT_GT(m("gqa_step_attention_seconds_sum" + label), 0) << phase;
    EXPECT_LT(m("gqa_step_attention_seconds_sum" + label), m("gqa_step_device_seconds_sum" + label))
        << phase;
    // A step queued behind the one before it starts on the device when that one ends, which
    // the host learns a wake-up later, when its wall time starts. Over a run of queued steps
    // those leads cancel but for about one wake-up (each step's wall time begins a wake-up
    // late and ends one late), so the sums may differ by a few: measured on an H100, 0.15 us.
    // A step's device time counted twice, or in the wrong unit, is far beyond it.
    const double wake_ups_seconds = 100e-6;
    EXPECT_LE(m("gqa_step_device_seconds_sum" + label),
              m("gqa_step_duration_seconds_sum" + label) + wake_ups_seconds)
        << phase;
  }

  // The scheduler's view of the same steps.
  EXPECT_EQ(m("gqa_step_sequences_sum{state=\"decoding\"}"), decode_steps);
  EXPECT_EQ(m("gqa_step_sequences_sum{state=\"prefilling\"}"), 1);
  EXPECT_EQ(m("gqa_step_sequences_sum{state=\"resumed\"}"), 0);
  EXPECT_EQ(m("gqa_step_scheduled_tokens_total{kind=\"decode\"}"), decode_steps);
  EXPECT_EQ(m("gqa_step_scheduled_tokens_total{kind=\"prefill\"}"), prompt);
}

TEST_F(StepMetricsTest, ProfilingOneStepInFourAndNever) {
  ServerProcess sampled(model_->path(), {"--step_profile_interval=4"});
  ServerProcess never(model_->path(), {"--step_profile_interval=0"});
  ASSERT_TRUE(sampled.started() && never.started()) << sampled.Log() << never.Log();
  Generate(*sampled.Stub(), 10, 200, 2);  // 200 steps: about 50 profiled, chosen at random
  Generate(*never.Stub(), 10, 200, 2);
  auto count = [](const ServerProcess& s, const char* name) {
    return s.Metric(std::string(name) + "{phase=\"prefill\"}") +
           s.Metric(std::string(name) + "{phase=\"decode\"}");
  };
  EXPECT_EQ(count(sampled, "gqa_step_duration_seconds_count"), 200);
  const double profiled = count(sampled, "gqa_step_device_seconds_count");
  EXPECT_GT(profiled, 20);  // binomial(200, 1/4): mean 50, standard deviation 6.1
  EXPECT_LT(profiled, 80);
  EXPECT_EQ(count(sampled, "gqa_step_attention_seconds_count"), profiled);
  EXPECT_EQ(count(never, "gqa_step_attention_seconds_count"), 0);
  EXPECT_EQ(count(never, "gqa_step_device_seconds_count"), 0);
  EXPECT_EQ(count(never, "gqa_step_roofline_seconds_count"), 200);  // the roofline needs no timing
}

// Without async scheduling every preemption is resumed once. With it (the GPU's default), a
// sequence preempted while its step is in flight may sample its last token in that step: the
// preemption then becomes its finish (Scheduler::DeferFinish), so a request is resumed one time
// fewer, at most once per request.
TEST_F(StepMetricsTest, EveryPreemptionIsResumedOnceUnderASmallPool) {
  for (const bool async : {false, true}) {
    SCOPED_TRACE(async ? "async scheduling" : "no async scheduling");
    std::vector<std::string> args = SmallPoolArgs();
    args.push_back(async ? "--async_scheduling=on" : "--async_scheduling=off");
    ServerProcess small(model_->path(), args);
    ASSERT_TRUE(small.started()) << small.Log();
    auto stub = small.Stub();
    constexpr int kRequests = 12;
    std::vector<std::thread> threads;
    for (int i = 0; i < kRequests; ++i) {
      threads.emplace_back([&, i] { Generate(*stub, 6 + 2 * i, 24, 50 + i); });
    }
    for (auto& t : threads) t.join();
    const double preemptions = small.Metric("gqa_preemptions_total");
    const double resumed = small.Metric("gqa_step_sequences_sum{state=\"resumed\"}");
    EXPECT_GT(preemptions, 0) << "the pool was meant to be too small";
    if (async) {
      EXPECT_LE(resumed, preemptions);
      EXPECT_GE(resumed, preemptions - kRequests);
    } else {
      EXPECT_EQ(resumed, preemptions);
    }
    // Scheduled tokens cover every prompt and decode token, plus what preemption recomputes.
    const double scheduled = small.Metric("gqa_step_scheduled_tokens_total{kind=\"decode\"}") +
                             small.Metric("gqa_step_scheduled_tokens_total{kind=\"prefill\"}");
    EXPECT_GE(scheduled, small.Metric("gqa_prompt_tokens_total") + kRequests * 23);
  }
}

}  // namespace
}  // namespace gqa::testing
