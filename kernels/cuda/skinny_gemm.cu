// Skinny matrix products, plain and with the residual add: see skinny_gemm_cuda.h and the
// kernel in skinny_gemm.cuh.
#include "skinny_gemm.cuh"

namespace gqa::kernels::cuda {
namespace {

using skinny::kRowsPerWarp;

// Warp i computes weight rows 2i and 2i + 1.
struct ConsecutiveRows {
  __device__ __forceinline__ void Rows(int warp_index, int (&rows)[kRowsPerWarp]) const {
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) rows[j] = warp_index * kRowsPerWarp + j;
  }
};

// y[r, row] = acc + bias.
template <typename T, typename Out>
struct StoreY : ConsecutiveRows {
  const T* bias;  // [n] or nullptr
  Out* y;         // [m, n]
  int n;
  template <int M>
  __device__ __forceinline__ void Store(const int (&rows)[kRowsPerWarp], int m,
                                        const float (&acc)[kRowsPerWarp][M]) const {
    if (threadIdx.x % 32 != 0) return;
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      if (rows[j] >= n) continue;
      const float b = bias ? ToFloat(bias[rows[j]]) : 0.0f;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        if (r < m) y[size_t(r) * n + rows[j]] = FromFloat<Out>(acc[j][r] + b);
      }
    }
  }
};

// residual[r, row] = T(residual + T(acc + bias)), as the product stored in T and AddRmsNorm's add.
template <typename T>
struct AddToResidual : ConsecutiveRows {
  const T* bias;  // [n] or nullptr
  T* residual;    // [m, n]
  int n;
  template <int M>
  __device__ __forceinline__ void Store(const int (&rows)[kRowsPerWarp], int m,
                                        const float (&acc)[kRowsPerWarp][M]) const {
    if (threadIdx.x % 32 != 0) return;
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      if (rows[j] >= n) continue;
      const float b = bias ? ToFloat(bias[rows[j]]) : 0.0f;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        if (r >= m) continue;
        T& out = residual[size_t(r) * n + rows[j]];
        out = FromFloat<T>(ToFloat(out) + ToFloat(FromFloat<T>(acc[j][r] + b)));
      }
    }
  }
};

int WarpsFor(int n) { return (n + kRowsPerWarp - 1) / kRowsPerWarp; }

}  // namespace

template <typename T, typename Out>
cudaError_t SkinnyGemm(const T* input, int input_stride, SkinnyInput input_kind, const T* w,
                       const T* bias, int m, int n, int k, Out* y, cudaStream_t stream) {
  const skinny::Input<T> in{input, input_stride, input_kind, {}};
  return skinny::Dispatch(in, w, m, n, k, StoreY<T, Out>{{}, bias, y, n}, WarpsFor(n), stream);
}

template <typename T>
cudaError_t SkinnyGemmFused(const T* input, int input_stride, SkinnyInput input_kind,
                            const SkinnyNorm<T>& norm, const T* w, const T* bias, int m, int n,
                            int k, T* y, T* residual, cudaStream_t stream) {
  if ((y == nullptr) == (residual == nullptr)) return cudaErrorInvalidValue;
  const skinny::Input<T> in{input, input_stride, input_kind, norm};
  if (residual != nullptr) {
    return skinny::Dispatch(in, w, m, n, k, AddToResidual<T>{{}, bias, residual, n}, WarpsFor(n),
                            stream);
  }
  return skinny::Dispatch(in, w, m, n, k, StoreY<T, T>{{}, bias, y, n}, WarpsFor(n), stream);
}

#define GQA_INSTANTIATE(T, Out)                                                                \
  template cudaError_t SkinnyGemm<T, Out>(const T*, int, SkinnyInput, const T*, const T*, int, \
                                          int, int, Out*, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__nv_bfloat16, float)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__half, float)
#undef GQA_INSTANTIATE
#define GQA_INSTANTIATE(T)                                                                  \
  template cudaError_t SkinnyGemmFused<T>(const T*, int, SkinnyInput, const SkinnyNorm<T>&, \
                                          const T*, const T*, int, int, int, T*, T*,        \
                                          cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16)
GQA_INSTANTIATE(__half)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
