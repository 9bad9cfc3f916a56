#include "service/health_service.h"

#include <optional>
#include <thread>
#include <utility>

#include "service/status_conversion.h"

namespace gqa {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream: writes each status it is given (the newest replacing one not yet written),
// and ends once asked to after its last write.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, std::string name) : service_(service), name_(std::move(name)) {}
  const std::string& name() const { return name_; }

  // Sends `status` (if it changed); with `finish`, ends the stream after it.
  void Send(Status status, bool finish) {
    std::lock_guard lock(mu_);
    if (finish) finish_ = true;
    if (status != last_ || !started_) {
      pending_ = status;
      started_ = true;
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard lock(mu_);
    writing_ = false;
    if (!ok) {
      FinishOnce(ToGrpcStatus(absl::CancelledError("the client went away")));
      return;
    }
    Pump();
  }
  void OnCancel() override {
    std::lock_guard lock(mu_);
    FinishOnce(ToGrpcStatus(absl::CancelledError("cancelled")));
  }
  void OnDone() override {
    {
      std::lock_guard lock(service_->mu_);
      service_->watchers_.erase(this);
    }
    delete this;
  }

 private:
  // Starts the next write, or ends the stream once nothing is left to write and it was asked to
  // (caller holds mu_).
  void Pump() {
    if (writing_ || finished_) return;
    if (pending_) {
      last_ = *pending_;
      pending_.reset();
      response_.set_status(last_);
      writing_ = true;
      StartWrite(&response_);
    } else if (finish_) {
      FinishOnce(grpc::Status::OK);
    }
  }
  void FinishOnce(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  HealthService* const service_;
  const std::string name_;
  std::mutex mu_;
  HealthCheckResponse response_;
  Status last_ = HealthCheckResponse::UNKNOWN;
  std::optional<Status> pending_;
  bool started_ = false;
  bool writing_ = false;
  bool finish_ = false;
  bool finished_ = false;
};

HealthService::HealthService(std::vector<std::string> services)
    : services_(services.begin(), services.end()) {}

HealthService::~HealthService() = default;

HealthService::Status HealthService::StatusOf(const std::string& service) const {
  if (!service.empty() && !services_.contains(service)) return HealthCheckResponse::SERVICE_UNKNOWN;
  return status_;
}

void HealthService::SetServing(bool serving) {
  std::lock_guard lock(mu_);
  if (shut_down_) return;
  status_ = serving ? HealthCheckResponse::SERVING : HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) w->Send(StatusOf(w->name()), false);
}

void HealthService::Shutdown() {
  std::lock_guard lock(mu_);
  shut_down_ = true;
  status_ = HealthCheckResponse::NOT_SERVING;
  for (Watcher* w : watchers_) w->Send(StatusOf(w->name()), true);
}

bool HealthService::WaitForWatches(std::chrono::milliseconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (watchers_.empty()) return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  Status status;
  {
    std::lock_guard lock(mu_);
    status = StatusOf(request->service());
  }
  if (status == HealthCheckResponse::SERVICE_UNKNOWN) {
    reactor->Finish(ToGrpcStatus(absl::NotFoundError("unknown service")));
    return reactor;
  }
  response->set_status(status);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(
    grpc::CallbackServerContext* /*context*/, const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this, request->service());
  std::lock_guard lock(mu_);
  watchers_.insert(watcher);
  watcher->Send(StatusOf(request->service()), shut_down_);
  return watcher;
}

}  // namespace gqa
