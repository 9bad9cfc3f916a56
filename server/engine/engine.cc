#include "engine/engine.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace gqa {
namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStopToken:
      return "stop_token";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Engine::Engine(const EngineConfig& config, std::unique_ptr<Backend> backend,
               EngineObserver* observer)
    : config_(config),
      backend_(std::move(backend)),
      observer_(observer),
      allocator_(backend_->kv_spec().num_blocks, {.enabled = config.scheduler.enable_prefix_caching,
                                                  .block_size = config.scheduler.block_size,
                                                  .salt = config.scheduler.prefix_cache_salt}),
      scheduler_(config.scheduler, &allocator_,
                 StopRules{config.eos_token_ids, config.limits.max_model_len}) {
  if (config_.step_timeout.count() > 0) {
    watchdog_ = std::make_unique<StepWatchdog>(
        config_.step_timeout, [this](const std::string& what, std::chrono::milliseconds limit) {
          spdlog::critical("the backend's {} has not returned in {} s: it is hung", what,
                           limit.count() / 1000.0);
          if (config_.on_backend_broken) config_.on_backend_broken();
        });
  }
}

Engine::~Engine() { StopThread(); }

void Engine::Start() {
  thread_ = std::thread([this] { Loop(); });
}

absl::StatusOr<uint64_t> Engine::Submit(Request request) {
  if (absl::Status st = ValidateRequest(request, config_.limits); !st.ok()) return st;
  const int64_t needed_tokens =
      static_cast<int64_t>(request.prompt.size()) + request.stopping.max_new_tokens;
  const int64_t needed_blocks = scheduler_.BlocksFor(static_cast<int>(needed_tokens));
  if (needed_blocks > allocator_.num_total()) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: the prompt plus max_new_tokens (", needed_tokens,
                     " tokens) needs ", needed_blocks, " KV blocks but the cache has only ",
                     allocator_.num_total()));
  }
  if (!request.stopping.stop_strings.empty() && config_.tokenizer == nullptr) {
    return absl::InvalidArgumentError("stopping.stop: stop strings need a tokenizer");
  }
  std::lock_guard lock(mu_);
  if (!accepting_) return absl::UnavailableError("the server is draining; retry elsewhere");
  const int64_t waiting = static_cast<int64_t>(new_requests_.size()) + scheduler_waiting_.load();
  if (config_.max_waiting_requests > 0 && waiting >= config_.max_waiting_requests) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server is overloaded: ", waiting, " requests are waiting (limit ",
                     config_.max_waiting_requests, ", --max_waiting_requests); retry later"));
  }
  const uint64_t id = next_id_++;
  auto seq = std::make_unique<Sequence>(std::move(request), id);
  if (seq->request.sink) delivery_.Open(id, std::exchange(seq->request.sink, nullptr));
  if (config_.tokenizer) {
    seq->text = std::make_unique<TextStream>(config_.tokenizer,
                                             std::move(seq->request.stopping.stop_strings));
  }
  new_requests_.push_back(std::move(seq));
  ++in_flight_;
  wake_.notify_one();
  return id;
}

void Engine::Cancel(uint64_t id) {
  std::lock_guard lock(mu_);
  cancellations_.push_back(id);
  wake_.notify_one();
}

void Engine::Drain(std::chrono::milliseconds grace) {
  std::unique_lock lock(mu_);
  accepting_ = false;
  if (!idle_.wait_for(lock, grace, [this] { return in_flight_ == 0; })) {
    spdlog::warn("drain: {} requests still running after {} ms; cancelling them", in_flight_,
                 grace.count());
  }
  lock.unlock();
  StopThread();
}

void Engine::StopThread() {
  {
    std::lock_guard lock(mu_);
    accepting_ = false;
    stop_ = true;
  }
  wake_.notify_one();
  if (thread_.joinable()) thread_.join();
  delivery_.Stop();
}

bool Engine::TakeInbox() {
  std::vector<std::unique_ptr<Sequence>> arrivals;
  std::vector<uint64_t> cancels;
  bool stopping;
  {
    std::unique_lock lock(mu_);
    wake_.wait(lock, [this] {
      return stop_ || !new_requests_.empty() || !cancellations_.empty() || !scheduler_.idle();
    });
    arrivals.swap(new_requests_);
    cancels.swap(cancellations_);
    stopping = stop_;
  }
  for (auto& seq : arrivals) scheduler_.Add(std::move(seq));
  for (uint64_t id : cancels) Finish(id, FinishReason::kCancelled);
  if (stopping) {
    std::vector<uint64_t> remaining;
    for (const auto& s : scheduler_.running()) remaining.push_back(s->id);
    for (const auto& s : scheduler_.waiting()) remaining.push_back(s->id);
    for (uint64_t id : remaining) Finish(id, FinishReason::kCancelled);
  }
  UpdateGauges();
  return !stopping;
}

void Engine::Loop() {
  bool running = true;
  while (running) {
    running = TakeInbox();
    if (running && !scheduler_.idle()) {
      if (config_.scheduler.async_scheduling) {
        AsyncStep();
      } else {
        Step();
      }
    }
    DeliverEvents();
  }
  // Stopping (every sequence cancelled): the step in flight still ends its sequences' flight.
  if (in_flight_step_) {
    SubmittedStep step = std::move(*in_flight_step_);
    in_flight_step_.reset();
    CollectAndUpdate(step, nullptr);
    DeliverEvents();
  }
}

void Engine::Step() {
  std::optional<SubmittedStep> step = ScheduleAndSubmit();
  if (step) CollectAndUpdate(*step, nullptr);
}

void Engine::AsyncStep() {
  std::optional<SubmittedStep> next = ScheduleAndSubmit();
  if (in_flight_step_) {
    SubmittedStep step = std::move(*in_flight_step_);
    in_flight_step_.reset();
    CollectAndUpdate(step, &next);
  }
  in_flight_step_ = std::move(next);
}

std::optional<Engine::SubmittedStep> Engine::ScheduleAndSubmit() {
  SubmittedStep step;
  step.start = Clock::now();
  step.out = scheduler_.Schedule();
  if (observer_) observer_->OnPreemptions(step.out.preempted.size());
  // The step's blocks are allocated now: a client that reads this step's token must already see
  // them in the gauges.
  UpdateGauges();
  if (step.out.empty()) return std::nullopt;
  for (const ScheduledChunk& c : step.out.chunks) {
    Sequence& s = *c.seq;
    if (s.first_scheduled) continue;
    s.first_scheduled = step.start;
    if (observer_) {
      observer_->OnRequestScheduled(Seconds(step.start - s.request.arrival), s.num_prompt_tokens);
    }
  }
  step.stats = DescribeStep(step.out, config_.cost);
  const int interval = config_.step_profile_interval;
  // At random, one step in `interval` on average: a fixed stride could alias with a periodic
  // load (closed loops of fixed lengths) and always profile the same kind of step.
  step.profiled =
      interval > 0 && std::uniform_int_distribution<int>(0, interval - 1)(profile_rng_) == 0;
  if (step.profiled) backend_->ProfileNextStep();
  step.submitted = SubmitWatched(step.out.plan);
  return step;
}

absl::Status Engine::SubmitWatched(const StepPlan& plan) {
  if (watchdog_) watchdog_->Begin("SubmitStep");
  absl::Status submitted = backend_->SubmitStep(plan);
  if (watchdog_) watchdog_->End();
  return submitted;
}

absl::StatusOr<StepOutput> Engine::CollectWatched() {
  if (watchdog_) watchdog_->Begin("CollectStep");
  absl::StatusOr<StepOutput> collected = backend_->CollectStep();
  if (watchdog_) watchdog_->End();
  return collected;
}

void Engine::CollectAndUpdate(SubmittedStep& step, std::optional<SubmittedStep>* next) {
  absl::StatusOr<StepOutput> result =
      step.submitted.ok() ? CollectWatched() : absl::StatusOr<StepOutput>(step.submitted);
  // The step's own time: from its schedule or, when it was queued behind the previous step on a
  // device that runs steps while the host works, from the end of that step (its collection),
  // to its tokens emitted. It holds the step's device time and no other step's, but for the
  // host's wake-up: a queued step starts on the device when the one before it ends, and the host
  // learns of that end (its collection) a few microseconds later.
  const Clock::time_point previous_collected = std::exchange(last_collect_end_, Clock::now());
  const Clock::time_point begin =
      backend_->SubmitReturnsEarly() ? std::max(step.start, previous_collected) : step.start;
  if (result.ok()) {
    if (step.profiled) step.stats.device = backend_->CollectedStepTiming();
    absl::StatusOr<UpdateResult> update = scheduler_.Update(step.out, *result);
    if (update.ok()) {
      DeliverEventsOf(*update, step.stats, begin);
      return;
    }
    result = update.status();
  }
  // The step behind it shares its sequences: it is collected (its results dropped) and fails too.
  const SchedulerOutput* behind = nullptr;
  if (next != nullptr && next->has_value()) {
    if ((*next)->submitted.ok()) (void)CollectWatched();
    behind = &(*next)->out;
  }
  FailStep(step.out, result.status(), behind);
  if (next != nullptr) next->reset();
}

void Engine::DeliverEventsOf(UpdateResult& update, StepStats& stats, Clock::time_point begin) {
  for (Sequence* s : update.continuing) {
    Emit(*s, {s->last_known_token()}, std::move(s->pending_text), std::nullopt);
  }
  DeliverEvents();
  stats.wall_seconds = Seconds(Clock::now() - begin);
  if (observer_) observer_->OnStep(stats);
  // The finished sequences' blocks are free already: what a client sees after its final message
  // (metrics, capacity) counts them as gone.
  UpdateGauges();
  for (FinishedSeq& f : update.finished) {
    Sequence& seq = *f.seq;
    std::vector<int32_t> last;
    if (f.sampled_last) last.push_back(seq.tokens.back());
    Emit(seq, std::move(last), std::move(seq.pending_text), f.reason, f.matched_stop);
    std::lock_guard lock(mu_);
    if (--in_flight_ == 0) idle_.notify_all();
  }
}

void Engine::Emit(Sequence& s, std::vector<int32_t> tokens, std::string text,
                  std::optional<FinishReason> finish, int32_t matched_stop) {
  const Clock::time_point now = Clock::now();
  if (!tokens.empty()) {
    std::optional<double> since_last_token;
    std::optional<double> time_to_first_token;
    if (s.last_token) since_last_token = Seconds(now - *s.last_token);
    if (!s.first_token) {
      s.first_token = now;
      time_to_first_token = Seconds(now - s.request.arrival);
    }
    s.last_token = now;
    if (observer_) observer_->OnTokensEmitted(tokens.size(), since_last_token, time_to_first_token);
  }
  TokenEvent event;
  event.new_tokens = std::move(tokens);
  event.text = std::move(text);
  event.finish = finish;
  event.matched_stop = matched_stop;
  event.logprobs = std::move(s.pending_logprobs);
  s.pending_logprobs.clear();
  if (!event.new_tokens.empty() && s.request.logprobs.prompt_top_logprobs >= 0 &&
      !s.prompt_logprobs_sent) {
    event.prompt_logprobs = std::move(s.prompt_logprobs);
    s.prompt_logprobs_sent = true;
  }
  if (finish) {
    event.prompt_tokens = s.num_prompt_tokens;
    event.completion_tokens = s.num_generated();
    event.preemptions = s.preemptions;
    event.cached_prompt_tokens = s.cached_prompt_tokens;
    const auto arrival = s.request.arrival;
    event.queue_seconds = Seconds(s.first_scheduled.value_or(now) - arrival);
    event.time_to_first_token_seconds = s.first_token ? Seconds(*s.first_token - arrival) : 0.0;
    event.total_seconds = Seconds(now - arrival);
    if (observer_) observer_->OnRequestFinished(*finish, event.total_seconds);
  }
  outbox_.emplace_back(s.id, std::move(event));
}

void Engine::Finish(uint64_t seq_id, FinishReason reason, int32_t matched_stop) {
  // In a step in flight (async): the Update that ends its flight finishes it.
  std::unique_ptr<Sequence> seq = scheduler_.Cancel(seq_id);
  if (!seq) return;
  UpdateGauges();
  Emit(*seq, {}, "", reason, matched_stop);
  std::lock_guard lock(mu_);
  if (--in_flight_ == 0) idle_.notify_all();
}

void Engine::FailStep(const SchedulerOutput& out, const absl::Status& status,
                      const SchedulerOutput* next) {
  spdlog::error("engine step failed: {}", status.ToString());
  // Nothing is in flight any more (the caller collected the step behind): blocks may be freed.
  scheduler_.AbandonStepsInFlight();
  std::vector<uint64_t> ids;
  for (const SchedulerOutput* o : {&out, next}) {
    if (o == nullptr) continue;
    for (const ScheduledChunk& c : o->chunks) ids.push_back(c.seq->id);
  }
  // Free every failed sequence's blocks before telling any client, as a finished step does.
  std::vector<std::unique_ptr<Sequence>> failed;
  for (uint64_t id : ids) {
    if (auto seq = scheduler_.Remove(id)) failed.push_back(std::move(seq));
  }
  UpdateGauges();
  for (auto& seq : failed) {
    TokenEvent event;
    event.finish = FinishReason::kCancelled;
    event.error = status.ok() ? absl::InternalError("engine step failed") : status;
    outbox_.emplace_back(seq->id, std::move(event));
    std::lock_guard lock(mu_);
    if (--in_flight_ == 0) idle_.notify_all();
  }
  DeliverEvents();
  if (backend_->broken() && config_.on_backend_broken) {
    // The process is about to exit: give the failed requests' errors a moment to go out.
    delivery_.WaitUntilDelivered(std::chrono::seconds(1));
    config_.on_backend_broken();
  }
}

void Engine::UpdateGauges() {
  scheduler_waiting_.store(scheduler_.num_waiting());
  if (!observer_) return;
  const double total = allocator_.num_total();
  observer_->OnOccupancy({.running = scheduler_.num_running(),
                          .waiting = scheduler_.num_waiting(),
                          .kv_usage_ratio = total > 0 ? 1.0 - allocator_.num_free() / total : 0.0,
                          .prefix_cached_blocks = allocator_.num_cached()});
}

}  // namespace gqa
