// vhostd runtime: a data lcore's poller.
//
// A Poller is one pinned thread busy-polling the avail index of every ring handed to it and
// calling the ring's backend when there is work. Its loop has no syscall, lock or allocation:
// the set of rings is an immutable PollList published by the control lcore through an atomic
// pointer; removals wait (QSBR) until the poller has passed its quiescent point, so a ring
// handed back to the control lcore is never touched again by this thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <vector>

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
};

class Poller {
 public:
  // Starts the thread on `cpus` (throws Error if it cannot be pinned).
  Poller(unsigned lcore_id, std::vector<unsigned> cpus, QsbrDomain& domain);
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Control lcore only. add() returns at once (the poller picks the ring up at its next loop);
  // remove() returns once the poller can no longer touch the ring.
  void add(const PolledRing& ring);
  void remove(const Vring* ring);

  unsigned lcore_id() const noexcept { return lcore_id_; }
  const std::vector<unsigned>& cpus() const noexcept { return cpus_; }
  // Control lcore only: rings in the current poll list.
  std::size_t num_rings() const noexcept;
  const PollerStats& stats() const noexcept { return stats_; }

 private:
  // A ring, the poll function specialised for its layout and locking, and what the idle
  // check needs, kept here so that an idle ring costs the loop its queue's cached index and
  // one load of the guest's ring (SplitQueue/PackedQueue::idle()), not a visit of the Vring.
  // The layout and locking are fixed while the ring is handed over, so is the queue's address.
  struct Entry {
    PolledRing ring;
    void* queue;  // the ring's SplitQueue or PackedQueue, per `poll`
    bool (*poll)(const Entry&) noexcept;
  };
  struct PollList {
    std::vector<Entry> rings;
  };
  // Polls one ring of layout Queue (Locked: behind its Vring's lock); true if it had work.
  template <typename Queue, bool Locked>
  static bool poll_ring(const Entry& entry) noexcept;
  void run(std::stop_token stop);
  void publish(std::shared_ptr<const PollList> list);

  unsigned lcore_id_;
  std::vector<unsigned> cpus_;
  QsbrDomain& domain_;
  QsbrReader* reader_;
  std::shared_ptr<const PollList> owned_;  // control lcore's reference to the current list
  std::atomic<const PollList*> current_;
  PollerStats stats_;
  std::unique_ptr<LcoreThread> thread_;
};

}  // namespace vhostd
