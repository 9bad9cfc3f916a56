// Starts the built gqa-server binary on free loopback ports and stops it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "gqa/v1/generation.grpc.pb.h"
#include "model/config.h"

namespace gqa::testing {

class ServerProcess {
 public:
  enum class Until { kServing, kListening };
  // Starts `gqa-server --model model_dir <extra_args>` and waits until it serves (or, with
  // kListening, only until its ports are open, while the model may still be loading).
  ServerProcess(const std::filesystem::path& model_dir, const std::vector<std::string>& extra_args,
                Until until = Until::kServing);
  ~ServerProcess();

  bool started() const { return grpc_port_ > 0; }
  // Waits until the server writes its port file, i.e. serves; false on a timeout or an exit.
  bool WaitUntilServing(int timeout_seconds = 60);
  std::string address() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  int metrics_port() const { return metrics_port_; }
  std::unique_ptr<gqa::v1::Generation::Stub> Stub() const;
  // GET http://127.0.0.1:<metrics port><path>; returns {status, body}.
  std::pair<int, std::string> HttpGet(const std::string& path) const;
  // The value of a metric line "name{labels} value" (exact prefix before the value), or -1.
  double Metric(const std::string& name_and_labels) const;
  // Sends SIGTERM; returns the exit code (or -1 on a crash or a timeout).
  int Terminate(int timeout_seconds = 60);
  std::string Log() const;
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  std::filesystem::path log_path_;
  std::filesystem::path port_path_;
};

// The binaries under test: this build's, or $GQA_SERVER_BIN / $GQA_CLI_BIN /
// $GQA_MAKE_CHECKPOINT_BIN (a packed copy on the GPU machine).
std::string ServerBin();
std::string CliBin();
std::string MakeCheckpointBin();

// The backend the tests run against: $GQA_E2E_BACKEND, or cpu.
std::string E2eBackend();

// Server flags for a KV pool of 80 tokens, which a few concurrent requests overflow (the CUDA
// kernels need blocks of a multiple of 16 tokens).
std::vector<std::string> SmallPoolArgs();

// The tests' small model: TinyConfig, with head_dim 64 (hidden 512) against the CUDA backend,
// whose kernels start there.
ModelConfig E2eConfig(int num_kv_heads);

// Runs a command to completion; returns its exit code and merged output.
std::pair<int, std::string> RunCommand(const std::vector<std::string>& argv);

// The lines of a server's log at error level (spdlog's " error " field): a refused startup must
// print exactly one.
std::vector<std::string> ErrorLines(const std::string& log);

}  // namespace gqa::testing
