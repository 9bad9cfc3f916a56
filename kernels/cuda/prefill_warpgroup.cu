// Causal grouped-query prefill attention on Hopper's warpgroup products (wgmma), for 16-bit
// caches and unsplit keys (paged_prefill_attention.cu dispatches here; see prefill_warpgroup.h).
//
// Grid: (row tile, KV head, sequence), the row tiles longest-first (the last tile of a causal
// prompt sees the most keys). A row is one (query token, head of the group) pair, as in the
// mma.sync kernel. Block: two warpgroups of 64 rows each (128 rows). The whole block copies
// steps of NK keys of K and V (NK / 16 cache tiles) through an S-stage cp.async pipeline into
// 128-byte-swizzled panels; each warpgroup then computes S = Q.K^T for its 64 rows with the
// query fragments held in registers, the online softmax on the accumulators, and O += P.V with
// P re-packed from the accumulators as the A operand, both products reading K and V straight
// from shared memory. A warpgroup skips the steps wholly after its rows' positions (or before
// their window).
#include <array>
#include <atomic>
#include <cstdint>

#include "attention_tile.cuh"
#include "pdl.cuh"
#include "prefill_warpgroup.h"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;  // NOLINT: Pack, kRow, kLog2e, kTile

constexpr int kWarpgroups = 2;
constexpr int kWarpgroupRows = 64;
constexpr int kBlockRows = kWarpgroups * kWarpgroupRows;
constexpr int kBlockThreads = kWarpgroups * 128;
constexpr int kPanel = 64;  // 16-bit columns per 128-byte swizzled panel

// One pipeline stage of NK keys at head_dim D: K, then V, each D / 64 panels of NK rows of 128
// bytes.
template <int D, int NK>
struct StepLayout {
  static constexpr int kPanelBytes = NK * 128;
  static constexpr int kOperandBytes = D / kPanel * kPanelBytes;
  static constexpr int kStageBytes = 2 * kOperandBytes;
};

// The block's shared memory: 1024 bytes of alignment slack, S stages, the padded query rows
// (read once, by ldmatrix).
template <int D, int NK, int S>
constexpr int kBlockSmemBytes = 1024 + S* StepLayout<D, NK>::kStageBytes + kBlockRows* kRow<D> * 2;

// The whole block copies the K and V rows of keys tok0 .. tok0 + NK - 1 (whole 16-key tiles, each
// in its cache block) into a stage: row t, 16-byte chunk c of the head goes to panel c / 8,
// swizzled. Keys at or past `end` are zero-filled, so stale cache data never reaches P.V.
template <typename T, int D, int NK>
__device__ __forceinline__ void LoadStep(const PagedKvView<T>& cache, const int32_t* table_row,
                                         int kv_head, int tok0, int end, unsigned char* stage) {
  using Layout = StepLayout<D, NK>;
  constexpr int kChunksPerRow = D / 8;
  for (int c = threadIdx.x; c < NK * kChunksPerRow; c += kBlockThreads) {
    const int t = c / kChunksPerRow, chunk = c % kChunksPerRow;
    const int tok = tok0 + t;
    const int entry = min(tok / cache.block_size, cache.max_blocks_per_seq - 1);
    // Past the context the table may hold -1 (unused entries): read nothing, from block 0.
    const int block = tok < end ? table_row[entry] : 0;
    const size_t src = ((size_t(block) * cache.num_kv_heads + kv_head) * cache.block_size +
                        tok % cache.block_size) *
                           D +
                       chunk * 8;
    const int dst = (chunk / 8) * Layout::kPanelBytes + wgmma::SwizzledOffset(t, chunk % 8);
    CpAsync16(stage + dst, cache.k + src, tok < end);
    CpAsync16(stage + Layout::kOperandBytes + dst, cache.v + src, tok < end);
  }
}

// One warpgroup's running state: the output accumulators (one m64n64 product per 64 columns of
// the head), and per thread rows g and g + 8 of its warp: the running max (log2 units) and this
// thread's share of the running sum.
template <int D>
struct WarpgroupState {
  float out[D / kPanel][32];
  float max[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.0f, 0.0f};

  __device__ void Init() {
#pragma unroll
    for (int p = 0; p < D / kPanel; ++p) {
#pragma unroll
      for (int i = 0; i < 32; ++i) out[p][i] = 0.0f;
    }
  }
};

// Online softmax over one step's scores s (keys tok0 + 64 * c + 8 * i + 2 * tig + e), masked to
// [first[r], limit[r]) when `mask`: s becomes the unnormalized probabilities, the running max
// and sum move on, and alphas[r] is the factor the output rows must be scaled by before this
// step's P.V.
template <int D, int NK>
__device__ __forceinline__ void Softmax(float (&s)[NK / 64][32], int tok0, const int (&limit)[2],
                                        const int (&first)[2], bool mask, float scale_log2,
                                        WarpgroupState<D>& st, float (&alphas)[2], int lane) {
  const int tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float step_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[c][4 * i + 2 * r + e];
          v *= scale_log2;
          const int key = tok0 + 64 * c + 8 * i + 2 * tig + e;
          if (mask && (key >= limit[r] || key < first[r])) v = -INFINITY;
          step_max = fmaxf(step_max, v);
        }
      }
    }
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    const float new_max = fmaxf(st.max[r], step_max);
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float alpha = exp2f(st.max[r] - base);
    float step_sum = 0.0f;
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[c][4 * i + 2 * r + e];
          v = exp2f(v - base);
          step_sum += v;
        }
      }
    }
    st.sum[r] = st.sum[r] * alpha + step_sum;
    st.max[r] = new_max;
    alphas[r] = alpha;
  }
}

// Scales the output rows by alphas (unconditionally: a branch here, around the products, would
// serialize them).
template <int D>
__device__ __forceinline__ void RescaleOutput(WarpgroupState<D>& st, const float (&alphas)[2]) {
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
    for (int i = 0; i < 32; ++i) st.out[pn][i] *= alphas[(i / 2) % 2];
  }
}

// The probabilities as the A operand of P.V (k16 slice kk: keys 16 * kk ...): two 8-key column
// tiles of the accumulator are the A layout of one 16-key slice.
template <typename T, int NK>
__device__ __forceinline__ void PackProbabilities(const float (&s)[NK / 64][32],
                                                  uint32_t (&p)[NK / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
    const float* a = &s[kk / 4][8 * (kk % 4)];
    p[kk][0] = Pack<T>(a[0], a[1]);
    p[kk][1] = Pack<T>(a[2], a[3]);
    p[kk][2] = Pack<T>(a[4], a[5]);
    p[kk][3] = Pack<T>(a[6], a[7]);
  }
}

// Issues S = Q.K^T for one warpgroup's 64 rows and the step's NK keys (NK / 64 products per 16
// columns of the head) as one group of products; the caller waits for it.
template <typename T, int D, int NK>
__device__ __forceinline__ void IssueScores(const uint32_t (&q)[D / 16][4],
                                            const unsigned char* stage, float (&s)[NK / 64][32]) {
  using Layout = StepLayout<D, NK>;
#pragma unroll
  for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(s[c]);
  wgmma::Fence();
#pragma unroll
  for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      // Keys 64c.. of panel kk / 4, columns 16 (kk % 4)..: 32 bytes per 16 columns.
      const unsigned char* k =
          stage + (kk / 4) * Layout::kPanelBytes + 64 * c * 128 + (kk % 4) * 32;
      wgmma::MmaRegA<T, false>(s[c], q[kk], wgmma::SwizzledDescriptor(k), kk > 0);
    }
  }
  wgmma::Commit();
}

// Issues O += P.V for the step (P from Softmax) as one group of products.
template <typename T, int D, int NK>
__device__ __forceinline__ void IssueOutput(const uint32_t (&p)[NK / 16][4],
                                            const unsigned char* stage, WarpgroupState<D>& st) {
  using Layout = StepLayout<D, NK>;
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) wgmma::PinRegisters(st.out[pn]);
  wgmma::Fence();
  const unsigned char* v = stage + Layout::kOperandBytes;
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
#pragma unroll
    for (int pn = 0; pn < D / kPanel; ++pn) {
      // Keys 16kk.. (rows of 128 bytes) of head panel pn.
      const unsigned char* b = v + pn * Layout::kPanelBytes + kk * 16 * 128;
      wgmma::MmaRegA<T, true>(st.out[pn], p[kk], wgmma::SwizzledDescriptor(b), true);
    }
  }
  wgmma::Commit();
}

// Waits for every product this warpgroup issued, and pins the registers they wrote.
template <int D, int NK>
__device__ __forceinline__ void WaitAll(float (&s)[NK / 64][32], WarpgroupState<D>& st) {
  wgmma::Wait<0>();
#pragma unroll
  for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(s[c]);
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) wgmma::PinRegisters(st.out[pn]);
}

template <typename T, int D, int NK, int S, bool kOverlap>
__global__ void __launch_bounds__(kBlockThreads, 1)
    WarpgroupPrefillKernel(PrefillAttentionArgs<T, T> args, int group) {
  using Layout = StepLayout<D, NK>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // 1024-byte aligned stages (the swizzle atoms), then the padded query rows.
  unsigned char* stages = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* q_smem = reinterpret_cast<T*>(stages + S * Layout::kStageBytes);
  const int kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warpgroup = warp / 4;
  const int q_begin = args.query_start[seq];
  const int q_len = args.query_start[seq + 1] - q_begin;
  const int rows = q_len * group;
  const int row0 = (gridDim.x - 1 - blockIdx.x) * kBlockRows;  // longest tiles first
  if (row0 >= rows) return;
  const int end = args.context_lens[seq];
  const int first_pos = end - q_len;  // position of the first query token
  const int last_pos = first_pos + (min(row0 + kBlockRows, rows) - 1) / group;
  const int block_first_key =
      args.window > 0 ? max(0, first_pos + row0 / group - args.window + 1) : 0;
  const int first_step = block_first_key / NK;
  const int num_steps = last_pos / NK + 1;
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;

  LoadQueryRows<T, D, kBlockRows, kBlockThreads>(args.q, q_begin, args.num_heads, kv_head, group,
                                                 row0, rows, q_smem);
  CpAsyncCommit();
#pragma unroll
  for (int j = first_step; j < first_step + S - 1; ++j) {
    if (j < num_steps) {
      LoadStep<T, D, NK>(args.cache, table_row, kv_head, j * NK, end,
                         stages + (j % S) * Layout::kStageBytes);
    }
    CpAsyncCommit();
  }
  CpAsyncWait<S - 1>();  // the query rows
  __syncthreads();
  uint32_t q[D / 16][4];  // this warp's 16 query rows as A fragments
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LdMatrixX4(q[kk], q_smem + (warp * 16 + lane % 16) * kRow<D> + kk * 16 + (lane / 16) * 8);
  }

  // Keys visible to this thread's rows g and g + 8: up to and including the row's position, and
  // with a sliding window from position - window + 1 on.
  const int g = lane / 4;
  int limit[2], first[2];
  int warp_min = INT32_MAX, warp_first_max = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + warp * 16 + g + r * 8;
    const int pos = first_pos + row / group;
    limit[r] = row < rows ? pos + 1 : 0;
    first[r] = row < rows && args.window > 0 ? max(0, pos - args.window + 1) : 0;
    warp_min = min(warp_min, limit[r]);
    warp_first_max = max(warp_first_max, first[r]);
  }
  warp_min = __reduce_min_sync(0xffffffffu, warp_min);
  warp_first_max = __reduce_max_sync(0xffffffffu, warp_first_max);
  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  auto stage_of = [&](int j) { return stages + (j % S) * Layout::kStageBytes; };
  auto mask_of = [&](int tok0) { return tok0 + NK > warp_min || tok0 < warp_first_max; };
  float scores[NK / 64][32];
  uint32_t p[NK / 16][4];  // the probabilities of the step whose P.V is next
  float alphas[2];         // ... and the output rows' factor before it
  if constexpr (!kOverlap) {
    // Each step: scores, softmax, output, each waited for; the other warpgroup's products fill
    // the gaps. A warpgroup skips the steps outside [wg_begin, wg_end), which its rows do not see
    // (uniform across it: the products are collective).
    const int wg_row0 = row0 + warpgroup * kWarpgroupRows;
    const int wg_last_row = min(wg_row0 + kWarpgroupRows, rows) - 1;
    const int wg_limit = wg_row0 < rows ? first_pos + wg_last_row / group + 1 : 0;
    const int wg_first =
        args.window > 0 ? max(0, first_pos + wg_row0 / group - args.window + 1) : 0;
    const int wg_begin = max(first_step, wg_first / NK);
    const int wg_end = min(num_steps, (wg_limit + NK - 1) / NK);
    for (int j = first_step; j < num_steps; ++j) {
      CpAsyncWait<S - 2>();      // this thread's copies of step j landed
      wgmma::FenceProxyAsync();  // ... and are visible to the products
      __syncthreads();           // everyone's; and step j - 1's slot is free again
      if (j + S - 1 < num_steps) {
        LoadStep<T, D, NK>(args.cache, table_row, kv_head, (j + S - 1) * NK, end,
                           stage_of(j + S - 1));
      }
      CpAsyncCommit();
      if (j < wg_begin || j >= wg_end) continue;
      IssueScores<T, D, NK>(q, stage_of(j), scores);
      WaitAll<D, NK>(scores, st);
      Softmax<D, NK>(scores, j * NK, limit, first, mask_of(j * NK), scale_log2, st, alphas, lane);
      RescaleOutput(st, alphas);
      PackProbabilities<T, NK>(scores, p);
      IssueOutput<T, D, NK>(p, stage_of(j), st);
      WaitAll<D, NK>(scores, st);
    }
  } else {
    // FlashAttention-3's intra-warpgroup pipelining. In step j the warpgroup issues step j's
    // scores, then step j - 1's output product (its probabilities kept in p), and runs step j's
    // softmax while that product runs. So a step keeps two slots: K of step j, V of step j - 1;
    // the block refills the slot of step j - 2, S - 2 steps ahead. Both warpgroups run every
    // step of the block (a step past a warpgroup's rows is masked whole: at most one step on
    // the diagonal), so that no product sits in a branch.
    CpAsyncWait<S - 2>();  // this thread's copies of the first step landed
    wgmma::FenceProxyAsync();
    __syncthreads();
    IssueScores<T, D, NK>(q, stage_of(first_step), scores);
    WaitAll<D, NK>(scores, st);
    Softmax<D, NK>(scores, first_step * NK, limit, first, mask_of(first_step * NK), scale_log2, st,
                   alphas, lane);
    PackProbabilities<T, NK>(scores, p);
    for (int j = first_step + 1; j < num_steps; ++j) {
      CpAsyncWait<S - 3>();  // this thread's copies of step j landed
      wgmma::FenceProxyAsync();
      __syncthreads();  // everyone's copies landed; everyone finished step j - 2's products
      if (j + S - 2 < num_steps) {
        LoadStep<T, D, NK>(args.cache, table_row, kv_head, (j + S - 2) * NK, end,
                           stage_of(j + S - 2));
      }
      CpAsyncCommit();
      IssueScores<T, D, NK>(q, stage_of(j), scores);
      RescaleOutput(st, alphas);
      IssueOutput<T, D, NK>(p, stage_of(j - 1), st);
      wgmma::Wait<1>();  // the scores, not yet the output product
#pragma unroll
      for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(scores[c]);
      Softmax<D, NK>(scores, j * NK, limit, first, mask_of(j * NK), scale_log2, st, alphas, lane);
      WaitAll<D, NK>(scores, st);
      PackProbabilities<T, NK>(scores, p);
    }
    RescaleOutput(st, alphas);  // the last step's output product
    IssueOutput<T, D, NK>(p, stage_of(num_steps - 1), st);
    WaitAll<D, NK>(scores, st);
  }
  CpAsyncWait<0>();

  const int tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = st.sum[r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int row = row0 + warp * 16 + g + r * 8;
    if (row >= rows) continue;
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    T* dst = args.out +
             (size_t(q_begin + row / group) * args.num_heads + kv_head * group + row % group) * D;
#pragma unroll
    for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        *reinterpret_cast<uint32_t*>(dst + pn * kPanel + 8 * i + 2 * tig) =
            Pack<T>(st.out[pn][4 * i + 2 * r] * inv, st.out[pn][4 * i + 2 * r + 1] * inv);
      }
    }
  }
}

template <typename T, int D, int NK, int S, bool kOverlap>
cudaError_t Launch(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  static_assert(!kOverlap || S >= 3, "the overlapped schedule keeps two steps landed");
  constexpr int kSmem = kBlockSmemBytes<D, NK, S>;
  constexpr auto kKernel = WarpgroupPrefillKernel<T, D, NK, S, kOverlap>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int row_tiles = (args.max_query_len * group + kBlockRows - 1) / kBlockRows;
  const dim3 grid(row_tiles, args.cache.num_kv_heads, args.num_seqs);
  kKernel<<<grid, kBlockThreads, kSmem, stream>>>(args, group);
  return cudaGetLastError();
}

// The built variants (keys per step, stages, schedule), numbered as args.warpgroup_variant.
template <typename T, int D>
cudaError_t LaunchVariant(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  switch (args.warpgroup_variant) {
    case 1:
      return Launch<T, D, 64, 3, false>(args, stream);
    case 2:
      return Launch<T, D, 128, 2, false>(args, stream);
    case 0:
    case 3:
      return Launch<T, D, 64, 3, true>(args, stream);
    case 4:
      return Launch<T, D, 64, 4, true>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool WarpgroupPrefillAvailable() {
#if GQA_KERNELS_HAVE_SM90A
  static std::array<std::atomic<int>, 64> known{};  // per device: 0 unknown, 1 no, 2 yes
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  const bool tracked = device < static_cast<int>(known.size());
  if (tracked && known[device].load(std::memory_order_relaxed) != 0) {
    return known[device].load(std::memory_order_relaxed) == 2;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    return false;
  }
  const bool hopper = major == 9 && minor == 0;
  if (tracked) known[device].store(hopper ? 2 : 1, std::memory_order_relaxed);
  return hopper;
#else
  return false;
#endif
}

template <typename T>
cudaError_t WarpgroupPrefillAttention(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  if (!WarpgroupPrefillAvailable()) return cudaErrorNotSupported;
  if (args.key_splits > 1 || args.num_heads / args.cache.num_kv_heads > kBlockRows) {
    return cudaErrorInvalidValue;
  }
  switch (args.cache.head_dim) {
    case 64:
      return LaunchVariant<T, 64>(args, stream);
    case 128:
      return LaunchVariant<T, 128>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t WarpgroupPrefillAttention<__nv_bfloat16>(
    const PrefillAttentionArgs<__nv_bfloat16, __nv_bfloat16>&, cudaStream_t);
template cudaError_t WarpgroupPrefillAttention<__half>(const PrefillAttentionArgs<__half, __half>&,
                                                       cudaStream_t);

}  // namespace gqa::kernels::cuda
