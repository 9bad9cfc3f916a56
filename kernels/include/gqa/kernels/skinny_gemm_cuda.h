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

#include "gqa/kernels/paged_kv.h"

namespace gqa::kernels::cuda {

constexpr int kSkinnyGemmMaxRows = 8;

// The x rows the kernel is compiled for (1, 2, 4 or 8) and the shared memory it stages x in.
constexpr int SkinnyGemmRowBucket(int m) { return m == 1 ? 1 : m == 2 ? 2 : m <= 4 ? 4 : 8; }
constexpr size_t SkinnyGemmSharedBytes(int m, int k, size_t element_bytes) {
  return size_t(SkinnyGemmRowBucket(m)) * size_t(k) * element_bytes;
}

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

// RMS-normalise each x row while staging it, bitwise as AddRmsNorm(nullptr, x, weight, ...)
// computes it: x'[r, c] = T(weight[c] * (x[r, c] * rsqrt(sum of squares of x[r] / k + eps))).
template <typename T>
struct SkinnyNorm {
  const T* weight = nullptr;  // [k]; null: no norm
  float eps = 0.0f;
};

// SkinnyGemm with the decode layer's seams folded in, for steps of a token or a few (where every
// product of a layer runs this kernel), each bitwise what the separate kernels compute:
// - norm: x is the residual stream, normalised as SkinnyNorm says (kPlain input only);
// - residual (instead of y): residual[r, c] = T(residual[r, c] + T(y[r, c])), AddRmsNorm's add.
// Exactly one of y and residual is non-null.
template <typename T>
cudaError_t SkinnyGemmFused(const T* input,  // [m, input_stride]
                            int input_stride, SkinnyInput input_kind, const SkinnyNorm<T>& norm,
                            const T* w,     // [n, k]
                            const T* bias,  // [n] or nullptr
                            int m, int n, int k,
                            T* y,         // [m, n] or nullptr
                            T* residual,  // [m, n] or nullptr
                            cudaStream_t stream);

// The fused Q|K|V product with QkvRopeAppend's work in its epilogue (bitwise the same values):
// each warp computes a rotation pair of weight rows (i and i + head_dim / 2 of one head), rotates
// query and key pairs by positions[t] * inv_freq[i], and writes queries to q_out and keys and
// values to their cache slots (slot < 0: padding, skipped; FP8: quantised with the head's scale).
template <typename T, typename KV>
struct SkinnyRopeAppend {
  const int32_t* positions = nullptr;  // [m], device memory
  const float* inv_freq = nullptr;     // [head_dim / 2], device memory
  const int64_t* slots = nullptr;      // [m], device memory
  int num_heads = 0;                   // query heads
  T* q_out = nullptr;                  // [m, num_heads, head_dim]
  PagedKvView<KV> cache;
};

// n must be (num_heads + 2 num_kv_heads) x head_dim, head_dim even.
template <typename T, typename KV>
cudaError_t SkinnyGemmRopeAppend(const T* input,  // [m, input_stride]
                                 int input_stride, const SkinnyNorm<T>& norm,
                                 const T* w,     // [n, k]
                                 const T* bias,  // [n] or nullptr
                                 int m, int n, int k, const SkinnyRopeAppend<T, KV>& rope,
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
