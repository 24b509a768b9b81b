// Unit tests for vhostd/vhost/endpoint.hpp: UnixListener (stale / live / foreign paths, mode,
// cleanup) and client-mode connect_unix / connect_with_retry.
#include "vhostd/vhost/endpoint.hpp"

#include <fcntl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/base/log.hpp"

namespace vhostd {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

class EndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vhostd-ep-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/vhost.sock";
    saved_level_ = log_level();
    set_log_level(LogLevel::warning);
  }
  void TearDown() override {
    set_log_level(saved_level_);
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
  }

  bool exists(const std::string& p) const {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
  }

  // A socket file with nobody listening: bind + listen, then close without unlinking.
  void make_stale_socket() {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ASSERT_EQ(::listen(fd, 1), 0);
    ::close(fd);
  }

  static bool wait_readable(int fd, int timeout_ms) {
    pollfd pfd{fd, POLLIN, 0};
    return ::poll(&pfd, 1, timeout_ms) == 1;
  }

  static int fd_flags(int fd) { return ::fcntl(fd, F_GETFL); }
  static int fd_fdflags(int fd) { return ::fcntl(fd, F_GETFD); }

  std::string dir_;
  std::string path_;
  LogLevel saved_level_ = LogLevel::info;
};

TEST_F(EndpointTest, ListenConnectAcceptRoundTrip) {
  UnixListener listener = UnixListener::listen(path_);
  EXPECT_EQ(listener.path(), path_);
  EXPECT_TRUE(fd_flags(listener.fd()) & O_NONBLOCK);
  EXPECT_TRUE(fd_fdflags(listener.fd()) & FD_CLOEXEC);

  EXPECT_FALSE(listener.accept().valid());  // nothing pending: EAGAIN -> invalid

  UniqueFd client = connect_unix(path_);
  ASSERT_TRUE(client.valid());
  EXPECT_FALSE(fd_flags(client.get()) & O_NONBLOCK);
  EXPECT_TRUE(fd_fdflags(client.get()) & FD_CLOEXEC);

  ASSERT_TRUE(wait_readable(listener.fd(), 1000));
  UniqueFd server = listener.accept();
  ASSERT_TRUE(server.valid());
  EXPECT_TRUE(fd_flags(server.get()) & O_NONBLOCK);
  EXPECT_TRUE(fd_fdflags(server.get()) & FD_CLOEXEC);

  const char ping[] = "ping";
  ASSERT_EQ(::write(client.get(), ping, sizeof ping), static_cast<ssize_t>(sizeof ping));
  ASSERT_TRUE(wait_readable(server.get(), 1000));
  char buf[16] = {};
  ASSERT_EQ(::read(server.get(), buf, sizeof buf), static_cast<ssize_t>(sizeof ping));
  EXPECT_STREQ(buf, "ping");

  const char pong[] = "pong";
  ASSERT_EQ(::write(server.get(), pong, sizeof pong), static_cast<ssize_t>(sizeof pong));
  ASSERT_EQ(::read(client.get(), buf, sizeof buf), static_cast<ssize_t>(sizeof pong));
  EXPECT_STREQ(buf, "pong");
}

TEST_F(EndpointTest, StaleSocketIsReplaced) {
  make_stale_socket();
  ASSERT_TRUE(exists(path_));
  UnixListener listener = UnixListener::listen(path_);
  UniqueFd client = connect_unix(path_);
  ASSERT_TRUE(wait_readable(listener.fd(), 1000));
  EXPECT_TRUE(listener.accept().valid());
}

TEST_F(EndpointTest, LiveListenerIsAnError) {
  UnixListener first = UnixListener::listen(path_);
  try {
    UnixListener second = UnixListener::listen(path_);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path_));
    EXPECT_THAT(e.what(), HasSubstr("path in use by a live listener"));
  }
  // The first listener still works and still owns the path.
  ASSERT_TRUE(exists(path_));
  UniqueFd client = connect_unix(path_);
  ASSERT_TRUE(wait_readable(first.fd(), 1000));
  EXPECT_TRUE(first.accept().valid());
}

TEST_F(EndpointTest, LiveListenerWithFullBacklogIsStillLive) {
  UnixListener first = UnixListener::listen(path_, ListenOptions{.mode = {}, .backlog = 1});
  // Fill the backlog with clients nobody accepts.
  std::vector<UniqueFd> clients;
  for (int i = 0; i < 4; ++i) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    clients.emplace_back(fd);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strcpy(addr.sun_path, path_.c_str());
    (void)::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  }
  EXPECT_THROW(UnixListener::listen(path_), Error);
  EXPECT_TRUE(exists(path_));
}

TEST_F(EndpointTest, RegularFileIsAnErrorAndIsKept) {
  { std::ofstream(path_) << "precious"; }
  try {
    UnixListener listener = UnixListener::listen(path_);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path_));
    EXPECT_THAT(e.what(), HasSubstr("not a socket"));
  }
  std::ifstream in(path_);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(EndpointTest, DirectoryIsAnError) {
  ASSERT_EQ(::mkdir(path_.c_str(), 0700), 0);
  EXPECT_THROW(UnixListener::listen(path_), Error);
  struct stat st {};
  ASSERT_EQ(::stat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  ::rmdir(path_.c_str());
}

TEST_F(EndpointTest, PathTooLongIsAnError) {
  std::string long_path = dir_ + "/" + std::string(200, 'x');
  try {
    UnixListener::listen(long_path);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("at most 107"));
  }
  EXPECT_THROW(connect_unix(long_path), Error);
  EXPECT_THROW(connect_with_retry(long_path, 100ms), Error);
}

TEST_F(EndpointTest, ModeIsApplied) {
  UnixListener listener = UnixListener::listen(path_, ListenOptions{.mode = 0660});
  struct stat st {};
  ASSERT_EQ(::lstat(path_.c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0660u);

  UnixListener other = UnixListener::listen(path_ + "2", ListenOptions{.mode = 0600});
  ASSERT_EQ(::lstat((path_ + "2").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(EndpointTest, DestructorRemovesPath) {
  {
    UnixListener listener = UnixListener::listen(path_);
    EXPECT_TRUE(exists(path_));
  }
  EXPECT_FALSE(exists(path_));
}

TEST_F(EndpointTest, MovedListenerRemovesPathOnce) {
  std::optional<UnixListener> outer;
  {
    UnixListener listener = UnixListener::listen(path_);
    outer.emplace(std::move(listener));
  }
  EXPECT_TRUE(exists(path_));  // the moved-from listener did not unlink
  outer.reset();
  EXPECT_FALSE(exists(path_));
}

TEST_F(EndpointTest, DestructorLeavesAReplacedPathAlone) {
  {
    UnixListener listener = UnixListener::listen(path_);
    // Someone replaces the socket with their own file.
    ASSERT_EQ(::unlink(path_.c_str()), 0);
    std::ofstream(path_) << "theirs";
  }
  EXPECT_TRUE(exists(path_));
}

TEST_F(EndpointTest, ConnectUnixErrorNamesPathAndErrno) {
  try {
    connect_unix(path_);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(path_));
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ENOENT)));
  }
  make_stale_socket();
  try {
    connect_unix(path_);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ECONNREFUSED)));
  }
}

TEST_F(EndpointTest, ConnectWithRetrySucceedsWhenListenerAppears) {
  std::optional<UnixListener> listener;
  std::thread starter([&] {
    std::this_thread::sleep_for(100ms);
    listener.emplace(UnixListener::listen(path_));
  });
  auto start = std::chrono::steady_clock::now();
  UniqueFd fd = connect_with_retry(path_, 5s);
  auto elapsed = std::chrono::steady_clock::now() - start;
  starter.join();
  ASSERT_TRUE(fd.valid());
  EXPECT_FALSE(fd_flags(fd.get()) & O_NONBLOCK);
  EXPECT_GE(elapsed, 90ms);
  EXPECT_LT(elapsed, 2s);  // back-off is at most ~160 ms at that point
  ASSERT_TRUE(wait_readable(listener->fd(), 1000));
  EXPECT_TRUE(listener->accept().valid());
}

TEST_F(EndpointTest, ConnectWithRetryTimesOut) {
  auto start = std::chrono::steady_clock::now();
  try {
    connect_with_retry(path_, 300ms);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("timed out"));
    EXPECT_THAT(e.what(), HasSubstr(path_));
    EXPECT_THAT(e.what(), HasSubstr("timeout 300 ms"));
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ENOENT)));
  }
  auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, 290ms);
  EXPECT_LT(elapsed, 1500ms);
}

TEST_F(EndpointTest, ConnectWithRetryTimesOutOnStaleSocket) {
  make_stale_socket();
  try {
    connect_with_retry(path_, 50ms);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr(std::strerror(ECONNREFUSED)));
  }
}

TEST_F(EndpointTest, ConnectWithRetryHonoursShouldStop) {
  std::atomic<bool> stop{false};
  std::thread stopper([&] {
    std::this_thread::sleep_for(100ms);
    stop = true;
  });
  auto start = std::chrono::steady_clock::now();
  try {
    connect_with_retry(path_, 30s, [&] { return stop.load(); });
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("stopped"));
  }
  stopper.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, 2s);
}

TEST_F(EndpointTest, ConnectWithRetryFailsFastOnNonSocket) {
  { std::ofstream(path_) << "x"; }
  auto start = std::chrono::steady_clock::now();
  try {
    connect_with_retry(path_, 10s);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("the path is not a socket"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);
  EXPECT_THAT([&] { connect_unix(path_); },
              ::testing::ThrowsMessage<Error>(HasSubstr("the path is not a socket")));
}

TEST_F(EndpointTest, NoFdLeaksOver200Cycles) {
  // Warm up (lazy allocations in libc / gtest) before taking the baseline.
  {
    UnixListener l = UnixListener::listen(path_);
    UniqueFd c = connect_unix(path_);
  }
  int before = count_open_fds();
  ASSERT_GT(before, 0);
  for (int i = 0; i < 200; ++i) {
    UnixListener listener = UnixListener::listen(path_, ListenOptions{.mode = 0600});
    UniqueFd client = i % 2 == 0 ? connect_unix(path_) : connect_with_retry(path_, 1s);
    ASSERT_TRUE(wait_readable(listener.fd(), 1000));
    UniqueFd server = listener.accept();
    ASSERT_TRUE(server.valid());
    EXPECT_FALSE(listener.accept().valid());
    if (i % 50 == 0) {
      // Error paths must not leak either.
      EXPECT_THROW(UnixListener::listen(path_), Error);
      EXPECT_THROW(connect_unix(path_ + ".missing"), Error);
    }
  }
  // Stale-socket replacement path.
  for (int i = 0; i < 20; ++i) {
    make_stale_socket();
    UnixListener listener = UnixListener::listen(path_);
  }
  EXPECT_EQ(count_open_fds(), before);
  EXPECT_FALSE(exists(path_));
}

}  // namespace
}  // namespace vhostd
