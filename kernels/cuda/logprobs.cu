// Logprobs on the GPU: one block per query. See sampling_cuda.h for the rule.
//
// The row's maximum, then the sum of exp(logit - max), each reduced per thread over a fixed
// stride and then across the block in a fixed order, so the log-sum-exp is the same on every
// run. The top k: each thread keeps its own k largest 64-bit keys, (orderable logit bits << 32)
// | ~id ("larger" = more likely, lower id on equal logits), then k rounds of a block-wide maximum
// over the threads' next candidates pick them in order.
#include <cfloat>
#include <cstdint>

#include "gqa/kernels/sampling_cuda.h"

namespace gqa::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

__device__ __forceinline__ uint64_t LogitKey(float logit, int id) {
  uint32_t bits = __float_as_uint(logit + 0.0f);  // -0 becomes +0: equal logits, equal keys
  bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // order-preserving
  return (uint64_t(bits) << 32) | (0xffffffffu - uint32_t(id));
}

__device__ __forceinline__ int KeyId(uint64_t key) {
  return int(0xffffffffu - uint32_t(key & 0xffffffffu));
}

// Block-wide reduction with `op`, in a fixed order; scratch holds kWarps entries.
template <typename V, typename Op>
__device__ V BlockReduce(V v, Op op, V* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  V total = scratch[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) total = op(total, scratch[w]);
  __syncthreads();
  return total;
}

struct MaxOp {
  template <typename V>
  __device__ V operator()(V a, V b) const {
    return a > b ? a : b;
  }
};
struct SumOp {
  __device__ float operator()(float a, float b) const { return a + b; }
};

__global__ void __launch_bounds__(kThreads)
    LogprobsKernel(const float* __restrict__ logits,  // [rows, vocab]
                   const LogprobsQuery* __restrict__ queries, int vocab,
                   LogprobsResult* __restrict__ results) {
  __shared__ float f_scratch[kWarps];
  __shared__ uint64_t k_scratch[kWarps];
  const LogprobsQuery query = queries[blockIdx.x];
  const float* row = logits + size_t(query.row) * vocab;

  float local_max = -FLT_MAX;
  for (int i = threadIdx.x; i < vocab; i += kThreads) local_max = fmaxf(local_max, row[i]);
  const float max_logit = BlockReduce(local_max, MaxOp{}, f_scratch);
  float local_sum = 0.0f;
  for (int i = threadIdx.x; i < vocab; i += kThreads) local_sum += __expf(row[i] - max_logit);
  const float log_sum_exp = max_logit + logf(BlockReduce(local_sum, SumOp{}, f_scratch));

  const int k = min(max(query.top_k, 0), min(kMaxLogprobsTopK, vocab));
  uint64_t mine[kMaxLogprobsTopK];  // this thread's k largest keys, largest first
  int held = 0;
  if (k > 0) {
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      const uint64_t key = LogitKey(row[i], i);
      if (held == k && key <= mine[k - 1]) continue;
      int slot = held < k ? held++ : k - 1;
      while (slot > 0 && mine[slot - 1] < key) {
        mine[slot] = mine[slot - 1];
        --slot;
      }
      mine[slot] = key;
    }
  }
  LogprobsResult* out = results + blockIdx.x;
  int next = 0;
  for (int r = 0; r < k; ++r) {
    const uint64_t candidate = next < held ? mine[next] : 0;
    const uint64_t best = BlockReduce(candidate, MaxOp{}, k_scratch);
    if (candidate == best && next < held) ++next;  // keys are unique: one thread owns it
    if (threadIdx.x == 0) {
      const int id = KeyId(best);
      out->top_ids[r] = id;
      out->top_logprobs[r] = row[id] - log_sum_exp;
    }
  }
  if (threadIdx.x == 0) {
    out->top_k = k;
    out->token_logprob = row[query.token] - log_sum_exp;
  }
}

}  // namespace

cudaError_t ComputeLogprobs(const float* logits, const LogprobsQuery* queries, int num_queries,
                            int vocab, LogprobsResult* results, cudaStream_t stream) {
  if (num_queries == 0) return cudaSuccess;
  LogprobsKernel<<<num_queries, kThreads, 0, stream>>>(logits, queries, vocab, results);
  return cudaGetLastError();
}

}  // namespace gqa::kernels::cuda
