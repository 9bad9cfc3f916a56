// gqa-bench kernels: times the paged decode attention kernel on the GPU and prints each shape
// beside its bandwidth floor (K/V bytes / measured copy bandwidth) and beside PyTorch's
// scaled_dot_product_attention (enable_gqa=True, and with K/V repeated per query head), which a
// Python script measures on the same device in the same run. With --kv_cache_dtype fp8_e4m3,
// each decode row is followed by the same shape over an FP8 (E4M3) cache, beside its own floor
// (half the K/V bytes), and the prefill table gains an FP8 column.
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gqa/kernels/paged_attention_cuda.h"
#include "gqa/kernels/prefill_selector.h"
#include "gqa/kernels/sampling_cuda.h"

#ifdef GQA_DECODE_TRACE
namespace gqa::kernels::cuda {
cudaError_t DecodeTraceReset();
cudaError_t DecodeTraceRead(unsigned long long* out8);
}  // namespace gqa::kernels::cuda
#endif

namespace {

using gqa::kernels::PagedKvView;
using T = __nv_bfloat16;

#define CHECK_CUDA(expr)                                                 \
  do {                                                                   \
    cudaError_t err_ = (expr);                                           \
    if (err_ != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(err_));                            \
      std::exit(1);                                                      \
    }                                                                    \
  } while (0)

constexpr int kHeads = 32;
int g_head_dim = 128;  // --head_dim 64|128
int g_window = 0;      // --window N: a sliding window of N keys (decode only)
constexpr int kBlockSize = 16;
constexpr size_t kRotateBytes = 512ull << 20;  // > 8x the L2 of a Hopper card
bool g_contiguous = false;                     // --contiguous: blocks in order (no paging scatter)
bool g_fp8 = false;  // --kv_cache_dtype fp8_e4m3: FP8 rows beside the bf16 ones
using Fp8 = __nv_fp8_e4m3;

__global__ void FillRandom(T* data, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
    data[i] = __float2bfloat16(float(int64_t(z >> 40) - (1 << 23)) / float(1 << 23));
  }
}

// Random E4M3 values in [-1, 1] (no NaN bytes).
__global__ void FillRandom(Fp8* data, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t z = (i + seed) * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 31)) * 0xbf58476d1ce4e5b9ull;
    data[i] = Fp8(float(int64_t(z >> 40) - (1 << 23)) / float(1 << 23));
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median seconds of `reps` runs of fn on `stream`, each between two CUDA events, after `warmup`.
template <typename Fn>
double MedianSeconds(Fn&& fn, int warmup, int reps, cudaStream_t stream = nullptr) {
  for (int i = 0; i < warmup; ++i) fn(i);
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    cudaEventRecord(start, stream);
    fn(i);
    cudaEventRecord(stop, stream);
    cudaEventSynchronize(stop);
    float ms;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms * 1e-3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return Median(times);
}

// Device-to-device copy bandwidth, counting bytes read plus written.
double CopyBandwidth() {
  const size_t bytes = 2ull << 30;
  void *a, *b;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double seconds = MedianSeconds(
      [&](int) { CHECK_CUDA(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice)); }, 3, 20);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / seconds;
}

struct Shape {
  int kv_heads, batch, context;
};

// One copy of a shape's inputs; several copies rotate so that timings do not come from L2.
// KV: the cache element (T, or Fp8).
template <typename KV>
struct Instance {
  KV *k, *v;
  T *q, *out;
  int32_t *tables, *lens;
  void* workspace;
};

// Returns the eager median (us per call) and sets *graph_us to the graph-replay time per call.
using gqa::kernels::DecodeVariant;

template <typename KV = T>
double TimeDecode(const Shape& s, int sm_count, double* kv_bytes, int* splits, double* graph_us,
                  int splits_override = 0, DecodeVariant variant = {0, 0, 0},
                  int warpgroup_stages = 0, bool producer = false) {
  constexpr bool kFp8 = sizeof(KV) == 1;
  const int blocks_per_seq = (s.context + kBlockSize - 1) / kBlockSize;
  const int num_blocks = s.batch * blocks_per_seq;
  const size_t pool = size_t(num_blocks) * s.kv_heads * kBlockSize * g_head_dim;
  const int attended = g_window > 0 ? std::min(s.context, g_window) : s.context;
  *kv_bytes = 2.0 * s.batch * attended * s.kv_heads * g_head_dim * sizeof(KV);
  const int max_keys = gqa::kernels::DecodeKeysPerQuery(s.context, g_window);
  auto choice = gqa::kernels::SelectDecodeKernel(
      kHeads, s.kv_heads, g_head_dim, kBlockSize, s.batch, max_keys, sm_count, splits_override,
      kFp8 ? gqa::kernels::KvElement::kFp8E4M3 : gqa::kernels::KvElement::k16Bit);
  if (variant.warps > 0) {
    choice.warps = variant.warps;
    choice.stages = variant.stages;
    choice.key_tiles = variant.key_tiles;
  }
  if (warpgroup_stages > 0) {  // the Hopper warpgroup kernel, its own splits
    choice = gqa::kernels::SelectWarpgroupDecodeKernel(
        kHeads, s.kv_heads, g_head_dim, kBlockSize, s.batch, max_keys, sm_count, splits_override);
    choice.stages = warpgroup_stages;
    choice.producer = producer;
  }
  *splits = choice.num_splits;
  const int copies = int(std::clamp<double>(std::ceil(kRotateBytes / *kv_bytes), 1, 64));
  std::vector<int32_t> tables(num_blocks);
  std::iota(tables.begin(), tables.end(), 0);
  if (!g_contiguous) std::shuffle(tables.begin(), tables.end(), std::mt19937(7));  // scattered
  std::vector<int32_t> lens(s.batch, s.context);
  const size_t q_elems = size_t(s.batch) * kHeads * g_head_dim;
  const size_t ws =
      gqa::kernels::cuda::DecodeWorkspaceBytes(s.batch, kHeads, g_head_dim, choice.num_splits);
  std::vector<Instance<KV>> inst(copies);
  for (int c = 0; c < copies; ++c) {
    Instance<KV>& in = inst[c];
    CHECK_CUDA(cudaMalloc(&in.k, pool * sizeof(KV)));
    CHECK_CUDA(cudaMalloc(&in.v, pool * sizeof(KV)));
    CHECK_CUDA(cudaMalloc(&in.q, q_elems * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&in.out, q_elems * sizeof(T)));
    CHECK_CUDA(cudaMalloc(&in.tables, tables.size() * 4));
    CHECK_CUDA(cudaMalloc(&in.lens, lens.size() * 4));
    CHECK_CUDA(cudaMalloc(&in.workspace, std::max<size_t>(ws, 16)));
    CHECK_CUDA(cudaMemset(in.workspace, 0, std::max<size_t>(ws, 16)));
    FillRandom<<<1024, 256>>>(in.k, pool, 1 + c);
    FillRandom<<<1024, 256>>>(in.v, pool, 2 + c);
    FillRandom<<<1024, 256>>>(in.q, q_elems, 3 + c);
    CHECK_CUDA(cudaMemcpy(in.tables, tables.data(), tables.size() * 4, cudaMemcpyHostToDevice));
    CHECK_CUDA(cudaMemcpy(in.lens, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
  }
  auto launch = [&](int c, cudaStream_t stream) {
    const Instance<KV>& in = inst[c];
    gqa::kernels::cuda::DecodeAttentionArgs<T, KV> args;
    args.q = in.q;
    args.out = in.out;
    args.cache =
        PagedKvView<KV>{in.k, in.v, in.tables, blocks_per_seq, s.kv_heads, kBlockSize, g_head_dim};
    args.context_lens = in.lens;
    args.num_seqs = s.batch;
    args.num_heads = kHeads;
    args.scale = 1.0f / std::sqrt(float(g_head_dim));
    args.workspace = in.workspace;
    args.window = g_window;
    CHECK_CUDA(gqa::kernels::cuda::PagedDecodeAttention<T>(args, choice, stream));
  };
  cudaStream_t stream;
  CHECK_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int i = 0; i < 10; ++i) launch(i % copies, stream);
  CHECK_CUDA(cudaStreamSynchronize(stream));
#ifdef GQA_DECODE_TRACE
  for (int rep = 0; rep < 3; ++rep) {
    CHECK_CUDA(gqa::kernels::cuda::DecodeTraceReset());
    launch(rep % copies, stream);
    CHECK_CUDA(cudaStreamSynchronize(stream));
    unsigned long long t[8];
    CHECK_CUDA(gqa::kernels::cuda::DecodeTraceRead(t));
    std::printf(
        "trace kv %d batch %d ctx %d splits %d: block0 prologue %.2f us, loop %.2f us, "
        "epilogue %.2f us; all blocks %.2f us; merge kernel starts +%.2f us, lasts %.2f us\n",
        s.kv_heads, s.batch, s.context, choice.num_splits, (t[1] - t[0]) * 1e-3,
        (t[2] - t[1]) * 1e-3, (t[3] - t[2]) * 1e-3, (t[5] - t[4]) * 1e-3,
        t[7] ? (t[6] - t[5]) * 1e-3 : 0.0, t[7] ? (t[7] - t[6]) * 1e-3 : 0.0);
  }
#endif
  // Eager: one call between two events, host launch cost included.
  const double eager_us =
      1e6 * MedianSeconds([&](int i) { launch(i % copies, stream); }, 0, 200, stream);
  // Graph: kGraphCalls calls captured once and replayed, as a server's decode step would be.
  constexpr int kGraphCalls = 20;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < kGraphCalls; ++i) launch(i % copies, stream);
  CHECK_CUDA(cudaStreamEndCapture(stream, &graph));
  CHECK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  CHECK_CUDA(cudaGraphLaunch(exec, stream));
  *graph_us = 1e6 / kGraphCalls *
              MedianSeconds([&](int) { CHECK_CUDA(cudaGraphLaunch(exec, stream)); }, 1, 30, stream);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  for (auto& in : inst) {
    cudaFree(in.k);
    cudaFree(in.v);
    cudaFree(in.q);
    cudaFree(in.out);
    cudaFree(in.tables);
    cudaFree(in.lens);
    cudaFree(in.workspace);
  }
  return eager_us;
}

struct PeerTimes {
  double sdpa_eager = NAN, sdpa_graph = NAN, naive_eager = NAN, naive_graph = NAN;
};

// Runs the PyTorch peer script; returns "kv batch context" -> its timings (us per call).
std::map<std::string, PeerTimes> RunPeer(const std::string& command,
                                         const std::vector<Shape>& shapes) {
  std::string args = " --head_dim " + std::to_string(g_head_dim);
  for (const auto& s : shapes) {
    args += " " + std::to_string(s.kv_heads) + "," + std::to_string(s.batch) + "," +
            std::to_string(s.context);
  }
  std::map<std::string, PeerTimes> result;
  FILE* pipe = popen((command + args).c_str(), "r");
  if (!pipe) return result;
  int kv, batch, context;
  PeerTimes t;
  while (std::fscanf(pipe, "%d %d %d %lf %lf %lf %lf", &kv, &batch, &context, &t.sdpa_eager,
                     &t.sdpa_graph, &t.naive_eager, &t.naive_graph) == 7) {
    result[std::to_string(kv) + " " + std::to_string(batch) + " " + std::to_string(context)] = t;
  }
  pclose(pipe);
  return result;
}

// bf16 matrix-product rate through cuBLAS (8192^3, random data): the compute ceiling.
double MatmulRate() {
  const int n = 8192;
  T *a, *b, *c;
  CHECK_CUDA(cudaMalloc(&a, size_t(n) * n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&b, size_t(n) * n * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&c, size_t(n) * n * sizeof(T)));
  FillRandom<<<1024, 256>>>(a, size_t(n) * n, 11);
  FillRandom<<<1024, 256>>>(b, size_t(n) * n, 12);
  cublasHandle_t handle;
  cublasCreate(&handle);
  const float one = 1.0f, zero = 0.0f;
  auto gemm = [&] {
    cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16BF, n, b, CUDA_R_16BF,
                 n, &zero, c, CUDA_R_16BF, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  const double seconds = MedianSeconds([&](int) { gemm(); }, 3, 10);
  cublasDestroy(handle);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * n * n * double(n) / seconds;
}

// Causal prefill of `batch` chunks of `len` tokens, each the last of a context of `context`
// tokens (context == len: whole prompts; more: a chunk after a cached prefix), its keys in
// `key_splits` ranges; returns the median us per call
// over a cache of KV.
template <typename KV = T>
double TimePrefill(int kv_heads, int batch, int len, int context = 0, int key_splits = 1,
                   int key_tiles_per_step = 0,
                   gqa::kernels::cuda::PrefillPath path = gqa::kernels::cuda::PrefillPath::kAuto,
                   int warpgroup_variant = 0) {
  if (context < len) context = len;
  const int blocks_per_seq = (context + kBlockSize - 1) / kBlockSize;
  const size_t pool = size_t(batch) * blocks_per_seq * kv_heads * kBlockSize * g_head_dim;
  const size_t q_elems = size_t(batch) * len * kHeads * g_head_dim;
  KV *k, *v;
  T *q, *out;
  int32_t *tables, *lens, *starts;
  CHECK_CUDA(cudaMalloc(&k, pool * sizeof(KV)));
  CHECK_CUDA(cudaMalloc(&v, pool * sizeof(KV)));
  CHECK_CUDA(cudaMalloc(&q, q_elems * sizeof(T)));
  CHECK_CUDA(cudaMalloc(&out, q_elems * sizeof(T)));
  FillRandom<<<1024, 256>>>(k, pool, 21);
  FillRandom<<<1024, 256>>>(v, pool, 22);
  FillRandom<<<1024, 256>>>(q, q_elems, 23);
  std::vector<int32_t> table(size_t(batch) * blocks_per_seq), len_v(batch, context),
      start_v(batch + 1);
  std::iota(table.begin(), table.end(), 0);
  std::shuffle(table.begin(), table.end(), std::mt19937(9));
  for (int s = 0; s <= batch; ++s) start_v[s] = s * len;
  CHECK_CUDA(cudaMalloc(&tables, table.size() * 4));
  CHECK_CUDA(cudaMalloc(&lens, batch * 4));
  CHECK_CUDA(cudaMalloc(&starts, (batch + 1) * 4));
  CHECK_CUDA(cudaMemcpy(tables, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(lens, len_v.data(), batch * 4, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(starts, start_v.data(), (batch + 1) * 4, cudaMemcpyHostToDevice));
  gqa::kernels::cuda::PrefillAttentionArgs<T, KV> args;
  args.q = q;
  args.out = out;
  args.cache = PagedKvView<KV>{k, v, tables, blocks_per_seq, kv_heads, kBlockSize, g_head_dim};
  args.query_start = starts;
  args.context_lens = lens;
  args.num_seqs = batch;
  args.num_heads = kHeads;
  args.max_query_len = len;
  args.scale = 1.0f / std::sqrt(float(g_head_dim));
  args.key_splits = key_splits;
  args.key_tiles_per_step = key_tiles_per_step;
  args.path = path;
  args.warpgroup_variant = warpgroup_variant;
  args.num_query_tokens = batch * len;
  void* workspace = nullptr;
  const size_t workspace_bytes =
      gqa::kernels::PrefillWorkspaceBytes(args.num_query_tokens, kHeads, g_head_dim, key_splits);
  if (workspace_bytes > 0) CHECK_CUDA(cudaMalloc(&workspace, workspace_bytes));
  args.workspace = workspace;
  const double seconds = MedianSeconds(
      [&](int) { CHECK_CUDA(gqa::kernels::cuda::PagedPrefillAttention<T>(args, nullptr)); }, 3, 20);
  for (void* p : {(void*)k, (void*)v, (void*)q, (void*)out, (void*)tables, (void*)lens,
                  (void*)starts, workspace}) {
    cudaFree(p);
  }
  return seconds * 1e6;
}

// Runs the PyTorch peer in prefill mode: "kv batch len" -> causal SDPA us.
std::map<std::string, double> RunPrefillPeer(const std::string& command,
                                             const std::vector<Shape>& shapes) {
  std::string args = " --head_dim " + std::to_string(g_head_dim) + " --prefill";
  for (const auto& s : shapes) {
    args += " " + std::to_string(s.kv_heads) + "," + std::to_string(s.batch) + "," +
            std::to_string(s.context);
  }
  std::map<std::string, double> result;
  FILE* pipe = popen((command + args).c_str(), "r");
  if (!pipe) return result;
  int kv, batch, len;
  double us;
  while (std::fscanf(pipe, "%d %d %d %lf", &kv, &batch, &len, &us) == 4) {
    result[std::to_string(kv) + " " + std::to_string(batch) + " " + std::to_string(len)] = us;
  }
  pclose(pipe);
  return result;
}

void PrefillTable(const std::string& peer) {
  const double rate = MatmulRate();
  std::printf(
      "\nprefill attention (causal), bf16, %d query heads, head_dim %d, KV block %d; "
      "cuBLAS bf16 8192^3: %.0f TFLOP/s\n",
      kHeads, g_head_dim, kBlockSize, rate / 1e12);
  std::vector<Shape> shapes = {
      {32, 1, 4096}, {8, 1, 4096}, {1, 1, 4096}, {8, 4, 2048}, {8, 1, 16384}};
  const auto peers = peer.empty() ? std::map<std::string, double>{} : RunPrefillPeer(peer, shapes);
  std::printf(
      "%3s %5s %6s | %9s %9s %8s %7s | %9s %7s | variants (kernel + 16-key tiles per step): us%s\n",
      "kv", "batch", "len", "ours_us", "floor_us", "TFLOP/s", "of_gemm", "sdpa_us", "vs_sdpa",
      g_fp8 ? " | fp8_us fp8_vs_bf16" : "");
  for (const auto& s : shapes) {
    // Q.K^T and P.V over the causal half: 2 x 2 x len^2 / 2 x head_dim flops per head.
    const double flops = 2.0 * s.batch * kHeads * double(s.context) * s.context * g_head_dim;
    const double us = TimePrefill(s.kv_heads, s.batch, s.context);
    const auto it = peers.find(std::to_string(s.kv_heads) + " " + std::to_string(s.batch) + " " +
                               std::to_string(s.context));
    const double sdpa = it != peers.end() ? it->second : NAN;
    std::printf("%3d %5d %6d | %9.1f %9.1f %8.0f %6.0f%% | %9.1f %6.2fx |", s.kv_heads, s.batch,
                s.context, us, flops / rate * 1e6, flops / us / 1e6,
                100.0 * flops / rate / us * 1e6, sdpa, sdpa / us);
    using gqa::kernels::cuda::PrefillPath;
    for (int key_tiles : {1, 2, 4}) {
      std::printf(
          " mma%d:%.1f", key_tiles,
          TimePrefill(s.kv_heads, s.batch, s.context, 0, 1, key_tiles, PrefillPath::kMmaSync));
    }
    for (int v = 1; v <= gqa::kernels::cuda::kWarpgroupPrefillVariants &&
                    gqa::kernels::cuda::WarpgroupPrefillAvailable();
         ++v) {
      if (!gqa::kernels::cuda::WarpgroupPrefillVariantBuilt(v, g_head_dim)) continue;
      std::printf(" wg%d:%.1f", v,
                  TimePrefill(s.kv_heads, s.batch, s.context, 0, 1, 0, PrefillPath::kWarpgroup, v));
    }
    if (g_fp8) {
      const double fp8_us = TimePrefill<Fp8>(s.kv_heads, s.batch, s.context);
      std::printf(" | %6.1f %10.2fx", fp8_us, us / fp8_us);
    }
    std::printf("\n");
  }
}

// A short chunk after a long cached prefix (a prefix-cache hit): bound by reading the prefix's
// K/V, so its floor is those bytes over the copy bandwidth; without and with the selector's key
// splits (gqa/kernels/prefill_selector.h).
void PrefixChunkTable(double bandwidth, int sm_count) {
  std::printf(
      "\nprefill of a chunk after a cached prefix (one sequence), bf16, %d query heads, head_dim "
      "%d; floor = K/V bytes / copy bandwidth (%.0f GB/s)\n",
      kHeads, g_head_dim, bandwidth / 1e9);
  std::printf("%3s %5s %6s | %8s %6s | %6s %9s %7s %7s | forced splits: us\n", "kv", "chunk", "ctx",
              "floor_us", "splits", "1_us", "split_us", "of_copy", "speedup");
  struct Row {
    int kv_heads, chunk, context;
  };
  for (const Row r : {Row{8, 100, 2100}, Row{8, 100, 8100}, Row{8, 16, 4096}, Row{1, 100, 8100},
                      Row{32, 100, 2100}, Row{8, 512, 8192}}) {
    gqa::kernels::PrefillShapeForSplits shape;
    shape.max_query_len = shape.num_query_tokens = r.chunk;
    shape.max_context = r.context;
    shape.num_seqs = 1;
    shape.group = kHeads / r.kv_heads;
    shape.num_kv_heads = r.kv_heads;
    shape.sm_count = sm_count;
    shape.warpgroup_unsplit =
        gqa::kernels::cuda::WarpgroupPrefillRunsUnsplit(gqa::kernels::cuda::PrefillPath::kAuto,
                                                        /*fp8_cache=*/false);
    const int splits = gqa::kernels::SelectPrefillKeySplits(shape);
    const double bytes = 2.0 * r.context * r.kv_heads * g_head_dim * sizeof(T);
    const double floor_us = bytes / bandwidth * 1e6;
    const double unsplit = TimePrefill(r.kv_heads, 1, r.chunk, r.context, 1);
    const double split =
        splits > 1 ? TimePrefill(r.kv_heads, 1, r.chunk, r.context, splits) : unsplit;
    std::printf("%3d %5d %6d | %8.1f %6d | %6.1f %9.1f %6.0f%% %6.2fx |", r.kv_heads, r.chunk,
                r.context, floor_us, splits, unsplit, split, 100.0 * floor_us / split,
                unsplit / split);
    for (int forced : {2, 4, 8, 16}) {  // tunes the selector
      if (forced == splits || r.chunk * forced > gqa::kernels::kPrefillSplitRows) continue;
      std::printf(" %d:%.1f", forced, TimePrefill(r.kv_heads, 1, r.chunk, r.context, forced));
    }
    for (int key_tiles : {2, 4}) {  // the variants at the selector's splits
      std::printf(" nk%d:%.1f", key_tiles,
                  TimePrefill(r.kv_heads, 1, r.chunk, r.context, splits, key_tiles));
    }
    std::printf("\n");
  }
}

// The sampler at batch 1 and 64 over a 128256-token vocabulary (Llama 3), random logits of a
// language model's spread (normal, sd 3): SampleTokens (candidate list) beside the selections over
// the whole vocabulary, and the floor of one read of the logits.
void SamplingTable(double bandwidth) {
  constexpr int kVocab = 128256;
  std::printf(
      "\nsampling, vocab %d, logits ~ N(0, 3^2); eager us per call (median of 100); "
      "floor: one read of the logits at the copy bandwidth\n",
      kVocab);
  std::printf("%5s %-22s | %9s %9s %8s | %7s\n", "rows", "params", "list_us", "vocab_us",
              "floor_us", "speedup");
  struct Params {
    const char* name;
    gqa::kernels::SamplingRow row;
  };
  const Params params[] = {{"greedy", {0.0f, 1.0f, 0}},
                           {"T 1", {1.0f, 1.0f, 0}},
                           {"T 0.7 top_p 0.9", {0.7f, 0.9f, 0}},
                           {"T 1 top_p 0.95 top_k 50", {1.0f, 0.95f, 50}}};
  for (const int rows : {1, 64}) {
    float* logits;
    gqa::kernels::SamplingRow* rows_d;
    int32_t* tokens;
    CHECK_CUDA(cudaMalloc(&logits, size_t(rows) * kVocab * 4));
    CHECK_CUDA(cudaMalloc(&rows_d, rows * sizeof(gqa::kernels::SamplingRow)));
    CHECK_CUDA(cudaMalloc(&tokens, rows * 4));
    std::vector<float> host(size_t(rows) * kVocab);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::mt19937 rng(5);
    for (auto& x : host) x = normal(rng);
    CHECK_CUDA(cudaMemcpy(logits, host.data(), host.size() * 4, cudaMemcpyHostToDevice));
    for (const Params& p : params) {
      std::vector<gqa::kernels::SamplingRow> row_params(rows, p.row);
      for (int r = 0; r < rows; ++r) row_params[r].step = r;  // a different draw per row
      CHECK_CUDA(cudaMemcpy(rows_d, row_params.data(), rows * sizeof(row_params[0]),
                            cudaMemcpyHostToDevice));
      auto time = [&](auto sample) {
        return 1e6 *
               MedianSeconds(
                   [&](int) { CHECK_CUDA(sample(logits, rows_d, rows, kVocab, tokens, nullptr)); },
                   3, 100);
      };
      const double list_us = time(gqa::kernels::cuda::SampleTokens);
      const double vocab_us = time(gqa::kernels::cuda::SampleTokensOverVocabulary);
      const double floor_us = double(rows) * kVocab * 4 / bandwidth * 1e6;
      std::printf("%5d %-22s | %9.1f %9.1f %8.2f | %6.1fx\n", rows, p.name, list_us, vocab_us,
                  floor_us, vocab_us / list_us);
    }
    cudaFree(logits);
    cudaFree(rows_d);
    cudaFree(tokens);
  }
}

}  // namespace

int KernelBenchMain(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) != "kernels") {
    std::fprintf(stderr,
                 "usage: gqa-bench kernels [--peer 'python3 client/bench/sdpa_peer.py'] "
                 "[--prefill] [--sampling] [--only kv,batch,ctx]... [--sweep-splits] [--variants] "
                 "[--contiguous] "
                 "[--head_dim 64|128] [--window N] [--kv_cache_dtype bfloat16|fp8_e4m3]\n");
    return 2;
  }
  std::string peer;
  std::vector<Shape> only;  // --only kv,batch,context (repeatable): just these shapes
  for (int i = 2; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--peer") peer = argv[i + 1];
    if (std::string(argv[i]) == "--head_dim") g_head_dim = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--window") g_window = std::atoi(argv[i + 1]);
    if (std::string(argv[i]) == "--kv_cache_dtype") {
      const std::string value = argv[i + 1];
      if (value != "fp8_e4m3" && value != "bfloat16" && value != "auto") {
        std::fprintf(stderr, "--kv_cache_dtype=%s: expected auto, bfloat16 or fp8_e4m3\n",
                     value.c_str());
        return 2;
      }
      g_fp8 = value == "fp8_e4m3";
    }
    Shape s;
    if (std::string(argv[i]) == "--only" &&
        std::sscanf(argv[i + 1], "%d,%d,%d", &s.kv_heads, &s.batch, &s.context) == 3) {
      only.push_back(s);
    }
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  if (g_fp8 && prop.major * 10 + prop.minor < 89) {
    std::fprintf(stderr, "--kv_cache_dtype=fp8_e4m3: needs compute capability 8.9+; %s is %d.%d\n",
                 prop.name, prop.major, prop.minor);
    return 2;
  }
  const double bandwidth = CopyBandwidth();
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);
  std::printf("device-to-device copy: %.0f GB/s (bytes read + written)\n", bandwidth / 1e9);
  std::printf(
      "decode attention, bf16, %d query heads, head_dim %d, KV block %d (%s), median of "
      "200, inputs rotated past L2%s\n\n",
      kHeads, g_head_dim, kBlockSize, g_contiguous ? "blocks in order" : "blocks shuffled",
      g_window > 0
          ? (", sliding window " + std::to_string(g_window) + " (floor: its keys only)").c_str()
          : "");

  std::vector<Shape> shapes;
  for (int kv : {32, 8, 1}) {
    for (auto [b, c] : std::vector<std::pair<int, int>>{
             {1, 4096}, {1, 32768}, {8, 4096}, {32, 4096}, {64, 2048}}) {
      shapes.push_back({kv, b, c});
    }
  }
  for (int kv : {1, 2, 4, 16}) shapes.push_back({kv, 32, 8192});  // the sweep over KV heads
  for (int kv : {8, 32}) shapes.push_back({kv, 32, 8192});
  if (!only.empty()) shapes = only;
  bool sweep_splits = false, sweep_variants = false;
  for (int i = 2; i < argc; ++i) {
    sweep_splits |= std::string(argv[i]) == "--sweep-splits";
    sweep_variants |= std::string(argv[i]) == "--variants";
    g_contiguous |= std::string(argv[i]) == "--contiguous";
  }
  if (sweep_splits) {  // graph time per call for forced split counts: tunes the selector
    for (const auto& s : shapes) {
      std::printf("kv %d batch %d ctx %d:", s.kv_heads, s.batch, s.context);
      for (int forced : {1, 2, 4, 8, 16, 32, 64, 128}) {
        if (forced * 16 > s.context) break;
        double bytes, graph_us;
        int splits;
        TimeDecode(s, prop.multiProcessorCount, &bytes, &splits, &graph_us, forced);
        std::printf("  %d:%.1f", splits, graph_us);
      }
      std::printf("\n");
      if (!gqa::kernels::cuda::WarpgroupPrefillAvailable()) continue;
      // The producer-warp warpgroup kernel (p3, served on Hopper), its own split counts.
      std::printf("  p3:");
      for (int forced : {1, 2, 4, 8, 16, 32, 64, 128}) {
        if (forced * 64 > s.context) break;
        double bytes, graph_us;
        int splits;
        TimeDecode(s, prop.multiProcessorCount, &bytes, &splits, &graph_us, forced, {0, 0, 0},
                   /*warpgroup_stages=*/3, /*producer=*/true);
        std::printf("  %d:%.1f", splits, graph_us);
      }
      std::printf("\n");
    }
    return 0;
  }
  if (sweep_variants) {  // graph time per call of every built (warps, stages) variant
    std::printf(
        "graph us per call and %% of copy, by warps x stages x tiles per step (* = the "
        "selector's)\n");
    for (const auto& s : shapes) {
      const auto chosen = gqa::kernels::SelectDecodeKernel(
          kHeads, s.kv_heads, g_head_dim, kBlockSize, s.batch, s.context, prop.multiProcessorCount);
      std::printf("kv %2d batch %3d ctx %6d splits %3d:", s.kv_heads, s.batch, s.context,
                  chosen.num_splits);
      for (const DecodeVariant v : gqa::kernels::kDecodeVariantCandidates) {
        if (!gqa::kernels::DecodeVariantBuilt(g_head_dim, chosen.query_tiles, v)) continue;
        // The selector's split count, then 2x and 4x of it (variants with less shared memory
        // fit more blocks per multiprocessor): the fastest is printed with its split count.
        double bytes = 0, best_us = 1e30;
        int best_splits = 0;
        for (int times : {1, 2, 4}) {
          const int forced = chosen.num_splits * times;
          if (times > 1 && forced * 16 * gqa::kernels::kDecodeMinSplitTiles > s.context) break;
          double graph_us;
          int splits;
          TimeDecode(s, prop.multiProcessorCount, &bytes, &splits, &graph_us, forced, v);
          if (graph_us < best_us) best_us = graph_us, best_splits = splits;
        }
        const bool mine =
            v.warps == chosen.warps && v.stages == chosen.stages && v.key_tiles == chosen.key_tiles;
        std::printf("  %dx%dx%d%s s%d %.1f (%.0f%%)", v.warps, v.stages, v.key_tiles,
                    mine ? "*" : "", best_splits, best_us,
                    100.0 * bytes / bandwidth / best_us * 1e6);
      }
      std::printf("\n");
    }
    return 0;
  }
  const auto peers = peer.empty() ? std::map<std::string, PeerTimes>{} : RunPeer(peer, shapes);

  std::printf(
      "eager: one call between two events (host launch included); graph: per call of 20 "
      "calls captured in a CUDA graph and replayed\n");
  std::printf("%3s %5s %6s %6s | %8s %8s %8s %6s %7s | %8s %8s %8s | %7s %7s\n", "kv", "batch",
              "ctx", "splits", "eager_us", "graph_us", "floor_us", "GB/s", "of_copy", "sdpa_eg",
              "sdpa_gr", "naive_gr", "vs_sdpa", "eager");
  for (const auto& s : shapes) {
    double bytes, graph_us;
    int splits;
    const double eager_us = TimeDecode(s, prop.multiProcessorCount, &bytes, &splits, &graph_us);
    const double floor_us = bytes / bandwidth * 1e6;
    const auto it = peers.find(std::to_string(s.kv_heads) + " " + std::to_string(s.batch) + " " +
                               std::to_string(s.context));
    const PeerTimes p = it != peers.end() ? it->second : PeerTimes{};
    std::printf(
        "%3d %5d %6d %6d | %8.1f %8.1f %8.1f %6.0f %6.0f%% | %8.1f %8.1f %8.1f | %6.2fx %6.2fx\n",
        s.kv_heads, s.batch, s.context, splits, eager_us, graph_us, floor_us,
        bytes / graph_us / 1e3, 100.0 * floor_us / graph_us, p.sdpa_eager, p.sdpa_graph,
        p.naive_graph, p.sdpa_graph / graph_us, p.sdpa_eager / eager_us);
    if (!g_fp8 && gqa::kernels::cuda::WarpgroupPrefillAvailable()) {
      // The Hopper warpgroup decode kernel on the same shape, 3 and 4 stages, copying with
      // cp.async (s) or with a producer warp's TMA (p).
      std::printf("%3s %5s %6s %6s |", "", "", "wg", "");
      for (bool producer : {false, true}) {
        for (int stages : {3, 4}) {
          double wg_bytes, wg_graph_us;
          int wg_splits;
          TimeDecode(s, prop.multiProcessorCount, &wg_bytes, &wg_splits, &wg_graph_us, 0, {0, 0, 0},
                     stages, producer);
          std::printf(" %c%d: %d splits %.1f us %.0f%% of copy %.2fx sdpa_gr %.2fx ours |",
                      producer ? 'p' : 's', stages, wg_splits, wg_graph_us,
                      100.0 * floor_us / wg_graph_us, p.sdpa_graph / wg_graph_us,
                      graph_us / wg_graph_us);
        }
      }
      std::printf("\n");
    }
    if (g_fp8) {  // the same shape over an FP8 cache: its floor is half the bytes
      double fp8_bytes, fp8_graph_us;
      int fp8_splits;
      const double fp8_eager_us =
          TimeDecode<Fp8>(s, prop.multiProcessorCount, &fp8_bytes, &fp8_splits, &fp8_graph_us);
      const double fp8_floor_us = fp8_bytes / bandwidth * 1e6;
      std::printf(
          "%3s %5s %6s %6d | %8.1f %8.1f %8.1f %6.0f %6.0f%% | fp8_e4m3: %.2fx the bf16 graph "
          "time\n",
          "", "", "fp8", fp8_splits, fp8_eager_us, fp8_graph_us, fp8_floor_us,
          fp8_bytes / fp8_graph_us / 1e3, 100.0 * fp8_floor_us / fp8_graph_us,
          graph_us / fp8_graph_us);
    }
  }
  bool prefill = false, sampling = false;
  for (int i = 2; i < argc; ++i) {
    prefill |= std::string(argv[i]) == "--prefill";
    sampling |= std::string(argv[i]) == "--sampling";
  }
  if (sampling) SamplingTable(bandwidth);
  if (prefill) {
    PrefillTable(peer);
    PrefixChunkTable(bandwidth, prop.multiProcessorCount);
  }
  return 0;
}
