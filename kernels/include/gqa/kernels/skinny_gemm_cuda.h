// Matrix products of a few rows (decode steps of small batches): y = x @ w^T (+ bias), Hugging
// Face Linear layout. Memory-bound on w: each weight row is streamed once from DRAM with 16-byte
// loads, every lane keeping many loads in flight, while x (a few rows) sits in shared memory.
// cuBLAS reaches ~45-85% of copy bandwidth on these shapes (kernels/BENCHMARKS.md).
//
// A row's result does not depend on how many rows are computed with it.
//
// SkinnyMmaGemm is the tensor-core version for 1-64 rows (gqa/kernels/skinny_mma_plan.h says how
// it cuts the work): the few rows are the tensor cores' 8-row side, so the fp32 products of the
// CUDA-core kernel, which make it compute-bound beyond one row, become mma.sync work.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
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

// Scratch of SkinnyMmaGemm, sized by the caller for every product it runs (skinny_mma_plan.h:
// SkinnyMmaPartialFloats, SkinnyMmaCounters); one product at a time on a stream.
struct SkinnyMmaWorkspace {
  float* partials = nullptr;  // [partial_floats]
  size_t partial_floats = 0;
  int* counters = nullptr;  // [counters_size], zeroed once before the first product
  size_t counters_size = 0;
  int sm_count = 1;  // the device's multiprocessors (the plan depends on it)
};

// y[m, n] = x[m, 0:k] @ w^T (+ bias). m <= kSkinnyMmaMaxRows (64); k and x_stride multiples of 8;
// 16-byte aligned x and w. cudaErrorInvalidValue when the workspace is too small for the plan.
// A row's result depends on m only through its row bucket (8, 16, 32, 64), which sets the splits.
template <typename T, typename Out>
cudaError_t SkinnyMmaGemm(const T* x,  // [m, x_stride]
                          int x_stride,
                          const T* w,     // [n, k]
                          const T* bias,  // [n] or nullptr
                          int m, int n, int k,
                          Out* y,  // [m, n]
                          const SkinnyMmaWorkspace& workspace, cudaStream_t stream);

// What SkinnyMmaGemmFused folds into the product, on either side of it (the decode layer's
// RMSNorms, which otherwise run as AddRmsNorm kernels between the products):
// - in: x is the residual stream and each x row is normalised while it is staged, as AddRmsNorm
//   computes it: x'[r, c] = T(norm_weight[c] * (x[r, c] * inv_rms[r])), inv_rms[r] =
//   rsqrt(sum of squares / k + eps) from the sums the product before left in norm_sums_in
//   ([norm_sum_blocks][kSkinnyMmaMaxRows], added in block order);
// - in, for a down projection: x rows hold gate (columns 0..k-1) then up (k..2k-1), and are
//   staged as T(silu(gate) * up), as SiluMul computes it (not with norm_weight);
// - out: instead of y, residual[r, c] = T(residual[r, c] + T(y[r, c])), and the sums of squares
//   of the new residual of each 64 columns (the block's weight rows) into norm_sums_out
//   [ceil(n / 64)][kSkinnyMmaMaxRows], for the next product's input.
template <typename T>
struct SkinnyMmaFusion {
  const T* norm_weight = nullptr;       // [k]; null: x as it is
  const float* norm_sums_in = nullptr;  // [norm_sum_blocks][kSkinnyMmaMaxRows]
  int norm_sum_blocks = 0;
  float eps = 0.0f;
  bool silu_gate_up = false;  // x rows are gate|up ([m, x_stride >= 2k]): x' = T(silu(gate) * up)
  T* residual = nullptr;      // [m, n]; null: y
  float* norm_sums_out = nullptr;  // [ceil(n / 64)][kSkinnyMmaMaxRows]
};

// SkinnyMmaGemm with the fusions above (y may be null when residual is set).
template <typename T>
cudaError_t SkinnyMmaGemmFused(const T* x,  // [m, x_stride]
                               int x_stride,
                               const T* w,     // [n, k]
                               const T* bias,  // [n] or nullptr
                               int m, int n, int k,
                               T* y,  // [m, n] or nullptr
                               const SkinnyMmaFusion<T>& fusion,
                               const SkinnyMmaWorkspace& workspace, cudaStream_t stream);

}  // namespace gqa::kernels::cuda
