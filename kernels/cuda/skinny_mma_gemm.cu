// Tensor-core skinny products: see skinny_gemm_cuda.h and gqa/kernels/skinny_mma_plan.h.
//
// Block (4 warps) = 64 weight rows x one k range (a split); warp w owns weight rows 16w..16w+15
// of the block and every x row of the bucket (8 x kTiles). Weight and x tiles of 64 k go through
// a cp.async pipeline of kStages stages into shared memory; the weight copies of the first
// stages are issued before the kernel waits for the kernels before it (weights never depend on
// them).
//
// The mma.sync m16n8k16 fragments are read with 16-byte shared loads instead of ldmatrix by
// permuting k, the same way for both operands (a dot product does not care): for lane (g, q)
// = (lane / 4, lane % 4) and a 32-wide slice of k, the fragment elements that mma calls
// k = 2q, 2q+1, 2q+8, 2q+9 are physical k = 8q .. 8q+3 of the slice for the first product and
// 8q+4 .. 8q+7 for the second. One 16-byte load of weight row g (and one of row g + 8) and one of
// x row g per 8-row x tile feed two products. Shared rows are 64 k (128 bytes) with their 16-byte
// chunks swizzled (chunk c of row r stored at c ^ 4 (r & 1)) so that the 8 lanes of a load
// phase (rows 2p and 2p + 1, chunks q) hit 8 distinct bank groups.
#include <cstdint>
#include <type_traits>

#include "gqa/kernels/skinny_gemm_cuda.h"
#include "gqa/kernels/skinny_mma_plan.h"
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
static_assert(kRows == kWarps * 16 && kChunks == 8);

// Pipeline depth by x-row tiles: ~2-3 blocks per multiprocessor and 4-7 stages in flight each.
template <int kTiles>
constexpr int kStages = kTiles <= 2   ? 6
                        : kTiles == 4 ? 5
                                      : 4;

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
  Out* y;  // [m, n]
  int splits, stages_per_split;
  float* partials;  // [splits][row blocks][kRows][8 kTiles] when splits > 1
  int* counters;    // [row blocks], zero on entry and on exit
  SkinnyMmaFusion<T> fusion;
};

// Stage st (64 k from k0) of the block's weight rows: 64 rows x 8 chunks, 4 per thread.
template <typename T>
__device__ __forceinline__ void LoadWeightStage(const T* w, int n, int k, int row0, int k0,
                                                uint4* dst) {
  const int chunk = threadIdx.x % kChunks;
  const int kk = k0 + chunk * 8;
#pragma unroll
  for (int i = 0; i < kRows * kChunks / kThreads; ++i) {
    const int r = threadIdx.x / kChunks + i * (kThreads / kChunks);
    const int row = row0 + r;
    const bool valid = row < n && kk < k;
    CpAsync16(dst + Swizzled(r, chunk), valid ? w + size_t(row) * k + kk : w, valid);
  }
}

// The same for the x rows of the bucket (8 x kTiles rows; rows >= m read as zero). With `up` (a
// gate|up input), the up half of each row (k further on) goes to `up`, the stage after dst.
template <typename T, int kTiles>
__device__ __forceinline__ void LoadInputStage(const T* x, int x_stride, int m, int k, int k0,
                                               uint4* dst, uint4* up) {
  for (int i = threadIdx.x; i < 8 * kTiles * kChunks; i += kThreads) {
    const int r = i / kChunks, chunk = i % kChunks;
    const int kk = k0 + chunk * 8;
    const bool valid = r < m && kk < k;
    const T* src = x + size_t(r) * x_stride + kk;
    CpAsync16(dst + Swizzled(r, chunk), valid ? src : x, valid);
    if (up) CpAsync16(up + Swizzled(r, chunk), valid ? src + k : x, valid);
  }
}

// gate = T(silu(gate) * up) in place over a stage, as SiluMul computes it.
template <typename T, int kTiles>
__device__ __forceinline__ void SiluGateUpStage(uint4* gate, const uint4* up) {
  for (int i = threadIdx.x; i < 8 * kTiles * kChunks; i += kThreads) {
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

// x rows of a stage, staged as the residual stream, normalised in place as AddRmsNorm does:
// x = T(norm_weight[c] * (x * inv_rms[row])).
template <typename T, int kTiles>
__device__ __forceinline__ void NormalizeInputStage(const T* norm_weight, const float* inv_rms,
                                                    int k, int k0, uint4* stage) {
  for (int i = threadIdx.x; i < 8 * kTiles * kChunks; i += kThreads) {
    const int r = i / kChunks, chunk = i % kChunks;
    const int kk = k0 + chunk * 8;
    if (kk >= k) continue;
    Vec8<T> x{stage[Swizzled(r, chunk)]};
    const Vec8<T> w{__ldg(reinterpret_cast<const uint4*>(norm_weight + kk))};
#pragma unroll
    for (int e = 0; e < 8; ++e) x.Set(e, w.Get(e) * (x.Get(e) * inv_rms[r]));
    stage[Swizzled(r, chunk)] = x.raw;
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

// acc[t] += this warp's 16 weight rows x x-row tile t over one stage (64 k).
template <typename T, int kTiles>
__device__ __forceinline__ void MultiplyStage(const uint4* w_stage, const uint4* x_stage, int warp,
                                              int lane, float (&acc)[kTiles][4]) {
  const int g = lane / 4, q = lane % 4;
#pragma unroll
  for (int half = 0; half < 2; ++half) {  // two 32-wide k slices
    const int chunk = half * 4 + q;
    const uint4 lo = w_stage[Swizzled(warp * 16 + g, chunk)];
    const uint4 hi = w_stage[Swizzled(warp * 16 + g + 8, chunk)];
    const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
    const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      const uint4 b = x_stage[Swizzled(t * 8 + g, chunk)];
      Mma<T>(acc[t], a0, b.x, b.y);
      Mma<T>(acc[t], a1, b.z, b.w);
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

// The block's sums of squares of its new residual columns, per x row, into
// sums[row block][kSkinnyMmaMaxRows] (lanes of one q hold the same x rows: add over g, then over
// the warps in order).
template <int kTiles>
__device__ __forceinline__ void StoreSquareSums(float (&sq)[kTiles][2], int warp, int lane,
                                                float* sums) {
  __shared__ float per_warp[kWarps][8 * kTiles];
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
    sums[blockIdx.x * kSkinnyMmaMaxRows + threadIdx.x] = sum;
  }
}

template <typename T, typename Out, int kTiles>
__device__ __forceinline__ void StoreResults(const Args<T, Out>& a, int row0, int warp, int lane,
                                             const float (&acc)[kTiles][4]) {
  T* residual = a.fusion.residual;
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
  if (residual) StoreSquareSums<kTiles>(sq, warp, lane, a.fusion.norm_sums_out);
}

// Splits: every block stores its partial tile; the last of a row block to arrive adds the
// tiles in split order (its own from registers) and stores the result.
template <typename T, typename Out, int kTiles>
__device__ __forceinline__ void ReduceSplits(const Args<T, Out>& a, int row0, int warp, int lane,
                                             float (&acc)[kTiles][4]) {
  constexpr int kTileFloats = kRows * 8 * kTiles;
  const int split = blockIdx.y, row_block = blockIdx.x;
  float* mine = a.partials + (size_t(split) * gridDim.x + row_block) * kTileFloats;
#pragma unroll
  for (int t = 0; t < kTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) mine[PartialIndex<kTiles>(warp, lane, t, e)] = acc[t][e];
  }
  __threadfence();
  __syncthreads();
  __shared__ int arrived_before;
  if (threadIdx.x == 0) arrived_before = atomicAdd(a.counters + row_block, 1);
  __syncthreads();
  if (arrived_before != a.splits - 1) return;
  __threadfence();
  float sum[kTiles][4] = {};
  for (int s = 0; s < a.splits; ++s) {
    const float* tile = a.partials + (size_t(s) * gridDim.x + row_block) * kTileFloats;
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        sum[t][e] += s == split ? acc[t][e] : __ldcg(tile + PartialIndex<kTiles>(warp, lane, t, e));
      }
    }
  }
  if (threadIdx.x == 0) a.counters[row_block] = 0;
  StoreResults<T, Out, kTiles>(a, row0, warp, lane, sum);
}

template <typename T, typename Out, int kTiles>
__global__ void __launch_bounds__(kThreads) SkinnyMmaKernel(const Args<T, Out> a) {
  constexpr int S = kStages<kTiles>;
  constexpr int kWeightChunks = kRows * kChunks;      // per stage
  constexpr int kInputChunks = 8 * kTiles * kChunks;  // per stage (twice with gate|up)
  extern __shared__ uint4 smem[];                     // [S][kWeightChunks], [S][x_stage_chunks]
  __shared__ float inv_rms[8 * kTiles];
  uint4* w_stages = smem;
  uint4* x_stages = smem + S * kWeightChunks;
  const bool normalize = a.fusion.norm_weight != nullptr;
  const bool silu = a.fusion.silu_gate_up;
  const int x_stage_chunks = silu ? 2 * kInputChunks : kInputChunks;
  auto x_stage = [&](int slot) { return x_stages + slot * x_stage_chunks; };
  auto up_stage = [&](int slot) { return silu ? x_stage(slot) + kInputChunks : nullptr; };
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int row0 = blockIdx.x * kRows;
  const int total_stages = (a.k + kStageK - 1) / kStageK;
  const int first = blockIdx.y * a.stages_per_split;
  const int count = min(a.stages_per_split, total_stages - first);
  auto k_of = [&](int i) { return (first + i) * kStageK; };

  // The weights of the first S - 1 stages before the wait; then x. Group i holds x stage i
  // (group 0 also every prologue weight copy), so waiting for group i covers stage i.
  for (int i = 0; i < S - 1; ++i) {
    if (i < count) LoadWeightStage(a.w, a.n, a.k, row0, k_of(i), w_stages + i * kWeightChunks);
  }
  WaitForPrevious();
  if (normalize) {
    InverseRms(a.fusion.norm_sums_in, a.fusion.norm_sum_blocks, a.m, a.k, a.fusion.eps, 8 * kTiles,
               inv_rms);
  }
  for (int i = 0; i < S - 1; ++i) {
    if (i < count) {
      LoadInputStage<T, kTiles>(a.x, a.x_stride, a.m, a.k, k_of(i), x_stage(i), up_stage(i));
    }
    CpAsyncCommit();
  }

  float acc[kTiles][4] = {};
  for (int i = 0; i < count; ++i) {
    CpAsyncWait<S - 2>();
    __syncthreads();  // stage i visible to all; stage i - 1 read by all
    const int slot = i % S;
    if (normalize) {
      NormalizeInputStage<T, kTiles>(a.fusion.norm_weight, inv_rms, a.k, k_of(i), x_stage(slot));
      __syncthreads();
    } else if (silu) {
      SiluGateUpStage<T, kTiles>(x_stage(slot), up_stage(slot));
      __syncthreads();
    }
    MultiplyStage<T, kTiles>(w_stages + slot * kWeightChunks, x_stage(slot), warp, lane, acc);
    const int next = i + S - 1;
    if (next < count) {
      const int next_slot = next % S;
      LoadWeightStage(a.w, a.n, a.k, row0, k_of(next), w_stages + next_slot * kWeightChunks);
      LoadInputStage<T, kTiles>(a.x, a.x_stride, a.m, a.k, k_of(next), x_stage(next_slot),
                                up_stage(next_slot));
    }
    CpAsyncCommit();
  }
  AllowNext();
  if (a.splits > 1) {
    ReduceSplits<T, Out, kTiles>(a, row0, warp, lane, acc);
  } else {
    StoreResults<T, Out, kTiles>(a, row0, warp, lane, acc);
  }
}

template <typename T, typename Out, int kTiles>
cudaError_t Launch(const Args<T, Out>& a, int row_blocks, cudaStream_t stream) {
  constexpr int S = kStages<kTiles>;
  const int x_rows = 8 * kTiles * (a.fusion.silu_gate_up ? 2 : 1);
  const int smem = S * (kRows + x_rows) * kChunks * 16;
  if (const cudaError_t e = AllowDynamicSmem<SkinnyMmaKernel<T, Out, kTiles>>(smem);
      e != cudaSuccess) {
    return e;
  }
  return LaunchAfterPrevious(SkinnyMmaKernel<T, Out, kTiles>, dim3(row_blocks, a.splits),
                             dim3(kThreads), smem, stream, a);
}

template <typename T, typename Out>
cudaError_t Dispatch(const T* x, int x_stride, const T* w, const T* bias, int m, int n, int k,
                     Out* y, const SkinnyMmaFusion<T>& fusion, const SkinnyMmaWorkspace& workspace,
                     cudaStream_t stream) {
  if (m <= 0 || n <= 0) return cudaSuccess;
  if (m > kSkinnyMmaMaxRows || k <= 0 || k % 8 != 0 || x_stride % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  const SkinnyMmaPlan plan = PlanSkinnyMma(m, n, k, workspace.sm_count);
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
                 plan.splits,
                 plan.stages_per_split,
                 workspace.partials,
                 workspace.counters,
                 fusion};
  switch (SkinnyMmaRowBucket(m)) {
    case 8:
      return Launch<T, Out, 1>(a, plan.row_blocks, stream);
    case 16:
      return Launch<T, Out, 2>(a, plan.row_blocks, stream);
    case 32:
      return Launch<T, Out, 4>(a, plan.row_blocks, stream);
    default:
      return Launch<T, Out, 8>(a, plan.row_blocks, stream);
  }
}

}  // namespace

template <typename T, typename Out>
cudaError_t SkinnyMmaGemm(const T* x, int x_stride, const T* w, const T* bias, int m, int n, int k,
                          Out* y, const SkinnyMmaWorkspace& workspace, cudaStream_t stream) {
  return Dispatch<T, Out>(x, x_stride, w, bias, m, n, k, y, {}, workspace, stream);
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

}  // namespace gqa::kernels::cuda
