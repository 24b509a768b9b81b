// vhostd base: RAII ownership of file descriptors.
//
// Every fd vhostd receives or opens lives in a UniqueFd from the moment it exists, so an
// early return or a thrown error can never leak one.
#pragma once

#include <unistd.h>

#include <utility>

namespace vhostd {

class UniqueFd {
 public:
  UniqueFd() noexcept = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  bool valid() const noexcept { return fd_ >= 0; }
  explicit operator bool() const noexcept { return valid(); }

  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// An eventfd (non-blocking, close-on-exec). Used for kicks, calls and exit events.
UniqueFd make_eventfd();
// Adds 1 to an eventfd counter; errors are ignored (a full counter still wakes the reader).
void eventfd_signal(int fd) noexcept;
// Reads and clears an eventfd counter; returns false if it was zero (EAGAIN).
bool eventfd_drain(int fd) noexcept;

// Number of open fds in this process (from /proc/self/fd); tests use it to prove no leak.
int count_open_fds();

}  // namespace vhostd
