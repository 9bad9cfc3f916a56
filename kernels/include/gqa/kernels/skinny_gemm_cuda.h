// Matrix products of a few rows (decode steps of small batches): y = x @ w^T (+ bias), Hugging
// Face Linear layout. Memory-bound on w: each weight row is streamed once from DRAM with 16-byte
// loads, every lane keeping many loads in flight, while x (a few rows) sits in shared memory.
// cuBLAS reaches ~45-85% of copy bandwidth on these shapes (kernels/BENCHMARKS.md).
//
// A row's result does not depend on how many rows are computed with it.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gqa::kernels::cuda {

constexpr int kSkinnyGemmMaxRows = 8;

enum class SkinnyInput {
  kPlain,       // x[r] = input[r, 0:k]
  kSiluGateUp,  // x[r] = silu(input[r, 0:k]) * input[r, k:2k], rounded to T (a fused gate|up row)
};

// m <= kSkinnyGemmMaxRows; k a multiple of 8; 16-byte aligned rows. Out is T or float.
template <typename T, typename Out>
cudaError_t SkinnyGemm(const T* input,  // [m, input_stride]
                       int input_stride, SkinnyInput input_kind,
                       const T* w,     // [n, k]
                       const T* bias,  // [n] or nullptr
                       int m, int n, int k,
                       Out* y,  // [m, n]
                       cudaStream_t stream);

}  // namespace gqa::kernels::cuda
