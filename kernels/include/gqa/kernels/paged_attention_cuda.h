// CUDA paged KV append and grouped-query decode attention: host launchers.
//
// Decode attention computes one query token per sequence against its whole paged context.
// One thread block per (split, KV head, sequence) holds the whole group of query heads that
// share the KV head (group size = num_heads / num_kv_heads), so each K/V byte leaves DRAM once
// per step. The context is cut into `num_splits` ranges for parallelism at small batch; the
// partial results are merged with their log-sum-exp. Scores and softmax are fp32; Q.K^T and
// P.V run on tensor cores (mma.sync m16n8k16, bf16 or fp16 in, fp32 accumulate).
//
// The cache element type KV is the compute type T or __nv_fp8_e4m3 (an FP8 cache, compute
// capability 8.9+): the append kernels store round_e4m3(x / scale) with the cache view's
// per-KV-head scales (saturating at +-448), the attention kernels copy the FP8 tiles into shared
// memory (half the bytes) and widen them to T there before the tensor-core products, applying the K
// scale to the scores and the V scale to the output.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "gqa/kernels/decode_selector.h"
#include "gqa/kernels/paged_kv.h"
#include "gqa/kernels/prefill_selector.h"

namespace gqa::kernels::cuda {

// Bytes of fp32 scratch the split merge needs: partial outputs and their log-sum-exps.
size_t DecodeWorkspaceBytes(int num_seqs, int num_heads, int head_dim, int num_splits);

template <typename T, typename KV = T>
struct DecodeAttentionArgs {
  const T* q = nullptr;                   // [num_seqs, num_heads, head_dim]
  T* out = nullptr;                       // [num_seqs, num_heads, head_dim]
  PagedKvView<KV> cache;                  // k, v: [num_blocks, num_kv_heads, block_size, head_dim]
  const int32_t* context_lens = nullptr;  // [num_seqs], each >= 1, device memory
  int num_seqs = 0;
  int num_heads = 0;
  float scale = 0.0f;         // usually 1 / sqrt(head_dim)
  void* workspace = nullptr;  // DecodeWorkspaceBytes(...) bytes, when num_splits > 1
  // > 0: a sliding window (Mistral): the query at position p sees keys p - window + 1 ... p;
  // cache blocks wholly before it are not read. The splits of `choice` then cover the window
  // from its first 16-token tile (size them with DecodeKeysPerQuery).
  int window = 0;
  // Launch with programmatic serialization (pdl.cuh): the blocks may start, read the lengths and
  // block ids and prefetch, while the kernel before finishes. Worth it after a kernel that lets
  // its dependents start only at its end (the skinny QKV product); after one that does so at its
  // start (QkvRopeAppend), waiting blocks held the multiprocessors and MQA steps ran 20% slower.
  bool after_previous = false;
};

// Launches the kernel `choice` names (from SelectDecodeKernel for the same shape and cache
// element: choice.kv must name KV).
template <typename T, typename KV = T>
cudaError_t PagedDecodeAttention(const DecodeAttentionArgs<T, KV>& args,
                                 const DecodeKernelChoice& choice, cudaStream_t stream);

// Which prefill kernel runs. kWarpgroup: the Hopper kernel (wgmma, 128 rows per block, two
// warpgroups), for a 16-bit cache, unsplit keys, a compute capability 9.0 GPU and a build with
// sm_90a code; forced where it does not apply it returns cudaErrorNotSupported (no GPU or build
// for it) or cudaErrorInvalidValue. kMmaSync: the mma.sync kernel (every GPU, splits, FP8).
// kAuto: the warpgroup kernel wherever it applies, the mma.sync kernel elsewhere
// (kWarpgroupByDefault in paged_prefill_attention.cu).
enum class PrefillPath { kAuto, kMmaSync, kWarpgroup };
constexpr int kWarpgroupPrefillVariants = 12;
// Variants 11 and 12 (three consumer warpgroups) exist at head_dim 64 only.
constexpr bool WarpgroupPrefillVariantBuilt(int variant, int head_dim) {
  return variant >= 1 && variant <= kWarpgroupPrefillVariants && (variant <= 10 || head_dim == 64);
}

template <typename T, typename KV = T>
struct PrefillAttentionArgs {
  const T* q = nullptr;                   // [num_tokens, num_heads, head_dim]
  T* out = nullptr;                       // [num_tokens, num_heads, head_dim]
  PagedKvView<KV> cache;                  // holds every sequence's keys up to its context_len
  const int32_t* query_start = nullptr;   // [num_seqs + 1], device memory
  const int32_t* context_lens = nullptr;  // [num_seqs], device memory
  int num_seqs = 0;
  int num_heads = 0;
  int max_query_len = 0;  // the longest query_start[s + 1] - query_start[s]
  float scale = 0.0f;
  int window = 0;  // > 0: a sliding window, as in DecodeAttentionArgs
  // > 1: each block's keys in this many ranges, merged by log-sum-exp (SelectPrefillKeySplits;
  // at most kPrefillMaxKeySplits). Then num_query_tokens (query_start[num_seqs]) and a workspace
  // of PrefillWorkspaceBytes(num_query_tokens, num_heads, head_dim, key_splits) are needed.
  int key_splits = 1;
  int num_query_tokens = 0;
  void* workspace = nullptr;
  // The kernel and its variant; tests and benchmarks set them. The mma.sync kernel's 16-key
  // tiles per pipeline step: 1, 2 or 4 (0: PrefillKeyTilesPerStep(head_dim, key_splits)). The
  // warpgroup kernel's variant, 1 to kWarpgroupPrefillVariants (0: the default, 7 at head_dim
  // 128 and 10 at 64): 64 keys per step in 3 stages; 128 keys in 2; 64 keys in 3 stages with the
  // next step's scores computed during this step's softmax; the same in 4 stages; the same
  // schedule with a producer warp copying K and V by TMA, 64 keys in 4 stages; 128 keys in 3;
  // the same with the two warpgroups issuing their products in turns (ping-pong, 7); with one
  // m64n128 product per score chain; 6 and 7 persistent (one block per multiprocessor); and, at
  // head_dim 64, three consumer warpgroups (192 rows per block) at 64 keys per step in 4 slots,
  // and that persistent.
  PrefillPath path = PrefillPath::kAuto;
  int key_tiles_per_step = 0;
  int warpgroup_variant = 0;
};

// Causal grouped-query attention of several query tokens per sequence over the paged cache
// (prefill, chunked prefill, a prompt that extends cached tokens). Sequence s's queries are the
// last query_start[s + 1] - query_start[s] positions of its context_lens[s]; each attends to
// the keys at and before its own position. FlashAttention-style: a block takes rows (query token,
// group head) of one KV head and streams K/V tiles through shared memory with an online softmax
// on tensor cores; no score matrix is ever stored. The mma.sync kernel: 64 rows per block, 16
// per warp. The warpgroup kernel (Hopper, args.path): 128 rows per block, 64 per warpgroup, the
// products reading K and V from shared memory. head_dim 64 or 128; group size up to 64.
template <typename T, typename KV = T>
cudaError_t PagedPrefillAttention(const PrefillAttentionArgs<T, KV>& args, cudaStream_t stream);

// True when the warpgroup prefill kernel can run on the current device: compute capability 9.0
// and a build with sm_90a code.
bool WarpgroupPrefillAvailable();

// True when the driver encodes tensor maps (the producer-warp kernels' TMA copies need them).
bool TensorMapsAvailable();

// True when an unsplit prefill (key_splits <= 1, key_tiles_per_step 0) asked of `path` runs on
// the warpgroup kernel on the current device: PagedPrefillAttention's dispatch, which the key-split
// selector's PrefillShapeForSplits::warpgroup_unsplit must follow.
bool WarpgroupPrefillRunsUnsplit(PrefillPath path, bool fp8_cache);

// Writes each token's K and V into its slot of the paged cache (FP8: quantized).
template <typename T, typename KV = T>
cudaError_t PagedKvAppend(const T* k,            // [num_tokens, num_kv_heads, head_dim]
                          const T* v,            // [num_tokens, num_kv_heads, head_dim]
                          const int64_t* slots,  // [num_tokens], device memory
                          int num_tokens, const PagedKvView<KV>& cache, cudaStream_t stream);

// Splits a fused Q|K|V projection row by row: applies the rotate-half rotary embedding
// (angle = positions[t] * inv_freq[i], as ApplyRope) to the query and key heads, writes the
// queries to q_out and the keys and values to their slots of the cache (slot < 0: padding,
// skipped; FP8: quantized from the fp32 rotated value).
template <typename T, typename KV = T>
cudaError_t QkvRopeAppend(const T* qkv,  // [num_tokens, num_heads + 2 * num_kv_heads, head_dim]
                          const int32_t* positions,  // [num_tokens], device memory
                          const float* inv_freq,     // [head_dim / 2], device memory
                          const int64_t* slots,      // [num_tokens], device memory
                          int num_tokens, int num_heads,
                          T* q_out,  // [num_tokens, num_heads, head_dim]
                          const PagedKvView<KV>& cache, cudaStream_t stream);

}  // namespace gqa::kernels::cuda
