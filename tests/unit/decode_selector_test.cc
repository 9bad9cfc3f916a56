#include "gqa/kernels/decode_selector.h"
#include "gqa/kernels/prefill_selector.h"
#include "gqa/kernels/skinny_mma_plan.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace gqa::kernels {
namespace {

// The warpgroup kernel's choice: groups up to 64, one warpgroup, 64-key steps, two blocks per
// multiprocessor's worth of splits, per-sequence splits on a fixed grid.
TEST(DecodeSelectorTest, WarpgroupKernelChoice) {
  EXPECT_FALSE(SelectWarpgroupDecodeKernel(128, 1, 128, 16, 1, 100, 132).supported);  // group 128
  EXPECT_FALSE(SelectWarpgroupDecodeKernel(32, 1, 96, 16, 1, 100, 132).supported);    // head_dim
  EXPECT_FALSE(SelectWarpgroupDecodeKernel(32, 1, 128, 8, 1, 100, 132).supported);    // block 8
  const auto mqa = SelectWarpgroupDecodeKernel(32, 1, 128, 16, 64, 2048, 132);
  ASSERT_TRUE(mqa.supported) << mqa.reason;
  EXPECT_TRUE(mqa.warpgroup);
  EXPECT_EQ(mqa.warps, 4);
  EXPECT_EQ(mqa.key_tiles * kDecodeTileTokens, 64);
  EXPECT_EQ(mqa.stages, 3);
  EXPECT_EQ(mqa.num_splits, 4);  // 264 block slots over 64 sequences, >= 32 tiles each
  EXPECT_GT(mqa.split_tokens, 0);
  const auto group64 = SelectWarpgroupDecodeKernel(64, 1, 64, 16, 1, 32768, 132);
  ASSERT_TRUE(group64.supported) << group64.reason;
  EXPECT_GT(group64.num_splits, 64);  // one sequence: splits fill the GPU
  const auto fixed = SelectWarpgroupDecodeKernel(32, 1, 128, 16, 8, 8192, 132, 0, true);
  EXPECT_EQ(fixed.split_tokens, 0);
  EXPECT_EQ(fixed.num_splits, SelectWarpgroupDecodeKernel(32, 1, 128, 16, 8, 8192, 132).num_splits);
  EXPECT_FALSE(SelectDecodeKernel(32, 1, 128, 16, 64, 2048, 132).warpgroup);
}

TEST(DecodeSelectorTest, RefusesWhatNoKernelRuns) {
  EXPECT_FALSE(SelectDecodeKernel(64, 1, 128, 16, 1, 100, 132).supported);  // group 64
  EXPECT_FALSE(SelectDecodeKernel(32, 8, 96, 16, 1, 100, 132).supported);   // head_dim 96
  EXPECT_FALSE(SelectDecodeKernel(32, 8, 128, 8, 1, 100, 132).supported);   // block 8
  EXPECT_FALSE(SelectDecodeKernel(30, 8, 128, 16, 1, 100, 132).supported);  // 30 % 8
  const auto ok = SelectDecodeKernel(32, 8, 128, 16, 1, 100, 132);
  EXPECT_TRUE(ok.supported) << ok.reason;
  EXPECT_EQ(ok.query_tiles, 1);
  EXPECT_EQ(SelectDecodeKernel(32, 1, 64, 32, 1, 100, 132).query_tiles, 2);
}

TEST(DecodeSelectorTest, SplitsCoverTheContextInWholeTiles) {
  for (int len : {1, 15, 16, 17, 4097, 32768}) {
    for (int kv : {32, 8, 1}) {
      for (int batch : {1, 8, 64}) {
        const auto c = SelectDecodeKernel(32, kv, 128, 16, batch, len, 132);
        ASSERT_TRUE(c.supported);
        EXPECT_EQ(c.split_tokens % 16, 0);
        EXPECT_GE(c.num_splits * c.split_tokens, len);
        EXPECT_LT((c.num_splits - 1) * c.split_tokens, len) << "an empty split";
        EXPECT_LE(c.num_splits, kDecodeMaxSplits);
        // At least two tiles per warp; at least `group` tiles when the batch fills the GPU.
        if (c.num_splits > 1) {
          const bool full = batch * kv * 8 >= 132 * (kv == 1 ? 1 : 2);  // blocks per SM
          EXPECT_GE(c.split_tokens / 16, full ? std::max(8, 32 / kv) : 8);
        }
      }
    }
  }
}

TEST(DecodeSelectorTest, EveryChoiceNamesABuiltVariant) {
  for (int d : {64, 128}) {
    for (int kv : {32, 16, 8, 4, 2, 1}) {
      const auto c = SelectDecodeKernel(32, kv, d, 16, 8, 4096, 132);
      ASSERT_TRUE(c.supported);
      EXPECT_TRUE(DecodeVariantBuilt(d, c.query_tiles, {c.warps, c.stages, c.key_tiles}))
          << "kv " << kv << " d " << d << ": " << c.warps << " warps, " << c.stages << " stages, "
          << c.key_tiles << " tiles per step";
    }
  }
  EXPECT_EQ(SelectDecodeKernel(32, 1, 128, 16, 8, 4096, 132).warps, 8);  // warps in pairs
  EXPECT_EQ(SelectDecodeKernel(32, 8, 128, 16, 8, 4096, 132).warps, 4);
  // MQA at head_dim 64: 4-warp blocks, two per multiprocessor, so twice the splits of head_dim 128.
  const auto mqa64 = SelectDecodeKernel(32, 1, 64, 16, 32, 8192, 132);
  EXPECT_EQ(mqa64.warps, 4);
  EXPECT_EQ(mqa64.key_tiles, 2);
  EXPECT_EQ(mqa64.num_splits, 2 * SelectDecodeKernel(32, 1, 128, 16, 32, 8192, 132).num_splits);
  EXPECT_FALSE(DecodeVariantBuilt(128, 1, {8, 3, 1}));  // 8 single-warp teams: not built
  EXPECT_FALSE(DecodeVariantBuilt(128, 2, {8, 3, 4}));  // 4 x 3 x 34 KB: too much shared memory
  EXPECT_TRUE(DecodeVariantBuilt(64, 2, {8, 3, 4}));
  EXPECT_FALSE(DecodeVariantBuilt(128, 3, {4, 3, 1}));
  // The layout the kernel asserts against: 16 query rows and 4 pipelines of 3 x 16 keys at 128.
  EXPECT_EQ(DecodeSharedBytes(128, 1, {4, 3, 1}), 16u * 136 * 2 + 4u * 3 * (2 * 16 * 136) * 2);
}

TEST(DecodeSelectorTest, AWindowBoundsTheKeysAQueryReads) {
  EXPECT_EQ(DecodeKeysPerQuery(32768, 0), 32768);
  EXPECT_EQ(DecodeKeysPerQuery(32768, 4096), 4096 + 15);  // the window and its first partial tile
  EXPECT_EQ(DecodeKeysPerQuery(100, 4096), 100);
}

TEST(DecodeSelectorTest, SmallBatchLongContextSplitsLargeBatchDoesNot) {
  EXPECT_GT(SelectDecodeKernel(32, 8, 128, 16, 1, 32768, 132).num_splits, 16);
  EXPECT_EQ(SelectDecodeKernel(32, 32, 128, 16, 256, 512, 132).num_splits, 1);
  EXPECT_EQ(SelectDecodeKernel(32, 8, 128, 16, 1, 4096, 132, /*override=*/5).num_splits, 5);
}

// The prefill key splits (gqa/kernels/prefill_selector.h).
TEST(PrefillSelectorTest, AShortChunkAfterALongPrefixSplitsAFullPromptDoesNot) {
  PrefillShapeForSplits hit;  // a prefix-cache hit: 100 new tokens over 2,000 cached, 1B shape
  hit.max_query_len = hit.num_query_tokens = 100;
  hit.max_context = 2100;
  hit.num_seqs = 1;
  hit.group = 4;
  hit.num_kv_heads = 8;
  hit.sm_count = 132;
  // 7 blocks of 64 rows x 8 KV heads = 56 blocks: 8 splits give about three per multiprocessor.
  EXPECT_EQ(SelectPrefillKeySplits(hit), 8);
  PrefillShapeForSplits chunk = hit;  // a 512-token chunk over 8,192: 256 blocks, under 2 x 132
  chunk.max_query_len = chunk.num_query_tokens = 512;
  chunk.max_context = 8192;
  EXPECT_EQ(SelectPrefillKeySplits(chunk), 2);
  // Where the unsplit path is the warpgroup kernel: 16 blocks of 128 rows x 8 KV heads = 128,
  // about a wave of 132 multiprocessors, run unsplit; the 100-token hit (4 x 8 = 32 such
  // blocks, under half the multiprocessors) still splits.
  PrefillShapeForSplits wg_chunk = chunk;
  wg_chunk.warpgroup_unsplit = true;
  EXPECT_EQ(SelectPrefillKeySplits(wg_chunk), 1);
  PrefillShapeForSplits wg_hit = hit;
  wg_hit.warpgroup_unsplit = true;
  EXPECT_EQ(SelectPrefillKeySplits(wg_hit), 8);
  wg_chunk.max_query_len = wg_chunk.num_query_tokens = 256;  // 8 x 8 = 64 blocks < 66
  EXPECT_EQ(SelectPrefillKeySplits(wg_chunk), 4);
  PrefillShapeForSplits full = hit;  // the whole 2,100-token prompt: 1,056 blocks
  full.max_query_len = full.num_query_tokens = 2100;
  EXPECT_EQ(SelectPrefillKeySplits(full), 1);
  PrefillShapeForSplits fresh = hit;  // 100 tokens, no prefix: 7 tiles, under one range's 8
  fresh.max_context = 100;
  EXPECT_EQ(SelectPrefillKeySplits(fresh), 1);
  PrefillShapeForSplits deterministic = hit;  // the splits would follow the batch
  deterministic.deterministic = true;
  EXPECT_EQ(SelectPrefillKeySplits(deterministic), 1);
  PrefillShapeForSplits mqa = hit;  // 1 KV head: 2 blocks, capped at the most splits
  mqa.group = 32;
  mqa.num_kv_heads = 1;
  mqa.max_query_len = mqa.num_query_tokens = 4;
  mqa.max_context = 32768;
  EXPECT_EQ(SelectPrefillKeySplits(mqa), kPrefillMaxKeySplits);
  PrefillShapeForSplits wide = mqa;  // the workspace bounds tokens x splits
  wide.num_query_tokens = kPrefillSplitRows / 3;
  EXPECT_EQ(SelectPrefillKeySplits(wide), 3);
}

TEST(PrefillSelectorTest, KeysPerStepFollowTheHeadDimAndTheSplits) {
  EXPECT_EQ(PrefillKeyTilesPerStep(64, 1), 2);
  EXPECT_EQ(PrefillKeyTilesPerStep(64, 8), 2);
  EXPECT_EQ(PrefillKeyTilesPerStep(128, 1), 2);
  EXPECT_EQ(PrefillKeyTilesPerStep(128, 8), 1);
}

TEST(PrefillSelectorTest, TheWorkspaceHoldsWhatEverySelectedSplitNeeds) {
  EXPECT_EQ(PrefillWorkspaceBytes(100, 32, 64, 1), 0u);
  EXPECT_EQ(PrefillWorkspaceBytes(100, 32, 64, 8), 100u * 32 * 8 * 65 * 4);
  for (int tokens : {1, 7, 100, 300, 2048}) {
    for (int context : {tokens, tokens + 2000, tokens + 30000}) {
      PrefillShapeForSplits shape;
      shape.max_query_len = shape.num_query_tokens = tokens;
      shape.max_context = context;
      shape.num_seqs = 1;
      shape.group = 32;
      shape.num_kv_heads = 1;
      shape.sm_count = 132;
      const int splits = SelectPrefillKeySplits(shape);
      EXPECT_LE(PrefillWorkspaceBytes(tokens, 32, 128, splits),
                PrefillWorkspaceCapacityBytes(32, 128))
          << tokens << " tokens over " << context;
    }
  }
}

// A forced cut (the tuned entry's): clamped to 1..stages, every split non-empty.
TEST(SkinnyMmaPlanTest, ForcedSplitsCoverKOnce) {
  for (int k : {8, 200, 2000, 2048, 8192}) {
    const int stages = (k + kSkinnyMmaStageK - 1) / kSkinnyMmaStageK;
    for (int splits : {-1, 0, 1, 2, 3, 4, 7, 8, 16, 1000}) {
      const SkinnyMmaPlan plan = SkinnyMmaPlanOfSplits(520, k, splits);
      SCOPED_TRACE(testing::Message() << "k " << k << " splits " << splits);
      EXPECT_EQ(plan.row_blocks, 9);
      EXPECT_GE(plan.splits, 1);
      EXPECT_LE(plan.splits, std::max(1, std::min(splits, stages)));
      EXPECT_LT((plan.splits - 1) * plan.stages_per_split, stages);
      EXPECT_GE(plan.splits * plan.stages_per_split, stages);
    }
  }
  EXPECT_EQ(SkinnyMmaPlanOfSplits(520, 2000, 3).splits, 3);  // 11, 11 and 10 stages
  EXPECT_EQ(SkinnyMmaPlanOfSplits(520, 2000, 3).stages_per_split, 11);
  EXPECT_EQ(SkinnyMmaPlanOfSplits(77, 200, 3).splits, 2);  // 4 stages: 2 and 2
}

// The tensor-core skinny product's cut (gqa/kernels/skinny_mma_plan.h).
TEST(SkinnyMmaPlanTest, SplitsFillTheMachineWithinTheirByteBudget) {
  // 1B attention output (2048 x 2048) at 8 rows: 32 row blocks, 8 splits of 4 stages.
  SkinnyMmaPlan plan = PlanSkinnyMma(8, 2048, 2048, 132);
  EXPECT_EQ(plan.row_blocks, 32);
  EXPECT_EQ(plan.splits, 8);
  EXPECT_EQ(plan.stages_per_split, 4);
  // At 64 rows the byte budget binds: 4 splits (partial sums written and read = half the
  // weight's bytes), not the 8 the length allows.
  EXPECT_EQ(PlanSkinnyMma(64, 2048, 2048, 132).splits, 4);
  EXPECT_EQ(PlanSkinnyMma(64, 2048, 2048, 132).stages_per_split, 8);
  // A weight too short for a split of 4 stages stays whole.
  EXPECT_EQ(PlanSkinnyMma(8, 2048, 192, 132).splits, 1);
  // A wide weight (the lm_head) fills the machine by rows alone.
  EXPECT_EQ(PlanSkinnyMma(8, 128256, 2048, 132).splits, 1);
  EXPECT_EQ(PlanSkinnyMma(8, 128256, 2048, 132).row_blocks, 2004);
  for (int m : {1, 8, 9, 16, 17, 32, 33, 64}) {
    for (int n : {7, 64, 960, 2048, 3072, 4096, 8255, 16384}) {
      for (int k : {8, 200, 576, 2048, 8192, 14336}) {
        plan = PlanSkinnyMma(m, n, k, 132);
        const int stages = (k + kSkinnyMmaStageK - 1) / kSkinnyMmaStageK;
        SCOPED_TRACE(testing::Message() << m << " x " << n << " x " << k);
        EXPECT_GE(plan.splits, 1);
        // Every split has stages, and together they cover k exactly once.
        EXPECT_LT((plan.splits - 1) * plan.stages_per_split, stages);
        EXPECT_GE(plan.splits * plan.stages_per_split, stages);
        if (plan.splits > 1) {
          EXPECT_LE(plan.splits * plan.row_blocks, 2 * 132 + plan.row_blocks);
          EXPECT_LE(8.0 * SkinnyMmaPartialFloats(plan, m) / plan.row_blocks,
                    (2.0 * kSkinnyMmaBlockWeightRows * k) / 2);  // bytes: partials vs weight
        } else {
          EXPECT_EQ(SkinnyMmaPartialFloats(plan, m), 0u);
          EXPECT_EQ(SkinnyMmaCounters(plan), 0u);
        }
        EXPECT_LE(SkinnyMmaPartialFloats(plan, m), SkinnyMmaMaxPartialFloats(132));
        EXPECT_LE(SkinnyMmaCounters(plan), SkinnyMmaMaxCounters(132));
        // A forced cut of the plan's splits is the plan's cut.
        const SkinnyMmaPlan forced = SkinnyMmaPlanOfSplits(n, k, plan.splits);
        EXPECT_EQ(forced.splits, plan.splits);
        EXPECT_EQ(forced.stages_per_split, plan.stages_per_split);
        EXPECT_EQ(forced.row_blocks, plan.row_blocks);
        // The cut depends on m only through its row bucket.
        const SkinnyMmaPlan bucket = PlanSkinnyMma(SkinnyMmaRowBucket(m), n, k, 132);
        EXPECT_EQ(plan.splits, bucket.splits);
        EXPECT_EQ(plan.stages_per_split, bucket.stages_per_split);
      }
    }
  }
}

}  // namespace
}  // namespace gqa::kernels
