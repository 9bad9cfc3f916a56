// grpc.reflection.v1.ServerReflection, served by gqa-server itself: gRPC 1.51 (Debian 12) ships
// only grpc.reflection.v1alpha, which grpcurl and newer tools reach only after v1 fails. Both
// answer from the descriptors compiled into the binary (the generated pool), so every service
// the server registers, grpc.health.v1.Health included, can be listed and described.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpcpp/server_builder.h"

namespace gqa {

class ReflectionV1Service final : public grpc::reflection::v1::ServerReflection::Service {
 public:
  using Request = grpc::reflection::v1::ServerReflectionRequest;
  using Response = grpc::reflection::v1::ServerReflectionResponse;

  // `services`: the full names list_services answers (e.g. "grpc.health.v1.Health"); set before
  // the server starts (AddReflectionV1 sets every service the server registers).
  explicit ReflectionV1Service(std::vector<std::string> services = {});
  void SetServices(std::vector<std::string> services) { services_ = std::move(services); }

  grpc::Status ServerReflectionInfo(grpc::ServerContext* context,
                                    grpc::ServerReaderWriter<Response, Request>* stream) override;

  // The answer to one request: a file comes with every file it depends on, each once (as gRPC's
  // v1alpha service answers).
  Response Answer(const Request& request) const;

 private:
  std::vector<std::string> services_;
};

// Registers a ReflectionV1Service with `builder` that lists every service the built server
// registers (as gRPC's v1alpha plugin does), itself included.
void AddReflectionV1(grpc::ServerBuilder& builder);

}  // namespace gqa
