// The building blocks of the warpgroup (wgmma) attention kernels, Hopper only: a pipeline step of
// NK keys of K and V in 128-byte-swizzled panels, a warpgroup's running state for its 64 rows,
// the online softmax on the score accumulators, the two products (S = Q.K^T, O += P.V, both
// reading K and V from shared memory), and FlashAttention-3's intra-warpgroup schedule. Used by
// the prefill kernel (prefill_warpgroup.cu) and the decode kernel (decode_warpgroup.cu).
#pragma once

#include <cfloat>
#include <cstdint>

#include "attention_tile.cuh"
#include "gqa/kernels/paged_kv.h"
#include "wgmma.cuh"

namespace gqa::kernels::cuda::warpgroup_attention {

using attention::kLog2e;
using attention::kRow;
using attention::LdMatrixX4;
using attention::Pack;

constexpr int kWarpgroupRows = 64;
constexpr int kWarpgroupThreads = 128;
constexpr int kPanel = 64;  // 16-bit columns per 128-byte swizzled panel

// One pipeline stage of NK keys at head_dim D: K, then V, each D / 64 panels of NK rows of 128
// bytes.
template <int D, int NK>
struct StepLayout {
  static constexpr int kPanelBytes = NK * 128;
  static constexpr int kOperandBytes = D / kPanel * kPanelBytes;
  static constexpr int kStageBytes = 2 * kOperandBytes;
};

// The block's kThreads threads copy the K and V rows of keys tok0 .. tok0 + NK - 1 (whole 16-key
// tiles, each in its cache block) into a stage: row t, 16-byte chunk c of the head goes to panel c
// / 8, swizzled. Keys at or past `end` are zero-filled, so stale cache data never reaches P.V.
template <typename T, int D, int NK, int kThreads>
__device__ __forceinline__ void LoadStep(const PagedKvView<T>& cache, const int32_t* table_row,
                                         int kv_head, int tok0, int end, unsigned char* stage) {
  using Layout = StepLayout<D, NK>;
  constexpr int kChunksPerRow = D / 8;
  for (int c = threadIdx.x; c < NK * kChunksPerRow; c += kThreads) {
    const int t = c / kChunksPerRow, chunk = c % kChunksPerRow;
    const int tok = tok0 + t;
    const int entry = min(tok / cache.block_size, cache.max_blocks_per_seq - 1);
    // Past the context the table may hold -1 (unused entries): read nothing, from block 0.
    const int block = tok < end ? table_row[entry] : 0;
    const size_t src = ((size_t(block) * cache.num_kv_heads + kv_head) * cache.block_size +
                        tok % cache.block_size) *
                           D +
                       chunk * 8;
    const int dst = (chunk / 8) * Layout::kPanelBytes + wgmma::SwizzledOffset(t, chunk % 8);
    CpAsync16(stage + dst, cache.k + src, tok < end);
    CpAsync16(stage + Layout::kOperandBytes + dst, cache.v + src, tok < end);
  }
}

// One warpgroup's running state: the output accumulators (one m64n64 product per 64 columns of
// the head), and per thread rows g and g + 8 of its warp: the running max (log2 units) and this
// thread's share of the running sum.
template <int D>
struct WarpgroupState {
  float out[D / kPanel][32];
  float max[2] = {-INFINITY, -INFINITY};
  float sum[2] = {0.0f, 0.0f};

  __device__ void Init() {
#pragma unroll
    for (int p = 0; p < D / kPanel; ++p) {
#pragma unroll
      for (int i = 0; i < 32; ++i) out[p][i] = 0.0f;
    }
  }
};

// 2^x in one multi-function unit instruction, subnormal results flushed to zero (exp2f adds a
// range fix-up around it). The softmax only takes x <= 0, where the flush costs nothing.
__device__ __forceinline__ float Exp2Fast(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// Online softmax over one step's raw scores s (keys tok0 + 64 * c + 8 * i + 2 * tig + e), masked
// to [first[r], limit[r]) when `mask`: s becomes the unnormalized probabilities
// 2^(s * scale_log2 - max), the running max (log2 units) and sum move on, and alphas[r] is the
// factor the output rows must be scaled by before this step's P.V. The max is taken on the raw
// scores (scale_log2 > 0 keeps their order; every caller's scale is 1 / sqrt(head_dim)), so each
// score costs one fused multiply-add before its exponential.
template <int D, int NK>
__device__ __forceinline__ void Softmax(float (&s)[NK / 64][32], int tok0, const int (&limit)[2],
                                        const int (&first)[2], bool mask, float scale_log2,
                                        WarpgroupState<D>& st, float (&alphas)[2], int lane) {
  const int tig = lane % 4;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float step_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[c][4 * i + 2 * r + e];
          const int key = tok0 + 64 * c + 8 * i + 2 * tig + e;
          if (mask && (key >= limit[r] || key < first[r])) v = -INFINITY;
          step_max = fmaxf(step_max, v);
        }
      }
    }
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    const float new_max = fmaxf(st.max[r], step_max * scale_log2);
    const float base = new_max == -INFINITY ? 0.0f : new_max;
    const float alpha = Exp2Fast(st.max[r] - base);
    float step_sum = 0.0f;
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float& v = s[c][4 * i + 2 * r + e];
          v = Exp2Fast(fmaf(v, scale_log2, -base));
          step_sum += v;
        }
      }
    }
    st.sum[r] = st.sum[r] * alpha + step_sum;
    st.max[r] = new_max;
    alphas[r] = alpha;
  }
}

// Scales the output rows by alphas (unconditionally: a branch here, around the products, would
// serialize them).
template <int D>
__device__ __forceinline__ void RescaleOutput(WarpgroupState<D>& st, const float (&alphas)[2]) {
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) {
#pragma unroll
    for (int i = 0; i < 32; ++i) st.out[pn][i] *= alphas[(i / 2) % 2];
  }
}

// The probabilities as the A operand of P.V (k16 slice kk: keys 16 * kk ...): two 8-key column
// tiles of the accumulator are the A layout of one 16-key slice.
template <typename T, int NK>
__device__ __forceinline__ void PackProbabilities(const float (&s)[NK / 64][32],
                                                  uint32_t (&p)[NK / 16][4]) {
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
    const float* a = &s[kk / 4][8 * (kk % 4)];
    p[kk][0] = Pack<T>(a[0], a[1]);
    p[kk][1] = Pack<T>(a[2], a[3]);
    p[kk][2] = Pack<T>(a[4], a[5]);
    p[kk][3] = Pack<T>(a[6], a[7]);
  }
}

// Issues S = Q.K^T for one warpgroup's 64 rows and the step's NK keys as one group of products:
// NK / 64 chains of m64n64 products per 16 columns of the head, or with kWide (NK 128) one chain
// of m64n128 products, which read each A fragment once for all 128 keys. The caller waits.
template <typename T, int D, int NK, bool kWide = false>
__device__ __forceinline__ void IssueScores(const uint32_t (&q)[D / 16][4],
                                            const unsigned char* stage, float (&s)[NK / 64][32]) {
  using Layout = StepLayout<D, NK>;
  static_assert(!kWide || NK == 128, "the wide chain covers 128 keys");
#pragma unroll
  for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(s[c]);
  wgmma::Fence();
  if constexpr (kWide) {
    // s[c][j] is column tile 8 c + j / 4 of the m64n128 accumulator: the same registers in order.
    float(&wide)[64] = reinterpret_cast<float(&)[64]>(s);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const unsigned char* k = stage + (kk / 4) * Layout::kPanelBytes + (kk % 4) * 32;
      wgmma::MmaRegAWide<T>(wide, q[kk], wgmma::SwizzledDescriptor(k), kk > 0);
    }
  } else {
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        // Keys 64c.. of panel kk / 4, columns 16 (kk % 4)..: 32 bytes per 16 columns.
        const unsigned char* k =
            stage + (kk / 4) * Layout::kPanelBytes + 64 * c * 128 + (kk % 4) * 32;
        wgmma::MmaRegA<T, false>(s[c], q[kk], wgmma::SwizzledDescriptor(k), kk > 0);
      }
    }
  }
  wgmma::Commit();
}

// Issues O += P.V for the step (P from Softmax) as one group of products.
template <typename T, int D, int NK>
__device__ __forceinline__ void IssueOutput(const uint32_t (&p)[NK / 16][4],
                                            const unsigned char* stage, WarpgroupState<D>& st) {
  using Layout = StepLayout<D, NK>;
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) wgmma::PinRegisters(st.out[pn]);
  wgmma::Fence();
  const unsigned char* v = stage + Layout::kOperandBytes;
#pragma unroll
  for (int kk = 0; kk < NK / 16; ++kk) {
#pragma unroll
    for (int pn = 0; pn < D / kPanel; ++pn) {
      // Keys 16kk.. (rows of 128 bytes) of head panel pn.
      const unsigned char* b = v + pn * Layout::kPanelBytes + kk * 16 * 128;
      wgmma::MmaRegA<T, true>(st.out[pn], p[kk], wgmma::SwizzledDescriptor(b), true);
    }
  }
  wgmma::Commit();
}

// Waits for every product this warpgroup issued, and pins the registers they wrote.
template <int D, int NK>
__device__ __forceinline__ void WaitAll(float (&s)[NK / 64][32], WarpgroupState<D>& st) {
  wgmma::Wait<0>();
#pragma unroll
  for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(s[c]);
#pragma unroll
  for (int pn = 0; pn < D / kPanel; ++pn) wgmma::PinRegisters(st.out[pn]);
}

// This warp's 16 query rows of a warpgroup's 64 (rows 16 * (warp % 4) ...) as the A fragments
// of S = Q.K^T, from padded rows of kRow<D> in shared memory.
template <int D>
__device__ __forceinline__ void LoadQueryFragments(const void* q_smem, int warp_in_group, int lane,
                                                   uint32_t (&q)[D / 16][4]) {
  const auto* rows = static_cast<const uint16_t*>(q_smem);
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    LdMatrixX4(q[kk],
               rows + (warp_in_group * 16 + lane % 16) * kRow<D> + kk * 16 + (lane / 16) * 8);
  }
}

// The steps of K and V the block copies with cp.async, every thread taking part, S - 2 steps
// ahead of the products: step j in slot j % S. On entry steps first_step .. first_step + S - 2
// are in flight as the newest S - 1 cp.async groups (an empty group for a step past the end).
// load(j) issues the copies of step j into its slot. Acquire(j) waits for step j (block
// barriers: every thread takes part) and refills the slot of step j - 2, whose products every
// warpgroup finished before the barrier; Release has nothing to do.
template <int D, int NK, int S, typename LoadFn>
struct CpAsyncSteps {
  static_assert(S >= 3, "the overlapped schedule keeps two steps landed");
  unsigned char* stages;
  int first_step;
  int num_steps;
  LoadFn load;

  __device__ unsigned char* Stage(int j) const {
    return stages + (j % S) * StepLayout<D, NK>::kStageBytes;
  }
  __device__ void Acquire(int j) {
    if (j == first_step) {
      CpAsyncWait<S - 2>();  // this thread's copies of the first step landed
    } else {
      CpAsyncWait<S - 3>();  // this thread's copies of step j landed
    }
    wgmma::FenceProxyAsync();
    __syncthreads();  // everyone's copies landed; everyone finished step j - 2's products
    if (j == first_step) return;
    if (j + S - 2 < num_steps) load(j + S - 2);
    CpAsyncCommit();
  }
  __device__ void Release(int) const {}
};

template <int D, int NK, int S, typename LoadFn>
__device__ CpAsyncSteps<D, NK, S, LoadFn> MakeCpAsyncSteps(unsigned char* stages, int first_step,
                                                           int num_steps, LoadFn load) {
  return {stages, first_step, num_steps, load};
}

// This warp's 16 query rows as the A fragments of S = Q.K^T (mma.sync's m16n8k16 A layout:
// fragment r + 2 h is row g + 8 r, columns 8 h + 2 tig and the next), straight from global
// memory: row_of(i) is the warp's row i (0 .. 15) as D values, or nullptr for zeros.
template <int D, typename RowFn>
__device__ __forceinline__ void LoadQueryFragmentsFromGlobal(RowFn&& row_of, int lane,
                                                             uint32_t (&q)[D / 16][4]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const auto* src = row_of(lane / 4 + 8 * r);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = kk * 16 + 8 * h + 2 * (lane % 4);
        q[kk][r + 2 * h] = src != nullptr ? *reinterpret_cast<const uint32_t*>(src + col) : 0u;
      }
    }
  }
}

// Whose turn it is to issue products. NoTurns: every warpgroup issues when it is ready.
struct NoTurns {
  __device__ void Start() const {}
  __device__ void Take() const {}
  __device__ void Pass() const {}
  __device__ void Finish() const {}
};

// FlashAttention-3's ping-pong between a block's two consumer warpgroups: each issues its
// products in turn (Take waits for the other to have issued, Pass lets it go), so one's softmax
// runs while the other's products hold the tensor cores. Named barriers kFirstBarrier (the
// turns of warpgroup 0) and kFirstBarrier + 1 (of warpgroup 1), 256 threads each: the waiting
// warpgroup syncs, the other arrives. Warpgroup 1 lets warpgroup 0 start, and warpgroup 0 takes
// warpgroup 1's last turn in Finish, so every arrival meets a wait. Both warpgroups run the same
// steps.
struct PingPongTurns {
  static constexpr int kFirstBarrier = 1;
  static constexpr int kThreads = 2 * kWarpgroupThreads;
  int warpgroup;  // 0 or 1

  __device__ void Start() const {
    if (warpgroup == 1) NamedBarrierArrive(kFirstBarrier, kThreads);
  }
  __device__ void Take() const { NamedBarrierSync(kFirstBarrier + warpgroup, kThreads); }
  __device__ void Pass() const { NamedBarrierArrive(kFirstBarrier + 1 - warpgroup, kThreads); }
  // After the last turn: warpgroup 1's last Pass (or Start) is still pending; warpgroup 0 takes
  // it, so no arrival outlives the block (and a persistent block's next item starts as after
  // Start).
  __device__ void Finish() const {
    if (warpgroup == 0) Take();
  }
};

// FlashAttention-3's intra-warpgroup pipelining over the steps [first_step, num_steps) (at least
// one): in step j the warpgroup issues step j's scores, then step j - 1's output product (its
// probabilities kept in p), and runs step j's softmax while that product runs. So a step keeps
// two slots: K of step j, V of step j - 1. `steps` holds them (CpAsyncSteps, or the producer
// warp's in producer_steps.cuh): steps.Stage(j) is step j's slot, steps.Acquire(j) returns
// once step j's K and V are there and visible to the products, steps.Release(j) says this thread's
// products that read step j's slot are done. softmax(scores, j, alphas) runs Softmax for step j.
// `turns` orders the issue of the products between warpgroups (NoTurns or PingPongTurns; the
// caller calls Start before the first call and Finish after the last). Every warpgroup runs every
// step (no product may sit in a branch: ptxas would serialize them). kWideScores: the scores as one
// m64n128 chain (NK 128).
template <typename T, int D, int NK, bool kWideScores = false, typename Steps, typename SoftmaxFn,
          typename Turns = NoTurns>
__device__ __forceinline__ void RunOverlappedSteps(const uint32_t (&q)[D / 16][4], int first_step,
                                                   int num_steps, Steps& steps, SoftmaxFn&& softmax,
                                                   WarpgroupState<D>& st, Turns turns = {}) {
  float scores[NK / 64][32];
  uint32_t p[NK / 16][4];  // the probabilities of the step whose P.V is next
  float alphas[2];         // ... and the output rows' factor before it
  steps.Acquire(first_step);
  turns.Take();
  IssueScores<T, D, NK, kWideScores>(q, steps.Stage(first_step), scores);
  turns.Pass();
  WaitAll<D, NK>(scores, st);
  softmax(scores, first_step, alphas);
  PackProbabilities<T, NK>(scores, p);
  for (int j = first_step + 1; j < num_steps; ++j) {
    steps.Acquire(j);
    turns.Take();
    IssueScores<T, D, NK, kWideScores>(q, steps.Stage(j), scores);
    RescaleOutput(st, alphas);
    IssueOutput<T, D, NK>(p, steps.Stage(j - 1), st);
    turns.Pass();
    wgmma::Wait<1>();  // the scores, not yet the output product
#pragma unroll
    for (int c = 0; c < NK / 64; ++c) wgmma::PinRegisters(scores[c]);
    softmax(scores, j, alphas);
    WaitAll<D, NK>(scores, st);
    steps.Release(j - 1);
    PackProbabilities<T, NK>(scores, p);
  }
  RescaleOutput(st, alphas);  // the last step's output product
  turns.Take();
  IssueOutput<T, D, NK>(p, steps.Stage(num_steps - 1), st);
  turns.Pass();
  WaitAll<D, NK>(scores, st);
  steps.Release(num_steps - 1);
}

// The total of a row's running sum over the four threads that hold its columns.
__device__ __forceinline__ float RowTotal(float partial) {
  partial += __shfl_xor_sync(0xffffffffu, partial, 1);
  return partial + __shfl_xor_sync(0xffffffffu, partial, 2);
}

}  // namespace gqa::kernels::cuda::warpgroup_attention
