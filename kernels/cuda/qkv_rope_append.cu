// The fused QKV projection's split: rotary embedding of the query and key heads, the queries
// into their own buffer, the keys and values into their slots of the paged cache. One pass over
// the projection instead of a rope pass and an append pass.
#include <cstdint>

#include "gqa/kernels/paged_attention_cuda.h"
#include "pdl.cuh"
#include "rope_append.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

// One thread per (token, head, rotation pair) over query heads, then key heads, then value heads.
template <typename T, typename KV>
__global__ void QkvRopeAppendKernel(const T* qkv, const int32_t* positions, const float* inv_freq,
                                    const int64_t* slots, int tokens, int num_heads, T* q_out,
                                    PagedKvView<KV> cache) {
  WaitForPrevious();  // qkv comes from the projection before
  AllowNext();
  const int d = cache.head_dim, half = d / 2, kv_heads = cache.num_kv_heads;
  const int heads = num_heads + 2 * kv_heads;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(tokens) * heads * half) return;
  const int pair = int(i % half);
  const int head = int((i / half) % heads);
  const int token = int(i / (int64_t(half) * heads));
  const T* in = qkv + (size_t(token) * heads + head) * d;
  float x1 = ToFloat(in[pair]), x2 = ToFloat(in[pair + half]);
  if (head < num_heads + kv_heads) RotatePair(x1, x2, positions[token], inv_freq[pair]);
  StoreQkvPair<T>(head, pair, x1, x2, num_heads, q_out + size_t(token) * num_heads * d,
                  slots[token], cache);
}

}  // namespace

template <typename T, typename KV>
cudaError_t QkvRopeAppend(const T* qkv, const int32_t* positions, const float* inv_freq,
                          const int64_t* slots, int num_tokens, int num_heads, T* q_out,
                          const PagedKvView<KV>& cache, cudaStream_t stream) {
  if (cache.head_dim % 2 != 0) return cudaErrorInvalidValue;
  const int64_t n =
      int64_t(num_tokens) * (num_heads + 2 * cache.num_kv_heads) * (cache.head_dim / 2);
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  return LaunchAfterPrevious(QkvRopeAppendKernel<T, KV>,
                             dim3(unsigned((n + threads - 1) / threads)), dim3(threads), 0, stream,
                             qkv, positions, inv_freq, slots, num_tokens, num_heads, q_out, cache);
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
