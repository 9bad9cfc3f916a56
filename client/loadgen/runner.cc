#include "loadgen/runner.h"

#include <cmath>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "grpcpp/grpcpp.h"

namespace gqa::loadgen {
namespace {

namespace pb = gqa::v1;

double SecondsSince(Clock::time_point epoch) {
  return std::chrono::duration<double>(Clock::now() - epoch).count();
}

pb::GenerateRequest ToProto(const RequestSpec& spec) {
  pb::GenerateRequest r;
  r.mutable_token_ids()->mutable_ids()->Add(spec.prompt.begin(), spec.prompt.end());
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_stopping()->set_max_new_tokens(static_cast<uint32_t>(spec.output_len));
  r.mutable_stopping()->set_ignore_eos(true);
  return r;
}

// The records of a run and the count of calls in flight, shared by the dispatcher and the calls.
class RunState {
 public:
  RunState(size_t n, Clock::time_point epoch, Progress& progress)
      : records_(n), done_(n, false), epoch_(epoch), progress_(progress) {}

  Clock::time_point epoch() const { return epoch_; }
  Progress& progress() { return progress_; }

  // Blocks until fewer than `max_in_flight` calls are in flight (0: no cap), then counts one more.
  void Acquire(int max_in_flight) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return max_in_flight == 0 || in_flight_ < max_in_flight; });
    ++in_flight_;
  }

  // Blocks until request `index` has finished.
  void WaitDone(size_t index) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return done_[index]; });
  }

  void Finish(size_t index, RequestRecord record) {
    if (!record.ok) progress_.failed.fetch_add(1);
    progress_.finished.fetch_add(1);
    std::lock_guard lock(mu_);
    records_[index] = std::move(record);
    done_[index] = true;
    --in_flight_;
    ++finished_;
    cv_.notify_all();
  }

  std::vector<RequestRecord> WaitForAll() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return finished_ == records_.size(); });
    return std::move(records_);
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<RequestRecord> records_;
  std::vector<bool> done_;
  int in_flight_ = 0;
  size_t finished_ = 0;
  const Clock::time_point epoch_;
  Progress& progress_;
};

// One streaming Generate call; deletes itself when done.
class GenerateCall final : public grpc::ClientReadReactor<pb::GenerateResponse> {
 public:
  GenerateCall(RunState& state, size_t index, const RequestSpec& spec)
      : state_(state), index_(index), request_(ToProto(spec)) {
    record_.prompt_tokens = static_cast<int64_t>(spec.prompt.size());
  }

  void Start(pb::Generation::Stub& stub, double timeout_s) {
    context_.set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(timeout_s * 1e6)));
    stub.async()->Generate(&context_, &request_, this);
    StartRead(&response_);
    record_.send_s = SecondsSince(state_.epoch());
    StartCall();
  }

  void OnReadDone(bool ok) override {
    if (!ok) return;  // the stream has ended; OnDone follows
    const double now = SecondsSince(state_.epoch());
    if (const int n = response_.token_ids_size(); n > 0) {
      record_.token_message_s.push_back(now);
      record_.token_message_tokens.push_back(n);
      state_.progress().tokens.fetch_add(n);
    }
    if (response_.finish_reason() != pb::FINISH_REASON_UNSPECIFIED) {
      record_.final_s = now;
      record_.output_tokens = response_.usage().completion_tokens();
    }
    StartRead(&response_);
  }

  void OnDone(const grpc::Status& status) override {
    record_.done_s = SecondsSince(state_.epoch());
    if (!status.ok()) {
      record_.error = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
      record_.error_message = status.error_message();
    } else if (std::isnan(record_.final_s)) {
      record_.error = "NO_FINAL_MESSAGE";
      record_.error_message = "the stream ended without a message carrying finish_reason";
    } else {
      record_.ok = true;
    }
    state_.Finish(index_, std::move(record_));
    delete this;
  }

 private:
  RunState& state_;
  const size_t index_;
  grpc::ClientContext context_;
  pb::GenerateRequest request_;
  pb::GenerateResponse response_;
  RequestRecord record_;
};

}  // namespace

Runner::Runner(std::vector<std::unique_ptr<pb::Generation::Stub>> stubs, double timeout_s)
    : stubs_(std::move(stubs)), timeout_s_(timeout_s) {}

std::vector<RequestRecord> Runner::Run(const std::vector<RequestSpec>& requests,
                                       const std::vector<double>& arrivals, int max_in_flight,
                                       Clock::time_point epoch, Progress& progress) {
  progress.total = static_cast<int64_t>(requests.size());
  RunState state(requests.size(), epoch, progress);
  for (size_t i = 0; i < requests.size(); ++i) {
    std::this_thread::sleep_until(epoch + std::chrono::duration_cast<Clock::duration>(
                                              std::chrono::duration<double>(arrivals[i])));
    if (requests[i].after >= 0) state.WaitDone(static_cast<size_t>(requests[i].after));
    state.Acquire(max_in_flight);
    auto* call = new GenerateCall(state, i, requests[i]);
    call->Start(*stubs_[i % stubs_.size()], timeout_s_);
  }
  return state.WaitForAll();
}

}  // namespace gqa::loadgen
