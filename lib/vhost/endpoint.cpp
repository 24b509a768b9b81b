// vhostd vhost: Unix socket endpoints (server-mode listener, client-mode connect with retry).
#include "vhostd/vhost/endpoint.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>
#include <utility>

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"

namespace vhostd {

namespace {

sockaddr_un make_address(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) throw_error("vhost-user socket path is empty");
  if (path.size() >= sizeof addr.sun_path) {
    throw_error("vhost-user socket path '", path, "' is ", path.size(),
                " bytes; a Unix socket path may have at most ", sizeof addr.sun_path - 1);
  }
  if (path.find('\0') != std::string::npos) {
    throw_error("vhost-user socket path '", path, "' contains a NUL byte");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

// One connect attempt; returns the fd or -errno. `nonblock` makes the socket non-blocking
// (used to probe a possibly stale socket without waiting on a full backlog).
int try_connect(const sockaddr_un& addr, bool nonblock) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
  if (fd < 0) return -errno;
  UniqueFd owned(fd);
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) {
    return owned.release();
  }
  int err = errno;
  if (err == EINTR && !nonblock) {
    // The connect goes on in the background; wait for it to finish.
    pollfd pfd{fd, POLLOUT, 0};
    int rc;
    do {
      rc = ::poll(&pfd, 1, -1);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return -errno;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) return -errno;
    if (soerr == 0) return owned.release();
    err = soerr;
  }
  return -err;
}

// Linux answers ECONNREFUSED for a path that is not a socket at all; that will never start
// working, so say what it is.
[[noreturn]] void throw_connect_error(const std::string& path, int err) {
  struct stat st {};
  if (err == ECONNREFUSED && ::stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode)) {
    throw_error("cannot connect to vhost-user socket '", path, "': the path is not a socket");
  }
  errno = err;
  throw_errno("cannot connect to vhost-user socket '", path, "'");
}

bool is_non_socket(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && !S_ISSOCK(st.st_mode);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// UnixListener

UnixListener UnixListener::listen(const std::string& path, ListenOptions opts) {
  sockaddr_un addr = make_address(path);
  if (opts.backlog <= 0) throw_error("listen on '", path, "': backlog ", opts.backlog, " must be > 0");

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      throw_error("cannot listen on '", path,
                  "': the path exists and is not a socket (refusing to replace it)");
    }
    int rc = try_connect(addr, /*nonblock=*/true);
    if (rc >= 0 || rc == -EAGAIN || rc == -EINPROGRESS) {
      if (rc >= 0) ::close(rc);
      throw_error("cannot listen on '", path, "': path in use by a live listener");
    }
    if (rc == -ECONNREFUSED) {
      log_info("removing stale vhost-user socket '", path, "' (nobody listens on it)");
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
        throw_errno("cannot remove stale socket '", path, "'");
      }
    } else if (rc != -ENOENT) {
      errno = -rc;
      throw_errno("cannot listen on '", path, "': probing the existing socket failed");
    }
  } else if (errno != ENOENT) {
    throw_errno("cannot listen on '", path, "': lstat");
  }

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw_errno("socket(AF_UNIX) for '", path, "'");
  UnixListener listener;
  listener.fd_.reset(fd);
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    if (errno == EADDRINUSE) {
      throw_error("cannot listen on '", path,
                  "': path in use (created by someone else while we were binding)");
    }
    throw_errno("cannot bind '", path, "'");
  }
  // From here on the path is ours: the listener's destructor unlinks it if we throw.
  listener.path_ = path;
  if (::stat(path.c_str(), &st) != 0) throw_errno("stat '", path, "' after bind");
  listener.dev_ = st.st_dev;
  listener.ino_ = st.st_ino;
  if (opts.mode && ::chmod(path.c_str(), *opts.mode) != 0) {
    throw_errno("cannot chmod '", path, "' to 0", std::oct, *opts.mode);
  }
  if (::listen(fd, opts.backlog) != 0) throw_errno("listen on '", path, "'");
  return listener;
}

UnixListener::UnixListener(UnixListener&& other) noexcept
    : fd_(std::move(other.fd_)),
      path_(std::exchange(other.path_, {})),
      dev_(other.dev_),
      ino_(other.ino_) {}

UnixListener& UnixListener::operator=(UnixListener&& other) noexcept {
  if (this != &other) {
    close_and_unlink();
    fd_ = std::move(other.fd_);
    path_ = std::exchange(other.path_, {});
    dev_ = other.dev_;
    ino_ = other.ino_;
  }
  return *this;
}

UnixListener::~UnixListener() { close_and_unlink(); }

void UnixListener::close_and_unlink() noexcept {
  if (!path_.empty()) {
    struct stat st {};
    if (::lstat(path_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev_ &&
        st.st_ino == ino_) {
      ::unlink(path_.c_str());
    }
    path_.clear();
  }
  fd_.reset();
}

UniqueFd UnixListener::accept() {
  for (;;) {
    int fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return UniqueFd(fd);
    switch (errno) {
      case EINTR:
        continue;
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
      case ECONNABORTED:
        return UniqueFd();
      default:
        throw_errno("accept on '", path_, "'");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Client mode

UniqueFd connect_unix(const std::string& path) {
  sockaddr_un addr = make_address(path);
  int rc = try_connect(addr, /*nonblock=*/false);
  if (rc < 0) throw_connect_error(path, -rc);
  return UniqueFd(rc);
}

UniqueFd connect_with_retry(const std::string& path, std::chrono::milliseconds total_timeout,
                            const std::function<bool()>& should_stop) {
  using Clock = std::chrono::steady_clock;
  using std::chrono::milliseconds;
  constexpr milliseconds kFirstDelay{10};
  constexpr milliseconds kMaxDelay{1000};
  constexpr milliseconds kStopCheck{10};

  sockaddr_un addr = make_address(path);
  const Clock::time_point start = Clock::now();
  const Clock::time_point deadline = start + total_timeout;
  milliseconds delay = kFirstDelay;
  unsigned attempts = 0;
  for (;;) {
    int rc = try_connect(addr, /*nonblock=*/false);
    ++attempts;
    if (rc >= 0) {
      if (attempts > 1) log_debug("connected to '", path, "' after ", attempts, " attempts");
      return UniqueFd(rc);
    }
    int err = -rc;
    bool retryable = err == ENOENT || err == ECONNREFUSED || err == EAGAIN || err == EINTR ||
                     err == ETIMEDOUT || err == ENOTDIR;
    if (!retryable || (err == ECONNREFUSED && is_non_socket(path))) {
      throw_connect_error(path, err);
    }
    // Sleep `delay` (clipped to the deadline), in slices so should_stop is honoured quickly.
    Clock::time_point wake = std::min(Clock::now() + delay, deadline);
    for (;;) {
      if (should_stop && should_stop()) {
        throw_error("connecting to vhost-user socket '", path, "' stopped after ", attempts,
                    " attempts (last error: ", std::strerror(err), ")");
      }
      Clock::time_point now = Clock::now();
      if (now >= wake) break;
      std::this_thread::sleep_for(std::min<Clock::duration>(wake - now, kStopCheck));
    }
    if (Clock::now() >= deadline) {
      auto waited = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
      throw_error("timed out connecting to vhost-user socket '", path, "' after ",
                  waited.count(), " ms and ", attempts, " attempts (timeout ",
                  total_timeout.count(), " ms; last error: ", std::strerror(err), ")");
    }
    delay = std::min(delay * 2, kMaxDelay);
  }
}

}  // namespace vhostd
