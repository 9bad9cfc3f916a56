#include "loadgen/monitor.h"

#include <unistd.h>

#include <iostream>

#include "absl/strings/str_format.h"

namespace gqa::loadgen {
namespace {

constexpr auto kPollPeriod = std::chrono::milliseconds(250);

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

}  // namespace

Monitor::Monitor(std::string what, const Progress& progress, std::function<void()> poll)
    : what_(std::move(what)),
      progress_(progress),
      poll_(std::move(poll)),
      tty_(isatty(STDERR_FILENO) == 1),
      start_(Clock::now()),
      thread_([this] { Loop(); }) {}

Monitor::~Monitor() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void Monitor::Loop() {
  const auto print_period = tty_ ? std::chrono::seconds(1) : std::chrono::seconds(5);
  Clock::time_point last_print = start_;
  std::unique_lock lock(mu_);
  while (!cv_.wait_for(lock, kPollPeriod, [&] { return stop_; })) {
    lock.unlock();
    if (poll_) poll_();
    const Clock::time_point now = Clock::now();
    if (now - last_print >= print_period) {
      Print(Seconds(now - last_print));
      last_print = now;
    }
    lock.lock();
  }
  Print(Seconds(Clock::now() - last_print));
  if (tty_) std::cerr << "\n";
}

void Monitor::Print(double window_s) {
  const int64_t finished = progress_.finished.load();
  const int64_t tokens = progress_.tokens.load();
  const double req_s = window_s > 0 ? static_cast<double>(finished - last_finished_) / window_s : 0;
  const double tok_s = window_s > 0 ? static_cast<double>(tokens - last_tokens_) / window_s : 0;
  last_finished_ = finished;
  last_tokens_ = tokens;
  const std::string line =
      absl::StrFormat("%s: %d/%d done, %d errors, %.1f s, %.2f req/s, %.1f tok/s", what_, finished,
                      progress_.total.load(), progress_.failed.load(),
                      Seconds(Clock::now() - start_), req_s, tok_s);
  if (tty_) {
    std::cerr << "\r" << line << "\x1b[K" << std::flush;
  } else {
    std::cerr << line << "\n" << std::flush;
  }
}

}  // namespace gqa::loadgen
