#include "engine/step_watchdog.h"

#include <utility>

namespace gqa {

StepWatchdog::StepWatchdog(
    std::chrono::milliseconds limit,
    std::function<void(const std::string&, std::chrono::milliseconds)> on_hung)
    : limit_(limit), on_hung_(std::move(on_hung)), thread_([this] { Loop(); }) {}

StepWatchdog::~StepWatchdog() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

void StepWatchdog::Begin(const char* what) {
  {
    std::lock_guard lock(mu_);
    call_ = what;
    call_start_ = std::chrono::steady_clock::now();
    ++calls_;
  }
  changed_.notify_all();
}

void StepWatchdog::End() {
  {
    std::lock_guard lock(mu_);
    call_ = nullptr;
  }
  changed_.notify_all();
}

void StepWatchdog::Loop() {
  std::unique_lock lock(mu_);
  while (!stopping_ && !fired_) {
    if (call_ == nullptr) {
      changed_.wait(lock, [&] { return stopping_ || call_ != nullptr; });
      continue;
    }
    const uint64_t watched = calls_;
    const bool ended = changed_.wait_until(lock, call_start_ + limit_, [&] {
      return stopping_ || call_ == nullptr || calls_ != watched;
    });
    if (ended) continue;
    fired_ = true;
    const std::string what = call_;
    lock.unlock();
    if (on_hung_) on_hung_(what, limit_);
    return;
  }
}

}  // namespace gqa
