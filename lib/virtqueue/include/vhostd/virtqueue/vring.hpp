// vhostd virtqueue: one ring's full state and the three ways a device may share it.
//
// VringState is the ring as a device handles it: its queue in the layout the frontend
// negotiated (SplitQueue, or PackedQueue with VIRTIO_F_RING_PACKED), plus its kick/call/err
// eventfds and the enabled flag (rust-vmm's `VringState`). A device reaches the queue through
// visit(fn), which calls fn with the SplitQueue or the PackedQueue: write fn once as a generic
// lambda (or a template over DataPathQueue) and both layouts get their own specialisation, the
// layout being one branch per call, never per descriptor. What does not depend on the layout
// (size, error, counters, the memory table of the batch) is here directly.
//
// Vring puts a VringState behind the locking the backend chose (rust-vmm's `VringState` /
// `VringMutex` / `VringRwLock`):
//   - VringLocking::none   single owner (the polled runtime's default: the poller owns it);
//   - VringLocking::mutex  every access exclusive (device worker threads share the ring);
//   - VringLocking::rwlock readers share, writers exclusive (many stats/config readers).
// The one interface is with_mut()/with_ref(); the branch on the locking kind is taken once per
// call, never per descriptor.
#pragma once

#include <mutex>
#include <shared_mutex>
#include <utility>

#include "vhostd/base/fd.hpp"
#include "vhostd/virtqueue/packed_queue.hpp"
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd {

enum class RingLayout : std::uint8_t { split, packed };

class VringState {
 public:
  // ---- the queue ----
  RingLayout layout() const noexcept { return layout_; }
  bool packed() const noexcept { return layout_ == RingLayout::packed; }
  // Control path, ring stopped: the layout the negotiated features ask for. Changing it resets
  // both queues (a ring's configuration means nothing in the other layout).
  void set_layout(RingLayout layout) noexcept {
    if (layout == layout_) return;
    split_.reset();
    packed_.reset();
    layout_ = layout;
    // The call fd was set before (frontends send SET_VRING_CALL before SET_FEATURES).
    split_.set_call_fd(call_.get());
    packed_.set_call_fd(call_.get());
  }
  // Runs fn(SplitQueue&) or fn(PackedQueue&), whichever the ring is.
  template <typename Fn>
  decltype(auto) visit(Fn&& fn) {
    if (layout_ == RingLayout::packed) return std::forward<Fn>(fn)(packed_);
    return std::forward<Fn>(fn)(split_);
  }
  template <typename Fn>
  decltype(auto) visit(Fn&& fn) const {
    if (layout_ == RingLayout::packed) return std::forward<Fn>(fn)(packed_);
    return std::forward<Fn>(fn)(split_);
  }
  // The queue of a known layout (layout-specific control code and tests).
  SplitQueue& split_queue() noexcept { return split_; }
  const SplitQueue& split_queue() const noexcept { return split_; }
  PackedQueue& packed_queue() noexcept { return packed_; }
  const PackedQueue& packed_queue() const noexcept { return packed_; }

  // Layout-independent views of the queue.
  std::uint32_t size() const noexcept { return packed() ? packed_.size() : split_.size(); }
  bool in_error() const noexcept { return packed() ? packed_.in_error() : split_.in_error(); }
  RingError error() const noexcept { return packed() ? packed_.error() : split_.error(); }
  RingStats& stats() noexcept { return packed() ? packed_.stats() : split_.stats(); }
  const RingStats& stats() const noexcept { return packed() ? packed_.stats() : split_.stats(); }
  const MemoryTable* table() const noexcept { return packed() ? packed_.table() : split_.table(); }

  // ---- fds and enable ----
  int kick_fd() const noexcept { return kick_.get(); }
  int call_fd() const noexcept { return call_.get(); }
  int err_fd() const noexcept { return err_.get(); }
  void set_kick(UniqueFd fd) noexcept { kick_ = std::move(fd); }
  void set_call(UniqueFd fd) noexcept {
    call_ = std::move(fd);
    split_.set_call_fd(call_.get());
    packed_.set_call_fd(call_.get());
  }
  void set_err(UniqueFd fd) noexcept { err_ = std::move(fd); }

  // Call coalescing for the ring (call_coalescing.hpp), in whichever layout it runs; control path,
  // ring stopped. The framework sets it when the ring starts (Backend::call_coalescing()).
  void set_call_coalescing(const CallCoalescing& setting) noexcept {
    split_.set_call_coalescing(setting);
    packed_.set_call_coalescing(setting);
  }
  const CallCoalescing& call_coalescing() const noexcept {
    return packed() ? packed_.call_coalescing() : split_.call_coalescing();
  }

  bool enabled() const noexcept { return enabled_; }
  void set_enabled(bool enabled) noexcept { enabled_ = enabled; }

  // Convenience for devices: stage a used element / publish and notify as needed.
  void add_used(std::uint16_t head, std::uint32_t len) noexcept {
    visit([&](auto& queue) { queue.push_used(head, len); });
  }
  bool signal_used_queue() noexcept {
    return visit([](auto& queue) {
      queue.flush_used();
      return queue.notify();
    });
  }

  // Drops fds, disables, and resets the queues (disconnect or RESET_DEVICE); the layout goes
  // back to split, the one a frontend gets before it negotiates features.
  void reset() noexcept {
    kick_.reset();
    call_.reset();
    err_.reset();
    split_.set_call_fd(-1);
    packed_.set_call_fd(-1);
    enabled_ = false;
    split_.reset();
    packed_.reset();
    layout_ = RingLayout::split;
  }

 private:
  RingLayout layout_ = RingLayout::split;
  SplitQueue split_;
  PackedQueue packed_;
  UniqueFd kick_;
  UniqueFd call_;
  UniqueFd err_;
  bool enabled_ = false;
};

enum class VringLocking { none, mutex, rwlock };

class Vring {
 public:
  explicit Vring(VringLocking locking = VringLocking::none) noexcept : locking_(locking) {}
  Vring(const Vring&) = delete;
  Vring& operator=(const Vring&) = delete;

  VringLocking locking() const noexcept { return locking_; }

  // Runs fn(VringState&) with exclusive access.
  template <typename Fn>
  decltype(auto) with_mut(Fn&& fn) {
    switch (locking_) {
      case VringLocking::mutex: {
        std::lock_guard guard(mutex_);
        return std::forward<Fn>(fn)(state_);
      }
      case VringLocking::rwlock: {
        std::unique_lock guard(rwlock_);
        return std::forward<Fn>(fn)(state_);
      }
      case VringLocking::none:
        break;
    }
    return std::forward<Fn>(fn)(state_);
  }

  // Runs fn(const VringState&) with shared access (exclusive under a plain mutex).
  template <typename Fn>
  decltype(auto) with_ref(Fn&& fn) const {
    switch (locking_) {
      case VringLocking::mutex: {
        std::lock_guard guard(mutex_);
        return std::forward<Fn>(fn)(std::as_const(state_));
      }
      case VringLocking::rwlock: {
        std::shared_lock guard(rwlock_);
        return std::forward<Fn>(fn)(std::as_const(state_));
      }
      case VringLocking::none:
        break;
    }
    return std::forward<Fn>(fn)(std::as_const(state_));
  }

  // The state without locking, for the single owner when locking() == none.
  VringState& unlocked() noexcept { return state_; }

 private:
  VringLocking locking_;
  mutable std::mutex mutex_;
  mutable std::shared_mutex rwlock_;
  VringState state_;
};

}  // namespace vhostd
