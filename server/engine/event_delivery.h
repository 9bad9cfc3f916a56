// The engine's event delivery: runs the requests' sinks on a thread of its own, so that the
// engine thread never waits for a front end (serializing a message, starting a gRPC write, waking
// an HTTP worker).
//
// Each request has a mailbox holding its sink and at most one undelivered event; an event posted
// while the previous one is still undelivered is merged into it (tokens, text and logprobs
// appended; the finish, usage, timing and error of the later one). So:
// - order: one thread calls the sinks and a mailbox is queued at most once, so a request's sink
//   is never called twice at once and sees its events in the engine's order, the final one last;
// - memory: one mailbox per open request, each at most the request's own tokens (the bound a
//   gRPC stream's pending message already had), however far delivery falls behind;
// - the engine: Post takes one lock per step and never waits for a sink. A sink that blocks
//   delays the delivery of other requests' events (merged meanwhile), never the engine's steps.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/request.h"

namespace gqa {

// Appends `later` to `into`, as if one event had carried both: tokens, text and logprobs
// concatenated; prompt logprobs kept from whichever has them; the finish, usage, timing and
// error of `later` when it is final.
void MergeTokenEvent(TokenEvent& into, TokenEvent later);

// True for the last event of a request: a finish or an error.
inline bool IsFinalEvent(const TokenEvent& event) {
  return event.finish.has_value() || !event.error.ok();
}

class EventDelivery {
 public:
  using Outgoing = std::pair<uint64_t, TokenEvent>;  // (engine id, event)

  EventDelivery();  // starts the delivery thread
  ~EventDelivery();
  EventDelivery(const EventDelivery&) = delete;
  EventDelivery& operator=(const EventDelivery&) = delete;

  // Any thread: the sink of request `id`, before the request's first event is posted. The
  // mailbox lives until its final event was delivered.
  void Open(uint64_t id, EventSink sink);
  // Engine thread: queues `events` (in order) and clears the vector (its capacity is kept).
  // Events of requests without a mailbox (no sink) are dropped.
  void Post(std::vector<Outgoing>& events);
  // Waits until every posted event was delivered, at most `timeout`; false if some were not.
  bool WaitUntilDelivered(std::chrono::milliseconds timeout);
  // Delivers every posted event, then stops the thread. Idempotent; nothing may be posted after.
  void Stop();

  int open_mailboxes();      // requests opened whose final event is not yet delivered
  uint64_t merged_events();  // events merged into an undelivered one so far

 private:
  struct Mailbox {
    EventSink sink;
    std::optional<TokenEvent> pending;
    bool queued = false;  // its id is in ready_
  };
  // One sink call of a round: the sink is borrowed from its mailbox, or owned once the mailbox
  // was closed by its final event.
  struct Delivery {
    const EventSink* sink;
    EventSink owned;
    TokenEvent event;
  };

  void Run();
  // With mu_ held: takes every ready mailbox's event, closing the mailboxes of final events.
  void TakeReady(std::vector<Delivery>* round);

  std::mutex mu_;
  std::condition_variable work_;                     // ready_ got an entry, or stopping
  std::condition_variable delivered_;                // a round ended with nothing ready
  std::unordered_map<uint64_t, Mailbox> mailboxes_;  // guarded by mu_
  std::vector<uint64_t> ready_;                      // guarded by mu_: ids, in posting order
  bool delivering_ = false;                          // guarded by mu_: a round is running
  bool stopping_ = false;                            // guarded by mu_
  uint64_t merged_ = 0;                              // guarded by mu_
  std::thread thread_;
};

}  // namespace gqa
