// vhostd virtqueue: coalescing of guest notifications (calls), per ring.
//
// Owns: the per-ring setting (CallCoalescing) and the per-thread list of calls a data lcore has
// deferred (DeferredCalls).
//
// Without coalescing a ring's notify() decides at once whether the guest wants a call (EVENT_IDX
// used_event, or NO_INTERRUPT) and signals it. With coalescing on (max_delay > 0) a call is held
// back: notify() leaves the ring on the calling thread's DeferredCalls list, and the call is
// made (after the same EVENT_IDX / NO_INTERRUPT check) once `max_buffers` used buffers wait (when
// set) or once the first of them has waited `max_delay`, whichever comes first. The guest then
// takes one interrupt for many buffers, as a NIC's ethtool rx-usecs / rx-frames do.
//
// Who flushes: the thread that wrote the ring, through its own list. A data lcore's poller
// installs its list and checks it once per loop (flush_due()); it flushes everything before
// it sleeps, stops, or passes a quiescent point of a new QSBR epoch, so a ring on the list is
// never used after the control lcore may have taken it away (see runtime/poller.hpp). A thread
// with no list installed (the control lcore, a device's own thread, a test) never defers: its
// calls are made at once, as without coalescing.
//
// Data path: add/flush are no allocation, no lock, no exception; the only syscalls are the
// vDSO clock read and the eventfd writes of due calls.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace vhostd {

struct CallCoalescing {
  // A held call is made once this many used buffers (descriptor chains) wait for it; 0: no
  // count limit, only max_delay.
  std::uint16_t max_buffers = 0;
  // A held call is made at the latest this long after the first buffer it covers was used.
  // 0: coalescing off (every due call is made by notify() itself).
  std::chrono::microseconds max_delay{0};

  bool enabled() const noexcept { return max_delay.count() > 0; }
  friend bool operator==(const CallCoalescing&, const CallCoalescing&) = default;
};

// One thread's deferred calls: a fixed array, no allocation after construction.
class DeferredCalls {
 public:
  static constexpr std::size_t kCapacity = 1024;
  // Makes the call for `queue` if it is still due; the queue forgets it was deferred.
  using SignalFn = void (*)(void* queue) noexcept;

  DeferredCalls() = default;
  DeferredCalls(const DeferredCalls&) = delete;
  DeferredCalls& operator=(const DeferredCalls&) = delete;

  // The calling thread's list (nullptr: calls are never deferred on this thread).
  static DeferredCalls* current() noexcept;
  // Makes `list` the calling thread's (nullptr: none). The list must be empty when it is
  // removed (flush_all() first).
  static void install(DeferredCalls* list) noexcept;

  // Holds the call of `queue` until `max_delay` from now; false when the list is full (the
  // caller then makes the call at once). A queue is added at most once until it is flushed.
  bool add(void* queue, SignalFn signal, std::chrono::microseconds max_delay) noexcept;
  bool empty() const noexcept { return size_ == 0; }
  std::size_t size() const noexcept { return size_; }
  // Makes the calls whose time has come (one clock read when the list is not empty).
  void flush_due() noexcept;
  // Makes every held call now.
  void flush_all() noexcept;

 private:
  struct Entry {
    void* queue;
    SignalFn signal;
    std::int64_t deadline_ns;  // steady_clock
  };
  std::size_t size_ = 0;
  Entry entries_[kCapacity];
};

// A ring's coalescing state, a member of SplitQueue and PackedQueue (owner thread only).
class HeldCall {
 public:
  // Control path, ring stopped.
  void configure(const CallCoalescing& setting) noexcept { setting_ = setting; }
  const CallCoalescing& setting() const noexcept { return setting_; }

  // notify(), once used buffers were published since the last decision: whether to hold the
  // call covering those `waiting` buffers. True: it is held (the ring is on the calling thread's
  // list, which later calls `signal(queue)`). False: decide now (coalescing off, enough buffers
  // wait, no list on this thread, or the list is full).
  bool hold(void* queue, DeferredCalls::SignalFn signal, std::uint64_t waiting) noexcept {
    if (!setting_.enabled()) return false;
    if (setting_.max_buffers != 0 && waiting >= setting_.max_buffers) return false;
    if (listed_) return true;
    DeferredCalls* list = DeferredCalls::current();
    if (list == nullptr || !list->add(queue, signal, setting_.max_delay)) return false;
    listed_ = true;
    return true;
  }
  // The list let go of the ring (from its signal function): the ring may be added again.
  void released() noexcept { listed_ = false; }
  bool listed() const noexcept { return listed_; }

 private:
  CallCoalescing setting_{};
  bool listed_ = false;  // on the owner thread's DeferredCalls
};

}  // namespace vhostd
