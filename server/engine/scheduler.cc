#include "engine/scheduler.h"

#include <algorithm>
#include <span>

#include "absl/strings/str_cat.h"

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

Scheduler::Scheduler(const SchedulerConfig& config, BlockAllocator* allocator, StopRules stops)
    : config_(config), allocator_(allocator), stops_(std::move(stops)) {}

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
  LeaveTables(*victim);
  DetachCachedPrefix(*victim);
  ++victim->preemptions;
  out.preempted.push_back(victim.get());
  waiting_.push_front(std::move(victim));
}

int Scheduler::LogitsRows(const Sequence& seq, int num_tokens) {
  if (seq.needs_prompt_logprobs()) return num_tokens;
  return seq.num_scheduled() + num_tokens == seq.num_tokens() ? 1 : 0;
}

ScheduledChunk Scheduler::MakeChunk(Sequence& seq, int num_tokens) const {
  const int start = seq.num_scheduled();
  const bool samples = start + num_tokens == seq.num_tokens();
  const bool decodes = IsDecodeChunk(num_tokens, start, seq.num_tokens(), seq.num_generated());
  return {&seq, num_tokens, ChunkFacts{start, samples, decodes}};
}

bool Scheduler::InFlight(const Sequence& seq) const {
  return config_.async_scheduling && seq.last_step > updated_step_;
}

bool Scheduler::ReachedLength(const Sequence& seq) const {
  if (seq.num_placeholders == 0) return false;
  return seq.num_generated() >= seq.request.stopping.max_new_tokens ||
         (stops_.max_model_len > 0 && seq.num_tokens() >= stops_.max_model_len);
}

void Scheduler::DeferPreemption(SchedulerOutput& out) {
  std::unique_ptr<Sequence> victim = std::move(running_.back());
  running_.pop_back();
  ++victim->preemptions;
  out.preempted.push_back(victim.get());
  deferred_.push_back({std::move(victim), /*preempt=*/true});
}

Scheduler::Deferred* Scheduler::FindDeferred(uint64_t seq_id) {
  for (Deferred& d : deferred_) {
    if (d.seq->id == seq_id) return &d;
  }
  return nullptr;
}

void Scheduler::DeferFinish(uint64_t seq_id, FinishReason reason, int32_t matched_stop,
                            bool sampled_last) {
  if (Deferred* d = FindDeferred(seq_id)) {  // a preemption becomes the finish
    *d = {std::move(d->seq), false, reason, matched_stop, sampled_last};
    return;
  }
  auto it = std::find_if(running_.begin(), running_.end(),
                         [seq_id](const std::unique_ptr<Sequence>& s) { return s->id == seq_id; });
  if (it == running_.end()) return;
  deferred_.push_back({std::move(*it), false, reason, matched_stop, sampled_last});
  running_.erase(it);
}

void Scheduler::SettleDeferred(UpdateResult& result) {
  std::vector<Deferred> still;
  for (Deferred& d : deferred_) {
    Sequence& seq = *d.seq;
    if (InFlight(seq)) {
      still.push_back(std::move(d));
      continue;
    }
    LeaveTables(seq);
    // Its step is updated: no placeholder is left but those of steps after its finish.
    seq.tokens.resize(seq.num_known_tokens());
    seq.num_placeholders = 0;
    if (d.preempt) {
      DetachCachedPrefix(seq);
      waiting_.push_front(std::move(d.seq));
      continue;
    }
    BlockList blocks = seq.blocks;
    allocator_->Free(seq.blocks);
    seq.blocks.clear();
    result.finished.push_back(
        {std::move(d.seq), d.reason, d.matched_stop, std::move(blocks), d.sampled_last});
  }
  deferred_ = std::move(still);
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
  if (ReachedLength(seq)) return true;  // its last token is in flight
  const int n = ChunkSize(seq, budget, later);
  if (n <= 0) return true;
  while (!Reserve(seq, seq.num_scheduled() + n)) {
    const bool self = index == running_.size() - 1;
    if (InFlight(*running_.back())) {
      // Its blocks come back once its step is updated: this sequence waits a step for them.
      DeferPreemption(out);
      return !self;
    }
    PreemptLast(out);
    if (self) return false;
  }
  out.chunks.push_back(MakeChunk(seq, n));
  out.num_tokens += n;
  budget.tokens -= n;
  budget.logits_rows -= LogitsRows(seq, n);
  return true;
}

int Scheduler::AttachCachedPrefix(Sequence& seq) {
  // Prompt logprobs need logits at every prompt position, which cached positions do not have.
  if (!allocator_->caching() || !seq.blocks.empty() || seq.needs_prompt_logprobs()) return 0;
  int max_blocks = (seq.num_tokens() - 1) / config_.block_size;
  // A prompt never starts with a one-token chunk. The rule dates from when such a token took
  // the decode kernel on the GPU (now IsDecodeChunk sends it to the prefill kernel, as an
  // uncached run's); it costs at most one block of hits.
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
  seq.num_in_flight = 0;
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
  // A deferred sequence (async: leaving once its step is updated) still holds its row of the
  // backend's block tables, which hold max_num_seqs rows: it counts until it has left.
  while (!waiting_.empty() && budget.tokens > 0 &&
         static_cast<int>(running_.size() + deferred_.size()) < config_.max_num_seqs) {
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
    out.chunks.push_back(MakeChunk(seq, n));
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
  MakePlan(out);
  return out;
}

void Scheduler::LeaveTables(Sequence& seq) {
  if (seq.blocks_in_tables >= 0) leaving_tables_.push_back(seq.id);
  seq.blocks_in_tables = -1;
}

void Scheduler::MakePlan(SchedulerOutput& out) {
  if (out.chunks.empty()) return;  // removals wait for a step the backend runs
  out.step = ++last_step_;
  out.plan.tables.removed = std::move(leaving_tables_);
  leaving_tables_.clear();
  // Async: each chunk's placeholder input (one left by the step in flight), then this step's
  // own placeholders, appended before any span into the tokens is taken.
  std::vector<int32_t> placeholder_rows(out.chunks.size(), -1);
  if (config_.async_scheduling) {
    int sample_row = 0;
    for (size_t i = 0; i < out.chunks.size(); ++i) {
      const ScheduledChunk& c = out.chunks[i];
      Sequence& s = *c.seq;
      if (s.num_placeholders > 0 && c.start() >= s.num_known_tokens()) {
        placeholder_rows[i] = s.sample_row;
      }
      s.num_in_flight += c.num_tokens;
      s.last_step = out.step;
      if (!c.samples()) continue;
      s.sample_row = sample_row++;
      s.tokens.push_back(kPlaceholderToken);
      ++s.num_placeholders;
    }
  }
  for (size_t i = 0; i < out.chunks.size(); ++i) {
    const ScheduledChunk& c = out.chunks[i];
    Sequence& s = *c.seq;
    const int known = std::max(s.blocks_in_tables, 0);
    if (s.blocks_in_tables < 0 || static_cast<int>(s.blocks.size()) > known) {
      out.plan.tables.rows.push_back(
          {s.id, known, BlockList(s.blocks.begin() + known, s.blocks.end())});
      s.blocks_in_tables = static_cast<int>(s.blocks.size());
    }
    ScheduledSeq seq;
    seq.seq_id = s.id;
    seq.chunk = std::span<const int32_t>(s.tokens).subspan(c.start(), c.num_tokens);
    seq.start_pos = c.start();
    seq.samples = c.samples();
    seq.is_decode = c.decodes();
    seq.placeholder_sample_row = placeholder_rows[i];
    const SamplingParams& p = s.request.sampling;
    // The tokens generated before the one sampled (not this step's own placeholder).
    const int own_placeholder = config_.async_scheduling && c.samples() ? 1 : 0;
    seq.sampling = {p.temperature, p.top_p, p.top_k, p.seed,
                    static_cast<uint64_t>(s.num_generated() - own_placeholder)};
    seq.top_logprobs = s.request.logprobs.top_logprobs;
    if (s.needs_prompt_logprobs()) {
      seq.prompt_top_logprobs = s.request.logprobs.prompt_top_logprobs;
      seq.prompt_logprobs_from = static_cast<int32_t>(s.prompt_logprobs.size());
      seq.prompt = std::span<const int32_t>(s.tokens).first(s.num_prompt_tokens);
    }
    out.plan.seqs.push_back(seq);
  }
}

void Scheduler::Commit(const SchedulerOutput& out) {
  for (const auto& chunk : out.chunks) {
    chunk.seq->num_computed += chunk.num_tokens;
    if (config_.async_scheduling) chunk.seq->num_in_flight -= chunk.num_tokens;
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
  } else if (auto dit = std::find_if(deferred_.begin(), deferred_.end(),
                                     [&](const Deferred& d) { return match(d.seq); });
             dit != deferred_.end()) {
    seq = std::move(dit->seq);
    deferred_.erase(dit);
  }
  if (seq) {
    LeaveTables(*seq);
    allocator_->Free(seq->blocks);  // cached blocks keep their content until evicted
    seq->blocks.clear();
  }
  return seq;
}

std::unique_ptr<Sequence> Scheduler::Cancel(uint64_t seq_id) {
  if (Deferred* d = FindDeferred(seq_id)) {  // in flight, leaving: a preemption becomes this
    if (d->preempt) *d = {std::move(d->seq), false, FinishReason::kCancelled, 0, false};
    return nullptr;
  }
  Sequence* seq = Find(seq_id);
  if (seq == nullptr || !InFlight(*seq)) return Remove(seq_id);
  DeferFinish(seq_id, FinishReason::kCancelled, 0, /*sampled_last=*/false);
  return nullptr;
}

namespace {

bool Contains(const std::vector<int32_t>& ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

TokenLogprob ToTokenLogprob(int32_t token, const LogprobsResult& result) {
  TokenLogprob out;
  out.token = token;
  out.logprob = result.token_logprob;
  for (int i = 0; i < result.top_k; ++i) {
    out.top.emplace_back(result.top_ids[i], result.top_logprobs[i]);
  }
  return out;
}

}  // namespace

std::optional<FinishReason> Scheduler::CheckStops(const Sequence& s, int32_t* matched_stop) const {
  const int32_t token = s.last_known_token();
  const StoppingParams& stop = s.request.stopping;
  if (!stop.ignore_eos && Contains(stops_.eos_token_ids, token)) return FinishReason::kEos;
  if (Contains(stop.stop_token_ids, token)) {
    *matched_stop = token;
    return FinishReason::kStopToken;
  }
  if (s.num_known_generated() >= stop.max_new_tokens ||
      (stops_.max_model_len > 0 && s.num_known_tokens() >= stops_.max_model_len)) {
    return FinishReason::kLength;
  }
  return std::nullopt;
}

std::optional<FinishReason> Scheduler::AcceptToken(Sequence& s, int32_t token,
                                                   int32_t* matched_stop) {
  if (s.num_placeholders > 0) {  // async: the oldest placeholder was this token
    s.tokens[s.num_known_tokens()] = token;
    --s.num_placeholders;
  } else {
    s.tokens.push_back(token);
  }
  std::optional<int> stop_string;
  if (s.text) s.pending_text = s.text->Add(token, &stop_string);
  if (stop_string) {
    *matched_stop = *stop_string;
    return FinishReason::kStopString;
  }
  const std::optional<FinishReason> finish = CheckStops(s, matched_stop);
  if (!finish) return std::nullopt;
  if (s.text) s.pending_text += s.text->Flush(&stop_string);
  if (stop_string) {
    *matched_stop = *stop_string;
    return FinishReason::kStopString;
  }
  return finish;
}

absl::StatusOr<UpdateResult> Scheduler::Update(const SchedulerOutput& out, const StepOutput& step) {
  const std::vector<ScheduledSeq>& plan = out.plan.seqs;
  const size_t samples = static_cast<size_t>(
      std::count_if(plan.begin(), plan.end(), [](const ScheduledSeq& s) { return s.samples; }));
  const bool logprobs = !step.sampled_logprobs.empty() || !step.prompt_logprobs.empty();
  if (plan.size() != out.chunks.size() || step.sampled.size() != samples ||
      (logprobs &&
       (step.sampled_logprobs.size() != samples || step.prompt_logprobs.size() != plan.size()))) {
    return absl::InternalError(absl::StrCat("step output: ", step.sampled.size(), " tokens for ",
                                            samples, " sampling sequences"));
  }
  Commit(out);
  updated_step_ = std::max(updated_step_, out.step);
  UpdateResult result;
  std::vector<uint64_t> finished;
  size_t row = 0;
  for (size_t i = 0; i < plan.size(); ++i) {
    Sequence& s = *out.chunks[i].seq;
    const Deferred* deferred = FindDeferred(s.id);
    if (deferred != nullptr && !deferred->preempt) {  // finished or cancelled: results discarded
      row += plan[i].samples ? 1 : 0;
      continue;
    }
    if (logprobs) {
      for (const LogprobsResult& lp : step.prompt_logprobs[i]) {
        s.prompt_logprobs.push_back(ToTokenLogprob(s.tokens[s.prompt_logprobs.size()], lp));
      }
    }
    if (!plan[i].samples) continue;
    const int32_t token = step.sampled[row];
    if (logprobs && step.sampled_logprobs[row]) {
      s.pending_logprobs.push_back(ToTokenLogprob(token, *step.sampled_logprobs[row]));
    }
    ++row;
    int32_t matched = 0;
    if (const std::optional<FinishReason> finish = AcceptToken(s, token, &matched)) {
      if (deferred != nullptr || InFlight(s)) {  // in a later step: its blocks wait for it
        DeferFinish(s.id, *finish, matched, /*sampled_last=*/true);
        continue;
      }
      result.finished.push_back({nullptr, *finish, matched, s.blocks});
      finished.push_back(s.id);
    } else {
      result.continuing.push_back(&s);
    }
  }
  for (size_t f = 0; f < finished.size(); ++f) result.finished[f].seq = Remove(finished[f]);
  SettleDeferred(result);
  return result;
}

Sequence* Scheduler::Find(uint64_t seq_id) {
  for (auto& s : running_) {
    if (s->id == seq_id) return s.get();
  }
  for (auto& s : waiting_) {
    if (s->id == seq_id) return s.get();
  }
  if (Deferred* d = FindDeferred(seq_id)) return d->seq.get();
  return nullptr;
}

}  // namespace gqa
