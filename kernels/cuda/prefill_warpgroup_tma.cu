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
// memory into registers (no shared memory for them).
#include <cuda.h>

#include <cstdint>

#include "attention_tile.cuh"
#include "pdl.cuh"
#include "prefill_warpgroup.cuh"
#include "prefill_warpgroup.h"
#include "tensor_map.h"
#include "tma.cuh"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;            // NOLINT: kLog2e
using namespace warpgroup_attention;  // NOLINT: the steps, softmax and products
using namespace warpgroup_prefill;    // NOLINT: the block's rows, keys and store

constexpr int kConsumerThreads = kWarpgroups * kWarpgroupThreads;
constexpr int kConsumerWarps = kConsumerThreads / 32;
// + a producer warpgroup, of which one warp copies: a block's registers are granted in whole
// warpgroups, so the idle warps cost nothing that a 9-warp block would not.
constexpr int kBlockThreads = kConsumerThreads + kWarpgroupThreads;
// The registers per thread after the split: the producer hands its share to the consumers
// (40 x 128 + 232 x 256 <= 64k; the kernel starts with 65536 / 384 rounded down, 168).
constexpr int kProducerRegisters = 40;
constexpr int kConsumerRegisters = 232;
constexpr int kTileKeys = kKvMapBoxRows;  // keys per copied box
constexpr int kBoxBytes = kKvMapBoxRows * 128;

// Shared memory: 1024 bytes of alignment slack, S slots, then the 2 S barriers.
template <int D, int NK, int S>
constexpr int kSmemBytes = 1024 + S* StepLayout<D, NK>::kStageBytes + 2 * S * 8;

// The slots as RunOverlappedSteps reads them: the block's step first_step + i sits in slot
// i % S, in that slot's (i / S)-th use.
template <int D, int NK, int S>
struct ProducerSteps {
  unsigned char* stages;
  uint64_t* full;   // [S]: the slot's copies landed
  uint64_t* empty;  // [S]: every consumer thread is done with the slot
  int first_step;

  __device__ int Slot(int j) const { return (j - first_step) % S; }
  __device__ unsigned char* Stage(int j) const {
    return stages + Slot(j) * StepLayout<D, NK>::kStageBytes;
  }
  __device__ void Acquire(int j) { tma::Wait(&full[Slot(j)], ((j - first_step) / S) & 1); }
  __device__ void Release(int j) { tma::Arrive(&empty[Slot(j)]); }
};

// The producer warp fills `stage` with keys tok0 .. tok0 + NK - 1 and arrives on `full`: tiles
// wholly before `end` by TMA (lane t issues tile t), the rest by the whole warp with plain loads,
// zero-filled from `end` on.
template <typename T, int D, int NK>
__device__ __forceinline__ void FillStep(const CUtensorMap& k_map, const CUtensorMap& v_map,
                                         const PagedKvView<T>& cache, const int32_t* table_row,
                                         int kv_head, int tok0, int end, unsigned char* stage,
                                         uint64_t* full, int lane) {
  using Layout = StepLayout<D, NK>;
  constexpr int kTiles = NK / kTileKeys;
  constexpr int kChunksPerRow = D / 8;
  const int copied_tiles = min(kTiles, max(0, (end - tok0) / kTileKeys));
  for (int c = copied_tiles * kTileKeys * kChunksPerRow + lane; c < NK * kChunksPerRow; c += 32) {
    const int t = c / kChunksPerRow, chunk = c % kChunksPerRow;
    const int tok = tok0 + t;
    uint4 k = {0, 0, 0, 0}, v = {0, 0, 0, 0};
    if (tok < end) {
      const size_t src =
          ((size_t(table_row[tok / cache.block_size]) * cache.num_kv_heads + kv_head) *
               cache.block_size +
           tok % cache.block_size) *
              D +
          chunk * 8;
      k = *reinterpret_cast<const uint4*>(cache.k + src);
      v = *reinterpret_cast<const uint4*>(cache.v + src);
    }
    const int dst = (chunk / 8) * Layout::kPanelBytes + wgmma::SwizzledOffset(t, chunk % 8);
    *reinterpret_cast<uint4*>(stage + dst) = k;
    *reinterpret_cast<uint4*>(stage + Layout::kOperandBytes + dst) = v;
  }
  wgmma::FenceProxyAsync();  // the plain stores, visible to the products
  __syncwarp();
  if (lane == 0) {
    tma::ArriveExpectingBytes(full, uint32_t(copied_tiles) * 2 * (D / kPanel) * kBoxBytes);
  }
  __syncwarp();
  if (lane < copied_tiles) {
    const int tok = tok0 + lane * kTileKeys;
    const int row =
        (table_row[tok / cache.block_size] * cache.num_kv_heads + kv_head) * cache.block_size +
        tok % cache.block_size;
#pragma unroll
    for (int pn = 0; pn < D / kPanel; ++pn) {
      const int dst = pn * Layout::kPanelBytes + lane * kBoxBytes;
      tma::Load2d(stage + dst, k_map, pn * kPanel, row, full);
      tma::Load2d(stage + Layout::kOperandBytes + dst, v_map, pn * kPanel, row, full);
    }
  }
}

// This warp's 16 query rows as the A fragments of S = Q.K^T (mma.sync's m16n8k16 A layout:
// fragment r + 2 h is row g + 8 r, columns 8 h + 2 tig and the next), straight from global
// memory; zeros for rows past the sequence's.
template <typename T, int D>
__device__ __forceinline__ void LoadQueryFragmentsFromGlobal(const PrefillAttentionArgs<T, T>& args,
                                                             const BlockRows& b, int group,
                                                             int kv_head, int warp, int lane,
                                                             uint32_t (&q)[D / 16][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = b.row0 + warp * 16 + lane / 4 + 8 * r;
    const bool valid = row < b.rows;
    const T* src = args.q + (valid ? (size_t(b.q_begin + row / group) * args.num_heads +
                                      kv_head * group + row % group) *
                                         D
                                   : 0);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = kk * 16 + 8 * h + 2 * (lane % 4);
        q[kk][r + 2 * h] = valid ? *reinterpret_cast<const uint32_t*>(src + col) : 0u;
      }
    }
  }
}

template <typename T, int D, int NK, int S>
__global__ void __launch_bounds__(kBlockThreads, 1)
    ProducerPrefillKernel(const __grid_constant__ CUtensorMap k_map,
                          const __grid_constant__ CUtensorMap v_map,
                          PrefillAttentionArgs<T, T> args, int group) {
  static_assert(S >= 3, "the overlapped schedule holds two steps while the next one lands");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  unsigned char* stages = reinterpret_cast<unsigned char*>(
      (reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
  uint64_t* full = reinterpret_cast<uint64_t*>(stages + S * StepLayout<D, NK>::kStageBytes);
  uint64_t* empty = full + S;
  const int kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const BlockRows b = LocateBlock<NK>(args, group);
  if (b.empty) return;
  if (threadIdx.x == 0) {
    for (int s = 0; s < S; ++s) {
      tma::InitBarrier(&full[s], 1);
      tma::InitBarrier(&empty[s], kConsumerThreads);
    }
    tma::FenceBarrierInit();
  }
  __syncthreads();
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;

  if (warp >= kConsumerWarps) {  // the producer warpgroup
    wgmma::SetMaxRegisters<false, kProducerRegisters>();
    if (warp != kConsumerWarps) return;
    for (int i = 0; b.first_step + i < b.num_steps; ++i) {
      const int slot = i % S;
      if (i >= S) tma::Wait(&empty[slot], (i / S - 1) & 1);
      FillStep<T, D, NK>(k_map, v_map, args.cache, table_row, kv_head, (b.first_step + i) * NK,
                         b.end, stages + slot * StepLayout<D, NK>::kStageBytes, &full[slot], lane);
    }
    return;
  }

  wgmma::SetMaxRegisters<true, kConsumerRegisters>();
  uint32_t q[D / 16][4];
  LoadQueryFragmentsFromGlobal<T, D>(args, b, group, kv_head, warp, lane, q);
  const RowKeys keys = KeysOfRows(b, group, args.window, warp, lane);
  WarpgroupState<D> st;
  st.Init();
  const float scale_log2 = args.scale * kLog2e;
  ProducerSteps<D, NK, S> steps{stages, full, empty, b.first_step};
  RunOverlappedSteps<T, D, NK>(
      q, b.first_step, b.num_steps, steps,
      [&](float(&s)[NK / 64][32], int j, float(&alphas)[2]) {
        Softmax<D, NK>(s, j * NK, keys.limit, keys.first, keys.NeedsMask(j * NK, NK), scale_log2,
                       st, alphas, lane);
      },
      st);
  StoreRows<T, D>(args, b, group, kv_head, st, warp, lane);
}

template <typename T, int D, int NK, int S>
cudaError_t Launch(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  constexpr auto kKernel = ProducerPrefillKernel<T, D, NK, S>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(kSmemBytes<D, NK, S>); e != cudaSuccess) {
    return e;
  }
  CUtensorMap k_map, v_map;
  if (const cudaError_t e = EncodeKvPoolMap(&k_map, args.cache.k, D); e != cudaSuccess) return e;
  if (const cudaError_t e = EncodeKvPoolMap(&v_map, args.cache.v, D); e != cudaSuccess) return e;
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int row_tiles = (args.max_query_len * group + kBlockRows - 1) / kBlockRows;
  const dim3 grid(row_tiles, args.cache.num_kv_heads, args.num_seqs);
  kKernel<<<grid, kBlockThreads, kSmemBytes<D, NK, S>, stream>>>(k_map, v_map, args, group);
  return cudaGetLastError();
}

template <typename T, int D>
cudaError_t LaunchVariant(const PrefillAttentionArgs<T, T>& args, cudaStream_t stream) {
  switch (args.warpgroup_variant) {
    case kFirstProducerPrefillVariant:
      return Launch<T, D, 64, 4>(args, stream);
    case kFirstProducerPrefillVariant + 1:
      return Launch<T, D, 128, 3>(args, stream);
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
