// grpc.health.v1.Health, served by gqa-server itself rather than gRPC's default health service,
// whose Watch streams stay open until the server shuts down: an open Watch made SIGTERM wait for
// Server::Shutdown's deadline. Here draining sends NOT_SERVING to every watcher and then ends its
// stream (OK), and a Watch started while draining gets NOT_SERVING and ends at once.
#pragma once

#include <chrono>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "grpc/health/v1/health.grpc.pb.h"

namespace gqa {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using Status = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // `services`: the names Check and Watch know besides "" (the server as a whole), all with the
  // one status. Starts NOT_SERVING.
  explicit HealthService(std::vector<std::string> services);
  ~HealthService() override;

  // SERVING or NOT_SERVING; every open Watch gets the change.
  void SetServing(bool serving);
  // Draining: NOT_SERVING for good, sent to every open Watch, whose stream then ends.
  void Shutdown();
  // Waits until every Watch stream has ended, at most `timeout`; false if some are still open.
  bool WaitForWatches(std::chrono::milliseconds timeout) const;

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context,
      const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class Watcher;
  Status StatusOf(const std::string& service) const;  // caller holds mu_

  const std::set<std::string> services_;
  mutable std::mutex mu_;
  Status status_ = grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  bool shut_down_ = false;
  std::set<Watcher*> watchers_;  // open Watch streams; each removes itself when done
};

}  // namespace gqa
