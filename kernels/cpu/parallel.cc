#include "gqa/kernels/parallel.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include "gqa/kernels/cpu_ops.h"

namespace gqa::kernels::cpu {
namespace {

class ThreadPool {
 public:
  explicit ThreadPool(int num_threads) {
    for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    start_cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs fn(part) for part in [0, parts) with parts <= size(); the caller runs part 0.
  void Run(int parts, const std::function<void(int)>& fn) {
    std::lock_guard one_job_at_a_time(run_mu_);
    {
      std::lock_guard lock(mu_);
      job_ = &fn;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    start_cv_.notify_all();
    fn(0);
    std::unique_lock lock(mu_);
    done_cv_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void WorkerLoop(int index) {
    uint64_t seen = 0;
    while (true) {
      const std::function<void(int)>* job = nullptr;
      {
        std::unique_lock lock(mu_);
        start_cv_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        if (index >= parts_) continue;
        job = job_;
      }
      (*job)(index);
      std::lock_guard lock(mu_);
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex run_mu_;
  std::mutex mu_;
  std::condition_variable start_cv_, done_cv_;
  const std::function<void(int)>* job_ = nullptr;
  int parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

int g_requested_threads = 0;
std::mutex g_pool_mu;

ThreadPool& Pool() {
  static ThreadPool* pool = nullptr;
  std::lock_guard lock(g_pool_mu);
  if (pool == nullptr) pool = new ThreadPool(NumThreads());  // lives for the process
  return *pool;
}

}  // namespace

void SetNumThreads(int num_threads) { g_requested_threads = num_threads; }

int NumThreads() {
  if (g_requested_threads > 0) return g_requested_threads;
  return std::max(1u, std::thread::hardware_concurrency());
}

void ParallelFor(int64_t n, int64_t min_chunk, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  ThreadPool& pool = Pool();
  const int64_t max_parts = std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk));
  const int parts = static_cast<int>(std::min<int64_t>(pool.size(), max_parts));
  if (parts == 1) {
    fn(0, n);
    return;
  }
  const int64_t chunk = (n + parts - 1) / parts;
  pool.Run(parts, [&](int part) {
    const int64_t begin = part * chunk;
    const int64_t end = std::min(n, begin + chunk);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace gqa::kernels::cpu
