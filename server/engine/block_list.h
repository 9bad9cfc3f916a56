// The KV cache blocks a sequence holds, in position order: a leaf the allocator, the scheduler
// and the sequence share.
#pragma once

#include <cstdint>
#include <vector>

namespace gqa {

using BlockList = std::vector<int32_t>;

}  // namespace gqa
