// What the two warpgroup prefill kernels share (prefill_warpgroup.cu: every thread copies with
// cp.async; prefill_warpgroup_tma.cu: a producer warp copies with TMA): where a block's rows and
// keys are, which keys each thread's rows see, and the store of the finished rows.
//
// A row is one (query token, head of the group) pair; a block takes kBlockRows of them (or the
// kRows its kernel passes) of one KV head and sequence, in warpgroups of 64. The blocks' work items
// (PrefillWorkItems) run the row tiles longest-first across every head and sequence (the last tile
// of a causal prompt sees the most keys), so the last to start are the shortest of all.
#pragma once

#include <climits>
#include <cstdint>

#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/prefill_selector.h"
#include "warpgroup_attention.cuh"

namespace gqa::kernels::cuda::warpgroup_prefill {

using warpgroup_attention::kPanel;
using warpgroup_attention::kWarpgroupRows;
using warpgroup_attention::RowTotal;
using warpgroup_attention::WarpgroupState;

constexpr int kWarpgroups = 2;
constexpr int kBlockRows = kWarpgroups * warpgroup_attention::kWarpgroupRows;
static_assert(kBlockRows == kPrefillWarpgroupRowsPerBlock,
              "the key-split selector counts these blocks");

// Row tiles of kRows rows per (sequence, KV head): the longest query's.
template <int kRows, typename T>
__host__ __device__ __forceinline__ int PrefillRowTiles(const PrefillAttentionArgs<T, T>& args,
                                                        int group) {
  return (args.max_query_len * group + kRows - 1) / kRows;
}

// The work items of a launch, one per block tile: (row tile, sequence, KV head), the heads
// inner, then the sequences, the row tiles longest-first (the last tile of the longest prompt
// first). LocateBlock takes one.
template <int kRows = kBlockRows, typename T>
inline int PrefillWorkItems(const PrefillAttentionArgs<T, T>& args, int group) {
  return PrefillRowTiles<kRows>(args, group) * args.cache.num_kv_heads * args.num_seqs;
}

// The work items a block takes: its own (a grid of PrefillWorkItems blocks), or, persistent (a
// grid of at most one block per multiprocessor), one per round in a snake order: round r gives
// the grid items r G .. r G + G - 1, forwards in even rounds and backwards in odd ones, so
// every block's items add up to about the same keys. Item(r) >= count: no more items.
template <bool kPersistent>
struct BlockItems {
  int count;

  __device__ int Item(int round) const {
    if constexpr (!kPersistent) return round == 0 ? int(blockIdx.x) : count;
    const int g = gridDim.x;
    return round * g + ((round & 1) ? g - 1 - int(blockIdx.x) : int(blockIdx.x));
  }
};

// Where a work item's rows and keys are; `empty` when its row tile is past the sequence's rows
// (or sees no key).
struct BlockRows {
  int kv_head;
  int seq;
  int q_begin;     // the sequence's first query token
  int rows;        // the sequence's rows (query tokens x group)
  int row0;        // this block's first row
  int end;         // the sequence's length (keys 0 .. end - 1)
  int first_pos;   // position of the first query token
  int first_step;  // the steps of NK keys the block's rows see: [first_step, num_steps)
  int num_steps;
  bool empty;
};

template <int NK, int kRows = kBlockRows, typename T>
__device__ __forceinline__ BlockRows LocateBlock(const PrefillAttentionArgs<T, T>& args, int group,
                                                 int item) {
  BlockRows b;
  const int row_tiles = PrefillRowTiles<kRows>(args, group);
  b.kv_head = item % args.cache.num_kv_heads;
  const int rest = item / args.cache.num_kv_heads;
  b.seq = rest % args.num_seqs;
  const int rank = rest / args.num_seqs;  // 0: the longest tile
  b.q_begin = args.query_start[b.seq];
  const int q_len = args.query_start[b.seq + 1] - b.q_begin;
  b.rows = q_len * group;
  b.row0 = (row_tiles - 1 - rank) * kRows;
  b.end = args.context_lens[b.seq];
  b.first_pos = b.end - q_len;
  const int last_pos = b.first_pos + (min(b.row0 + kRows, b.rows) - 1) / group;
  const int block_first_key =
      args.window > 0 ? max(0, b.first_pos + b.row0 / group - args.window + 1) : 0;
  b.first_step = block_first_key / NK;
  b.num_steps = last_pos / NK + 1;
  // Past the sequence's rows, or no keys (a context shorter than its chunk, not a valid call):
  // skipped rather than waited for, since the producer would copy nothing.
  b.empty = b.row0 >= b.rows || b.num_steps <= b.first_step;
  return b;
}

// The keys this thread's rows g and g + 8 of warp `warp` see: [first[r], limit[r]), up to and
// including the row's position and, with a sliding window, from position - window + 1 on; and
// the warp's narrowest bounds, to tell the steps that need no mask.
struct RowKeys {
  int limit[2];
  int first[2];
  int warp_min_limit;
  int warp_max_first;

  // Whether the keys tok0 .. tok0 + nk - 1 need the mask for some row of the warp.
  __device__ bool NeedsMask(int tok0, int nk) const {
    return tok0 + nk > warp_min_limit || tok0 < warp_max_first;
  }
};

__device__ __forceinline__ RowKeys KeysOfRows(const BlockRows& b, int group, int window, int warp,
                                              int lane) {
  RowKeys k;
  k.warp_min_limit = INT32_MAX;
  k.warp_max_first = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = b.row0 + warp * 16 + lane / 4 + r * 8;
    const int pos = b.first_pos + row / group;
    k.limit[r] = row < b.rows ? pos + 1 : 0;
    k.first[r] = row < b.rows && window > 0 ? max(0, pos - window + 1) : 0;
    k.warp_min_limit = min(k.warp_min_limit, k.limit[r]);
    k.warp_max_first = max(k.warp_max_first, k.first[r]);
  }
  k.warp_min_limit = __reduce_min_sync(0xffffffffu, k.warp_min_limit);
  k.warp_max_first = __reduce_max_sync(0xffffffffu, k.warp_max_first);
  return k;
}

// Writes this thread's two rows of warp `warp`, normalized, to args.out.
template <typename T, int D>
__device__ __forceinline__ void StoreRows(const PrefillAttentionArgs<T, T>& args,
                                          const BlockRows& b, int group, int kv_head,
                                          const WarpgroupState<D>& st, int warp, int lane) {
  const int g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float total = RowTotal(st.sum[r]);
    const int row = b.row0 + warp * 16 + g + r * 8;
    if (row >= b.rows) continue;
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    T* dst = args.out +
             (size_t(b.q_begin + row / group) * args.num_heads + kv_head * group + row % group) * D;
#pragma unroll
    for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        *reinterpret_cast<uint32_t*>(dst + pn * kPanel + 8 * i + 2 * tig) = attention::Pack<T>(
            st.out[pn][4 * i + 2 * r] * inv, st.out[pn][4 * i + 2 * r + 1] * inv);
      }
    }
  }
}

}  // namespace gqa::kernels::cuda::warpgroup_prefill
