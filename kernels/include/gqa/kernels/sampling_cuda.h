// Token sampling on the GPU, so full logits never cross to the host.
//
// Per row: greedy (argmax, lowest id on ties) when temperature is 0 or top_k is 1; otherwise
// softmax(logits / temperature) restricted to the top_k most likely tokens, then to the
// smallest most-likely set whose mass reaches top_p, sampled by inverse CDF in most-likely-first
// order with the draw UniformForStep(seed, step) -- the same rule as the CPU sampler. Tokens are
// ranked by (logit, lower id first) as one 64-bit key, and the cutoffs are found by radix select
// over those keys with fixed-point weights, so the result is deterministic.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "gqa/kernels/sampling.h"

namespace gqa::kernels::cuda {

cudaError_t SampleTokens(const float* logits,        // [rows, vocab]
                         const SamplingRow* params,  // [rows], device memory
                         int rows, int vocab,
                         int32_t* tokens,  // [rows]
                         cudaStream_t stream);

// The same rule with every selection over the whole vocabulary instead of SampleTokens'
// candidate list (kernels/cuda/sampling.cu): the reference the tests hold SampleTokens to, token
// for token, and the baseline of its benchmark.
cudaError_t SampleTokensOverVocabulary(const float* logits,        // [rows, vocab]
                                       const SamplingRow* params,  // [rows], device memory
                                       int rows, int vocab,
                                       int32_t* tokens,  // [rows]
                                       cudaStream_t stream);

// Greedy sampling under tensor parallelism, the logits never gathered whole: each rank ranks the
// tokens of its vocabulary slice as SampleTokens does, by (logit, lower id first) as one 64-bit
// key with the slice's global ids, and keeps each row's largest key (BestKeysOfSlice); the
// ranks all-gather those keys (8 bytes per row per rank) and the largest of a row is its token
// (TokensFromBestKeys): the whole vocabulary's argmax, lowest id on ties, the token SampleTokens
// picks for a greedy row, bit for bit.
cudaError_t BestKeysOfSlice(const float* logits,  // [rows, slice_vocab], token ids from first_id
                            int rows, int slice_vocab, int first_id,
                            uint64_t* best_keys,  // [rows]; 0 where slice_vocab is 0
                            cudaStream_t stream);
cudaError_t TokensFromBestKeys(const uint64_t* rank_best_keys,  // [ranks, rows]
                               int ranks, int rows,
                               int32_t* tokens,  // [rows]
                               cudaStream_t stream);

// One block per query: the row's log-sum-exp (max, then the sum of exponentials, reduced in a
// fixed order) and its top_k tokens by (logit, lower id first) as one 64-bit key, so the result
// is deterministic and matches cpu::ComputeLogprobs within float rounding. Launches nothing when
// num_queries is 0.
cudaError_t ComputeLogprobs(const float* logits,           // [rows, vocab]
                            const LogprobsQuery* queries,  // [num_queries], device memory
                            int num_queries, int vocab,
                            LogprobsResult* results,  // [num_queries], device memory
                            cudaStream_t stream);

}  // namespace gqa::kernels::cuda
