#include "engine/scheduler.h"

#include <algorithm>

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
  allocator_->Free(victim->blocks);
  victim->blocks.clear();
  victim->num_computed = 0;
  ++victim->preemptions;
  out.preempted.push_back(victim.get());
  waiting_.push_front(std::move(victim));
}

// Schedules running_[index]'s next chunk, preempting later sequences for blocks. Returns false
// when running_[index] itself was preempted.
bool Scheduler::ScheduleRunning(size_t index, int& budget, SchedulerOutput& out) {
  Sequence& seq = *running_[index];
  const int n = std::min(seq.num_uncomputed(), budget);
  if (n <= 0) return true;
  while (!Reserve(seq, seq.num_computed + n)) {
    const bool self = index == running_.size() - 1;
    PreemptLast(out);
    if (self) return false;
  }
  out.chunks.push_back({&seq, n});
  out.num_tokens += n;
  budget -= n;
  return true;
}

void Scheduler::AdmitWaiting(int& budget, SchedulerOutput& out) {
  while (!waiting_.empty() && budget > 0 &&
         static_cast<int>(running_.size()) < config_.max_num_seqs) {
    Sequence& seq = *waiting_.front();
    const int n = std::min(seq.num_uncomputed(), budget);
    if (!Reserve(seq, seq.num_computed + n)) break;  // first come, first served: no skipping
    seq.admission_order = next_admission_++;
    out.chunks.push_back({&seq, n});
    out.num_tokens += n;
    budget -= n;
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
}

SchedulerOutput Scheduler::Schedule() {
  SchedulerOutput out;
  int budget = config_.max_num_batched_tokens;
  for (size_t i = 0; i < running_.size(); ++i) {
    if (!ScheduleRunning(i, budget, out)) break;
  }
  if (out.preempted.empty()) AdmitWaiting(budget, out);
  return out;
}

void Scheduler::Commit(const SchedulerOutput& out) {
  for (const auto& chunk : out.chunks) chunk.seq->num_computed += chunk.num_tokens;
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
    allocator_->Free(seq->blocks);
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
