// Causal grouped-query prefill attention over the paged KV cache (see paged_attention_cuda.h).
//
// Grid: (row tile, KV head, sequence). A row is one (query token, head of the group) pair, so
// the query heads that share a KV head share every K/V tile a block loads. Block: 4 warps of 16
// rows; the block streams 16-key tiles (one cache block holds whole tiles) through a 3-stage
// cp.async pipeline and each warp runs the shared tile update on its rows. Warps skip tiles that
// lie wholly after their rows' positions.
//
// The warpgroup kernel (prefill_warpgroup.cu) takes every unsplit step of a 16-bit cache on
// Hopper (kWarpgroupByDefault); this one the rest (splits, FP8 caches, other GPUs).
//
// Key splits (args.key_splits > 1, for a short chunk after a long cached prefix: see
// gqa/kernels/prefill_selector.h): grid.x is (row tile, split); each block streams only its
// split's share of the tiles its rows see and writes normalized partial rows with their
// log-sum-exp, and the split merge (split_merge.cuh) combines them.
#include <cstdint>

#include "attention_tile.cuh"
#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/prefill_selector.h"
#include "pdl.cuh"
#include "prefill_warpgroup.h"
#include "split_merge.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;  // NOLINT: the shared tile building blocks

constexpr int kRowsPerBlock = kWarps * 16;
// kAuto takes the warpgroup kernel where it applies: it passed its tests on an H100 and ran
// 1.29-1.51x faster than this one there (kernels/BENCHMARKS.md step 22).
constexpr bool kWarpgroupByDefault = true;
static_assert(kRowsPerBlock == kPrefillRowsPerBlock, "the selector counts blocks of these rows");

// D: head_dim; NK: 16-key tiles per pipeline step (the keys of one softmax step); S: stages;
// KV: the cache element (an FP8 stage is widened into one 16-bit stage before the products).
template <int D, int NK, int S, typename KV = __nv_bfloat16>
struct PrefillSmem {
  static constexpr int kStepKeys = NK * kTile;
  static constexpr size_t kQueryElems = size_t(kRowsPerBlock) * kRow<D>;
  static constexpr size_t kStageElems = size_t(2) * kStepKeys * kRowOf<KV, D>;  // K then V
  static constexpr size_t kWideElems = kIsFp8<KV> ? size_t(2) * kStepKeys * kRow<D> : 0;
  static constexpr size_t kBytes = (kQueryElems + kWideElems) * 2 + S * kStageElems * sizeof(KV);
};

// All threads of the block copy one 16-key tile (keys tok0.., in cache block `block`) into tile
// `sub` of a step of NK tiles (K rows, then V rows NK tiles further on); keys at or past `end`
// (the sequence's length) are zero-filled, so stale cache data never reaches P.V.
template <typename KV, int D, int NK>
__device__ __forceinline__ void LoadTileBlock(const PagedKvView<KV>& cache, int block, int kv_head,
                                              int tok0, int end, KV* stage) {
  const size_t base = ((size_t(block) * cache.num_kv_heads + kv_head) * cache.block_size +
                       tok0 % cache.block_size) *
                      D;
  constexpr int kChunkElems = 16 / int(sizeof(KV));
  constexpr int kStride = kRowOf<KV, D>;
  constexpr int kChunks = kTile * D / kChunkElems;
  for (int c = threadIdx.x; c < kChunks; c += kThreads) {
    const int t = c / (D / kChunkElems), col = (c % (D / kChunkElems)) * kChunkElems;
    const size_t src = base + size_t(t) * D + col;
    CpAsync16(stage + t * kStride + col, cache.k + src, tok0 + t < end);
    CpAsync16(stage + (NK * kTile + t) * kStride + col, cache.v + src, tok0 + t < end);
  }
}

// The steps [first, end) a block's rows see, cut into key_splits ranges of whole steps (at
// least min_steps each): the range of `split`, empty past the last step.
__device__ __forceinline__ void SplitSteps(int key_splits, int split, int min_steps, int& first,
                                           int& end) {
  if (key_splits <= 1) return;
  const int per = max(min_steps, (end - first + key_splits - 1) / key_splits);
  first = min(end, first + split * per);
  end = min(end, first + per);
}

// Split `split`'s normalized output rows and log-sum-exps (log2 units) of one warp's rows.
template <int D>
__device__ __forceinline__ void StorePartialRows(const WarpState<D, 1>& st, const int (&rows)[2],
                                                 int num_rows, int query_token0, int group,
                                                 int head0, int num_heads, int key_splits,
                                                 int split, float v_scale, int lane,
                                                 float* partial_out,  // [tokens, heads, splits, D]
                                                 float* partial_lse) {  // [tokens, heads, splits]
  const int tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = st.sum[0][r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    if (rows[r] >= num_rows) continue;
    const float inv = total > 0.0f ? v_scale / total : 0.0f;
    const size_t head =
        size_t(query_token0 + rows[r] / group) * num_heads + head0 + rows[r] % group;
    const size_t at = head * key_splits + split;
    float* dst = partial_out + at * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      dst[dt * 8 + 2 * tig] = st.out[0][dt][r * 2] * inv;
      dst[dt * 8 + 2 * tig + 1] = st.out[0][dt][r * 2 + 1] * inv;
    }
    if (tig == 0) partial_lse[at] = total > 0.0f ? st.max[0][r] + log2f(total) : -INFINITY;
  }
}

template <typename T, typename KV, int D, int NK, int S>
__global__ void __launch_bounds__(kThreads)
    PrefillKernel(PrefillAttentionArgs<T, KV> args, int group,
                  float* partial_out,    // [tokens, heads, key_splits, D] when key_splits > 1
                  float* partial_lse) {  // [tokens, heads, key_splits]
  const int key_splits = args.key_splits > 1 ? args.key_splits : 1;
  const int split = blockIdx.x % key_splits;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_smem = reinterpret_cast<T*>(smem);
  using Layout = PrefillSmem<D, NK, S, KV>;
  constexpr int kStep = Layout::kStepKeys;
  T* wide = q_smem + Layout::kQueryElems;  // FP8: the widened stage
  KV* stages = reinterpret_cast<KV*>(wide + Layout::kWideElems);
  const int kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_begin = args.query_start[seq];
  const int q_len = args.query_start[seq + 1] - q_begin;
  const int rows = q_len * group;
  const int row0 = blockIdx.x / key_splits * kRowsPerBlock;
  if (row0 >= rows) return;
  const int first_pos = args.context_lens[seq] - q_len;  // position of the first query token
  const int last_pos = first_pos + (min(row0 + kRowsPerBlock, rows) - 1) / group;
  // With a sliding window, steps wholly before the block's first row's window are skipped.
  const int block_first_key =
      args.window > 0 ? max(0, first_pos + row0 / group - args.window + 1) : 0;
  int first_step = block_first_key / kStep;
  int num_steps = last_pos / kStep + 1;
  SplitSteps(key_splits, split, max(1, kPrefillMinSplitTiles / NK), first_step, num_steps);
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;

  LoadQueryRows<T, D, kRowsPerBlock, kThreads>(args.q, q_begin, args.num_heads, kv_head, group,
                                               row0, rows, q_smem);
  CpAsyncCommit();
  auto load = [&](int j) {  // step j: NK tiles, each in its own part of a cache block
    KV* stage = stages + (j % S) * Layout::kStageElems;
#pragma unroll
    for (int sub = 0; sub < NK; ++sub) {
      const int tok0 = j * kStep + sub * kTile;
      const int entry = min(tok0 / args.cache.block_size, args.cache.max_blocks_per_seq - 1);
      LoadTileBlock<KV, D, NK>(args.cache, table_row[entry], kv_head, tok0, first_pos + q_len,
                               stage + sub * kTile * kRowOf<KV, D>);
    }
  };
#pragma unroll
  for (int j = first_step; j < first_step + S - 1; ++j) {
    if (j < num_steps) load(j);
    CpAsyncCommit();
  }

  // Keys visible to this thread's rows g and g + 8: up to and including the row's position, and
  // with a sliding window from position - window + 1 on.
  const int g = lane / 4;
  int limit[1][2], first[1][2];
  int warp_min = INT32_MAX, warp_max = 0, warp_first_min = INT32_MAX, warp_first_max = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + warp * 16 + g + r * 8;
    const int pos = first_pos + row / group;
    limit[0][r] = row < rows ? pos + 1 : 0;
    first[0][r] = row < rows && args.window > 0 ? max(0, pos - args.window + 1) : 0;
    warp_max = max(warp_max, limit[0][r]);
    warp_min = min(warp_min, limit[0][r]);
    warp_first_max = max(warp_first_max, first[0][r]);
    warp_first_min = min(warp_first_min, first[0][r]);
  }
  warp_max = __reduce_max_sync(0xffffffffu, warp_max);
  warp_min = __reduce_min_sync(0xffffffffu, warp_min);
  warp_first_max = __reduce_max_sync(0xffffffffu, warp_first_max);
  warp_first_min = __reduce_min_sync(0xffffffffu, warp_first_min);

  WarpState<D, 1> st;
  st.Init();
  // An FP8 cache's K scale multiplies every score of the KV head: folded into the softmax scale.
  const float scale_log2 = args.scale * kLog2e * KvScale(args.cache.k_scale, kv_head);
  for (int j = first_step; j < num_steps; ++j) {
    if (j + S - 1 < num_steps) load(j + S - 1);
    CpAsyncCommit();
    CpAsyncWait<S - 1>();
    __syncthreads();
    const T* attended;
    if constexpr (kIsFp8<KV>) {
      DequantizeTiles<T, D>(stages + (j % S) * Layout::kStageElems, wide, 2 * kStep, threadIdx.x,
                            kThreads);
      __syncthreads();  // the barrier at the end of the step keeps it until every warp is done
      attended = wide;
    } else {
      attended = stages + (j % S) * Layout::kStageElems;
    }
    const int tok0 = j * kStep;
    if (tok0 < warp_max && tok0 + kStep > warp_first_min) {  // a row of the warp sees a key
      AttendTile<T, D, 1, NK>(q_smem + warp * 16 * kRow<D>, attended, tok0, limit, first,
                              tok0 + kStep > warp_min || tok0 < warp_first_max, scale_log2, st,
                              lane);
    }
    __syncthreads();  // the stage is refilled next iteration
  }
  CpAsyncWait<0>();

  const float v_scale = KvScale(args.cache.v_scale, kv_head);  // FP8: every output row's factor
  if (key_splits > 1) {
    const int rows_of_thread[2] = {row0 + warp * 16 + g, row0 + warp * 16 + g + 8};
    StorePartialRows<D>(st, rows_of_thread, rows, q_begin, group, kv_head * group, args.num_heads,
                        key_splits, split, v_scale, lane, partial_out, partial_lse);
    return;
  }
  const int tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float total = st.sum[0][r];
    total += __shfl_xor_sync(0xffffffffu, total, 1);
    total += __shfl_xor_sync(0xffffffffu, total, 2);
    const int row = row0 + warp * 16 + g + r * 8;
    if (row >= rows) continue;
    const float inv = total > 0.0f ? v_scale / total : 0.0f;
    T* dst = args.out +
             (size_t(q_begin + row / group) * args.num_heads + kv_head * group + row % group) * D;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
      *reinterpret_cast<uint32_t*>(dst + dt * 8 + 2 * tig) =
          Pack<T>(st.out[0][dt][r * 2] * inv, st.out[0][dt][r * 2 + 1] * inv);
    }
  }
}

template <typename T, typename KV, int D, int NK, int S>
cudaError_t LaunchPrefill(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream) {
  constexpr size_t kSmem = PrefillSmem<D, NK, S, KV>::kBytes;
  if (const cudaError_t e = AllowDynamicSmem<PrefillKernel<T, KV, D, NK, S>>(int(kSmem));
      e != cudaSuccess)
    return e;
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int row_tiles = (args.max_query_len * group + kRowsPerBlock - 1) / kRowsPerBlock;
  const int key_splits = args.key_splits > 1 ? args.key_splits : 1;
  float* partial_out = static_cast<float*>(args.workspace);
  const size_t rows = size_t(args.num_query_tokens) * args.num_heads * key_splits;
  float* partial_lse = partial_out ? partial_out + rows * D : nullptr;
  const dim3 grid(row_tiles * key_splits, args.cache.num_kv_heads, args.num_seqs);
  PrefillKernel<T, KV, D, NK, S>
      <<<grid, kThreads, kSmem, stream>>>(args, group, partial_out, partial_lse);
  if (key_splits == 1) return cudaGetLastError();
  return LaunchAfterPrevious(MergeSplitsKernel<T, D>, dim3(args.num_heads, args.num_query_tokens),
                             dim3(D), 0, stream, static_cast<const float*>(partial_out),
                             static_cast<const float*>(partial_lse), args.num_heads, key_splits,
                             args.out);
}

// The built variants (16-key tiles per step x stages); args.key_tiles_per_step = 0 picks
// PrefillKeyTilesPerStep's.
template <typename T, typename KV, int D>
cudaError_t LaunchPrefillVariant(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream) {
  const int key_tiles = args.key_tiles_per_step > 0 ? args.key_tiles_per_step
                                                    : PrefillKeyTilesPerStep(D, args.key_splits);
  switch (key_tiles) {
    case 1:
      return LaunchPrefill<T, KV, D, 1, 3>(args, stream);
    case 2:
      return LaunchPrefill<T, KV, D, 2, 3>(args, stream);
    case 4:
      return LaunchPrefill<T, KV, D, 4, 3>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

bool WarpgroupPrefillRunsUnsplit(PrefillPath path, bool fp8_cache) {
  switch (path) {
    case PrefillPath::kMmaSync:
      return false;
    case PrefillPath::kAuto:
      if (!kWarpgroupByDefault) return false;
      break;
    case PrefillPath::kWarpgroup:
      break;
  }
  return !fp8_cache && WarpgroupPrefillAvailable();
}

template <typename T, typename KV>
cudaError_t PagedPrefillAttention(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream) {
  if (args.num_seqs <= 0 || args.max_query_len <= 0) return cudaSuccess;
  if (args.cache.num_kv_heads <= 0 || args.num_heads % args.cache.num_kv_heads != 0 ||
      args.num_heads / args.cache.num_kv_heads > kRowsPerBlock ||
      args.cache.block_size % kTile != 0) {
    return cudaErrorInvalidValue;
  }
  if (args.key_splits > 1 &&
      (args.key_splits > kPrefillMaxKeySplits || args.workspace == nullptr ||
       args.num_query_tokens <= 0 ||
       size_t(args.num_query_tokens) * args.key_splits > size_t(kPrefillSplitRows))) {
    return cudaErrorInvalidValue;
  }
  if (args.path == PrefillPath::kWarpgroup ||
      (args.key_tiles_per_step == 0 && args.key_splits <= 1 &&
       WarpgroupPrefillRunsUnsplit(args.path, kIsFp8<KV>))) {
    if constexpr (kIsFp8<KV>) {
      return cudaErrorInvalidValue;  // the warpgroup kernel reads 16-bit caches only
    } else {
      return WarpgroupPrefillAttention<T>(args, stream);
    }
  }
  switch (args.cache.head_dim) {
    case 64:
      return LaunchPrefillVariant<T, KV, 64>(args, stream);
    case 128:
      return LaunchPrefillVariant<T, KV, 128>(args, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

template cudaError_t PagedPrefillAttention<__nv_bfloat16, __nv_bfloat16>(
    const PrefillAttentionArgs<__nv_bfloat16, __nv_bfloat16>&, cudaStream_t);
template cudaError_t PagedPrefillAttention<__half, __half>(
    const PrefillAttentionArgs<__half, __half>&, cudaStream_t);
template cudaError_t PagedPrefillAttention<__nv_bfloat16, __nv_fp8_e4m3>(
    const PrefillAttentionArgs<__nv_bfloat16, __nv_fp8_e4m3>&, cudaStream_t);
template cudaError_t PagedPrefillAttention<__half, __nv_fp8_e4m3>(
    const PrefillAttentionArgs<__half, __nv_fp8_e4m3>&, cudaStream_t);

}  // namespace gqa::kernels::cuda
