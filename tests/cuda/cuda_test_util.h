// Helpers shared by the CUDA kernel tests: device buffers, dtype conversion, GPU detection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace gqa::kernels::cuda {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << cudaGetErrorString(cudaGetLastError())

inline bool HaveGpu() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

#define REQUIRE_GPU() \
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device on this machine: GPU test skipped"

template <typename T>
T ToT(float x);
template <>
inline __nv_bfloat16 ToT(float x) {
  return __float2bfloat16_rn(x);
}
template <>
inline __half ToT(float x) {
  return __float2half_rn(x);
}
template <typename T>
float ToFloat(T x) {
  return static_cast<float>(x);
}

template <typename T>
double Tolerance();
template <>
inline double Tolerance<__nv_bfloat16>() {
  return 1e-2;
}
template <>
inline double Tolerance<__half>() {
  return 2e-3;
}

inline std::mt19937& Rng() {
  static std::mt19937 rng(std::random_device{}());
  return rng;
}

// A device buffer freed on scope exit.
template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(size_t n) : size(n) {
    cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T));
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  void Upload(const std::vector<T>& host) {
    cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice);
  }
  std::vector<T> Download() const {
    std::vector<T> host(size);
    cudaMemcpy(host.data(), ptr, size * sizeof(T), cudaMemcpyDeviceToHost);
    return host;
  }
  T* ptr = nullptr;
  size_t size;
};

// Relative L2 error ||out - ref|| / ||ref||; NaN when any output is not finite.
template <typename T>
double RelativeError(const std::vector<T>& out, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double o = ToFloat(out[i]);
    if (!std::isfinite(o)) return NAN;
    num += (o - ref[i]) * (o - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

template <typename T>
std::vector<T> RandomVector(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = ToT<T>(normal(Rng()));
  return v;
}

template <typename T>
std::vector<float> ToFloats(const std::vector<T>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = ToFloat(v[i]);
  return f;
}

}  // namespace gqa::kernels::cuda
