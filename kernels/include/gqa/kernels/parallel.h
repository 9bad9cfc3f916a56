// A small persistent thread pool for the CPU ops. Work is split into contiguous ranges, so each
// output element is still computed by exactly one thread in a fixed order.
#pragma once

#include <cstdint>
#include <functional>

namespace gqa::kernels::cpu {

// Calls fn(begin, end) over [0, n) split across the pool; returns when all ranges are done.
// Ranges smaller than min_chunk are not split further.
void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace gqa::kernels::cpu
