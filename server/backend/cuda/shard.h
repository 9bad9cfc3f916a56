// Which rank of how many a CUDA backend is (tensor parallelism, model/tensor_parallel.h).
#pragma once

namespace gqa::cuda {

// This process's share of a tensor-parallel model (model/tensor_parallel.h says which slices).
struct Shard {
  int rank = 0;
  int world_size = 1;
};

}  // namespace gqa::cuda
