// RMSNorm with the residual add, rotary embedding, SwiGLU and the embedding gather.
// 16-byte vector accesses where the shape allows; fp32 arithmetic.
#include <algorithm>
#include <cstdint>

#include "gqa/kernels/elementwise_cuda.h"
#include "pdl.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

constexpr int kNormThreads = 256;

__device__ __forceinline__ float BlockSum(float v, float* scratch) {  // scratch: [32]
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < int(blockDim.x / 32) ? scratch[lane] : 0.0f;
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// One block per row.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormKernel(const T* x, T* residual, const T* weight, int dim, float eps, T* out) {
  __shared__ float scratch[32];
  WaitForPrevious();  // x and residual come from the kernels before
  AllowNext();        // the next product may start streaming its weights
  const size_t row = size_t(blockIdx.x) * dim;
  float sum_sq = 0.0f;
  for (int c = threadIdx.x * 8; c < dim; c += kNormThreads * 8) {
    Vec8<T> r = Vec8<T>::Load(residual + row + c);
    if (x != nullptr) {
      const Vec8<T> a = Vec8<T>::Load(x + row + c);
#pragma unroll
      for (int e = 0; e < 8; ++e) r.Set(e, r.Get(e) + a.Get(e));  // rounds to T, like the model
      r.Store(residual + row + c);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) sum_sq += r.Get(e) * r.Get(e);
  }
  const float inv_rms = rsqrtf(BlockSum(sum_sq, scratch) / float(dim) + eps);
  for (int c = threadIdx.x * 8; c < dim; c += kNormThreads * 8) {
    const Vec8<T> r = Vec8<T>::Load(residual + row + c);  // this thread's own write above
    const Vec8<T> w = Vec8<T>::Load(weight + c);
    Vec8<T> o;
#pragma unroll
    for (int e = 0; e < 8; ++e) o.Set(e, w.Get(e) * (r.Get(e) * inv_rms));
    o.Store(out + row + c);
  }
}

// One thread per (token, head, rotation pair); q heads first, then k heads.
template <typename T>
__global__ void RopeKernel(T* q, T* k, const int32_t* positions, const float* inv_freq, int tokens,
                           int num_heads, int num_kv_heads, int head_dim) {
  const int half = head_dim / 2;
  const int heads = num_heads + num_kv_heads;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(tokens) * heads * half) return;
  const int pair = int(i % half);
  const int head = int((i / half) % heads);
  const int token = int(i / (int64_t(half) * heads));
  T* v = head < num_heads ? q + (size_t(token) * num_heads + head) * head_dim
                          : k + (size_t(token) * num_kv_heads + head - num_heads) * head_dim;
  float sin_a, cos_a;
  sincosf(float(positions[token]) * inv_freq[pair], &sin_a, &cos_a);  // precise: large angles
  const float x1 = ToFloat(v[pair]), x2 = ToFloat(v[pair + half]);
  v[pair] = FromFloat<T>(x1 * cos_a - x2 * sin_a);
  v[pair + half] = FromFloat<T>(x2 * cos_a + x1 * sin_a);
}

// kVector: 8 values per thread with 16-byte accesses (dim and in_stride multiples of 8), else
// one. silu(g) * u per value either way.
template <typename T, bool kVector>
__global__ void SiluMulKernel(const T* gate, const T* up, int rows, int dim, int in_stride,
                              T* out) {
  constexpr int kPerThread = kVector ? 8 : 1;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  WaitForPrevious();  // gate|up comes from the product before
  AllowNext();        // the next product (down) may start streaming its weights
  const int per_row = dim / kPerThread;
  if (i >= int64_t(rows) * per_row) return;
  const int row = int(i / per_row), col = int(i % per_row) * kPerThread;
  auto silu_mul = [](float g, float u) { return g / (1.0f + __expf(-g)) * u; };
  const size_t in = size_t(row) * in_stride + col, at = size_t(row) * dim + col;
  if constexpr (kVector) {
    const Vec8<T> g = Vec8<T>::Load(gate + in), u = Vec8<T>::Load(up + in);
    Vec8<T> o;
#pragma unroll
    for (int e = 0; e < 8; ++e) o.Set(e, silu_mul(g.Get(e), u.Get(e)));
    o.Store(out + at);
  } else {
    out[at] = FromFloat<T>(silu_mul(ToFloat(gate[in]), ToFloat(up[in])));
  }
}

// out[t] = table[ids[t] - vocab_begin] for ids in [vocab_begin, vocab_end), zeros otherwise (a
// tensor-parallel rank's rows; the whole table is [0, INT32_MAX)).
template <typename T>
__global__ void EmbeddingKernel(const T* table, const int32_t* ids, int tokens, int hidden,
                                int vocab_begin, int vocab_end, T* out) {
  const int chunks = hidden / 8;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(tokens) * chunks) return;
  const int token = int(i / chunks), c = int(i % chunks) * 8;
  const int id = ids[token];
  T* dst = out + size_t(token) * hidden + c;
  if (id >= vocab_begin && id < vocab_end) {
    Vec8<T>::Load(table + size_t(id - vocab_begin) * hidden + c).Store(dst);
  } else {
    for (int j = 0; j < 8; ++j) dst[j] = FromFloat<T>(0.0f);
  }
}

template <typename T>
__global__ void FillUniformKernel(T* p, size_t n, float lo, float hi, uint64_t seed) {
  for (size_t i = size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + i;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    p[i] = FromFloat<T>(lo + (hi - lo) * float(z >> 40) * 0x1.0p-24f);
  }
}

unsigned Blocks(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

template <typename T>
cudaError_t AddRmsNorm(const T* x, T* residual, const T* weight, int rows, int dim, float eps,
                       T* out, cudaStream_t stream) {
  if (dim % 8 != 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return LaunchAfterPrevious(AddRmsNormKernel<T>, dim3(rows), dim3(kNormThreads), 0, stream, x,
                             residual, weight, dim, eps, out);
}

template <typename T>
cudaError_t ApplyRope(T* q, T* k, const int32_t* positions, const float* inv_freq, int tokens,
                      int num_heads, int num_kv_heads, int head_dim, cudaStream_t stream) {
  const int64_t n = int64_t(tokens) * (num_heads + num_kv_heads) * (head_dim / 2);
  if (n == 0) return cudaSuccess;
  RopeKernel<T><<<Blocks(n, 256), 256, 0, stream>>>(q, k, positions, inv_freq, tokens, num_heads,
                                                    num_kv_heads, head_dim);
  return cudaGetLastError();
}

template <typename T>
cudaError_t SiluMul(const T* gate, const T* up, int rows, int dim, int in_stride, T* out,
                    cudaStream_t stream) {
  if (int64_t(rows) * dim == 0) return cudaSuccess;
  const bool vector =
      dim % 8 == 0 && in_stride % 8 == 0 && Aligned16(gate) && Aligned16(up) && Aligned16(out);
  const int64_t n = int64_t(rows) * (vector ? dim / 8 : dim);
  if (vector) {
    return LaunchAfterPrevious(SiluMulKernel<T, true>, dim3(Blocks(n, 256)), dim3(256), 0, stream,
                               gate, up, rows, dim, in_stride, out);
  }
  return LaunchAfterPrevious(SiluMulKernel<T, false>, dim3(Blocks(n, 256)), dim3(256), 0, stream,
                             gate, up, rows, dim, in_stride, out);
}

template <typename T>
cudaError_t EmbeddingGatherVocabSlice(const T* table, const int32_t* ids, int tokens, int hidden,
                                      int vocab_begin, int vocab_end, T* out, cudaStream_t stream) {
  if (hidden % 8 != 0) return cudaErrorInvalidValue;
  const int64_t n = int64_t(tokens) * (hidden / 8);
  if (n == 0) return cudaSuccess;
  EmbeddingKernel<T>
      <<<Blocks(n, 256), 256, 0, stream>>>(table, ids, tokens, hidden, vocab_begin, vocab_end, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t EmbeddingGather(const T* table, const int32_t* ids, int tokens, int hidden, T* out,
                            cudaStream_t stream) {
  return EmbeddingGatherVocabSlice(table, ids, tokens, hidden, 0, INT32_MAX, out, stream);
}

cudaError_t CheckKernelsRunHere() {
  cudaFuncAttributes attributes;
  return cudaFuncGetAttributes(&attributes, EmbeddingKernel<__nv_bfloat16>);
}

template <typename T>
cudaError_t FillUniform(T* p, size_t n, float lo, float hi, uint64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const unsigned blocks = unsigned(std::min<size_t>((n + 255) / 256, 65536));
  FillUniformKernel<T><<<blocks, 256, 0, stream>>>(p, n, lo, hi, seed);
  return cudaGetLastError();
}

#define GQA_INSTANTIATE(T)                                                                        \
  template cudaError_t AddRmsNorm<T>(const T*, T*, const T*, int, int, float, T*, cudaStream_t);  \
  template cudaError_t ApplyRope<T>(T*, T*, const int32_t*, const float*, int, int, int, int,     \
                                    cudaStream_t);                                                \
  template cudaError_t SiluMul<T>(const T*, const T*, int, int, int, T*, cudaStream_t);           \
  template cudaError_t EmbeddingGather<T>(const T*, const int32_t*, int, int, T*, cudaStream_t);  \
  template cudaError_t EmbeddingGatherVocabSlice<T>(const T*, const int32_t*, int, int, int, int, \
                                                    T*, cudaStream_t);                            \
  template cudaError_t FillUniform<T>(T*, size_t, float, float, uint64_t, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16)
GQA_INSTANTIATE(__half)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
