// The merge of an attention kernel's key splits: per (row, head), out = sum_s 2^(lse_s - lse) *
// out_s / sum, where out_s is split s's normalized output and lse_s its log-sum-exp (log2
// units, -inf for an empty split). Shared by the decode kernel (rows are sequences) and the
// prefill kernel (rows are query tokens). The including file may define GQA_MERGE_TRACE_BEGIN()
// and GQA_MERGE_TRACE_END() (the decode kernel's phase trace); the kernel sits in an anonymous
// namespace so each file gets its own copy.
#pragma once

#include "attention_tile.cuh"
#include "gqa/kernels/decode_selector.h"
#include "vec.cuh"

#ifndef GQA_MERGE_TRACE_BEGIN
#define GQA_MERGE_TRACE_BEGIN() \
  do {                          \
  } while (0)
#endif
#ifndef GQA_MERGE_TRACE_END
#define GQA_MERGE_TRACE_END() \
  do {                        \
  } while (0)
#endif

namespace gqa::kernels::cuda {
namespace {

// Grid (num_heads, num_rows), block D threads: the block reads the split weights in parallel,
// then each thread sums its column. num_splits <= kDecodeMaxSplits.
template <typename T, int D>
__global__ void __launch_bounds__(D)
    MergeSplitsKernel(const float* partial_out,  // [num_rows, num_heads, num_splits, D]
                      const float* partial_lse,  // [num_rows, num_heads, num_splits]
                      int num_heads, int num_splits,
                      T* out) {  // [num_rows, num_heads, D]
  __shared__ float weight[kDecodeMaxSplits];
  __shared__ float warp_max[D / 32];
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");  // the producing grid's partials are complete
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  GQA_MERGE_TRACE_BEGIN();
  const size_t head = size_t(blockIdx.y) * num_heads + blockIdx.x;
  const int d = threadIdx.x, lane = d % 32, warp = d / 32;
  const float* lse = partial_lse + head * num_splits;
  float local_max = -INFINITY;
  for (int s = d; s < num_splits; s += D) {
    weight[s] = lse[s];
    local_max = fmaxf(local_max, lse[s]);
  }
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) {
    local_max = fmaxf(local_max, __shfl_xor_sync(0xffffffffu, local_max, offset));
  }
  if (lane == 0) warp_max[warp] = local_max;
  __syncthreads();
  float max_lse = -INFINITY;
#pragma unroll
  for (int w = 0; w < D / 32; ++w) max_lse = fmaxf(max_lse, warp_max[w]);
  for (int s = d; s < num_splits; s += D) {
    weight[s] = weight[s] == -INFINITY ? 0.0f : exp2f(weight[s] - max_lse);
  }
  __syncthreads();
  const float* column = partial_out + head * num_splits * D + d;
  float total = 0.0f, acc = 0.0f;
#pragma unroll 8
  for (int s = 0; s < num_splits; ++s) {
    total += weight[s];
    acc += weight[s] * column[size_t(s) * D];
  }
  out[head * D + d] = FromFloat<T>(total > 0.0f ? acc / total : 0.0f);
  GQA_MERGE_TRACE_END();
}

}  // namespace
}  // namespace gqa::kernels::cuda
