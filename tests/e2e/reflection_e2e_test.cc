// gRPC server reflection as grpcurl uses it, in both versions: v1 (grpc.reflection.v1, which
// gqa-server serves itself) and v1alpha (gRPC's plugin). Each lists every service, health
// included, and describes grpc.health.v1.Health (`grpcurl describe`), after which Check answers
// (`grpcurl grpc.health.v1.Health/Check`).
#include <google/protobuf/descriptor.pb.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <random>

#include "common/test_checkpoint.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"

namespace gqa::testing {
namespace {

namespace v1 = grpc::reflection::v1;
namespace v1alpha = grpc::reflection::v1alpha;

// The reflection requests of one stream, answered in order.
template <typename Stub, typename Request, typename Response>
std::vector<Response> Ask(const std::string& address, const std::vector<Request>& requests) {
  auto stub = Stub::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto stream = stub->ServerReflectionInfo(&context);
  std::vector<Response> responses;
  for (const Request& request : requests) {
    EXPECT_TRUE(stream->Write(request));
    Response response;
    EXPECT_TRUE(stream->Read(&response));
    responses.push_back(response);
  }
  stream->WritesDone();
  Response extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  return responses;
}

std::vector<std::string> Names(const auto& list_services_response) {
  std::vector<std::string> names;
  for (const auto& s : list_services_response.service()) names.push_back(s.name());
  std::sort(names.begin(), names.end());
  return names;
}

// The files of a file_descriptor_response, parsed.
std::vector<google::protobuf::FileDescriptorProto> Files(const auto& file_descriptor_response) {
  std::vector<google::protobuf::FileDescriptorProto> files;
  for (const std::string& bytes : file_descriptor_response.file_descriptor_proto()) {
    files.emplace_back();
    EXPECT_TRUE(files.back().ParseFromString(bytes));
  }
  return files;
}

// The methods of `service` in the first file, which must be `file_name`.
std::vector<std::string> MethodsOf(const std::vector<google::protobuf::FileDescriptorProto>& files,
                                   const std::string& file_name, const std::string& service) {
  std::vector<std::string> methods;
  if (files.empty() || files[0].name() != file_name) return methods;
  for (const auto& s : files[0].service()) {
    if (s.name() != service) continue;
    for (const auto& m : s.method()) methods.push_back(m.name());
  }
  return methods;
}

class ReflectionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir;
    WriteRandomCheckpoint(model_->path(), E2eConfig(2), std::random_device{}());
    server_ = new ServerProcess(model_->path(), {});
  }
  static void TearDownTestSuite() {
    delete server_;
    delete model_;
  }
  void SetUp() override { ASSERT_TRUE(server_->started()) << server_->Log(); }
  static TempDir* model_;
  static ServerProcess* server_;
};
TempDir* ReflectionTest::model_ = nullptr;
ServerProcess* ReflectionTest::server_ = nullptr;

const std::vector<std::string> kServices = {"gqa.v1.Generation", "grpc.health.v1.Health",
                                            "grpc.reflection.v1.ServerReflection",
                                            "grpc.reflection.v1alpha.ServerReflection"};

TEST_F(ReflectionTest, V1ListsAndDescribesEveryServiceHealthIncluded) {
  std::vector<v1::ServerReflectionRequest> requests(6);
  requests[0].set_list_services("");
  requests[1].set_file_containing_symbol("grpc.health.v1.Health");
  requests[2].set_file_containing_symbol("gqa.v1.Generation.Generate");
  requests[3].set_file_by_filename("grpc/health/v1/health.proto");
  requests[4].set_file_containing_symbol("no.such.Service");
  requests[5].set_host("localhost");
  requests[5].set_all_extension_numbers_of_type("gqa.v1.GenerateRequest");
  const auto responses =
      Ask<v1::ServerReflection, v1::ServerReflectionRequest, v1::ServerReflectionResponse>(
          server_->address(), requests);
  ASSERT_EQ(responses.size(), requests.size());
  for (size_t i = 0; i < responses.size(); ++i) {
    EXPECT_EQ(responses[i].original_request().SerializeAsString(), requests[i].SerializeAsString())
        << i;
  }
  EXPECT_EQ(Names(responses[0].list_services_response()), kServices);
  EXPECT_EQ(MethodsOf(Files(responses[1].file_descriptor_response()), "grpc/health/v1/health.proto",
                      "Health"),
            (std::vector<std::string>{"Check", "Watch"}));
  // A file comes with its dependencies (grpcurl needs them to build the descriptors).
  const auto generation = Files(responses[2].file_descriptor_response());
  EXPECT_FALSE(MethodsOf(generation, "gqa/v1/generation.proto", "Generation").empty());
  for (const std::string& dependency : generation.at(0).dependency()) {
    EXPECT_TRUE(std::any_of(generation.begin(), generation.end(), [&](const auto& f) {
      return f.name() == dependency;
    })) << dependency;
  }
  EXPECT_EQ(Files(responses[3].file_descriptor_response()).at(0).name(),
            "grpc/health/v1/health.proto");
  EXPECT_EQ(responses[4].error_response().error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_NE(responses[4].error_response().error_message().find("no.such.Service"),
            std::string::npos);
  EXPECT_EQ(responses[5].valid_host(), "localhost");
  EXPECT_EQ(responses[5].all_extension_numbers_response().base_type_name(),
            "gqa.v1.GenerateRequest");
}

TEST_F(ReflectionTest, V1AlphaListsAndDescribesHealthThenCheckAnswers) {
  std::vector<v1alpha::ServerReflectionRequest> requests(2);
  requests[0].set_list_services("");
  requests[1].set_file_containing_symbol("grpc.health.v1.Health");
  const auto responses = Ask<v1alpha::ServerReflection, v1alpha::ServerReflectionRequest,
                             v1alpha::ServerReflectionResponse>(server_->address(), requests);
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(Names(responses[0].list_services_response()), kServices);
  EXPECT_EQ(MethodsOf(Files(responses[1].file_descriptor_response()), "grpc/health/v1/health.proto",
                      "Health"),
            (std::vector<std::string>{"Check", "Watch"}));

  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()));
  for (const char* service : {"", "gqa.v1.Generation"}) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    ASSERT_TRUE(health->Check(&context, request, &response).ok()) << service;
    EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING) << service;
  }
}

}  // namespace
}  // namespace gqa::testing
