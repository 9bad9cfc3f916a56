// Grouped-query decode attention over the paged KV cache (one query token per sequence).
//
// Grid: (split, KV head, sequence). Block: W warps (4 or 8). The block loads the group's query
// rows (group = num_heads / num_kv_heads, padded to 16 or 32 rows) into shared memory once. The
// warps form teams, one warp per 16-row query tile (W teams of 1 for groups up to 16, W / 2 teams
// of 2 above); each team streams its own 16-token tiles of K and V (a tile lies inside one cache
// block, so it is 16 contiguous rows of head_dim) through an S-stage cp.async pipeline into
// team-private shared memory, and each warp runs S = Q.K^T and O += P.V for its query tile on
// tensor cores with an online softmax in fp32. Each K/V byte is read from DRAM once for the whole
// group. The teams' partial results are merged in shared memory; with several splits, a second
// kernel merges the splits by log-sum-exp.
//
// What bounds the kernel is the bytes each multiprocessor keeps in flight: (teams x (S - 1)) tiles
// per block. W and S are chosen by the selector (kernels/cpu/decode_selector.cc) so that a
// 32-row group (MQA) and head_dim 64 keep as many bytes in flight as the small groups at
// head_dim 128 (kernels/BENCHMARKS.md, step 14).
#include <cfloat>
#include <cstdint>

#include "attention_tile.cuh"
#include "decode_warpgroup.h"
#include "gqa/kernels/paged_attention_cuda.h"
#include "pdl.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;  // NOLINT: the shared tile building blocks
static_assert(kTile == kDecodeTileTokens, "the selector splits in whole tiles");

// ---------------------------------------------------------------- optional phase trace
// Built with -DGQA_DECODE_TRACE, block (0, 0, 0) records the global timer at each phase and every
// block widens [first start, last end]; gqa-bench --trace prints them. Off in normal builds.
#ifdef GQA_DECODE_TRACE
__device__ unsigned long long g_trace[8];
__device__ __forceinline__ unsigned long long GlobalTimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
#define TRACE_POINT(i)                                                             \
  do {                                                                             \
    if (threadIdx.x == 0 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) \
      g_trace[i] = GlobalTimer();                                                  \
  } while (0)
#define TRACE_SPAN(lo, hi)                                        \
  do {                                                            \
    if (threadIdx.x == 0) atomicMin(&g_trace[lo], GlobalTimer()); \
    __syncthreads();                                              \
    if (threadIdx.x == 0) atomicMax(&g_trace[hi], GlobalTimer()); \
  } while (0)
#define GQA_MERGE_TRACE_BEGIN()                                  \
  do {                                                           \
    if (threadIdx.x == 0) atomicMin(&g_trace[6], GlobalTimer()); \
  } while (0)
#define GQA_MERGE_TRACE_END()                                    \
  do {                                                           \
    __syncthreads();                                             \
    if (threadIdx.x == 0) atomicMax(&g_trace[7], GlobalTimer()); \
  } while (0)
#else
#define TRACE_POINT(i) \
  do {                 \
  } while (0)
#endif

}  // namespace
}  // namespace gqa::kernels::cuda

#include "decode_launch.cuh"  // after the trace hooks its merge uses

namespace gqa::kernels::cuda {
namespace {

// ---------------------------------------------------------------- shared memory layout

// D: head_dim; QT: 16-row query tiles; W: warps per block; S: pipeline stages per team; NK:
// 16-token tiles per stage (the keys of one softmax step); KV: the cache element (a 16-bit type,
// or FP8, whose stages are widened into one 16-bit stage per team before the products).
template <int D, int QT, int W, int S, int NK, typename KV = __nv_bfloat16>
struct Smem {
  static constexpr int kThreads = W * 32;
  static constexpr int kRows = 16 * QT;  // query rows
  static constexpr int kTeams = W / QT;  // pipelines: QT warps share each one
  static constexpr size_t kQueryBytes = size_t(kRows) * kRow<D> * 2;  // [kRows][kRow]
  static constexpr int kStageTokens = NK * kTile;
  // K then V tiles, as the cache stores them ([rows][kRowOf<KV, D>]).
  static constexpr size_t kStageElems = size_t(2) * kStageTokens * kRowOf<KV, D>;
  // FP8: the team's widened copy of the stage it attends ([rows][kRow<D>] 16-bit).
  static constexpr size_t kWideElems = kIsFp8<KV> ? size_t(2) * kStageTokens * kRow<D> : 0;
  static constexpr size_t kPipeBytes =
      size_t(kTeams) * S * kStageElems * sizeof(KV) + size_t(kTeams) * kWideElems * 2;
  // Per team: running max and sum per row, then its unnormalized output rows (fp32).
  static constexpr size_t kMergeFloatsPerTeam = size_t(2) * kRows + size_t(kRows) * D;
  // Then each team's weight per row and each row's log-sum-exp.
  static constexpr size_t kMergeBytes =
      (kTeams * kMergeFloatsPerTeam + size_t(kTeams) * kRows + kRows) * 4;
  static constexpr size_t kBytes =
      kQueryBytes + (kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes);
};

// The cache block of each of a team's next 32 tiles, one per lane: a team's steps of NK tiles
// are team, team + teams, ... of the split; lane i holds the block of tile i % NK of its
// (first + i / NK)-th step.
// Bounded by the table's row length only, not the sequence's, so that it need not wait for the
// context length: entries past the sequence are read but never used.
template <int NK>
__device__ __forceinline__ int PrefetchBlocks(const int32_t* table_row, int max_blocks,
                                              int block_size, int begin, int team, int teams,
                                              int first, int lane) {
  const int step = first + lane / NK;
  const int entry = (begin + (team + step * teams) * NK * kTile + (lane % NK) * kTile) / block_size;
  return entry < max_blocks ? table_row[entry] : 0;
}

// The named barrier of one team of `threads` threads (ids 1.. : 0 is __syncthreads).
__device__ __forceinline__ void TeamBarrier(int team, int threads) {
  NamedBarrierSync(team + 1, threads);
}

// QT is the number of 16-row query tiles (group <= 16: 1, else 2). The block's W warps form
// W / QT teams; the QT warps of a team share one K/V pipeline of S stages and each attends with
// its own query tile, so a group of 32 costs each warp the work of a group of 16.
template <typename T, typename KV, int D, int QT, int W, int S, int NK>
__global__ void __launch_bounds__(W * 32)
    DecodeKernel(DecodeAttentionArgs<T, KV> args, int group, int split_tokens, int num_splits,
                 int min_split_tiles,   // split_tokens 0: the shortest per-sequence split
                 float* partial_out,    // [num_seqs, num_heads, num_splits, D]
                 float* partial_lse) {  // [num_seqs, num_heads, num_splits], log2 units
  using Layout = Smem<D, QT, W, S, NK, KV>;
  constexpr int kStageTokens = Layout::kStageTokens;
  constexpr int kStepsPerFetch = 32 / NK;  // steps whose block ids one prefetch holds
  constexpr int kThreads = Layout::kThreads;
  constexpr int kStages = S;
  constexpr int kRows = Layout::kRows;
  constexpr int kTeams = Layout::kTeams;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_smem = reinterpret_cast<T*>(smem);                               // [kRows][kRow<D>]
  KV* pipe = reinterpret_cast<KV*>(smem + Layout::kQueryBytes);         // per team, per stage
  float* merge = reinterpret_cast<float*>(smem + Layout::kQueryBytes);  // reuses the pipe

  TRACE_POINT(0);
  // Let the merge kernel (launched with programmatic stream serialization) get scheduled now;
  // it waits in griddepcontrol.wait until this grid has finished and its writes are visible.
#if __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
#ifdef GQA_DECODE_TRACE
  if (threadIdx.x == 0) atomicMin(&g_trace[4], GlobalTimer());
#endif
  const int split = blockIdx.x, kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int team = warp / QT, query_tile = warp % QT;
  const int head0 = kv_head * group;
  const T* q = args.q + (size_t(seq) * args.num_heads + head0) * D;
  auto load_query = [&] {  // the group's query rows, zero past the group: one async group
    WaitForPrevious();     // the queries and the cache come from the kernels before
    for (int i = threadIdx.x; i < kRows * D / 8; i += kThreads) {
      const int row = i / (D / 8), col = (i % (D / 8)) * 8;
      CpAsync16(q_smem + row * kRow<D> + col, q + (row < group ? row * D + col : 0), row < group);
    }
    CpAsyncCommit();
  };
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;
  const int max_blocks = args.cache.max_blocks_per_seq, bs = args.cache.block_size;
  // Keys begin .. end - 1 of the sequence: the split's range, from the window's first whole tile
  // on (tiles wholly behind the window are never read).
  int begin, end, blocks, len, first_key;
  if (split_tokens > 0 && args.window <= 0) {
    // Three independent reads in flight at once: the query rows, the first block ids, the
    // context length.
    begin = split * split_tokens;
    load_query();
    blocks = PrefetchBlocks<NK>(table_row, max_blocks, bs, begin, team, kTeams, 0, lane);
    len = args.context_lens[seq];
    end = min(len, begin + split_tokens);
    first_key = 0;
  } else if (split_tokens > 0) {
    // Splits of split_tokens from the window's first tile on (the selector sized them for the
    // window's keys): the start waits for the length.
    len = args.context_lens[seq];
    first_key = FirstKey(len, args.window);
    begin = first_key / kTile * kTile + split * split_tokens;
    load_query();
    blocks = PrefetchBlocks<NK>(table_row, max_blocks, bs, begin, team, kTeams, 0, lane);
    end = min(len, begin + split_tokens);
  } else {
    // Per-sequence splits of the window's tiles: the length decides the split size, and the
    // splits past the end only mark themselves empty for the merge.
    len = args.context_lens[seq];
    first_key = FirstKey(len, args.window);
    const int start = first_key / kTile * kTile;
    const int tokens = SequenceSplitTokens(len - start, num_splits, min_split_tiles);
    begin = start + split * tokens;
    if (split > 0 && begin >= len) {
      WaitForPrevious();  // the workspace may still be read by the previous step's merge
      for (int i = threadIdx.x; i < group * D; i += kThreads) {
        const size_t head = size_t(seq) * args.num_heads + head0 + i / D;
        partial_out[(head * num_splits + split) * D + i % D] = 0.0f;
        if (i % D == 0) partial_lse[head * num_splits + split] = -INFINITY;
      }
      return;
    }
    blocks = PrefetchBlocks<NK>(table_row, max_blocks, bs, begin, team, kTeams, 0, lane);
    load_query();
    end = min(len, begin + tokens);
  }

  // A "tile" below is one step of NK 16-token tiles (kStageTokens keys): one pipeline stage.
  const int num_tiles = begin < end ? (end - begin + kStageTokens - 1) / kStageTokens : 0;
  const int my_tiles = num_tiles > team ? (num_tiles - team + kTeams - 1) / kTeams : 0;
  KV* stages = pipe + size_t(team) * kStages * Layout::kStageElems;
  // FP8: the team's widened stage, after every team's FP8 stages.
  T* wide = reinterpret_cast<T*>(pipe + size_t(kTeams) * kStages * Layout::kStageElems) +
            size_t(team) * Layout::kWideElems;
  auto tile_start = [&](int j) { return begin + (team + j * kTeams) * kStageTokens; };
  auto load = [&](int j) {  // this warp's share of the team's j-th step into stage j % kStages
    if (j % kStepsPerFetch == 0 && j > 0)
      blocks = PrefetchBlocks<NK>(table_row, max_blocks, bs, begin, team, kTeams, j, lane);
    KV* stage = stages + (j % kStages) * Layout::kStageElems;
#pragma unroll
    for (int sub = 0; sub < NK; ++sub) {
      const int block = __shfl_sync(0xffffffffu, blocks, (j % kStepsPerFetch) * NK + sub);
      LoadTile<KV, D, QT, NK>(args.cache, block, kv_head, tile_start(j) + sub * kTile, end,
                              stage + sub * kTile * kRowOf<KV, D>, lane, query_tile);
    }
  };
  // Then the first tiles: kStages async groups in all.
#pragma unroll
  for (int j = 0; j < kStages - 1; ++j) {
    if (j < my_tiles) load(j);
    CpAsyncCommit();
  }
  CpAsyncWait<kStages - 2>();  // the query and the first tile; later tiles stay in flight
  __syncthreads();
  TRACE_POINT(1);

  WarpState<D, 1> st;
  st.Init();
  // An FP8 cache's K scale multiplies every score of the KV head: folded into the softmax scale.
  const float scale_log2 = args.scale * kLog2e * KvScale(args.cache.k_scale, kv_head);
  const int limit[1][2] = {{end, end}};  // every query row sees keys up to the split's end
  const int first[1][2] = {{first_key, first_key}};
  const T* my_query = q_smem + query_tile * 16 * kRow<D>;
  // A single warp (QT = 1) runs its own pipeline. The QT warps of a team meet at the team's own
  // named barrier each step: it makes every warp's share of step j visible to its partner, and
  // says that both are past step j - 1, whose stage the next load refills. Teams do not wait for
  // each other (measured neutral against a block barrier per step: kernels/BENCHMARKS.md step
  // 18).
  const int iterations = my_tiles;
  for (int j = 0; j < iterations; ++j) {
    const int ahead = j + kStages - 1;
    if constexpr (QT == 1) {
      if (ahead < my_tiles) load(ahead);
      CpAsyncCommit();
      CpAsyncWait<kStages - 1>();
      __syncwarp();
    } else {
      CpAsyncWait<kStages - 2>();
      TeamBarrier(team, QT * 32);
      if (ahead < my_tiles) load(ahead);
      CpAsyncCommit();
    }
    const T* attended;
    if constexpr (kIsFp8<KV>) {
      // Widen the stage: each warp of the team its share of the rows, then the team meets again
      // (the barrier at the top of the next step keeps the copy until both have attended).
      DequantizeTiles<T, D>(stages + (j % kStages) * Layout::kStageElems, wide, 2 * kStageTokens,
                            query_tile * 32 + lane, QT * 32);
      if constexpr (QT == 1) {
        __syncwarp();
      } else {
        TeamBarrier(team, QT * 32);
      }
      attended = wide;
    } else {
      attended = stages + (j % kStages) * Layout::kStageElems;
    }
    if (j < my_tiles) {
      const int tok0 = tile_start(j);
      AttendTile<T, D, 1, NK>(my_query, attended, tok0, limit, first,
                              tok0 + kStageTokens > end || tok0 < first_key, scale_log2, st, lane);
    }
    if constexpr (QT == 1) __syncwarp();
  }
  CpAsyncWait<0>();
  __syncthreads();  // every warp is done with the pipe buffers: reuse them for the merge
  TRACE_POINT(2);
  StoreWarpState<D, 1, kRows>(st, merge + team * Layout::kMergeFloatsPerTeam, query_tile * 16,
                              lane);
  __syncthreads();

  // Per row: the combined max, each team's weight and the log-sum-exp, computed once.
  float* team_weight = merge + kTeams * Layout::kMergeFloatsPerTeam;  // [kTeams][kRows]
  float* row_lse = team_weight + kTeams * kRows;                      // [kRows]
  for (int row = threadIdx.x; row < group; row += kThreads) {
    float global_max = -INFINITY;
#pragma unroll
    for (int t = 0; t < kTeams; ++t) {
      global_max = fmaxf(global_max, merge[t * Layout::kMergeFloatsPerTeam + row]);
    }
    const float base = global_max == -INFINITY ? 0.0f : global_max;
    float scale[kTeams], total = 0.0f;
#pragma unroll
    for (int t = 0; t < kTeams; ++t) {
      const float* m = merge + t * Layout::kMergeFloatsPerTeam;
      scale[t] = exp2f(m[row] - base);
      total += m[kRows + row] * scale[t];
    }
#pragma unroll
    for (int t = 0; t < kTeams; ++t)
      team_weight[t * kRows + row] = total > 0.0f ? scale[t] / total : 0.0f;
    row_lse[row] = total > 0.0f ? base + log2f(total) : -INFINITY;
  }
  __syncthreads();
  const float v_scale = KvScale(args.cache.v_scale, kv_head);  // FP8: every output row's factor
  for (int i = threadIdx.x; i < group * D; i += kThreads) {
    const int row = i / D, d = i % D;
    float value = 0.0f;
#pragma unroll
    for (int t = 0; t < kTeams; ++t) {
      value += merge[t * Layout::kMergeFloatsPerTeam + 2 * kRows + row * D + d] *
               team_weight[t * kRows + row];
    }
    value *= v_scale;
    const size_t head = size_t(seq) * args.num_heads + head0 + row;
    if (num_splits == 1) {
      args.out[head * D + d] = FromFloat<T>(value);
    } else {
      partial_out[(head * num_splits + split) * D + d] = value;
      if (d == 0) partial_lse[head * num_splits + split] = row_lse[row];
    }
  }
  TRACE_POINT(3);
#ifdef GQA_DECODE_TRACE
  __syncthreads();
  if (threadIdx.x == 0) atomicMax(&g_trace[5], GlobalTimer());
#endif
}

template <typename T, typename KV, int D, int QT, int W, int S, int NK>
cudaError_t LaunchDecode(const DecodeAttentionArgs<T, KV>& args, const DecodeKernelChoice& choice,
                         cudaStream_t stream) {
  constexpr size_t kSmem = Smem<D, QT, W, S, NK, KV>::kBytes;
  constexpr auto kKernel = DecodeKernel<T, KV, D, QT, W, S, NK>;
  if (const cudaError_t e = AllowDynamicSmem<kKernel>(int(kSmem)); e != cudaSuccess) return e;
  return LaunchDecodeGrid<T, KV, D>(kKernel, W * 32, kSmem, args, choice, stream);
}

template <typename T, int D>
__global__ void AppendKernel(const T* k, const T* v, const int64_t* slots, int num_tokens,
                             PagedKvView<T> cache) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per head row
  const int per_token = cache.num_kv_heads * kChunks;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(num_tokens) * per_token) return;
  const int token = int(i / per_token);
  const int head = int(i % per_token) / kChunks;
  const int col = int(i % kChunks) * 8;
  const int64_t slot = slots[token];
  if (slot < 0) return;  // padding
  const size_t src = (size_t(token) * cache.num_kv_heads + head) * D + col;
  const size_t dst = cache.Offset(slot, head) + col;
  *reinterpret_cast<uint4*>(cache.k + dst) = *reinterpret_cast<const uint4*>(k + src);
  *reinterpret_cast<uint4*>(cache.v + dst) = *reinterpret_cast<const uint4*>(v + src);
}

// Eight elements of T, quantized with `scale`, as eight E4M3 bytes.
template <typename T>
__device__ __forceinline__ uint2 QuantizeChunk(const T* src, float scale) {
  const Vec8<T> in = Vec8<T>::Load(src);
  uint8_t bytes[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) bytes[i] = QuantizeE4M3(in.Get(i), scale);
  return *reinterpret_cast<const uint2*>(bytes);
}

// The FP8 append: one thread per 8 elements of one head row, K and V.
template <typename T, int D>
__global__ void AppendFp8Kernel(const T* k, const T* v, const int64_t* slots, int num_tokens,
                                PagedKvView<__nv_fp8_e4m3> cache) {
  constexpr int kChunks = D / 8;
  const int per_token = cache.num_kv_heads * kChunks;
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= int64_t(num_tokens) * per_token) return;
  const int token = int(i / per_token);
  const int head = int(i % per_token) / kChunks;
  const int col = int(i % kChunks) * 8;
  const int64_t slot = slots[token];
  if (slot < 0) return;  // padding
  const size_t src = (size_t(token) * cache.num_kv_heads + head) * D + col;
  const size_t dst = cache.Offset(slot, head) + col;
  *reinterpret_cast<uint2*>(cache.k + dst) = QuantizeChunk(k + src, KvScale(cache.k_scale, head));
  *reinterpret_cast<uint2*>(cache.v + dst) = QuantizeChunk(v + src, KvScale(cache.v_scale, head));
}

}  // namespace

#ifdef GQA_DECODE_TRACE
// Resets the trace before a launch and reads it after (see g_trace).
cudaError_t DecodeTraceReset() {
  unsigned long long init[8] = {0, 0, 0, 0, ~0ull, 0, ~0ull, 0};
  return cudaMemcpyToSymbol(g_trace, init, sizeof init);
}
cudaError_t DecodeTraceRead(unsigned long long* out8) {
  return cudaMemcpyFromSymbol(out8, g_trace, 8 * sizeof(unsigned long long));
}
#endif

size_t DecodeWorkspaceBytes(int num_seqs, int num_heads, int head_dim, int num_splits) {
  if (num_splits <= 1) return 0;
  const size_t rows = size_t(num_seqs) * num_heads * num_splits;
  return rows * (head_dim + 1) * sizeof(float);
}

// Launches variant (W warps, S stages, NK tiles per step) if `choice` names it and its shared
// memory fits a block; returns false when it does not apply.
template <typename T, typename KV, int D, int QT, int W, int S, int NK>
bool TryVariant(const DecodeAttentionArgs<T, KV>& args, const DecodeKernelChoice& choice,
                cudaStream_t stream, cudaError_t* result) {
  constexpr DecodeVariant kVariant{W, S, NK};
  constexpr int kKvBytes = int(sizeof(KV));
  if constexpr (!DecodeVariantBuilt(D, QT, kVariant, kKvBytes)) {
    return false;
  } else {
    static_assert(Smem<D, QT, W, S, NK, KV>::kBytes ==
                  DecodeSharedBytes(D, QT, kVariant, kKvBytes));
    if (choice.warps != W || choice.stages != S || choice.key_tiles != NK) return false;
    *result = LaunchDecode<T, KV, D, QT, W, S, NK>(args, choice, stream);
    return true;
  }
}

// Every variant of kDecodeVariantCandidates (gqa/kernels/decode_selector.h) that
// DecodeVariantBuilt accepts; the tests launch each of them.
template <typename T, typename KV, int D, int QT>
cudaError_t LaunchDecodeVariant(const DecodeAttentionArgs<T, KV>& args,
                                const DecodeKernelChoice& choice, cudaStream_t stream) {
  cudaError_t e = cudaErrorInvalidValue;
  (void)(TryVariant<T, KV, D, QT, 4, 3, 1>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 4, 6, 1>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 4, 3, 2>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 4, 3, 4>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 8, 3, 1>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 8, 6, 1>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 8, 3, 2>(args, choice, stream, &e) ||
         TryVariant<T, KV, D, QT, 8, 3, 4>(args, choice, stream, &e));
  return e;
}

template <typename T, typename KV, int D>
cudaError_t LaunchDecodeHeadDim(const DecodeAttentionArgs<T, KV>& args,
                                const DecodeKernelChoice& choice, cudaStream_t stream) {
  return choice.query_tiles == 1 ? LaunchDecodeVariant<T, KV, D, 1>(args, choice, stream)
                                 : LaunchDecodeVariant<T, KV, D, 2>(args, choice, stream);
}

template <typename T, typename KV>
cudaError_t PagedDecodeAttention(const DecodeAttentionArgs<T, KV>& args,
                                 const DecodeKernelChoice& choice, cudaStream_t stream) {
  if (!choice.supported || args.num_seqs <= 0) return cudaErrorInvalidValue;
  if ((choice.kv == KvElement::kFp8E4M3) != kIsFp8<KV>) return cudaErrorInvalidValue;
  if (choice.warpgroup) {
    if constexpr (kIsFp8<KV>) {
      return cudaErrorInvalidValue;  // the warpgroup kernel reads 16-bit caches only
    } else {
      return WarpgroupDecodeAttention<T>(args, choice, stream);
    }
  }
  if (choice.head_dim == 64) return LaunchDecodeHeadDim<T, KV, 64>(args, choice, stream);
  if (choice.head_dim == 128) return LaunchDecodeHeadDim<T, KV, 128>(args, choice, stream);
  return cudaErrorInvalidValue;
}

// One thread per 16-byte chunk of a token's K or V head row: AppendKernel copies 16-bit rows,
// AppendFp8Kernel quantizes them.
template <typename T, typename KV, int D>
cudaError_t LaunchAppend(const T* k, const T* v, const int64_t* slots, int num_tokens,
                         const PagedKvView<KV>& cache, cudaStream_t stream) {
  const int64_t chunks = int64_t(num_tokens) * cache.num_kv_heads * (D / 8);
  const int threads = 256;
  const unsigned blocks = unsigned((chunks + threads - 1) / threads);
  if constexpr (kIsFp8<KV>) {
    AppendFp8Kernel<T, D><<<blocks, threads, 0, stream>>>(k, v, slots, num_tokens, cache);
  } else {
    static_assert(std::is_same_v<T, KV>, "a 16-bit cache holds the compute type");
    AppendKernel<T, D><<<blocks, threads, 0, stream>>>(k, v, slots, num_tokens, cache);
  }
  return cudaGetLastError();
}

template <typename T, typename KV>
cudaError_t PagedKvAppend(const T* k, const T* v, const int64_t* slots, int num_tokens,
                          const PagedKvView<KV>& cache, cudaStream_t stream) {
  if (num_tokens <= 0) return cudaSuccess;
  switch (cache.head_dim) {
    case 64:
      return LaunchAppend<T, KV, 64>(k, v, slots, num_tokens, cache, stream);
    case 128:
      return LaunchAppend<T, KV, 128>(k, v, slots, num_tokens, cache, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

#define GQA_INSTANTIATE(T, KV)                                                               \
  template cudaError_t PagedDecodeAttention<T, KV>(const DecodeAttentionArgs<T, KV>&,        \
                                                   const DecodeKernelChoice&, cudaStream_t); \
  template cudaError_t PagedKvAppend<T, KV>(const T*, const T*, const int64_t*, int,         \
                                            const PagedKvView<KV>&, cudaStream_t);
GQA_INSTANTIATE(__nv_bfloat16, __nv_bfloat16)
GQA_INSTANTIATE(__half, __half)
GQA_INSTANTIATE(__nv_bfloat16, __nv_fp8_e4m3)
GQA_INSTANTIATE(__half, __nv_fp8_e4m3)
#undef GQA_INSTANTIATE

}  // namespace gqa::kernels::cuda
