#include "backend/rank_threads.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace gqa {

RankThreads::Worker::Worker(int rank, const std::function<absl::Status(int)>& on_start)
    : thread_([this, rank, on_start] { Loop(rank, on_start); }) {}

RankThreads::Worker::~Worker() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  ready_.notify_one();
  thread_.join();
}

void RankThreads::Worker::Post(std::function<void()> task) {
  {
    std::lock_guard lock(mu_);
    tasks_.push_back(std::move(task));
  }
  ready_.notify_one();
}

void RankThreads::Worker::Loop(int rank, std::function<absl::Status(int)> on_start) {
  if (on_start) start_status_ = on_start(rank);
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock lock(mu_);
      ready_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}

RankThreads::RankThreads(int n, std::function<absl::Status(int)> on_start,
                         std::function<uint64_t(int)> progress,
                         std::chrono::milliseconds failure_grace)
    : progress_(std::move(progress)), failure_grace_(failure_grace) {
  for (int r = 0; r < n; ++r) workers_.push_back(std::make_unique<Worker>(r, on_start));
}

RankThreads::~RankThreads() {
  workers_.clear();  // each finishes its queue and joins
}

absl::Status RankThreads::OnEveryRank(const std::function<absl::Status(int)>& task,
                                      const std::function<void()>& on_failure,
                                      std::chrono::milliseconds deadline) {
  std::lock_guard one_call(one_call_);
  const int n = size();
  // Shared with the workers' tasks below; every return path first waits for all of them.
  std::mutex mu;
  std::condition_variable changed;
  std::vector<absl::Status> results(n);
  std::vector<uint64_t> progress(n, 0);
  std::vector<bool> finished(n, false);
  int done = 0, failed = 0;
  int first_failed = -1;  // the rank whose failure came first: the cause, the others' its echo
  int first_done = -1;    // what every other rank is compared with
  bool apart = false;     // two ranks ended differently (status or progress): not alike
  for (int r = 0; r < n; ++r) {
    Worker* worker = workers_[r].get();
    worker->Post([&, r, worker] {
      absl::Status status = worker->start_status().ok() ? task(r) : worker->start_status();
      const uint64_t reached = progress_ ? progress_(r) : 0;  // on the rank's own thread
      std::lock_guard lock(mu);
      if (!status.ok() && failed++ == 0) first_failed = r;
      if (first_done < 0) {
        first_done = r;
      } else if (status != results[first_done] || reached != progress[first_done]) {
        apart = true;
      }
      results[r] = std::move(status);
      progress[r] = reached;
      finished[r] = true;
      ++done;
      // Under the lock: the waiter may return (and `changed` go) as soon as it sees done == n.
      changed.notify_one();
    });
  }
  std::unique_lock lock(mu);
  const auto ended_or_failed = [&] { return done == n || failed > 0; };
  bool in_time = true;
  if (deadline == kNoDeadline) {
    changed.wait(lock, ended_or_failed);
  } else {
    in_time = changed.wait_for(lock, deadline, ended_or_failed);
  }
  if (in_time && failed == 0) return absl::OkStatus();  // every rank ended, none failed
  // A rank failed: the others get the grace to end alike, unless two already ended differently.
  const bool alike = in_time &&
                     changed.wait_for(lock, failure_grace_, [&] { return done == n || apart; }) &&
                     done == n && !apart;
  if (alike) {
    const absl::Status& every = results.front();
    return absl::Status(every.code(), absl::StrCat("every rank of ", n, ": ", every.message()));
  }
  // Named now, before the abort releases it: the first rank still running at the deadline.
  const int hung =
      in_time ? -1 : int(std::find(finished.begin(), finished.end(), false) - finished.begin());
  lock.unlock();
  if (on_failure) on_failure();
  lock.lock();
  changed.wait(lock, [&] { return done == n; });
  if (hung >= 0) {
    return absl::DeadlineExceededError(
        absl::StrCat("rank ", hung, " of ", n, " did not finish within ", deadline.count() / 1000.0,
                     " s (a hung collective or kernel); the communicators were aborted"));
  }
  const absl::Status& cause = results[first_failed];
  return absl::Status(cause.code(),
                      absl::StrCat("rank ", first_failed, " of ", n, ": ", cause.message()));
}

}  // namespace gqa
