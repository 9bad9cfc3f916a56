#include "metrics/http_server.h"

#include <sys/socket.h>

#include "absl/strings/str_cat.h"
#include "httplib.h"
#include "metrics/registry.h"
#include "net/bounded_http_server.h"

namespace gqa {

MetricsHttpServer::MetricsHttpServer(const MetricsRegistry* registry,
                                     std::function<bool()> is_serving)
    : registry_(registry),
      is_serving_(std::move(is_serving)),
      // Each request's headers capped at net::kMaxHeaderBlockBytes (431 past it).
      server_(std::make_unique<net::BoundedServer>(net::ConnectionOptions{
          .workers = kWorkerThreads, .refuse_when_busy = false, .refusal = {}})) {
  // Probes must get through whatever else connects: no request bodies (a large POST is refused
  // before it is read), idle or slow connections let go after 0.5 s, and enough workers that a
  // few of them cannot hold every thread.
  server_->set_payload_max_length(kMaxBodyBytes);
  server_->set_read_timeout(0, 500000);
  server_->set_write_timeout(5, 0);
  server_->set_keep_alive_timeout(1);  // seconds
  server_->set_keep_alive_max_count(100);
  // SO_REUSEADDR only: httplib's default SO_REUSEPORT would let a second server share the port.
  server_->set_socket_options([](int sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  });
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(registry_->RenderText(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
    const bool serving = is_serving_();
    res.status = serving ? 200 : 503;
    res.set_content(serving ? "ok\n" : "not serving\n", "text/plain");
  });
}

MetricsHttpServer::~MetricsHttpServer() { Stop(); }

absl::StatusOr<int> MetricsHttpServer::Start(const std::string& host, int port) {
  const int bound = server_->BindAndListen(host, port);
  if (bound < 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen for metrics on ", host, ":", port,
                                               " (is another process using the port?)"));
  }
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void MetricsHttpServer::Stop() {
  if (thread_.joinable()) {
    server_->stop();
    thread_.join();
  }
}

}  // namespace gqa
