// vhostd base: errors, fds, logging and QSBR (see the headers for the contracts).
#include <dirent.h>
#include <sys/eventfd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string_view>
#include <cstring>
#include <thread>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/base/log.hpp"
#include "vhostd/base/quiescence.hpp"

namespace vhostd {

void throw_errno_message(const std::string& what) {
  int err = errno;
  throw Error(what + ": " + std::strerror(err));
}

UniqueFd make_eventfd() {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) throw_errno("eventfd");
  return UniqueFd(fd);
}

void eventfd_signal(int fd) noexcept {
  std::uint64_t one = 1;
  ssize_t n = ::write(fd, &one, sizeof one);
  (void)n;
}

bool eventfd_drain(int fd) noexcept {
  std::uint64_t value = 0;
  return ::read(fd, &value, sizeof value) == sizeof value && value != 0;
}

int count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count - 1;  // the directory stream's own fd
}

namespace {
// The initial level comes from VHOSTD_LOG (debug, info, warning, error, none); info otherwise.
LogLevel initial_log_level() noexcept {
  const char* env = std::getenv("VHOSTD_LOG");
  if (env == nullptr) return LogLevel::info;
  const std::string_view name(env);
  if (name == "debug") return LogLevel::debug;
  if (name == "warning") return LogLevel::warning;
  if (name == "error") return LogLevel::error;
  if (name == "none") return LogLevel::none;
  return LogLevel::info;
}
std::atomic<LogLevel> g_log_level{initial_log_level()};
}

void set_log_level(LogLevel level) noexcept { g_log_level.store(level, std::memory_order_relaxed); }
LogLevel log_level() noexcept { return g_log_level.load(std::memory_order_relaxed); }

void log_line(LogLevel level, const std::string& line) {
  static const char* const kPrefix[] = {"debug", "info", "warning", "error", ""};
  std::fprintf(stderr, "vhostd %s: %s\n", kPrefix[static_cast<int>(level)], line.c_str());
}

QsbrReader* QsbrDomain::register_reader() {
  std::lock_guard lock(mutex_);
  auto reader = std::make_unique<QsbrReader>();
  reader->registered.store(true, std::memory_order_relaxed);
  reader->seen_epoch.store(epoch_.load(std::memory_order_seq_cst), std::memory_order_seq_cst);
  readers_.push_back(std::move(reader));
  return readers_.back().get();
}

void QsbrDomain::unregister_reader(QsbrReader* reader) {
  std::lock_guard lock(mutex_);
  std::erase_if(readers_, [reader](const auto& r) { return r.get() == reader; });
}

void QsbrDomain::synchronize() noexcept {
  // seq_cst: the caller's publication of the new snapshot is ordered before the bump, so a
  // reader that observes the new epoch also observes the new snapshot.
  std::uint64_t target = epoch_.fetch_add(
      1, std::memory_order_seq_cst) + 1;
  // Pairs with the fence in QsbrReader::online(): either the scan below sees the reader's
  // online store, or the reader's next snapshot load sees the caller's publication (the RMW
  // alone does not order the later acquire loads of seen_epoch in the C++ model).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  std::lock_guard lock(mutex_);
  for (const auto& reader : readers_) {
    for (unsigned spins = 0;; ++spins) {
      // Acquire: pairs with the reader's release store, so its old accesses are finished.
      std::uint64_t seen = reader->seen_epoch.load(std::memory_order_acquire);
      if (seen == 0 || seen >= target) break;
      if (spins < 1000) cpu_relax(); else std::this_thread::yield();
    }
  }
}

}  // namespace vhostd
