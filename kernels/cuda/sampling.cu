// Token sampling on the GPU: one block per row, launched to start while the kernel before it
// finishes (programmatic dependent launch). See sampling_cuda.h for the rule.
//
// Each token gets a 64-bit key, (orderable logit bits << 32) | ~id, so "larger key" means "more
// likely, and lower id on equal logits". Every cutoff is a weighted radix select over the keys,
// eight passes of 8-bit digits from the top: top-k selects the k-th key by count, top-p the key
// at which the running mass (most likely first) reaches top_p of the total, and the draw the key
// at which it reaches u times the kept mass. Weights are exp((logit - max) / temperature) in
// fixed point, summed with integer atomics, so the answer does not depend on thread timing.
//
// The selections run over a short candidate list instead of the vocabulary: one pass sums the
// weights and counts the tokens by power-of-two band (exactly, per thread then in a fixed order);
// every token whose weight reaches the lowest band the first cutoff needs (the top_k tokens, or
// the wanted mass) is a candidate (the tokens at or above a weight are a prefix of the key order,
// so each cutoff lies among them), and one more pass gathers them into shared memory. Where the
// cutoff reaches into the untracked bands or the candidates overflow the list, the selections
// run over the whole vocabulary as before; the answer is the same either way.
#include <cfloat>
#include <cstdint>

#include "gqa/kernels/sampling_cuda.h"
#include "pdl.cuh"

namespace gqa::kernels::cuda {
namespace {

constexpr int kThreads = 512;
constexpr float kFixedOne = 4294967296.0f;  // weight 1.0 in fixed point (2^32)
// The candidate list: keys of the tokens at or above the needed weight band (64 KB).
constexpr int kCandidateCapacity = 8192;
// Weight bands tracked one by one: [2^b, 2^(b + 1)) for b = kLowestBand .. 32 (the top token's
// weight is 2^32), i.e. down to 2^-15 of the top token's weight. Lighter tokens are one lump.
constexpr int kLowestBand = 17;
constexpr int kBands = 33 - kLowestBand;

__device__ __forceinline__ uint64_t Key(float logit, int id) {
  uint32_t bits = __float_as_uint(logit);
  bits = (bits & 0x80000000u) ? ~bits : bits | 0x80000000u;  // order-preserving
  return (uint64_t(bits) << 32) | (0xffffffffu - uint32_t(id));
}
// The logit and the token id a key was made of.
__device__ __forceinline__ float LogitOf(uint64_t key) {
  const uint32_t bits = uint32_t(key >> 32);
  return __uint_as_float((bits & 0x80000000u) ? bits & 0x7fffffffu : ~bits);
}
__device__ __forceinline__ int32_t IdOf(uint64_t key) {
  return int32_t(0xffffffffu - uint32_t(key));
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

// The keys the selections run over: the whole vocabulary of a row, or the candidate list.
struct VocabularyKeys {
  const float* logits;  // [vocab]
  int vocab;
  int first_id = 0;  // the token id of logits[0] (a tensor-parallel rank's vocabulary slice)
  __device__ uint64_t key(int i) const { return Key(logits[i], first_id + i); }
  // The row as `head()` logits before its first 16-byte boundary (0-3), quads() float4s from
  // there (body()), then vocab - tail() logits (0-3).
  __device__ int head() const {
    const int misaligned = int(reinterpret_cast<uintptr_t>(logits) % 16) / 4;
    return min(vocab, (4 - misaligned) % 4);
  }
  __device__ int quads() const { return (vocab - head()) / 4; }
  __device__ int tail() const { return head() + 4 * quads(); }
  __device__ const float4* body() const { return reinterpret_cast<const float4*>(logits + head()); }
};
struct CandidateKeys {
  const uint64_t* keys;  // shared memory [count]
  int count;
  __device__ int size() const { return count; }
  __device__ uint64_t key(int i) const { return keys[i]; }
};

// Calls f(key) once for every key, each thread for its share, in no particular order: every
// caller reduces with a maximum or exact integer sums, which do not depend on it. Over the
// vocabulary, each thread keeps kLoadsInFlight 16-byte loads in flight (a scalar loop keeps one
// 4-byte load per thread waiting on DRAM: one block per row then reads at ~10 GB/s).
constexpr int kLoadsInFlight = 4;

template <typename F>
__device__ __forceinline__ void ForEachKey(const CandidateKeys& keys, F&& f) {
  for (int i = threadIdx.x; i < keys.size(); i += blockDim.x) f(keys.key(i));
}

template <typename F>
__device__ __forceinline__ void ForEachKey(const VocabularyKeys& keys, F&& f) {
  const int head = keys.head(), quads = keys.quads(), tail = keys.tail();
  if (int(threadIdx.x) < head) f(keys.key(threadIdx.x));
  if (int(threadIdx.x) < keys.vocab - tail) f(keys.key(tail + threadIdx.x));
  const float4* body = keys.body();  // [quads]
  const auto four = [&](const float4& x, int q) {
    const int id = keys.first_id + head + 4 * q;
    f(Key(x.x, id));
    f(Key(x.y, id + 1));
    f(Key(x.z, id + 2));
    f(Key(x.w, id + 3));
  };
  const int stride = blockDim.x;
  int q = threadIdx.x;
  for (; q + (kLoadsInFlight - 1) * stride < quads; q += kLoadsInFlight * stride) {
    float4 x[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) x[u] = __ldg(body + q + u * stride);
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) four(x[u], q + u * stride);
  }
  for (; q < quads; q += stride) four(__ldg(body + q), q);
}

struct RowView {
  float max_logit;
  float inv_temperature;
  uint64_t floor_key;  // tokens with smaller keys are cut off (0: none)

  __device__ uint64_t Weight(uint64_t key, bool count_only) const {
    if (count_only) return 1;
    return uint64_t(__expf((LogitOf(key) - max_logit) * inv_temperature) * kFixedOne);
  }
};

constexpr int kWarps = kThreads / 32;

// The digit (0-255) at which the running weight over `hist`'s bins, from bin 255 down, reaches
// `target`, and the weight of the bins above it; digit 0 and the whole weight if none does.
// Warp 0: each lane sums 8 bins, a scan over the lanes finds the lane the target falls in, and
// that lane walks its own bins.
__device__ void FindDigit(const unsigned long long* hist, uint64_t target, int* digit,
                          uint64_t* above) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x;
  uint64_t bins[8], lane_weight = 0;  // bins 255 - 8 lane - i, most likely first
#pragma unroll
  for (int i = 0; i < 8; ++i) lane_weight += bins[i] = hist[255 - 8 * lane - i];
  uint64_t through = lane_weight;  // the weight of lanes 0..lane
#pragma unroll
  for (int o = 1; o < 32; o *= 2) {
    const uint64_t v = __shfl_up_sync(0xffffffffu, through, o);
    if (lane >= o) through += v;
  }
  const unsigned reached = __ballot_sync(0xffffffffu, through >= target);
  if (lane != (reached ? __ffs(reached) - 1 : 31)) return;
  uint64_t cumulative = through - lane_weight;
  int found = 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    if (cumulative + bins[i] >= target) {
      found = 255 - 8 * lane - i;
      break;
    }
    cumulative += bins[i];
  }
  *digit = found;
  *above = cumulative;
}

// The key at which the running weight, most likely first, reaches `target` (>= 1), among keys
// >= row.floor_key. Eight passes of one 8-bit digit: each warp fills its own histogram (the
// candidates of a row share their top digits, so one shared histogram serialised every
// thread's atomics on a bin or two), the warps' copies are summed into the first.
template <typename Keys>
__device__ uint64_t SelectByWeight(const Keys& keys, const RowView& row, uint64_t target,
                                   bool count_only,
                                   unsigned long long* hist) {  // smem [kWarps][256]
  __shared__ int s_digit;
  __shared__ uint64_t s_above;
  unsigned long long* warp_hist = hist + (threadIdx.x / 32) * 256;
  uint64_t prefix = 0, mask = 0;
  for (int shift = 56; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kWarps * 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    ForEachKey(keys, [&](uint64_t key) {
      if (key < row.floor_key || (key & mask) != prefix) return;
      const uint64_t w = row.Weight(key, count_only);
      if (w) atomicAdd(&warp_hist[(key >> shift) & 255], (unsigned long long)w);
    });
    __syncthreads();
    for (int b = threadIdx.x; b < 256; b += blockDim.x) {
      unsigned long long sum = 0;
      for (int w = 0; w < kWarps; ++w) sum += hist[w * 256 + b];
      hist[b] = sum;
    }
    __syncthreads();
    FindDigit(hist, target, &s_digit, &s_above);
    __syncthreads();
    prefix |= uint64_t(s_digit) << shift;
    target -= s_above;
    mask |= uint64_t(255) << shift;
  }
  __syncthreads();
  return prefix;
}

// Total weight of keys >= row.floor_key.
template <typename Keys>
__device__ uint64_t TotalWeight(const Keys& keys, const RowView& row, unsigned long long* scratch) {
  if (threadIdx.x == 0) *scratch = 0;
  __syncthreads();
  unsigned long long local = 0;
  ForEachKey(keys, [&](uint64_t key) {
    if (key >= row.floor_key) local += row.Weight(key, false);
  });
  atomicAdd(scratch, local);
  __syncthreads();
  const uint64_t total = *scratch;
  __syncthreads();
  return total;
}

// The top-k cutoff (top_k > 0), the top-p cutoff (if any), then the draw, over `keys`. `total`:
// the weight of every key when the caller knows it, else 0.
template <typename Keys>
__device__ uint64_t CutAndDraw(const Keys& keys, RowView row, int top_k, const SamplingRow& p,
                               unsigned long long* hist, uint64_t total = 0) {
  if (top_k > 0) row.floor_key = SelectByWeight(keys, row, uint64_t(top_k), true, hist);
  uint64_t kept = total > 0 && top_k == 0 ? total : TotalWeight(keys, row, hist);
  if (p.top_p > 0.0f && p.top_p < 1.0f) {
    const uint64_t wanted = uint64_t(ceil(double(p.top_p) * double(kept)));
    row.floor_key = SelectByWeight(keys, row, wanted > 0 ? wanted : 1, false, hist);
    kept = TotalWeight(keys, row, hist);
  }
  const uint64_t draw = uint64_t(UniformForStep(p.seed, p.step) * double(kept)) + 1;
  return SelectByWeight(keys, row, draw < kept ? draw : kept, false, hist);
}

// The row's total weight, and its weight and number of tokens per tracked band (band_mass[b],
// band_count[b]: band kLowestBand + b), each thread summing its own tokens, then the warps' sums
// in a fixed order: exact integers.
__device__ uint64_t BandMasses(const VocabularyKeys& keys, const RowView& row,
                               uint64_t* band_mass,      // smem [kBands]
                               uint32_t* band_count,     // smem [kBands]
                               uint64_t* warp_sums,      // smem [kWarps][kBands + 1]
                               uint32_t* warp_counts) {  // smem [kWarps][kBands]
  uint64_t mine[kBands + 1] = {};                        // the bands, then the total
  uint32_t count[kBands] = {};
  ForEachKey(keys, [&](uint64_t key) {
    const uint64_t w = row.Weight(key, false);
    mine[kBands] += w;
    const int band = w ? 63 - __clzll(w) : -1;
    if (band < kLowestBand) return;  // most of a vocabulary: the lump
#pragma unroll
    for (int b = 0; b < kBands; ++b) {
      mine[b] += band == kLowestBand + b ? w : 0;
      count[b] += band == kLowestBand + b;
    }
  });
#pragma unroll
  for (int b = 0; b <= kBands; ++b) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) mine[b] += __shfl_xor_sync(0xffffffffu, mine[b], o);
  }
#pragma unroll
  for (int b = 0; b < kBands; ++b) count[b] = __reduce_add_sync(0xffffffffu, count[b]);
  if (threadIdx.x % 32 == 0) {
    const int warp = threadIdx.x / 32;
#pragma unroll
    for (int b = 0; b <= kBands; ++b) warp_sums[warp * (kBands + 1) + b] = mine[b];
#pragma unroll
    for (int b = 0; b < kBands; ++b) warp_counts[warp * kBands + b] = count[b];
  }
  __syncthreads();
  __shared__ uint64_t s_total;
  if (threadIdx.x <= kBands) {
    uint64_t sum = 0;
    uint32_t tokens = 0;
    for (int w = 0; w < kWarps; ++w) {
      sum += warp_sums[w * (kBands + 1) + threadIdx.x];
      if (threadIdx.x < kBands) tokens += warp_counts[w * kBands + threadIdx.x];
    }
    if (threadIdx.x < kBands) {
      band_mass[threadIdx.x] = sum;
      band_count[threadIdx.x] = tokens;
    }
    if (threadIdx.x == kBands) s_total = sum;
  }
  __syncthreads();
  return s_total;
}

// The tokens with weight >= min_weight into `list`; their count, or -1 past kCandidateCapacity or
// when they are not a prefix of the key order (the weights' exp2 approximation would have to
// fall somewhere as the logit rises: not expected, but then the list would not be exact). Each
// warp reserves its lanes' slots with one atomic per key position, so every lane of the block
// walks the same number of positions; the loads are ForEachKey's, 16 bytes and kLoadsInFlight
// deep.
__device__ int GatherCandidates(const VocabularyKeys& keys, const RowView& row, uint64_t min_weight,
                                uint64_t* list, int* count,
                                uint64_t* scratch) {  // smem [32]
  if (threadIdx.x == 0) *count = 0;
  __syncthreads();
  const int lane = threadIdx.x % 32;
  uint64_t lowest_taken = ~uint64_t(0), highest_left = 0;
  // Called by every lane of the warp at once; `valid` false for a lane with no key here.
  const auto offer = [&](uint64_t key, bool valid) {
    const bool take = valid && row.Weight(key, false) >= min_weight;
    if (take) lowest_taken = min(lowest_taken, key);
    if (!take && valid) highest_left = max(highest_left, key);
    const unsigned takers = __ballot_sync(0xffffffffu, take);
    if (!takers) return;
    int first = 0;
    if (lane == 0) first = atomicAdd(count, __popc(takers));
    first = __shfl_sync(0xffffffffu, first, 0);
    const int slot = first + __popc(takers & ((1u << lane) - 1));
    if (take && slot < kCandidateCapacity) list[slot] = key;
  };
  const int head = keys.head(), quads = keys.quads(), tail = keys.tail();
  const int t = threadIdx.x;
  offer(t < head ? keys.key(t) : 0, t < head);
  offer(t < keys.vocab - tail ? keys.key(tail + t) : 0, t < keys.vocab - tail);
  const float4* body = keys.body();  // [quads]
  const int stride = blockDim.x;
  for (int base = 0; base < quads; base += kLoadsInFlight * stride) {
    float4 x[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int q = base + u * stride + t;
      x[u] = q < quads ? __ldg(body + q) : float4{};
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int q = base + u * stride + t;
      const int id = keys.first_id + head + 4 * q;
      offer(Key(x[u].x, id), q < quads);
      offer(Key(x[u].y, id + 1), q < quads);
      offer(Key(x[u].z, id + 2), q < quads);
      offer(Key(x[u].w, id + 3), q < quads);
    }
  }
  // ~max(~x) is min(x); BlockMax's barriers also order the count's atomics before the read.
  const bool prefix =
      BlockMax<uint64_t>(highest_left, 0, scratch) < ~BlockMax<uint64_t>(~lowest_taken, 0, scratch);
  const int n = *count;
  __syncthreads();
  return n <= kCandidateCapacity && prefix ? n : -1;
}

// kCandidates false: every selection over the whole vocabulary (the reference of the list).
template <bool kCandidates>
__global__ void __launch_bounds__(kThreads, 1)
    SampleKernel(const float* logits, const SamplingRow* params, int vocab, int32_t* tokens) {
  extern __shared__ uint64_t candidates[];  // [kCandidateCapacity]
  __shared__ unsigned long long hist[kWarps * 256];
  __shared__ uint64_t kscratch[32];
  __shared__ uint64_t band_mass[kBands];
  __shared__ uint32_t band_count[kBands];
  __shared__ uint64_t warp_sums[kWarps * (kBands + 1)];
  __shared__ uint32_t warp_counts[kWarps * kBands];
  __shared__ int candidate_count;
  WaitForPrevious();  // the logits, and the parameters a step may have updated on the device
  const SamplingRow p = params[blockIdx.x];
  const VocabularyKeys vocabulary{logits + size_t(blockIdx.x) * vocab, vocab};
  uint64_t best = 0;
  ForEachKey(vocabulary, [&](uint64_t key) { best = max(best, key); });
  best = BlockMax<uint64_t>(best, 0, kscratch);
  if (IsGreedy(p)) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = IdOf(best);
    return;
  }
  const RowView row{LogitOf(best), 1.0f / p.temperature, 0};  // the top key: the largest logit
  const int top_k = p.top_k > 0 && p.top_k < vocab ? p.top_k : 0;
  if (!kCandidates) {
    const uint64_t key = CutAndDraw(vocabulary, row, top_k, p, hist);
    if (threadIdx.x == 0) tokens[blockIdx.x] = IdOf(key);
    return;
  }
  // The lowest band the first selection needs from the top: top_k tokens, else top_p of the
  // total mass, else the draw's.
  const uint64_t total = BandMasses(vocabulary, row, band_mass, band_count, warp_sums, warp_counts);
  const bool top_p = p.top_p > 0.0f && p.top_p < 1.0f;
  const uint64_t draw = uint64_t(UniformForStep(p.seed, p.step) * double(total)) + 1;
  const uint64_t needed =
      top_k ? uint64_t(top_k)
            : max(uint64_t(1), top_p ? uint64_t(ceil(double(p.top_p) * double(total)))
                                     : (draw < total ? draw : total));
  uint64_t reached = 0, listed = 0;
  int band = kBands;
  while (band > 0 && reached < needed) {
    --band;
    reached += top_k ? band_count[band] : band_mass[band];
    listed += band_count[band];
  }
  int count = -1;
  if (reached >= needed && listed <= kCandidateCapacity) {
    count = GatherCandidates(vocabulary, row, uint64_t(1) << (kLowestBand + band), candidates,
                             &candidate_count, kscratch);
  }
  // Without top-k, the list's total is the row's (every weight above the bands is in it).
  const uint64_t key = count >= 0 ? CutAndDraw(CandidateKeys{candidates, count}, row, top_k, p,
                                               hist, top_k ? 0 : total)
                                  : CutAndDraw(vocabulary, row, top_k, p, hist, top_k ? 0 : total);
  if (threadIdx.x == 0) tokens[blockIdx.x] = IdOf(key);
}

template <bool kCandidates>
cudaError_t LaunchSample(const float* logits, const SamplingRow* params, int rows, int vocab,
                         int32_t* tokens, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (vocab <= 0) return cudaErrorInvalidValue;
  constexpr int kSmem = kCandidates ? kCandidateCapacity * int(sizeof(uint64_t)) : 0;
  constexpr auto kKernel = SampleKernel<kCandidates>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  return LaunchAfterPrevious(kKernel, dim3(rows), dim3(kThreads), kSmem, stream, logits, params,
                             vocab, tokens);
}

// One block per row: the largest key of the row's slice of the vocabulary (0 for an empty
// slice, smaller than any token's key).
__global__ void __launch_bounds__(kThreads)
    BestKeysOfSliceKernel(const float* logits, int slice_vocab, int first_id, uint64_t* best_keys) {
  __shared__ uint64_t scratch[32];
  WaitForPrevious();
  const VocabularyKeys slice{logits + size_t(blockIdx.x) * slice_vocab, slice_vocab, first_id};
  uint64_t best = 0;
  ForEachKey(slice, [&](uint64_t key) { best = max(best, key); });
  best = BlockMax<uint64_t>(best, 0, scratch);
  if (threadIdx.x == 0) best_keys[blockIdx.x] = best;
}

// One thread per row: the largest of the ranks' keys, in rank order (a maximum: any order).
__global__ void TokensFromBestKeysKernel(const uint64_t* rank_best_keys, int ranks, int rows,
                                         int32_t* tokens) {
  WaitForPrevious();
  const int row = blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  uint64_t best = 0;
  for (int r = 0; r < ranks; ++r) best = max(best, rank_best_keys[size_t(r) * rows + row]);
  tokens[row] = IdOf(best);
}

}  // namespace

cudaError_t BestKeysOfSlice(const float* logits, int rows, int slice_vocab, int first_id,
                            uint64_t* best_keys, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (slice_vocab < 0 || first_id < 0) return cudaErrorInvalidValue;
  return LaunchAfterPrevious(BestKeysOfSliceKernel, dim3(rows), dim3(kThreads), 0, stream, logits,
                             slice_vocab, first_id, best_keys);
}

cudaError_t TokensFromBestKeys(const uint64_t* rank_best_keys, int ranks, int rows, int32_t* tokens,
                               cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (ranks <= 0) return cudaErrorInvalidValue;
  constexpr int kRowsPerBlock = 128;
  return LaunchAfterPrevious(TokensFromBestKeysKernel,
                             dim3((rows + kRowsPerBlock - 1) / kRowsPerBlock), dim3(kRowsPerBlock),
                             0, stream, rank_best_keys, ranks, rows, tokens);
}

cudaError_t SampleTokens(const float* logits, const SamplingRow* params, int rows, int vocab,
                         int32_t* tokens, cudaStream_t stream) {
  return LaunchSample<true>(logits, params, rows, vocab, tokens, stream);
}

cudaError_t SampleTokensOverVocabulary(const float* logits, const SamplingRow* params, int rows,
                                       int vocab, int32_t* tokens, cudaStream_t stream) {
  return LaunchSample<false>(logits, params, rows, vocab, tokens, stream);
}

}  // namespace gqa::kernels::cuda
