// vhostd vhost: the backend interface, the seam between the framework and a device.
//
// A device (net, blk, a test's echo device) implements Backend; the framework does the
// protocol, the memory and the rings, and calls the backend where the device must decide
// (rust-vmm's `VhostUserBackend`). Control-path calls come from the control lcore and may
// throw vhostd::Error (the frontend then gets an error reply); handle_queue() runs on a data
// lcore and follows the data-path rules (no allocation, locks, syscalls or exceptions).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd {

class BackendChannel;

class Backend {
 public:
  virtual ~Backend() = default;

  // ---- what the device offers ----
  virtual std::size_t num_queues() const = 0;
  virtual std::uint32_t max_queue_size() const = 0;
  // Virtio feature bits the device supports. The framework adds VHOST_USER_F_PROTOCOL_FEATURES.
  virtual std::uint64_t features() const = 0;
  // Protocol feature bits the device itself implements (MQ, CONFIG, NET_MTU, RARP, ...). The
  // framework adds the ones it implements for every device (REPLY_ACK, BACKEND_REQ, LOG_SHMFD,
  // CONFIGURE_MEM_SLOTS, RESET_DEVICE, STATUS).
  virtual std::uint64_t protocol_features() const { return 0; }
  // How the device shares its rings between threads (see vring.hpp).
  virtual VringLocking vring_locking() const { return VringLocking::none; }
  // Which rings each data lcore should serve: entry i lists the ring indexes for the i-th data
  // lcore (rust-vmm's queues_per_thread, without its 64-queue mask limit). Empty: the runtime
  // spreads rings round-robin.
  virtual std::vector<std::vector<std::uint16_t>> queues_per_lcore() const { return {}; }

  // ---- what the frontend told us ----
  virtual void acked_features(std::uint64_t /*features*/) {}
  virtual void acked_protocol_features(std::uint64_t /*features*/) {}
  virtual void set_event_idx(bool /*enabled*/) {}
  virtual void update_memory(const GuestMemory& /*memory*/) {}
  // Config space: return `size` bytes at `offset`, or an empty vector when out of range (the
  // frontend then gets a size-0 reply, as the spec asks).
  virtual std::vector<std::uint8_t> get_config(std::uint32_t /*offset*/, std::uint32_t /*size*/) {
    return {};
  }
  virtual void set_config(std::uint32_t offset, std::span<const std::uint8_t> data) {
    throw_error("SET_CONFIG offset ", offset, " size ", data.size(), ": config space is read-only");
  }
  // The backend-request channel (SET_BACKEND_REQ_FD), or nullptr when it is closed.
  virtual void set_backend_channel(std::shared_ptr<BackendChannel> /*channel*/) {}
  virtual void set_status(std::uint8_t /*status*/) {}
  virtual void set_mtu(std::uint16_t mtu) { throw_error("NET_SET_MTU ", mtu, ": not a net device"); }
  virtual void send_rarp(const std::uint8_t (&/*mac*/)[6]) { throw_error("SEND_RARP: not a net device"); }
  // RESET_OWNER / RESET_DEVICE / disconnect: forget per-connection state.
  virtual void reset() {}

  // ---- rings ----
  virtual void queue_started(std::uint16_t /*index*/, VringState& /*ring*/) {}
  virtual void queue_stopped(std::uint16_t /*index*/, VringState& /*ring*/) {}
  // Data path: ring `index` has work (its SplitQueue::poll() returned > 0). Pop chains, push
  // used elements, flush and notify (VringState::signal_used_queue()).
  virtual void handle_queue(std::uint16_t index, VringState& ring) noexcept = 0;
};

}  // namespace vhostd
