// The engine's watchdog: a backend call (a step's submit or collect) that has not returned within
// a limit is hung (a kernel that never ends, a collective whose peer never came), and waiting
// longer would leave the server answering health checks while it serves nothing. The watchdog
// then runs `on_hung` once, on its own thread; the server's hook sets NOT_SERVING and exits, so
// that an orchestrator restarts the process (vLLM's engine iteration timeout does the same).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace gqa {

class StepWatchdog {
 public:
  // on_hung(what, limit): `what` names the call that did not return (e.g. "CollectStep").
  StepWatchdog(std::chrono::milliseconds limit,
               std::function<void(const std::string& what, std::chrono::milliseconds)> on_hung);
  ~StepWatchdog();  // stops and joins the thread (after on_hung, if it is running)
  StepWatchdog(const StepWatchdog&) = delete;
  StepWatchdog& operator=(const StepWatchdog&) = delete;

  // Marks a backend call in progress from Begin to End (one at a time, the engine thread's).
  void Begin(const char* what);
  void End();

 private:
  void Loop();

  const std::chrono::milliseconds limit_;
  const std::function<void(const std::string&, std::chrono::milliseconds)> on_hung_;
  std::mutex mu_;
  std::condition_variable changed_;
  const char* call_ = nullptr;  // the call in progress, or null
  std::chrono::steady_clock::time_point call_start_;
  uint64_t calls_ = 0;  // calls begun: tells a new call from the one being waited on
  bool stopping_ = false;
  bool fired_ = false;  // on_hung ran (once only)
  std::thread thread_;  // last: started once the members above exist
};

}  // namespace gqa
