// Causal grouped-query prefill attention on Hopper with a producer warp: the warpgroup kernel of
// prefill_warpgroup.cu (two warpgroups of 64 rows, wgmma products reading K and V from
// 128-byte-swizzled shared memory, FlashAttention-3's overlapped schedule), with its copies
// taken off the warps that compute.
//
// Block: two consumer warpgroups and a producer warpgroup (384 threads) of which one warp works.
// The producer fills S slots of NK keys of K and V: whole 16-key cache tiles with the bulk tensor
// copy engine (TMA, one box of 16 rows x 64 values per tile, panel and tensor; tensor_map.h), a
// tile that reaches past the sequence's length with plain loads and zeros (stale cache slots must
// never reach P.V). Each slot has two barriers: `full` completes when the slot's copies landed (the
// producer's arrival and the TMA bytes), `empty` when all 256 consumer threads finished the
// products that read it. So the consumers never issue a copy or meet at a block barrier inside the
// loop, and the producer runs up to S steps ahead. The query fragments come straight from global
// memory into registers (no shared memory for them). Variants 7 and 8 add FlashAttention-3's
// ping-pong of the two consumer warpgroups (PingPongTurns), and 8 one m64n128 product per score
// chain. Variants 9 and 10 are 6 and 7 persistent: one block per multiprocessor takes work
// items in turn, so the producer copies an item's first steps while the consumers store the
// last item's rows and load the next one's queries.
#include <cuda.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "attention_tile.cuh"
#include "pdl.cuh"
#include "prefill_warpgroup.cuh"
#include "prefill_warpgroup.h"
#include "producer_steps.cuh"
#include "tensor_map.h"
#include "tma.cuh"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;            // NOLINT: kLog2e
using namespace warpgroup_attention;  // NOLINT: the steps, softmax and products
using namespace warpgroup_prefill;    // NOLINT: the block's rows, keys and store
using namespace producer_steps;       // NOLINT: the producer's slots and copies

constexpr int kConsumerThreads = kWarpgroups * kWarpgroupThreads;
constexpr int kConsumerWarps = kConsumerThreads / 32;
// + a producer warpgroup, of which one warp copies: a block's registers are granted in whole
// warpgroups, so the idle warps cost nothing that a 9-warp block would not.
constexpr int kBlockThreads = kConsumerThreads + kWarpgroupThreads;
// The registers per thread after the split: the producer hands its share to the consumers
// (40 x 128 + 232 x 256 <= 64k; the kernel starts with 65536 / 384 rounded down, 168).
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
// The consumer warpgroups' part of a work item: its query fragments from global memory, the
// overlapped steps from slots `filled` on, the store of its rows.
template <typename T, int D, int NK, int S, bool kWideScores, typename Turns>
__device__ __forceinline__ void ConsumeItem(const PrefillAttentionArgs<T, T>& args, int group,
                                            const BlockRows& b, const Slots<D, NK, S>& slots,
                                            int filled, Turns turns, int warp, int lane) {
  uint32_t q[D / 16][4];
  LoadQueryFragmentsFromGlobal<D>(
      [&](int r) -> const T* {
        const int row = b.row0 + warp * 16 + r;
        if (row >= b.rows) return nullptr;
        return args.q + (size_t(b.q_begin + row / group) * args.num_heads + b.kv_head * group +
                         row % group) *
                            D;
      },
      lane, q);
  const RowKeys keys = KeysOfRows(b, group, args.window, warp, lane);
  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  ConsumerSteps<D, NK, S> steps{slots, b.first_step, filled};
  auto softmax = [&](float(&s)[NK / 64][32], int j, float(&alphas)[2]) {
    Softmax<D, NK>(s, j * NK, keys.limit, keys.first, keys.NeedsMask(j * NK, NK), scale_log2, st,
                   alphas, lane);
  };
  RunOverlappedSteps<T, D, NK, kWideScores>(q, b.first_step, b.num_steps, steps, softmax, st,
                                            turns);
  StoreRows<T, D>(args, b, group, b.kv_head, st, warp, lane);
}

// kPersistent: a grid of one block per multiprocessor, each taking BlockItems' items in turn;
// the producer fills the next item's first slots while the consumers finish the last one.
template <typename T, int D, int NK, int S, bool kPingPong, bool kWideScores, bool kPersistent>
__global__ void __launch_bounds__(kBlockThreads, 1)
    ProducerPrefillKernel(const __grid_constant__ CUtensorMap k_map,
                          const __grid_constant__ CUtensorMap v_map,
                          PrefillAttentionArgs<T, T> args, int group, int num_items) {
  static_assert(S >= 3, "the overlapped schedule holds two steps while the next one lands");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Slots<D, NK, S> slots(smem_raw);
  const BlockItems<kPersistent> items{num_items};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) slots.Init(kConsumerThreads);
  __syncthreads();

  if (warp >= kConsumerWarps) {  // the producer warpgroup
    wgmma::SetMaxRegisters<false, kProducerRegisters>();
    if (warp != kConsumerWarps) return;
    int filled = 0;
    for (int round = 0, item; (item = items.Item(round)) < items.count; ++round) {
      const BlockRows b = LocateBlock<NK>(args, group, item);
      if (b.empty) continue;
      const int32_t* table_row =
          args.cache.block_tables + size_t(b.seq) * args.cache.max_blocks_per_seq;
      filled = Produce<T, D, NK, S>(k_map, v_map, args.cache, table_row, b.kv_head, 0, b.first_step,
                                    b.num_steps, b.end, slots, filled, lane);
    }
    return;
  }

  wgmma::SetMaxRegisters<true, kConsumerRegisters>();
  using Turns = std::conditional_t<kPingPong, PingPongTurns, NoTurns>;
  Turns turns{};
  if constexpr (kPingPong) turns.warpgroup = warp / 4;
  turns.Start();
  int filled = 0;
  for (int round = 0, item; (item = items.Item(round)) < items.count; ++round) {
    const BlockRows b = LocateBlock<NK>(args, group, item);
    if (b.empty) continue;
    ConsumeItem<T, D, NK, S, kWideScores>(args, group, b, slots, filled, turns, warp, lane);
    filled += b.num_steps - b.first_step;
  }
  turns.Finish();
}

// The multiprocessors of the current device (the persistent grid's size).
inline cudaError_t MultiprocessorCount(int* count) {
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  return cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, device);
}

template <typename T, int D, int NK, int S, bool kPingPong = false, bool kWideScores = false,
          bool kPersistent = false>
cudaError_t Launch(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  constexpr auto kKernel = ProducerPrefillKernel<T, D, NK, S, kPingPong, kWideScores, kPersistent>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmemBytes<D, NK, S>); e != cudaSuccess) {
    return e;
  }
  KvPoolMaps maps;
  if (const cudaError_t e = EncodeKvPoolMaps(&maps, args.cache.k, args.cache.v, D);
      e != cudaSuccess) {
    return e;
  }
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int num_items = PrefillWorkItems(args, group);
  int blocks = num_items;
  if constexpr (kPersistent) {
    int sm_count = 0;
    if (const cudaError_t e = MultiprocessorCount(&sm_count); e != cudaSuccess) return e;
    blocks = std::min(num_items, sm_count);  // one block per multiprocessor (its registers)
  }
  kKernel<<<blocks, kBlockThreads, kSmemBytes<D, NK, S>, stream>>>(maps.k, maps.v, args, group,
                                                                   num_items);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t LaunchVariant(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  switch (args.warpgroup_variant) {
    case kFirstProducerPrefillVariant:
      return Launch<T, D, 64, 4>(args, stream);
    case kFirstProducerPrefillVariant + 1:
      return Launch<T, D, 128, 3>(args, stream);
    case kFirstProducerPrefillVariant + 2:  // the two warpgroups' products in turns
      return Launch<T, D, 128, 3, true>(args, stream);
    case kFirstProducerPrefillVariant + 3:  // ... and each score chain one m64n128 product
      return Launch<T, D, 128, 3, true, true>(args, stream);
    case kFirstProducerPrefillVariant + 4:  // variant 6, persistent
      return Launch<T, D, 128, 3, false, false, true>(args, stream);
    case kFirstProducerPrefillVariant + 5:  // variant 7, persistent
      return Launch<T, D, 128, 3, true, false, true>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

template <typename T>
cudaError_t ProducerWarpgroupPrefill(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  if (args.cache.block_size % kTileKeys != 0) return cudaErrorInvalidValue;
  switch (args.cache.head_dim) {
    case 64:
      return LaunchVariant<T, 64>(args, stream);
    case 128:
      return LaunchVariant<T, 128>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t ProducerWarpgroupPrefill<__nv_bfloat16>(
    const PrefillAttentionArgs<__nv_bfloat16, __nv_bfloat16>&, cudaStream_t);
template cudaError_t ProducerWarpgroupPrefill<__half>(const PrefillAttentionArgs<__half, __half>&,
                                                      cudaStream_t);

}  // namespace gqa::kernels::cuda
