// vhostd drivers/net: a vhost-user-net port (the virtio-net device) and its packet API.
//
// Owns: what the device offers (features, queue pairs, config space: MAC, status, MTU), the
// control virtqueue (MQ pairs, RX mode, MAC, announce ack), validation of the virtio-net
// header of every packet the guest sends (CVE-2024-11614: csum_start/csum_offset past the
// packet, GSO or checksum offload that was not negotiated: dropped and counted), and the burst
// packet API a forwarding engine uses:
//
//   receive()  pops packets from a guest TX ring into a PacketBurst (views, no copy);
//   transmit() copies packets into a guest RX ring: the one copy of a forwarded packet, guest
//              buffer to guest buffer, with the virtio-net header rebuilt for the receiver;
//   release()  returns the received chains to the sending guest.
//
// Rings: ring 2q is guest RX of pair q, 2q+1 guest TX, the last one the control queue (QEMU
// and DPDK virtio-user keep the control queue in the frontend and never hand it over; with 128
// pairs its index, 256, does not fit the 8-bit ring index of SET_VRING_KICK/CALL). A
// guest TX ring is polled by the runtime and handed to the PacketHandler; a guest RX ring is
// not polled (unless the handler asks, as txonly does): whoever forwards into it writes it.
// Every RX ring must have exactly one writing lcore at a time; the forwarding engine places
// rings so (see apps/vhostd-fwd). Ring pointers are published through ring_attached()/
// ring_detached(), so a transmit() into a port that disconnects or reconfigures sees the ring
// gone (and the packets are not delivered) rather than a ring being changed under it.
//
// Data path: receive/transmit/release are written once over DataPathQueue and specialised per
// burst on the ring layout (split or packed: VringState::visit) and the negotiated features
// (header length, MRG_RXBUF, offloads) through templates: no per-packet branch on the layout or
// a feature flag. No allocation, lock, syscall (but a due eventfd call) or exception.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <memory_resource>
#include <string>
#include <vector>

#include "vhostd/net/virtio_net.hpp"
#include "vhostd/vhost/backend.hpp"

namespace vhostd::net {

inline constexpr std::uint16_t kMaxQueuePairs = 128;
inline constexpr std::uint16_t kMaxBurst = 256;
// A packet needing more merged RX buffers than this is dropped (Linux posts buffers of at least
// a page or an MTU, so a 64 KiB packet needs at most ~45).
inline constexpr std::uint16_t kMaxMergedBuffers = 256;

using MacAddress = std::array<std::uint8_t, kEthAddrLen>;

struct NetPortConfig {
  std::uint16_t queue_pairs = 1;        // offered (MQ when > 1), 1..kMaxQueuePairs
  std::uint32_t max_queue_size = 1024;  // largest ring the frontend may configure
  bool mrg_rxbuf = true;                // offer VIRTIO_NET_F_MRG_RXBUF
  bool offloads = true;                 // offer CSUM, GUEST_CSUM, HOST/GUEST_TSO4/6
  MacAddress mac{0x02, 0, 0, 0, 0, 1};  // config-space MAC (VIRTIO_NET_F_MAC)
  std::uint16_t mtu = kEthDefaultMtu;   // config-space MTU (VIRTIO_NET_F_MTU)
  // Guest calls on the RX and TX rings (not the control queue): off by default; see
  // vhostd/virtqueue/call_coalescing.hpp.
  CallCoalescing call_coalescing{};
};

// One received packet: a view of the guest's TX chain plus its validated header. The frame's
// first 14 bytes are copied into `eth`; transmit() writes that copy, so a forwarding mode may
// rewrite the Ethernet header (macswap) without writing into the sender's memory.
struct Packet {
  const DescriptorChain* chain = nullptr;  // readable segments: virtio-net header, then frame
  std::uint32_t len = 0;                   // frame bytes (the header excluded)
  std::uint16_t data_segment = 0;          // where the frame starts in chain->readable()
  std::uint32_t data_offset = 0;
  VirtioNetHeader header{};
  std::array<std::uint8_t, kEthHeaderLen> eth{};
};

// Packets received from one ring, and the chains to give back. Owned by one lcore; its arrays
// come from `memory` (a data lcore's node-local arena, or the heap by default).
class PacketBurst {
 public:
  explicit PacketBurst(std::uint16_t capacity = kMaxBurst,
                       std::pmr::memory_resource* memory = std::pmr::get_default_resource());
  std::uint16_t capacity() const noexcept { return capacity_; }
  std::uint16_t size() const noexcept { return num_packets_; }
  Packet& operator[](std::uint16_t i) noexcept { return packets_[i]; }
  Packet* packets() noexcept { return packets_.data(); }
  // Bytes the arrays of a burst of `capacity` take (to size an arena).
  static std::size_t array_bytes(std::uint16_t capacity) noexcept {
    return capacity * (sizeof(DescriptorChain) + sizeof(Packet) + sizeof(std::uint16_t));
  }

 private:
  friend class NetPort;
  std::uint16_t capacity_;
  std::uint16_t num_packets_ = 0;
  std::uint16_t num_heads_ = 0;  // every chain popped, valid packets or not
  std::pmr::vector<DescriptorChain> chains_;
  std::pmr::vector<Packet> packets_;
  std::pmr::vector<std::uint16_t> heads_;
};

// Per queue pair counters. rx: written by the lcore polling the guest's TX ring; tx: by the
// one lcore writing the guest's RX ring. Relaxed single-writer atomics, readable anywhere.
struct PairStats {
  struct alignas(64) Rx {
    std::atomic<std::uint64_t> packets{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> errors{0};  // invalid header or runt frame: dropped
  } rx;
  struct alignas(64) Tx {
    std::atomic<std::uint64_t> packets{0};
    std::atomic<std::uint64_t> bytes{0};
    std::atomic<std::uint64_t> drops{0};  // no room, ring not running, or undeliverable (atomic add)
  } tx;
};

struct PortTotals {
  std::uint64_t rx_packets = 0, rx_bytes = 0, rx_errors = 0;
  std::uint64_t tx_packets = 0, tx_bytes = 0, tx_drops = 0;
};

class NetPort;

// What a data lcore does with a port's traffic (the forwarding engine).
class PacketHandler {
 public:
  virtual ~PacketHandler() = default;
  // Guest TX ring of `pair` has packets.
  virtual void on_guest_tx(NetPort& port, std::uint16_t pair) noexcept = 0;
  // Guest RX ring of `pair` has free buffers: only for handlers whose polls_guest_rx() is true.
  virtual void on_guest_rx(NetPort& /*port*/, std::uint16_t /*pair*/) noexcept {}
  virtual bool polls_guest_rx() const noexcept { return false; }
  // The frontend sent SEND_RARP for `port` (control lcore): the guest's MAC moved here.
  virtual void on_rarp(NetPort& /*port*/, const MacAddress& /*mac*/) {}
};

class NetPort : public Backend {
 public:
  NetPort(std::string name, const NetPortConfig& config);
  ~NetPort() override;

  // The engine; set before the port is served. Not owned.
  void set_handler(PacketHandler* handler) noexcept { handler_ = handler; }
  // Which data lcore polls which ring (index = lcore position among the runtime's pollers).
  void set_queue_placement(std::vector<std::vector<std::uint16_t>> rings_per_lcore);

  const std::string& name() const noexcept { return name_; }
  const NetPortConfig& config() const noexcept { return config_; }
  static constexpr std::uint16_t rx_ring(std::uint16_t pair) noexcept { return static_cast<std::uint16_t>(2 * pair); }
  static constexpr std::uint16_t tx_ring(std::uint16_t pair) noexcept { return static_cast<std::uint16_t>(2 * pair + 1); }
  std::uint16_t ctrl_ring() const noexcept { return static_cast<std::uint16_t>(2 * config_.queue_pairs); }

  // ---- data path ----
  // Pops up to burst.capacity() packets from the guest TX ring of `pair` into `burst` (emptied
  // first); invalid ones are counted (rx.errors) and only given back. Returns burst.size().
  // `max` caps the packets popped below burst.capacity().
  std::uint16_t receive(std::uint16_t pair, PacketBurst& burst, std::uint16_t max = kMaxBurst) noexcept;
  // Gives every chain of `burst` back to the guest (used, length 0) and signals it if due.
  void release(std::uint16_t pair, PacketBurst& burst) noexcept;
  // Copies packets[0..n) into the guest RX ring of `pair`, in order. Returns how many it
  // consumed: delivered, or dropped because they can never be delivered (larger than the
  // guest's buffers, more than kMaxMergedBuffers, GSO the guest did not negotiate), counted in
  // tx.drops. Packets from the returned index on found no room (or the ring is not running):
  // the caller retries or drops them (drop()).
  std::uint16_t transmit(std::uint16_t pair, Packet* const* packets, std::uint16_t n) noexcept;
  void drop(std::uint16_t pair, std::uint64_t n) noexcept;
  // receive() + transmit() + release() in one pass for whole ring lines of plain packets (no
  // offload metadata, each frame in one buffer that the receiver's buffer holds): from the guest
  // TX ring of `pair` straight into the guest RX ring of `dest_pair` of `dest`, up to `max`
  // packets, each copied once from the sender's buffer to the receiver's with no Packet in
  // between, the sender's chains given back. Lines on both sides (PackedQueue::peek_batch and
  // peek_fill_batch: packed rings); it stops before the first line that is not plain or does
  // not fit, and leaves it and the rest in the TX ring for receive(). Returns how many packets
  // it forwarded: a multiple of the line, 0 where a ring has no lines (split) or the receiver
  // has an announcement waiting (transmit() sends it). Counted as receive()/transmit() count.
  std::uint16_t forward_lines(std::uint16_t pair, NetPort& dest, std::uint16_t dest_pair, std::uint16_t max) noexcept;
  // Free buffers in the guest RX ring of `pair` (0 when it is not running).
  std::uint16_t rx_room(std::uint16_t pair) noexcept;

  // ---- control ----
  // Queues a RARP announcement of `mac` into this port's guest (RX ring of pair 0): sent with
  // the next transmit() to pair 0. Any thread.
  void announce(const MacAddress& mac) noexcept;
  // Queue pairs the guest enabled (VQ_PAIRS_SET; all offered pairs without CTRL_VQ/MQ).
  std::uint16_t active_pairs() const noexcept { return active_pairs_.load(std::memory_order_relaxed); }
  MacAddress guest_mac() const noexcept;
  std::uint16_t mtu() const noexcept { return mtu_.load(std::memory_order_relaxed); }
  const PairStats& stats(std::uint16_t pair) const noexcept { return stats_[pair]; }
  PortTotals totals() const noexcept;
  std::uint64_t negotiated_features() const noexcept { return acked_features_.load(std::memory_order_relaxed); }

  // ---- Backend ----
  std::size_t num_queues() const override { return 2u * config_.queue_pairs + 1; }
  std::uint32_t max_queue_size() const override { return config_.max_queue_size; }
  std::uint64_t queue_num() const override { return config_.queue_pairs; }
  std::uint64_t features() const override;
  std::uint64_t protocol_features() const override;
  std::vector<std::vector<std::uint16_t>> queues_per_lcore() const override { return placement_; }
  void acked_features(std::uint64_t features) override;
  std::vector<std::uint8_t> get_config(std::uint32_t offset, std::uint32_t size) override;
  void set_mtu(std::uint16_t mtu) override;
  void send_rarp(const std::uint8_t (&mac)[6]) override;
  void reset() override;
  void queue_started(std::uint16_t index, VringState& ring) override;
  bool queue_polled(std::uint16_t index) const override;
  CallCoalescing call_coalescing(std::uint16_t index) const override;
  void ring_attached(std::uint16_t index, VringState& ring) override;
  void ring_detached(std::uint16_t index) override;
  void handle_queue(std::uint16_t index, VringState& ring) noexcept override;

 private:
  // The data path, once per ring layout (Queue: SplitQueue or PackedQueue).
  template <DataPathQueue Queue>
  std::uint16_t receive_from(Queue& queue, std::uint16_t pair, PacketBurst& burst, std::uint16_t max) noexcept;
  template <DataPathQueue Queue>
  std::uint16_t transmit_into(Queue& queue, std::uint16_t pair, Packet* const* packets, std::uint16_t n) noexcept;
  template <bool kMergeable, DataPathQueue Queue>
  std::uint16_t transmit_burst(Queue& queue, std::uint16_t pair, Packet* const* packets, std::uint16_t n,
                               std::uint32_t header_len, std::uint64_t features) noexcept;
  template <DataPathQueue TxQueue, DataPathQueue RxQueue>
  std::uint16_t forward_lines_between(TxQueue& from, std::uint16_t pair, NetPort& dest, RxQueue& to,
                                      std::uint16_t dest_pair, std::uint16_t max) noexcept;
  template <DataPathQueue Queue>
  void inject_announcement(Queue& queue, std::uint16_t pair, std::uint32_t header_len, std::uint64_t features,
                           bool mergeable) noexcept;
  void handle_control(VringState& ring) noexcept;
  std::uint8_t control_command(std::uint8_t cls, std::uint8_t cmd, ChainReader& reader) noexcept;
  VringState* ring(std::uint16_t index) const noexcept { return rings_[index].load(std::memory_order_acquire); }

  std::string name_;
  NetPortConfig config_;
  PacketHandler* handler_ = nullptr;
  std::vector<std::vector<std::uint16_t>> placement_;
  std::unique_ptr<std::atomic<VringState*>[]> rings_;  // published by ring_attached()
  std::unique_ptr<PairStats[]> stats_;

  std::atomic<std::uint64_t> acked_features_{0};
  std::atomic<std::uint16_t> active_pairs_{1};
  std::atomic<std::uint64_t> guest_mac_;  // 6 bytes, set by CTRL_MAC_ADDR_SET
  std::atomic<std::uint16_t> mtu_;
  std::atomic<std::uint16_t> status_{kNetSLinkUp};
  std::atomic<std::uint64_t> announce_mac_{0};  // bit 48 set: an announcement is pending
  std::uint8_t rx_mode_ = 0;                    // CTRL_RX bits (control queue's lcore only)
  DescriptorChain control_chain_;               // control queue's lcore only
  std::unique_ptr<DescriptorChain[]> rx_scratch_;  // two chains per pair, for transmit()
};

}  // namespace vhostd::net
