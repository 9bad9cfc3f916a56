// Sends a run's requests to gqa-server with the gRPC callback API (no thread per request) and
// records what the client sees of each one.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <vector>

#include "gqa/v1/generation.grpc.pb.h"
#include "loadgen/stats.h"
#include "loadgen/workload.h"

namespace gqa::loadgen {

using Clock = std::chrono::steady_clock;

// Live counts of a run, for the progress line.
struct Progress {
  std::atomic<int64_t> total{0};
  std::atomic<int64_t> finished{0};
  std::atomic<int64_t> failed{0};
  std::atomic<int64_t> tokens{0};  // output tokens received so far
};

class Runner {
 public:
  // Calls go round-robin over `stubs` (one connection each); each has `timeout_s` from its send.
  Runner(std::vector<std::unique_ptr<gqa::v1::Generation::Stub>> stubs, double timeout_s);

  // Sends requests[i] `arrivals[i]` seconds after `epoch`, or later, once fewer than
  // `max_in_flight` calls are in flight (0: no cap); returns when every call has finished. A
  // closed loop of C streams is every arrival at 0 with max_in_flight C. Each request is greedy,
  // ignores EOS and asks for exactly its output length. A request with `after` set also waits
  // for that one to finish (a conversation's turns). The records are in request order, their
  // times in seconds since `epoch`.
  std::vector<RequestRecord> Run(const std::vector<RequestSpec>& requests,
                                 const std::vector<double>& arrivals, int max_in_flight,
                                 Clock::time_point epoch, Progress& progress);

 private:
  std::vector<std::unique_ptr<gqa::v1::Generation::Stub>> stubs_;
  double timeout_s_;
};

}  // namespace gqa::loadgen
