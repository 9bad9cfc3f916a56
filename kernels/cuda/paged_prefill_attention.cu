// Causal grouped-query prefill attention over the paged KV cache (see paged_attention_cuda.h).
//
// Grid: (row tile, KV head, sequence). A row is one (query token, head of the group) pair, so
// the query heads that share a KV head share every K/V tile a block loads. Block: 4 warps of 16
// rows; the block streams 16-key tiles (one cache block holds whole tiles) through a 3-stage
// cp.async pipeline and each warp runs the shared tile update on its rows. Warps skip tiles that
// lie wholly after their rows' positions.
#include <cstdint>

#include "attention_tile.cuh"
#include "gqa/kernels/paged_attention_cuda.h"
#include "pdl.cuh"

namespace gqa::kernels::cuda {
namespace {

using namespace attention;  // NOLINT: the shared tile building blocks

constexpr int kRowsPerBlock = kWarps * 16;

// KV: the cache element; an FP8 stage is widened into one 16-bit stage before the products.
template <int D, typename KV = __nv_bfloat16>
struct PrefillSmem {
  static constexpr size_t kQueryElems = size_t(kRowsPerBlock) * kRow<D>;
  static constexpr size_t kStageElems = size_t(2) * kTile * kRowOf<KV, D>;  // K then V
  static constexpr size_t kWideElems = kIsFp8<KV> ? size_t(2) * kTile * kRow<D> : 0;
  static constexpr size_t kBytes =
      (kQueryElems + kWideElems) * 2 + kStages * kStageElems * sizeof(KV);
};

// All threads of the block copy one 16-key tile (keys tok0.., in cache block `block`); keys at
// or past `end` (the sequence's length) are zero-filled, so stale cache data never reaches P.V.
template <typename KV, int D>
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
    CpAsync16(stage + (kTile + t) * kStride + col, cache.v + src, tok0 + t < end);
  }
}

template <typename T, typename KV, int D>
__global__ void __launch_bounds__(kThreads)
    PrefillKernel(PrefillAttentionArgs<T, KV> args, int group) {
  using Layout = PrefillSmem<D, KV>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* q_smem = reinterpret_cast<T*>(smem);
  T* wide = q_smem + Layout::kQueryElems;  // FP8: the widened stage
  KV* stages = reinterpret_cast<KV*>(wide + Layout::kWideElems);
  const int kv_head = blockIdx.y, seq = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int q_begin = args.query_start[seq];
  const int q_len = args.query_start[seq + 1] - q_begin;
  const int rows = q_len * group;
  const int row0 = blockIdx.x * kRowsPerBlock;
  if (row0 >= rows) return;
  const int first_pos = args.context_lens[seq] - q_len;  // position of the first query token
  const int last_pos = first_pos + (min(row0 + kRowsPerBlock, rows) - 1) / group;
  const int num_tiles = last_pos / kTile + 1;
  // With a sliding window, tiles wholly before the block's first row's window are skipped.
  const int block_first_key =
      args.window > 0 ? max(0, first_pos + row0 / group - args.window + 1) : 0;
  const int first_tile = block_first_key / kTile;
  const int32_t* table_row = args.cache.block_tables + size_t(seq) * args.cache.max_blocks_per_seq;

  for (int i = threadIdx.x; i < kRowsPerBlock * D / 8; i += kThreads) {
    const int r = row0 + i / (D / 8), col = (i % (D / 8)) * 8;
    const bool valid = r < rows;
    const size_t src =
        valid
            ? (size_t(q_begin + r / group) * args.num_heads + kv_head * group + r % group) * D + col
            : 0;
    CpAsync16(q_smem + (i / (D / 8)) * kRow<D> + col, args.q + src, valid);
  }
  CpAsyncCommit();
  auto load = [&](int j) {
    const int tok0 = j * kTile;
    LoadTileBlock<KV, D>(args.cache, table_row[tok0 / args.cache.block_size], kv_head, tok0,
                         first_pos + q_len, stages + (j % kStages) * Layout::kStageElems);
  };
#pragma unroll
  for (int j = first_tile; j < first_tile + kStages - 1; ++j) {
    if (j < num_tiles) load(j);
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
  for (int j = first_tile; j < num_tiles; ++j) {
    if (j + kStages - 1 < num_tiles) load(j + kStages - 1);
    CpAsyncCommit();
    CpAsyncWait<kStages - 1>();
    __syncthreads();
    const T* attended;
    if constexpr (kIsFp8<KV>) {
      DequantizeTiles<T, D>(stages + (j % kStages) * Layout::kStageElems, wide, 2 * kTile,
                            threadIdx.x, kThreads);
      __syncthreads();  // the barrier at the end of the step keeps it until every warp is done
      attended = wide;
    } else {
      attended = stages + (j % kStages) * Layout::kStageElems;
    }
    const int tok0 = j * kTile;
    if (tok0 < warp_max && tok0 + kTile > warp_first_min) {  // a row of the warp sees a key
      AttendTile<T, D, 1>(q_smem + warp * 16 * kRow<D>, attended, tok0, limit, first,
                          tok0 + kTile > warp_min || tok0 < warp_first_max, scale_log2, st, lane);
    }
    __syncthreads();  // the stage is refilled next iteration
  }
  CpAsyncWait<0>();

  const int tig = lane % 4;
  const float v_scale = KvScale(args.cache.v_scale, kv_head);  // FP8: every output row's factor
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

template <typename T, typename KV, int D>
cudaError_t LaunchPrefill(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream) {
  constexpr size_t kSmem = PrefillSmem<D, KV>::kBytes;
  if (const cudaError_t e = AllowDynamicSmem<PrefillKernel<T, KV, D>>(int(kSmem)); e != cudaSuccess)
    return e;
  const int group = args.num_heads / args.cache.num_kv_heads;
  const int row_tiles = (args.max_query_len * group + kRowsPerBlock - 1) / kRowsPerBlock;
  const dim3 grid(row_tiles, args.cache.num_kv_heads, args.num_seqs);
  PrefillKernel<T, KV, D><<<grid, kThreads, kSmem, stream>>>(args, group);
  return cudaGetLastError();
}

}  // namespace

template <typename T, typename KV>
cudaError_t PagedPrefillAttention(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream) {
  if (args.num_seqs <= 0 || args.max_query_len <= 0) return cudaSuccess;
  if (args.cache.num_kv_heads <= 0 || args.num_heads % args.cache.num_kv_heads != 0 ||
      args.num_heads / args.cache.num_kv_heads > kRowsPerBlock ||
      args.cache.block_size % kTile != 0) {
    return cudaErrorInvalidValue;
  }
  switch (args.cache.head_dim) {
    case 64:
      return LaunchPrefill<T, KV, 64>(args, stream);
    case 128:
      return LaunchPrefill<T, KV, 128>(args, stream);
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
