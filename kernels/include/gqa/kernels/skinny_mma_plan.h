// How the tensor-core skinny product (skinny_gemm_cuda.h, SkinnyMmaGemm) cuts its work: pure
// host arithmetic, testable without CUDA, shared by the kernel, its caller (which sizes the
// workspace) and the tests.
//
// The product y[m, n] = x[m, k] @ w[n, k]^T of a decode step has few rows m (the batch) and a
// large weight w. The kernel gives the weight rows to the tensor cores' 16-row side and the
// batch rows to their 8-row side (m rounded up to 8, 16, 32 or 64: the row bucket), so that a
// block of 4 warps streams 64 weight rows once from memory whatever m is. A weight of few rows
// (an attention output projection of 2048 rows is 32 such blocks) would leave most
// multiprocessors idle, so the k axis is cut into splits: each block sums its range, and the
// last block of a row range to finish adds the partial sums in split order (deterministic).
// Splits cost bytes (each writes m x 64 fp32 partial sums per row block, which the last block
// reads back), so they are capped where those bytes, written and read, would pass half the
// weight's. The partial sums of one product are at most a few MB and live in L2 between the
// write and the read, while the weight streams from DRAM, so the cap is loose on purpose: an
// eighth (the first rule) left the 64-row QKV and O products of a 1B model unsplit, 48 and 32
// blocks on an H100's or H200's 132 multiprocessors, each block with at most its register ring
// of weights in flight (skinny_mma_gemm.cu: 32 KB), a quarter to a third of the bytes in flight the
// copy bandwidth needs; with half they split 4 ways (192 and 128 blocks) for 3 and 2 MB of
// partial sums against 12.6 and 8.4 MB of weights.
#pragma once

#include <algorithm>
#include <cstddef>

namespace gqa::kernels {

constexpr int kSkinnyMmaMaxRows = 64;           // x rows (batch) the kernel takes at most
constexpr int kSkinnyMmaBlockWeightRows = 64;   // weight rows per block (4 warps x 16)
constexpr int kSkinnyMmaStageK = 64;            // k per pipeline stage
constexpr int kSkinnyMmaMinStagesPerSplit = 4;  // each split at least 256 of k

// x rows rounded up to the tensor cores' 8-row side: 8, 16, 32 or 64.
constexpr int SkinnyMmaRowBucket(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : m <= 32 ? 32 : 64; }

struct SkinnyMmaPlan {
  int row_blocks = 0;        // ceil(n / 64)
  int splits = 1;            // k ranges per row block
  int stages_per_split = 0;  // 64-wide k stages each split sums (the last may have fewer)
};

// The cut of a product into about `splits` k ranges of whole stages (clamped to 1..stages),
// every range non-empty: the stages per split rounded up, then the splits recounted.
constexpr SkinnyMmaPlan SkinnyMmaPlanOfSplits(int n, int k, int splits) {
  SkinnyMmaPlan plan;
  plan.row_blocks = (n + kSkinnyMmaBlockWeightRows - 1) / kSkinnyMmaBlockWeightRows;
  const int stages = (k + kSkinnyMmaStageK - 1) / kSkinnyMmaStageK;
  splits = std::clamp(splits, 1, stages);
  plan.stages_per_split = (stages + splits - 1) / splits;
  plan.splits = (stages + plan.stages_per_split - 1) / plan.stages_per_split;
  return plan;
}

// The cut of one product on sm_count multiprocessors: enough blocks for about two per
// multiprocessor, each split at least kSkinnyMmaMinStagesPerSplit stages, the partial sums
// (written and read) at most half the weight's bytes. Depends on m only through its row bucket.
constexpr SkinnyMmaPlan PlanSkinnyMma(int m, int n, int k, int sm_count) {
  const int row_blocks = (n + kSkinnyMmaBlockWeightRows - 1) / kSkinnyMmaBlockWeightRows;
  const int stages = (k + kSkinnyMmaStageK - 1) / kSkinnyMmaStageK;
  const int bucket = SkinnyMmaRowBucket(m);
  const int wanted = (2 * sm_count + row_blocks - 1) / row_blocks;
  const int by_length = std::max(1, stages / kSkinnyMmaMinStagesPerSplit);
  // Partial bytes (splits x bucket x n x 4, written and read) <= weight bytes (n x k x 2) / 2.
  const int by_bytes = std::max(1, k / (8 * bucket));
  return SkinnyMmaPlanOfSplits(n, k, std::min({wanted, by_length, by_bytes}));
}

// Workspace one product needs: fp32 partial sums of every (split, row block), and one arrival
// counter per row block (zero between products; the kernel leaves them zero). 0 when unsplit.
constexpr size_t SkinnyMmaPartialFloats(const SkinnyMmaPlan& plan, int m) {
  if (plan.splits <= 1) return 0;
  return size_t(plan.splits) * plan.row_blocks * kSkinnyMmaBlockWeightRows * SkinnyMmaRowBucket(m);
}
constexpr size_t SkinnyMmaCounters(const SkinnyMmaPlan& plan) {
  return plan.splits <= 1 ? 0 : size_t(plan.row_blocks);
}

// Partial floats and counters that hold any product's on sm_count multiprocessors: a split plan
// has fewer than 2 sm_count row blocks (else it would not split) and at most 2 sm_count + row
// blocks of (split, row block) tiles, so fewer than 4 sm_count tiles of 64 x 64 floats.
constexpr size_t SkinnyMmaMaxPartialFloats(int sm_count) {
  return size_t(4) * sm_count * kSkinnyMmaBlockWeightRows * kSkinnyMmaMaxRows;
}
constexpr size_t SkinnyMmaMaxCounters(int sm_count) { return size_t(2) * sm_count; }

}  // namespace gqa::kernels
