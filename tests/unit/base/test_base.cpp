// Unit tests for lib/base: QSBR reclamation, eventfd helpers, UniqueFd and count_open_fds, the
// prefetch line plan.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/base/quiescence.hpp"

namespace vhostd {
namespace {

using namespace std::chrono_literals;

// Runs synchronize() on its own thread so the test can observe whether it has returned.
class SyncThread {
 public:
  explicit SyncThread(QsbrDomain& domain)
      : thread_([this, &domain] {
          domain.synchronize();
          done_.store(true);
        }) {}
  ~SyncThread() { join(); }
  bool done() const { return done_.load(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  std::atomic<bool> done_{false};
  std::thread thread_;
};

TEST(Qsbr, SynchronizeWithoutReadersReturns) {
  QsbrDomain domain;
  const std::uint64_t before = domain.epoch();
  domain.synchronize();
  domain.synchronize();
  EXPECT_EQ(domain.epoch(), before + 2);
}

TEST(Qsbr, OfflineReaderDoesNotBlock) {
  QsbrDomain domain;
  QsbrReader* reader = domain.register_reader();
  reader->offline();
  domain.synchronize();  // would hang (test timeout) if it waited for an offline reader
  SUCCEED();
  domain.unregister_reader(reader);
}

TEST(Qsbr, UnregisteredReaderDoesNotBlock) {
  QsbrDomain domain;
  QsbrReader* reader = domain.register_reader();  // starts online
  domain.unregister_reader(reader);
  domain.synchronize();
  SUCCEED();
}

TEST(Qsbr, WaitsForOnlineReaderUntilQuiescent) {
  QsbrDomain domain;
  QsbrReader* reader = domain.register_reader();
  std::promise<void> go;
  std::thread poller([&, started = go.get_future()]() mutable {
    started.wait();  // "inside an iteration": holds the old snapshot
    reader->quiescent(domain);
    reader->offline();
  });
  SyncThread sync(domain);
  std::this_thread::sleep_for(50ms);  // only proves "not yet"
  EXPECT_FALSE(sync.done());
  go.set_value();
  sync.join();
  EXPECT_TRUE(sync.done());
  poller.join();
  domain.unregister_reader(reader);
}

TEST(Qsbr, QuiescentBeforeSynchronizeDoesNotCount) {
  QsbrDomain domain;
  QsbrReader* reader = domain.register_reader();
  reader->quiescent(domain);  // passed before the new snapshot exists: proves nothing
  SyncThread sync(domain);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(sync.done());
  reader->quiescent(domain);
  sync.join();
  EXPECT_TRUE(sync.done());
  domain.unregister_reader(reader);
}

TEST(Qsbr, OnlineAgainIsWaitedFor) {
  QsbrDomain domain;
  QsbrReader* reader = domain.register_reader();
  reader->offline();
  domain.synchronize();
  reader->online(domain);
  SyncThread sync(domain);
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(sync.done());
  reader->offline();
  sync.join();
  EXPECT_TRUE(sync.done());
  domain.unregister_reader(reader);
}

// Publish / synchronize / free, with a reader dereferencing the current snapshot all along.
// A snapshot freed too early is a use-after-free (ASan) or a poisoned read.
TEST(Qsbr, ReclaimsOnlyAfterReadersMovedOn) {
  struct Snapshot {
    std::atomic<int> alive{1};
  };
  QsbrDomain domain;
  std::atomic<Snapshot*> current{new Snapshot};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> bad{0};
  QsbrReader* reader = domain.register_reader();
  std::thread poller([&] {
    while (!stop.load(std::memory_order_relaxed)) {
      // Acquire: pairs with the publisher's release exchange.
      Snapshot* s = current.load(std::memory_order_acquire);
      // Relaxed: the value itself is the check; QSBR provides the ordering.
      for (int i = 0; i < 8; ++i) {
        if (s->alive.load(std::memory_order_relaxed) != 1) bad.fetch_add(1, std::memory_order_relaxed);
      }
      reader->quiescent(domain);
    }
    reader->offline();
  });
  for (int i = 0; i < 5000; ++i) {
    // Release: the new snapshot is initialised before a reader can see it.
    Snapshot* old = current.exchange(new Snapshot, std::memory_order_release);
    domain.synchronize();
    old->alive.store(0, std::memory_order_relaxed);
    delete old;
  }
  stop.store(true);
  poller.join();
  domain.unregister_reader(reader);
  delete current.load();
  EXPECT_EQ(bad.load(), 0u);
}

// ---- fds ----

bool fd_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

TEST(Fd, UniqueFdClosesOnDestruction) {
  const int before = count_open_fds();
  int raw = -1;
  {
    UniqueFd fd(::dup(STDERR_FILENO));
    ASSERT_TRUE(fd);
    raw = fd.get();
    EXPECT_EQ(count_open_fds(), before + 1);
  }
  EXPECT_EQ(count_open_fds(), before);
  EXPECT_FALSE(fd_open(raw));
}

TEST(Fd, UniqueFdReleaseResetAndMove) {
  const int before = count_open_fds();
  UniqueFd a(::dup(STDERR_FILENO));
  UniqueFd b(::dup(STDERR_FILENO));
  const int raw_b = b.get();
  a = std::move(b);  // closes a's old fd, takes b's
  EXPECT_FALSE(b.valid());
  EXPECT_EQ(a.get(), raw_b);
  EXPECT_EQ(count_open_fds(), before + 1);

  UniqueFd& self = a;
  a = std::move(self);  // self-move keeps the fd
  EXPECT_EQ(a.get(), raw_b);
  EXPECT_TRUE(fd_open(raw_b));

  UniqueFd c(std::move(a));
  EXPECT_FALSE(a.valid());
  EXPECT_EQ(c.get(), raw_b);

  int raw = c.release();  // ownership leaves: not closed
  EXPECT_FALSE(c.valid());
  EXPECT_TRUE(fd_open(raw));
  c.reset(raw);
  c.reset();
  EXPECT_FALSE(fd_open(raw));
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Fd, CountOpenFdsSeesAPipe) {
  const int before = count_open_fds();
  ASSERT_GT(before, 0);
  int p[2];
  ASSERT_EQ(::pipe(p), 0);
  EXPECT_EQ(count_open_fds(), before + 2);
  ::close(p[0]);
  ::close(p[1]);
  EXPECT_EQ(count_open_fds(), before);
}

TEST(Fd, EventfdSignalAndDrain) {
  UniqueFd fd = make_eventfd();
  ASSERT_TRUE(fd);
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFL) & O_NONBLOCK);
  EXPECT_TRUE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC);
  EXPECT_FALSE(eventfd_drain(fd.get())) << "empty counter";
  eventfd_signal(fd.get());
  eventfd_signal(fd.get());
  EXPECT_TRUE(eventfd_drain(fd.get()));
  EXPECT_FALSE(eventfd_drain(fd.get())) << "drain clears the counter";
  eventfd_signal(fd.get());
  EXPECT_TRUE(eventfd_drain(fd.get()));
}

TEST(Fd, EventfdHelpersTolerateBadFds) {
  eventfd_signal(-1);  // noexcept, errors ignored
  EXPECT_FALSE(eventfd_drain(-1));
}

TEST(Error, ThrowErrnoAppendsStrerror) {
  errno = EBADF;
  try {
    throw_errno("close fd ", 7);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), std::string("close fd 7: ") + std::strerror(EBADF));
  }
}

// Which lines a buffer prefetch asks for, and how: (offset of the line from the buffer's line,
// for writing).
std::vector<std::pair<std::uintptr_t, bool>> prefetch_plan(std::uintptr_t start, std::size_t read_len,
                                                           std::size_t write_len) {
  std::vector<std::pair<std::uintptr_t, bool>> plan;
  const std::uintptr_t base = start & ~(kCacheLine - 1);
  detail::for_each_prefetch_line(reinterpret_cast<const void*>(start), read_len, write_len,
                                 [&](const char* line, bool for_write) {
                                   plan.emplace_back(reinterpret_cast<std::uintptr_t>(line) - base, for_write);
                                 });
  return plan;
}

using Plan = std::vector<std::pair<std::uintptr_t, bool>>;

TEST(Prefetch, AHeaderAloneOnItsLineIsAskedForReading) {
  // DPDK's virtio PMD: a 12-byte header in the last bytes of a line, the frame from the next.
  EXPECT_EQ(prefetch_plan(0x10000 + 116, 12, 64), (Plan{{0, false}, {64, true}}));
}

TEST(Prefetch, ALineHoldingWrittenBytesIsAskedForWriting) {
  // Linux: header and frame share the first line.
  EXPECT_EQ(prefetch_plan(0x10000, 12, 64), (Plan{{0, true}, {64, true}}));
  // A frame starting on a line of its own, the header just before it.
  EXPECT_EQ(prefetch_plan(0x10000 + 52, 12, 64), (Plan{{0, false}, {64, true}}));
}

TEST(Prefetch, NothingWrittenMeansEveryLineForReading) {
  EXPECT_EQ(prefetch_plan(0x10000 + 60, 80, 0), (Plan{{0, false}, {64, false}, {128, false}}));
  EXPECT_EQ(prefetch_plan(0x10000, 0, 0), Plan{});
}

TEST(Prefetch, AtMostTheLineLimit) {
  EXPECT_EQ(prefetch_plan(0x10000, 12, 4096).size(), kPrefetchMaxLines);
  // The hints themselves take any address: nothing is read.
  prefetch_bytes(nullptr, 256);
  prefetch_bytes_read_then_write(nullptr, 12, 256);
}

}  // namespace
}  // namespace vhostd
