// The CUDA-core skinny product's kernel (see skinny_gemm_cuda.h), shared by skinny_gemm.cu (plain
// and residual outputs) and skinny_gemm_rope.cu (the QKV product with RoPE and the KV append).
//
// A block of 4 warps takes 8 weight rows, 2 per warp. It first stages x (M rows of k, computed
// from gate|up or RMS-normalised when asked) in shared memory, then each lane walks its warp's two
// weight rows in 16-byte chunks, 8 chunks per row per pass (16 loads in flight per lane), and
// multiplies them with the matching x chunks from shared memory in fp32. A butterfly over the
// warp sums the lanes; the warp's epilogue then owns both rows' results for every x row.
#pragma once

#include <cstdint>

#include "gqa/kernels/skinny_gemm_cuda.h"
#include "pdl.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda::skinny {

constexpr int kWarps = 4;
constexpr int kRowsPerWarp = 2;
constexpr int kRowsPerBlock = kWarps * kRowsPerWarp;
constexpr int kThreads = kWarps * 32;
constexpr int kUnroll = 8;  // 16-byte chunks per row per lane per pass

// AddRmsNorm's block size (elementwise.cu): the fused norm sums a row's squares in the order a
// block of this many threads does, so that its result is bitwise AddRmsNorm's.
constexpr int kNormThreads = 256;
constexpr int kNormWarps = kNormThreads / 32;
static_assert(kNormThreads % kThreads == 0);

template <typename T>
struct Input {
  const T* data;  // [m, stride]
  int stride;
  SkinnyInput kind;
  SkinnyNorm<T> norm;  // RMS-normalise each row (kPlain only)
};

// The sum of squares of `row` (dim values) as AddRmsNormKernel computes it: kNormThreads
// "threads" each add the squares of their 8-value chunks (8t, 8t + 8 kNormThreads, ...) in order,
// a butterfly sums each warp of them, then one more over the kNormWarps warp sums. Every thread of
// the block returns the same value.
template <typename T>
__device__ __forceinline__ float NormSumOfSquares(const T* row, int dim, float* scratch) {
  constexpr int kPerThread = kNormThreads / kThreads;  // virtual threads per thread
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float partial[kPerThread];
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    float sum_sq = 0.0f;
    for (int c = (threadIdx.x + j * kThreads) * 8; c < dim; c += kNormThreads * 8) {
      const Vec8<T> r = Vec8<T>::Load(row + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) sum_sq += r.Get(e) * r.Get(e);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
      sum_sq += __shfl_xor_sync(0xffffffffu, sum_sq, offset);
    }
    partial[j] = sum_sq;
  }
  __syncthreads();  // scratch free
  if (lane == 0) {
#pragma unroll
    for (int j = 0; j < kPerThread; ++j) scratch[warp + j * kWarps] = partial[j];
  }
  __syncthreads();
  float v = lane < kNormWarps ? scratch[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// x rows 0..M-1 into shared memory (rows >= m as zeros), as the input kind and norm ask.
template <typename T, int M>
__device__ __forceinline__ void StageInput(const Input<T>& in, int m, int k, T* xs) {
  __shared__ float scratch[kNormWarps];
  const int chunks = k / 8;
  for (int i = threadIdx.x; i < M * chunks; i += kThreads) {
    const int r = i / chunks, c = (i % chunks) * 8;
    Vec8<T> v;
    if (r >= m) {
      v.raw = make_uint4(0, 0, 0, 0);
    } else if (in.kind == SkinnyInput::kPlain) {
      v = Vec8<T>::Load(in.data + size_t(r) * in.stride + c);
    } else {
      const Vec8<T> g = Vec8<T>::Load(in.data + size_t(r) * in.stride + c);
      const Vec8<T> u = Vec8<T>::Load(in.data + size_t(r) * in.stride + k + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const float gv = g.Get(e);
        v.Set(e, gv / (1.0f + __expf(-gv)) * u.Get(e));  // as SiluMul
      }
    }
    v.Store(xs + size_t(r) * k + c);
  }
  if (in.norm.weight == nullptr) return;
  __syncthreads();
  for (int r = 0; r < m; ++r) {  // as AddRmsNorm: out = T(w * (x * inv_rms))
    T* row = xs + size_t(r) * k;
    const float inv_rms = rsqrtf(NormSumOfSquares(row, k, scratch) / float(k) + in.norm.eps);
    __syncthreads();  // every thread's squares read before the row changes
    for (int c = threadIdx.x * 8; c < k; c += kThreads * 8) {
      Vec8<T> x = Vec8<T>::Load(row + c);
      const Vec8<T> w = Vec8<T>::Load(in.norm.weight + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) x.Set(e, w.Get(e) * (x.Get(e) * inv_rms));
      x.Store(row + c);
    }
  }
}

// acc[j][r] = weight row rows[j] . x row r, summed over the warp (every lane holds the sums).
// Rows >= n are read as row n - 1 (their results are dropped by the epilogue).
template <typename T, int M>
__device__ __forceinline__ void WarpProducts(const Input<T>& in, const T* w, int m, int n, int k,
                                             const int (&rows)[kRowsPerWarp], T* xs,
                                             float (&acc)[kRowsPerWarp][M]) {
  const int chunks = k / 8;
  const int lane = threadIdx.x % 32;
  const uint4* wrow[kRowsPerWarp];
#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
    wrow[j] = reinterpret_cast<const uint4*>(w + size_t(min(rows[j], n - 1)) * k);
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
  StageInput<T, M>(in, m, k, xs);
  __syncthreads();

#pragma unroll
  for (int j = 0; j < kRowsPerWarp; ++j) {
#pragma unroll
    for (int r = 0; r < M; ++r) acc[j][r] = 0.0f;
  }
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
}

// The kernel: Epilogue::Rows(warp) names the warp's two weight rows, Epilogue::Store takes their
// results.
template <typename T, int M, typename Epilogue>
__global__ void __launch_bounds__(kThreads)
    SkinnyKernel(const Input<T> in, const T* w, int m, int n, int k, const Epilogue epilogue) {
  extern __shared__ uint4 x_smem[];  // [M][k / 8] chunks of 8 T
  const int warp_index = blockIdx.x * kWarps + threadIdx.x / 32;
  int rows[kRowsPerWarp];
  epilogue.Rows(warp_index, rows);
  float acc[kRowsPerWarp][M];
  WarpProducts<T, M>(in, w, m, n, k, rows, reinterpret_cast<T*>(x_smem), acc);
  epilogue.template Store<M>(rows, m, acc);
}

template <typename T, int M, typename Epilogue>
cudaError_t Launch(const Input<T>& in, const T* w, int m, int n, int k, const Epilogue& epilogue,
                   int warps_needed, cudaStream_t stream) {
  const size_t smem = SkinnyGemmSharedBytes(M, k, sizeof(T));
  if (smem > 48 * 1024) {
    const cudaError_t e = AllowDynamicSmem<SkinnyKernel<T, M, Epilogue>>(int(smem));
    if (e != cudaSuccess) return e;
  }
  const unsigned blocks = unsigned((warps_needed + kWarps - 1) / kWarps);
  return LaunchAfterPrevious(SkinnyKernel<T, M, Epilogue>, dim3(blocks), dim3(kThreads), smem,
                             stream, in, w, m, n, k, epilogue);
}

template <typename T, typename Epilogue>
cudaError_t Dispatch(const Input<T>& in, const T* w, int m, int n, int k, const Epilogue& epilogue,
                     int warps_needed, cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  if (m > kSkinnyGemmMaxRows || k % 8 != 0 || in.stride % 8 != 0) return cudaErrorInvalidValue;
  if (in.norm.weight != nullptr && in.kind != SkinnyInput::kPlain) return cudaErrorInvalidValue;
  switch (SkinnyGemmRowBucket(m)) {
    case 1:
      return Launch<T, 1>(in, w, m, n, k, epilogue, warps_needed, stream);
    case 2:
      return Launch<T, 2>(in, w, m, n, k, epilogue, warps_needed, stream);
    case 4:
      return Launch<T, 4>(in, w, m, n, k, epilogue, warps_needed, stream);
    default:
      return Launch<T, 8>(in, w, m, n, k, epilogue, warps_needed, stream);
  }
}

}  // namespace gqa::kernels::cuda::skinny
