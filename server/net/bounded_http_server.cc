#include "net/bounded_http_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>

#include "absl/strings/str_cat.h"
#include "net/connection_stream.h"

namespace gqa::net {
namespace {

using SteadyClock = std::chrono::steady_clock;

// The stream of the request this thread serves, for PeerClosed.
thread_local const ConnectionStream* current_stream = nullptr;

// Bytes a refused client may still send after its answer before the socket closes: reading them
// lets the answer reach a client that is still writing (closing with unread data resets the
// connection, which can discard the answer on the client's side).
constexpr size_t kLingerBytes = 4 << 20;
constexpr int kLingerMs = 250;
// How long a refused client (every worker busy) may take to send its headers.
constexpr int kRefusalReadMs = 1000;

const char* ReasonPhrase(int status) {
  switch (status) {
    case 431:
      return "Request Header Fields Too Large";
    case 503:
      return "Service Unavailable";
    default:
      return "Error";
  }
}

int Milliseconds(time_t sec, time_t usec) { return static_cast<int>(sec * 1000 + usec / 1000); }

// Reads and drops what the client still sends, at most kLingerBytes for kLingerMs.
void Linger(int sock) {
  const auto deadline = SteadyClock::now() + std::chrono::milliseconds(kLingerMs);
  char dropped[16384];
  for (size_t total = 0; total < kLingerBytes;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) return;
    pollfd p{sock, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return;
    const ssize_t n = ::recv(sock, dropped, sizeof dropped, MSG_DONTWAIT);
    if (n <= 0) return;
    total += static_cast<size_t>(n);
  }
}

void CloseSocket(int sock) {
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
}

// The TLS handshake, within `timeout_ms`; null when it fails.
SSL* AcceptTls(SSL_CTX* context, int sock, int timeout_ms) {
  SSL* ssl = SSL_new(context);
  if (ssl == nullptr) return nullptr;
  SSL_set_fd(ssl, sock);
  const int flags = fcntl(sock, F_GETFL, 0);
  fcntl(sock, F_SETFL, flags | O_NONBLOCK);
  const auto deadline = SteadyClock::now() + std::chrono::milliseconds(timeout_ms);
  bool accepted = false;
  while (true) {
    const int result = SSL_accept(ssl);
    if (result == 1) {
      accepted = true;
      break;
    }
    const int error = SSL_get_error(ssl, result);
    if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) break;
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
    if (left.count() <= 0) break;
    pollfd p{sock, static_cast<short>(error == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
  }
  fcntl(sock, F_SETFL, flags);
  if (!accepted) {
    SSL_free(ssl);
    return nullptr;
  }
  return ssl;
}

// httplib's bind, then the listening socket's backlog widened (listen() again updates it).
int BindAndListen(httplib::Server& server, const std::atomic<socket_t>& listening,
                  const std::string& host, int port) {
  const int bound =
      port == 0 ? server.bind_to_any_port(host) : (server.bind_to_port(host, port) ? port : -1);
  if (bound >= 0) ::listen(listening, kListenBacklog);
  return bound;
}

}  // namespace

void ConnectionServing::InstallTaskQueue(httplib::Server& server) const {
  const size_t threads = options_.workers + (options_.refuse_when_busy ? kRefusalThreads : 0);
  server.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
}

bool ConnectionServing::Serve(int sock, SSL* ssl, const std::atomic<socket_t>& listening,
                              const Timeouts& timeouts, const ProcessRequest& process) {
  const bool busy = serving_.fetch_add(1) >= options_.workers;
  bool result = false;
  if (busy && options_.refuse_when_busy) {
    ConnectionStream stream(sock, ssl, kRefusalReadMs, timeouts.write_ms, kMaxHeaderBlockBytes);
    if (stream.SkipHeaderBlock()) {
      Refuse(stream, 503,
             absl::StrCat("server: all ", options_.workers,
                          " HTTP connections are busy; retry shortly"));
    }
  } else {
    ConnectionStream stream(sock, ssl, timeouts.read_ms, timeouts.write_ms, kMaxHeaderBlockBytes);
    current_stream = &stream;
    result = ServeRequests(stream, listening, timeouts, process);
    current_stream = nullptr;
  }
  serving_.fetch_sub(1);
  return result;
}

bool ConnectionServing::ServeRequests(ConnectionStream& stream,
                                      const std::atomic<socket_t>& listening,
                                      const Timeouts& timeouts, const ProcessRequest& process) {
  bool result = false;
  for (size_t left = timeouts.keep_alive_max_count; left > 0; --left) {
    // Waits for the next request in slices, so that a stopping server does not wait a whole
    // keep-alive timeout.
    bool arrived = false;
    for (int waited = 0; waited < timeouts.keep_alive_ms && !arrived; waited += 50) {
      if (listening == INVALID_SOCKET) return result;
      arrived = stream.WaitForRequest(std::min(50, timeouts.keep_alive_ms - waited));
    }
    if (!arrived || listening == INVALID_SOCKET) return result;
    stream.BeginRequest();
    bool closed = false;
    result = process(stream, left == 1, closed);
    if (stream.header_block_over_cap()) {
      Refuse(stream, 431,
             absl::StrCat("headers: the request line and headers are over ", kMaxHeaderBlockBytes,
                          " bytes"));
      return false;
    }
    if (!result || closed) return result;
  }
  return result;
}

void ConnectionServing::Refuse(ConnectionStream& stream, int status,
                               absl::string_view message) const {
  const bool formatted = static_cast<bool>(options_.refusal.format);
  const std::string body =
      formatted ? options_.refusal.format(status, message) : absl::StrCat(message, "\n");
  const std::string& type = formatted ? options_.refusal.content_type : "text/plain";
  stream.WriteAll(absl::StrCat("HTTP/1.1 ", status, " ", ReasonPhrase(status),
                               "\r\nContent-Type: ", type, "\r\nContent-Length: ", body.size(),
                               status == 503 ? "\r\nRetry-After: 1" : "",
                               "\r\nConnection: close\r\n\r\n", body));
  stream.CloseWriting();
  Linger(stream.socket());
}

BoundedServer::BoundedServer(ConnectionOptions options) : connections_(std::move(options)) {
  connections_.InstallTaskQueue(*this);
}

int BoundedServer::BindAndListen(const std::string& host, int port) {
  return net::BindAndListen(*this, svr_sock_, host, port);
}

bool BoundedServer::process_and_close_socket(socket_t sock) {
  const ConnectionServing::Timeouts timeouts{Milliseconds(read_timeout_sec_, read_timeout_usec_),
                                             Milliseconds(write_timeout_sec_, write_timeout_usec_),
                                             static_cast<int>(keep_alive_timeout_sec_ * 1000),
                                             keep_alive_max_count_};
  const bool result = connections_.Serve(
      sock, nullptr, svr_sock_, timeouts,
      [this](httplib::Stream& stream, bool close_connection, bool& connection_closed) {
        return process_request(stream, close_connection, connection_closed, nullptr);
      });
  CloseSocket(sock);
  return result;
}

BoundedSslServer::BoundedSslServer(ConnectionOptions options, const char* cert_file,
                                   const char* key_file, const char* client_ca_file)
    : httplib::SSLServer(cert_file, key_file, client_ca_file), connections_(std::move(options)) {
  connections_.InstallTaskQueue(*this);
}

int BoundedSslServer::BindAndListen(const std::string& host, int port) {
  return net::BindAndListen(*this, svr_sock_, host, port);
}

bool BoundedSslServer::process_and_close_socket(socket_t sock) {
  const ConnectionServing::Timeouts timeouts{Milliseconds(read_timeout_sec_, read_timeout_usec_),
                                             Milliseconds(write_timeout_sec_, write_timeout_usec_),
                                             static_cast<int>(keep_alive_timeout_sec_ * 1000),
                                             keep_alive_max_count_};
  bool result = false;
  if (SSL* ssl = AcceptTls(ssl_context(), sock, timeouts.read_ms)) {
    result = connections_.Serve(
        sock, ssl, svr_sock_, timeouts,
        [this, ssl](httplib::Stream& stream, bool close_connection, bool& connection_closed) {
          return process_request(stream, close_connection, connection_closed,
                                 [ssl](httplib::Request& req) { req.ssl = ssl; });
        });
    SSL_shutdown(ssl);  // close_notify
    SSL_free(ssl);
  }
  CloseSocket(sock);
  return result;
}

bool PeerClosed() { return current_stream != nullptr && current_stream->PeerClosed(); }

}  // namespace gqa::net
