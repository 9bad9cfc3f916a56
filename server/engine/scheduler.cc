#include "engine/scheduler.h"

#include <algorithm>
#include <span>

namespace gqa {

const char* StepPhaseName(StepPhase phase) {
  switch (phase) {
    case StepPhase::kPrefill:
      return "prefill";
    case StepPhase::kDecode:
      return "decode";
    case StepPhase::kMixed:
      return "mixed";
  }
  return "mixed";
}

StepPhase SchedulerOutput::phase() const {
  bool any_decode = false, any_prefill = false;
  for (const auto& c : chunks) (c.decodes() ? any_decode : any_prefill) = true;
  if (any_decode && any_prefill) return StepPhase::kMixed;
  return any_decode ? StepPhase::kDecode : StepPhase::kPrefill;
}

Scheduler::Scheduler(const SchedulerConfig& config, BlockAllocator* allocator)
    : config_(config), allocator_(allocator) {}

void Scheduler::Add(std::unique_ptr<Sequence> seq) { waiting_.push_back(std::move(seq)); }

int Scheduler::BlocksFor(int num_tokens) const {
  return (num_tokens + config_.block_size - 1) / config_.block_size;
}

bool Scheduler::Reserve(Sequence& seq, int num_tokens) {
  const int missing = BlocksFor(num_tokens) - static_cast<int>(seq.blocks.size());
  if (missing <= 0) return true;
  auto blocks = allocator_->Allocate(missing);
  if (!blocks) return false;
  seq.blocks.insert(seq.blocks.end(), blocks->begin(), blocks->end());
  return true;
}

void Scheduler::PreemptLast(SchedulerOutput& out) {
  std::unique_ptr<Sequence> victim = std::move(running_.back());
  running_.pop_back();
  DetachCachedPrefix(*victim);
  ++victim->preemptions;
  out.preempted.push_back(victim.get());
  waiting_.push_front(std::move(victim));
}

int Scheduler::LogitsRows(const Sequence& seq, int num_tokens) {
  if (seq.needs_prompt_logprobs()) return num_tokens;
  return seq.num_computed + num_tokens == seq.num_tokens() ? 1 : 0;
}

int Scheduler::ChunkSize(const Sequence& seq, const Budget& budget, int reserved_rows) const {
  int n = std::min(seq.num_uncomputed(), budget.tokens);
  if (seq.needs_prompt_logprobs()) n = std::min(n, budget.logits_rows - reserved_rows);
  if (n > 0 && LogitsRows(seq, n) > budget.logits_rows) return 0;
  return std::max(n, 0);
}

// Schedules running_[index]'s next chunk, preempting later sequences for blocks. Returns false
// when running_[index] itself was preempted.
bool Scheduler::ScheduleRunning(size_t index, Budget& budget, SchedulerOutput& out) {
  Sequence& seq = *running_[index];
  // One logits row kept for each later running sequence: a long prompt's logprobs never take a
  // decoding sequence's row.
  const int later = static_cast<int>(running_.size() - index - 1);
  const int n = ChunkSize(seq, budget, later);
  if (n <= 0) return true;
  while (!Reserve(seq, seq.num_computed + n)) {
    const bool self = index == running_.size() - 1;
    PreemptLast(out);
    if (self) return false;
  }
  out.chunks.push_back({&seq, n});
  out.num_tokens += n;
  budget.tokens -= n;
  budget.logits_rows -= LogitsRows(seq, n);
  return true;
}

int Scheduler::AttachCachedPrefix(Sequence& seq) {
  // Prompt logprobs need logits at every prompt position, which cached positions do not have.
  if (!allocator_->caching() || !seq.blocks.empty() || seq.needs_prompt_logprobs()) return 0;
  int max_blocks = (seq.num_tokens() - 1) / config_.block_size;
  // A prompt never starts with a one-token chunk: on the GPU that token would take the decode
  // kernel, whose rounding differs from the prefill kernel's an uncached run uses.
  if (seq.num_generated() == 0 && max_blocks > 0 &&
      seq.num_tokens() - max_blocks * config_.block_size == 1) {
    --max_blocks;
  }
  const auto prefix = std::span<const int32_t>(seq.tokens)
                          .first(static_cast<size_t>(max_blocks) * config_.block_size);
  seq.blocks = allocator_->MatchPrefix(prefix, &seq.cache_chain);
  allocator_->Share(seq.blocks);
  seq.num_cached_blocks = static_cast<int>(seq.blocks.size());
  seq.num_computed = seq.num_cached_blocks * config_.block_size;
  return seq.num_computed;
}

void Scheduler::DetachCachedPrefix(Sequence& seq) {
  allocator_->Free(seq.blocks);
  seq.blocks.clear();
  seq.num_computed = 0;
  seq.num_cached_blocks = 0;
  seq.cache_chain = {};
}

void Scheduler::CacheFullBlocks(Sequence& seq) {
  if (!allocator_->caching()) return;
  const int full = seq.num_computed / config_.block_size;
  for (; seq.num_cached_blocks < full; ++seq.num_cached_blocks) {
    const size_t start = static_cast<size_t>(seq.num_cached_blocks) * config_.block_size;
    seq.cache_chain = allocator_->CacheBlock(
        seq.blocks[seq.num_cached_blocks], seq.cache_chain,
        std::span<const int32_t>(seq.tokens).subspan(start, config_.block_size));
  }
}

void Scheduler::AdmitWaiting(Budget& budget, SchedulerOutput& out) {
  while (!waiting_.empty() && budget.tokens > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence& seq = *waiting_.front();
    const int cached = AttachCachedPrefix(seq);
    const int n = ChunkSize(seq, budget, 0);
    if (n <= 0 || !Reserve(seq, seq.num_computed + n)) {  // first come, first served: no skipping
      DetachCachedPrefix(seq);
      break;
    }
    if (allocator_->caching()) {
      out.prefix_cache_queried_tokens += seq.num_tokens();
      out.prefix_cache_hit_tokens += cached;
    }
    if (seq.preemptions == 0) seq.cached_prompt_tokens = std::min(cached, seq.num_prompt_tokens);
    seq.num_cached_at_admission = cached;
    seq.admission_order = next_admission_++;
    out.chunks.push_back({&seq, n});
    out.num_tokens += n;
    budget.tokens -= n;
    budget.logits_rows -= LogitsRows(seq, n);
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  Budget budget{.tokens = config_.max_num_batched_tokens, .logits_rows = config_.max_num_seqs};
  for (size_t i = 0; i < running_.size(); ++i) {
    if (!ScheduleRunning(i, budget, out)) break;
  }
  if (out.preempted.empty()) AdmitWaiting(budget, out);
  return out;
}

void Scheduler::Commit(const SchedulerOutput& out) {
  for (const auto& chunk : out.chunks) {
    chunk.seq->num_computed += chunk.num_tokens;
    CacheFullBlocks(*chunk.seq);
  }
}

std::unique_ptr<Sequence> Scheduler::Remove(uint64_t seq_id) {
  std::unique_ptr<Sequence> seq;
  auto match = [seq_id](const std::unique_ptr<Sequence>& s) { return s->id == seq_id; };
  if (auto it = std::find_if(running_.begin(), running_.end(), match); it != running_.end()) {
    seq = std::move(*it);
    running_.erase(it);
  } else if (auto wit = std::find_if(waiting_.begin(), waiting_.end(), match);
             wit != waiting_.end()) {
    seq = std::move(*wit);
    waiting_.erase(wit);
  }
  if (seq) {
    allocator_->Free(seq->blocks);  // cached blocks keep their content until evicted
    seq->blocks.clear();
  }
  return seq;
}

Sequence* Scheduler::Find(uint64_t seq_id) {
  for (auto& s : running_) {
    if (s->id == seq_id) return s.get();
  }
  for (auto& s : waiting_) {
    if (s->id == seq_id) return s.get();
  }
  return nullptr;
}

}  // namespace gqa
