// cpp-httplib servers (plain and TLS) that serve each connection themselves, through
// ConnectionStream, instead of through httplib's own socket loop (httplib 0.11 lets a derived
// class override process_and_close_socket). What that adds to httplib:
//   - one request's header block (request line and headers) is capped at kMaxHeaderBlockBytes:
//     past it the client gets 431 and the connection closes;
//   - a handler can ask whether its client is still there (PeerClosed), so that a request that
//     answers only at its end can be cancelled when the client leaves;
//   - optionally, a connection that finds every worker busy gets 503 at once instead of waiting
//     without bound in httplib's queue.
// The keep-alive loop, timeouts and request handling are httplib's (Server::process_request).
#pragma once

#include <atomic>
#include <cstddef>
#include <functional>
#include <string>
#include "absl/strings/string_view.h"

#include "httplib.h"

namespace gqa::net {

// The most bytes of one request's request line and headers. httplib 0.11 caps each header line
// at 8 KiB but not how many there are (measured before this cap: 50 MB of header lines cost the
// server ~100 MB of resident memory). Browsers and HTTP clients send a few KiB at most.
inline constexpr size_t kMaxHeaderBlockBytes = 64 << 10;
// Connections the kernel holds for accept(): httplib 0.11 listens with a backlog of 5, so a burst
// of new connections (a load generator opening 64 streams) overflows it and clients wait for
// their SYN's retransmission (1 s, then 3 s). The kernel caps it at net.core.somaxconn.
inline constexpr int kListenBacklog = 4096;
// Threads beside the workers that only refuse connections (503) while every worker is busy.
inline constexpr size_t kRefusalThreads = 4;

// The body of a refusal written outside httplib's handlers (431, 503), from its HTTP status and
// its message; empty: the message as text/plain.
struct RefusalBody {
  std::function<std::string(int status, absl::string_view message)> format;
  std::string content_type = "application/json";
};

struct ConnectionOptions {
  size_t workers = 64;  // connections served at once, each on its own thread
  // A connection that finds every worker busy: true, 503 at once (on one of kRefusalThreads);
  // false, it waits for a worker.
  bool refuse_when_busy = false;
  RefusalBody refusal;
};

// What both servers share: the worker count and the connection loop.
class ConnectionServing {
 public:
  explicit ConnectionServing(ConnectionOptions options) : options_(std::move(options)) {}

  // httplib's task queue for `server`: the workers (and the refusal threads).
  void InstallTaskQueue(httplib::Server& server) const;

  struct Timeouts {
    int read_ms, write_ms, keep_alive_ms;
    size_t keep_alive_max_count;
  };
  // One request on `stream`: httplib's Server::process_request.
  using ProcessRequest =
      std::function<bool(httplib::Stream& stream, bool close_connection, bool& connection_closed)>;
  // Serves the connection's requests until it closes, the server stops (`listening` becomes
  // INVALID_SOCKET) or keep-alive ends; does not close the socket.
  bool Serve(int sock, SSL* ssl, const std::atomic<socket_t>& listening, const Timeouts& timeouts,
             const ProcessRequest& process);

 private:
  bool ServeRequests(class ConnectionStream& stream, const std::atomic<socket_t>& listening,
                     const Timeouts& timeouts, const ProcessRequest& process);
  void Refuse(ConnectionStream& stream, int status, absl::string_view message) const;

  const ConnectionOptions options_;
  std::atomic<size_t> serving_{0};  // connections on a worker now
};

class BoundedServer final : public httplib::Server {
 public:
  explicit BoundedServer(ConnectionOptions options);
  // Binds host:port (0 picks a free port) and listens with kListenBacklog: the bound port, or -1.
  // Use it instead of bind_to_port and bind_to_any_port.
  int BindAndListen(const std::string& host, int port);

 private:
  bool process_and_close_socket(socket_t sock) override;
  ConnectionServing connections_;
};

class BoundedSslServer final : public httplib::SSLServer {
 public:
  // As httplib::SSLServer: PEM files; `client_ca_file` (may be null) requires client
  // certificates that it signed.
  BoundedSslServer(ConnectionOptions options, const char* cert_file, const char* key_file,
                   const char* client_ca_file);
  // As BoundedServer::BindAndListen.
  int BindAndListen(const std::string& host, int port);

 private:
  bool process_and_close_socket(socket_t sock) override;
  ConnectionServing connections_;
};

// True when the client of the request this thread is serving (in a handler of a BoundedServer or
// BoundedSslServer) has closed its connection or shut down its sending side; false while it is
// there, or when this thread serves no request.
bool PeerClosed();

}  // namespace gqa::net
