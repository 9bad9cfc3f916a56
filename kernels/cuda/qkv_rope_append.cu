// The fused QKV projection's split: rotary embedding of the query and key heads, the queries
// into their own buffer, the keys and values into their slots of the paged cache. One pass over
// the projection instead of a rope pass and an append pass.
#include <cstdint>
#include <type_traits>

#include "gqa/kernels/paged_attention_cuda.h"
#include "pdl.cuh"
#include "rope_append.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

constexpr int kThreads = 128;

// kPairs consecutive rotation pairs of one head's row: (x1[k], x2[k]) = (row[p0 + k],
// row[p0 + k + half]), read 2 kPairs bytes at a time.
template <typename T, int kPairs>
struct PairRun {
  static_assert(kPairs == 1 || kPairs == 4, "one value, or 4 in 8 bytes");
  float x1[kPairs], x2[kPairs];

  __device__ void Load(const T* row, int p0, int half) {
    using Raw = std::conditional_t<kPairs == 4, uint2, T>;
    const Raw a = *reinterpret_cast<const Raw*>(row + p0);
    const Raw b = *reinterpret_cast<const Raw*>(row + p0 + half);
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      x1[k] = ToFloat(reinterpret_cast<const T*>(&a)[k]);
      x2[k] = ToFloat(reinterpret_cast<const T*>(&b)[k]);
    }
  }
};

// One block per token: the rotations of its position once into shared memory ([2, half]
// floats), then runs of kPairs rotation pairs over query heads, then key heads, then value heads.
template <typename T, typename KV, int kPairs>
__global__ void __launch_bounds__(kThreads)
    QkvRopeAppendKernel(const T* qkv, const int32_t* positions, const float* inv_freq,
                        const int64_t* slots, int num_heads, T* q_out, PagedKvView<KV> cache) {
  extern __shared__ float rotation[];  // sin [half], cos [half]
  WaitForPrevious();                   // qkv comes from the projection before
  AllowNext();
  const int token = blockIdx.x;
  const int d = cache.head_dim, half = d / 2, kv_heads = cache.num_kv_heads;
  const int heads = num_heads + 2 * kv_heads;
  for (int p = threadIdx.x; p < half; p += kThreads) {
    RotationOf(positions[token], inv_freq[p], &rotation[p], &rotation[half + p]);
  }
  __syncthreads();
  const T* row = qkv + size_t(token) * heads * d;
  T* q_row = q_out + size_t(token) * num_heads * d;
  const int64_t slot = slots[token];
  const int runs_per_head = half / kPairs;
  for (int r = threadIdx.x; r < heads * runs_per_head; r += kThreads) {
    const int head = r / runs_per_head, p0 = r % runs_per_head * kPairs;
    PairRun<T, kPairs> run;
    run.Load(row + size_t(head) * d, p0, half);
    const bool rotates = head < num_heads + kv_heads;
#pragma unroll
    for (int k = 0; k < kPairs; ++k) {
      if (rotates) Rotate(run.x1[k], run.x2[k], rotation[p0 + k], rotation[half + p0 + k]);
      StoreQkvPair<T>(head, p0 + k, run.x1[k], run.x2[k], num_heads, q_row, slot, cache);
    }
  }
}

template <typename T, typename KV, int kPairs>
cudaError_t Launch(const T* qkv, const int32_t* positions, const float* inv_freq,
                   const int64_t* slots, int num_tokens, int num_heads, T* q_out,
                   const PagedKvView<KV>& cache, cudaStream_t stream) {
  const size_t smem = size_t(cache.head_dim) * sizeof(float);
  return LaunchAfterPrevious(QkvRopeAppendKernel<T, KV, kPairs>, dim3(unsigned(num_tokens)),
                             dim3(kThreads), smem, stream, qkv, positions, inv_freq, slots,
                             num_heads, q_out, cache);
}

}  // namespace

template <typename T, typename KV>
cudaError_t QkvRopeAppend(const T* qkv, const int32_t* positions, const float* inv_freq,
                          const int64_t* slots, int num_tokens, int num_heads, T* q_out,
                          const PagedKvView<KV>& cache, cudaStream_t stream) {
  if (cache.head_dim % 2 != 0 || cache.head_dim > 1024) return cudaErrorInvalidValue;
  if (num_tokens <= 0) return cudaSuccess;
  // Runs of 4 pairs: 8-byte reads where the half head and the rows keep them aligned.
  const bool runs_of_4 = cache.head_dim % 8 == 0 && reinterpret_cast<uintptr_t>(qkv) % 8 == 0;
  return runs_of_4 ? Launch<T, KV, 4>(qkv, positions, inv_freq, slots, num_tokens, num_heads, q_out,
                                      cache, stream)
                   : Launch<T, KV, 1>(qkv, positions, inv_freq, slots, num_tokens, num_heads, q_out,
                                      cache, stream);
}

#define GQA_INSTANTIATE(T, KV)                                                                    \
  template cudaError_t QkvRopeAppend<T, KV>(const T*, const int32_t*, const float*,               \
                                            const int64_t*, int, int, T*, const PagedKvView<KV>&, \
                                            cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__nv_bfloat16, __nv_fp8_e4m3)
GQA_INSTANTIATE(__half, __nv_fp8_e4m3)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
