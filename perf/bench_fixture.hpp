// vhostd perf: fixtures for the in-process data-path microbenchmarks (bench-datapath).
//
// Everything is real but the guest and the sockets: each guest's RAM is a memfd that the
// "guest driver" side writes through its own mapping (tests/frontend's TestGuestMemory) and
// that the backend maps again through lib/memory (MappedRegion / GuestMemory with a
// QsbrDomain), exactly as the daemon does after SET_MEM_TABLE. Rings are real split rings in
// that memory (tests/frontend's DriverRing), configured on the device side as
// Session::start_ring() does and handed to a NetPort with acked_features() + ring_attached(),
// as Daemon::start_polling() does. One thread, no poller, no eventfd (call fd -1).
//
// The guest side is kept in a steady state that costs next to nothing per burst
// (GuestRing::refill()): descriptor i always describes buffer i and avail slot i always holds
// head i, all written once at setup. The device consumes chains and returns them in order, so
// the guest "re-posts" what the device used by moving the avail index forward by the number
// of used entries published since the last refill: one acquire load of the used index and two
// stores. That refill runs inside the timed loop (it is a guest's cost, but far below the
// noise); the descriptors, avail entries and packet bytes are never rewritten.
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "driver_ring.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/quiescence.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/net/net_port.hpp"
#include "vhostd/net/virtio_net.hpp"
#include "vhostd/vhost/message.hpp"
#include "vhostd/virtqueue/split_queue.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd::bench {

inline constexpr std::uint64_t kGuestBase = 1ull << 20;    // guest-physical start of each guest's RAM
inline constexpr std::uint64_t kGuestBytes = 16ull << 20;  // one region
inline constexpr std::uint32_t kBufferBytes = 2048;        // one posted buffer (a DPDK mbuf's room)
inline constexpr std::uint32_t kQueueSize = 256;           // QEMU's and DPDK virtio-user's default

// The counters every packet benchmark reports, over the whole run (rates against CPU time; one
// thread): items_per_second (SetItemsProcessed), pkts/s (the same, as a kIsRate counter;
// "21.6M/s" = 21.6 Mpps) and time/pkt (its inverse: "46.3ns" per packet). In JSON output both
// are plain numbers: packets per second and seconds per packet.
inline void report_packets(benchmark::State& state, std::uint64_t packets) {
  state.SetItemsProcessed(static_cast<std::int64_t>(packets));
  const auto n = static_cast<double>(packets);
  state.counters["pkts/s"] = benchmark::Counter(n, benchmark::Counter::kIsRate);
  state.counters["time/pkt"] = benchmark::Counter(n, benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// One guest's RAM: the memfd as the frontend owns it, and the backend's mapping of it.
class BenchGuest {
 public:
  explicit BenchGuest(QsbrDomain& domain, std::uint64_t bytes = kGuestBytes)
      : memory_({{kGuestBase, bytes}}), device_(domain) {
    memory_.install(device_);  // SET_MEM_TABLE: the backend mmaps the memfd itself
  }
  test::TestGuestMemory& memory() noexcept { return memory_; }
  const GuestMemory& device() const noexcept { return device_; }

 private:
  test::TestGuestMemory memory_;
  GuestMemory device_;
};

// The guest driver's side of one ring in the steady state described at the top: `size`
// one-descriptor chains, descriptor i = buffer i (kBufferBytes apart, `posted_len` bytes
// posted), device-readable (guest TX) or device-writable (guest RX), all posted at start.
class GuestRing {
 public:
  GuestRing(test::TestGuestMemory& memory, std::uint32_t size, bool device_writable, std::uint32_t posted_len)
      : ring_(test::DriverRing::allocate(memory, size)),
        buffers_gpa_(memory.alloc(std::uint64_t{size} * kBufferBytes, test::kTestPageSize)),
        buffers_(memory.host(buffers_gpa_, std::uint64_t{size} * kBufferBytes)) {
    if (posted_len > kBufferBytes) throw_error("GuestRing: ", posted_len, " bytes posted in a ", kBufferBytes, " buffer");
    for (std::uint32_t i = 0; i < size; ++i) {
      ring_->desc(i) = VringDesc{buffer_gpa(i), posted_len, device_writable ? kVringDescFWrite : std::uint16_t{0}, 0};
    }
    for (std::uint32_t i = 0; i < size; ++i) ring_->publish_head(static_cast<std::uint16_t>(i));
    ring_->set_used_event(0x7fff);  // no interrupt wanted (and the call fd is -1 anyway)
  }

  test::DriverRing& ring() noexcept { return *ring_; }
  std::uint32_t size() const noexcept { return ring_->size(); }
  std::uint64_t buffer_gpa(std::uint32_t i) const noexcept { return buffers_gpa_ + std::uint64_t{i} * kBufferBytes; }
  std::uint8_t* buffer(std::uint32_t i) const noexcept { return buffers_ + std::size_t{i} * kBufferBytes; }

  // Re-posts every chain the device returned since the last call; returns how many.
  std::uint16_t refill() noexcept {
    const std::uint16_t used = ring_->used_idx();
    const auto n = static_cast<std::uint16_t>(used - last_used_);
    if (n != 0) {
      last_used_ = used;
      ring_->set_avail_idx(static_cast<std::uint16_t>(ring_->avail_idx() + n));
      ring_->set_used_event(static_cast<std::uint16_t>(used + 0x7fff));
    }
    return n;
  }
  // The used element the device published last (call after at least one).
  VringUsedElem last_used() const noexcept {
    return ring_->used_elem(static_cast<std::uint16_t>(ring_->used_idx() - 1) & (ring_->size() - 1));
  }

 private:
  std::unique_ptr<test::DriverRing> ring_;
  std::uint64_t buffers_gpa_;
  std::uint8_t* buffers_;
  std::uint16_t last_used_ = 0;
};

// Configures the device side of a started ring as Session::start_ring() does.
inline void start_ring(VringState& state, const test::DriverRing& ring, const GuestMemory& memory, bool event_idx) {
  SplitQueue& queue = state.split_queue();
  queue.set_size(ring.size());
  queue.set_addresses(ring.addresses());
  queue.check_addresses(*memory.current());
  queue.set_memory(&memory);
  queue.set_event_idx(event_idx);
  queue.disable_notifications();
}

struct PortOptions {
  bool mrg_rxbuf = true;                // negotiate VIRTIO_NET_F_MRG_RXBUF
  bool event_idx = true;                // negotiate VIRTIO_RING_F_EVENT_IDX
  std::uint32_t queue_size = kQueueSize;
  std::uint32_t frame_len = 64;         // bytes of each frame the guest sends (virtio-net header excluded)
  net::MacAddress mac{0x02, 0, 0, 0, 0, 1};
  net::MacAddress peer_mac{0x02, 0, 0, 0, 0, 2};  // destination of the frames the guest sends
};

// The frame every TX buffer holds: Ethernet header to peer_mac, IPv4 ethertype, then a byte
// pattern (only the Ethernet header is looked at by the io forwarding path).
inline void write_frame(std::uint8_t* frame, const PortOptions& options) {
  std::memcpy(frame, options.peer_mac.data(), net::kEthAddrLen);
  std::memcpy(frame + net::kEthAddrLen, options.mac.data(), net::kEthAddrLen);
  frame[12] = 0x08;
  frame[13] = 0x00;
  for (std::uint32_t i = net::kEthHeaderLen; i < options.frame_len; ++i) frame[i] = static_cast<std::uint8_t>(i * 7 + 1);
}

// One vhost-user-net port with one queue pair whose guest has posted a full TX ring of
// identical frames (virtio-net header all zero: no offload) and a full RX ring of empty
// kBufferBytes buffers. Rings: guest RX = ring 0, guest TX = ring 1; the control ring is not
// attached.
class BenchPort {
 public:
  BenchPort(const std::string& name, QsbrDomain& domain, const PortOptions& options)
      : options_(options),
        guest_(domain),
        tx_(guest_.memory(), options.queue_size, false, net::kNetHeaderLen + options.frame_len),
        rx_(guest_.memory(), options.queue_size, true, kBufferBytes),
        port_(name, make_config(options)) {
    if (options.frame_len < net::kEthHeaderLen || net::kNetHeaderLen + options.frame_len > kBufferBytes) {
      throw_error("BenchPort: frame of ", options.frame_len, " bytes");
    }
    for (std::uint32_t i = 0; i < options.queue_size; ++i) {
      std::uint8_t* buffer = tx_.buffer(i);
      std::memset(buffer, 0, net::kNetHeaderLen);
      write_frame(buffer + net::kNetHeaderLen, options);
    }
    start_ring(tx_state(), tx_.ring(), guest_.device(), options.event_idx);
    start_ring(rx_state_, rx_.ring(), guest_.device(), options.event_idx);
    port_.acked_features(features());
    port_.ring_attached(net::NetPort::rx_ring(0), rx_state_);
    port_.ring_attached(net::NetPort::tx_ring(0), tx_state());
    rx_state_.set_enabled(true);  // transmit() needs an enabled ring
    tx_state().set_enabled(true);
  }
  ~BenchPort() {
    port_.ring_detached(net::NetPort::tx_ring(0));
    port_.ring_detached(net::NetPort::rx_ring(0));
  }
  BenchPort(const BenchPort&) = delete;
  BenchPort& operator=(const BenchPort&) = delete;

  net::NetPort& port() noexcept { return port_; }
  GuestRing& guest_tx() noexcept { return tx_; }
  GuestRing& guest_rx() noexcept { return rx_; }
  VringState& tx_state() noexcept { return tx_vring_.unlocked(); }
  // The guest TX ring as a poller takes it (bench_poller.cpp).
  Vring& tx_vring() noexcept { return tx_vring_; }
  VringState& rx_state() noexcept { return rx_state_; }
  const PortOptions& options() const noexcept { return options_; }
  std::uint64_t features() const noexcept {
    return kVirtioFVersion1 | (options_.event_idx ? kVirtioFRingEventIdx : 0) |
           (options_.mrg_rxbuf ? net::kNetFMrgRxbuf : 0);
  }

  // Checks the last packet the device wrote into this guest's RX ring: one buffer, header
  // with num_buffers = 1 and nothing else, then exactly `sender`'s frame. Empty when fine.
  std::string check_last_rx(const PortOptions& sender) {
    if (rx_.ring().used_idx() == 0) return "nothing delivered";
    const VringUsedElem elem = rx_.last_used();
    if (elem.id >= rx_.size()) return "used id out of range";
    if (elem.len != net::kNetHeaderLen + sender.frame_len) return "used length " + std::to_string(elem.len);
    const std::uint8_t* buffer = rx_.buffer(elem.id);
    net::VirtioNetHeader header;
    std::memcpy(&header, buffer, sizeof header);
    if (header.num_buffers != 1 || header.flags != 0 || header.gso_type != 0) return "bad virtio-net header";
    std::uint8_t expected[kBufferBytes];
    write_frame(expected, sender);
    if (std::memcmp(buffer + net::kNetHeaderLen, expected, sender.frame_len) != 0) return "frame bytes differ";
    return {};
  }

 private:
  static net::NetPortConfig make_config(const PortOptions& options) {
    net::NetPortConfig config;
    config.queue_pairs = 1;
    config.max_queue_size = options.queue_size;
    config.mrg_rxbuf = options.mrg_rxbuf;
    config.offloads = false;
    config.mac = options.mac;
    return config;
  }

  PortOptions options_;
  BenchGuest guest_;
  GuestRing tx_;  // guest TX: the device reads (receive/release)
  GuestRing rx_;  // guest RX: the device writes (transmit)
  Vring tx_vring_;  // VringLocking::none: tx_state() is its state
  VringState rx_state_;
  net::NetPort port_;
};

// Options for the second port of a pair: its own MAC, sending back to the first.
inline PortOptions peer_options(PortOptions options) {
  std::swap(options.mac, options.peer_mac);
  return options;
}

}  // namespace vhostd::bench
