// One client connection of a cpp-httplib server, read and written by gqa-serve itself (plain TCP
// or TLS): httplib 0.11 reads a request through an httplib::Stream, and this one counts the bytes
// of each request's header block (the request line and the headers, up to the blank line) and
// fails the read past a cap, so that no client can make the server hold more than the cap of
// headers. What follows the header block (the body) is not counted: the body has its own limit.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"
#include "httplib.h"

namespace gqa::net {

class ConnectionStream : public httplib::Stream {
 public:
  // `ssl` null: plain TCP. The socket's read and write timeouts (SO_RCVTIMEO, SO_SNDTIMEO) are
  // httplib's, set when it accepted the connection; `read_timeout_ms` also bounds each wait
  // for data here.
  ConnectionStream(int sock, SSL* ssl, int read_timeout_ms, int write_timeout_ms,
                   size_t max_header_block_bytes);

  // A new request starts: its header block is counted from zero.
  void BeginRequest();
  // True once a request's header block went past the cap: every read and every write of httplib
  // fails from then on (its 400 is not sent), WriteAll still writes (the 431).
  bool header_block_over_cap() const { return over_cap_; }
  // Whether a request's first byte arrives within `timeout_ms` (keep-alive): false when the
  // client closes or stays idle.
  bool WaitForRequest(int timeout_ms);
  // Reads and drops the rest of the header block: true once it ended, false on a timeout, an
  // error or the cap.
  bool SkipHeaderBlock();
  // Writes all of `bytes` (false: the client is gone).
  bool WriteAll(absl::string_view bytes);
  // Ends the server's sending side (TLS close_notify, then the TCP FIN).
  void CloseWriting();
  // True when the client has closed its side (or reset the connection). A client that only shuts
  // down its writing half counts as gone too.
  bool PeerClosed() const;

  // httplib::Stream
  bool is_readable() const override;
  bool is_writable() const override;
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override;
  void get_local_ip_and_port(std::string& ip, int& port) const override;
  socket_t socket() const override { return sock_; }

 private:
  // Refills the buffer from the socket (waits up to the read timeout): the bytes read, 0 at the
  // end of the stream, -1 on an error or a timeout.
  ssize_t Fill();
  // One send (or SSL_write): the bytes written, -1 when the client is gone or too slow.
  ssize_t WriteSome(const char* ptr, size_t size);
  // Counts `bytes` of header block; how many of them may be handed out (fewer past the cap).
  size_t CountHeaderBytes(const char* bytes, size_t size);

  const int sock_;
  SSL* const ssl_;
  const int read_timeout_ms_;
  const int write_timeout_ms_;
  const size_t max_header_block_bytes_;

  std::array<char, 4096> buffer_{};
  size_t begin_ = 0, end_ = 0;  // buffer_[begin_, end_) is read but not handed out

  // The header block of the current request.
  bool in_header_block_ = true;
  bool over_cap_ = false;
  size_t header_bytes_ = 0;
  bool first_line_ = true;  // the request line
  size_t line_bytes_ = 0;   // bytes of the current line so far
  char previous_ = 0;
};

}  // namespace gqa::net
