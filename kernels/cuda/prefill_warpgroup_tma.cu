// Causal grouped-query prefill attention on Hopper with a producer warp: the warpgroup kernel of
// prefill_warpgroup.cu (warpgroups of 64 rows, wgmma products reading K and V from
// 128-byte-swizzled shared memory, FlashAttention-3's overlapped schedule), with its copies
// taken off the warps that compute.
//
// Block: two consumer warpgroups (three in variants 11 and 12, BlockShape) and a producer
// warpgroup, of which one warp works.
// The producer fills S slots of NK keys of K and V: whole 16-key cache tiles with the bulk tensor
// copy engine (TMA, one box of 16 rows x 64 values per tile, panel and tensor; tensor_map.h), a
// tile that reaches past the sequence's length with plain loads and zeros (stale cache slots must
// never reach P.V). Each slot has two barriers: `full` completes when the slot's copies landed (the
// producer's arrival and the TMA bytes), `empty` when every consumer thread finished the
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

// A block of W consumer warpgroups (W x 64 rows) and a producer warpgroup, of which one warp
// copies: a block's registers are granted in whole warpgroups, so the idle warps cost nothing
// that one more warp would not. The producer hands its registers to the consumers with
// setmaxnreg (W = 2: 40 x 128 + 232 x 256 <= 64k, the kernel starting at 65536 / 384 rounded
// down, 168; W = 3, FlashAttention-3's 192-row tile at head_dim 64: 32 x 128 + 160 x 384).
// At W = 3, 128 keys per step spill 156 bytes in the consumers and 64 do not, and the producer
// spills at 24 registers but not at 32 (kernels/BENCHMARKS.md steps 30 and 31 on how ptxas
// budgets each side).
template <int W>
struct BlockShape {
  static constexpr int kConsumerThreads = W * kWarpgroupThreads;
  static constexpr int kConsumerWarps = kConsumerThreads / 32;
  static constexpr int kThreads = kConsumerThreads + kWarpgroupThreads;
  static constexpr int kRows = W * kWarpgroupRows;
  static constexpr int kProducerRegisters = W == 2 ? 40 : 32;
  static constexpr int kConsumerRegisters = W == 2 ? 232 : 160;
  static_assert(W == 2 || W == 3, "two or three consumer warpgroups");
  static_assert(kProducerRegisters * kWarpgroupThreads + kConsumerRegisters * kConsumerThreads <=
                    65536,
                "the register file");
};

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
// W: consumer warpgroups (BlockShape).
template <typename T, int D, int NK, int S, bool kPingPong, bool kWideScores, bool kPersistent,
          int W>
__global__ void __launch_bounds__(BlockShape<W>::kThreads, 1)
    ProducerPrefillKernel(const __grid_constant__ CUtensorMap k_map,
                          const __grid_constant__ CUtensorMap v_map,
                          PrefillAttentionArgs<T, T> args, int group, int num_items) {
  static_assert(S >= 3, "the overlapped schedule holds two steps while the next one lands");
  static_assert(!kPingPong || W == 2, "the ping-pong takes turns between two warpgroups");
  using Shape = BlockShape<W>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Slots<D, NK, S> slots(smem_raw);
  const BlockItems<kPersistent> items{num_items};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) slots.Init(Shape::kConsumerThreads);
  __syncthreads();

  if (warp >= Shape::kConsumerWarps) {  // the producer warpgroup
    wgmma::SetMaxRegisters<false, Shape::kProducerRegisters>();
    if (warp != Shape::kConsumerWarps) return;
    int filled = 0;
    for (int round = 0, item; (item = items.Item(round)) < items.count; ++round) {
      const BlockRows b = LocateBlock<NK, Shape::kRows>(args, group, item);
      if (b.empty) continue;
      const int32_t* table_row =
          args.cache.block_tables + size_t(b.seq) * args.cache.max_blocks_per_seq;
      filled = Produce<T, D, NK, S>(k_map, v_map, args.cache, table_row, b.kv_head, 0, b.first_step,
                                    b.num_steps, b.end, slots, filled, lane);
    }
    return;
  }

  wgmma::SetMaxRegisters<true, Shape::kConsumerRegisters>();
  using Turns = std::conditional_t<kPingPong, PingPongTurns, NoTurns>;
  Turns turns{};
  if constexpr (kPingPong) turns.warpgroup = warp / 4;
  turns.Start();
  int filled = 0;
  for (int round = 0, item; (item = items.Item(round)) < items.count; ++round) {
    const BlockRows b = LocateBlock<NK, Shape::kRows>(args, group, item);
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
          bool kPersistent = false, int W = 2>
cudaError_t Launch(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  using Shape = BlockShape<W>;
  constexpr auto kKernel =
      ProducerPrefillKernel<T, D, NK, S, kPingPong, kWideScores, kPersistent, W>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmemBytes<D, NK, S>); e != cudaSuccess) {
    return e;
  }
  KvPoolMaps maps;
  if (const cudaError_t e = EncodeKvPoolMaps(&maps, args.cache.k, args.cache.v, D);
      e != cudaSuccess) {
    return e;
  }
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int num_items = PrefillWorkItems<Shape::kRows>(args, group);
  int blocks = num_items;
  if constexpr (kPersistent) {
    int sm_count = 0;
    if (const cudaError_t e = MultiprocessorCount(&sm_count); e != cudaSuccess) return e;
    blocks = std::min(num_items, sm_count);  // one block per multiprocessor (its registers)
  }
  kKernel<<<blocks, Shape::kThreads, kSmemBytes<D, NK, S>, stream>>>(maps.k, maps.v, args, group,
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
    case kFirstProducerPrefillVariant + 6:  // three consumer warpgroups (192 rows), head_dim 64,
                                            // 64 keys per step in 4 slots
      if constexpr (D == 64) return Launch<T, D, 64, 4, false, false, false, 3>(args, stream);
      return cudaErrorInvalidValue;
    case kFirstProducerPrefillVariant + 7:  // ... persistent
      if constexpr (D == 64) return Launch<T, D, 64, 4, false, false, true, 3>(args, stream);
      return cudaErrorInvalidValue;
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
