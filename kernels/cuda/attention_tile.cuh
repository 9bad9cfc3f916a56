// Device building blocks shared by the paged attention kernels (decode and prefill): PTX
// wrappers (cp.async, ldmatrix, mma.sync m16n8k16), one warp's online-softmax state over 16-row
// query tiles, the copy of one 16-key K/V tile into shared memory, and the tile update itself.
// Shared-memory tiles are [16 keys][head_dim + 8]: the 16-byte row padding keeps ldmatrix free
// of bank conflicts. An FP8 (E4M3) cache is copied into shared memory as it is stored (tiles of
// [16 keys][head_dim + 16] bytes, half the bytes of a 16-bit tile) and DequantizeTiles turns it
// into 16-bit tiles before the tensor-core products; its scales are applied to the scores (K) and
// the output (V), once per row, not per element.
#pragma once

#include <cuda_fp8.h>

#include <cstdint>
#include <type_traits>

#include "gqa/kernels/paged_kv.h"
#include "ptx.cuh"
#include "vec.cuh"

namespace gqa::kernels::cuda {
namespace attention {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kTile = 16;  // keys per tile and pipeline stage
constexpr int kStages = 3;
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory row stride in elements: 16 bytes of padding keeps ldmatrix conflict-free.
template <int D>
constexpr int kRow = D + 8;
// The same for a tile of element type E as the cache stores it (16 bytes of padding).
template <typename E, int D>
constexpr int kRowOf = D + 16 / int(sizeof(E));

template <typename E>
constexpr bool kIsFp8 = sizeof(E) == 1;

// ---------------------------------------------------------------- PTX wrappers (ptx.cuh has
// cp.async and mma.sync)

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddress(smem)));
}
__device__ __forceinline__ void LdMatrixX4Trans(uint32_t (&r)[4], const void* smem) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(SmemAddress(smem)));
}

// Two floats as a packed pair of T (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t Pack<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <>
__device__ __forceinline__ uint32_t Pack<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// ---------------------------------------------------------------- per-warp attention state

template <int D, int QT>
struct WarpState {
  float out[QT][D / 8][4];  // unnormalized O rows (g, g + 8) of each 16-row query tile
  float max[QT][2];         // running max (log2 domain) of rows g and g + 8
  float sum[QT][2];         // running sum of exp2, this thread's columns only

  __device__ void Init() {
#pragma unroll
    for (int mt = 0; mt < QT; ++mt) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) out[mt][dt][e] = 0.0f;
      }
      max[mt][0] = max[mt][1] = -INFINITY;
      sum[mt][0] = sum[mt][1] = 0.0f;
    }
  }
};

// Issues this warp's share of the async copies of one 16-token tile of K and V (which lies in
// cache block `block`) into a stage buffer: warp `part` of the kParts warps that share the stage
// copies rows part * 16 / kParts ... . A stage holds kStageTiles tiles of K, then as many of V:
// `stage` points at this tile's K rows, its V rows lie kStageTiles tiles further on. Rows are
// kRowOf<T, D> elements apart (kRow<D> for a 16-bit T; an FP8 tile is copied as stored).
template <typename T, int D, int kParts = 1, int kStageTiles = 1>
__device__ __forceinline__ void LoadTile(const PagedKvView<T>& cache, int block, int kv_head,
                                         int tok0, int end, T* stage, int lane, int part = 0) {
  // A tile wholly past the context copies nothing (zero-fill); its table entry may hold -1, so
  // its addresses are formed from block 0 instead.
  if (tok0 >= end) block = 0;
  const size_t base = ((size_t(block) * cache.num_kv_heads + kv_head) * cache.block_size +
                       tok0 % cache.block_size) *
                      D;
  // Lane l copies 16-byte column chunk (l % kLanesPerRow) of rows l / kLanesPerRow,
  // + kRowsPerPass, ...: one address computation, then constant strides.
  constexpr int kChunkElems = 16 / int(sizeof(T));
  constexpr int kStride = kRowOf<T, D>;
  constexpr int kLanesPerRow = D / kChunkElems;
  constexpr int kRowsPerPass = 32 / kLanesPerRow;
  constexpr int kPasses = kTile / kRowsPerPass / kParts;
  static_assert(kPasses >= 1, "more parts than passes of the tile");
  const int row = part * kPasses * kRowsPerPass + lane / kLanesPerRow;
  const int col = (lane % kLanesPerRow) * kChunkElems;
  const T* k_src = cache.k + base + size_t(row) * D + col;
  const T* v_src = cache.v + base + size_t(row) * D + col;
  T* k_dst = stage + row * kStride + col;
  T* v_dst = k_dst + kStageTiles * kTile * kStride;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const bool valid = tok0 + row + pass * kRowsPerPass < end;
    CpAsync16(k_dst + pass * kRowsPerPass * kStride, k_src + pass * kRowsPerPass * D, valid);
    CpAsync16(v_dst + pass * kRowsPerPass * kStride, v_src + pass * kRowsPerPass * D, valid);
  }
}

// A prefill block's query rows row0 .. row0 + kRows - 1 (row r: query token r / group of the
// sequence starting at q_begin, head kv_head * group + r % group) into shared memory as padded
// rows of kRow<D>, by the block's kThreadsOf threads with cp.async; rows past `rows` are zeros.
template <typename T, int D, int kRows, int kThreadsOf>
__device__ __forceinline__ void LoadQueryRows(const T* q,  // [tokens, num_heads, D]
                                              int q_begin, int num_heads, int kv_head, int group,
                                              int row0, int rows, T* q_smem) {
  for (int i = threadIdx.x; i < kRows * D / 8; i += kThreadsOf) {
    const int r = row0 + i / (D / 8), col = (i % (D / 8)) * 8;
    const bool valid = r < rows;
    const size_t src =
        valid ? (size_t(q_begin + r / group) * num_heads + kv_head * group + r % group) * D + col
              : 0;
    CpAsync16(q_smem + (i / (D / 8)) * kRow<D> + col, q + src, valid);
  }
}

// Sixteen E4M3 values (one 16-byte chunk) as sixteen T, exactly (every E4M3 value is a bf16 and
// an fp16 value), into two 16-byte chunks.
template <typename T>
__device__ __forceinline__ void DequantizeChunk(const uint4& in, uint4 (&out)[2]) {
  const __nv_fp8x2_storage_t* pairs = reinterpret_cast<const __nv_fp8x2_storage_t*>(&in);
  uint32_t* dst = reinterpret_cast<uint32_t*>(out);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pairs[i], __NV_E4M3);
    if constexpr (std::is_same_v<T, __half>) {
      dst[i] = uint32_t(h.x) | (uint32_t(h.y) << 16);
    } else {
      const float2 f = __half22float2(__half2(h));
      dst[i] = Pack<T>(f.x, f.y);
    }
  }
}

// Rows [0, rows) of an FP8 tile area (row stride kRowOf<uint8, D>) into 16-bit rows (stride
// kRow<D>), chunks thread, thread + threads, ... of the caller's `threads` threads.
template <typename T, int D, typename E>
__device__ __forceinline__ void DequantizeTiles(const E* src, T* dst, int rows, int thread,
                                                int threads) {
  static_assert(kIsFp8<E>, "DequantizeTiles reads FP8 tiles");
  constexpr int kChunksPerRow = D / 16;
  for (int c = thread; c < rows * kChunksPerRow; c += threads) {
    const int row = c / kChunksPerRow, col = (c % kChunksPerRow) * 16;
    const uint4 in = *reinterpret_cast<const uint4*>(src + row * kRowOf<E, D> + col);
    uint4 out[2];
    DequantizeChunk<T>(in, out);
    uint4* d = reinterpret_cast<uint4*>(dst + row * kRow<D> + col);
    d[0] = out[0];
    d[1] = out[1];
  }
}

// The scale of KV head `kv_head` of an FP8 cache (1 for a 16-bit one or no scales).
__device__ __forceinline__ float KvScale(const float* scales, int kv_head) {
  return scales ? scales[kv_head] : 1.0f;
}

// One step of NK 16-key tiles (16 * NK keys, K rows then V rows in `stage`): S = Q.K^T (masked,
// scaled to log2 units), online softmax, O += P.V.
// Several tiles per step give the warp NK independent chains of products and pay the softmax's row
// bookkeeping (max shuffles, rescale) once per 16 * NK keys.
template <typename T, int D, int QT, int NK = 1>
// limit[mt][r]: keys at positions >= limit are masked for row g (r = 0) or g + 8 (r = 1) of query
// tile mt, and so are keys before first[mt][r] (a sliding window; 0 without one); `mask`
// (uniform across the warp) says whether any key of this step needs either.
__device__ __forceinline__ void AttendTile(const T* q_smem, const T* stage, int tok0,
                                           const int (&limit)[QT][2], const int (&first)[QT][2],
                                           bool mask, float scale_log2, WarpState<D, QT>& st,
                                           int lane) {
  const T* k_tile = stage;
  const T* v_tile = stage + NK * kTile * kRow<D>;
  const int tig = lane % 4;
  float s[QT][2 * NK][4];  // scores of key tiles of 8: keys nt * 8 + 2 * tig + e
#pragma unroll
  for (int mt = 0; mt < QT; ++mt) {
#pragma unroll
    for (int nt = 0; nt < 2 * NK; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) s[mt][nt][e] = 0.0f;
    }
  }
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    uint32_t qa[QT][4];
#pragma unroll
    for (int mt = 0; mt < QT; ++mt) {
      LdMatrixX4(qa[mt], q_smem + (mt * 16 + lane % 16) * kRow<D> + kk * 16 + (lane / 16) * 8);
    }
#pragma unroll
    for (int nk = 0; nk < NK; ++nk) {
      uint32_t kb[4];  // B fragments: tokens 0-7 (k lo, k hi), tokens 8-15 (k lo, k hi)
      LdMatrixX4(kb, k_tile + (nk * kTile + (lane % 8) + (lane / 16) * 8) * kRow<D> + kk * 16 +
                         ((lane / 8) % 2) * 8);
#pragma unroll
      for (int mt = 0; mt < QT; ++mt) {
        Mma<T>(s[mt][2 * nk], qa[mt], kb[0], kb[1]);
        Mma<T>(s[mt][2 * nk + 1], qa[mt], kb[2], kb[3]);
      }
    }
  }
  uint32_t pa[QT][NK][4];
#pragma unroll
  for (int mt = 0; mt < QT; ++mt) {
    bool max_moved = false;
    float alphas[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {  // row g, then row g + 8
      float tile_max = -INFINITY;
#pragma unroll
      for (int nt = 0; nt < 2 * NK; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[mt][nt][r * 2 + e];
          v *= scale_log2;
          const int key = tok0 + nt * 8 + 2 * tig + e;
          if (mask && (key >= limit[mt][r] || key < first[mt][r])) v = -INFINITY;
          tile_max = fmaxf(tile_max, v);
        }
      }
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
      tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
      const float new_max = fmaxf(st.max[mt][r], tile_max);
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      const float alpha = exp2f(st.max[mt][r] - base);
      float tile_sum = 0.0f;
#pragma unroll
      for (int nt = 0; nt < 2 * NK; ++nt) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[mt][nt][r * 2 + e];
          v = exp2f(v - base);
          tile_sum += v;
        }
      }
      st.sum[mt][r] = st.sum[mt][r] * alpha + tile_sum;
      st.max[mt][r] = new_max;
      alphas[r] = alpha;
      max_moved |= alpha != 1.0f;
    }
    // Once the running max settles, whole steps pass without rescaling the output.
    if (__any_sync(0xffffffffu, max_moved)) {
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
#pragma unroll
        for (int e = 0; e < 4; ++e) st.out[mt][dt][e] *= alphas[e / 2];
      }
    }
    // The accumulator layout of two n8 tiles is the A layout of one k16 step.
#pragma unroll
    for (int nk = 0; nk < NK; ++nk) {
      pa[mt][nk][0] = Pack<T>(s[mt][2 * nk][0], s[mt][2 * nk][1]);
      pa[mt][nk][1] = Pack<T>(s[mt][2 * nk][2], s[mt][2 * nk][3]);
      pa[mt][nk][2] = Pack<T>(s[mt][2 * nk + 1][0], s[mt][2 * nk + 1][1]);
      pa[mt][nk][3] = Pack<T>(s[mt][2 * nk + 1][2], s[mt][2 * nk + 1][3]);
    }
  }
#pragma unroll
  for (int dp = 0; dp < D / 16; ++dp) {
#pragma unroll
    for (int nk = 0; nk < NK; ++nk) {
      uint32_t vb[4];  // B fragments for d tiles 2dp and 2dp+1 (tokens lo, tokens hi)
      LdMatrixX4Trans(vb, v_tile + (nk * kTile + (lane % 8) + ((lane / 8) % 2) * 8) * kRow<D> +
                              dp * 16 + (lane / 16) * 8);
#pragma unroll
      for (int mt = 0; mt < QT; ++mt) {
        Mma<T>(st.out[mt][2 * dp], pa[mt][nk], vb[0], vb[1]);
        Mma<T>(st.out[mt][2 * dp + 1], pa[mt][nk], vb[2], vb[3]);
      }
    }
  }
}

// Writes one warp's state (query rows first_row ... first_row + 16 * QT - 1) into a merge region
// of kRows rows: [kRows] running max, [kRows] sum, [kRows][D] unnormalized output, all fp32.
template <int D, int QT, int kRows>
__device__ __forceinline__ void StoreWarpState(WarpState<D, QT>& st, float* merge, int first_row,
                                               int lane) {
  float* row_max = merge;
  float* row_sum = merge + kRows;
  float* out = merge + 2 * kRows;
  const int g = lane / 4, tig = lane % 4;
#pragma unroll
  for (int mt = 0; mt < QT; ++mt) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float total = st.sum[mt][r];
      total += __shfl_xor_sync(0xffffffffu, total, 1);
      total += __shfl_xor_sync(0xffffffffu, total, 2);
      const int row = first_row + mt * 16 + g + r * 8;
      if (tig == 0) {
        row_max[row] = st.max[mt][r];
        row_sum[row] = total;
      }
#pragma unroll
      for (int dt = 0; dt < D / 8; ++dt) {
        out[row * D + dt * 8 + 2 * tig] = st.out[mt][dt][r * 2];
        out[row * D + dt * 8 + 2 * tig + 1] = st.out[mt][dt][r * 2 + 1];
      }
    }
  }
}

}  // namespace attention
}  // namespace gqa::kernels::cuda
