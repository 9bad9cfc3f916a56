// Helpers shared by the CUDA kernel tests: device buffers, dtype conversion, GPU detection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
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

// Block tables for sequences of the given lengths: shuffled block ids drawn from a pool twice
// as large as needed, so no table is contiguous. [num_seqs, max_blocks], unused entries 0.
struct ShuffledTables {
  std::vector<int32_t> tables;
  int max_blocks = 0;
  int pool_blocks = 0;
};

inline ShuffledTables MakeShuffledTables(const std::vector<int32_t>& lens, int block_size) {
  ShuffledTables t;
  int total = 0;
  for (int len : lens) {
    total += (len + block_size - 1) / block_size;
    t.max_blocks = std::max(t.max_blocks, (len + block_size - 1) / block_size);
  }
  t.pool_blocks = 2 * total;
  std::vector<int32_t> ids(t.pool_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), Rng());
  t.tables.assign(lens.size() * t.max_blocks, 0);
  for (size_t s = 0, next = 0; s < lens.size(); ++s) {
    for (int b = 0; b < (lens[s] + block_size - 1) / block_size; ++b) {
      t.tables[s * t.max_blocks + b] = ids[next++];
    }
  }
  return t;
}

}  // namespace gqa::kernels::cuda
