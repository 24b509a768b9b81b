// vhostd runtime: a data lcore's poller.
//
// A Poller is one pinned thread busy-polling the avail index of every ring handed to it and
// calling the ring's backend when there is work. Its loop has no syscall, lock or allocation:
// the set of rings is an immutable PollList published by the control lcore through an atomic
// pointer; removals wait (QSBR) until the poller has passed its quiescent point, so a ring
// handed back to the control lcore is never touched again by this thread.
//
// NUMA: everything the loop reads or writes each iteration (the published poll list, the spare
// list the next change is written into, the pointer to the published one, the loop stats) lives
// in one NodeLocalBuffer on the node of the lcore's CPUs, from a hugepage when one is free. The
// rings themselves belong to their sessions (the guest placed their memory; placement.hpp puts
// the poller near it); the QSBR reader slot belongs to the domain.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <vector>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/quiescence.hpp"
#include "vhostd/memory/numa.hpp"
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
  // Rings one poller can poll: its two poll lists are fixed arrays in node-local memory (the
  // control lcore writes the spare one in place, no allocation per change).
  static constexpr std::size_t kMaxRings = 4096;

  // Starts the thread on `cpus` (throws Error if it cannot be pinned). `numa_node` is the node
  // of those CPUs (-1 unknown): the poller's own state is allocated there.
  Poller(unsigned lcore_id, std::vector<unsigned> cpus, int numa_node, QsbrDomain& domain);
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Control lcore only. Both return once the poller can no longer see the previous list: add()
  // (throws Error when the poller already has kMaxRings rings) before the poller necessarily
  // picked the ring up, remove() once the poller can no longer touch the ring.
  void add(const PolledRing& ring);
  void remove(const Vring* ring);

  unsigned lcore_id() const noexcept { return lcore_id_; }
  const std::vector<unsigned>& cpus() const noexcept { return cpus_; }
  // NUMA node of the lcore's CPUs as the runtime's topology says (-1 unknown).
  int numa_node() const noexcept { return numa_node_; }
  // Whether the node-local state got a hugepage.
  bool state_on_hugepage() const noexcept { return memory_.hugepages(); }
  std::size_t num_rings() const noexcept;
  const PollerStats& stats() const noexcept { return hot_->stats; }

 private:
  // A ring and the poll function specialised for its layout.
  struct Entry {
    PolledRing ring;
    bool (*poll)(const PolledRing&, VringState&) noexcept;
  };
  struct PollList {
    std::size_t size = 0;
    Entry rings[kMaxRings];
  };
  // The node-local part (see the top of this file).
  struct HotState {
    alignas(kCacheLine) std::atomic<const PollList*> current{nullptr};
    alignas(kCacheLine) PollerStats stats;
    PollList lists[2];
  };
  void run(std::stop_token stop);
  // Makes lists[which] the published list; returns once the poller cannot see the other one.
  void publish(std::size_t which);

  unsigned lcore_id_;
  std::vector<unsigned> cpus_;
  int numa_node_;
  QsbrDomain& domain_;
  QsbrReader* reader_;
  NodeLocalBuffer memory_;    // holds *hot_; outlives the thread (declared before it)
  HotState* hot_ = nullptr;
  std::size_t published_ = 0;  // control lcore: index of the published list in hot_->lists
  std::unique_ptr<LcoreThread> thread_;
};

}  // namespace vhostd
