// The CUDA paged KV append and decode attention against the CPU reference (kernels/cpu), on
// fresh random inputs each run, with outputs poisoned before each launch. Skips with a visible
// message where no GPU exists.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "cuda_test_util.h"
#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/paged_attention_cuda.h"

namespace gqa::kernels::cuda {
namespace {

struct Shape {
  int num_heads, num_kv_heads, head_dim, block_size;
  std::vector<int> lens;  // context length of each sequence
  int num_splits = 0;     // 0: the selector's choice
  // Per-sequence splits on a grid fixed for contexts up to 8192 tokens (what CUDA graphs run);
  // num_splits > 0 then overrides the grid's split count.
  bool fixed_grid = false;
  DecodeVariant variant{0, 0, 0};  // warps > 0: this kernel variant instead of the selector's
  int window = 0;                  // > 0: a sliding window
  int min_split_tiles = 0;         // > 0: per-sequence splits at least this long (fixed grid)
};

// Whether the warpgroup kernel runs here (Hopper, a build with sm_90a code); says once when not.
bool WarpgroupDecodeApplies() {
  const bool available = WarpgroupPrefillAvailable();
  static const bool said = [&] {
    if (!available) std::printf("[ NOTE ] no warpgroup decode kernel here: not checked\n");
    return true;
  }();
  (void)said;
  return available;
}

std::string Describe(const Shape& s) {
  std::string lens;
  for (size_t i = 0; i < std::min<size_t>(s.lens.size(), 6); ++i)
    lens += std::to_string(s.lens[i]) + " ";
  return "heads " + std::to_string(s.num_heads) + " kv " + std::to_string(s.num_kv_heads) + " d " +
         std::to_string(s.head_dim) + " block " + std::to_string(s.block_size) + " seqs " +
         std::to_string(s.lens.size()) + " lens " + lens + "splits " +
         std::to_string(s.num_splits) + (s.fixed_grid ? " fixed grid" : "") +
         (s.window > 0 ? " window " + std::to_string(s.window) : "") +
         (s.min_split_tiles > 0 ? " min split tiles " + std::to_string(s.min_split_tiles) : "") +
         (s.variant.warps > 0
              ? " variant " + std::to_string(s.variant.warps) + "x" +
                    std::to_string(s.variant.stages) + "x" + std::to_string(s.variant.key_tiles)
              : "");
}

template <typename T>
void CheckDecode(const Shape& shape) {
  SCOPED_TRACE(Describe(shape));
  const int num_seqs = static_cast<int>(shape.lens.size());
  const int kvh = shape.num_kv_heads, d = shape.head_dim, bs = shape.block_size;
  const int row = kvh * d;
  const int max_len = *std::max_element(shape.lens.begin(), shape.lens.end());
  const int total_tokens = std::accumulate(shape.lens.begin(), shape.lens.end(), 0);
  auto [tables, max_blocks, pool_blocks] =
      MakeShuffledTables(std::vector<int32_t>(shape.lens.begin(), shape.lens.end()), bs);
  auto slot_of = [&](int s, int p) {
    return int64_t(tables[size_t(s) * max_blocks + p / bs]) * bs + p % bs;
  };

  // Fresh K/V for every token, written by the append kernel into a NaN-poisoned pool.
  std::normal_distribution<float> normal;
  std::vector<T> new_k(size_t(total_tokens) * row), new_v(new_k.size());
  for (auto& x : new_k) x = ToT<T>(normal(Rng()));
  for (auto& x : new_v) x = ToT<T>(normal(Rng()));
  std::vector<int64_t> slots;
  for (int s = 0; s < num_seqs; ++s) {
    for (int p = 0; p < shape.lens[s]; ++p) slots.push_back(slot_of(s, p));
  }
  const size_t pool_elems = size_t(pool_blocks) * kvh * bs * d;
  DeviceBuffer<T> k_pool(pool_elems), v_pool(pool_elems);
  DeviceBuffer<T> k_new(new_k.size()), v_new(new_v.size());
  DeviceBuffer<int64_t> slot_buf(slots.size());
  DeviceBuffer<int32_t> table_buf(tables.size()), len_buf(num_seqs);
  CUDA_OK(cudaMemset(k_pool.ptr, 0xff, pool_elems * sizeof(T)));  // NaN in bf16 and fp16
  CUDA_OK(cudaMemset(v_pool.ptr, 0xff, pool_elems * sizeof(T)));
  k_new.Upload(new_k);
  v_new.Upload(new_v);
  slot_buf.Upload(slots);
  table_buf.Upload(tables);
  len_buf.Upload(std::vector<int32_t>(shape.lens.begin(), shape.lens.end()));
  PagedKvView<T> cache{k_pool.ptr, v_pool.ptr, table_buf.ptr, max_blocks, kvh, bs, d};
  CUDA_OK(PagedKvAppend<T>(k_new.ptr, v_new.ptr, slot_buf.ptr, total_tokens, cache, nullptr));
  CUDA_OK(cudaDeviceSynchronize());

  // The append placed every value exactly where the CPU layout says.
  const std::vector<T> k_host = k_pool.Download(), v_host = v_pool.Download();
  std::vector<float> k_ref(pool_elems, 0.0f), v_ref(pool_elems, 0.0f);
  PagedKvView<float> ref_view{k_ref.data(), v_ref.data(), tables.data(), max_blocks, kvh, bs, d};
  std::vector<float> new_k_f(new_k.size()), new_v_f(new_v.size());
  for (size_t i = 0; i < new_k.size(); ++i) new_k_f[i] = ToFloat(new_k[i]);
  for (size_t i = 0; i < new_v.size(); ++i) new_v_f[i] = ToFloat(new_v[i]);
  cpu::PagedKvAppend(new_k_f.data(), new_v_f.data(), slots.data(), total_tokens, ref_view);
  size_t misplaced = 0;
  for (size_t t = 0; t < slots.size(); ++t) {
    for (int h = 0; h < kvh; ++h) {
      const size_t off = ref_view.Offset(slots[t], h);
      for (int e = 0; e < d; ++e) {
        misplaced += ToFloat(k_host[off + e]) != k_ref[off + e];
        misplaced += ToFloat(v_host[off + e]) != v_ref[off + e];
      }
    }
  }
  ASSERT_EQ(misplaced, 0u) << "append wrote values to the wrong slots";

  std::vector<T> q(size_t(num_seqs) * shape.num_heads * d);
  for (auto& x : q) x = ToT<T>(normal(Rng()));
  DeviceBuffer<T> q_buf(q.size()), out_buf(q.size());
  q_buf.Upload(q);
  CUDA_OK(cudaMemset(out_buf.ptr, 0xff, q.size() * sizeof(T)));  // poisoned

  std::vector<float> q_f(q.size()), ref(q.size());
  for (size_t i = 0; i < q.size(); ++i) q_f[i] = ToFloat(q[i]);
  std::vector<int32_t> query_start(num_seqs + 1);
  std::iota(query_start.begin(), query_start.end(), 0);
  const float scale = 1.0f / std::sqrt(float(d));
  cpu::PagedAttention(q_f.data(), ref_view, query_start.data(), shape.lens.data(), num_seqs,
                      shape.num_heads, scale, ref.data(), shape.window);

  // Launches one kernel choice twice on the same workspace and compares with the reference.
  auto check = [&](const DecodeKernelChoice& choice) {
    SCOPED_TRACE(choice.warpgroup ? "warpgroup kernel, " + std::to_string(choice.stages) +
                                        " stages" + (choice.producer ? ", producer warp" : "")
                                  : "mma.sync kernel");
    DeviceBuffer<unsigned char> workspace(
        DecodeWorkspaceBytes(num_seqs, shape.num_heads, d, choice.num_splits));
    DecodeAttentionArgs<T> args;
    args.q = q_buf.ptr;
    args.out = out_buf.ptr;
    args.cache = cache;
    args.context_lens = len_buf.ptr;
    args.num_seqs = num_seqs;
    args.num_heads = shape.num_heads;
    args.scale = scale;
    args.workspace = workspace.ptr;
    args.window = shape.window;
    CUDA_OK(cudaMemset(out_buf.ptr, 0xff, q.size() * sizeof(T)));  // poisoned
    CUDA_OK(cudaMemset(workspace.ptr, 0, workspace.size));         // once; launches leave it zeroed
    CUDA_OK(PagedDecodeAttention<T>(args, choice, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<T> first = out_buf.Download();
    // A second launch on the same workspace must give the same result.
    CUDA_OK(cudaMemset(out_buf.ptr, 0xff, q.size() * sizeof(T)));
    CUDA_OK(PagedDecodeAttention<T>(args, choice, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<T> out = out_buf.Download();
    size_t differ = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      differ += std::memcmp(&out[i], &first[i], sizeof(T)) != 0;
    }
    EXPECT_EQ(differ, 0u) << "a second launch on the same workspace differs";
    double num = 0, den = 0;
    size_t non_finite = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      const double o = ToFloat(out[i]);
      non_finite += !std::isfinite(o);
      num += (o - ref[i]) * (o - ref[i]);
      den += double(ref[i]) * ref[i];
    }
    EXPECT_EQ(non_finite, 0u) << "outputs left unwritten or NaN";
    EXPECT_LT(std::sqrt(num / den), Tolerance<T>()) << "splits " << choice.num_splits;
  };

  int sm_count = 0;
  CUDA_OK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, 0));
  const int grid_len = shape.fixed_grid ? 8192 : max_len;
  const int splits = shape.fixed_grid ? 0 : shape.num_splits;
  const int group = shape.num_heads / kvh;
  if (group <= 32) {
    DecodeKernelChoice choice =
        SelectDecodeKernel(shape.num_heads, kvh, d, bs, num_seqs, grid_len, sm_count, splits);
    ASSERT_TRUE(choice.supported) << choice.reason;
    if (shape.fixed_grid) {
      choice.split_tokens = 0;
      if (shape.num_splits > 0) choice.num_splits = shape.num_splits;
      if (shape.min_split_tiles > 0) choice.min_split_tiles = shape.min_split_tiles;
    }
    if (shape.variant.warps > 0) {
      choice.warps = shape.variant.warps;
      choice.stages = shape.variant.stages;
      choice.key_tiles = shape.variant.key_tiles;
    }
    if (shape.num_splits > 0 && !shape.fixed_grid) {
      EXPECT_EQ(choice.num_splits, std::min(shape.num_splits, (max_len + 15) / 16));
    }
    check(choice);
  }
  // The warpgroup kernel on the same inputs, each built stage count, wherever the GPU has it
  // (the mma.sync variants' overrides do not apply to it).
  if (shape.variant.warps > 0 || !WarpgroupDecodeApplies()) return;
  for (const bool producer : {false, true}) {
    for (const int stages : {3, 4}) {
      DecodeKernelChoice choice = SelectWarpgroupDecodeKernel(
          shape.num_heads, kvh, d, bs, num_seqs, grid_len, sm_count, splits, shape.fixed_grid);
      ASSERT_TRUE(choice.supported) << choice.reason;
      if (shape.fixed_grid && shape.num_splits > 0) choice.num_splits = shape.num_splits;
      if (shape.fixed_grid && shape.min_split_tiles > 0) {
        choice.min_split_tiles = shape.min_split_tiles;
      }
      choice.stages = stages;
      choice.producer = producer;
      check(choice);
    }
  }
}

std::vector<int> Ragged(int n, int max_len) {
  std::uniform_int_distribution<int> dist(1, max_len);
  std::vector<int> lens(n);
  for (auto& l : lens) l = dist(Rng());
  return lens;
}

template <typename T>
void EveryGroupSize(int head_dim) {
  for (int kv_heads : {32, 16, 8, 4, 2, 1}) {  // group sizes 1, 2, 4, 8, 16, 32
    CheckDecode<T>({32, kv_heads, head_dim, 16, {1, 15, 16, 17, 33, 100}});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {4097}});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {4097, 17}, /*num_splits=*/1});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {4097, 300, 1}, /*num_splits=*/7});
    CheckDecode<T>({32, kv_heads, head_dim, 32, Ragged(9, 700)});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {1, 15, 129, 4097, 300}, 0, true});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {1, 2, 5000, 17}, /*num_splits=*/40, true});
    CheckDecode<T>({32, kv_heads, head_dim, 16, {3, 8000}, /*num_splits=*/1, true});
    // Deterministic mode's longer per-sequence splits.
    Shape longer_splits{32, kv_heads, head_dim, 16, {1, 255, 257, 4097, 300}, 0, true};
    longer_splits.min_split_tiles = kDecodeDeterministicMinSplitTiles;
    CheckDecode<T>(longer_splits);
  }
}

TEST(DecodeAttentionCuda, Bf16EveryGroupSizeHeadDim128) {
  REQUIRE_GPU();
  EveryGroupSize<__nv_bfloat16>(128);
}
TEST(DecodeAttentionCuda, Bf16EveryGroupSizeHeadDim64) {
  REQUIRE_GPU();
  EveryGroupSize<__nv_bfloat16>(64);
}
TEST(DecodeAttentionCuda, Fp16EveryGroupSize) {
  REQUIRE_GPU();
  EveryGroupSize<__half>(128);
  EveryGroupSize<__half>(64);
}

TEST(DecodeAttentionCuda, OddGroupsAndLargeBatches) {
  REQUIRE_GPU();
  CheckDecode<__nv_bfloat16>({12, 4, 128, 16, Ragged(256, 300)});  // group 3, batch 256
  CheckDecode<__nv_bfloat16>({28, 4, 128, 16, Ragged(64, 2000)});  // group 7
  CheckDecode<__nv_bfloat16>({24, 1, 64, 16, Ragged(33, 5000)});   // group 24: two row tiles
  CheckDecode<__half>({32, 8, 128, 64, Ragged(128, 600)});
  // Groups above 32: the warpgroup kernel only (64 rows, and 48 padded to 64).
  CheckDecode<__nv_bfloat16>({64, 1, 128, 16, Ragged(16, 3000)});
  CheckDecode<__half>({48, 1, 64, 32, Ragged(5, 5000), /*num_splits=*/6});
  CheckDecode<__nv_bfloat16>({64, 2, 64, 16, {1, 4097, 300}, 0, true});
}

// The warpgroup kernel takes 16-bit caches and groups up to 64 only, and says so.
TEST(DecodeAttentionCuda, WarpgroupKernelRefusesFp8AndLargeGroups) {
  REQUIRE_GPU();
  if (!WarpgroupDecodeApplies()) GTEST_SKIP() << "no warpgroup decode kernel here";
  EXPECT_FALSE(SelectWarpgroupDecodeKernel(128, 1, 128, 16, 1, 100, 132).supported);
  DecodeKernelChoice choice = SelectWarpgroupDecodeKernel(32, 1, 128, 16, 1, 100, 132);
  ASSERT_TRUE(choice.supported) << choice.reason;
  choice.kv = KvElement::kFp8E4M3;
  DecodeAttentionArgs<__nv_bfloat16, __nv_fp8_e4m3> args;
  args.num_seqs = 1;
  args.num_heads = 32;
  args.cache.num_kv_heads = 1;
  args.cache.head_dim = 128;
  EXPECT_EQ(PagedDecodeAttention(args, choice, nullptr), cudaErrorInvalidValue);
  DecodeKernelChoice five_stages = SelectWarpgroupDecodeKernel(32, 1, 128, 16, 1, 100, 132);
  five_stages.stages = 5;
  DecodeAttentionArgs<__nv_bfloat16> args16;
  args16.num_seqs = 1;
  args16.num_heads = 32;
  args16.cache.num_kv_heads = 1;
  args16.cache.head_dim = 128;
  EXPECT_EQ(PagedDecodeAttention(args16, five_stages, nullptr), cudaErrorInvalidValue);
}

// Every built kernel variant, not only the ones the selector picks today: ragged lengths, split
// and unsplit, fixed grid, both head dims and both query-tile counts.
TEST(DecodeAttentionCuda, EveryKernelVariant) {
  REQUIRE_GPU();
  int launched = 0;
  for (int head_dim : {64, 128}) {
    for (int kv_heads : {8, 2, 1}) {  // groups 4 (one query tile), 16 (one), 32 (two)
      const int query_tiles = 32 / kv_heads > 16 ? 2 : 1;
      for (const DecodeVariant v : kDecodeVariantCandidates) {
        if (!DecodeVariantBuilt(head_dim, query_tiles, v)) continue;
        ++launched;
        Shape ragged{32, kv_heads, head_dim, 16, Ragged(11, 3000)};
        ragged.variant = v;
        CheckDecode<__nv_bfloat16>(ragged);
        Shape split{32, kv_heads, head_dim, 16, {1, 17, 5000}, /*num_splits=*/9};
        split.variant = v;
        CheckDecode<__half>(split);
        Shape fixed{32, kv_heads, head_dim, 32, {2, 700, 4097}, 0, true};
        fixed.variant = v;
        CheckDecode<__nv_bfloat16>(fixed);
      }
    }
  }
  EXPECT_GE(launched, 20);
}

// A sliding window (keys p - window + 1 ... p): windows shorter than a tile, of one tile, across
// tile and block edges, longer than the context; split (fixed and per-sequence) and unsplit;
// every group size, both head dims, and the variants with 2 tiles per step.
TEST(DecodeAttentionCuda, SlidingWindow) {
  REQUIRE_GPU();
  for (int head_dim : {64, 128}) {
    for (int kv_heads : {8, 1}) {
      for (int window : {1, 7, 16, 33, 700, 5000}) {
        Shape s{32, kv_heads, head_dim, 16, {1, 15, 17, 40, 129, 4097}};
        s.window = window;
        CheckDecode<__nv_bfloat16>(s);
        Shape split{32, kv_heads, head_dim, 32, {3, 1000, 3001}, /*num_splits=*/5};
        split.window = window;
        CheckDecode<__half>(split);
        Shape fixed{32, kv_heads, head_dim, 16, {2, 700, 8000}, 0, true};
        fixed.window = window;
        CheckDecode<__nv_bfloat16>(fixed);
        Shape paired{32, kv_heads, head_dim, 16, Ragged(7, 2000), 0, true, {4, 3, 2}};
        paired.window = window;
        CheckDecode<__nv_bfloat16>(paired);
      }
    }
  }
}

// Small enough for compute-sanitizer memcheck and racecheck.
TEST(DecodeAttentionCuda, SmallForSanitizers) {
  REQUIRE_GPU();
  CheckDecode<__nv_bfloat16>({8, 2, 128, 16, {1, 17, 40}, /*num_splits=*/2});
  CheckDecode<__nv_bfloat16>({32, 1, 64, 16, {33}});
  CheckDecode<__nv_bfloat16>({32, 1, 128, 16, {200, 5}, /*num_splits=*/2});  // teams of 2
  CheckDecode<__nv_bfloat16>({8, 2, 128, 16, {1, 300}, /*num_splits=*/4, true});
  // 8 warps in 4 teams of 2 with 6 stages; steps of 2 and 4 tiles; a partial last step.
  CheckDecode<__nv_bfloat16>({32, 1, 128, 16, {500, 37}, /*num_splits=*/2, false, {8, 6, 1}});
  CheckDecode<__nv_bfloat16>({32, 1, 64, 16, {300}, /*num_splits=*/1, false, {8, 3, 4}});
  CheckDecode<__nv_bfloat16>({32, 4, 64, 16, {400, 3}, /*num_splits=*/2, false, {4, 3, 2}});
  CheckDecode<__nv_bfloat16>({32, 1, 64, 16, {300, 20}, 0, true, {8, 3, 2}, /*window=*/50});
  // The warpgroup kernel (every shape above without a variant runs it too): group 64, a window.
  CheckDecode<__nv_bfloat16>({64, 1, 128, 16, {130, 7}, /*num_splits=*/2});
  Shape windowed{32, 1, 128, 16, {300, 70}, 0, true};
  windowed.window = 90;
  CheckDecode<__nv_bfloat16>(windowed);
}

}  // namespace
}  // namespace gqa::kernels::cuda
