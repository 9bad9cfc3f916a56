// CPU reference implementations of the decoder's operations, in fp32.
// They are the oracle the CUDA kernels are tested against and what the CPU backend runs.
// Every output element is computed in a fixed order that does not depend on the batch, so a
// sequence's results are bitwise identical alone, batched, prefilled or decoded token by token.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "gqa/kernels/paged_kv.h"

namespace gqa::kernels::cpu {

// Threads used by the parallel ops (Matmul, PagedAttention); 0 = hardware concurrency.
void SetNumThreads(int num_threads);
int NumThreads();

// out = x / rms(x) * weight, per row.
void RmsNorm(const float* x,       // [rows, dim]
             const float* weight,  // [dim]
             int rows, int dim, float eps,
             float* out);  // [rows, dim]

// residual += x; out = RmsNorm(residual).
void AddRmsNorm(const float* x,       // [rows, dim]
                float* residual,      // [rows, dim], updated in place
                const float* weight,  // [dim]
                int rows, int dim, float eps,
                float* out);  // [rows, dim]

// A weight matrix as the checkpoint stores it. The ops widen each element to fp32 as they read
// it (exactly: every F16 and BF16 value is an fp32 value), so a backend can use memory-mapped
// weights in place at their stored size and get the same results as from an fp32 copy.
enum class WeightType { kF32, kF16, kBF16 };
struct WeightView {
  const void* data = nullptr;  // [rows, cols] of `type`, aligned to the element size
  WeightType type = WeightType::kF32;
};

// The fp32 value of an IEEE half (subnormals, infinities and NaNs included).
float HalfToFloat(uint16_t h);

// y = x @ w^T + bias (Hugging Face Linear layout).
void Matmul(const float* x,     // [m, k]
            WeightView w,       // [n, k]
            const float* bias,  // [n] or nullptr
            int m, int n, int k,
            float* y);  // [m, n]
inline void Matmul(const float* x, const float* w, const float* bias, int m, int n, int k,
                   float* y) {
  Matmul(x, WeightView{w, WeightType::kF32}, bias, m, n, k, y);
}

// Rotary embedding, rotate-half (GPT-NeoX / Hugging Face Llama) convention, in place.
void ApplyRope(float* x,                  // [tokens, heads, head_dim]
               const int32_t* positions,  // [tokens]
               const float* inv_freq,     // [head_dim / 2]
               int tokens, int heads, int head_dim);

// out = silu(gate) * up.
void SiluMul(const float* gate,  // [rows, dim]
             const float* up,    // [rows, dim]
             int rows, int dim,
             float* out);  // [rows, dim]

void EmbeddingGather(WeightView table,    // [vocab, hidden]
                     const int32_t* ids,  // [tokens]
                     int tokens, int hidden,
                     float* out);  // [tokens, hidden]
inline void EmbeddingGather(const float* table, const int32_t* ids, int tokens, int hidden,
                            float* out) {
  EmbeddingGather(WeightView{table, WeightType::kF32}, ids, tokens, hidden, out);
}

// Writes each token's K and V into its slot.
void PagedKvAppend(const float* k,        // [tokens, num_kv_heads, head_dim]
                   const float* v,        // [tokens, num_kv_heads, head_dim]
                   const int64_t* slots,  // [tokens]
                   int tokens, const PagedKvView<float>& cache);

// The same into an FP8 (E4M3) cache: each element stored as round_e4m3(x / scale of its head).
void PagedKvAppend(const float* k,        // [tokens, num_kv_heads, head_dim]
                   const float* v,        // [tokens, num_kv_heads, head_dim]
                   const int64_t* slots,  // [tokens]
                   int tokens, const PagedKvView<uint8_t>& cache);

// Causal grouped-query attention over the paged cache. Sequence s owns query rows
// [query_start[s], query_start[s + 1]); its last query row sits at position context_lens[s] - 1
// and the rows before it at the positions before that. Query head h reads KV head
// h / (num_heads / num_kv_heads). With sliding_window > 0 (Mistral), the query at position p
// sees only keys p - sliding_window + 1 ... p (Hugging Face's mask).
void PagedAttention(const float* q,  // [tokens, num_heads, head_dim]
                    const PagedKvView<float>& cache,
                    const int32_t* query_start,   // [num_seqs + 1]
                    const int32_t* context_lens,  // [num_seqs]
                    int num_seqs, int num_heads, float scale,
                    float* out,  // [tokens, num_heads, head_dim]
                    int sliding_window = 0);
// The same over an FP8 (E4M3) cache: every K and V element read as e4m3 * scale (fp32), then
// exactly the fp32 computation above.
void PagedAttention(const float* q,  // [tokens, num_heads, head_dim]
                    const PagedKvView<uint8_t>& cache,
                    const int32_t* query_start,   // [num_seqs + 1]
                    const int32_t* context_lens,  // [num_seqs]
                    int num_seqs, int num_heads, float scale,
                    float* out,  // [tokens, num_heads, head_dim]
                    int sliding_window = 0);

}  // namespace gqa::kernels::cpu
