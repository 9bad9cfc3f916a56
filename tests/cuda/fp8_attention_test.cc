// The FP8 (E4M3) KV cache on the GPU against the CPU FP8 reference (kernels/cpu, fp8_e4m3.h):
// the append kernels store exactly the bytes the CPU stores (per-KV-head scales, saturation),
// and decode and prefill attention over those bytes match cpu::PagedAttention over the same
// bytes. Fresh random inputs each run, NaN-poisoned pools (0x7f is E4M3 NaN) and outputs.
// Skips visibly without a GPU, or on one older than compute capability 8.9.
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <cstring>
#include <numeric>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/fp8_e4m3.h"
#include "gqa/kernels/paged_attention_cuda.h"

namespace gqa::kernels::cuda {
namespace {

using Fp8 = __nv_fp8_e4m3;

bool HaveFp8Gpu() {
  if (!HaveGpu()) return false;
  int major = 0, minor = 0;
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0);
  return major * 10 + minor >= 89;
}

#define REQUIRE_FP8_GPU() \
  REQUIRE_GPU();          \
  if (!HaveFp8Gpu()) GTEST_SKIP() << "GPU below compute capability 8.9: FP8 skipped"

struct Fp8Shape {
  int num_heads, num_kv_heads, head_dim, block_size;
  std::vector<int> lens;        // context length of each sequence (the queries' last position)
  std::vector<int> query_lens;  // empty: decode (one query per sequence)
  int num_splits = 0;           // decode: 0 the selector's choice
  bool fixed_grid = false;      // decode: per-sequence splits on a grid for 8192 tokens
  int window = 0;
};

std::string Describe(const Fp8Shape& s) {
  std::string lens;
  for (size_t i = 0; i < std::min<size_t>(s.lens.size(), 6); ++i)
    lens += std::to_string(s.lens[i]) + " ";
  return "heads " + std::to_string(s.num_heads) + " kv " + std::to_string(s.num_kv_heads) + " d " +
         std::to_string(s.head_dim) + " block " + std::to_string(s.block_size) + " lens " + lens +
         (s.query_lens.empty() ? "decode" : "prefill") + " splits " + std::to_string(s.num_splits) +
         (s.fixed_grid ? " fixed grid" : "") + " window " + std::to_string(s.window);
}

// A paged FP8 cache filled by the GPU append kernel, and the CPU's copy of the same bytes.
template <typename T>
struct Fp8Cache {
  ShuffledTables tables;
  std::vector<float> k_scale, v_scale;  // [kv_heads]
  std::vector<uint8_t> k_host, v_host;  // the CPU reference's pools
  DeviceBuffer<Fp8> k_pool, v_pool;
  DeviceBuffer<float> k_scale_d, v_scale_d;
  DeviceBuffer<int32_t> table_d;

  Fp8Cache(const Fp8Shape& shape, size_t pool_elems, ShuffledTables t)
      : tables(std::move(t)),
        k_pool(pool_elems),
        v_pool(pool_elems),
        k_scale_d(shape.num_kv_heads),
        v_scale_d(shape.num_kv_heads),
        table_d(tables.tables.size()) {}

  PagedKvView<uint8_t> HostView(const Fp8Shape& s) {
    return {k_host.data(), v_host.data(), tables.tables.data(), tables.max_blocks, s.num_kv_heads,
            s.block_size,  s.head_dim,    k_scale.data(),       v_scale.data()};
  }
  PagedKvView<Fp8> DeviceView(const Fp8Shape& s) {
    return {k_pool.ptr,   v_pool.ptr, table_d.ptr,   tables.max_blocks, s.num_kv_heads,
            s.block_size, s.head_dim, k_scale_d.ptr, v_scale_d.ptr};
  }
};

// Appends random K/V (some beyond +-448 x scale, to saturate) for every position of every
// sequence and checks the bytes against the CPU append.
template <typename T>
void FillCache(const Fp8Shape& shape, Fp8Cache<T>& cache) {
  const int kvh = shape.num_kv_heads, d = shape.head_dim, bs = shape.block_size;
  std::uniform_real_distribution<float> scale_dist(0.01f, 2.0f);
  for (int h = 0; h < kvh; ++h) {
    cache.k_scale.push_back(scale_dist(Rng()));
    cache.v_scale.push_back(scale_dist(Rng()));
  }
  cache.k_scale_d.Upload(cache.k_scale);
  cache.v_scale_d.Upload(cache.v_scale);
  cache.table_d.Upload(cache.tables.tables);
  const size_t pool = cache.k_pool.size;
  cache.k_host.assign(pool, 0x7f);
  cache.v_host.assign(pool, 0x7f);
  CUDA_OK(cudaMemset(cache.k_pool.ptr, 0x7f, pool));  // E4M3 NaN
  CUDA_OK(cudaMemset(cache.v_pool.ptr, 0x7f, pool));
  const int total = std::accumulate(shape.lens.begin(), shape.lens.end(), 0);
  const auto k = RandomVector<T>(size_t(total) * kvh * d, 3.0f);
  const auto v = RandomVector<T>(k.size(), 1.0f);
  std::vector<int64_t> slots;
  const auto& t = cache.tables;
  for (size_t s = 0; s < shape.lens.size(); ++s) {
    for (int p = 0; p < shape.lens[s]; ++p) {
      slots.push_back(int64_t(t.tables[s * t.max_blocks + p / bs]) * bs + p % bs);
    }
  }
  DeviceBuffer<T> k_d(k.size()), v_d(v.size());
  DeviceBuffer<int64_t> slot_d(slots.size());
  k_d.Upload(k);
  v_d.Upload(v);
  slot_d.Upload(slots);
  CUDA_OK(PagedKvAppend<T>(k_d.ptr, v_d.ptr, slot_d.ptr, total, cache.DeviceView(shape), nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  cpu::PagedKvAppend(ToFloats(k).data(), ToFloats(v).data(), slots.data(), total,
                     cache.HostView(shape));
  std::vector<Fp8> k_dev = cache.k_pool.Download(), v_dev = cache.v_pool.Download();
  size_t differ = 0;
  for (size_t i = 0; i < pool; ++i) {
    differ += std::memcmp(&k_dev[i], &cache.k_host[i], 1) != 0;
    differ += std::memcmp(&v_dev[i], &cache.v_host[i], 1) != 0;
  }
  ASSERT_EQ(differ, 0u) << "the FP8 append stored other bytes than the CPU reference";
}

template <typename T>
void CheckFp8Attention(const Fp8Shape& shape) {
  SCOPED_TRACE(Describe(shape));
  const int num_seqs = int(shape.lens.size());
  const int kvh = shape.num_kv_heads, d = shape.head_dim, bs = shape.block_size;
  const bool decode = shape.query_lens.empty();
  std::vector<int32_t> lens(shape.lens.begin(), shape.lens.end()), query_start(num_seqs + 1, 0);
  int max_q = 0;
  for (int s = 0; s < num_seqs; ++s) {
    const int q_len = decode ? 1 : shape.query_lens[s];
    query_start[s + 1] = query_start[s] + q_len;
    max_q = std::max(max_q, q_len);
  }
  ShuffledTables tables = MakeShuffledTables(lens, bs);
  const size_t pool = size_t(tables.pool_blocks) * kvh * bs * d;
  Fp8Cache<T> cache(shape, pool, std::move(tables));
  FillCache(shape, cache);
  if (testing::Test::HasFatalFailure()) return;

  const int tokens = query_start.back();
  const auto q = RandomVector<T>(size_t(tokens) * shape.num_heads * d);
  DeviceBuffer<T> q_d(q.size()), out_d(q.size());
  DeviceBuffer<int32_t> lens_d(num_seqs), start_d(num_seqs + 1);
  q_d.Upload(q);
  lens_d.Upload(lens);
  start_d.Upload(query_start);
  CUDA_OK(cudaMemset(out_d.ptr, 0xff, q.size() * sizeof(T)));
  const float scale = 1.0f / std::sqrt(float(d));
  if (decode) {
    int sm_count = 0;
    CUDA_OK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
    const int max_len = *std::max_element(lens.begin(), lens.end());
    DecodeKernelChoice choice =
        shape.fixed_grid ? SelectFixedGridDecodeKernel(shape.num_heads, kvh, d, bs, num_seqs, 8192,
                                                       sm_count, KvElement::kFp8E4M3)
                         : SelectDecodeKernel(shape.num_heads, kvh, d, bs, num_seqs,
                                              DecodeKeysPerQuery(max_len, shape.window), sm_count,
                                              shape.num_splits, KvElement::kFp8E4M3);
    ASSERT_TRUE(choice.supported) << choice.reason;
    if (shape.fixed_grid && shape.num_splits > 0) choice.num_splits = shape.num_splits;
    DeviceBuffer<unsigned char> workspace(
        DecodeWorkspaceBytes(num_seqs, shape.num_heads, d, choice.num_splits));
    CUDA_OK(cudaMemset(workspace.ptr, 0, workspace.size));
    DecodeAttentionArgs<T, Fp8> args;
    args.q = q_d.ptr;
    args.out = out_d.ptr;
    args.cache = cache.DeviceView(shape);
    args.context_lens = lens_d.ptr;
    args.num_seqs = num_seqs;
    args.num_heads = shape.num_heads;
    args.scale = scale;
    args.workspace = workspace.ptr;
    args.window = shape.window;
    CUDA_OK(PagedDecodeAttention<T>(args, choice, nullptr));
    // A 16-bit choice for an FP8 cache is refused, not misread.
    DecodeKernelChoice wrong = choice;
    wrong.kv = KvElement::k16Bit;
    EXPECT_EQ(PagedDecodeAttention<T>(args, wrong, nullptr), cudaErrorInvalidValue);
  } else {
    PrefillAttentionArgs<T, Fp8> args;
    args.q = q_d.ptr;
    args.out = out_d.ptr;
    args.cache = cache.DeviceView(shape);
    args.query_start = start_d.ptr;
    args.context_lens = lens_d.ptr;
    args.num_seqs = num_seqs;
    args.num_heads = shape.num_heads;
    args.max_query_len = max_q;
    args.scale = scale;
    args.window = shape.window;
    CUDA_OK(PagedPrefillAttention<T>(args, nullptr));
  }
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<float> ref(q.size());
  cpu::PagedAttention(ToFloats(q).data(), cache.HostView(shape), query_start.data(), lens.data(),
                      num_seqs, shape.num_heads, scale, ref.data(), shape.window);
  EXPECT_LT(RelativeError(out_d.Download(), ref), Tolerance<T>());
}

// The fused rope + append into an FP8 cache: values (not rotated) are stored exactly as the CPU
// quantizes them; keys are within E4M3's rounding of the 16-bit append's rotated keys; the
// padding token (slot -1) writes nothing.
template <typename T>
void CheckQkvRopeAppendFp8(int tokens, int heads, int kv_heads, int d, int bs) {
  SCOPED_TRACE(testing::Message() << "tokens " << tokens << " kv " << kv_heads << " d " << d);
  const int width = (heads + 2 * kv_heads) * d;
  const auto qkv = RandomVector<T>(size_t(tokens) * width, 4.0f);
  std::vector<int32_t> positions(tokens);
  std::uniform_int_distribution<int> pos(0, 32767);
  for (auto& p : positions) p = pos(Rng());
  const auto tables = MakeShuffledTables({tokens}, bs);
  std::vector<int64_t> slots(tokens);
  for (int t = 0; t < tokens; ++t) slots[t] = int64_t(tables.tables[t / bs]) * bs + t % bs;
  slots.back() = -1;
  std::vector<float> inv_freq(d / 2), k_scale(kv_heads), v_scale(kv_heads);
  for (int i = 0; i < d / 2; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / d);
  std::uniform_real_distribution<float> scale_dist(0.01f, 2.0f);
  for (int h = 0; h < kv_heads; ++h) k_scale[h] = scale_dist(Rng()), v_scale[h] = scale_dist(Rng());
  const size_t pool = size_t(tables.pool_blocks) * kv_heads * bs * d;
  DeviceBuffer<T> qkv_d(qkv.size()), q_d(size_t(tokens) * heads * d), k16(pool), v16(pool);
  DeviceBuffer<Fp8> k8(pool), v8(pool);
  DeviceBuffer<int32_t> pos_d(tokens);
  DeviceBuffer<float> freq_d(inv_freq.size()), ks_d(kv_heads), vs_d(kv_heads);
  DeviceBuffer<int64_t> slot_d(tokens);
  qkv_d.Upload(qkv);
  pos_d.Upload(positions);
  freq_d.Upload(inv_freq);
  slot_d.Upload(slots);
  ks_d.Upload(k_scale);
  vs_d.Upload(v_scale);
  CUDA_OK(cudaMemset(k8.ptr, 0x7f, pool));
  CUDA_OK(cudaMemset(v8.ptr, 0x7f, pool));
  CUDA_OK(cudaMemset(k16.ptr, 0, pool * sizeof(T)));
  CUDA_OK(cudaMemset(v16.ptr, 0, pool * sizeof(T)));
  PagedKvView<T> c16{k16.ptr, v16.ptr, nullptr, 0, kv_heads, bs, d};
  PagedKvView<Fp8> c8{k8.ptr, v8.ptr, nullptr, 0, kv_heads, bs, d, ks_d.ptr, vs_d.ptr};
  CUDA_OK(QkvRopeAppend<T>(qkv_d.ptr, pos_d.ptr, freq_d.ptr, slot_d.ptr, tokens, heads, q_d.ptr,
                           c16, nullptr));
  CUDA_OK(QkvRopeAppend<T>(qkv_d.ptr, pos_d.ptr, freq_d.ptr, slot_d.ptr, tokens, heads, q_d.ptr, c8,
                           nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const auto k16_h = k16.Download(), v16_h = v16.Download();
  const auto k8_h = k8.Download(), v8_h = v8.Download();
  size_t bad_v = 0, bad_k = 0, written = 0;
  for (size_t i = 0; i < pool; ++i) {
    const uint8_t kb = *reinterpret_cast<const uint8_t*>(&k8_h[i]);
    const uint8_t vb = *reinterpret_cast<const uint8_t*>(&v8_h[i]);
    const int h = int(i / (size_t(bs) * d) % kv_heads);  // [block, kv_head, slot, d]
    if (kb == 0x7f && vb == 0x7f) continue;  // never written (a spare slot or the padding)
    ++written;
    bad_v += vb != Fp8E4M3Quantize(ToFloat(v16_h[i]), v_scale[h]);
    const float k = ToFloat(k16_h[i]), deq = Fp8E4M3Dequantize(kb, k_scale[h]);
    bad_k += !(std::fabs(deq - k) <= 0.07f * std::fabs(k) + k_scale[h] * 0x1p-9f);
  }
  EXPECT_EQ(written, size_t(tokens - 1) * kv_heads * d) << "padding written, or slots missed";
  EXPECT_EQ(bad_v, 0u) << "values stored other than the CPU quantization";
  EXPECT_EQ(bad_k, 0u) << "keys beyond E4M3 rounding of the rotated keys";
}

TEST(Fp8QkvRopeAppendCuda, QuantizesKeysAndValues) {
  REQUIRE_FP8_GPU();
  CheckQkvRopeAppendFp8<__nv_bfloat16>(37, 32, 8, 128, 16);
  CheckQkvRopeAppendFp8<__nv_bfloat16>(5, 32, 1, 64, 16);
  CheckQkvRopeAppendFp8<__half>(33, 12, 4, 128, 32);
}

std::vector<int> Ragged(int n, int max_len) {
  std::uniform_int_distribution<int> dist(1, max_len);
  std::vector<int> lens(n);
  for (auto& l : lens) l = dist(Rng());
  return lens;
}

template <typename T>
void DecodeEveryGroupSize(int d) {
  for (int kv_heads : {32, 16, 8, 4, 2, 1}) {  // group sizes 1 ... 32
    CheckFp8Attention<T>({32, kv_heads, d, 16, {1, 15, 16, 17, 33, 100}});
    CheckFp8Attention<T>({32, kv_heads, d, 16, {4097, 17}, {}, /*num_splits=*/1});
    CheckFp8Attention<T>({32, kv_heads, d, 16, {4097, 300, 1}, {}, /*num_splits=*/7});
    CheckFp8Attention<T>({32, kv_heads, d, 32, Ragged(9, 700)});
    CheckFp8Attention<T>({32, kv_heads, d, 16, {1, 15, 129, 4097, 300}, {}, 0, true});
    CheckFp8Attention<T>({32, kv_heads, d, 16, {1, 2, 5000, 17}, {}, /*num_splits=*/40, true});
  }
}

TEST(Fp8DecodeAttentionCuda, EveryGroupSizeBothHeadDims) {
  REQUIRE_FP8_GPU();
  DecodeEveryGroupSize<__nv_bfloat16>(128);
  DecodeEveryGroupSize<__nv_bfloat16>(64);
  DecodeEveryGroupSize<__half>(128);
}

TEST(Fp8DecodeAttentionCuda, SlidingWindowSplitAndUnsplit) {
  REQUIRE_FP8_GPU();
  for (int d : {64, 128}) {
    for (int kv_heads : {8, 1}) {
      for (int window : {1, 16, 33, 700}) {
        CheckFp8Attention<__nv_bfloat16>(
            {32, kv_heads, d, 16, {1, 15, 17, 40, 129, 4097}, {}, 0, false, window});
        CheckFp8Attention<__half>({32, kv_heads, d, 32, {3, 1000, 3001}, {}, 5, false, window});
        CheckFp8Attention<__nv_bfloat16>(
            {32, kv_heads, d, 16, {2, 700, 8000}, {}, 0, true, window});
      }
    }
  }
}

TEST(Fp8PrefillAttentionCuda, EveryGroupSizeChunksAndWindow) {
  REQUIRE_FP8_GPU();
  for (int d : {64, 128}) {
    for (int kv_heads : {32, 16, 8, 4, 2, 1}) {
      CheckFp8Attention<__nv_bfloat16>(
          {32, kv_heads, d, 16, {1, 15, 16, 17, 100}, {1, 15, 16, 17, 100}});
      CheckFp8Attention<__half>({32, kv_heads, d, 32, {38, 47, 64}, {33, 7, 64}});  // chunked
      CheckFp8Attention<__nv_bfloat16>(
          {32, kv_heads, d, 16, {1, 55, 100, 1000}, {1, 15, 100, 300}, 0, false, /*window=*/40});
    }
  }
}

TEST(Fp8AttentionCuda, SmallForSanitizers) {
  REQUIRE_FP8_GPU();
  CheckFp8Attention<__nv_bfloat16>({8, 2, 128, 16, {1, 17, 40}, {}, /*num_splits=*/2});
  CheckFp8Attention<__nv_bfloat16>({32, 1, 128, 16, {200, 5}, {}, /*num_splits=*/2});
  CheckFp8Attention<__nv_bfloat16>({32, 1, 64, 16, {300, 20}, {}, 0, true, /*window=*/50});
  CheckFp8Attention<__nv_bfloat16>({8, 2, 64, 16, {24, 3}, {20, 3}});
}

}  // namespace
}  // namespace gqa::kernels::cuda
