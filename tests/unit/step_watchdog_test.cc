// The engine's watchdog (engine/step_watchdog.h) on its own: calls that end within the limit
// never fire it, however many and however close to the limit, nor does idle time between them;
// a call past the limit fires it once, naming the call, and later calls do not fire it again.
#include "engine/step_watchdog.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace gqa {
namespace {

using std::chrono::milliseconds;

struct Fired {
  std::mutex mu;
  std::vector<std::string> calls;
  void operator()(const std::string& what, milliseconds) {
    std::lock_guard lock(mu);
    calls.push_back(what);
  }
  size_t count() {
    std::lock_guard lock(mu);
    return calls.size();
  }
};

TEST(StepWatchdog, CallsWithinTheLimitAndIdleTimeNeverFireIt) {
  Fired fired;
  {
    StepWatchdog watchdog(milliseconds(200),
                          [&](const std::string& w, milliseconds l) { fired(w, l); });
    for (int i = 0; i < 20; ++i) {  // 20 x 20 ms: the sum twice the limit, each call within
      watchdog.Begin("CollectStep");
      std::this_thread::sleep_for(milliseconds(20));
      watchdog.End();
    }
    std::this_thread::sleep_for(milliseconds(600));  // idle, three limits long
  }
  EXPECT_EQ(fired.count(), 0u);
}

TEST(StepWatchdog, ACallPastTheLimitFiresItOnceNamingTheCall) {
  Fired fired;
  {
    StepWatchdog watchdog(milliseconds(50),
                          [&](const std::string& w, milliseconds l) { fired(w, l); });
    watchdog.Begin("SubmitStep");
    std::this_thread::sleep_for(milliseconds(10));
    watchdog.End();
    watchdog.Begin("CollectStep");
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (fired.count() == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    watchdog.End();
    watchdog.Begin("CollectStep");  // hung again: the process is gone by now in the server
    std::this_thread::sleep_for(milliseconds(150));
    watchdog.End();
  }
  ASSERT_EQ(fired.calls.size(), 1u);
  EXPECT_EQ(fired.calls[0], "CollectStep");
}

}  // namespace
}  // namespace gqa
