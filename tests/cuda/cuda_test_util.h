// Helpers shared by the CUDA kernel tests: device buffers, dtype conversion, GPU detection.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
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

// The tests' random source: seeded from $GQA_TEST_SEED to replay a failure, else at random;
// the seed is printed once so that any failure can be replayed.
inline std::mt19937& Rng() {
  static std::mt19937 rng([] {
    const char* env = std::getenv("GQA_TEST_SEED");
    const unsigned seed =
        env ? static_cast<unsigned>(std::strtoul(env, nullptr, 10)) : std::random_device{}();
    std::printf("random seed %u (replay with GQA_TEST_SEED=%u)\n", seed, seed);
    return seed;
  }());
  return rng;
}

// A device buffer freed on scope exit.
template <typename T>
struct DeviceBuffer {
  explicit DeviceBuffer(size_t n) : size(n) {
    Check(cudaMalloc(&ptr, std::max<size_t>(n, 1) * sizeof(T)), "cudaMalloc");
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  void Upload(const std::vector<T>& host) {
    Check(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  std::vector<T> Download() const {
    std::vector<T> host(size);
    Check(cudaMemcpy(host.data(), ptr, size * sizeof(T), cudaMemcpyDeviceToHost), "download");
    return host;
  }
  // A failed allocation or copy (or an earlier kernel's error it reports) fails the test.
  static void Check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) ADD_FAILURE() << "test buffer " << what << ": " << cudaGetErrorString(e);
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
