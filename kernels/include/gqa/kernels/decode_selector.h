// Chooses the decode attention kernel variant and its split of the context. Pure host logic:
// the same function answers "is this model supported?" when a model loads, with or without CUDA.
#pragma once

#include <cstddef>
#include <string>

namespace gqa::kernels {

// How the cache stores K/V: the 16-bit compute type, or FP8 E4M3 bytes.
enum class KvElement { k16Bit, kFp8E4M3 };
constexpr int KvElementBytes(KvElement kv) { return kv == KvElement::kFp8E4M3 ? 1 : 2; }

constexpr int kDecodeTileTokens = 16;
constexpr int kDecodeMaxSplits = 128;
constexpr int kDecodeMinSplitTiles = 8;  // two 16-token tiles for each of 4 pipelines
// Deterministic mode sizes its grid for a batch of one, so a large batch would cut every context
// as finely as a lone sequence's: at 16 tiles (256 tokens) per split, an H100 split sweep
// (docs/BENCHMARKS.md step 11) found batch 64 faster and batch 1 no slower than at 8.
constexpr int kDecodeDeterministicMinSplitTiles = 16;

struct DecodeKernelChoice {
  bool supported = false;
  std::string reason;   // why not, when unsupported
  int head_dim = 0;     // compile-time head dim: 64 or 128
  int query_tiles = 0;  // 16-row tiles holding the query group: 1 (group <= 16) or 2 (<= 32)
  // The kernel variant: warps per block, cp.async pipeline stages per team, and 16-token tiles
  // per softmax step (key_tiles). Together they set the bytes each block keeps in flight and the
  // independent products each warp has per step. Tests and benchmarks may override them with
  // any variant DecodeVariantBuilt accepts.
  int warps = 4;
  int stages = 3;
  int key_tiles = 1;
  int num_splits = 1;  // context ranges per (sequence, KV head), merged by log-sum-exp
  // Tokens per split, a multiple of 16. 0: each sequence cuts its own context into at most
  // num_splits ranges of at least min_split_tiles tiles, and the splits past its end exit
  // early. Then the grid does not depend on the step's lengths (what a captured CUDA graph
  // needs), and a sequence's result depends only on its own length (deterministic mode).
  int split_tokens = 0;
  int min_split_tiles = kDecodeMinSplitTiles;
  KvElement kv = KvElement::k16Bit;  // the cache the kernel reads
  // The Hopper warpgroup kernel (SelectWarpgroupDecodeKernel) instead of the mma.sync one: one
  // warpgroup (warps 4) holds the whole group, up to 64 query rows, and reads steps of 64 keys
  // (key_tiles 4) through `stages` (3 or 4) swizzled shared-memory stages.
  bool warpgroup = false;
  // With warpgroup: a producer warp copies the steps with TMA (bulk tensor copies of whole
  // cache tiles into the swizzled slots, mbarriers) while the warpgroup computes.
  bool producer = false;
};

// The most keys one query reads in a context of up to max_context_len tokens: with a sliding
// window of `window` > 0 keys, the window plus the partial tile it starts in (the decode kernel's
// splits cover the window from its first 16-token tile). What the selectors take as
// max_context_len.
constexpr int DecodeKeysPerQuery(int max_context_len, int window) {
  return window > 0 && window + kDecodeTileTokens - 1 < max_context_len
             ? window + kDecodeTileTokens - 1
             : max_context_len;
}

// num_splits_override > 0 forces the split count (tests); 0 picks one that fills `sm_count`
// multiprocessors with at least two 16-token tiles per warp.
DecodeKernelChoice SelectDecodeKernel(int num_heads, int num_kv_heads, int head_dim, int block_size,
                                      int num_seqs, int max_context_len, int sm_count,
                                      int num_splits_override = 0,
                                      KvElement kv = KvElement::k16Bit);

// A decode kernel variant (see DecodeKernelChoice).
struct DecodeVariant {
  int warps, stages, key_tiles;
};

// The variants the CUDA decode kernel may be built in; each is built for the (head_dim,
// query_tiles) pairs DecodeVariantBuilt accepts.
inline constexpr DecodeVariant kDecodeVariantCandidates[] = {
    {4, 3, 1}, {4, 6, 1}, {4, 3, 2}, {4, 3, 4}, {8, 3, 1}, {8, 6, 1}, {8, 3, 2}, {8, 3, 4}};

// Shared memory of one decode block: the query rows, then the larger of the K/V pipeline (per
// team of query_tiles warps: stages x key_tiles 16-token tiles of K and of V, rows padded by 16
// bytes) and the teams' fp32 merge area. 2-byte query elements; kv_bytes-byte cache elements (an
// FP8 pipeline adds one 16-bit copy of a stage per team, what the products read).
constexpr size_t DecodeSharedBytes(int head_dim, int query_tiles, DecodeVariant v,
                                   int kv_bytes = 2) {
  const size_t row = size_t(head_dim) + 8, rows = size_t(16) * query_tiles;
  const size_t kv_row = size_t(head_dim) + 16 / kv_bytes;
  const size_t teams = size_t(v.warps / query_tiles);
  const size_t query = rows * row * 2;
  const size_t stage_rows = 2 * size_t(16) * v.key_tiles;
  const size_t widened = kv_bytes == 2 ? 0 : teams * stage_rows * row * 2;
  const size_t pipe = teams * v.stages * stage_rows * kv_row * kv_bytes + widened;
  const size_t merge = (teams * (2 * rows + rows * head_dim) + teams * rows + rows) * 4;
  return query + (pipe > merge ? pipe : merge);
}

// Whether the CUDA decode kernel is built for this variant: 8 warps only pair up for 2 query
// tiles, and the block's shared memory must fit Hopper's 227 KB.
constexpr bool DecodeVariantBuilt(int head_dim, int query_tiles, DecodeVariant v,
                                  int kv_bytes = 2) {
  if (query_tiles != 1 && query_tiles != 2) return false;
  if (v.warps == 8 && query_tiles == 1) return false;
  return DecodeSharedBytes(head_dim, query_tiles, v, kv_bytes) <= size_t(227) * 1024;
}

// The warpgroup decode kernel's choice for the same shape (16-bit caches; head_dim 64 or 128;
// groups up to kWarpgroupDecodeMaxGroup), with splits chosen as SelectDecodeKernel's for its own
// blocks. It runs only where WarpgroupPrefillAvailable() (gqa/kernels/paged_attention_cuda.h).
// fixed_grid: per-sequence splits (split_tokens 0), as SelectFixedGridDecodeKernel.
constexpr int kWarpgroupDecodeMaxGroup = 64;
DecodeKernelChoice SelectWarpgroupDecodeKernel(int num_heads, int num_kv_heads, int head_dim,
                                               int block_size, int num_seqs, int max_context_len,
                                               int sm_count, int num_splits_override = 0,
                                               bool fixed_grid = false);

// The per-sequence split choice (split_tokens = 0) for a fixed grid of up to `num_seqs`
// sequences of up to `max_context_len` tokens: the number of splits SelectDecodeKernel picks for
// that shape.
DecodeKernelChoice SelectFixedGridDecodeKernel(int num_heads, int num_kv_heads, int head_dim,
                                               int block_size, int num_seqs, int max_context_len,
                                               int sm_count, KvElement kv = KvElement::k16Bit);

}  // namespace gqa::kernels
