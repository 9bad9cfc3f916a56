// Chooses the decode attention kernel variant and its split of the context. Pure host logic:
// the same function answers "is this model supported?" when a model loads, with or without CUDA.
#pragma once

#include <string>

namespace gqa::kernels {

struct DecodeKernelChoice {
  bool supported = false;
  std::string reason;    // why not, when unsupported
  int head_dim = 0;      // compile-time head dim: 64 or 128
  int query_tiles = 0;   // 16-row tiles holding the query group: 1 (group <= 16) or 2 (<= 32)
  int num_splits = 1;    // context ranges per (sequence, KV head), merged by log-sum-exp
  // Tokens per split, a multiple of 16. 0: each sequence cuts its own context into at most
  // num_splits ranges of at least kDecodeMinSplitTiles tiles, and the splits past its end exit
  // early. Then the grid does not depend on the step's lengths (what a captured CUDA graph
  // needs), and a sequence's result depends only on its own length (deterministic mode).
  int split_tokens = 0;
};

constexpr int kDecodeTileTokens = 16;
constexpr int kDecodeMaxSplits = 128;
constexpr int kDecodeMinSplitTiles = 8;  // two 16-token tiles for each of 4 pipelines

// num_splits_override > 0 forces the split count (tests); 0 picks one that fills `sm_count`
// multiprocessors with at least two 16-token tiles per warp.
DecodeKernelChoice SelectDecodeKernel(int num_heads, int num_kv_heads, int head_dim, int block_size,
                                      int num_seqs, int max_context_len, int sm_count,
                                      int num_splits_override = 0);

// The per-sequence split choice (split_tokens = 0) for a fixed grid of up to `num_seqs`
// sequences of up to `max_context_len` tokens: the number of splits SelectDecodeKernel picks for
// that shape.
DecodeKernelChoice SelectFixedGridDecodeKernel(int num_heads, int num_kv_heads, int head_dim,
                                               int block_size, int num_seqs, int max_context_len,
                                               int sm_count);

}  // namespace gqa::kernels
