// vhostd virtqueue: one ring's full state and the three ways a device may share it.
//
// VringState is the ring as a device handles it: the SplitQueue plus its kick/call/err
// eventfds and the enabled flag (rust-vmm's `VringState`). Vring puts a VringState behind the
// locking the backend chose (rust-vmm's `VringState` / `VringMutex` / `VringRwLock`):
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
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd {

class VringState {
 public:
  SplitQueue& queue() noexcept { return queue_; }
  const SplitQueue& queue() const noexcept { return queue_; }

  int kick_fd() const noexcept { return kick_.get(); }
  int call_fd() const noexcept { return call_.get(); }
  int err_fd() const noexcept { return err_.get(); }
  void set_kick(UniqueFd fd) noexcept { kick_ = std::move(fd); }
  void set_call(UniqueFd fd) noexcept {
    call_ = std::move(fd);
    queue_.set_call_fd(call_.get());
  }
  void set_err(UniqueFd fd) noexcept { err_ = std::move(fd); }

  bool enabled() const noexcept { return enabled_; }
  void set_enabled(bool enabled) noexcept { enabled_ = enabled; }

  // Convenience for devices: stage a used element / publish and notify as needed.
  void add_used(std::uint16_t head, std::uint32_t len) noexcept { queue_.push_used(head, len); }
  bool signal_used_queue() noexcept {
    queue_.flush_used();
    return queue_.notify();
  }

  // Drops fds, disables, and resets the queue (disconnect or RESET_DEVICE).
  void reset() noexcept {
    kick_.reset();
    call_.reset();
    err_.reset();
    queue_.set_call_fd(-1);
    enabled_ = false;
    queue_.reset();
  }

 private:
  SplitQueue queue_;
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
