#include <algorithm>
#include <bit>
#include <cmath>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "gqa/kernels/cpu_ops.h"
#include "gqa/kernels/fp8_e4m3.h"
#include "gqa/kernels/parallel.h"

namespace gqa::kernels::cpu {
namespace {

// Stored weight elements, widened to fp32 exactly; written without branches so that the dot
// product below still vectorizes.
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
inline float Widen(float v) { return v; }
inline float Widen(BFloat16 v) { return std::bit_cast<float>(uint32_t{v.bits} << 16); }
inline float Widen(Half v) {
  // Shift exponent and mantissa into place, then rebias the exponent by multiplying by 2^112
  // (exact, and it also scales the half's subnormals into fp32 normals). Exponent 31 (inf, NaN)
  // becomes 255.
  const uint32_t magnitude = uint32_t{v.bits & 0x7fffu} << 13;
  uint32_t bits = std::bit_cast<uint32_t>(std::bit_cast<float>(magnitude) * 0x1p112f);
  bits |= (v.bits & 0x7c00u) == 0x7c00u ? 0x7f800000u : 0u;
  return std::bit_cast<float>(bits | (uint32_t{v.bits & 0x8000u} << 16));
}

#if defined(__SSE2__)
// Eight stored weight elements as two vectors of fp32.
template <typename W>
inline void Widen8(const W* b, __m128& lo, __m128& hi) {
  float w[8];
  for (int j = 0; j < 8; ++j) w[j] = Widen(b[j]);
  lo = _mm_loadu_ps(w);
  hi = _mm_loadu_ps(w + 4);
}
inline void Widen8(const BFloat16* b, __m128& lo, __m128& hi) {
  // A bf16 is the high half of its fp32: interleave zeros below each one.
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b));
  lo = _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), v));
  hi = _mm_castsi128_ps(_mm_unpackhi_epi16(_mm_setzero_si128(), v));
}
#endif

// Dot products of kRows rows of x (row stride `stride`) with one weight row. Each row keeps
// eight independent partial sums (element i goes to sum i % 8, a multiply then an add) combined
// in one fixed order, then the tail: the order depends only on k, never on the batch, the row
// block or the weights' stored type. Each weight element is widened once for all rows.
template <int kRows, typename W>
inline void DotRows(const float* x, size_t stride, const W* b, int k, float* out) {
  float acc[kRows][8];
  int i = 0;
#if defined(__SSE2__)
  __m128 lo[kRows], hi[kRows];
  for (int r = 0; r < kRows; ++r) lo[r] = hi[r] = _mm_setzero_ps();
  for (; i + 8 <= k; i += 8) {
    __m128 w_lo, w_hi;
    Widen8(b + i, w_lo, w_hi);
    for (int r = 0; r < kRows; ++r) {
      const float* xr = x + r * stride + i;
      lo[r] = _mm_add_ps(lo[r], _mm_mul_ps(_mm_loadu_ps(xr), w_lo));
      hi[r] = _mm_add_ps(hi[r], _mm_mul_ps(_mm_loadu_ps(xr + 4), w_hi));
    }
  }
  for (int r = 0; r < kRows; ++r) {
    _mm_storeu_ps(acc[r], lo[r]);
    _mm_storeu_ps(acc[r] + 4, hi[r]);
  }
#else
  for (int r = 0; r < kRows; ++r) std::fill_n(acc[r], 8, 0.0f);
  for (; i + 8 <= k; i += 8) {
    for (int r = 0; r < kRows; ++r) {
      for (int j = 0; j < 8; ++j) acc[r][j] += x[r * stride + i + j] * Widen(b[i + j]);
    }
  }
#endif
  for (int r = 0; r < kRows; ++r) {
    const float* a = acc[r];
    float sum = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    for (int e = i; e < k; ++e) sum += x[r * stride + e] * Widen(b[e]);
    out[r] = sum;
  }
}

template <typename W>
inline float Dot(const float* a, const W* b, int k) {
  float out;
  DotRows<1>(a, 0, b, k, &out);
  return out;
}

template <typename W>
void MatmulAs(const float* x, const W* w, const float* bias, int m, int n, int k, float* y) {
  // Output columns are split across threads. A thread takes its columns kColumnBlock at a time
  // (their weight rows stay in cache) and runs every row of x past them, four rows at once.
  constexpr int64_t kColumnBlock = 32;
  constexpr int kRowBlock = 4;
  ParallelFor(n, 16, [&](int64_t n_begin, int64_t n_end) {
    for (int64_t j0 = n_begin; j0 < n_end; j0 += kColumnBlock) {
      const int64_t j1 = std::min(n_end, j0 + kColumnBlock);
      int i = 0;
      for (; i + kRowBlock <= m; i += kRowBlock) {
        for (int64_t j = j0; j < j1; ++j) {
          float dots[kRowBlock];
          DotRows<kRowBlock>(x + static_cast<size_t>(i) * k, k, w + j * k, k, dots);
          for (int r = 0; r < kRowBlock; ++r) {
            y[static_cast<size_t>(i + r) * n + j] = dots[r] + (bias ? bias[j] : 0.0f);
          }
        }
      }
      for (; i < m; ++i) {
        for (int64_t j = j0; j < j1; ++j) {
          y[static_cast<size_t>(i) * n + j] =
              Dot(x + static_cast<size_t>(i) * k, w + j * k, k) + (bias ? bias[j] : 0.0f);
        }
      }
    }
  });
}

template <typename W>
void GatherAs(const W* table, const int32_t* ids, int tokens, int hidden, float* out) {
  for (int t = 0; t < tokens; ++t) {
    const W* row = table + static_cast<size_t>(ids[t]) * hidden;
    float* dst = out + static_cast<size_t>(t) * hidden;
    int i = 0;
#if defined(__SSE2__)
    for (; i + 8 <= hidden; i += 8) {
      __m128 lo, hi;
      Widen8(row + i, lo, hi);
      _mm_storeu_ps(dst + i, lo);
      _mm_storeu_ps(dst + i + 4, hi);
    }
#endif
    for (; i < hidden; ++i) dst[i] = Widen(row[i]);
  }
}

inline void NormalizeRow(const float* x, const float* weight, int dim, float eps, float* out) {
  float sum_sq = 0.0f;
  for (int i = 0; i < dim; ++i) sum_sq += x[i] * x[i];
  const float inv_rms = 1.0f / std::sqrt(sum_sq / static_cast<float>(dim) + eps);
  for (int i = 0; i < dim; ++i) out[i] = weight[i] * (x[i] * inv_rms);
}

}  // namespace

void RmsNorm(const float* x, const float* weight, int rows, int dim, float eps, float* out) {
  for (int r = 0; r < rows; ++r) {
    NormalizeRow(x + static_cast<size_t>(r) * dim, weight, dim, eps,
                 out + static_cast<size_t>(r) * dim);
  }
}

void AddRmsNorm(const float* x, float* residual, const float* weight, int rows, int dim, float eps,
                float* out) {
  for (size_t i = 0; i < static_cast<size_t>(rows) * dim; ++i) residual[i] += x[i];
  RmsNorm(residual, weight, rows, dim, eps, out);
}

float HalfToFloat(uint16_t h) { return Widen(Half{h}); }

void Matmul(const float* x, WeightView w, const float* bias, int m, int n, int k, float* y) {
  switch (w.type) {
    case WeightType::kF32:
      return MatmulAs(x, static_cast<const float*>(w.data), bias, m, n, k, y);
    case WeightType::kF16:
      return MatmulAs(x, static_cast<const Half*>(w.data), bias, m, n, k, y);
    case WeightType::kBF16:
      return MatmulAs(x, static_cast<const BFloat16*>(w.data), bias, m, n, k, y);
  }
}

void ApplyRope(float* x, const int32_t* positions, const float* inv_freq, int tokens, int heads,
               int head_dim) {
  const int half = head_dim / 2;
  std::vector<float> cos_v(half), sin_v(half);
  for (int t = 0; t < tokens; ++t) {
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(positions[t]) * inv_freq[i];
      cos_v[i] = std::cos(angle);
      sin_v[i] = std::sin(angle);
    }
    for (int h = 0; h < heads; ++h) {
      float* v = x + (static_cast<size_t>(t) * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float x1 = v[i];
        const float x2 = v[i + half];
        v[i] = x1 * cos_v[i] - x2 * sin_v[i];
        v[i + half] = x2 * cos_v[i] + x1 * sin_v[i];
      }
    }
  }
}

void SiluMul(const float* gate, const float* up, int rows, int dim, float* out) {
  for (size_t i = 0; i < static_cast<size_t>(rows) * dim; ++i) {
    const float g = gate[i];
    out[i] = (g / (1.0f + std::exp(-g))) * up[i];
  }
}

void EmbeddingGather(WeightView table, const int32_t* ids, int tokens, int hidden, float* out) {
  switch (table.type) {
    case WeightType::kF32:
      return GatherAs(static_cast<const float*>(table.data), ids, tokens, hidden, out);
    case WeightType::kF16:
      return GatherAs(static_cast<const Half*>(table.data), ids, tokens, hidden, out);
    case WeightType::kBF16:
      return GatherAs(static_cast<const BFloat16*>(table.data), ids, tokens, hidden, out);
  }
}

void PagedKvAppend(const float* k, const float* v, const int64_t* slots, int tokens,
                   const PagedKvView<float>& cache) {
  const int row = cache.num_kv_heads * cache.head_dim;
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < cache.num_kv_heads; ++h) {
      const size_t dst = cache.Offset(slots[t], h);
      const size_t src = static_cast<size_t>(t) * row + static_cast<size_t>(h) * cache.head_dim;
      std::copy_n(k + src, cache.head_dim, cache.k + dst);
      std::copy_n(v + src, cache.head_dim, cache.v + dst);
    }
  }
}

void PagedKvAppend(const float* k, const float* v, const int64_t* slots, int tokens,
                   const PagedKvView<uint8_t>& cache) {
  const int row = cache.num_kv_heads * cache.head_dim;
  for (int t = 0; t < tokens; ++t) {
    for (int h = 0; h < cache.num_kv_heads; ++h) {
      const float k_scale = cache.k_scale ? cache.k_scale[h] : 1.0f;
      const float v_scale = cache.v_scale ? cache.v_scale[h] : 1.0f;
      const size_t dst = cache.Offset(slots[t], h);
      const size_t src = static_cast<size_t>(t) * row + static_cast<size_t>(h) * cache.head_dim;
      for (int i = 0; i < cache.head_dim; ++i) {
        cache.k[dst + i] = Fp8E4M3Quantize(k[src + i], k_scale);
        cache.v[dst + i] = Fp8E4M3Quantize(v[src + i], v_scale);
      }
    }
  }
}

namespace {

// Where attention reads one K or V row: an fp32 cache in place, an FP8 cache dequantized into
// `buffer` ([head_dim]).
inline const float* KeyRow(const PagedKvView<float>& cache, int64_t slot, int kv_head, float*) {
  return cache.k + cache.Offset(slot, kv_head);
}
inline const float* ValueRow(const PagedKvView<float>& cache, int64_t slot, int kv_head, float*) {
  return cache.v + cache.Offset(slot, kv_head);
}
inline const float* Dequantize(const uint8_t* row, float scale, int d, float* buffer) {
  for (int i = 0; i < d; ++i) buffer[i] = Fp8E4M3Dequantize(row[i], scale);
  return buffer;
}
inline const float* KeyRow(const PagedKvView<uint8_t>& cache, int64_t slot, int kv_head,
                           float* buffer) {
  return Dequantize(cache.k + cache.Offset(slot, kv_head),
                    cache.k_scale ? cache.k_scale[kv_head] : 1.0f, cache.head_dim, buffer);
}
inline const float* ValueRow(const PagedKvView<uint8_t>& cache, int64_t slot, int kv_head,
                             float* buffer) {
  return Dequantize(cache.v + cache.Offset(slot, kv_head),
                    cache.v_scale ? cache.v_scale[kv_head] : 1.0f, cache.head_dim, buffer);
}

// One query head of one token against keys [first_key, num_keys) of sequence `seq`.
template <typename E>
void AttendOne(const float* q, const PagedKvView<E>& cache, int seq, int kv_head, int first_key,
               int num_keys, float scale, float* scores, float* row_buffer, float* out) {
  const int d = cache.head_dim;
  float max_score = -INFINITY;
  for (int p = first_key; p < num_keys; ++p) {
    scores[p] = Dot(q, KeyRow(cache, cache.Slot(seq, p), kv_head, row_buffer), d) * scale;
    max_score = std::max(max_score, scores[p]);
  }
  float denom = 0.0f;
  for (int p = first_key; p < num_keys; ++p) {
    scores[p] = std::exp(scores[p] - max_score);
    denom += scores[p];
  }
  std::fill_n(out, d, 0.0f);
  for (int p = first_key; p < num_keys; ++p) {
    const float* v = ValueRow(cache, cache.Slot(seq, p), kv_head, row_buffer);
    const float weight = scores[p] / denom;
    for (int i = 0; i < d; ++i) out[i] += weight * v[i];
  }
}

template <typename E>
void PagedAttentionOver(const float* q, const PagedKvView<E>& cache, const int32_t* query_start,
                        const int32_t* context_lens, int num_seqs, int num_heads, float scale,
                        float* out, int sliding_window) {
  const int group = num_heads / cache.num_kv_heads;
  const int d = cache.head_dim;
  const int num_tokens = query_start[num_seqs];
  // Work item = (token, head); each owns one output row.
  ParallelFor(static_cast<int64_t>(num_tokens) * num_heads, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, row_buffer(d);
    int seq = 0;
    for (int64_t item = begin; item < end; ++item) {
      const int token = static_cast<int>(item / num_heads);
      const int head = static_cast<int>(item % num_heads);
      while (query_start[seq + 1] <= token) ++seq;
      const int q_len = query_start[seq + 1] - query_start[seq];
      const int position = context_lens[seq] - q_len + (token - query_start[seq]);
      scores.resize(position + 1);
      const size_t row = (static_cast<size_t>(token) * num_heads + head) * d;
      const int first_key = sliding_window > 0 ? std::max(0, position + 1 - sliding_window) : 0;
      AttendOne(q + row, cache, seq, head / group, first_key, position + 1, scale, scores.data(),
                row_buffer.data(), out + row);
    }
  });
}

}  // namespace

void PagedAttention(const float* q, const PagedKvView<float>& cache, const int32_t* query_start,
                    const int32_t* context_lens, int num_seqs, int num_heads, float scale,
                    float* out, int sliding_window) {
  PagedAttentionOver(q, cache, query_start, context_lens, num_seqs, num_heads, scale, out,
                     sliding_window);
}

void PagedAttention(const float* q, const PagedKvView<uint8_t>& cache, const int32_t* query_start,
                    const int32_t* context_lens, int num_seqs, int num_heads, float scale,
                    float* out, int sliding_window) {
  PagedAttentionOver(q, cache, query_start, context_lens, num_seqs, num_heads, scale, out,
                     sliding_window);
}

}  // namespace gqa::kernels::cpu
