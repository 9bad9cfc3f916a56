// CUDA row and elementwise kernels of the decoder: RMSNorm (fused with the residual add),
// rotary embedding, SwiGLU and the embedding gather. Activations are T (bf16 or fp16); all
// arithmetic is fp32. Each has a CPU reference in cpu_ops.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace gqa::kernels::cuda {

// If x is not null: residual = residual + x (rounded to T). Then
// out = residual / rms(residual) * weight. dim must be a multiple of 8.
template <typename T>
cudaError_t AddRmsNorm(const T* x,       // [rows, dim] or nullptr
                       T* residual,      // [rows, dim], updated in place when x is given
                       const T* weight,  // [dim]
                       int rows, int dim, float eps,
                       T* out,  // [rows, dim]
                       cudaStream_t stream);

// Rotate-half rotary embedding of q and k in place, angle = position * inv_freq[i].
template <typename T>
cudaError_t ApplyRope(T* q,                      // [tokens, num_heads, head_dim]
                      T* k,                      // [tokens, num_kv_heads, head_dim]
                      const int32_t* positions,  // [tokens]
                      const float* inv_freq,     // [head_dim / 2]
                      int tokens, int num_heads, int num_kv_heads, int head_dim,
                      cudaStream_t stream);

// out = silu(gate) * up. gate and up rows are `in_stride` elements apart, so one fused
// gate_up projection [rows, 2 * dim] serves with up = gate + dim and in_stride = 2 * dim.
template <typename T>
cudaError_t SiluMul(const T* gate,  // [rows, in_stride]
                    const T* up,    // [rows, in_stride]
                    int rows, int dim, int in_stride,
                    T* out,  // [rows, dim]
                    cudaStream_t stream);

// out[t] = table[ids[t]]. hidden must be a multiple of 8.
template <typename T>
cudaError_t EmbeddingGather(const T* table,      // [vocab, hidden]
                            const int32_t* ids,  // [tokens]
                            int tokens, int hidden,
                            T* out,  // [tokens, hidden]
                            cudaStream_t stream);

// A tensor-parallel rank's share of the embedding: out[t] = table[ids[t] - vocab_begin] for ids
// in [vocab_begin, vocab_end) (the rows this rank holds), zeros for every other id, so that the
// sum over ranks (an all-reduce) is the whole embedding. hidden must be a multiple of 8.
template <typename T>
cudaError_t EmbeddingGatherVocabSlice(const T* table,      // [vocab_end - vocab_begin, hidden]
                                      const int32_t* ids,  // [tokens], of the whole vocabulary
                                      int tokens, int hidden, int vocab_begin, int vocab_end,
                                      T* out,  // [tokens, hidden]
                                      cudaStream_t stream);

// cudaSuccess when this build's kernels can run on the current GPU; an error (usually
// cudaErrorNoKernelImageForDevice) when they were not compiled for its architecture.
cudaError_t CheckKernelsRunHere();

// p[i] = lo + (hi - lo) * u_i with u_i in [0, 1) hashed from (seed, i): random weights for
// benchmarks of big shapes, made on the GPU.
template <typename T>
cudaError_t FillUniform(T* p,  // [n]
                        size_t n, float lo, float hi, uint64_t seed, cudaStream_t stream);

}  // namespace gqa::kernels::cuda
