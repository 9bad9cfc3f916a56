// Conversions and 8-element (16-byte) vectors of bf16 / fp16 for the CUDA kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace gqa::kernels::cuda {

__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float x) {
  return __float2half_rn(x);
}
template <>  // an fp32 output (logits) of a kernel templated on its output type
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}

// x / scale as an E4M3 byte: round to nearest even, +-448 for anything beyond (an infinity
// included), NaN only from NaN (gqa/kernels/fp8_e4m3.h is the host reference).
__device__ __forceinline__ uint8_t QuantizeE4M3(float x, float scale) {
  return __nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE, __NV_E4M3);
}

// Eight T in one 16-byte register group. Load/Store need 16-byte aligned addresses.
template <typename T>
struct Vec8 {
  uint4 raw;
  __device__ __forceinline__ static Vec8 Load(const T* p) {
    return Vec8{*reinterpret_cast<const uint4*>(p)};
  }
  __device__ __forceinline__ void Store(T* p) const { *reinterpret_cast<uint4*>(p) = raw; }
  __device__ __forceinline__ float Get(int i) const {
    return ToFloat(reinterpret_cast<const T*>(&raw)[i]);
  }
  __device__ __forceinline__ void Set(int i, float v) {
    reinterpret_cast<T*>(&raw)[i] = FromFloat<T>(v);
  }
};

}  // namespace gqa::kernels::cuda
