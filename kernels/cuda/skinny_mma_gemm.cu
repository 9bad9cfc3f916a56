// Tensor-core skinny products: see skinny_gemm_cuda.h and gqa/kernels/skinny_mma_plan.h.
//
// Block (4 warps) = kRowTiles row blocks of 64 weight rows x one k range (a split); warp w owns
// weight rows 16w..16w+15 of each of the block's row blocks and every x row of the bucket
// (8 x kTiles), each x fragment it reads multiplied with all kRowTiles of its weight tiles. The
// weights go straight from memory into registers: each lane keeps a ring of kRing stages (64 k
// each, four 16-byte loads per stage and row tile) in flight, the loop unrolled by kRing so that
// every ring slot is a register, and slot j is refilled with the stage kRing further on as soon
// as its products are issued. Partial sums, split counters and sums of squares stay per row
// block of 64 rows (the plan's), a block of two using the counter of its first. The first
// kRing stages are issued before the kernel waits for the kernels before it (weights never
// depend on them). The loop meets no barrier for the weights; x alone goes through shared
// memory, in windows of several stages (the split's whole k range when it fits in
// kWindowBytes) copied with cp.async, double-buffered when a split has more than one window, so
// the block meets two barriers (three with a fused norm or SiLU) per window, not per stage.
//
// The mma.sync m16n8k16 fragments are read with 16-byte loads instead of ldmatrix by permuting
// k, the same way for both operands (a dot product does not care): for lane (g, q) = (lane / 4,
// lane % 4) and a 32-wide slice of k, the fragment elements that mma calls k = 2q, 2q+1, 2q+8,
// 2q+9 are physical k = 8q .. 8q+3 of the slice for the first product and 8q+4 .. 8q+7 for the
// second. One 16-byte load of weight row g (and one of row g + 8) and one of x row g per 8-row x
// tile feed two products. Shared x rows are 64 k (128 bytes) per stage with their 16-byte chunks
// swizzled (chunk c of row r stored at c ^ 4 (r & 1)) so that the 8 lanes of a load phase (rows
// 2p and 2p + 1, chunks q) hit 8 distinct bank groups.
#include <algorithm>
#include <cstdint>
#include <iterator>
#include <type_traits>
#include <utility>

#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"
#include "gqa/kernels/skinny_mma_tuning_cuda.h"
#include "pdl.cuh"
#include "ptx.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = kSkinnyMmaBlockWeightRows;  // 64 = kWarps x 16
constexpr int kStageK = kSkinnyMmaStageK;         // 64
constexpr int kChunks = kStageK / 8;              // 16-byte chunks per shared row
constexpr int kWindowBytes = 32 << 10;            // shared x bytes per window (one buffer)
static_assert(kRows == kWarps * 16 && kChunks == 8);

// Ring depth by x-row tiles: kRing x 8 KB of weights in flight per block. Both defaults keep
// the kernel under 170 registers (ptxas: 168 at 8-16 rows with 6, 158-168 at 32-64 rows with 4)
// so that three blocks fit a multiprocessor and a split plan's ~2 per multiprocessor all run in
// one wave; 8 at 8 rows takes 214 registers (two blocks), a second wave for 288 blocks.
// One row tile per warp (64 weight rows per block) until a GPU run says otherwise.
constexpr SkinnyMmaVariant DefaultVariant(int tiles) { return {tiles <= 2 ? 6 : 4, 1}; }

// f(ring, row_tiles) for every variant of kSkinnyMmaVariants, as std::integral_constants.
template <typename F, size_t... I>
void ForEachVariant(F&& f, std::index_sequence<I...>) {
  (f(std::integral_constant<int, kSkinnyMmaVariants[I].ring_stages>{},
     std::integral_constant<int, kSkinnyMmaVariants[I].row_tiles>{}),
   ...);
}
template <typename F>
void ForEachVariant(F&& f) {
  ForEachVariant(f, std::make_index_sequence<std::size(kSkinnyMmaVariants)>{});
}

__device__ __forceinline__ int Swizzled(int row, int chunk) {
  return row * kChunks + (chunk ^ ((row & 1) << 2));
}

template <typename T, typename Out>
struct Args {
  const T* x;  // [m, x_stride]
  int x_stride;
  const T* w;     // [n, k]
  const T* bias;  // [n] or nullptr
  int m, n, k;
  Out* y;          // [m, n]
  int row_blocks;  // of kRows weight rows (a block takes kRowTiles of them)
  int splits, stages_per_split;
  int window_stages;  // x stages per shared window
  float* partials;    // [splits][row blocks][kRows][8 kTiles] when splits > 1
  int* counters;      // [row blocks], zero on entry and on exit
  SkinnyMmaFusion<T> fusion;
};

// This lane's weights of one stage (64 k from k0) into registers: rows g and g + 8 of its warp's
// 16 (pointers lo and hi, rows past n read as zero), physical chunks q and 4 + q (one per
// 32-wide slice), as w[2 slice + (row g + 8)].
template <typename T>
__device__ __forceinline__ void LoadWeightStage(const T* lo, const T* hi, bool lo_valid,
                                                bool hi_valid, int k, int k0, int q,
                                                uint4 (&w)[4]) {
#pragma unroll
  for (int slice = 0; slice < 2; ++slice) {
    const int kk = k0 + slice * 32 + q * 8;
    w[2 * slice] = LoadStreaming16(lo + kk, lo_valid && kk < k);
    w[2 * slice + 1] = LoadStreaming16(hi + kk, hi_valid && kk < k);
  }
}

// x rows of `stages` stages from k0 (8 kTiles rows each; rows >= m and k >= k read as zero) into
// a window [stages][8 kTiles][kChunks]. With `up` (a gate|up input), the up half of each row (k
// further on) goes to the same place of `up`.
template <typename T, int kTiles>
__device__ __forceinline__ void LoadInputWindow(const T* x, int x_stride, int m, int k, int k0,
                                                int stages, uint4* dst, uint4* up) {
  constexpr int kStageChunks = 8 * kTiles * kChunks;
  for (int i = threadIdx.x; i < stages * kStageChunks; i += kThreads) {
    const int s = i / kStageChunks, r = i % kStageChunks / kChunks, chunk = i % kChunks;
    const int kk = k0 + s * kStageK + chunk * 8;
    const bool valid = r < m && kk < k;
    const T* src = x + size_t(r) * x_stride + kk;
    const int at = s * kStageChunks + Swizzled(r, chunk);
    CpAsync16(dst + at, valid ? src : x, valid);
    if (up) CpAsync16(up + at, valid ? src + k : x, valid);
  }
}

// gate = T(silu(gate) * up) in place over a window of `stages` stages, as SiluMul computes it.
template <typename T, int kTiles>
__device__ __forceinline__ void SiluGateUpWindow(int stages, uint4* gate, const uint4* up) {
  for (int i = threadIdx.x; i < stages * 8 * kTiles * kChunks; i += kThreads) {
    Vec8<T> g{gate[i]};
    const Vec8<T> u{up[i]};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float gv = g.Get(e);
      g.Set(e, gv / (1.0f + __expf(-gv)) * u.Get(e));
    }
    gate[i] = g.raw;
  }
}

// x rows of a window of `stages` stages from k0, staged as the residual stream, normalised in
// place as AddRmsNorm does: x = T(norm_weight[c] * (x * inv_rms[row])).
template <typename T, int kTiles>
__device__ __forceinline__ void NormalizeInputWindow(const T* norm_weight, const float* inv_rms,
                                                     int k, int k0, int stages, uint4* window) {
  constexpr int kStageChunks = 8 * kTiles * kChunks;
  for (int i = threadIdx.x; i < stages * kStageChunks; i += kThreads) {
    const int s = i / kStageChunks, r = i % kStageChunks / kChunks, chunk = i % kChunks;
    const int kk = k0 + s * kStageK + chunk * 8;
    if (kk >= k) continue;
    const int at = s * kStageChunks + Swizzled(r, chunk);
    Vec8<T> x{window[at]};
    const Vec8<T> w{__ldg(reinterpret_cast<const uint4*>(norm_weight + kk))};
#pragma unroll
    for (int e = 0; e < 8; ++e) x.Set(e, w.Get(e) * (x.Get(e) * inv_rms[r]));
    window[at] = x.raw;
  }
}

// inv_rms[r] for the bucket's rows from the sums of squares [blocks][kSkinnyMmaMaxRows] the
// product before left (added in block order).
__device__ __forceinline__ void InverseRms(const float* sums, int blocks, int m, int dim, float eps,
                                           int rows, float* inv_rms) {
  for (int r = threadIdx.x; r < rows; r += kThreads) {
    float sum = 0.0f;
    if (r < m) {
      for (int b = 0; b < blocks; ++b) sum += __ldcg(sums + b * kSkinnyMmaMaxRows + r);
    }
    inv_rms[r] = rsqrtf(sum / float(dim) + eps);
  }
}

// acc[r][t] += this warp's 16 weight rows of row tile r (this lane's part of them in w[r], as
// LoadWeightStage leaves it) x x-row tile t over one stage (64 k) of x in shared memory; each x
// fragment read once for all row tiles.
template <typename T, int kTiles, int kRowTiles>
__device__ __forceinline__ void MultiplyStage(const uint4 (&w)[kRowTiles][4], const uint4* x_stage,
                                              int lane, float (&acc)[kRowTiles][kTiles][4]) {
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int slice = 0; slice < 2; ++slice) {
    uint32_t a0[kRowTiles][4], a1[kRowTiles][4];
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
      const uint4 lo = w[r][2 * slice], hi = w[r][2 * slice + 1];
      a0[r][0] = lo.x, a0[r][1] = hi.x, a0[r][2] = lo.y, a0[r][3] = hi.y;
      a1[r][0] = lo.z, a1[r][1] = hi.z, a1[r][2] = lo.w, a1[r][3] = hi.w;
    }
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const uint4 b = x_stage[Swizzled(t * 8 + g, slice * 4 + q)];
#pragma unroll
      for (int r = 0; r < kRowTiles; ++r) {
        Mma<T>(acc[r][t], a0[r], b.x, b.y);
        Mma<T>(acc[r][t], a1[r], b.z, b.w);
      }
    }
  }
}

// Thread (warp, g, q)'s four results of tile t: weight rows 16 warp + g (+8), x rows 8t + 2q (+1),
// in acc order; the same slots in a partial-sum tile of [kRows][8 kTiles].
template <int kTiles>
__device__ __forceinline__ int PartialIndex(int warp, int lane, int t, int e) {
  const int row = warp * 16 + lane / 4 + (e >= 2 ? 8 : 0);
  const int col = t * 8 + (lane % 4) * 2 + (e & 1);
  return row * (8 * kTiles) + col;
}

// The sums of squares of a row block's new residual columns, per x row, into
// sums[row block][kSkinnyMmaMaxRows] (lanes of one q hold the same x rows: add over g, then over
// the warps in order).
template <int kTiles>
__device__ __forceinline__ void StoreSquareSums(float (&sq)[kTiles][2], int warp, int lane,
                                                int row_block, float* sums) {
  __shared__ float per_warp[kWarps][8 * kTiles];
  __syncthreads();  // the row block before (a block of two row tiles) read per_warp
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
      for (int offset = 4; offset < 32; offset *= 2) {
        sq[t][j] += __shfl_xor_sync(0xffffffffu, sq[t][j], offset);
      }
      if (lane < 4) per_warp[warp][t * 8 + lane * 2 + j] = sq[t][j];
    }
  }
  __syncthreads();
  if (threadIdx.x < 8 * kTiles) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += per_warp[w][threadIdx.x];
    sums[row_block * kSkinnyMmaMaxRows + threadIdx.x] = sum;
  }
}

// Row block row_block's results (this thread's in acc) into y, or added into the residual.
template <typename T, typename Out, int kTiles>
__device__ __forceinline__ void StoreResults(const Args<T, Out>& a, int row_block, int warp,
                                             int lane, const float (&acc)[kTiles][4]) {
  T* residual = a.fusion.residual;
  const int row0 = row_block * kRows;
  float sq[kTiles][2] = {};  // squares of the new residual, x rows 8t + 2q (+1)
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int row = row0 + warp * 16 + lane / 4 + (e >= 2 ? 8 : 0);
      const int col = t * 8 + (lane % 4) * 2 + (e & 1);
      if (row >= a.n || col >= a.m) continue;
      const float b = a.bias ? ToFloat(a.bias[row]) : 0.0f;
      const size_t at = size_t(col) * a.n + row;
      if constexpr (std::is_same_v<Out, T>) {
        if (residual) {  // as AddRmsNorm: the product rounded to T, then the sum rounded to T
          const float sum = ToFloat(residual[at]) + ToFloat(FromFloat<T>(acc[t][e] + b));
          const T stored = FromFloat<T>(sum);
          residual[at] = stored;
          sq[t][e & 1] += ToFloat(stored) * ToFloat(stored);
          continue;
        }
      }
      a.y[at] = FromFloat<Out>(acc[t][e] + b);
    }
  }
  if (residual) StoreSquareSums<kTiles>(sq, warp, lane, row_block, a.fusion.norm_sums_out);
}

// The row blocks of this block (kRowTiles from blockIdx.x kRowTiles, those below row_blocks).
template <typename T, typename Out, int kRowTiles>
__device__ __forceinline__ int RowTilesHere(const Args<T, Out>& a) {
  return min(kRowTiles, a.row_blocks - int(blockIdx.x) * kRowTiles);
}

// Splits: every block stores its partial tiles; the last of a row block range to arrive (one
// counter per block, at its first row block) adds the tiles in split order (its own from
// registers) and stores the result.
template <typename T, typename Out, int kTiles, int kRowTiles>
__device__ __forceinline__ void ReduceSplits(const Args<T, Out>& a, int warp, int lane,
                                             const float (&acc)[kRowTiles][kTiles][4]) {
  constexpr int kTileFloats = kRows * 8 * kTiles;
  const int split = blockIdx.y, first_block = blockIdx.x * kRowTiles;
  const int tiles = RowTilesHere<T, Out, kRowTiles>(a);
  auto tile_of = [&](int s, int r) {
    return a.partials + (size_t(s) * a.row_blocks + first_block + r) * kTileFloats;
  };
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r) {
    if (r >= tiles) break;
    float* mine = tile_of(split, r);
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) mine[PartialIndex<kTiles>(warp, lane, t, e)] = acc[r][t][e];
    }
  }
  __threadfence();
  __syncthreads();
  __shared__ int arrived_before;
  if (threadIdx.x == 0) arrived_before = atomicAdd(a.counters + first_block, 1);
  __syncthreads();
  if (arrived_before != a.splits - 1) return;
  __threadfence();
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r) {
    if (r >= tiles) break;
    float sum[kTiles][4] = {};
    for (int s = 0; s < a.splits; ++s) {
      const float* tile = tile_of(s, r);
#pragma unroll
      for (int t = 0; t < kTiles; ++t) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          sum[t][e] +=
              s == split ? acc[r][t][e] : __ldcg(tile + PartialIndex<kTiles>(warp, lane, t, e));
        }
      }
    }
    StoreResults<T, Out, kTiles>(a, first_block + r, warp, lane, sum);
  }
  if (threadIdx.x == 0) a.counters[first_block] = 0;
}

// Shared x windows of a block's split (stages [first, first + count)): window v holds stages
// [v W, v W + W) of the split (W = window_stages) in buffer v & 1 of smem, each buffer
// [W][8 kTiles][kChunks] chunks, then as many of up halves with a gate|up input.
template <typename T, typename Out, int kTiles>
__device__ __forceinline__ uint4* WindowBuffer(const Args<T, Out>& a, int v, uint4* smem) {
  const int gate_chunks = a.window_stages * 8 * kTiles * kChunks;
  return smem + (v & 1) * (a.fusion.silu_gate_up ? 2 : 1) * gate_chunks;
}

template <typename T, typename Out, int kTiles>
__device__ __forceinline__ int WindowStages(const Args<T, Out>& a, int count, int v) {
  return min(a.window_stages, count - v * a.window_stages);
}

// Issues the copies of window v (one cp.async group).
template <typename T, typename Out, int kTiles>
__device__ __forceinline__ void LoadWindow(const Args<T, Out>& a, int first, int count, int v,
                                           uint4* smem) {
  uint4* gate = WindowBuffer<T, Out, kTiles>(a, v, smem);
  uint4* up = a.fusion.silu_gate_up ? gate + a.window_stages * 8 * kTiles * kChunks : nullptr;
  LoadInputWindow<T, kTiles>(a.x, a.x_stride, a.m, a.k, (first + v * a.window_stages) * kStageK,
                             WindowStages<T, Out, kTiles>(a, count, v), gate, up);
  CpAsyncCommit();
}

// Window v ready to multiply (its copies issued before): issues window v + 1 into the other
// buffer once every warp is done with window v - 1 there, waits for window v, applies the fused
// norm or SiLU. Returns window v's buffer.
template <typename T, typename Out, int kTiles>
__device__ __forceinline__ const uint4* BeginWindow(const Args<T, Out>& a, int first, int count,
                                                    int v, uint4* smem, const float* inv_rms) {
  __syncthreads();  // window v - 1 read by all (and inv_rms written)
  if ((v + 1) * a.window_stages < count) {
    LoadWindow<T, Out, kTiles>(a, first, count, v + 1, smem);
    CpAsyncWait<1>();
  } else {
    CpAsyncWait<0>();
  }
  __syncthreads();  // window v visible to all
  uint4* window = WindowBuffer<T, Out, kTiles>(a, v, smem);
  const int stages = WindowStages<T, Out, kTiles>(a, count, v);
  if (a.fusion.norm_weight != nullptr) {
    const int k0 = (first + v * a.window_stages) * kStageK;
    NormalizeInputWindow<T, kTiles>(a.fusion.norm_weight, inv_rms, a.k, k0, stages, window);
    __syncthreads();
  } else if (a.fusion.silu_gate_up) {
    SiluGateUpWindow<T, kTiles>(stages, window, window + a.window_stages * 8 * kTiles * kChunks);
    __syncthreads();
  }
  return window;
}

template <typename T, typename Out, int kTiles, int kRing, int kRowTiles>
__global__ void __launch_bounds__(kThreads) SkinnyMmaKernel(const Args<T, Out> a) {
  constexpr int kStageChunks = 8 * kTiles * kChunks;  // x chunks per stage
  extern __shared__ uint4 smem[];  // x windows: [1 or 2][window_stages][kStageChunks] (x2 gate|up)
  __shared__ float inv_rms[8 * kTiles];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int total_stages = (a.k + kStageK - 1) / kStageK;
  const int first = blockIdx.y * a.stages_per_split;
  const int count = min(a.stages_per_split, total_stages - first);
  // Row tile r of the block: weight rows (blockIdx.x kRowTiles + r) kRows + 16 warp + g (+ 8).
  const T* lo[kRowTiles];  // [k] weight row g of the warp's 16 in row tile r
  const T* hi[kRowTiles];  // [k] weight row g + 8
  bool lo_valid[kRowTiles], hi_valid[kRowTiles];
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r) {
    const int lo_row = (blockIdx.x * kRowTiles + r) * kRows + warp * 16 + lane / 4;
    lo[r] = a.w + size_t(min(lo_row, a.n - 1)) * a.k;
    hi[r] = a.w + size_t(min(lo_row + 8, a.n - 1)) * a.k;
    lo_valid[r] = lo_row < a.n;
    hi_valid[r] = lo_row + 8 < a.n;
  }
  auto load_weights = [&](int i, uint4(&w)[kRowTiles][4]) {
#pragma unroll
    for (int r = 0; r < kRowTiles; ++r) {
      LoadWeightStage(lo[r], hi[r], lo_valid[r], hi_valid[r], a.k, (first + i) * kStageK, lane % 4,
                      w[r]);
    }
  };

  uint4 ring[kRing][kRowTiles][4];  // stage i in slot i % kRing
#pragma unroll
  for (int j = 0; j < kRing; ++j) {
    if (j < count) load_weights(j, ring[j]);
  }
  WaitForPrevious();
  LoadWindow<T, Out, kTiles>(a, first, count, 0, smem);
  if (a.fusion.norm_weight != nullptr) {  // while the first window's copies fly
    InverseRms(a.fusion.norm_sums_in, a.fusion.norm_sum_blocks, a.m, a.k, a.fusion.eps, 8 * kTiles,
               inv_rms);
  }

  float acc[kRowTiles][kTiles][4] = {};
  const uint4* window = nullptr;
  int v = 0, in_window = 0;  // window, stage within it
  for (int base = 0; base < count; base += kRing) {
#pragma unroll
    for (int j = 0; j < kRing; ++j) {
      const int i = base + j;
      if (i >= count) break;
      if (in_window == 0) window = BeginWindow<T, Out, kTiles>(a, first, count, v, smem, inv_rms);
      MultiplyStage<T, kTiles, kRowTiles>(ring[j], window + in_window * kStageChunks, lane, acc);
      if (i + kRing < count) load_weights(i + kRing, ring[j]);
      if (++in_window == a.window_stages) {
        in_window = 0;
        ++v;
      }
    }
  }
  AllowNext();
  if (a.splits > 1) {
    ReduceSplits<T, Out, kTiles, kRowTiles>(a, warp, lane, acc);
    return;
  }
  const int tiles = RowTilesHere<T, Out, kRowTiles>(a);
#pragma unroll
  for (int r = 0; r < kRowTiles; ++r) {
    if (r < tiles) StoreResults<T, Out, kTiles>(a, blockIdx.x * kRowTiles + r, warp, lane, acc[r]);
  }
}

template <typename T, typename Out, int kTiles, int kRing, int kRowTiles>
cudaError_t Launch(Args<T, Out> a, cudaStream_t stream) {
  // Windows of at most kWindowBytes, as even as whole stages allow; two buffers when a split
  // has more than one.
  const int stage_bytes = 8 * kTiles * kChunks * 16 * (a.fusion.silu_gate_up ? 2 : 1);
  const int most = std::max(1, kWindowBytes / stage_bytes);
  const int windows = (a.stages_per_split + most - 1) / most;
  a.window_stages = (a.stages_per_split + windows - 1) / windows;
  const int smem = (windows > 1 ? 2 : 1) * a.window_stages * stage_bytes;
  constexpr auto kKernel = SkinnyMmaKernel<T, Out, kTiles, kRing, kRowTiles>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(smem); e != cudaSuccess) return e;
  const int blocks = (a.row_blocks + kRowTiles - 1) / kRowTiles;
  return LaunchAfterPrevious(kKernel, dim3(blocks, a.splits), dim3(kThreads), smem, stream, a);
}

// kEveryVariant: the kernels of every variant in kSkinnyMmaVariants (the tuned entry);
// otherwise only the default's.
template <typename T, typename Out, int kTiles, bool kEveryVariant>
cudaError_t LaunchVariant(const Args<T, Out>& a, SkinnyMmaVariant variant, cudaStream_t stream) {
  constexpr SkinnyMmaVariant kDefault = DefaultVariant(kTiles);
  if (variant.ring_stages == 0) variant.ring_stages = kDefault.ring_stages;
  if (variant.row_tiles == 0) variant.row_tiles = kDefault.row_tiles;
  if constexpr (kEveryVariant) {
    cudaError_t result = cudaErrorInvalidValue;
    ForEachVariant([&](auto ring, auto row_tiles) {
      constexpr int kRing = decltype(ring)::value, kRowTiles = decltype(row_tiles)::value;
      if (variant.ring_stages == kRing && variant.row_tiles == kRowTiles) {
        result = Launch<T, Out, kTiles, kRing, kRowTiles>(a, stream);
      }
    });
    return result;
  } else {
    if (variant.ring_stages != kDefault.ring_stages || variant.row_tiles != kDefault.row_tiles) {
      return cudaErrorInvalidValue;
    }
    return Launch<T, Out, kTiles, kDefault.ring_stages, kDefault.row_tiles>(a, stream);
  }
}

template <typename T, typename Out, bool kEveryVariant = false>
cudaError_t Dispatch(const T* x, int x_stride, const T* w, const T* bias, int m, int n, int k,
                     Out* y, const SkinnyMmaFusion<T>& fusion, const SkinnyMmaWorkspace& workspace,
                     cudaStream_t stream, const SkinnyMmaTuning& tuning = {}) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  if (m > kSkinnyMmaMaxRows || k <= 0 || k % 8 != 0 || x_stride % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  const SkinnyMmaPlan plan = tuning.splits > 0 ? SkinnyMmaPlanOfSplits(n, k, tuning.splits)
                                               : PlanSkinnyMma(m, n, k, workspace.sm_count);
  if (SkinnyMmaPartialFloats(plan, m) > workspace.partial_floats ||
      SkinnyMmaCounters(plan) > workspace.counters_size) {
    return cudaErrorInvalidValue;  // the caller sized the workspace for other products
  }
  Args<T, Out> a{x,
                 x_stride,
                 w,
                 bias,
                 m,
                 n,
                 k,
                 y,
                 plan.row_blocks,
                 plan.splits,
                 plan.stages_per_split,
                 0,
                 workspace.partials,
                 workspace.counters,
                 fusion};
  switch (SkinnyMmaRowBucket(m)) {
    case 8:
      return LaunchVariant<T, Out, 1, kEveryVariant>(a, tuning.variant, stream);
    case 16:
      return LaunchVariant<T, Out, 2, kEveryVariant>(a, tuning.variant, stream);
    case 32:
      return LaunchVariant<T, Out, 4, kEveryVariant>(a, tuning.variant, stream);
    default:
      return LaunchVariant<T, Out, 8, kEveryVariant>(a, tuning.variant, stream);
  }
}

}  // namespace

template <typename T, typename Out>
cudaError_t SkinnyMmaGemm(const T* x, int x_stride, const T* w, const T* bias, int m, int n, int k,
                          Out* y, const SkinnyMmaWorkspace& workspace, cudaStream_t stream) {
  return Dispatch<T, Out>(x, x_stride, w, bias, m, n, k, y, {}, workspace, stream);
}

SkinnyMmaVariant SkinnyMmaDefaultVariant(int m) {
  return DefaultVariant(SkinnyMmaRowBucket(m) / 8);
}

template <typename T>
cudaError_t SkinnyMmaGemmTuned(const T* x, int x_stride, const T* w, const T* bias, int m, int n,
                               int k, T* y, const SkinnyMmaTuning& tuning,
                               const SkinnyMmaWorkspace& workspace, cudaStream_t stream) {
  return Dispatch<T, T, true>(x, x_stride, w, bias, m, n, k, y, {}, workspace, stream, tuning);
}

template <typename T>
cudaError_t SkinnyMmaGemmFused(const T* x, int x_stride, const T* w, const T* bias, int m, int n,
                               int k, T* y, const SkinnyMmaFusion<T>& fusion,
                               const SkinnyMmaWorkspace& workspace, cudaStream_t stream) {
  const bool bad_in = fusion.norm_weight != nullptr &&
                      (fusion.norm_sums_in == nullptr || fusion.norm_sum_blocks <= 0);
  const bool bad_out = fusion.residual != nullptr && fusion.norm_sums_out == nullptr;
  const bool bad_silu = fusion.silu_gate_up && (fusion.norm_weight != nullptr || x_stride < 2 * k);
  if (bad_in || bad_out || bad_silu || (fusion.residual == nullptr && y == nullptr)) {
    return cudaErrorInvalidValue;
  }
  return Dispatch<T, T>(x, x_stride, w, bias, m, n, k, y, fusion, workspace, stream);
}

#define GQA_INSTANTIATE(T, Out)                                                                \
  template cudaError_t SkinnyMmaGemm<T, Out>(const T*, int, const T*, const T*, int, int, int, \
                                             Out*, const SkinnyMmaWorkspace&, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__nv_bfloat16, float)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__half, float)
#undef GQA_INSTANTIATE
template cudaError_t SkinnyMmaGemmFused<__nv_bfloat16>(const __nv_bfloat16*, int,
                                                       const __nv_bfloat16*, const __nv_bfloat16*,
                                                       int, int, int, __nv_bfloat16*,
                                                       const SkinnyMmaFusion<__nv_bfloat16>&,
                                                       const SkinnyMmaWorkspace&, cudaStream_t);
template cudaError_t SkinnyMmaGemmFused<__half>(const __half*, int, const __half*, const __half*,
                                                int, int, int, __half*,
                                                const SkinnyMmaFusion<__half>&,
                                                const SkinnyMmaWorkspace&, cudaStream_t);

template cudaError_t SkinnyMmaGemmTuned<__nv_bfloat16>(const __nv_bfloat16*, int,
                                                       const __nv_bfloat16*, const __nv_bfloat16*,
                                                       int, int, int, __nv_bfloat16*,
                                                       const SkinnyMmaTuning&,
                                                       const SkinnyMmaWorkspace&, cudaStream_t);
template cudaError_t SkinnyMmaGemmTuned<__half>(const __half*, int, const __half*, const __half*,
                                                int, int, int, __half*, const SkinnyMmaTuning&,
                                                const SkinnyMmaWorkspace&, cudaStream_t);

}  // namespace gqa::kernels::cuda
