// How many key ranges (splits) the prefill attention kernel cuts each query block's keys into.
// Pure host logic, testable without CUDA.
//
// A short chunk after a long cached prefix (a prefix-cache hit, the later chunks of a chunked
// prompt with few tokens) launches few blocks of 64 query rows, and each streams the whole
// prefix alone: on an H200 a 100-token chunk over 2,000 cached tokens of the 1B shape ran 56
// blocks on 132 multiprocessors, 130 serial 16-key steps each. Splitting the keys gives the
// multiprocessors work; the partial results are merged by log-sum-exp, as the decode kernel's
// splits are. Full prompts launch enough blocks and never split (the partials would cost more
// than they save).
//
// What the splits cannot fix: each block streams one 16-key tile per microsecond or so (a
// 3-stage pipeline of 64 rows x 16 keys), so a chunk over a prefix stays far from its K/V
// floor until the prefill kernel itself keeps more bytes in flight (issue 17, item 2).
#pragma once

#include <algorithm>
#include <cstddef>

namespace gqa::kernels {

constexpr int kPrefillRowsPerBlock = 64;  // (query token, group head) rows per block
constexpr int kPrefillMaxKeySplits = 16;  // at most this many key ranges per block
constexpr int kPrefillMinSplitTiles = 8;  // each range at least 8 16-key tiles
constexpr int kPrefillSplitRows = 2048;   // partial (token, split) rows the workspace holds

struct PrefillShapeForSplits {
  int max_query_len = 0;     // the longest prefill chunk of the step
  int num_query_tokens = 0;  // prefill tokens of the step, all sequences
  int max_context = 0;       // the longest prefill sequence's context (cached prefix + chunk)
  int num_seqs = 0;          // prefill sequences
  int group = 1;             // query heads per KV head
  int num_kv_heads = 1;
  int sm_count = 1;
  bool deterministic = false;  // splits would depend on the batch: never split
  // The unsplit path is the Hopper warpgroup kernel (blocks of kPrefillWarpgroupRowsPerBlock
  // rows, 1.6-2x the mma.sync kernel per block); the split path stays the mma.sync one. Set it
  // from cuda::WarpgroupPrefillRunsUnsplit (gqa/kernels/paged_attention_cuda.h).
  bool warpgroup_unsplit = false;
};

constexpr int kPrefillWarpgroupRowsPerBlock = 128;

// 1 (no split) or the key ranges per block: when the step launches fewer than two blocks per
// multiprocessor, enough ranges for about three (the fastest of 2-16 forced splits on an H200,
// kernels/BENCHMARKS.md step 19),
// no range shorter than kPrefillMinSplitTiles tiles of the longest context, and no more
// (token, split) rows than the workspace holds. Where the unsplit path is the warpgroup kernel,
// only when its blocks fill less than half the multiprocessors: on an H100 a 512-token chunk
// over 8,192 keys (128 of its blocks) ran 2.6x faster unsplit than in 2 mma.sync splits, and
// 100-token chunks (32 blocks or fewer) 1.0-1.4x faster split (kernels/BENCHMARKS.md step 24).
constexpr int SelectPrefillKeySplits(const PrefillShapeForSplits& s) {
  if (s.deterministic || s.max_query_len <= 0 || s.num_query_tokens <= 0) return 1;
  if (s.warpgroup_unsplit) {
    const long rows = long(s.max_query_len) * s.group;
    const long wg_blocks = (rows + kPrefillWarpgroupRowsPerBlock - 1) /
                           kPrefillWarpgroupRowsPerBlock * s.num_kv_heads * s.num_seqs;
    if (2 * wg_blocks >= s.sm_count) return 1;
  }
  const int row_blocks =
      (s.max_query_len * s.group + kPrefillRowsPerBlock - 1) / kPrefillRowsPerBlock;
  const long blocks = long(row_blocks) * s.num_kv_heads * s.num_seqs;
  if (blocks >= 2L * s.sm_count) return 1;
  const int wanted = int((3L * s.sm_count + blocks - 1) / blocks);
  const int key_tiles = (s.max_context + 15) / 16;
  const int by_length = key_tiles / kPrefillMinSplitTiles;
  const int by_workspace = kPrefillSplitRows / s.num_query_tokens;
  const int splits = std::min({wanted, by_length, by_workspace, kPrefillMaxKeySplits});
  return std::max(1, splits);
}

// Bytes of fp32 scratch the key splits need: each (query token, head, split) row's normalized
// output and its log-sum-exp. 0 without splits.
constexpr size_t PrefillWorkspaceBytes(int num_query_tokens, int num_heads, int head_dim,
                                       int key_splits) {
  return key_splits <= 1
             ? 0
             : size_t(num_query_tokens) * num_heads * key_splits * (head_dim + 1) * sizeof(float);
}

// The most any step's key splits need: SelectPrefillKeySplits keeps tokens x splits within
// kPrefillSplitRows.
constexpr size_t PrefillWorkspaceCapacityBytes(int num_heads, int head_dim) {
  return size_t(kPrefillSplitRows) * num_heads * (head_dim + 1) * sizeof(float);
}

// The kernel variant, in 16-key tiles per pipeline step: 32 keys, except 16 for a split chunk at
// head_dim 128. Measured on an H200 (kernels/BENCHMARKS.md step 20): 32 keys cut a whole
// prompt's attention 6% at head_dim 128 and 17-18% at 64 (64 keys: 21% slower at 128, where 177
// registers leave one block per multiprocessor; 1-3% better than 32 at 64 on some rows, worse
// on others); a split chunk over a prefix runs 15% slower with 32 keys at 128 and 11-13%
// faster at 64.
constexpr int PrefillKeyTilesPerStep(int head_dim, int key_splits) {
  return head_dim >= 128 && key_splits > 1 ? 1 : 2;
}

}  // namespace gqa::kernels
