#include "model/tensor_parallel.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gqa {
namespace {

// Part `part` of `parts` equal parts of [0, total) (total a multiple of parts).
IndexRange EvenPart(int total, int parts, int part) {
  const int each = total / parts;
  return {part * each, (part + 1) * each};
}

}  // namespace

absl::Status CheckTensorParallelSize(const ModelConfig& config, int world_size) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel_size must be at least 1, got ", world_size));
  }
  if (config.num_heads % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor_parallel_size ", world_size,
                                                   " does not divide num_attention_heads ",
                                                   config.num_heads));
  }
  const int kv = config.num_kv_heads;
  if (kv % world_size != 0 && world_size % kv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor_parallel_size ", world_size, " and num_key_value_heads ", kv,
                     ": one must divide the other (KV heads are split, or replicated on ",
                     "tensor_parallel_size / num_key_value_heads ranks each)"));
  }
  if (config.intermediate_size % world_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor_parallel_size ", world_size,
                                                   " does not divide intermediate_size ",
                                                   config.intermediate_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<TensorParallelShard> PlanTensorParallelShard(const ModelConfig& config, int rank,
                                                            int world_size) {
  if (absl::Status s = CheckTensorParallelSize(config, world_size); !s.ok()) return s;
  if (rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", rank, " is outside [0, tensor_parallel_size ", world_size, ")"));
  }
  TensorParallelShard shard;
  shard.rank = rank;
  shard.world_size = world_size;
  shard.query_heads = EvenPart(config.num_heads, world_size, rank);
  const int kv = config.num_kv_heads;
  if (world_size <= kv) {
    shard.kv_heads = EvenPart(kv, world_size, rank);
  } else {
    shard.kv_replicas = world_size / kv;
    const int head = rank / shard.kv_replicas;
    shard.kv_heads = {head, head + 1};
  }
  shard.intermediate = EvenPart(config.intermediate_size, world_size, rank);
  const int vocab_each = (config.vocab_size + world_size - 1) / world_size;
  const int vocab_begin = std::min(config.vocab_size, rank * vocab_each);
  shard.vocab = {vocab_begin, std::min(config.vocab_size, vocab_begin + vocab_each)};
  return shard;
}

}  // namespace gqa
