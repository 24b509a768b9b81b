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
  // The GET_QUEUE_NUM answer. A net device answers its queue pairs (QEMU and DPDK read it so).
  virtual std::uint64_t queue_num() const { return num_queues(); }
  // Virtio feature bits the device supports. The framework adds VHOST_USER_F_PROTOCOL_FEATURES.
  virtual std::uint64_t features() const = 0;
  // Protocol feature bits the device itself implements (MQ, CONFIG, NET_MTU, RARP, ...). The
  // framework adds the ones it implements for every device (REPLY_ACK, BACKEND_REQ, LOG_SHMFD,
  // CONFIGURE_MEM_SLOTS, RESET_DEVICE, STATUS).
  virtual std::uint64_t protocol_features() const { return 0; }
  // How the device shares its rings between threads (see vring.hpp).
  virtual VringLocking vring_locking() const { return VringLocking::none; }
  // Which rings each data lcore should serve: entry i lists the ring indexes for the i-th data
  // lcore (rust-vmm's queues_per_thread, without its 64-queue mask limit). A ring it does not
  // list (all of them when empty) is placed by the runtime: near its guest memory's NUMA node,
  // on the least-loaded data lcore there (see the runtime's daemon.hpp).
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
  // Whether the runtime polls ring `index` and calls handle_queue() when it has work (default).
  // A ring that is not polled is driven from other rings' handlers: a net RX ring is filled
  // when packets arrive on another port, not when the guest posts buffers.
  virtual bool queue_polled(std::uint16_t /*index*/) const { return true; }
  // How the guest's calls on ring `index` are coalesced (vhostd/virtqueue/call_coalescing.hpp;
  // default off: every call the guest asks for is made at once). Applied when the ring starts,
  // and only with VringLocking::none: a held call is made later by the data lcore that wrote
  // the ring, outside any ring lock.
  virtual CallCoalescing call_coalescing(std::uint16_t /*index*/) const { return {}; }
  // The ring joins / is about to leave the data path (control lcore, around every hand-over to
  // or from the pollers, pauses for a reconfiguration included). Between ring_attached() and
  // ring_detached() any data lcore of the runtime may use the ring, as its single writer;
  // after ring_detached() returns the framework waits until every data lcore has passed a
  // quiescent point before it changes the ring. A device that reaches a ring from another
  // ring's handler publishes the pointer here (with VringLocking::none; the device keeps one
  // writer per ring).
  virtual void ring_attached(std::uint16_t /*index*/, VringState& /*ring*/) {}
  virtual void ring_detached(std::uint16_t /*index*/) {}
  // Data path: ring `index` has work (its SplitQueue::poll() returned > 0). Pop chains, push
  // used elements, flush and notify (VringState::signal_used_queue()).
  virtual void handle_queue(std::uint16_t index, VringState& ring) noexcept = 0;
};

}  // namespace vhostd
