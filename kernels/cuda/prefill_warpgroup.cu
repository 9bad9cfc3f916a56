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
#include "prefill_warpgroup.cuh"
#include "prefill_warpgroup.h"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;            // NOLINT: Pack, kRow, kLog2e, kTile
using namespace warpgroup_attention;  // NOLINT: the steps, softmax and products
using namespace warpgroup_prefill;    // NOLINT: the block's rows, keys and store

constexpr int kBlockThreads = kWarpgroups * kWarpgroupThreads;

// The block's shared memory: 1024 bytes of alignment slack, S stages, the padded query rows
// (read once, by ldmatrix).
template <int D, int NK, int S>
constexpr int kBlockSmemBytes = 1024 + S* StepLayout<D, NK>::kStageBytes + kBlockRows* kRow<D> * 2;

template <typename T, int D, int NK, int S, bool kOverlap>
__global__ void __launch_bounds__(kBlockThreads, 1)
    WarpgroupPrefillKernel(PrefillAttentionArgs<T, T> args, int group) {
  using Layout = StepLayout<D, NK>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  // 1024-byte aligned stages (the swizzle atoms), then the padded query rows.
  unsigned char* stages = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* q_smem = reinterpret_cast<T*>(stages + S * Layout::kStageBytes);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warpgroup = warp / 4;
  const BlockRows b = LocateBlock<NK>(args, group, blockIdx.x);
  if (b.empty) return;
  const int kv_head = b.kv_head, seq = b.seq;
  const int first_step = b.first_step, num_steps = b.num_steps;
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;
  auto stage_of = [&](int j) { return stages + (j % S) * Layout::kStageBytes; };
  auto load = [&](int j) {
    LoadStep<T, D, NK, kBlockThreads>(args.cache, table_row, kv_head, j * NK, b.end, stage_of(j));
  };

  LoadQueryRows<T, D, kBlockRows, kBlockThreads>(args.q, b.q_begin, args.num_heads, kv_head, group,
                                                 b.row0, b.rows, q_smem);
  CpAsyncCommit();
#pragma unroll
  for (int j = first_step; j < first_step + S - 1; ++j) {
    if (j < num_steps) load(j);
    CpAsyncCommit();
  }
  CpAsyncWait<S - 1>();  // the query rows
  __syncthreads();
  uint32_t q[D / 16][4];  // this warp's 16 query rows as A fragments
  LoadQueryFragments<D>(q_smem + warpgroup * kWarpgroupRows * kRow<D>, warp % 4, lane, q);

  const RowKeys keys = KeysOfRows(b, group, args.window, warp, lane);
  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  auto softmax = [&](float(&s)[NK / 64][32], int j, float(&alphas)[2]) {
    Softmax<D, NK>(s, j * NK, keys.limit, keys.first, keys.NeedsMask(j * NK, NK), scale_log2, st,
                   alphas, lane);
  };
  if constexpr (!kOverlap) {
    float scores[NK / 64][32];
    uint32_t p[NK / 16][4];
    float alphas[2];
    // Each step: scores, softmax, output, each waited for; the other warpgroup's products fill
    // the gaps. A warpgroup skips the steps outside [wg_begin, wg_end), which its rows do not see
    // (uniform across it: the products are collective).
    const int wg_row0 = b.row0 + warpgroup * kWarpgroupRows;
    const int wg_last_row = min(wg_row0 + kWarpgroupRows, b.rows) - 1;
    const int wg_limit = wg_row0 < b.rows ? b.first_pos + wg_last_row / group + 1 : 0;
    const int wg_first =
        args.window > 0 ? max(0, b.first_pos + wg_row0 / group - args.window + 1) : 0;
    const int wg_begin = max(first_step, wg_first / NK);
    const int wg_end = min(num_steps, (wg_limit + NK - 1) / NK);
    for (int j = first_step; j < num_steps; ++j) {
      CpAsyncWait<S - 2>();      // this thread's copies of step j landed
      wgmma::FenceProxyAsync();  // ... and are visible to the products
      __syncthreads();           // everyone's; and step j - 1's slot is free again
      if (j + S - 1 < num_steps) load(j + S - 1);
      CpAsyncCommit();
      if (j < wg_begin || j >= wg_end) continue;
      IssueScores<T, D, NK>(q, stage_of(j), scores);
      WaitAll<D, NK>(scores, st);
      softmax(scores, j, alphas);
      RescaleOutput(st, alphas);
      PackProbabilities<T, NK>(scores, p);
      IssueOutput<T, D, NK>(p, stage_of(j), st);
      WaitAll<D, NK>(scores, st);
    }
  } else {
    // FlashAttention-3's intra-warpgroup pipelining (RunOverlappedSteps). Both warpgroups run
    // every step of the block: a step past a warpgroup's rows is masked whole (at most one step
    // on the diagonal).
    auto steps = MakeCpAsyncSteps<D, NK, S>(stages, first_step, num_steps, load);
    RunOverlappedSteps<T, D, NK>(q, first_step, num_steps, steps, softmax, st);
  }
  CpAsyncWait<0>();
  StoreRows<T, D>(args, b, group, kv_head, st, warp, lane);
}

template <typename T, int D, int NK, int S, bool kOverlap>
cudaError_t Launch(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  static_assert(!kOverlap || S >= 3, "the overlapped schedule keeps two steps landed");
  constexpr int kSmem = kBlockSmemBytes<D, NK, S>;
  constexpr auto kKernel = WarpgroupPrefillKernel<T, D, NK, S, kOverlap>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  const int group = args.num_heads / args.cache.num_kv_heads;
  kKernel<<<PrefillWorkItems(args, group), kBlockThreads, kSmem, stream>>>(args, group);
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
  if (args.warpgroup_variant == 0) {  // the default
    PrefillAttentionArgs<T, T> chosen = args;
    chosen.warpgroup_variant = DefaultWarpgroupPrefillVariant(args.cache.head_dim);
    const cudaError_t e = ProducerWarpgroupPrefill<T>(chosen, stream);
    // A driver without tensor maps: the cp.async schedule (variant 3) instead.
    if (e != cudaErrorNotSupported) return e;
    chosen.warpgroup_variant = 3;
    return WarpgroupPrefillAttention<T>(chosen, stream);
  }
  if (args.warpgroup_variant >= kFirstProducerPrefillVariant) {
    return ProducerWarpgroupPrefill<T>(args, stream);
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
