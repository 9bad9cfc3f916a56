// The server's security options over real sockets: TLS and mutual TLS with a test CA made by
// openssl, the bearer token (health stays open), the model path kept private, a separate metrics
// address, and a port already in use stopping startup.
#include <gtest/gtest.h>

#include <fstream>
#include <random>

#include "common/test_checkpoint.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "server_process.h"

namespace gqa::testing {
namespace {

namespace pb = gqa::v1;

std::string ReadAll(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A CA and two certificates it signed: the server's (localhost, 127.0.0.1) and a client's.
class TestPki {
 public:
  explicit TestPki(const std::filesystem::path& dir) : dir_(dir) {
    std::ofstream(dir / "san.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
    Run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", path("ca.key"), "-out", path("ca.pem"), "-days", "2", "-subj",
         "/CN=gqa-serve test CA"});
    Sign("server", true);
    Sign("client", false);
  }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }
  std::string text(const std::string& name) const { return ReadAll(dir_ / name); }

 private:
  void Run(const std::vector<std::string>& argv) {
    auto [code, output] = RunCommand(argv);
    ASSERT_EQ(code, 0) << output;
  }
  void Sign(const std::string& name, bool server) {
    Run({"openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", path(name + ".key"), "-out", path(name + ".csr"), "-subj", "/CN=" + name});
    std::vector<std::string> sign = {"openssl",
                                     "x509",
                                     "-req",
                                     "-in",
                                     path(name + ".csr"),
                                     "-CA",
                                     path("ca.pem"),
                                     "-CAkey",
                                     path("ca.key"),
                                     "-CAcreateserial",
                                     "-out",
                                     path(name + ".pem"),
                                     "-days",
                                     "2"};
    if (server) sign.insert(sign.end(), {"-extfile", path("san.ext")});
    Run(sign);
  }
  std::filesystem::path dir_;
};

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_ = new TempDir();
    WriteRandomCheckpoint(model_->path(), E2eConfig(2), std::random_device{}());
    pki_dir_ = new TempDir();
    pki_ = new TestPki(pki_dir_->path());
  }
  static void TearDownTestSuite() {
    delete pki_;
    delete pki_dir_;
    delete model_;
  }

  static std::unique_ptr<pb::Generation::Stub> TlsStub(const ServerProcess& server,
                                                       bool client_certificate) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = pki_->text("ca.pem");
    if (client_certificate) {
      tls.pem_cert_chain = pki_->text("client.pem");
      tls.pem_private_key = pki_->text("client.key");
    }
    return pb::Generation::NewStub(
        grpc::CreateChannel(server.address(), grpc::SslCredentials(tls)));
  }
  static grpc::Status Info(pb::Generation::Stub& stub, const std::string& token = "",
                           pb::ModelInfo* out = nullptr) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    pb::ModelInfo info;
    return stub.GetModelInfo(&context, {}, out != nullptr ? out : &info);
  }

  static TempDir* model_;
  static TempDir* pki_dir_;
  static TestPki* pki_;
};
TempDir* SecurityTest::model_ = nullptr;
TempDir* SecurityTest::pki_dir_ = nullptr;
TestPki* SecurityTest::pki_ = nullptr;

TEST_F(SecurityTest, TlsServesOnlyOverTls) {
  ServerProcess server(model_->path(), {"--tls_cert=" + pki_->path("server.pem"),
                                        "--tls_key=" + pki_->path("server.key")});
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_TRUE(Info(*TlsStub(server, false)).ok());
  const grpc::Status plaintext = Info(*server.Stub());
  EXPECT_EQ(plaintext.error_code(), grpc::StatusCode::UNAVAILABLE) << plaintext.error_message();
  // gqa-cli over TLS with the test CA.
  auto [code, output] = RunCommand(
      {CliBin(), "--server=" + server.address(), "--tls_ca=" + pki_->path("ca.pem"), "--info"});
  EXPECT_EQ(code, 0) << output;
}

TEST_F(SecurityTest, MutualTlsRequiresAClientCertificateFromTheCa) {
  ServerProcess server(model_->path(), {"--tls_cert=" + pki_->path("server.pem"),
                                        "--tls_key=" + pki_->path("server.key"),
                                        "--tls_client_ca=" + pki_->path("ca.pem")});
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_FALSE(Info(*TlsStub(server, false)).ok());
  EXPECT_TRUE(Info(*TlsStub(server, true)).ok());
}

TEST_F(SecurityTest, BearerTokenGuardsEveryCallButHealth) {
  TempDir dir;
  std::ofstream(dir.path() / "token") << "s3cret-token\n";
  ServerProcess server(model_->path(), {"--auth_token_file=" + (dir.path() / "token").string()});
  ASSERT_TRUE(server.started()) << server.Log();
  auto stub = server.Stub();
  for (const std::string token : {"", "wrong", "s3cret-token-longer"}) {
    const grpc::Status status = Info(*stub, token);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAUTHENTICATED) << token;
    EXPECT_EQ(status.error_message().rfind("authorization:", 0), 0u) << status.error_message();
    EXPECT_EQ(status.error_message().find("s3cret"), std::string::npos);
  }
  EXPECT_TRUE(Info(*stub, "s3cret-token").ok());
  {
    grpc::ClientContext context;
    pb::GenerateRequest request;
    request.mutable_token_ids()->add_ids(1);
    auto reader = stub->Generate(&context, request);
    pb::GenerateResponse response;
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext context;
    pb::TokenizeResponse response;
    EXPECT_EQ(stub->Tokenize(&context, {}, &response).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse serving;
  ASSERT_TRUE(health->Check(&context, {}, &serving).ok());
  EXPECT_EQ(serving.status(), grpc::health::v1::HealthCheckResponse::SERVING);
  auto [code, output] =
      RunCommand({CliBin(), "--server=" + server.address(), "--ids=1,2", "--max_new_tokens=2",
                  "--auth_token_file=" + (dir.path() / "token").string()});
  EXPECT_EQ(code, 0) << output;
}

TEST_F(SecurityTest, ModelPathOnlyWhenAsked) {
  ServerProcess hidden(model_->path(), {});
  ASSERT_TRUE(hidden.started()) << hidden.Log();
  pb::ModelInfo info;
  ASSERT_TRUE(Info(*hidden.Stub(), "", &info).ok());
  EXPECT_EQ(info.model_path(), "");
  ServerProcess exposed(model_->path(), {"--expose_model_path"});
  ASSERT_TRUE(exposed.started()) << exposed.Log();
  ASSERT_TRUE(Info(*exposed.Stub(), "", &info).ok());
  EXPECT_EQ(info.model_path(), model_->path().string());
}

TEST_F(SecurityTest, MetricsCanListenOnLoopbackAlone) {
  ServerProcess server(model_->path(), {"--host=0.0.0.0", "--metrics_host=127.0.0.1"});
  ASSERT_TRUE(server.started()) << server.Log();
  EXPECT_EQ(server.HttpGet("/healthz").first, 200);
}

TEST_F(SecurityTest, APortInUseStopsStartupWithOneLine) {
  ServerProcess first(model_->path(), {});
  ASSERT_TRUE(first.started()) << first.Log();
  const std::string port = first.address().substr(first.address().rfind(':') + 1);
  auto [code, output] =
      RunCommand({"timeout", "60", ServerBin(), "--model=" + model_->path().string(),
                  "--host=127.0.0.1", "--port=" + port, "--metrics_port=0", "--http_port=0"});
  EXPECT_NE(code, 0);
  EXPECT_NE(code, 124) << "a second server started on a port in use";
  EXPECT_NE(output.find("cannot listen for gRPC on 127.0.0.1:" + port +
                        " (is another process using the port?)"),
            std::string::npos)
      << output;
  // The metrics port (bound first) says the same.
  const std::string metrics_port = std::to_string(first.metrics_port());
  std::tie(code, output) = RunCommand(
      {"timeout", "60", ServerBin(), "--model=" + model_->path().string(), "--host=127.0.0.1",
       "--port=0", "--metrics_port=" + metrics_port, "--http_port=0"});
  EXPECT_NE(code, 0);
  EXPECT_NE(code, 124) << "a second server started on a metrics port in use";
  EXPECT_NE(output.find("cannot listen for metrics on 127.0.0.1:" + metrics_port +
                        " (is another process using the port?)"),
            std::string::npos)
      << output;
  EXPECT_TRUE(Info(*first.Stub()).ok());
}

TEST_F(SecurityTest, BadTlsOrTokenFilesStopStartupNamingThem) {
  const std::string key = pki_->path("server.key");
  const struct {
    std::vector<std::string> args;
    std::string expect;
  } cases[] = {
      {{"--tls_cert=/nonexistent/cert.pem", "--tls_key=" + key}, "/nonexistent/cert.pem"},
      {{"--auth_token_file=/nonexistent/token"}, "/nonexistent/token"},
      {{"--tls_cert=" + pki_->path("server.pem")}, "--tls_key"},
      {{"--tls_cert=" + pki_->path("san.ext"), "--tls_key=" + key}, "san.ext: not a PEM file"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> argv = {"timeout",      "60",
                                     ServerBin(),    "--model=" + model_->path().string(),
                                     "--port=0",     "--metrics_port=0",
                                     "--http_port=0"};
    argv.insert(argv.end(), c.args.begin(), c.args.end());
    auto [code, output] = RunCommand(argv);
    EXPECT_NE(code, 0) << c.expect;
    EXPECT_NE(code, 124) << c.expect;
    EXPECT_NE(output.find(c.expect), std::string::npos) << output;
  }
}

}  // namespace
}  // namespace gqa::testing
