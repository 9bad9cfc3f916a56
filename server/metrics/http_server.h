// Serves /metrics (Prometheus text) and /healthz over HTTP on its own thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"

namespace gqa {
namespace net {
class BoundedServer;
}

class MetricsRegistry;

class MetricsHttpServer {
 public:
  static constexpr size_t kMaxBodyBytes = 1024;
  static constexpr size_t kWorkerThreads = 64;

  // is_serving decides /healthz: 200 "ok" or 503 "not serving".
  MetricsHttpServer(const MetricsRegistry* registry, std::function<bool()> is_serving);
  ~MetricsHttpServer();

  // Binds host:port (port 0 picks a free one) and starts serving; returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  const MetricsRegistry* registry_;
  std::function<bool()> is_serving_;
  std::unique_ptr<net::BoundedServer> server_;
  std::thread thread_;
};

}  // namespace gqa
