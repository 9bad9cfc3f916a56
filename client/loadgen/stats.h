// What gqa-loadgen measures on the client: one record per request (steady-clock times), and the
// figures of a run, with the definitions of vLLM's benchmark_serving:
//   TTFT = arrival of the first message carrying tokens - send,
//   E2E  = arrival of the final message (finish_reason set) - send,
//   TPOT = (E2E - TTFT) / (output tokens - 1), for requests with more than one output token,
//   ITL  = every gap between consecutive token-carrying messages of a request, all requests
//          pooled (a message may carry several tokens; its gap counts once).
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <span>
#include <string>
#include <vector>

namespace gqa::loadgen {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The p-th percentile (p in [0, 100]) of ascending `sorted`, interpolated linearly between the
// closest ranks as numpy.percentile's default 'linear' method does: with h = (n - 1) * p / 100,
// x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]). NaN for an empty set.
double Percentile(std::span<const double> sorted, double p);

// mean, p50, p90, p99, min and max of a set; every field NaN for an empty set.
struct Summary {
  double mean = kNaN;
  double p50 = kNaN;
  double p90 = kNaN;
  double p99 = kNaN;
  double min = kNaN;
  double max = kNaN;
};
Summary Summarize(std::vector<double> values);

// One request as the client saw it. Times are seconds since the run's epoch (steady clock).
struct RequestRecord {
  int64_t prompt_tokens = 0;              // tokens sent
  bool ok = false;                        // OK status and a final message
  std::string error;                      // when !ok: the gRPC status name, e.g. RESOURCE_EXHAUSTED
  std::string error_message;              // when !ok: the status message
  double send_s = 0;                      // the call started
  std::vector<double> token_message_s;    // arrival of each message carrying tokens, in order
  std::vector<int> token_message_tokens;  // tokens each of those messages carried
  double final_s = kNaN;                  // arrival of the final message (finish_reason set)
  double done_s = 0;                      // the call's status arrived
  int64_t output_tokens = 0;              // usage.completion_tokens of the final message
};

// The client figures of a run's measured requests.
struct ClientStats {
  int64_t num_requests = 0;
  int64_t completed = 0;
  int64_t failed = 0;
  std::map<std::string, int64_t> errors;  // gRPC status name -> failed requests
  double duration_s = kNaN;               // first send to last finish (any outcome)
  int64_t input_tokens = 0;               // over completed requests
  int64_t output_tokens = 0;              // over completed requests
  double request_throughput = kNaN;       // completed / duration
  double output_token_throughput = kNaN;  // output_tokens / duration
  double total_token_throughput = kNaN;   // (input + output tokens) / duration
  Summary ttft_s, tpot_s, itl_s, e2e_s;   // over completed requests
};
ClientStats ComputeClientStats(std::span<const RequestRecord> records);

}  // namespace gqa::loadgen
