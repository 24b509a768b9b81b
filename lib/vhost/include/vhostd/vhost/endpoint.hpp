// vhostd vhost: Unix socket endpoints for vhost-user, server mode (UnixListener: we listen,
// the frontend connects) and client mode (connect_unix / connect_with_retry: the frontend
// listens, we connect, retrying while it starts).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>

#include "vhostd/base/fd.hpp"

namespace vhostd {

struct ListenOptions {
  // Applied with chmod() after bind() and before listen(), so nobody can connect while the
  // socket still has the umask's mode. Unset: leave the umask's mode.
  std::optional<mode_t> mode;
  int backlog = 16;
};

// A listening AF_UNIX stream socket bound to a filesystem path. Move-only.
class UnixListener {
 public:
  // Binds and listens on `path`. If the path exists:
  //  * a socket nobody listens on (connect() is refused: a crashed daemon's leftover) is
  //    unlinked and replaced;
  //  * a socket with a live listener: throws Error "... path in use by a live listener";
  //  * anything else (regular file, directory, ...): throws Error, the path is left alone.
  // A path longer than sun_path allows throws Error. The fd is non-blocking and close-on-exec.
  static UnixListener listen(const std::string& path, ListenOptions opts = {});

  UnixListener(UnixListener&& other) noexcept;
  UnixListener& operator=(UnixListener&& other) noexcept;
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;
  // Closes the socket and unlinks the path if it is still the inode we created (someone may
  // have replaced it since; their file is then left alone).
  ~UnixListener();

  int fd() const noexcept { return fd_.get(); }
  const std::string& path() const noexcept { return path_; }

  // One non-blocking accept4(SOCK_NONBLOCK | SOCK_CLOEXEC). Returns an invalid UniqueFd when
  // no connection is pending (EAGAIN) or the pending one was aborted by its peer; throws
  // Error on other failures (EMFILE, ...). The returned fd is non-blocking and close-on-exec.
  UniqueFd accept();

 private:
  UnixListener() = default;
  void close_and_unlink() noexcept;

  UniqueFd fd_;
  std::string path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

// One connect() attempt to the socket at `path`. Returns a blocking, close-on-exec fd;
// throws Error naming the path and errno on failure.
UniqueFd connect_unix(const std::string& path);

// Connects to `path`, retrying while the socket is missing or refused (ENOENT, ECONNREFUSED,
// EAGAIN, ...) with exponential back-off: 10 ms, doubling, at most 1 s between attempts.
// Other errors (EACCES, a path that is not a socket, path too long) fail at once. Throws Error when
// `total_timeout` expires (the message names the path, the time waited and the last errno)
// or when `should_stop` returns true (checked at least every 10 ms while waiting). Returns a
// connected blocking close-on-exec fd; the caller may set O_NONBLOCK.
UniqueFd connect_with_retry(const std::string& path, std::chrono::milliseconds total_timeout,
                            const std::function<bool()>& should_stop = {});

}  // namespace vhostd
