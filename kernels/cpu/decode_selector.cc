#include "gqa/kernels/decode_selector.h"

#include <algorithm>
#include <string>

namespace gqa::kernels {
namespace {

constexpr int kMinTilesPerSplit = kDecodeMinSplitTiles;

// How many blocks per SM one wave of the decode kernel should hold. Up to 16 query rows (one
// 16-row tile): 2, what 109 KB of shared memory allows at head_dim 128 (H200 split sweep, step 7
// of kernels/BENCHMARKS.md). Above (32 rows) at head_dim 128: 1 block of 8 warps (217 KB), which
// the H100 split sweep of step 13 and the H200 sweep of step 18 found fastest; at head_dim 64 the
// 4-warp variant with twice the splits (2 blocks per SM) is 5-8% faster (step 18).
int BlocksPerSm(int query_tiles, int head_dim) {
  return query_tiles == 1 || head_dim == 64 ? 2 : 1;
}

// The kernel variant for a group size and head_dim, from H200 sweeps of every variant (steps 14
// and 15 of kernels/BENCHMARKS.md). A 32-row group's warps work in pairs over one K/V pipeline,
// so 8 warps keep 4 pipelines per multiprocessor; 2 tiles of 16 keys per softmax step give each
// warp two independent chains of products and pay the barrier and the row bookkeeping once per
// 32 keys: MQA 1.2-1.6x faster. At head_dim 64, groups of 2 to 8 gain from 2 tiles per step too
// (group 4, batch 64: 85 -> 73 us); MHA and group 16 lose 3-7% with it, head_dim 128 rows up to
// 16 lose up to 7%. At head_dim 64 a 32-row group does better in 4-warp blocks, two per
// multiprocessor (step 18: MQA 5-8% faster than 8 warps).
DecodeVariant ChooseVariant(int head_dim, int group) {
  if (group > 16) return head_dim == 64 ? DecodeVariant{4, 3, 2} : DecodeVariant{8, 3, 2};
  if (head_dim == 64 && group >= 2 && group <= 8) return DecodeVariant{4, 3, 2};
  return DecodeVariant{4, 3, 1};
}

DecodeKernelChoice Unsupported(std::string reason) {
  DecodeKernelChoice c;
  c.reason = std::move(reason);
  return c;
}

int CeilDiv(int a, int b) { return (a + b - 1) / b; }

// Sets c.num_splits and c.split_tokens for `base` (sequence, KV head) pairs of up to
// max_context_len tokens, `blocks_per_sm` blocks filling each of `sm_count` multiprocessors.
void ChooseSplits(DecodeKernelChoice& c, int group, int base, int blocks_per_sm,
                  int max_context_len, int sm_count, int num_splits_override) {
  const int tiles = std::max(1, CeilDiv(max_context_len, kDecodeTileTokens));
  int splits = num_splits_override;
  if (splits <= 0) {
    base = std::max(1, base);
    // One wave of blocks: measured on an H200, more splits cost more in the merge than they
    // gain in parallelism (kernels/BENCHMARKS.md).
    const int slots = std::max(1, sm_count) * blocks_per_sm;
    splits = std::max(1, slots / base);
    // Each split writes group x head_dim fp32 partial outputs that the merge reads back. When
    // the batch alone nearly fills the GPU, at least `group` tiles per split keeps that traffic
    // under 1/8 of the split's K/V bytes; when it does not, latency matters more than traffic.
    const bool bandwidth_bound = base * kMinTilesPerSplit >= slots;
    const int min_tiles = bandwidth_bound ? std::max(kMinTilesPerSplit, group) : kMinTilesPerSplit;
    splits = std::min(splits, std::max(1, tiles / min_tiles));
  }
  splits = std::clamp(splits, 1, std::min(tiles, kDecodeMaxSplits));
  const int split_tiles = CeilDiv(tiles, splits);
  c.num_splits = CeilDiv(tiles, split_tiles);
  c.split_tokens = split_tiles * kDecodeTileTokens;
}

// The shape checks both kernels share: "" when the shape is one they take.
std::string ShapeProblem(int num_heads, int num_kv_heads, int head_dim, int block_size,
                         int max_group) {
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    return "num_attention_heads must be a multiple of num_key_value_heads";
  }
  if (num_heads / num_kv_heads > max_group) {
    return "query heads per KV head (group size) above " + std::to_string(max_group);
  }
  if (head_dim != 64 && head_dim != 128) return "head_dim other than 64 or 128";
  if (block_size % kDecodeTileTokens != 0) return "KV block size that is not a multiple of 16";
  return "";
}

}  // namespace

DecodeKernelChoice SelectDecodeKernel(int num_heads, int num_kv_heads, int head_dim, int block_size,
                                      int num_seqs, int max_context_len, int sm_count,
                                      int num_splits_override, KvElement kv) {
  if (std::string problem = ShapeProblem(num_heads, num_kv_heads, head_dim, block_size, 32);
      !problem.empty()) {
    return Unsupported(std::move(problem));
  }
  const int group = num_heads / num_kv_heads;
  DecodeKernelChoice c;
  c.supported = true;
  c.head_dim = head_dim;
  c.query_tiles = group <= 16 ? 1 : 2;
  const DecodeVariant variant = ChooseVariant(head_dim, group);
  c.warps = variant.warps;
  c.stages = variant.stages;
  c.key_tiles = variant.key_tiles;
  c.kv = kv;
  if (!DecodeVariantBuilt(head_dim, c.query_tiles, variant, KvElementBytes(kv))) {
    return Unsupported("no decode kernel variant fits shared memory for this cache element");
  }
  ChooseSplits(c, group, num_seqs * num_kv_heads, BlocksPerSm(c.query_tiles, head_dim),
               max_context_len, sm_count, num_splits_override);
  return c;
}

DecodeKernelChoice SelectWarpgroupDecodeKernel(int num_heads, int num_kv_heads, int head_dim,
                                               int block_size, int num_seqs, int max_context_len,
                                               int sm_count, int num_splits_override,
                                               bool fixed_grid) {
  if (std::string problem =
          ShapeProblem(num_heads, num_kv_heads, head_dim, block_size, kWarpgroupDecodeMaxGroup);
      !problem.empty()) {
    return Unsupported(std::move(problem));
  }
  const int group = num_heads / num_kv_heads;
  DecodeKernelChoice c;
  c.supported = true;
  c.warpgroup = true;
  c.head_dim = head_dim;
  c.query_tiles = 4;  // 64 rows
  c.warps = 4;
  c.stages = 3;
  c.key_tiles = 4;
  // 97 KB of shared memory at head_dim 128 (49 KB at 64): two blocks per multiprocessor. A
  // prediction, not yet measured (kernels/BENCHMARKS.md step 23).
  ChooseSplits(c, group, num_seqs * num_kv_heads, 2, max_context_len, sm_count,
               num_splits_override);
  if (fixed_grid) c.split_tokens = 0;
  return c;
}

DecodeKernelChoice SelectFixedGridDecodeKernel(int num_heads, int num_kv_heads, int head_dim,
                                               int block_size, int num_seqs, int max_context_len,
                                               int sm_count, KvElement kv) {
  DecodeKernelChoice c = SelectDecodeKernel(num_heads, num_kv_heads, head_dim, block_size, num_seqs,
                                            max_context_len, sm_count, 0, kv);
  c.split_tokens = 0;
  return c;
}

}  // namespace gqa::kernels
