#include "server_process.h"

#include "common/test_checkpoint.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <random>
#include <ranges>
#include <regex>
#include <sstream>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "httplib.h"

namespace gqa::testing {
namespace {

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

pid_t Spawn(const std::vector<std::string>& argv, const std::filesystem::path& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    FILE* out = std::fopen(log.c_str(), "w");
    if (out) {
      dup2(fileno(out), 1);
      dup2(fileno(out), 2);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());  // a bare name is looked up in PATH
    _exit(127);
  }
  return pid;
}

std::filesystem::path TempPath(const std::string& stem) {
  std::random_device rd;
  return std::filesystem::temp_directory_path() /
         (stem + std::to_string(rd()) + std::to_string(rd()));
}

}  // namespace

std::string ServerBin() {
  const char* bin = std::getenv("GQA_SERVER_BIN");
  return bin ? bin : GQA_SERVER_BIN;
}

std::string CliBin() {
  const char* bin = std::getenv("GQA_CLI_BIN");
  return bin ? bin : GQA_CLI_BIN;
}

std::string MakeCheckpointBin() {
  const char* bin = std::getenv("GQA_MAKE_CHECKPOINT_BIN");
  return bin ? bin : GQA_MAKE_CHECKPOINT_BIN;
}

std::string E2eBackend() {
  const char* backend = std::getenv("GQA_E2E_BACKEND");
  return backend && *backend ? backend : "cpu";
}

std::vector<std::string> SmallPoolArgs() {
  if (E2eBackend() == "cpu") return {"--num_kv_blocks=10", "--block_size=8"};
  return {"--num_kv_blocks=5", "--block_size=16"};
}

ModelConfig E2eConfig(int num_kv_heads) {
  ModelConfig c = TinyConfig(num_kv_heads);
  if (E2eBackend() != "cpu") {
    c.hidden_size = 512;
    c.intermediate_size = 1024;
    c.head_dim = 64;
  }
  return c;
}

ServerProcess::ServerProcess(const std::filesystem::path& model_dir,
                             const std::vector<std::string>& extra_args, Until until)
    : log_path_(TempPath("gqa-server-log-")), port_path_(TempPath("gqa-server-ports-")) {
  std::vector<std::string> argv = {ServerBin(),
                                   "--model=" + model_dir.string(),
                                   "--host=127.0.0.1",
                                   "--port=0",
                                   "--metrics_port=0",
                                   "--http_port=0",
                                   "--port_file=" + port_path_.string(),
                                   "--cpu_threads=2"};
  // The CPU backend unless GQA_E2E_BACKEND names another (cuda on the GPU machine), which then
  // runs in deterministic mode (the tests assert outputs identical alone and batched) with a
  // small pool, so that several servers share the GPU.
  argv.push_back("--backend=" + E2eBackend());
  if (E2eBackend() != "cpu") {
    argv.push_back("--deterministic");
    argv.push_back("--kv_cache_memory=256MiB");
  }
  // GQA_E2E_KV_CACHE_DTYPE=fp8_e4m3 runs every server with an FP8 KV cache (the same assertions:
  // outputs identical alone and batched, streams, limits).
  if (const char* kv = std::getenv("GQA_E2E_KV_CACHE_DTYPE"); kv && *kv) {
    argv.push_back(std::string("--kv_cache_dtype=") + kv);
  }
  // GQA_E2E_TENSOR_PARALLEL_SIZE=2 splits every server's model across that many GPUs (with
  // GQA_E2E_BACKEND=cuda, on a machine with as many; the demo model splits in 2, not 4).
  if (const char* tp = std::getenv("GQA_E2E_TENSOR_PARALLEL_SIZE"); tp && *tp) {
    argv.push_back(std::string("--tensor_parallel_size=") + tp);
  }
  argv.insert(argv.end(), extra_args.begin(), extra_args.end());
  pid_ = Spawn(argv, log_path_);
  if (until == Until::kServing) {
    WaitUntilServing();
    return;
  }
  // The server logs "listening: grpc :<port>, metrics :<port>; loading ..." before it loads.
  const std::regex listening("listening: grpc :([0-9]+), metrics :([0-9]+)");
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline && pid_ > 0) {
    std::smatch m;
    const std::string log = ReadFile(log_path_);
    if (std::regex_search(log, m, listening)) {
      grpc_port_ = std::stoi(m[1]);
      metrics_port_ = std::stoi(m[2]);
      return;
    }
    if (waitpid(pid_, nullptr, WNOHANG) == pid_) pid_ = -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

bool ServerProcess::WaitUntilServing(int timeout_seconds) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  while (std::chrono::steady_clock::now() < deadline && pid_ > 0) {
    std::ifstream ports(port_path_);
    int grpc_port = 0, metrics_port = 0;
    if (ports >> grpc_port >> metrics_port) {
      grpc_port_ = grpc_port;
      metrics_port_ = metrics_port;
      return true;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) pid_ = -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  std::error_code ec;
  std::filesystem::remove(log_path_, ec);
  std::filesystem::remove(port_path_, ec);
}

std::unique_ptr<gqa::v1::Generation::Stub> ServerProcess::Stub() const {
  return gqa::v1::Generation::NewStub(
      grpc::CreateChannel(address(), grpc::InsecureChannelCredentials()));
}

std::pair<int, std::string> ServerProcess::HttpGet(const std::string& path) const {
  httplib::Client client("127.0.0.1", metrics_port_);
  auto res = client.Get(path);
  if (!res) return {0, ""};
  return {res->status, res->body};
}

double ServerProcess::Metric(const std::string& name_and_labels) const {
  std::istringstream text(HttpGet("/metrics").second);
  std::string line;
  while (std::getline(text, line)) {
    if (line.rfind(name_and_labels + " ", 0) == 0) {
      return std::stod(line.substr(name_and_labels.size() + 1));
    }
  }
  return -1;
}

int ServerProcess::Terminate(int timeout_seconds) {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
  while (std::chrono::steady_clock::now() < deadline) {
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

std::string ServerProcess::Log() const { return ReadFile(log_path_); }

std::pair<int, std::string> RunCommand(const std::vector<std::string>& argv) {
  const auto log = TempPath("gqa-cmd-");
  const pid_t pid = Spawn(argv, log);
  int status = 0;
  waitpid(pid, &status, 0);
  std::string out = ReadFile(log);
  std::filesystem::remove(log);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::vector<std::string> ErrorLines(const std::string& log) {
  std::vector<std::string> errors;
  for (const auto line : std::views::split(log, '\n')) {
    const std::string text(line.begin(), line.end());
    if (text.find(" error ") != std::string::npos) errors.push_back(text);
  }
  return errors;
}

}  // namespace gqa::testing
