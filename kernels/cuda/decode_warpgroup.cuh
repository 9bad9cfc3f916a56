// What the two warpgroup decode kernels share (decode_warpgroup.cu: the warpgroup copies with
// cp.async; decode_warpgroup_tma.cu: a producer warp copies with TMA): the keys a block of
// (split, KV head, sequence) reads, the empty partial of a split past its sequence, and the
// store of the finished rows (the output, or a split's partial rows for the merge).
#pragma once

#include <cmath>
#include <cstdint>

#include "attention_tile.cuh"
#include "decode_launch.cuh"
#include "gqa/kernels/paged_attention_cuda.h"
#include "warpgroup_attention.cuh"

namespace gqa::kernels::cuda::warpgroup_decode {

using warpgroup_attention::kPanel;
using warpgroup_attention::RowTotal;
using warpgroup_attention::WarpgroupState;

constexpr int kStepKeys = 64;

// Keys begin .. end - 1: the split's range of the window's tiles (or of the whole context), in
// num_steps steps of kStepKeys from begin; first_key: the first the query sees.
struct SplitKeys {
  int first_key;
  int begin;
  int end;
  int num_steps;
};

template <typename T>
__device__ __forceinline__ SplitKeys KeysOfSplit(const DecodeAttentionArgs<T, T>& args, int seq,
                                                 int split, int split_tokens, int num_splits,
                                                 int min_split_tiles) {
  SplitKeys k;
  const int len = args.context_lens[seq];
  k.first_key = FirstKey(len, args.window);
  const int start = k.first_key / kDecodeTileTokens * kDecodeTileTokens;
  const int tokens = split_tokens > 0
                         ? split_tokens
                         : SequenceSplitTokens(len - start, num_splits, min_split_tiles);
  k.begin = start + split * tokens;
  k.end = min(len, k.begin + tokens);
  k.num_steps = k.end > k.begin ? (k.end - k.begin + kStepKeys - 1) / kStepKeys : 0;
  return k;
}

// A split past its sequence: zero rows and a log-sum-exp of -inf, for the merge. The block's
// `threads` threads take part.
template <typename T, int D>
__device__ __forceinline__ void WriteEmptySplit(const DecodeAttentionArgs<T, T>& args, int seq,
                                                int kv_head, int group, int split, int num_splits,
                                                int threads, float* partial_out,
                                                float* partial_lse) {
  for (int i = threadIdx.x; num_splits > 1 && i < group * D; i += threads) {
    const size_t head = size_t(seq) * args.num_heads + kv_head * group + i / D;
    partial_out[(head * num_splits + split) * D + i % D] = 0.0f;
    if (i % D == 0) partial_lse[head * num_splits + split] = -INFINITY;
  }
}

// Writes this thread's two rows of warp `warp` (query heads of the group): normalized into
// args.out when the sequence has one split, else as split `split`'s partial rows and
// log-sum-exps (log2 units).
template <typename T, int D>
__device__ __forceinline__ void StoreRows(const DecodeAttentionArgs<T, T>& args,
                                          const WarpgroupState<D>& st, int seq, int kv_head,
                                          int group, int split, int num_splits, float* partial_out,
                                          float* partial_lse, int warp, int lane) {
  const int g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = RowTotal(st.sum[r]);
    const int row = warp * 16 + g + r * 8;
    if (row >= group) continue;
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    const size_t head = size_t(seq) * args.num_heads + kv_head * group + row;
    if (num_splits == 1) {
      T* dst = args.out + head * D;
#pragma unroll
      for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          *reinterpret_cast<uint32_t*>(dst + pn * kPanel + 8 * i + 2 * tig) = attention::Pack<T>(
              st.out[pn][4 * i + 2 * r] * inv, st.out[pn][4 * i + 2 * r + 1] * inv);
        }
      }
    } else {
      float* dst = partial_out + (head * num_splits + split) * D;
#pragma unroll
      for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          *reinterpret_cast<float2*>(dst + pn * kPanel + 8 * i + 2 * tig) =
              make_float2(st.out[pn][4 * i + 2 * r] * inv, st.out[pn][4 * i + 2 * r + 1] * inv);
        }
      }
      if (tig == 0) {
        partial_lse[head * num_splits + split] =
            total > 0.0f ? st.max[r] + log2f(total) : -INFINITY;
      }
    }
  }
}

}  // namespace gqa::kernels::cuda::warpgroup_decode
