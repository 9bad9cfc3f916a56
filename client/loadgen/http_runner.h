// Sends a run's requests to gqa-server's OpenAI-compatible HTTP API (POST /v1/completions with
// "stream": true, token-id prompts) and records what the client sees of each one, the same
// records as the gRPC Runner: one SSE chunk is one token message.
#pragma once

#include <string>
#include <vector>

#include "loadgen/runner.h"

namespace gqa::loadgen {

class HttpRunner {
 public:
  // `base_url`: http://host:port (the server's --http_port); `token`: its bearer token or empty.
  HttpRunner(std::string base_url, std::string token, double timeout_s);

  // As Runner::Run: requests[i] sent `arrivals[i]` seconds after `epoch`, at most
  // `max_in_flight` at once (0: no cap); greedy, EOS ignored, exactly its output length. One
  // thread per request in flight.
  std::vector<RequestRecord> Run(const std::vector<RequestSpec>& requests,
                                 const std::vector<double>& arrivals, int max_in_flight,
                                 Clock::time_point epoch, Progress& progress);

 private:
  RequestRecord RunOne(const RequestSpec& spec, Clock::time_point epoch, Progress& progress) const;

  std::string base_url_;
  std::string token_;
  double timeout_s_;
};

}  // namespace gqa::loadgen
