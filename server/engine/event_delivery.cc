#include "engine/event_delivery.h"

#include <iterator>

namespace gqa {
namespace {

template <typename T>
void Append(std::vector<T>& into, std::vector<T>& later) {
  if (into.empty()) {
    into = std::move(later);
    return;
  }
  into.insert(into.end(), std::make_move_iterator(later.begin()),
              std::make_move_iterator(later.end()));
}

}  // namespace

void MergeTokenEvent(TokenEvent& into, TokenEvent later) {
  Append(into.new_tokens, later.new_tokens);
  into.text.append(later.text);
  Append(into.logprobs, later.logprobs);
  if (!later.prompt_logprobs.empty()) into.prompt_logprobs = std::move(later.prompt_logprobs);
  if (!IsFinalEvent(later)) return;
  into.finish = later.finish;
  into.matched_stop = later.matched_stop;
  into.prompt_tokens = later.prompt_tokens;
  into.completion_tokens = later.completion_tokens;
  into.preemptions = later.preemptions;
  into.cached_prompt_tokens = later.cached_prompt_tokens;
  into.queue_seconds = later.queue_seconds;
  into.time_to_first_token_seconds = later.time_to_first_token_seconds;
  into.total_seconds = later.total_seconds;
  into.error = std::move(later.error);
}

EventDelivery::EventDelivery() : thread_([this] { Run(); }) {}

EventDelivery::~EventDelivery() { Stop(); }

void EventDelivery::Open(uint64_t id, EventSink sink) {
  std::lock_guard lock(mu_);
  mailboxes_[id].sink = std::move(sink);
}

void EventDelivery::Post(std::vector<Outgoing>& events) {
  if (events.empty()) return;
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    for (auto& [id, event] : events) {
      auto it = mailboxes_.find(id);
      if (it == mailboxes_.end()) continue;
      Mailbox& box = it->second;
      if (box.pending) {
        MergeTokenEvent(*box.pending, std::move(event));
        ++merged_;
      } else {
        box.pending = std::move(event);
      }
      if (!box.queued) {
        box.queued = true;
        wake |= ready_.empty();
        ready_.push_back(id);
      }
    }
  }
  events.clear();
  if (wake) work_.notify_one();
}

bool EventDelivery::WaitUntilDelivered(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return delivered_.wait_for(lock, timeout, [this] { return ready_.empty() && !delivering_; });
}

void EventDelivery::Stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  work_.notify_one();
  if (thread_.joinable()) thread_.join();
}

int EventDelivery::open_mailboxes() {
  std::lock_guard lock(mu_);
  return static_cast<int>(mailboxes_.size());
}

uint64_t EventDelivery::merged_events() {
  std::lock_guard lock(mu_);
  return merged_;
}

void EventDelivery::TakeReady(std::vector<Delivery>* round) {
  for (uint64_t id : ready_) {
    auto it = mailboxes_.find(id);
    Mailbox& box = it->second;
    TokenEvent event = std::move(*box.pending);
    box.pending.reset();
    box.queued = false;
    if (IsFinalEvent(event)) {
      // Nothing follows a final event: the sink leaves with it and the mailbox closes.
      round->push_back({nullptr, std::move(box.sink), std::move(event)});
      mailboxes_.erase(it);
    } else {
      // Only this thread erases mailboxes, and unordered_map nodes stay put when others are
      // added: the sink may be called through a pointer after unlocking.
      round->push_back({&box.sink, nullptr, std::move(event)});
    }
  }
  ready_.clear();
}

void EventDelivery::Run() {
  std::vector<Delivery> round;
  std::unique_lock lock(mu_);
  while (true) {
    work_.wait(lock, [this] { return !ready_.empty() || stopping_; });
    if (ready_.empty()) break;  // stopping, and everything posted was delivered
    TakeReady(&round);
    delivering_ = true;
    lock.unlock();
    for (Delivery& d : round) {
      const EventSink& sink = d.sink ? *d.sink : d.owned;
      if (sink) sink(std::move(d.event));
    }
    round.clear();  // the closed mailboxes' sinks are released here, outside the lock
    lock.lock();
    delivering_ = false;
    if (ready_.empty()) delivered_.notify_all();
  }
  delivered_.notify_all();
}

}  // namespace gqa
