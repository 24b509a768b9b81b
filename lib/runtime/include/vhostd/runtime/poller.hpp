// vhostd runtime: a data lcore's poller.
//
// A Poller is one pinned thread busy-polling the avail index of every ring handed to it and
// calling the ring's backend when there is work. Its loop has no syscall, lock or allocation:
// the set of rings is an immutable PollList published by the control lcore through an atomic
// pointer; removals wait (QSBR) until the poller has passed its quiescent point, so a ring
// handed back to the control lcore is never touched again by this thread.
//
// Poll modes (PollerOptions::mode):
//   busy       spin forever, guest notifications (kicks) off: the lowest latency, one core each;
//   interrupt  sleep whenever a loop over every ring found no work;
//   adaptive   spin, and sleep once no ring had work for PollerOptions::idle_threshold.
// Going to sleep (sleep_until_kicked): the poller turns guest notifications on for every ring
// and re-checks each ring after doing so (enable_notifications() fences, then re-reads the
// ring); any work found means no sleep. Otherwise it goes QSBR-offline and waits in epoll on
// its rings' kick eventfds (edge-triggered: nothing is read from a frontend's fd) and its own
// wake-up eventfd (new poll list, stop). A guest that publishes after the re-check sees
// notifications on and kicks; one that published before is seen by the re-check: no kick is
// lost between the last check and the sleep. On waking the poller turns notifications off
// again and spins. A ring without a kick fd (NOFD: the frontend expects polling), or whose
// kick fd cannot be waited on, keeps its poller spinning.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "vhostd/base/fd.hpp"
#include "vhostd/base/quiescence.hpp"
#include "vhostd/vhost/backend.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd {

class LcoreThread;

struct PolledRing {
  Backend* backend;
  std::uint16_t index;
  Vring* vring;
};

struct PollerStats {
  std::atomic<std::uint64_t> loops{0};        // iterations over the poll list
  std::atomic<std::uint64_t> busy_loops{0};   // iterations that found work on some ring
  std::atomic<std::uint64_t> busy_cycles{0};  // TSC cycles spent in backends
  std::atomic<std::uint64_t> sleeps{0};       // times the poller slept in epoll (not busy mode)
  std::atomic<bool> sleeping{false};          // in epoll now (notifications on, QSBR offline)
};

enum class PollMode { busy, interrupt, adaptive };
const char* to_string(PollMode mode) noexcept;
// "busy" | "interrupt" | "adaptive"; throws Error otherwise.
PollMode parse_poll_mode(std::string_view text);

struct PollerOptions {
  PollMode mode = PollMode::busy;
  // Adaptive mode: how long the poller finds no work on any ring before it sleeps.
  std::chrono::microseconds idle_threshold{200};
};

class Poller {
 public:
  // Starts the thread on `cpus` (throws Error if it cannot be pinned).
  Poller(unsigned lcore_id, std::vector<unsigned> cpus, QsbrDomain& domain, PollerOptions options = {});
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Control lcore only. add() returns at once (the poller picks the ring up at its next loop);
  // remove() returns once the poller can no longer touch the ring.
  void add(const PolledRing& ring);
  void remove(const Vring* ring);

  unsigned lcore_id() const noexcept { return lcore_id_; }
  const std::vector<unsigned>& cpus() const noexcept { return cpus_; }
  std::size_t num_rings() const noexcept;
  const PollerStats& stats() const noexcept { return stats_; }
  const PollerOptions& options() const noexcept { return options_; }

 private:
  // A ring, the poll function specialised for its layout, and the kick fd registered in the
  // poller's epoll set (-1: none, the ring keeps the poller spinning).
  struct Entry {
    PolledRing ring;
    bool (*poll)(const PolledRing&, VringState&) noexcept;
    int kick_fd;
  };
  struct PollList {
    std::vector<Entry> rings;
    std::size_t without_kick = 0;  // rings that cannot wake a sleeping poller
  };
  void run(std::stop_token stop);
  void publish(std::shared_ptr<const PollList> list);
  // Not busy mode: waits for a kick unless a ring has work once notifications are on.
  void sleep_until_kicked();
  // Whether the poller has been idle long enough to sleep (`idle_loops` consecutive idle loops).
  bool idle_long_enough(std::uint64_t idle_loops, std::chrono::steady_clock::time_point& idle_since) const noexcept;

  unsigned lcore_id_;
  std::vector<unsigned> cpus_;
  QsbrDomain& domain_;
  PollerOptions options_;
  UniqueFd epoll_;   // not busy mode: kick fds + wakeup_
  UniqueFd wakeup_;  // eventfd: a new poll list, or stop
  QsbrReader* reader_;
  std::shared_ptr<const PollList> owned_;  // control lcore's reference to the current list
  std::atomic<const PollList*> current_;
  PollerStats stats_;
  std::unique_ptr<LcoreThread> thread_;
};

}  // namespace vhostd
