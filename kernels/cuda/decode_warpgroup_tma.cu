// Grouped-query decode attention on Hopper with a producer warp: the warpgroup decode kernel of
// decode_warpgroup.cu (one warpgroup holds the whole group, up to 64 query rows; wgmma products
// reading 64-key steps of K and V from 128-byte-swizzled shared memory; FlashAttention-3's
// overlapped schedule), with its copies taken off the warps that compute.
//
// Grid: (split, KV head, sequence) with the same splits and merge as the other decode kernels.
// Block: the consumer warpgroup and a producer warpgroup (256 threads), of which one warp fills
// S slots with TMA copies of whole 16-key cache tiles (producer_steps.cuh); a tile that reaches
// past the split's end is copied with plain loads and zero-filled from the end on. The producer
// hands most of its registers to the consumers (setmaxnreg), so two blocks fit a multiprocessor
// at 3 slots. The query fragments come straight from global memory into registers.
#include <cuda.h>

#include <cstdint>

#include "attention_tile.cuh"
#include "decode_launch.cuh"
#include "decode_warpgroup.cuh"
#include "decode_warpgroup.h"
#include "pdl.cuh"
#include "producer_steps.cuh"
#include "tensor_map.h"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace warpgroup_attention;  // NOLINT: the steps, softmax and products
using namespace warpgroup_decode;     // NOLINT: the split's keys and the store
using namespace producer_steps;       // NOLINT: the producer's slots and copies
using attention::kLog2e;

constexpr int kBlockThreads = 2 * kWarpgroupThreads;
constexpr int kConsumerWarps = kWarpgroupThreads / 32;
// Two blocks per multiprocessor start with 128 registers per thread; the producer keeps 40 and
// the consumers take the rest (40 + 216 = 2 x 128).
constexpr int kBlocksPerSm = 2;
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 216;

template <typename T, int D, int S>
__global__ void __launch_bounds__(kBlockThreads, kBlocksPerSm)
    ProducerDecodeKernel(const __grid_constant__ CUtensorMap k_map,
                         const __grid_constant__ CUtensorMap v_map, DecodeAttentionArgs<T, T> args,
                         int group, int split_tokens, int num_splits,
                         int min_split_tiles,   // split_tokens 0: the shortest split
                         float* partial_out,    // [num_seqs, num_heads, num_splits, D]
                         float* partial_lse) {  // [num_seqs, num_heads, num_splits], log2 units
  constexpr int NK = kStepKeys;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Slots<D, NK, S> slots(smem_raw);
  AllowNext();  // the merge (a dependent launch) may be scheduled; it waits for this grid's end
  const int split = blockIdx.x, kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) slots.Init(kWarpgroupThreads);
  WaitForPrevious();  // the queries, the cache and the lengths come from the kernels before

  const SplitKeys keys = KeysOfSplit(args, seq, split, split_tokens, num_splits, min_split_tiles);
  if (keys.num_steps == 0) {  // a split past the sequence: empty for the merge
    WriteEmptySplit<T, D>(args, seq, kv_head, group, split, num_splits, kBlockThreads, partial_out,
                          partial_lse);
    return;
  }
  __syncthreads();               // the barriers are initialized
  if (warp >= kConsumerWarps) {  // the producer warpgroup
    wgmma::SetMaxRegisters<false, kProducerRegisters>();
    if (warp == kConsumerWarps) {
      const int32_t* table_row =
          args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;
      Produce<T, D, NK, S>(k_map, v_map, args.cache, table_row, kv_head, keys.begin, 0,
                           keys.num_steps, keys.end, slots, 0, lane);
    }
    return;
  }

  wgmma::SetMaxRegisters<true, kConsumerRegisters>();
  uint32_t q[D / 16][4];
  LoadQueryFragmentsFromGlobal<D>(
      [&](int r) -> const T* {
        const int row = warp * 16 + r;
        if (row >= group) return nullptr;
        return args.q + (size_t(seq) * args.num_heads + kv_head * group + row) * D;
      },
      lane, q);
  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  const int limit[2] = {keys.end, keys.end}, first[2] = {keys.first_key, keys.first_key};
  ConsumerSteps<D, NK, S> steps{slots, 0};
  RunOverlappedSteps<T, D, NK>(
      q, 0, keys.num_steps, steps,
      [&](float(&s)[NK / 64][32], int j, float(&alphas)[2]) {
        const int tok0 = keys.begin + j * NK;
        Softmax<D, NK>(s, tok0, limit, first, tok0 + NK > keys.end || tok0 < keys.first_key,
                       scale_log2, st, alphas, lane);
      },
      st);
  StoreRows<T, D>(args, st, seq, kv_head, group, split, num_splits, partial_out, partial_lse, warp,
                  lane);
}

template <typename T, int D, int S>
cudaError_t Launch(const DecodeAttentionArgs<T, T>& args, const DecodeKernelChoice& choice,
                   cudaStream_t stream) {
  constexpr int kSmem = kSmemBytes<D, kStepKeys, S>;
  constexpr auto kKernel = ProducerDecodeKernel<T, D, S>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  KvPoolMaps maps;
  if (const cudaError_t e = EncodeKvPoolMaps(&maps, args.cache.k, args.cache.v, D);
      e != cudaSuccess) {
    return e;
  }
  return LaunchDecodeGrid<T, T, D>(kKernel, kBlockThreads, kSmem, args, choice, stream, maps.k,
                                   maps.v);
}

template <typename T, int D>
cudaError_t LaunchStages(const DecodeAttentionArgs<T, T>& args, const DecodeKernelChoice& choice,
                         cudaStream_t stream) {
  switch (choice.stages) {
    case 3:
      return Launch<T, D, 3>(args, choice, stream);
    case 4:
      return Launch<T, D, 4>(args, choice, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

template <typename T>
cudaError_t ProducerWarpgroupDecode(const DecodeAttentionArgs<T, T>& args,
                                    const DecodeKernelChoice& choice, cudaStream_t stream) {
  // A copied tile starts at a split's first key and must not cross a cache block.
  if (args.cache.block_size % kTileKeys != 0 || choice.split_tokens % kTileKeys != 0) {
    return cudaErrorInvalidValue;
  }
  switch (args.cache.head_dim) {
    case 64:
      return LaunchStages<T, 64>(args, choice, stream);
    case 128:
      return LaunchStages<T, 128>(args, choice, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t ProducerWarpgroupDecode<__nv_bfloat16>(
    const DecodeAttentionArgs<__nv_bfloat16, __nv_bfloat16>&, const DecodeKernelChoice&,
    cudaStream_t);
template cudaError_t ProducerWarpgroupDecode<__half>(const DecodeAttentionArgs<__half, __half>&,
                                                     const DecodeKernelChoice&, cudaStream_t);

}  // namespace gqa::kernels::cuda
