// The warpgroup (wgmma) decode attention kernel, Hopper only: what paged_decode_attention.cu
// dispatches to when DecodeKernelChoice::warpgroup is set (SelectWarpgroupDecodeKernel).
#pragma once

#include <cuda_runtime.h>

#include "gqa/kernels/paged_attention_cuda.h"

namespace gqa::kernels::cuda {

// A 16-bit cache, head_dim 64 or 128, group size up to kWarpgroupDecodeMaxGroup, a choice from
// SelectWarpgroupDecodeKernel (stages 3 or 4). cudaErrorNotSupported where
// WarpgroupPrefillAvailable() (the same Hopper check) is false; cudaErrorInvalidValue for a
// shape or choice it does not take.
template <typename T>
cudaError_t WarpgroupDecodeAttention(const DecodeAttentionArgs<T, T>& args,
                                     const DecodeKernelChoice& choice, cudaStream_t stream);

// choice.producer: the same kernel with a producer warp that copies K and V with TMA
// (decode_warpgroup_tma.cu). Called by WarpgroupDecodeAttention, which checks the device, the
// shape and the choice; cudaErrorInvalidValue for a cache block size not a multiple of 16.
template <typename T>
cudaError_t ProducerWarpgroupDecode(const DecodeAttentionArgs<T, T>& args,
                                    const DecodeKernelChoice& choice, cudaStream_t stream);

}  // namespace gqa::kernels::cuda
