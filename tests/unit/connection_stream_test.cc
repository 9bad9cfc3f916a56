// net::ConnectionStream over a socketpair: the header block of each request is counted up to its
// blank line and capped; the body after it is not; the peer's close is seen.
#include "net/connection_stream.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

namespace gqa::net {
namespace {

class ConnectionStreamTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds_), 0); }
  void TearDown() override {
    for (int fd : fds_) {
      if (fd >= 0) close(fd);
    }
  }
  void Send(const std::string& bytes) {
    ASSERT_EQ(write(fds_[1], bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  }
  // Reads up to `size` bytes one read at a time until a read fails or ends.
  static std::string ReadAll(ConnectionStream& stream, size_t size) {
    std::string out;
    char chunk[100];
    while (out.size() < size) {
      const ssize_t n = stream.read(chunk, std::min(sizeof chunk, size - out.size()));
      if (n <= 0) break;
      out.append(chunk, static_cast<size_t>(n));
    }
    return out;
  }

  int fds_[2] = {-1, -1};
};

TEST_F(ConnectionStreamTest, TheBodyAfterTheHeadersIsNotCounted) {
  ConnectionStream stream(fds_[0], nullptr, 200, 200, /*max_header_block_bytes=*/64);
  const std::string head = "POST / HTTP/1.1\r\nA: b\r\n\r\n";  // 26 bytes
  const std::string body(1000, 'x');
  Send(head + body);
  stream.BeginRequest();
  EXPECT_EQ(ReadAll(stream, head.size() + body.size()), head + body);
  EXPECT_FALSE(stream.header_block_over_cap());
}

TEST_F(ConnectionStreamTest, HeadersPastTheCapFailTheReadAndEveryWrite) {
  ConnectionStream stream(fds_[0], nullptr, 200, 200, /*max_header_block_bytes=*/64);
  std::string head = "GET / HTTP/1.1\r\n";
  while (head.size() < 200) head += "a: b\r\n";
  Send(head);
  stream.BeginRequest();
  EXPECT_EQ(ReadAll(stream, head.size()), head.substr(0, 64));
  EXPECT_TRUE(stream.header_block_over_cap());
  char byte;
  EXPECT_EQ(stream.read(&byte, 1), -1);
  EXPECT_EQ(stream.write("x", 1), -1);  // httplib's own 400 is not sent
  EXPECT_TRUE(stream.WriteAll("431"));  // the refusal is
}

TEST_F(ConnectionStreamTest, EachRequestIsCountedFromZero) {
  ConnectionStream stream(fds_[0], nullptr, 200, 200, /*max_header_block_bytes=*/40);
  const std::string first = "GET /a HTTP/1.1\r\nX: 12345678\r\n\r\n";  // 32 bytes
  const std::string second = "GET /b HTTP/1.1\r\nX: 1234567\r\n\r\n";  // 31 bytes
  Send(first + second);
  stream.BeginRequest();
  EXPECT_EQ(ReadAll(stream, first.size()), first);
  stream.BeginRequest();
  EXPECT_EQ(ReadAll(stream, second.size()), second);
  EXPECT_FALSE(stream.header_block_over_cap());
}

TEST_F(ConnectionStreamTest, AnEmptyFirstLineDoesNotEndTheHeaderBlock) {
  // httplib ends the headers at the first "\r\n" line after the request line; an empty request
  // line is refused (400) without ending them.
  ConnectionStream stream(fds_[0], nullptr, 200, 200, /*max_header_block_bytes=*/30);
  const std::string head = "\r\nGET /b HTTP/1.1\r\nX: 12345678901234567890\r\n\r\n";  // 46
  Send(head);
  stream.BeginRequest();
  EXPECT_EQ(ReadAll(stream, head.size()), head.substr(0, 30));
  EXPECT_TRUE(stream.header_block_over_cap());
}

TEST_F(ConnectionStreamTest, SeesThePeerClose) {
  ConnectionStream stream(fds_[0], nullptr, 200, 200, 64);
  EXPECT_FALSE(stream.PeerClosed());
  close(fds_[1]);
  fds_[1] = -1;
  EXPECT_TRUE(stream.PeerClosed());
  char byte;
  EXPECT_EQ(stream.read(&byte, 1), 0);  // the end of the stream, not an error
}

}  // namespace
}  // namespace gqa::net
