// The skinny Q|K|V product with RoPE and the KV append in its epilogue: see skinny_gemm_cuda.h
// (SkinnyGemmRopeAppend) and the kernel in skinny_gemm.cuh. The epilogue computes what
// qkv_rope_append.cu computes from the product stored in T.
#include "rope_append.cuh"
#include "skinny_gemm.cuh"

namespace gqa::kernels::cuda {
namespace {

using skinny::kRowsPerWarp;

// Warp i computes rotation pair i: rows (head d + p, head d + p + d / 2) for head = i / (d / 2),
// p = i % (d / 2), over the query heads, then the key heads, then the value heads.
template <typename T, typename KV>
struct RopeAppendEpilogue {
  const T* bias;  // [n] or nullptr
  int n;
  SkinnyRopeAppend<T, KV> rope;

  __device__ __forceinline__ void Rows(int warp_index, int (&rows)[kRowsPerWarp]) const {
    const int half = rope.cache.head_dim / 2;
    const int head = warp_index / half, pair = warp_index % half;
    rows[0] = head * rope.cache.head_dim + pair;
    rows[1] = rows[0] + half;
  }

  template <int M>
  __device__ __forceinline__ void Store(const int (&rows)[kRowsPerWarp], int m,
                                        const float (&acc)[kRowsPerWarp][M]) const {
    if (threadIdx.x % 32 != 0 || rows[0] >= n) return;
    const int d = rope.cache.head_dim, kv_heads = rope.cache.num_kv_heads;
    const int head = rows[0] / d, pair = rows[0] % d;
    const float b1 = bias ? ToFloat(bias[rows[0]]) : 0.0f;
    const float b2 = bias ? ToFloat(bias[rows[1]]) : 0.0f;
#pragma unroll
    for (int t = 0; t < M; ++t) {
      if (t >= m) continue;
      // The product as QkvRopeAppend reads it: stored in T.
      float x1 = ToFloat(FromFloat<T>(acc[0][t] + b1));
      float x2 = ToFloat(FromFloat<T>(acc[1][t] + b2));
      if (head < rope.num_heads + kv_heads) {
        RotatePair(x1, x2, rope.positions[t], rope.inv_freq[pair]);
      }
      StoreQkvPair<T>(head, pair, x1, x2, rope.num_heads,
                      rope.q_out + size_t(t) * rope.num_heads * d, rope.slots[t], rope.cache);
    }
  }
};

}  // namespace

template <typename T, typename KV>
cudaError_t SkinnyGemmRopeAppend(const T* input, int input_stride, const SkinnyNorm<T>& norm,
                                 const T* w, const T* bias, int m, int n, int k,
                                 const SkinnyRopeAppend<T, KV>& rope, cudaStream_t stream) {
  const int d = rope.cache.head_dim;
  if (d <= 0 || d % 2 != 0 || n != (rope.num_heads + 2 * rope.cache.num_kv_heads) * d) {
    return cudaErrorInvalidValue;
  }
  const skinny::Input<T> in{input, input_stride, SkinnyInput::kPlain, norm};
  return skinny::Dispatch(in, w, m, n, k, RopeAppendEpilogue<T, KV>{bias, n, rope}, n / 2, stream);
}

#define GQA_INSTANTIATE(T, KV)                                                                    \
  template cudaError_t SkinnyGemmRopeAppend<T, KV>(const T*, int, const SkinnyNorm<T>&, const T*, \
                                                   const T*, int, int, int,                       \
                                                   const SkinnyRopeAppend<T, KV>&, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__nv_bfloat16, __nv_fp8_e4m3)
GQA_INSTANTIATE(__half, __nv_fp8_e4m3)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
