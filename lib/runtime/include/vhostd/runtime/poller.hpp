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
//
// Held guest calls (call coalescing, vhostd/virtqueue/call_coalescing.hpp): the poller installs
// its DeferredCalls as its thread's list, so rings whose calls are coalesced and that this
// thread writes (its own rings, and the RX rings its handlers forward into) leave their calls
// there. Each loop makes the calls whose time has come. The list points at rings across loops,
// which QSBR alone would not allow: so at the quiescent point of a new epoch (the control lcore
// may be taking a ring away) the poller first makes every held call, and it does the same
// before it sleeps (QSBR offline) and when it stops.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/fd.hpp"
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
  // Rings one poller can poll: its two poll lists are fixed arrays in node-local memory (the
  // control lcore writes the spare one in place, no allocation per change).
  static constexpr std::size_t kMaxRings = 4096;

  // Starts the thread on `cpus` (throws Error if it cannot be pinned). `numa_node` is the node
  // of those CPUs (-1 unknown): the poller's own state is allocated there.
  Poller(unsigned lcore_id, std::vector<unsigned> cpus, int numa_node, QsbrDomain& domain,
         PollerOptions options = {});
  ~Poller();
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  // Control lcore only. Both return once the poller can no longer see the previous list: add()
  // (throws Error when the poller already has kMaxRings rings) before the poller necessarily
  // picked the ring up, remove() once the poller can no longer touch the ring.
  void add(const PolledRing& ring);
  void remove(const Vring* ring);

  // The poller running on the calling thread (nullptr on any other thread): what a backend or
  // engine it calls into needs to find its own lcore's state.
  static const Poller* current() noexcept;

  unsigned lcore_id() const noexcept { return lcore_id_; }
  const std::vector<unsigned>& cpus() const noexcept { return cpus_; }
  // NUMA node of the lcore's CPUs as the runtime's topology says (-1 unknown).
  int numa_node() const noexcept { return numa_node_; }
  // Whether the node-local state got a hugepage.
  bool state_on_hugepage() const noexcept { return memory_.hugepages(); }
  std::size_t num_rings() const noexcept;
  const PollerStats& stats() const noexcept { return hot_->stats; }
  const PollerOptions& options() const noexcept { return options_; }

 private:
  // A ring, the poll function specialised for its layout and locking, and what the idle
  // check needs, kept here so that an idle ring costs the loop its queue's cached index and
  // one load of the guest's ring (SplitQueue/PackedQueue::idle()), not a visit of the Vring.
  // The layout and locking are fixed while the ring is handed over, so is the queue's address.
  // kick_fd: the fd registered in the poller's epoll set (-1: none, the ring keeps the poller
  // spinning).
  struct Entry {
    PolledRing ring;
    void* queue;  // the ring's SplitQueue or PackedQueue, per `poll`
    bool (*poll)(const Entry&) noexcept;
    int kick_fd;
  };
  struct PollList {
    std::size_t size = 0;
    std::size_t without_kick = 0;  // rings that cannot wake a sleeping poller
    Entry rings[kMaxRings];
  };
  // The node-local part (see the top of this file).
  struct HotState {
    alignas(kCacheLine) std::atomic<const PollList*> current{nullptr};
    alignas(kCacheLine) PollerStats stats;
    // Guest calls held back by call coalescing on rings this lcore wrote (the thread's
    // DeferredCalls::current()).
    alignas(kCacheLine) DeferredCalls held_calls;
    PollList lists[2];
  };
  // Polls one ring of layout Queue (Locked: behind its Vring's lock); true if it had work.
  template <typename Queue, bool Locked>
  static bool poll_ring(const Entry& entry) noexcept;
  void run(std::stop_token stop);
  // Makes lists[which] the published list; returns once the poller cannot see the other one.
  void publish(std::size_t which);
  // Not busy mode: waits for a kick unless a ring has work once notifications are on.
  void sleep_until_kicked();
  // Whether the poller has been idle long enough to sleep (`idle_loops` consecutive idle loops).
  bool idle_long_enough(std::uint64_t idle_loops, std::chrono::steady_clock::time_point& idle_since) const noexcept;

  unsigned lcore_id_;
  std::vector<unsigned> cpus_;
  int numa_node_;
  QsbrDomain& domain_;
  PollerOptions options_;
  UniqueFd epoll_;   // not busy mode: kick fds + wakeup_
  UniqueFd wakeup_;  // eventfd: a new poll list, or stop
  QsbrReader* reader_;
  NodeLocalBuffer memory_;    // holds *hot_; outlives the thread (declared before it)
  HotState* hot_ = nullptr;
  std::size_t published_ = 0;  // control lcore: index of the published list in hot_->lists
  std::unique_ptr<LcoreThread> thread_;
};

}  // namespace vhostd
