// What the two decode attention kernels (paged_decode_attention.cu: mma.sync, every GPU;
// decode_warpgroup.cu: wgmma, Hopper) share: which keys a block of (split, KV head, sequence)
// reads, and the launch of a decode grid followed by the merge of its splits.
#pragma once

#include <cuda_runtime.h>

#include "attention_tile.cuh"
#include "gqa/kernels/decode_selector.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "pdl.cuh"
#include "split_merge.cuh"

namespace gqa::kernels::cuda {
namespace {

// The first key a sequence's query (at position len - 1) sees: with a sliding window of
// `window` > 0 tokens, len - window.
__device__ __forceinline__ int FirstKey(int len, int window) {
  return window > 0 ? max(0, len - window) : 0;
}

// Tokens per split when a sequence cuts its own context of `len` tokens into at most
// `num_splits` ranges of whole tiles, each at least `min_tiles` tiles long.
__device__ __forceinline__ int SequenceSplitTokens(int len, int num_splits, int min_tiles) {
  constexpr int kTile = kDecodeTileTokens;
  const int tiles = (len + kTile - 1) / kTile;
  return max(min_tiles, (tiles + num_splits - 1) / num_splits) * kTile;
}

// Launches `kernel` on the grid (split, KV head, sequence) of `choice` with `threads` threads
// and `smem` bytes of dynamic shared memory, then, with several splits, the merge. The kernel
// takes (lead..., args, group, split_tokens, num_splits, min_split_tiles, partial_out,
// partial_lse).
template <typename T, typename KV, int D, typename Kernel, typename... Lead>
cudaError_t LaunchDecodeGrid(Kernel kernel, int threads, size_t smem,
                             const DecodeAttentionArgs<T, KV>& args,
                             const DecodeKernelChoice& choice, cudaStream_t stream,
                             const Lead&... lead) {
  const int num_kv_heads = args.cache.num_kv_heads;
  const int group = args.num_heads / num_kv_heads;
  float* partial_out = static_cast<float*>(args.workspace);
  const size_t rows = size_t(args.num_seqs) * args.num_heads * choice.num_splits;
  float* partial_lse = partial_out ? partial_out + rows * D : nullptr;
  if (choice.num_splits > 1 && partial_out == nullptr) return cudaErrorInvalidValue;
  const dim3 grid(choice.num_splits, num_kv_heads, args.num_seqs);
  // A plain launch unless asked (DecodeAttentionArgs::after_previous says when it pays).
  if (args.after_previous) {
    if (const cudaError_t e = LaunchAfterPrevious(
            kernel, grid, dim3(threads), smem, stream, lead..., args, group, choice.split_tokens,
            choice.num_splits, choice.min_split_tiles, partial_out, partial_lse);
        e != cudaSuccess) {
      return e;
    }
  } else {
    kernel<<<grid, threads, smem, stream>>>(lead..., args, group, choice.split_tokens,
                                            choice.num_splits, choice.min_split_tiles, partial_out,
                                            partial_lse);
  }
  if (choice.num_splits == 1) return cudaGetLastError();
  // Programmatic dependent launch (Hopper): the merge grid is scheduled while the decode grid
  // runs and starts the moment it completes, instead of after a full launch gap.
  return LaunchAfterPrevious(MergeSplitsKernel<T, D>, dim3(args.num_heads, args.num_seqs), dim3(D),
                             0, stream, static_cast<const float*>(partial_out),
                             static_cast<const float*>(partial_lse), args.num_heads,
                             choice.num_splits, args.out);
}

}  // namespace
}  // namespace gqa::kernels::cuda
