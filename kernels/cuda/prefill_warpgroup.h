// The warpgroup (wgmma) prefill attention kernel, Hopper only: what paged_prefill_attention.cu
// dispatches to (see PrefillPath in gqa/kernels/paged_attention_cuda.h).
#pragma once

#include <cuda_runtime.h>

#include "gqa/kernels/paged_attention_cuda.h"

namespace gqa::kernels::cuda {

// A 16-bit cache, unsplit keys (args.key_splits <= 1), head_dim 64 or 128, group size up to 64;
// args.warpgroup_variant 0 to kWarpgroupPrefillVariants. cudaErrorNotSupported where
// WarpgroupPrefillAvailable() is false.
template <typename T>
cudaError_t WarpgroupPrefillAttention(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream);

// The variants from kFirstProducerPrefillVariant on: the same kernel with a producer warp that
// copies K and V with TMA (prefill_warpgroup_tma.cu). Called by WarpgroupPrefillAttention, which
// checks the device and the arguments; cudaErrorInvalidValue for a cache block size that is not
// a multiple of 16.
constexpr int kFirstProducerPrefillVariant = 5;
// What variant 0 runs: at head_dim 128 variant 7 (128 keys per step in 3 stages, the two
// consumer warpgroups in turns), at 64 variant 10 (the same, persistent), the fastest on an H100
// on every row of `gqa-bench kernels --prefill` at their head_dim (kernels/BENCHMARKS.md steps
// 26 and 28).
constexpr int DefaultWarpgroupPrefillVariant(int head_dim) { return head_dim == 64 ? 10 : 7; }
template <typename T>
cudaError_t ProducerWarpgroupPrefill(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream);

}  // namespace gqa::kernels::cuda
