// Token sampling on the GPU: one block per row. See sampling_cuda.h for the rule.
//
// Each token gets a 64-bit key, (orderable logit bits << 32) | ~id, so "larger key" means "more
// likely, and lower id on equal logits". Every cutoff is a weighted radix select over the keys,
// eight passes of 8-bit digits from the top: top-k selects the k-th key by count, top-p the key
// at which the running mass (most likely first) reaches top_p of the total, and the draw the key
// at which it reaches u times the kept mass. Weights are exp((logit - max) / temperature) in
// fixed point, summed with integer atomics, so the answer does not depend on thread timing.
#include <cfloat>
#include <cstdint>

#include "gqa/kernels/sampling_cuda.h"

namespace gqa::kernels::cuda {
namespace {

constexpr int kThreads = 1024;
constexpr float kFixedOne = 4294967296.0f;  // weight 1.0 in fixed point (2^32)

__device__ __forceinline__ uint64_t Key(float logit, int id) {
  uint32_t bits = __float_as_uint(logit);
  bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // order-preserving
  return (uint64_t(bits) << 32) | (0xffffffffu - uint32_t(id));
}

// Block-wide maximum; `lowest` is the identity, scratch holds 32 entries.
template <typename V>
__device__ V BlockMax(V v, V lowest, V* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? scratch[threadIdx.x] : lowest;
  if (threadIdx.x < 32) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
    if (threadIdx.x == 0) scratch[0] = v;
  }
  __syncthreads();
  v = scratch[0];
  __syncthreads();
  return v;
}

struct RowView {
  const float* logits;
  int vocab;
  float max_logit;
  float inv_temperature;
  uint64_t floor_key;  // tokens with smaller keys are cut off (0: none)

  __device__ uint64_t Weight(int i, bool count_only) const {
    if (count_only) return 1;
    return uint64_t(__expf((logits[i] - max_logit) * inv_temperature) * kFixedOne);
  }
};

// The key at which the running weight, most likely first, reaches `target` (>= 1), among keys
// >= row.floor_key. *before receives the weight of the larger keys.
__device__ uint64_t SelectByWeight(const RowView& row, uint64_t target, bool count_only,
                                   unsigned long long* hist,  // smem [256]
                                   uint64_t* before) {
  __shared__ uint64_t s_prefix, s_remaining, s_before;
  uint64_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) s_before = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
      const uint64_t key = Key(row.logits[i], i);
      if (key < row.floor_key || (key & mask) != prefix) continue;
      const uint64_t w = row.Weight(i, count_only);
      if (w) atomicAdd(&hist[(key >> shift) & 255], (unsigned long long)w);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t cumulative = 0;
      int digit = 0;
      for (int b = 255; b >= 0; --b) {
        if (cumulative + hist[b] >= target) {
          digit = b;
          break;
        }
        cumulative += hist[b];
      }
      s_prefix = prefix | (uint64_t(digit) << shift);
      s_remaining = target - cumulative;
      s_before += cumulative;
    }
    __syncthreads();
    prefix = s_prefix;
    target = s_remaining;
    mask |= uint64_t(255) << shift;
  }
  *before = s_before;
  __syncthreads();
  return prefix;
}

// Total weight of keys >= row.floor_key.
__device__ uint64_t TotalWeight(const RowView& row, unsigned long long* scratch) {
  if (threadIdx.x == 0) *scratch = 0;
  __syncthreads();
  unsigned long long local = 0;
  for (int i = threadIdx.x; i < row.vocab; i += blockDim.x) {
    if (Key(row.logits[i], i) >= row.floor_key) local += row.Weight(i, false);
  }
  atomicAdd(scratch, local);
  __syncthreads();
  const uint64_t total = *scratch;
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(kThreads)
    SampleKernel(const float* logits, const SamplingRow* params, int vocab, int32_t* tokens) {
  __shared__ unsigned long long hist[256];
  __shared__ float fscratch[32];
  __shared__ uint64_t kscratch[32];
  const SamplingRow p = params[blockIdx.x];
  RowView row{logits + size_t(blockIdx.x) * vocab, vocab, 0.0f, 0.0f, 0};
  uint64_t best = 0;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) best = max(best, Key(row.logits[i], i));
  best = BlockMax<uint64_t>(best, 0, kscratch);
  if (p.temperature <= 0.0f || p.top_k == 1) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = int32_t(0xffffffffu - uint32_t(best));
    return;
  }
  float local_max = -FLT_MAX;
  for (int i = threadIdx.x; i < vocab; i += blockDim.x) local_max = fmaxf(local_max, row.logits[i]);
  row.max_logit = BlockMax<float>(local_max, -FLT_MAX, fscratch);
  row.inv_temperature = 1.0f / p.temperature;
  uint64_t unused;
  if (p.top_k > 0 && p.top_k < vocab) {
    row.floor_key = SelectByWeight(row, uint64_t(p.top_k), true, hist, &unused);
  }
  if (p.top_p > 0.0f && p.top_p < 1.0f) {
    const uint64_t total = TotalWeight(row, hist);
    const uint64_t wanted = uint64_t(ceil(double(p.top_p) * double(total)));
    const uint64_t target = wanted > 0 ? wanted : 1;
    row.floor_key = SelectByWeight(row, target, false, hist, &unused);
  }
  const uint64_t kept = TotalWeight(row, hist);
  const uint64_t draw = uint64_t(UniformForStep(p.seed, p.step) * double(kept)) + 1;
  const uint64_t target = draw < kept ? draw : kept;
  const uint64_t key = SelectByWeight(row, target, false, hist, &unused);
  if (threadIdx.x == 0) tokens[blockIdx.x] = int32_t(0xffffffffu - uint32_t(key));
}

}  // namespace

cudaError_t SampleTokens(const float* logits, const SamplingRow* params, int rows, int vocab,
                         int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  SampleKernel<<<rows, kThreads, 0, stream>>>(logits, params, vocab, tokens);
  return cudaGetLastError();
}

}  // namespace gqa::kernels::cuda
