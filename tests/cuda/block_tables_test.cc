// The device block tables against their host mirror: a shuffled run of admissions, preemptions,
// cancellations, finishes and prefix-shared admissions (the scheduler's plans), each step's
// deltas uploaded and applied by UpdateBlockTables, leaves every live slot's device row equal
// to the host BlockTables row, and the step's gathered rows equal to its sequences' tables. And
// the placeholder tokens of async scheduling, resolved by the same launch. Skips without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "backend/cuda/step_inputs.h"
#include "engine/block_allocator.h"
#include "engine/scheduler.h"

namespace gqa {
namespace {

bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

constexpr int kBlock = 4, kNumBlocks = 14, kMaxSeqs = 6, kWidth = 32;

std::unique_ptr<Sequence> Seq(uint64_t id, std::vector<int32_t> prompt, int max_new) {
  Request r;
  r.prompt = std::move(prompt);
  r.stopping.max_new_tokens = max_new;
  return std::make_unique<Sequence>(std::move(r), id);
}

std::vector<int32_t> ToHost(const int32_t* device, size_t n) {
  std::vector<int32_t> host(n);
  EXPECT_EQ(cudaMemcpy(host.data(), device, n * sizeof(int32_t), cudaMemcpyDeviceToHost),
            cudaSuccess);
  return host;
}

TEST(DeviceBlockTablesTest, DeltasKeepTheDeviceTablesEqualToTheHostMirror) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped";
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto inputs = cuda::StepInputs::Create({/*max_tokens=*/64, kMaxSeqs, kWidth});
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  ASSERT_EQ(cudaMemset(const_cast<int32_t*>(inputs->device_persistent_tables()), 0xff,
                       size_t(kMaxSeqs) * kWidth * sizeof(int32_t)),
            cudaSuccess);
  std::mt19937 rng(11);
  BlockAllocator alloc(kNumBlocks, {.enabled = true, .block_size = kBlock, .salt = 5});
  Scheduler s({kBlock, kMaxSeqs, /*max_num_batched_tokens=*/12}, &alloc);
  BlockTables tables(kMaxSeqs, kWidth);
  const std::vector<int32_t> system = {7, 7, 8, 8, 9, 9, 1, 1};
  uint64_t next_id = 1;
  int steps_run = 0, preempted = 0;
  for (int step = 0; step < 600; ++step) {
    SCOPED_TRACE(step);
    if (s.num_waiting() < 4 && rng() % 2 == 0) {
      std::vector<int32_t> prompt = system;
      if (rng() % 3 == 0) prompt.resize(rng() % 4);
      for (int i = 0, n = 1 + rng() % 9; i < n; ++i) prompt.push_back(int32_t(rng() % 5));
      s.Add(Seq(next_id++, prompt, 1 + rng() % 20));
    }
    if (!s.idle() && rng() % 13 == 0) {
      std::vector<uint64_t> ids;
      for (const auto& q : s.running()) ids.push_back(q->id);
      for (const auto& q : s.waiting()) ids.push_back(q->id);
      s.Remove(ids[rng() % ids.size()]);
    }
    SchedulerOutput out = s.Schedule();
    preempted += static_cast<int>(out.preempted.size());
    if (out.empty()) continue;
    ++steps_run;
    ASSERT_TRUE(tables.Apply(out.plan.tables).ok());
    auto shape = inputs->Pack(out.plan, tables, kBlock, kNumBlocks, /*padded_seqs=*/0);
    ASSERT_TRUE(shape.ok()) << shape.status();
    ASSERT_TRUE(inputs->Upload(stream).ok());
    ASSERT_EQ(inputs->UpdateTables(*shape, kBlock, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    // Every live slot's row, as far as the host row goes.
    const auto persistent = ToHost(inputs->device_persistent_tables(), size_t(kMaxSeqs) * kWidth);
    for (const auto& q : s.running()) {
      const int slot = tables.SlotOf(q->id);
      ASSERT_GE(slot, 0);
      const auto row = tables.Row(slot);
      ASSERT_EQ(std::vector<int32_t>(persistent.begin() + size_t(slot) * kWidth,
                                     persistent.begin() + size_t(slot) * kWidth + row.size()),
                q->blocks)
          << "sequence " << q->id;
    }
    // The step's rows, decodes first, each covering its context.
    const auto& seqs = out.plan.seqs;
    std::vector<int> order(seqs.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_partition(order.begin(), order.end(), [&](int i) { return seqs[i].is_decode; });
    const auto gathered = ToHost(inputs->device_block_tables(), seqs.size() * kWidth);
    for (size_t packed = 0; packed < order.size(); ++packed) {
      const ScheduledSeq& q = seqs[order[packed]];
      const size_t needed = (q.start_pos + q.chunk.size() + kBlock - 1) / kBlock;
      const auto row = tables.Row(tables.SlotOf(q.seq_id));
      ASSERT_EQ(std::vector<int32_t>(gathered.begin() + packed * kWidth,
                                     gathered.begin() + packed * kWidth + needed),
                std::vector<int32_t>(row.begin(), row.begin() + needed))
          << "sequence " << q.seq_id;
    }
    std::vector<int32_t> tokens;
    for (const ScheduledSeq& q : seqs) {
      if (q.samples) tokens.push_back(int32_t(rng() % 5));
    }
    StepOutput result;
    result.sampled = tokens;
    result.sampled_logprobs.resize(tokens.size());
    result.prompt_logprobs.resize(seqs.size());
    ASSERT_TRUE(s.Update(out, result).ok());
  }
  EXPECT_GT(steps_run, 300);
  EXPECT_GT(preempted, 5);
  cudaStreamDestroy(stream);
}

// Async scheduling: a step scheduled before the previous one's tokens are known decodes
// placeholders; UpdateBlockTables resolves each from the previous step's sampled tokens (on
// the device) before any kernel reads the step's token ids, as ResolvedTokens does on the host.
TEST(DeviceBlockTablesTest, PlaceholderTokensAreReadFromThePreviousStepsSampledRows) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped";
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  auto inputs = cuda::StepInputs::Create({/*max_tokens=*/64, kMaxSeqs, kWidth});
  ASSERT_TRUE(inputs.ok()) << inputs.status();
  BlockAllocator alloc(kNumBlocks);
  SchedulerConfig config{kBlock, kMaxSeqs, /*max_num_batched_tokens=*/32, false};
  config.async_scheduling = true;
  Scheduler s(config, &alloc);
  BlockTables tables(kMaxSeqs, kWidth);
  for (uint64_t id = 1; id <= 3; ++id) s.Add(Seq(id, {1, 2, int32_t(id)}, 20));
  const SchedulerOutput one = s.Schedule();  // three prompts, three sampling rows
  ASSERT_EQ(one.plan.seqs.size(), 3u);
  s.Add(Seq(4, {3, 3, 3, 3, 3}, 20));
  const SchedulerOutput two = s.Schedule();  // three placeholder decodes, then a prompt
  ASSERT_EQ(two.plan.seqs.size(), 4u);
  ASSERT_TRUE(tables.Apply(one.plan.tables).ok());
  ASSERT_TRUE(tables.Apply(two.plan.tables).ok());
  auto shape = inputs->Pack(two.plan, tables, kBlock, kNumBlocks, /*padded_seqs=*/0);
  ASSERT_TRUE(shape.ok()) << shape.status();
  ASSERT_EQ(shape->num_decode, 3);
  const std::vector<int32_t> sampled = {101, 102, 103};  // step one's tokens, in its plan order
  int32_t* previous = nullptr;
  ASSERT_EQ(cudaMalloc(&previous, kMaxSeqs * sizeof(int32_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(previous, sampled.data(), sampled.size() * sizeof(int32_t),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_TRUE(inputs->Upload(stream).ok());
  ASSERT_EQ(inputs->UpdateTables(*shape, kBlock, stream, previous), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  const auto device_tokens = ToHost(inputs->device().token_ids, size_t(shape->num_tokens));
  // The host's resolution, in plan order; the device's rows are packed decodes first (here the
  // plan's own order: the three decodes, then the prompt).
  absl::StatusOr<std::vector<int32_t>> expected = ResolvedTokens(two.plan.seqs, sampled);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ(device_tokens, *expected);
  EXPECT_EQ(std::vector<int32_t>(device_tokens.begin(), device_tokens.begin() + 3),
            (std::vector<int32_t>{101, 102, 103}));
  cudaFree(previous);
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace gqa
