// One thread per tensor-parallel rank (docs/tensor-parallel.md), and the one way the runtime
// drives them: the same task on every rank at once, waited for, with the first failure
// reported and an abort hook run as soon as a rank fails (a rank blocked in a collective on the
// failed one is released by it, instead of hanging the step). Host logic only: the CUDA
// runtime's TensorParallelBackend makes each thread's GPU current in `on_start`.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"

namespace gqa {

class RankThreads {
 public:
  // Starts `n` threads; thread r runs on_start(r) before any task.
  RankThreads(int n, std::function<void(int rank)> on_start);
  // Runs the tasks already given, then joins.
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }

  // Runs task(r) on thread r for every rank at once and waits for all. When a rank fails,
  // on_failure() runs once, on the calling thread, as soon as that is seen (possibly while other
  // ranks still run: it must make them return); then the status of the rank that failed first
  // (the cause: ranks released by the hook fail after it) is returned, its message prefixed
  // "rank r of n: ". OK when every rank returned OK. Calls from several threads run one after
  // another, so every rank sees the same tasks in the same order (its collectives match).
  absl::Status OnEveryRank(const std::function<absl::Status(int rank)>& task,
                           const std::function<void()>& on_failure);

 private:
  // One thread and its queue of tasks, run in order.
  class Worker {
   public:
    Worker(int rank, const std::function<void(int)>& on_start);
    ~Worker();
    void Post(std::function<void()> task);

   private:
    void Loop(int rank, std::function<void(int)> on_start);
    std::mutex mu_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    std::thread thread_;  // last: started once the members above exist
  };
  std::vector<std::unique_ptr<Worker>> workers_;
  std::mutex one_call_;  // held through each OnEveryRank
};

}  // namespace gqa
