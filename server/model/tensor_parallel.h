// Tensor parallelism's arithmetic: which slice of every weight matrix, which query and KV heads,
// and which vocabulary rows one rank of N holds (Megatron-style, as vLLM and SGLang split a
// Llama-family decoder). Pure host logic, shared by the loader and the tests; no device code.
//
// - Q, K, V and gate|up are split by output rows (column-parallel), O and down by input columns
//   (row-parallel: each rank's product is a partial sum, all-reduced after it).
// - Rank r computes the query heads [r H / N, (r + 1) H / N). With N <= KV heads it holds the KV
//   heads [r K / N, (r + 1) K / N); with N > KV heads each KV head is replicated on N / K ranks
//   and rank r holds KV head r K / N (vLLM's QKVParallelLinear). Either way a rank's query heads
//   read only its own KV heads, and its KV pool holds only those heads.
// - The embedding and lm_head are split by vocabulary rows, ceil(vocab / N) per rank (the last
//   rank's range may be shorter or empty), so logits are never gathered whole.
#pragma once

#include "absl/status/statusor.h"
#include "model/config.h"

namespace gqa {

// A half-open range [begin, end).
struct IndexRange {
  int begin = 0;
  int end = 0;
  int size() const { return end - begin; }
  bool operator==(const IndexRange&) const = default;
};

struct TensorParallelShard {
  int rank = 0;
  int world_size = 1;
  IndexRange query_heads;   // of num_attention_heads
  IndexRange kv_heads;      // of num_key_value_heads (one replicated head when N > K)
  IndexRange intermediate;  // gate and up rows, down columns, of intermediate_size
  IndexRange vocab;         // embedding and lm_head rows, of vocab_size
  int kv_replicas = 1;      // ranks holding each KV head: max(1, N / K)

  // Rows of the checkpoint's q_proj, k_proj and v_proj weights this rank takes (head_dim rows
  // per head); its O columns are query_rows too.
  IndexRange query_rows(const ModelConfig& c) const {
    return {query_heads.begin * c.head_dim, query_heads.end * c.head_dim};
  }
  IndexRange kv_rows(const ModelConfig& c) const {
    return {kv_heads.begin * c.head_dim, kv_heads.end * c.head_dim};
  }
};

// Why `world_size` cannot split `config`, naming the field and the values (InvalidArgument), or
// OK: N >= 1 divides num_attention_heads and intermediate_size, and either N divides
// num_key_value_heads or num_key_value_heads divides N.
absl::Status CheckTensorParallelSize(const ModelConfig& config, int world_size);

// Rank `rank`'s share; the errors of CheckTensorParallelSize, and rank outside [0, world_size).
absl::StatusOr<TensorParallelShard> PlanTensorParallelShard(const ModelConfig& config, int rank,
                                                            int world_size);

}  // namespace gqa
