// Skinny matrix products: see skinny_gemm_cuda.h.
//
// A block of 4 warps takes 8 consecutive weight rows, 2 per warp. It first stages x (M rows of
// k, computed from gate|up when asked) in shared memory, then each lane walks its warp's two
// weight rows in 16-byte chunks, 8 chunks per row per pass (16 loads in flight per lane), and
// multiplies them with the matching x chunks from shared memory in fp32. A butterfly over the
// warp sums the lanes.
#include <algorithm>
#include <cstdint>

#include "gqa/kernels/skinny_gemm_cuda.h"
#include "pdl.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kUnroll = 8;  // 16-byte chunks per row per lane per pass

template <typename T, int M>
__device__ __forceinline__ void StageInput(const T* input, int input_stride, SkinnyInput kind,
                                           int m, int k, T* xs) {
  const int chunks = k / 8;
  for (int i = threadIdx.x; i < M * chunks; i += blockDim.x) {
    const int r = i / chunks, c = (i % chunks) * 8;
    Vec8<T> v;
    if (r >= m) {
      v.raw = make_uint4(0, 0, 0, 0);
    } else if (kind == SkinnyInput::kPlain) {
      v = Vec8<T>::Load(input + size_t(r) * input_stride + c);
    } else {
      const Vec8<T> g = Vec8<T>::Load(input + size_t(r) * input_stride + c);
      const Vec8<T> u = Vec8<T>::Load(input + size_t(r) * input_stride + k + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float gv = g.Get(e);
        v.Set(e, gv / (1.0f + __expf(-gv)) * u.Get(e));  // as SiluMul
      }
    }
    v.Store(xs + size_t(r) * k + c);
  }
}

template <typename T, typename Out, int M>
__global__ void __launch_bounds__(kWarps * 32)
    SkinnyGemmKernel(const T* input, int input_stride, SkinnyInput input_kind, const T* w,
                     const T* bias, int m, int n, int k, Out* y) {
  extern __shared__ uint4 x_smem[];  // [M][k / 8] chunks of 8 T
  T* xs = reinterpret_cast<T*>(x_smem);
  const int chunks = k / 8;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * kRowsPerBlock + warp * kRowsPerWarp;
  const uint4* wrow[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    wrow[j] = reinterpret_cast<const uint4*>(w + size_t(min(row0 + j, n - 1)) * k);
  }
  Vec8<T> wv[kRowsPerWarp][kUnroll];
  auto load_pass = [&](int base) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * 32 + lane;
#pragma unroll
      for (int j = 0; j < kRowsPerWarp; ++j) {
        wv[j][u].raw = c < chunks ? __ldcs(wrow[j] + c) : make_uint4(0, 0, 0, 0);  // read once
      }
    }
  };
  // The weights do not depend on the kernels before: their first pass is in flight while those
  // finish. Then the input, which does.
  load_pass(0);
  WaitForPrevious();
  StageInput<T, M>(input, input_stride, input_kind, m, k, xs);
  __syncthreads();

  float acc[kRowsPerWarp][M] = {};
  for (int base = 0; base < chunks; base += 32 * kUnroll) {
    if (base > 0) load_pass(base);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = base + u * 32 + lane;
      if (c >= chunks) break;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        const Vec8<T> xv = Vec8<T>::Load(xs + size_t(r) * k + c * 8);
#pragma unroll
        for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[j][r] += wv[j][u].Get(e) * xv.Get(e);
        }
      }
    }
  }
  AllowNext();
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < M; ++r) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[j][r] += __shfl_xor_sync(0xffffffffu, acc[j][r], offset);
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int row = row0 + j;
      if (row >= n) continue;
      const float b = bias ? ToFloat(bias[row]) : 0.0f;
#pragma unroll
      for (int r = 0; r < M; ++r) {
        if (r < m) y[size_t(r) * n + row] = FromFloat<Out>(acc[j][r] + b);
      }
    }
  }
}

template <typename T, typename Out, int M>
cudaError_t Launch(const T* input, int input_stride, SkinnyInput kind, const T* w, const T* bias,
                   int m, int n, int k, Out* y, cudaStream_t stream) {
  const size_t smem = size_t(M) * k * sizeof(T);
  if (smem > 48 * 1024) {
    const cudaError_t e = AllowDynamicSmem<SkinnyGemmKernel<T, Out, M>>(int(smem));
    if (e != cudaSuccess) return e;
  }
  const unsigned blocks = unsigned((n + kRowsPerBlock - 1) / kRowsPerBlock);
  return LaunchAfterPrevious(SkinnyGemmKernel<T, Out, M>, dim3(blocks), dim3(kWarps * 32), smem,
                             stream, input, input_stride, kind, w, bias, m, n, k, y);
}

}  // namespace

template <typename T, typename Out>
cudaError_t SkinnyGemm(const T* input, int input_stride, SkinnyInput input_kind, const T* w,
                       const T* bias, int m, int n, int k, Out* y, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  if (m > kSkinnyGemmMaxRows || k % 8 != 0 || input_stride % 8 != 0) return cudaErrorInvalidValue;
  if (m == 1)
    return Launch<T, Out, 1>(input, input_stride, input_kind, w, bias, m, n, k, y, stream);
  if (m == 2)
    return Launch<T, Out, 2>(input, input_stride, input_kind, w, bias, m, n, k, y, stream);
  if (m <= 4)
    return Launch<T, Out, 4>(input, input_stride, input_kind, w, bias, m, n, k, y, stream);
  return Launch<T, Out, 8>(input, input_stride, input_kind, w, bias, m, n, k, y, stream);
}

#define GQA_INSTANTIATE(T, Out)                                                                \
  template cudaError_t SkinnyGemm<T, Out>(const T*, int, SkinnyInput, const T*, const T*, int, \
                                          int, int, Out*, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__nv_bfloat16, float)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__half, float)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
