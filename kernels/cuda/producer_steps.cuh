// The producer-consumer pipeline of the warpgroup attention kernels with a producer warp
// (prefill_warpgroup_tma.cu, decode_warpgroup_tma.cu): S slots of NK keys of K and V, which one
// producer warp fills with the bulk tensor copy engine (TMA) and the consumer warpgroups read
// through RunOverlappedSteps (warpgroup_attention.cuh). Each slot has two barriers: `full`
// completes when the slot's copies landed (the producer's arrival and the TMA bytes), `empty`
// when every consumer thread finished the products that read it.
#pragma once

#include <cuda.h>

#include <cstdint>

#include "gqa/kernels/paged_kv.h"
#include "tensor_map.h"
#include "tma.cuh"
#include "warpgroup_attention.cuh"
#include "wgmma.cuh"

namespace gqa::kernels::cuda::producer_steps {

using warpgroup_attention::kPanel;
using warpgroup_attention::StepLayout;

constexpr int kTileKeys = kKvMapBoxRows;  // keys per copied box
constexpr int kBoxBytes = kKvMapBoxRows * 128;

// Shared memory of S slots and their 2 S barriers, with 1024 bytes of alignment slack.
template <int D, int NK, int S>
constexpr int kSmemBytes = 1024 + S* StepLayout<D, NK>::kStageBytes + 2 * S * 8;

// The slots at the 1024-byte aligned start of `smem` and the barriers after them.
template <int D, int NK, int S>
struct Slots {
  unsigned char* stages;
  uint64_t* full;   // [S]: the slot's copies landed
  uint64_t* empty;  // [S]: every consumer thread is done with the slot

  __device__ explicit Slots(unsigned char* smem)
      : stages(reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(smem) + 1023) &
                                                ~uintptr_t(1023))),
        full(reinterpret_cast<uint64_t*>(stages + S * StepLayout<D, NK>::kStageBytes)),
        empty(full + S) {}

  // One thread: the barriers, before the block barrier that precedes any use.
  __device__ void Init(int consumer_threads) const {
    for (int s = 0; s < S; ++s) {
      tma::InitBarrier(&full[s], 1);
      tma::InitBarrier(&empty[s], consumer_threads);
    }
    tma::FenceBarrierInit();
  }
  __device__ unsigned char* Stage(int slot) const {
    return stages + slot * StepLayout<D, NK>::kStageBytes;
  }
};

// The slots as RunOverlappedSteps reads them: with `filled` steps of earlier work items before
// (a persistent block's), the block's step first_step + i is its (filled + i)-th: it sits in slot
// (filled + i) % S, in that slot's ((filled + i) / S)-th use.
template <int D, int NK, int S>
struct ConsumerSteps {
  Slots<D, NK, S> slots;
  int first_step;
  int filled = 0;

  __device__ int Index(int j) const { return filled + j - first_step; }
  __device__ int Slot(int j) const { return Index(j) % S; }
  __device__ unsigned char* Stage(int j) const { return slots.Stage(Slot(j)); }
  __device__ void Acquire(int j) { tma::Wait(&slots.full[Slot(j)], (Index(j) / S) & 1); }
  __device__ void Release(int j) { tma::Arrive(&slots.empty[Slot(j)]); }
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
      const int64_t slot =
          int64_t(table_row[tok / cache.block_size]) * cache.block_size + tok % cache.block_size;
      const size_t src = cache.Offset(slot, kv_head) + chunk * 8;
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
    // The pool row, an int: pools up to 2^31 rows of head_dim values, as the map declares.
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

// The producer warp's loop: fills the slots with steps first_step .. num_steps - 1 (keys
// key0 + NK j ..), each slot once the consumers released its previous step; `filled` steps of
// earlier work items went before. Returns the steps filled, these included.
template <typename T, int D, int NK, int S>
__device__ __forceinline__ int Produce(const CUtensorMap& k_map, const CUtensorMap& v_map,
                                       const PagedKvView<T>& cache, const int32_t* table_row,
                                       int kv_head, int key0, int first_step, int num_steps,
                                       int end, const Slots<D, NK, S>& slots, int filled,
                                       int lane) {
  for (int j = first_step; j < num_steps; ++j, ++filled) {
    const int slot = filled % S;
    if (filled >= S) tma::Wait(&slots.empty[slot], (filled / S - 1) & 1);
    FillStep<T, D, NK>(k_map, v_map, cache, table_row, kv_head, key0 + j * NK, end,
                       slots.Stage(slot), &slots.full[slot], lane);
  }
  return filled;
}

}  // namespace gqa::kernels::cuda::producer_steps
