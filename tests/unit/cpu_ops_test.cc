// The CPU ops against direct, dense computations on fresh random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/rope.h"
#include "model/dtype.h"

namespace gqa::kernels::cpu {
namespace {

std::mt19937& Rng() {
  static std::mt19937 rng(std::random_device{}());
  return rng;
}

std::vector<float> Random(size_t n) {
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(Rng());
  return v;
}

double RelativeError(const std::vector<float>& out, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (out[i] - ref[i]) * double(out[i] - ref[i]);
    den += ref[i] * double(ref[i]);
  }
  return std::sqrt(num / den);
}

struct AttnCase {
  int num_heads, num_kv_heads, head_dim, block_size;
  std::vector<int> context_lens, query_lens;
};

// Dense causal attention per sequence: K/V given as [seq_len, kv_heads, head_dim].
void DenseAttention(const AttnCase& c, const std::vector<std::vector<float>>& keys,
                    const std::vector<std::vector<float>>& values, const std::vector<float>& q,
                    std::vector<float>& out) {
  const int d = c.head_dim, group = c.num_heads / c.num_kv_heads;
  int row = 0;
  for (size_t s = 0; s < c.context_lens.size(); ++s) {
    for (int i = 0; i < c.query_lens[s]; ++i, ++row) {
      const int pos = c.context_lens[s] - c.query_lens[s] + i;
      for (int h = 0; h < c.num_heads; ++h) {
        const int kvh = h / group;
        std::vector<double> w(pos + 1);
        double mx = -1e300, sum = 0;
        for (int p = 0; p <= pos; ++p) {
          double dot = 0;
          for (int e = 0; e < d; ++e) {
            dot += q[(size_t(row) * c.num_heads + h) * d + e] *
                   keys[s][(size_t(p) * c.num_kv_heads + kvh) * d + e];
          }
          w[p] = dot / std::sqrt(double(d));
          mx = std::max(mx, w[p]);
        }
        for (auto& x : w) sum += (x = std::exp(x - mx));
        for (int e = 0; e < d; ++e) {
          double acc = 0;
          for (int p = 0; p <= pos; ++p) {
            acc += w[p] / sum * values[s][(size_t(p) * c.num_kv_heads + kvh) * d + e];
          }
          out[(size_t(row) * c.num_heads + h) * d + e] = float(acc);
        }
      }
    }
  }
}

void CheckPagedAttention(const AttnCase& c) {
  const int num_seqs = static_cast<int>(c.context_lens.size());
  const int d = c.head_dim, row = c.num_kv_heads * d;
  std::vector<int> blocks_per_seq(num_seqs);
  int total_blocks = 0, max_blocks = 0;
  for (int s = 0; s < num_seqs; ++s) {
    blocks_per_seq[s] = (c.context_lens[s] + c.block_size - 1) / c.block_size;
    total_blocks += blocks_per_seq[s];
    max_blocks = std::max(max_blocks, blocks_per_seq[s]);
  }
  // Shuffled, non-contiguous block ids with spare blocks between them.
  std::vector<int32_t> ids(total_blocks * 2);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), Rng());
  std::vector<int32_t> tables(size_t(num_seqs) * max_blocks, -1);
  for (int s = 0, next = 0; s < num_seqs; ++s) {
    for (int b = 0; b < blocks_per_seq[s]; ++b) tables[size_t(s) * max_blocks + b] = ids[next++];
  }
  const size_t pool = size_t(total_blocks) * 2 * row * c.block_size;
  std::vector<float> k_cache(pool, NAN), v_cache(pool, NAN);  // poisoned
  PagedKvView<float> view{
      k_cache.data(), v_cache.data(), tables.data(), max_blocks, c.num_kv_heads, c.block_size, d};
  std::vector<std::vector<float>> keys, values;
  std::vector<int32_t> query_start = {0};
  for (int s = 0; s < num_seqs; ++s) {
    keys.push_back(Random(size_t(c.context_lens[s]) * row));
    values.push_back(Random(size_t(c.context_lens[s]) * row));
    std::vector<int64_t> slots;
    for (int p = 0; p < c.context_lens[s]; ++p) slots.push_back(view.Slot(s, p));
    PagedKvAppend(keys[s].data(), values[s].data(), slots.data(), c.context_lens[s], view);
    query_start.push_back(query_start.back() + c.query_lens[s]);
  }
  const int tokens = query_start.back();
  const auto q = Random(size_t(tokens) * c.num_heads * d);
  std::vector<float> out(q.size(), NAN), ref(q.size());
  PagedAttention(q.data(), view, query_start.data(), c.context_lens.data(), num_seqs, c.num_heads,
                 1.0f / std::sqrt(float(d)), out.data());
  DenseAttention(c, keys, values, q, ref);
  EXPECT_LT(RelativeError(out, ref), 1e-5);
}

TEST(PagedAttentionTest, MatchesDenseForEveryGroupSizeAndRaggedLengths) {
  for (int kv_heads : {8, 4, 2, 1}) {
    for (int block_size : {1, 4, 16}) {
      SCOPED_TRACE(testing::Message() << "kv_heads " << kv_heads << " block " << block_size);
      // Decode rows, a prefill chunk extending cached tokens, block boundaries +- 1.
      CheckPagedAttention({8, kv_heads, 16, block_size, {1, 15, 16, 17, 40}, {1, 1, 16, 5, 3}});
    }
  }
  CheckPagedAttention({32, 1, 64, 16, {33, 7}, {2, 7}});  // MQA, group 32
  CheckPagedAttention({4, 2, 128, 16, {65}, {65}});       // head_dim 128, whole prompt
}

TEST(CpuOpsTest, RmsNormAndResidual) {
  const int rows = 3, dim = 37;
  auto x = Random(rows * dim), w = Random(dim), residual = Random(rows * dim);
  auto expected_residual = residual;
  for (size_t i = 0; i < x.size(); ++i) expected_residual[i] += x[i];
  std::vector<float> out(rows * dim), ref(rows * dim);
  AddRmsNorm(x.data(), residual.data(), w.data(), rows, dim, 1e-5f, out.data());
  for (int r = 0; r < rows; ++r) {
    double ss = 0;
    for (int i = 0; i < dim; ++i)
      ss += double(expected_residual[r * dim + i]) * expected_residual[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + 1e-5);
    for (int i = 0; i < dim; ++i)
      ref[r * dim + i] = float(w[i] * expected_residual[r * dim + i] * inv);
  }
  EXPECT_EQ(residual, expected_residual);
  EXPECT_LT(RelativeError(out, ref), 1e-6);
}

TEST(CpuOpsTest, MatmulWithBias) {
  const int m = 5, n = 33, k = 19;
  auto x = Random(m * k), w = Random(n * k), b = Random(n);
  std::vector<float> y(m * n), ref(m * n);
  Matmul(x.data(), w.data(), b.data(), m, n, k, y.data());
  for (int i = 0; i < m; ++i) {
    for (int j = 0; j < n; ++j) {
      double acc = b[j];
      for (int e = 0; e < k; ++e) acc += double(x[i * k + e]) * w[j * k + e];
      ref[i * n + j] = float(acc);
    }
  }
  EXPECT_LT(RelativeError(y, ref), 1e-6);
}

TEST(CpuOpsTest, HalfToFloatMatchesTheReferenceOnEveryBitPattern) {
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float got = HalfToFloat(static_cast<uint16_t>(h));
    const float want = gqa::HalfToFloat(static_cast<uint16_t>(h));  // frexp/ldexp, independent
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(got)) << std::hex << h;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(got), std::bit_cast<uint32_t>(want)) << std::hex << h;
    }
  }
}

// The vector path (eight at a time) too: every half as one embedding row.
TEST(CpuOpsTest, GatheringEveryHalfWidensItExactly) {
  std::vector<uint16_t> table(1 << 16);
  std::iota(table.begin(), table.end(), 0);
  std::vector<float> row(table.size());
  const int32_t id = 0;
  EmbeddingGather(WeightView{table.data(), WeightType::kF16}, &id, 1, int(table.size()),
                  row.data());
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const float want = gqa::HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(row[h])) << std::hex << h;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(row[h]), std::bit_cast<uint32_t>(want)) << std::hex << h;
    }
  }
}

// F16 and BF16 weights used in place give bitwise the results of their fp32 values.
TEST(CpuOpsTest, MatmulAndGatherOnStoredWeightsEqualTheirFp32Values) {
  const int m = 3, n = 21, k = 37;  // k not a multiple of 8: the tail runs too
  auto x = Random(m * k), b = Random(n);
  auto w = Random(n * k);
  for (int i = 0; i < 8; ++i) w[i] *= 1e-6f;  // F16 subnormals
  std::vector<uint16_t> half(w.size()), bf16(w.size());
  std::vector<float> half_values(w.size()), bf16_values(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    half[i] = gqa::FloatToHalf(w[i]);
    bf16[i] = gqa::FloatToBFloat16(w[i]);
    half_values[i] = gqa::HalfToFloat(half[i]);
    bf16_values[i] = gqa::BFloat16ToFloat(bf16[i]);
  }
  const std::vector<int32_t> ids = {4, 0, 20, 4};
  for (auto [stored, values] :
       {std::pair{WeightView{half.data(), WeightType::kF16}, &half_values},
        std::pair{WeightView{bf16.data(), WeightType::kBF16}, &bf16_values}}) {
    std::vector<float> y(m * n), ref(m * n);
    Matmul(x.data(), stored, b.data(), m, n, k, y.data());
    Matmul(x.data(), values->data(), b.data(), m, n, k, ref.data());
    EXPECT_EQ(y, ref);
    std::vector<float> rows(ids.size() * k), ref_rows(ids.size() * k);
    EmbeddingGather(stored, ids.data(), static_cast<int>(ids.size()), k, rows.data());
    EmbeddingGather(values->data(), ids.data(), static_cast<int>(ids.size()), k, ref_rows.data());
    EXPECT_EQ(rows, ref_rows);
  }
}

TEST(CpuOpsTest, RopeRotatesHalvesAndPreservesNorm) {
  const int tokens = 4, heads = 2, d = 8;
  auto x = Random(tokens * heads * d);
  auto orig = x;
  const std::vector<int32_t> pos = {0, 1, 7, 300};
  const auto inv_freq = RopeInverseFrequencies(10000.0f, d, {});
  ApplyRope(x.data(), pos.data(), inv_freq.data(), tokens, heads, d);
  for (int i = 0; i < heads * d; ++i) EXPECT_FLOAT_EQ(x[i], orig[i]);  // position 0
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < heads; ++h) {
      for (int i = 0; i < d / 2; ++i) {
        const size_t base = (size_t(t) * heads + h) * d;
        const double angle = pos[t] * double(inv_freq[i]);
        const double x1 = orig[base + i], x2 = orig[base + i + d / 2];
        EXPECT_NEAR(x[base + i], x1 * std::cos(angle) - x2 * std::sin(angle), 1e-3);
        EXPECT_NEAR(x[base + i + d / 2], x2 * std::cos(angle) + x1 * std::sin(angle), 1e-3);
      }
    }
  }
}

TEST(RopeTest, Llama3ScalingKeepsHighAndSlowsLowFrequencies) {
  RopeScaling s{RopeScalingType::kLlama3, 8.0f, 1.0f, 4.0f, 8192};
  const auto plain = RopeInverseFrequencies(500000.0f, 128, {});
  const auto scaled = RopeInverseFrequencies(500000.0f, 128, s);
  EXPECT_FLOAT_EQ(scaled[0], plain[0]);           // wavelength 2*pi: kept
  EXPECT_FLOAT_EQ(scaled[63], plain[63] / 8.0f);  // longest wavelength: divided by factor
}

}  // namespace
}  // namespace gqa::kernels::cpu
