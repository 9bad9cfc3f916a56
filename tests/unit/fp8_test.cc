// FP8 E4M3 rounding (gqa/kernels/fp8_e4m3.h) against a table worked out by hand, and the CPU
// reference ops over an FP8 cache against the same ops over the dequantized values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/fp8_e4m3.h"

namespace gqa::kernels {
namespace {

struct Rounding {
  float in;
  uint8_t bits;
};

// E4M3: exponent bias 7, 3 mantissa bits; codes 0x01-0x07 are m * 2^-9, 0x7e = 448, 0x7f = NaN.
constexpr Rounding kTable[] = {
    {0.0f, 0x00},       {-0.0f, 0x80},  {1.0f, 0x38},  // e = 7, m = 0
    {-1.0f, 0xb8},      {1.125f, 0x39},                // m = 1
    {1.0625f, 0x38},                                   // halfway 1 .. 1.125: ties to even (m = 0)
    {1.1875f, 0x3a},   // halfway 1.125 .. 1.25: ties to even (m = 2)
    {1.06251f, 0x39},  // just above halfway: up
    {1.875f, 0x3f},    // m = 7
    {1.9375f, 0x40},   // halfway 1.875 .. 2: even is 2 (mantissa carries into the exponent)
    {2.0f, 0x40},       {3.0f, 0x44},   {0.3f, 0x2a},  // 0.3 = 1.2 * 2^-2: m = 1.6 -> 2 (0.3125)
    {448.0f, 0x7e},                                    // the largest finite value
    {-448.0f, 0xfe},    {449.0f, 0x7e},                // saturates
    {464.0f, 0x7e},  // halfway to the 480 that does not exist: saturates, never NaN
    {1e6f, 0x7e},       {-1e30f, 0xfe}, {INFINITY, 0x7e},
    {-INFINITY, 0xfe},  {416.0f, 0x7d},  // 1.625 * 2^8
    {0x1p-6f, 0x08},                     // the smallest normal
    {0x1p-9f, 0x01},                     // the smallest subnormal
    {0x7p-9f, 0x07},                     // the largest subnormal
    {0x1p-10f, 0x00},                    // halfway 0 .. 2^-9: ties to even (0)
    {0x3p-10f, 0x02},                    // halfway 2^-9 .. 2^-8: ties to even (2)
    {0x5p-10f, 0x02},                    // halfway 2 .. 3 (x 2^-9): ties to even (2)
    {0xfp-10f, 0x08},    // halfway 7 .. 8 (x 2^-9): the even one is the smallest normal
    {0x1.1p-10f, 0x01},  // just above half of the smallest subnormal: up
    {-0x3p-9f, 0x83},    // a negative subnormal
    {1e-30f, 0x00},      // underflows to zero
    {-1e-30f, 0x80},
};

TEST(Fp8E4M3Test, RoundsToNearestEvenSaturatesAndKeepsSubnormals) {
  for (const Rounding& r : kTable) {
    SCOPED_TRACE(testing::Message() << "input " << r.in);
    EXPECT_EQ(int(Fp8E4M3FromFloat(r.in)), int(r.bits));
  }
}

TEST(Fp8E4M3Test, DecodesEveryCodeAndEncodesItBack) {
  int finite = 0;
  for (int code = 0; code < 256; ++code) {
    const float value = Fp8E4M3ToFloat(uint8_t(code));
    if ((code & 0x7f) == 0x7f) {
      EXPECT_TRUE(std::isnan(value)) << code;
      EXPECT_EQ(Fp8E4M3FromFloat(value) & 0x7f, 0x7f);  // NaN stays NaN
      continue;
    }
    ++finite;
    EXPECT_LE(std::fabs(value), kFp8E4M3Max);
    EXPECT_EQ(int(Fp8E4M3FromFloat(value)), code) << value;
  }
  EXPECT_EQ(finite, 254);
  EXPECT_EQ(Fp8E4M3ToFloat(0x7e), 448.0f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x01), 0x1p-9f);
  EXPECT_EQ(Fp8E4M3ToFloat(0x3a), 1.25f);
}

// Every float between two neighbouring codes rounds to the nearer; at the midpoint to the even.
TEST(Fp8E4M3Test, EveryInputRoundsToTheNearestCode) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> log_mag(-12.0f, 9.5f);
  for (int i = 0; i < 100000; ++i) {
    const float x = std::exp2(log_mag(rng)) * (i % 2 ? -1.0f : 1.0f);
    const uint8_t bits = Fp8E4M3FromFloat(x);
    const float got = Fp8E4M3ToFloat(bits);
    ASSERT_FALSE(std::isnan(got)) << x;
    if (std::fabs(x) >= kFp8E4M3Max) {
      ASSERT_EQ(std::fabs(got), kFp8E4M3Max) << x;
      continue;
    }
    // No finite code is strictly nearer.
    for (int code = 0; code < 256; ++code) {
      const float other = Fp8E4M3ToFloat(uint8_t(code));
      if (std::isnan(other)) continue;
      ASSERT_LE(std::fabs(got - x), std::fabs(other - x)) << x << " code " << code;
    }
  }
}

TEST(Fp8E4M3Test, QuantizeDividesByTheScale) {
  EXPECT_EQ(Fp8E4M3Quantize(2.0f, 0.5f), Fp8E4M3FromFloat(4.0f));
  EXPECT_EQ(Fp8E4M3Dequantize(Fp8E4M3FromFloat(4.0f), 0.5f), 2.0f);
  EXPECT_EQ(Fp8E4M3Quantize(1000.0f, 1.0f), 0x7e);  // saturates at 448 x scale
  EXPECT_EQ(Fp8E4M3Dequantize(Fp8E4M3Quantize(1000.0f, 4.0f), 4.0f), 1024.0f);
}

// The FP8 ops are the fp32 ops over the dequantized cache, exactly: append quantizes each
// element with its head's scale; attention reads e4m3 * scale.
TEST(Fp8PagedOpsTest, AttentionIsTheFp32AttentionOfTheDequantizedCache) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  const int num_heads = 8, kv_heads = 2, d = 64, block_size = 16;
  const std::vector<int32_t> lens = {1, 17, 40}, query_lens = {1, 17, 3};
  const int num_seqs = int(lens.size()), max_blocks = 3, row = kv_heads * d;
  const int num_blocks = num_seqs * max_blocks;
  std::vector<int32_t> ids(num_blocks);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  const std::vector<int32_t> tables(ids.begin(), ids.end());
  const std::vector<float> k_scale = {0.5f, 2.0f}, v_scale = {0.25f, 1.0f};
  const size_t pool = size_t(num_blocks) * row * block_size;
  std::vector<uint8_t> k8(pool, 0x7f), v8(pool, 0x7f);  // NaN-poisoned
  std::vector<float> k32(pool, NAN), v32(pool, NAN);
  PagedKvView<uint8_t> fp8{k8.data(),  v8.data(), tables.data(),  max_blocks,    kv_heads,
                           block_size, d,         k_scale.data(), v_scale.data()};
  PagedKvView<float> fp32{k32.data(), v32.data(), tables.data(), max_blocks, kv_heads,
                          block_size, d};
  std::vector<int32_t> query_start = {0};
  for (int s = 0; s < num_seqs; ++s) {
    std::vector<float> k(size_t(lens[s]) * row), v(k.size());
    for (auto& x : k) x = 30.0f * normal(rng);  // some saturate under scale 0.5
    for (auto& x : v) x = normal(rng);
    std::vector<int64_t> slots;
    for (int p = 0; p < lens[s]; ++p) slots.push_back(fp8.Slot(s, p));
    cpu::PagedKvAppend(k.data(), v.data(), slots.data(), lens[s], fp8);
    for (int p = 0; p < lens[s]; ++p) {
      for (int h = 0; h < kv_heads; ++h) {
        const size_t src = size_t(p) * row + h * d, dst = fp8.Offset(slots[p], h);
        for (int i = 0; i < d; ++i) {
          ASSERT_EQ(k8[dst + i], Fp8E4M3Quantize(k[src + i], k_scale[h]));
          ASSERT_EQ(v8[dst + i], Fp8E4M3Quantize(v[src + i], v_scale[h]));
          k32[dst + i] = Fp8E4M3Dequantize(k8[dst + i], k_scale[h]);
          v32[dst + i] = Fp8E4M3Dequantize(v8[dst + i], v_scale[h]);
        }
      }
    }
    query_start.push_back(query_start.back() + query_lens[s]);
  }
  std::vector<float> q(size_t(query_start.back()) * num_heads * d);
  for (auto& x : q) x = normal(rng);
  for (int window : {0, 8}) {
    std::vector<float> out8(q.size(), NAN), out32(q.size(), NAN);
    cpu::PagedAttention(q.data(), fp8, query_start.data(), lens.data(), num_seqs, num_heads, 0.125f,
                        out8.data(), window);
    cpu::PagedAttention(q.data(), fp32, query_start.data(), lens.data(), num_seqs, num_heads,
                        0.125f, out32.data(), window);
    for (size_t i = 0; i < q.size(); ++i) ASSERT_EQ(out8[i], out32[i]) << i;
  }
}

}  // namespace
}  // namespace gqa::kernels
