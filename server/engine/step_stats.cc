#include "engine/step_stats.h"

#include "backend/roofline.h"

namespace gqa {

StepStats DescribeStep(const SchedulerOutput& out, const StepCostModel& cost) {
  StepStats stats;
  stats.phase = out.phase();
  stats.weight_bytes = out.empty() ? 0 : cost.weight_bytes;
  stats.prefix_cache_queried_tokens = out.prefix_cache_queried_tokens;
  stats.prefix_cache_hit_tokens = out.prefix_cache_hit_tokens;
  for (const ScheduledChunk& c : out.chunks) {
    const Sequence& s = *c.seq;
    if (c.decodes()) {
      ++stats.decoding;
      stats.decode_tokens += c.num_tokens;
    } else {
      ++stats.prefilling;
      stats.prefill_tokens += c.num_tokens;
    }
    // Back from preemption, in its first chunk: a decode when the prefix cache still held all
    // of it but its last token.
    if (s.preemptions > 0 && c.start() == s.num_cached_at_admission) ++stats.resumed;
    const int64_t attended = AttendedTokens(c.start(), c.num_tokens, cost.attention_window);
    stats.kv_bytes += static_cast<uint64_t>(attended) * cost.kv_bytes_per_token;
  }
  return stats;
}

}  // namespace gqa
