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

}  // namespace gqa::kernels::cuda
