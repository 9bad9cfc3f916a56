// One thread per tensor-parallel rank (docs/tensor-parallel.md), and the one way the runtime
// drives them: the same task on every rank at once, waited for. A failure that leaves the ranks
// out of step runs an abort hook (a rank blocked in a collective on the failed one is released
// by it, instead of hanging the step); a failure every rank returned alike does not. Host logic
// only: the CUDA runtime's TensorParallelBackend makes each thread's GPU current in `on_start`.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
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
  static constexpr std::chrono::milliseconds kDefaultFailureGrace{2000};
  static constexpr std::chrono::milliseconds kNoDeadline{0};
  // Starts `n` threads; thread r runs on_start(r) before any task. A rank whose on_start failed
  // runs no task: each returns that failure instead. progress(r), when given, is read on rank r's
  // thread after each of its tasks: how far the rank has gone in what must stay in step across
  // ranks (the CUDA runtime: the collectives it issued); ranks whose progress differs are never
  // alike. failure_grace: how long, after a rank fails, the others have to end alike
  // (OnEveryRank).
  RankThreads(int n, std::function<absl::Status(int rank)> on_start,
              std::function<uint64_t(int rank)> progress = nullptr,
              std::chrono::milliseconds failure_grace = kDefaultFailureGrace);
  // Runs the tasks already given, then joins.
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int size() const { return static_cast<int>(workers_.size()); }

  // Runs task(r) on thread r for every rank at once and waits for all; OK when every rank
  // returned OK. Calls from several threads run one after another, so every rank sees the same
  // tasks in the same order (its collectives match).
  //
  // When a rank fails, the others get failure_grace to end. If they all failed alike (same code
  // and message, and the same progress: the same refusal at the same point, so no collective is
  // left half-joined), that status is returned, prefixed "every rank of n: ", and nothing else
  // happens: the ranks are still in step. Otherwise (two ranks ended differently, which ends the
  // grace at once, or a rank still runs after it) on_failure() runs once, on the calling thread,
  // without any lock but the one serializing the calls (so it must not call OnEveryRank), possibly
  // while ranks still run (it must make them return); then the status of the rank that failed
  // first (the cause: ranks released by the hook fail after it) is returned, prefixed
  // "rank r of n: ".
  //
  // deadline (a watchdog; kNoDeadline: none): when the ranks have neither all finished nor any
  // failed by then, one is hung (a collective whose peer never came, a kernel that never ends):
  // on_failure() runs as above and DEADLINE_EXCEEDED names the first rank still running.
  absl::Status OnEveryRank(const std::function<absl::Status(int rank)>& task,
                           const std::function<void()>& on_failure,
                           std::chrono::milliseconds deadline = kNoDeadline);

 private:
  // One thread and its queue of tasks, run in order.
  class Worker {
   public:
    Worker(int rank, const std::function<absl::Status(int)>& on_start);
    ~Worker();
    void Post(std::function<void()> task);
    // on_start's result; read only by tasks (they run on this worker's thread, after it).
    const absl::Status& start_status() const { return start_status_; }

   private:
    void Loop(int rank, std::function<absl::Status(int)> on_start);
    std::mutex mu_;
    std::condition_variable ready_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    absl::Status start_status_;  // written by the thread before its first task
    std::thread thread_;         // last: started once the members above exist
  };
  std::vector<std::unique_ptr<Worker>> workers_;
  std::function<uint64_t(int)> progress_;  // may be empty
  std::chrono::milliseconds failure_grace_;
  std::mutex one_call_;  // held through each OnEveryRank
};

}  // namespace gqa
