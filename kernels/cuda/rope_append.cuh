// The rotary embedding of one rotation pair and where a Q|K|V pair goes, shared by QkvRopeAppend
// (qkv_rope_append.cu) and the skinny QKV product's epilogue (skinny_gemm_rope.cu), so that both
// compute the same bits.
#pragma once

#include <cstdint>

#include "gqa/kernels/paged_kv.h"
#include "vec.cuh"

namespace gqa::kernels::cuda {

// The sine and cosine of the angle position * inv_freq.
__device__ __forceinline__ void RotationOf(int32_t position, float inv_freq, float* sin_a,
                                           float* cos_a) {
  sincosf(float(position) * inv_freq, sin_a, cos_a);  // precise: large angles
}

// (x1, x2) rotated by an angle of that sine and cosine, with the roundings spelled out so every
// caller computes the same bits.
__device__ __forceinline__ void Rotate(float& x1, float& x2, float sin_a, float cos_a) {
  const float r1 = __fmaf_rn(x1, cos_a, -__fmul_rn(x2, sin_a));
  const float r2 = __fmaf_rn(x2, cos_a, __fmul_rn(x1, sin_a));
  x1 = r1;
  x2 = r2;
}

// (x1, x2) rotated by position * inv_freq (rotate-half RoPE, as ApplyRope).
__device__ __forceinline__ void RotatePair(float& x1, float& x2, int32_t position, float inv_freq) {
  float sin_a, cos_a;
  RotationOf(position, inv_freq, &sin_a, &cos_a);
  Rotate(x1, x2, sin_a, cos_a);
}

// A value as the cache stores it: T, or an E4M3 byte of value / scale.
template <typename T, typename KV>
__device__ __forceinline__ void StoreKv(KV* dst, float value, const float* scales, int kv_head) {
  if constexpr (sizeof(KV) == 1) {
    const float scale = scales ? scales[kv_head] : 1.0f;
    *reinterpret_cast<uint8_t*>(dst) = QuantizeE4M3(value, scale);
  } else {
    *dst = FromFloat<T>(value);
  }
}

// Elements pair and pair + head_dim / 2 of head `head` of one token's Q|K|V row (query heads,
// then key heads, then value heads), already rotated: a query pair to q_row ([num_heads,
// head_dim]), a key or value pair to the token's cache slot (slot < 0: padding, skipped).
template <typename T, typename KV>
__device__ __forceinline__ void StoreQkvPair(int head, int pair, float x1, float x2, int num_heads,
                                             T* q_row, int64_t slot, const PagedKvView<KV>& cache) {
  const int d = cache.head_dim, half = d / 2, kv_heads = cache.num_kv_heads;
  if (head < num_heads) {
    T* dst = q_row + size_t(head) * d;
    dst[pair] = FromFloat<T>(x1);
    dst[pair + half] = FromFloat<T>(x2);
    return;
  }
  if (slot < 0) return;  // padding
  const bool is_key = head < num_heads + kv_heads;
  const int kv_head = is_key ? head - num_heads : head - num_heads - kv_heads;
  KV* dst = (is_key ? cache.k : cache.v) + cache.Offset(slot, kv_head);
  const float* scales = is_key ? cache.k_scale : cache.v_scale;
  StoreKv<T>(dst + pair, x1, scales, kv_head);
  StoreKv<T>(dst + pair + half, x2, scales, kv_head);
}

}  // namespace gqa::kernels::cuda
