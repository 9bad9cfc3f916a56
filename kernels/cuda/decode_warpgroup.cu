// Grouped-query decode attention on Hopper's warpgroup products (wgmma), for groups of many query
// heads per KV head (MQA: 32). The mma.sync kernel (paged_decode_attention.cu) gives each warp 16
// query rows, so a 32-row group costs two warps that both read every K/V step from shared memory
// and meet at a barrier per step; here one warpgroup holds all the group's rows (up to 64, padded
// with zero queries) and each K/V byte in shared memory feeds the whole group in one product.
//
// Grid: (split, KV head, sequence), as the mma.sync kernel, with the same splits and merge.
// Block: one warpgroup (128 threads). The block copies steps of 64 keys of K and V through an
// S-stage cp.async pipeline into 128-byte-swizzled panels and runs FlashAttention-3's
// intra-warpgroup schedule (warpgroup_attention.cuh): step j's scores are issued before step
// j - 1's output product, and step j's softmax runs while that product does. The query rows are
// staged through the last pipeline slot (into registers) before the first copy reaches it.
#include <cstdint>

#include "attention_tile.cuh"
#include "decode_launch.cuh"
#include "decode_warpgroup.cuh"
#include "decode_warpgroup.h"
#include "pdl.cuh"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace warpgroup_attention;  // NOLINT: the steps, softmax and products
using namespace warpgroup_decode;     // NOLINT: the split's keys and the store
using attention::LoadQueryRows;

// 1024 bytes of alignment slack, then S stages (the query rows borrow the last one).
template <int D, int S>
constexpr int kDecodeSmemBytes = 1024 + S* StepLayout<D, kStepKeys>::kStageBytes;

template <typename T, int D, int S>
__global__ void __launch_bounds__(kWarpgroupThreads)
    WarpgroupDecodeKernel(DecodeAttentionArgs<T, T> args, int group, int split_tokens,
                          int num_splits,
                          int min_split_tiles,   // split_tokens 0: the shortest split
                          float* partial_out,    // [num_seqs, num_heads, num_splits, D]
                          float* partial_lse) {  // [num_seqs, num_heads, num_splits], log2 units
  constexpr int NK = kStepKeys;
  using Layout = StepLayout<D, NK>;
  static_assert(kWarpgroupRows * kRow<D> * 2 <= Layout::kStageBytes, "query rows fit a slot");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* stages = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  T* q_smem = reinterpret_cast<T*>(stages + (S - 1) * Layout::kStageBytes);  // [64][kRow<D>]
  AllowNext();  // the merge (a dependent launch) may be scheduled; it waits for this grid's end
  const int split = blockIdx.x, kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  WaitForPrevious();  // the queries, the cache and the lengths come from the kernels before

  const SplitKeys keys = KeysOfSplit(args, seq, split, split_tokens, num_splits, min_split_tiles);
  const int begin = keys.begin, end = keys.end, num_steps = keys.num_steps;
  if (num_steps == 0) {  // a split past the sequence: empty for the merge
    WriteEmptySplit<T, D>(args, seq, kv_head, group, split, num_splits, kWarpgroupThreads,
                          partial_out, partial_lse);
    return;
  }
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;
  auto stage_of = [&](int j) { return stages + (j % S) * Layout::kStageBytes; };
  auto load = [&](int j) {
    LoadStep<T, D, NK, kWarpgroupThreads>(args.cache, table_row, kv_head, begin + j * NK, end,
                                          stage_of(j));
  };
  LoadQueryRows<T, D, kWarpgroupRows, kWarpgroupThreads>(args.q, seq, args.num_heads, kv_head,
                                                         group, 0, group, q_smem);
  CpAsyncCommit();
#pragma unroll
  for (int j = 0; j < S - 1; ++j) {
    if (j < num_steps) load(j);
    CpAsyncCommit();
  }
  CpAsyncWait<S - 1>();  // the query rows
  __syncthreads();
  uint32_t q[D / 16][4];  // this warp's 16 query rows as A fragments
  LoadQueryFragments<D>(q_smem, warp, lane, q);
  // (The schedule's first barrier orders these reads before step S - 1's copies into the slot.)

  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  const int first_key = keys.first_key;
  const int limit[2] = {end, end}, first[2] = {first_key, first_key};
  auto steps = MakeCpAsyncSteps<D, NK, S>(stages, 0, num_steps, load);
  RunOverlappedSteps<T, D, NK>(
      q, 0, num_steps, steps,
      [&](float(&s)[NK / 64][32], int j, float(&alphas)[2]) {
        const int tok0 = begin + j * NK;
        Softmax<D, NK>(s, tok0, limit, first, tok0 + NK > end || tok0 < first_key, scale_log2, st,
                       alphas, lane);
      },
      st);
  CpAsyncWait<0>();

  StoreRows<T, D>(args, st, seq, kv_head, group, split, num_splits, partial_out, partial_lse, warp,
                  lane);
}

template <typename T, int D, int S>
cudaError_t Launch(const DecodeAttentionArgs<T, T>& args, const DecodeKernelChoice& choice,
                   cudaStream_t stream) {
  constexpr int kSmem = kDecodeSmemBytes<D, S>;
  constexpr auto kKernel = WarpgroupDecodeKernel<T, D, S>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmem); e != cudaSuccess) return e;
  return LaunchDecodeGrid<T, T, D>(kKernel, kWarpgroupThreads, kSmem, args, choice, stream);
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
cudaError_t WarpgroupDecodeAttention(const DecodeAttentionArgs<T, T>& args,
                                     const DecodeKernelChoice& choice, cudaStream_t stream) {
  if (!WarpgroupPrefillAvailable()) return cudaErrorNotSupported;
  const int group = args.num_heads / args.cache.num_kv_heads;
  if (!choice.warpgroup || choice.key_tiles * kDecodeTileTokens != kStepKeys ||
      group > kWarpgroupDecodeMaxGroup) {
    return cudaErrorInvalidValue;
  }
  if (choice.producer) return ProducerWarpgroupDecode<T>(args, choice, stream);
  switch (args.cache.head_dim) {
    case 64:
      return LaunchStages<T, 64>(args, choice, stream);
    case 128:
      return LaunchStages<T, 128>(args, choice, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t WarpgroupDecodeAttention<__nv_bfloat16>(
    const DecodeAttentionArgs<__nv_bfloat16, __nv_bfloat16>&, const DecodeKernelChoice&,
    cudaStream_t);
template cudaError_t WarpgroupDecodeAttention<__half>(const DecodeAttentionArgs<__half, __half>&,
                                                      const DecodeKernelChoice&, cudaStream_t);

}  // namespace gqa::kernels::cuda
