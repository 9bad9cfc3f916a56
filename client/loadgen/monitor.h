// While a run goes on: its progress line on stderr, and a periodic task (the /metrics polls).
#pragma once

#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "loadgen/runner.h"

namespace gqa::loadgen {

class Monitor {
 public:
  // Prints the progress of `progress` about once a second, overwritten with \r when stderr is a
  // terminal, else as a new line about every 5 s; runs `poll` (when set) about every 0.25 s.
  Monitor(std::string what, const Progress& progress, std::function<void()> poll);
  // Stops, printing the final progress line.
  ~Monitor();

  Monitor(const Monitor&) = delete;
  Monitor& operator=(const Monitor&) = delete;

 private:
  void Loop();
  void Print(double window_s);

  const std::string what_;
  const Progress& progress_;
  const std::function<void()> poll_;
  const bool tty_;
  const Clock::time_point start_;
  int64_t last_finished_ = 0;
  int64_t last_tokens_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace gqa::loadgen
