// The tensor-parallel runtime's threads (backend/rank_threads.h), on the host: each rank's tasks
// run on its own thread after its start hook, in order; the first failure is named and the abort
// hook runs once, soon enough to release a rank that waits on the failed one (as a collective
// would), so that a failing rank fails the step instead of hanging it; a failure every rank
// returns alike runs no abort (the ranks are still in step).
#include "backend/rank_threads.h"

#include <gtest/gtest.h>

#include <algorithm>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace gqa {
namespace {

// A stand-in for a collective a rank waits in until the communicators are aborted: Wait()
// blocks until Abort() (the abort hook) and then fails as an aborted NCCL call would.
class AbortableWait {
 public:
  absl::Status Wait() {
    std::unique_lock lock(mu_);
    if (!cv_.wait_for(lock, std::chrono::seconds(30), [&] { return aborted_; })) {
      return absl::InternalError("never released");
    }
    return absl::AbortedError("collective aborted");
  }
  void Abort() {
    std::lock_guard lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }
  bool aborted() {
    std::lock_guard lock(mu_);
    return aborted_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool aborted_ = false;
};

TEST(RankThreads, EachRankRunsOnItsOwnThreadAfterItsStartHook) {
  std::mutex mu;
  std::vector<std::thread::id> started(3);
  RankThreads threads(3, [&](int r) {
    std::lock_guard lock(mu);
    started[r] = std::this_thread::get_id();
    return absl::OkStatus();
  });
  ASSERT_EQ(threads.size(), 3);
  std::vector<std::thread::id> ran(3);
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [&](int r) {
        ran[r] = std::this_thread::get_id();
        return absl::OkStatus();
      },
      [&] { ++aborts; });
  EXPECT_TRUE(status.ok()) << status;
  EXPECT_EQ(aborts, 0);
  EXPECT_EQ(ran, started);
  EXPECT_EQ(std::set<std::thread::id>(ran.begin(), ran.end()).size(), 3u);
  EXPECT_EQ(std::count(ran.begin(), ran.end(), std::this_thread::get_id()), 0);
}

TEST(RankThreads, RunsEveryRankAtOnce) {
  // Each rank waits until every rank has started: run one after another, this would hang.
  RankThreads threads(4, nullptr);
  std::atomic<int> arrived = 0;
  const absl::Status status = threads.OnEveryRank(
      [&](int) {
        ++arrived;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        while (arrived < 4 && std::chrono::steady_clock::now() < deadline)
          std::this_thread::yield();
        return arrived == 4 ? absl::OkStatus() : absl::DeadlineExceededError("alone");
      },
      nullptr);
  EXPECT_TRUE(status.ok()) << status;
}

TEST(RankThreads, TasksOfOneRankRunInOrder) {
  RankThreads threads(2, nullptr);
  std::vector<std::vector<int>> seen(2);
  for (int step = 0; step < 20; ++step) {
    ASSERT_TRUE(threads
                    .OnEveryRank(
                        [&](int r) {
                          seen[r].push_back(step);
                          return absl::OkStatus();
                        },
                        nullptr)
                    .ok());
  }
  for (const auto& steps : seen) {
    ASSERT_EQ(steps.size(), 20u);
    for (int i = 0; i < 20; ++i) EXPECT_EQ(steps[i], i);
  }
}

TEST(RankThreads, NamesTheFailedRankAndAbortsOnce) {
  RankThreads threads(3, nullptr);
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [](int r) {
        return r != 2 ? absl::OkStatus() : absl::InternalError(absl::StrCat("broke ", r));
      },
      [&] { ++aborts; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(status.message(), "rank 2 of 3: broke 2");
  EXPECT_EQ(aborts, 1);
}

// Rank 0 waits (as in a collective) for rank 1, which fails instead of joining: the abort hook
// releases rank 0, and the step fails with rank 1's error (the cause, not rank 0's echo of it)
// rather than hanging.
TEST(RankThreads, TheAbortHookReleasesARankWaitingOnTheFailedOne) {
  RankThreads threads(2, nullptr, nullptr, std::chrono::milliseconds(50));
  AbortableWait collective;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = threads.OnEveryRank(
      [&](int r) -> absl::Status {
        if (r == 1) return absl::UnavailableError("rank 1 never joined");
        return collective.Wait();
      },
      [&] { collective.Abort(); });
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "rank 1 of 2: rank 1 never joined");
  EXPECT_TRUE(collective.aborted());
  // Released after the 50 ms grace, not after AbortableWait's own 30 s.
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// Rank 0 fails, rank 1 succeeds, rank 2 waits in a collective: two ranks ended differently, so
// the abort comes at once, without waiting out the (here 30 s) grace.
TEST(RankThreads, RanksThatEndedDifferentlyAbortWithoutWaitingOutTheGrace) {
  RankThreads threads(3, nullptr, nullptr, std::chrono::seconds(30));
  AbortableWait collective;
  const auto start = std::chrono::steady_clock::now();
  const absl::Status status = threads.OnEveryRank(
      [&](int r) -> absl::Status {
        if (r == 0) return absl::InternalError("rank 0 broke");
        if (r == 1) return absl::OkStatus();
        return collective.Wait();
      },
      [&] { collective.Abort(); });
  EXPECT_EQ(status.message(), "rank 0 of 3: rank 0 broke");
  EXPECT_TRUE(collective.aborted());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// The grace, both ways: a rank failing alike 100 ms after the others, within a 2 s grace, runs
// no abort; the same 300 ms late, past a 50 ms grace, aborts (it may be stuck, for all the
// waiter knows).
TEST(RankThreads, ALateAlikeFailureCountsOnlyWithinTheGrace) {
  const auto late_alike = [](int r, std::chrono::milliseconds late) {
    if (r == 1) std::this_thread::sleep_for(late);
    return absl::InvalidArgumentError("refused");
  };
  {
    RankThreads threads(2, nullptr, nullptr, std::chrono::seconds(2));
    int aborts = 0;
    const absl::Status status = threads.OnEveryRank(
        [&](int r) { return late_alike(r, std::chrono::milliseconds(100)); }, [&] { ++aborts; });
    EXPECT_EQ(status.message(), "every rank of 2: refused");
    EXPECT_EQ(aborts, 0);
  }
  {
    RankThreads threads(2, nullptr, nullptr, std::chrono::milliseconds(50));
    int aborts = 0;
    const absl::Status status = threads.OnEveryRank(
        [&](int r) { return late_alike(r, std::chrono::milliseconds(300)); }, [&] { ++aborts; });
    EXPECT_EQ(status.message(), "rank 0 of 2: refused");
    EXPECT_EQ(aborts, 1);
  }
}

// The same status from ranks at different points (progress: in the CUDA runtime, the
// collectives each queued) is not alike: one may have left a collective half-joined.
TEST(RankThreads, AlikeStatusesAtDifferentProgressAbort) {
  std::vector<uint64_t> queued = {7, 9};
  RankThreads threads(2, nullptr, [&](int r) { return queued[r]; });
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [](int) { return absl::InternalError("ncclAllReduce: unhandled system error"); },
      [&] { ++aborts; });
  EXPECT_EQ(aborts, 1);
  EXPECT_TRUE(absl::StartsWith(status.message(), "rank ")) << status;
  queued = {9, 9};
  const absl::Status alike = threads.OnEveryRank(
      [](int) { return absl::InternalError("ncclAllReduce: unhandled system error"); },
      [&] { ++aborts; });
  EXPECT_EQ(aborts, 1);
  EXPECT_EQ(alike.message(), "every rank of 2: ncclAllReduce: unhandled system error");
}

// Every rank refuses the same thing at the same point (as every rank would a bad step plan,
// before any collective): the call fails with that refusal and no abort, and the next call runs.
TEST(RankThreads, AFailureEveryRankReturnsAlikeRunsNoAbort) {
  RankThreads threads(3, nullptr);
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [](int) { return absl::InvalidArgumentError("chunk 2 of the plan: no such sequence"); },
      [&] { ++aborts; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(), "every rank of 3: chunk 2 of the plan: no such sequence");
  EXPECT_EQ(aborts, 0);
  EXPECT_TRUE(threads.OnEveryRank([](int) { return absl::OkStatus(); }, [&] { ++aborts; }).ok());
  EXPECT_EQ(aborts, 0);
}

// Failures that differ (by message, or by code) mean the ranks parted: abort, name the first.
TEST(RankThreads, FailuresThatDifferAbort) {
  RankThreads threads(2, nullptr);
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [](int r) { return absl::InternalError(absl::StrCat("rank ", r, "'s own error")); },
      [&] { ++aborts; });
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(aborts, 1);
  const absl::Status codes = threads.OnEveryRank(
      [](int r) {
        return r == 0 ? absl::InternalError("same text") : absl::UnavailableError("same text");
      },
      [&] { ++aborts; });
  EXPECT_FALSE(codes.ok());
  EXPECT_EQ(aborts, 2);
}

// A rank whose start hook failed (cudaSetDevice, in the CUDA runtime) runs no task: each call
// returns its start failure, named, while the other ranks ran theirs (so the ranks are apart).
TEST(RankThreads, ARankWhoseStartFailedReturnsThatFailure) {
  RankThreads threads(2, [](int r) {
    return r == 1 ? absl::InternalError("cudaSetDevice(1): invalid device ordinal")
                  : absl::OkStatus();
  });
  std::atomic<int> ran_on_1 = 0;
  int aborts = 0;
  const absl::Status status = threads.OnEveryRank(
      [&](int r) {
        if (r == 1) ++ran_on_1;
        return absl::OkStatus();
      },
      [&] { ++aborts; });
  EXPECT_EQ(status.message(), "rank 1 of 2: cudaSetDevice(1): invalid device ordinal");
  EXPECT_EQ(ran_on_1, 0);
  EXPECT_EQ(aborts, 1);
}

// The watchdog: rank 1 waits forever (a collective whose peer never came) and nothing fails; at
// the deadline the abort hook releases it and the call fails naming it, instead of hanging.
TEST(RankThreads, ADeadlineAbortsAHungRankAndNamesIt) {
  RankThreads threads(2, nullptr);
  AbortableWait collective;
  const absl::Status status =
      threads.OnEveryRank([&](int r) { return r == 0 ? absl::OkStatus() : collective.Wait(); },
                          [&] { collective.Abort(); }, std::chrono::milliseconds(100));
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(status.message(),
            "rank 1 of 2 did not finish within 0.1 s (a hung collective or kernel); the "
            "communicators were aborted");
  EXPECT_TRUE(collective.aborted());
}

// A failure before the deadline is that failure, not DEADLINE_EXCEEDED.
TEST(RankThreads, AFailureBeforeTheDeadlineIsReportedAsItself) {
  RankThreads threads(2, nullptr, nullptr, std::chrono::milliseconds(50));
  AbortableWait collective;
  const absl::Status status = threads.OnEveryRank(
      [&](int r) { return r == 0 ? absl::UnavailableError("gone") : collective.Wait(); },
      [&] { collective.Abort(); }, std::chrono::seconds(10));
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(status.message(), "rank 0 of 2: gone");
}

// A deadline that every rank meets changes nothing.
TEST(RankThreads, ADeadlineMetRunsNoAbort) {
  RankThreads threads(3, nullptr);
  int aborts = 0;
  EXPECT_TRUE(threads
                  .OnEveryRank([](int) { return absl::OkStatus(); }, [&] { ++aborts; },
                               std::chrono::seconds(10))
                  .ok());
  EXPECT_EQ(aborts, 0);
}

// Two threads calling at once (the engine and, say, a profiling request): each call reaches
// every rank whole, so all ranks see the calls in one order, as their collectives must.
TEST(RankThreads, CallsFromTwoThreadsReachEveryRankInOneOrder) {
  constexpr int kRanks = 4, kCallsPerThread = 200;
  RankThreads threads(kRanks, [](int) { return absl::OkStatus(); });
  std::mutex mu;
  std::vector<std::vector<int>> seen(kRanks);  // per rank: the calls' ids in the order run
  auto caller = [&](int first_id) {
    for (int i = 0; i < kCallsPerThread; ++i) {
      const int id = first_id + i;
      ASSERT_TRUE(threads
                      .OnEveryRank(
                          [&, id](int r) {
                            std::this_thread::yield();
                            std::lock_guard lock(mu);
                            seen[r].push_back(id);
                            return absl::OkStatus();
                          },
                          [] {})
                      .ok());
    }
  };
  std::thread a(caller, 0), b(caller, 100000);
  a.join();
  b.join();
  ASSERT_EQ(seen[0].size(), 2u * kCallsPerThread);
  for (int r = 1; r < kRanks; ++r) EXPECT_EQ(seen[r], seen[0]) << "rank " << r;
}

}  // namespace
}  // namespace gqa
