#include "net/connection_stream.h"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cstring>

namespace gqa::net {
namespace {

// poll() on one socket: the events that came within `timeout_ms`, 0 on a timeout or an error.
short PollOne(int sock, short events, int timeout_ms) {
  pollfd p{sock, events, 0};
  int n;
  do {
    n = ::poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0 ? p.revents : 0;
}

void NumericAddress(const sockaddr_storage& addr, socklen_t len, std::string& ip, int& port) {
  char host[NI_MAXHOST] = "";
  char service[NI_MAXSERV] = "";
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, host, sizeof host, service,
                  sizeof service, NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
    ip = host;
    port = std::atoi(service);
  }
}

}  // namespace

ConnectionStream::ConnectionStream(int sock, SSL* ssl, int read_timeout_ms, int write_timeout_ms,
                                   size_t max_header_block_bytes)
    : sock_(sock),
      ssl_(ssl),
      read_timeout_ms_(read_timeout_ms),
      write_timeout_ms_(write_timeout_ms),
      max_header_block_bytes_(max_header_block_bytes) {}

void ConnectionStream::BeginRequest() {
  in_header_block_ = true;
  header_bytes_ = 0;
  first_line_ = true;
  line_bytes_ = 0;
  previous_ = 0;
}

bool ConnectionStream::WaitForRequest(int timeout_ms) {
  if (begin_ < end_ || (ssl_ != nullptr && SSL_pending(ssl_) > 0)) return true;
  return PollOne(sock_, POLLIN, timeout_ms) != 0;
}

bool ConnectionStream::SkipHeaderBlock() {
  char dropped[1024];
  while (in_header_block_) {
    if (read(dropped, sizeof dropped) <= 0) return false;
  }
  return true;
}

bool ConnectionStream::WriteAll(absl::string_view bytes) {
  while (!bytes.empty()) {
    const ssize_t n = WriteSome(bytes.data(), bytes.size());
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

void ConnectionStream::CloseWriting() {
  if (ssl_ != nullptr) SSL_shutdown(ssl_);
  ::shutdown(sock_, SHUT_WR);
}

bool ConnectionStream::PeerClosed() const {
  return (PollOne(sock_, POLLRDHUP, 0) & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

bool ConnectionStream::is_readable() const {
  if (begin_ < end_ || (ssl_ != nullptr && SSL_pending(ssl_) > 0)) return true;
  return PollOne(sock_, POLLIN, read_timeout_ms_) != 0;
}

bool ConnectionStream::is_writable() const {
  return (PollOne(sock_, POLLOUT, write_timeout_ms_) & POLLOUT) != 0;
}

ssize_t ConnectionStream::Fill() {
  begin_ = end_ = 0;
  if (!is_readable()) return -1;
  ssize_t n;
  if (ssl_ != nullptr) {
    n = SSL_read(ssl_, buffer_.data(), static_cast<int>(buffer_.size()));
    if (n <= 0) return SSL_get_error(ssl_, static_cast<int>(n)) == SSL_ERROR_ZERO_RETURN ? 0 : -1;
  } else {
    do {
      n = ::recv(sock_, buffer_.data(), buffer_.size(), 0);
    } while (n < 0 && errno == EINTR);
  }
  if (n <= 0) return n;
  end_ = static_cast<size_t>(n);
  return n;
}

size_t ConnectionStream::CountHeaderBytes(const char* bytes, size_t size) {
  for (size_t i = 0; i < size && in_header_block_; ++i) {
    if (++header_bytes_ > max_header_block_bytes_) {
      over_cap_ = true;
      return i;
    }
    ++line_bytes_;
    if (bytes[i] == '\n') {
      // httplib ends the headers at the first line that is exactly "\r\n" after the request line.
      if (!first_line_ && line_bytes_ == 2 && previous_ == '\r') in_header_block_ = false;
      first_line_ = false;
      line_bytes_ = 0;
    }
    previous_ = bytes[i];
  }
  return size;  // the header block ended, or all of it is within the cap
}

ssize_t ConnectionStream::read(char* ptr, size_t size) {
  if (over_cap_) return -1;
  if (begin_ == end_) {
    const ssize_t filled = Fill();
    if (filled <= 0) return filled;
  }
  const size_t available = std::min(size, end_ - begin_);
  const size_t allowed = CountHeaderBytes(buffer_.data() + begin_, available);
  if (allowed == 0) return -1;
  std::memcpy(ptr, buffer_.data() + begin_, allowed);
  begin_ += allowed;
  return static_cast<ssize_t>(allowed);
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
  return over_cap_ ? -1 : WriteSome(ptr, size);
}

ssize_t ConnectionStream::WriteSome(const char* ptr, size_t size) {
  if (size == 0) return 0;
  if (ssl_ != nullptr) {
    const int n = SSL_write(ssl_, ptr, static_cast<int>(std::min<size_t>(size, 1 << 30)));
    return n > 0 ? n : -1;
  }
  if (!is_writable()) return -1;
  ssize_t n;
  do {
    n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}

void ConnectionStream::get_remote_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getpeername(sock_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    NumericAddress(addr, len, ip, port);
  }
}

void ConnectionStream::get_local_ip_and_port(std::string& ip, int& port) const {
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (getsockname(sock_, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    NumericAddress(addr, len, ip, port);
  }
}

}  // namespace gqa::net
