// vhostd drivers/net: the vhost-user-net port (see net_port.hpp).
//
// Policies the spec leaves to the device:
//   - A guest TX chain whose readable bytes cannot hold the header and an Ethernet header, or
//     whose header asks for an offload that was not negotiated or points past the packet, is
//     dropped and counted in rx.errors (DPDK CVE-2024-11614). The chain is given back.
//   - A packet with NEEDS_CSUM sent to a guest without GUEST_CSUM gets its checksum computed
//     here; a GSO packet sent to a guest without the matching GUEST_TSO is dropped (counted).
//   - Without MRG_RXBUF, a packet larger than the guest's next RX buffer is dropped and the
//     buffer left for the next packet.
//   - NET_SET_MTU is recorded and reported in config space; frames are not cut to it.
//   - VIRTIO_F_IN_ORDER is offered: buffers are always used in the order they were made
//     available, so the queues report a burst of guest TX chains with one used entry.
//   - Guest TX rings are readable-only (set_readable_only): a WRITE flag there is ignored, as
//     DPDK's backend does; DPDK's virtio PMD sets it on the header entry of its packed
//     indirect TX tables.
#include "vhostd/net/net_port.hpp"

#include <algorithm>
#include <array>
#include <cstring>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/log.hpp"
#include "vhostd/vhost/message.hpp"

namespace vhostd::net {

namespace {

std::uint32_t header_len_for(std::uint64_t features) noexcept {
  return (features & (kVirtioFVersion1 | kNetFMrgRxbuf)) ? kNetHeaderLen : kNetLegacyHeaderLen;
}

std::uint64_t pack_mac(const std::uint8_t* mac) noexcept {
  std::uint64_t v = 0;
  std::memcpy(&v, mac, kEthAddrLen);
  return v;
}

MacAddress unpack_mac(std::uint64_t v) noexcept {
  MacAddress mac;
  std::memcpy(mac.data(), &v, kEthAddrLen);
  return mac;
}

// How much of each packet the data path prefetches ahead of the copy (after the virtio-net
// header): a 64-byte frame whole, a larger one's headers.
constexpr std::uint32_t kPacketPrefetchBytes = 64;
// transmit() publishes the used buffers every this many packets, not only at the end of the
// burst: the receiving guest starts on the first packets while the rest are copied (a loop of
// 32 packets through one port runs ~1.5x faster than with one publication per burst). A power
// of two.
constexpr std::uint64_t kPublishEvery = 16;

// Writes `kLen` bytes to guest memory only where they differ from what is there. The virtio-net
// header of an RX buffer the guest recycles usually already holds the same bytes (no offload,
// one buffer); an unwritten line stays shared in both cores' caches, so the guest reads its
// header without a cross-core miss (DPDK's vhost and virtio PMDs do the same,
// ASSIGN_UNLESS_EQUAL). The caller marks the range dirty either way.
template <std::size_t kLen>
void write_unless_equal(std::uint8_t* dst, const void* src) noexcept {
  if (std::memcmp(dst, src, kLen) != 0) std::memcpy(dst, src, kLen);
}

// The packet's frame lies in one source segment (from data_offset on).
bool in_one_segment(const Packet& packet) noexcept {
  return packet.chain->segments[packet.data_segment].len - packet.data_offset >= packet.len;
}

// Writes a whole packet into one RX buffer that holds it: the header (only where it differs),
// the Ethernet header from `eth`, the rest of the frame (len - kEthHeaderLen bytes) from `rest`.
void write_whole(const ChainSegment& dst, const VirtioNetHeader& header, std::uint32_t header_len,
                 const std::uint8_t* eth, const std::uint8_t* rest, std::uint32_t len, const MemoryTable& table) noexcept {
  std::uint8_t* out = dst.host;
  if (header_len == kNetHeaderLen) {
    write_unless_equal<kNetHeaderLen>(out, &header);
  } else {
    write_unless_equal<kNetLegacyHeaderLen>(out, &header);
  }
  std::memcpy(out + header_len, eth, kEthHeaderLen);
  std::memcpy(out + header_len + kEthHeaderLen, rest, len - kEthHeaderLen);
  table.mark_dirty(dst.gpa, header_len + len);
}

// write_whole() for a received packet: its Ethernet header from the packet's copy, the rest
// from its one source segment.
void copy_whole(const ChainSegment& dst, const Packet& packet, const VirtioNetHeader& header, std::uint32_t header_len,
                const MemoryTable& table) noexcept {
  const ChainSegment& src = packet.chain->segments[packet.data_segment];
  write_whole(dst, header, header_len, packet.eth.data(), src.host + packet.data_offset + kEthHeaderLen, packet.len,
              table);
}

// Whether packets[0..n) take the plain copy into one buffer each: no offload metadata, the
// frame in one source segment.
bool plain_packets(Packet* const* packets, std::uint32_t n) noexcept {
  for (std::uint32_t k = 0; k < n; ++k) {
    const Packet& packet = *packets[k];
    if ((packet.header.flags | packet.header.gso_type) != 0 || !in_one_segment(packet)) return false;
  }
  return true;
}

// Asks for the lines of a line batch's buffers that transmit_line() touches: the virtio-net
// header's for reading (it is compared first, see write_unless_equal), up to `frame_bytes` of
// the frame's for writing.
template <typename LineBatch>
void prefetch_line_buffers(const LineBatch& batch, std::uint32_t header_len, std::uint32_t frame_bytes) noexcept {
  for (const ChainSegment& buffer : batch.buffers) {
    // read_line() only gives buffers of a byte or more.
    const std::uint32_t read = std::min(header_len, buffer.len - 1);
    prefetch_packet_read_then_write(buffer.host, read, std::min(frame_bytes, buffer.len - read));
  }
}

// Writes packets[0..kLineBatch), plain ones (plain_packets, checked by the caller), into the RX
// buffers of `batch` (PackedQueue::peek_fill_batch), each packet whole in its buffer, and
// commits the batch: returns the frame bytes delivered, or 0 having written and taken nothing
// when a packet does not fit its buffer.
template <DataPathQueue Queue>
std::uint64_t transmit_line(Queue& queue, const typename Queue::LineBatch& batch, Packet* const* packets,
                            std::uint32_t header_len, const MemoryTable& table) noexcept {
  constexpr std::uint32_t kLine = Queue::kLineBatch;
  std::array<std::uint32_t, kLine> written;
  for (std::uint32_t k = 0; k < kLine; ++k) {
    written[k] = header_len + packets[k]->len;
    if (batch.buffers[k].len < written[k]) return 0;
  }
  VirtioNetHeader header{};  // no offload; one buffer per packet
  header.num_buffers = 1;
  std::uint64_t bytes = 0;
  for (std::uint32_t k = 0; k < kLine; ++k) {
    copy_whole(batch.buffers[k], *packets[k], header, header_len, table);
    bytes += packets[k]->len;
  }
  queue.commit_fill_batch(batch, written);
  return bytes;
}

// As many whole ring lines of packets[0..n) as the RX ring takes as line batches (plain packets
// only: each line's are checked before the line is read), each line
// read one ahead so that its buffers' lines are on their way while the line before is written
// (the guest's core wrote them last). Returns how many packets it delivered (a multiple of
// kLineBatch, 0 when the first line is refused) and adds their frame bytes to `bytes`.
template <DataPathQueue Queue>
std::uint32_t transmit_lines(Queue& queue, Packet* const* packets, std::uint32_t n, std::uint32_t header_len,
                             const MemoryTable& table, std::uint64_t& bytes) noexcept {
  constexpr std::uint32_t kLine = Queue::kLineBatch;
  const std::uint32_t frame_bytes = std::min<std::uint32_t>(packets[0]->len, kPacketPrefetchBytes);
  std::array<typename Queue::LineBatch, 2> lines;
  std::uint32_t current = 0;
  if (!plain_packets(packets, kLine) || !queue.peek_fill_batch(lines[current])) return 0;
  prefetch_line_buffers(lines[current], header_len, frame_bytes);
  std::uint32_t done = 0;
  for (;;) {
    // The next line is read only for packets that can take it.
    const bool ahead = n - done >= 2 * kLine && plain_packets(packets + done + kLine, kLine) &&
                       queue.peek_fill_batch(lines[current ^ 1], true);
    if (ahead) prefetch_line_buffers(lines[current ^ 1], header_len, frame_bytes);
    const std::uint64_t line_bytes = transmit_line(queue, lines[current], packets + done, header_len, table);
    if (line_bytes == 0) break;
    bytes += line_bytes;
    done += kLine;
    if (!ahead) break;
    current ^= 1;
  }
  return done;
}

// forward_lines(): the frame bytes of each buffer of a guest TX line (header_len less than the
// buffer), or false when one of them is not plain: shorter than a header and an Ethernet
// header, or a header with any flag or GSO type (receive() validates those).
template <typename LineBatch>
bool plain_tx_line(const LineBatch& line, std::uint32_t header_len, std::array<std::uint32_t, 4>& frame_len) noexcept {
  static_assert(std::tuple_size_v<decltype(line.buffers)> == 4);
  bool plain = true;
  for (std::uint32_t k = 0; k < 4; ++k) {
    const ChainSegment& buffer = line.buffers[k];
    // flags and gso_type, the header's first two bytes (one read: the guest may change them).
    std::uint16_t offload;
    std::memcpy(&offload, buffer.host, sizeof offload);
    plain &= buffer.len >= header_len + kEthHeaderLen && offload == 0;
    frame_len[k] = buffer.len - header_len;
  }
  return plain;
}

// Asks for the lines of a guest TX buffer that are read first: the header and up to
// kPacketPrefetchBytes of the frame (receive() and forward_lines()).
void prefetch_tx_buffer(const ChainSegment& buffer, std::uint32_t header_len) noexcept {
  prefetch_packet(buffer.host, std::min(buffer.len, header_len + kPacketPrefetchBytes));
}

template <typename LineBatch>
void prefetch_tx_line(const LineBatch& line, std::uint32_t header_len) noexcept {
  for (const ChainSegment& buffer : line.buffers) prefetch_tx_buffer(buffer, header_len);
}

// A read position in a chain's readable segments.
struct ReadCursor {
  const ChainSegment* segment;
  const ChainSegment* end;
  std::uint32_t offset;

  // Copies n bytes out (the caller checked they exist).
  void read(std::uint8_t* dst, std::uint32_t n) noexcept {
    while (n > 0) {
      const std::uint32_t take = std::min(n, segment->len - offset);
      if (VHOSTD_UNLIKELY(take == 0)) return;  // past the chain: callers never ask; never loop
      std::memcpy(dst, segment->host + offset, take);
      dst += take;
      n -= take;
      offset += take;
      if (offset == segment->len && segment + 1 != end) {
        ++segment;
        offset = 0;
      }
    }
  }
  void skip(std::uint32_t n) noexcept {
    while (n > 0) {
      const std::uint32_t take = std::min(n, segment->len - offset);
      if (VHOSTD_UNLIKELY(take == 0)) return;
      n -= take;
      offset += take;
      if (offset == segment->len && segment + 1 != end) {
        ++segment;
        offset = 0;
      }
    }
  }
};

// A write position in one RX chain's writable segments; every write is dirty-logged.
struct WriteCursor {
  const ChainSegment* segment;
  const ChainSegment* end;
  std::uint32_t offset;
  const MemoryTable* table;

  // Writes up to n bytes from src; returns how many fit.
  std::uint32_t write(const std::uint8_t* src, std::uint32_t n) noexcept {
    std::uint32_t done = 0;
    while (done < n && segment != end) {
      const std::uint32_t take = std::min(n - done, segment->len - offset);
      std::memcpy(segment->host + offset, src + done, take);
      table->mark_dirty(segment->gpa + offset, take);
      done += take;
      offset += take;
      if (offset == segment->len) {
        ++segment;
        offset = 0;
      }
    }
    return done;
  }
  // Moves past n bytes (the caller checked they exist).
  void skip(std::uint32_t n) noexcept {
    while (n > 0) {
      const std::uint32_t take = std::min(n, segment->len - offset);
      n -= take;
      offset += take;
      if (offset == segment->len) {
        ++segment;
        offset = 0;
      }
    }
  }
  // Copies up to n bytes from a read cursor; returns how many fit.
  std::uint32_t copy_from(ReadCursor& src, std::uint32_t n) noexcept {
    std::uint32_t done = 0;
    while (done < n && segment != end) {
      const std::uint32_t take =
          std::min({n - done, segment->len - offset, src.segment->len - src.offset});
      if (VHOSTD_UNLIKELY(take == 0)) break;  // source exhausted: callers never ask; never loop
      std::memcpy(segment->host + offset, src.segment->host + src.offset, take);
      table->mark_dirty(segment->gpa + offset, take);
      done += take;
      offset += take;
      if (offset == segment->len) {
        ++segment;
        offset = 0;
      }
      src.skip(take);
    }
    return done;
  }
};

// Internet checksum of n bytes from a read cursor, as Linux's skb_checksum_help() computes a
// NEEDS_CSUM packet's (the field already holds the pseudo-header sum).
std::uint16_t checksum(ReadCursor cursor, std::uint32_t n) noexcept {
  std::uint64_t sum = 0;
  bool odd = false;  // the previous segment ended on an odd byte
  std::uint8_t carry_byte = 0;
  while (n > 0) {
    const std::uint32_t take = std::min(n, cursor.segment->len - cursor.offset);
    if (VHOSTD_UNLIKELY(take == 0)) break;
    const std::uint8_t* p = cursor.segment->host + cursor.offset;
    std::uint32_t i = 0;
    if (odd && take > 0) {
      sum += static_cast<std::uint16_t>(carry_byte | (p[0] << 8));
      i = 1;
      odd = false;
    }
    for (; i + 1 < take; i += 2) sum += static_cast<std::uint16_t>(p[i] | (p[i + 1] << 8));
    if (i < take) {
      carry_byte = p[i];
      odd = true;
    }
    n -= take;
    cursor.skip(take);
  }
  if (odd) sum += carry_byte;
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  const auto folded = static_cast<std::uint16_t>(~sum);
  return folded == 0 ? 0xffff : folded;  // CSUM_MANGLED_0
}

// Validates a guest TX header against the negotiated features; false: drop the packet.
bool valid_tx_header(const VirtioNetHeader& h, std::uint32_t frame_len, std::uint64_t features) noexcept {
  if (h.flags & ~(kNetHdrFNeedsCsum | kNetHdrFDataValid)) return false;
  if (h.flags & kNetHdrFNeedsCsum) {
    if (!(features & kNetFCsum)) return false;
    if (std::uint32_t{h.csum_start} + h.csum_offset + 2u > frame_len) return false;
  }
  if (h.gso_type != kNetHdrGsoNone) {
    const std::uint8_t type = h.gso_type & ~kNetHdrGsoEcn;
    if ((h.gso_type & kNetHdrGsoEcn) && !(features & kNetFHostEcn)) return false;
    if (type == kNetHdrGsoTcpv4 && !(features & kNetFHostTso4)) return false;
    if (type == kNetHdrGsoTcpv6 && !(features & kNetFHostTso6)) return false;
    if (type != kNetHdrGsoTcpv4 && type != kNetHdrGsoTcpv6) return false;  // UFO/USO not offered
    // GSO needs a partial checksum to fill in per segment, and a segment size.
    if (!(h.flags & kNetHdrFNeedsCsum) || h.gso_size == 0) return false;
  }
  return true;
}

// The header a receiving guest gets for `packet`, or false when the packet cannot be given to
// it (GSO the receiver did not negotiate). `csum_fixup` is set when the checksum must be
// computed here because the receiver cannot take a partial one.
bool make_rx_header(const Packet& packet, std::uint64_t rx_features, VirtioNetHeader& out, bool& csum_fixup) noexcept {
  out = VirtioNetHeader{};
  csum_fixup = false;
  const VirtioNetHeader& in = packet.header;
  if (VHOSTD_LIKELY((in.flags | in.gso_type) == 0)) return true;
  if (in.gso_type != kNetHdrGsoNone) {
    const std::uint8_t type = in.gso_type & ~kNetHdrGsoEcn;
    const std::uint64_t needed = type == kNetHdrGsoTcpv4 ? kNetFGuestTso4 : kNetFGuestTso6;
    if (!(rx_features & needed) || !(rx_features & kNetFGuestCsum)) return false;
    if ((in.gso_type & kNetHdrGsoEcn) && !(rx_features & kNetFGuestEcn)) return false;
    out = in;
    out.num_buffers = 0;
    return true;
  }
  if (in.flags & kNetHdrFNeedsCsum) {
    if (rx_features & kNetFGuestCsum) {
      out.flags = kNetHdrFNeedsCsum;
      out.csum_start = in.csum_start;
      out.csum_offset = in.csum_offset;
    } else {
      csum_fixup = true;
    }
    return true;
  }
  // DATA_VALID alone: pass it on where the receiver understands checksum flags.
  if (rx_features & kNetFGuestCsum) out.flags = in.flags & kNetHdrFDataValid;
  return true;
}

// Builds a RARP frame announcing `mac` (what QEMU's qemu_announce_self sends).
std::uint32_t build_rarp(const MacAddress& mac, std::uint8_t* frame) noexcept {
  std::memset(frame, 0, 60);
  std::memset(frame, 0xff, 6);                  // broadcast destination
  std::memcpy(frame + 6, mac.data(), 6);        // source: the guest that moved
  frame[12] = 0x80, frame[13] = 0x35;           // ethertype RARP
  frame[14] = 0x00, frame[15] = 0x01;           // hardware type Ethernet
  frame[16] = 0x08, frame[17] = 0x00;           // protocol IPv4
  frame[18] = 6, frame[19] = 4;                 // address lengths
  frame[20] = 0x00, frame[21] = 0x03;           // reverse request
  std::memcpy(frame + 22, mac.data(), 6);       // sender hardware address
  std::memcpy(frame + 32, mac.data(), 6);       // target hardware address
  return 60;
}

}  // namespace

// ---- PacketBurst ----

PacketBurst::PacketBurst(std::uint16_t capacity, std::pmr::memory_resource* memory)
    : capacity_(std::clamp<std::uint16_t>(capacity, 1, kMaxBurst)),
      chains_(capacity_, memory),
      packets_(capacity_, memory),
      heads_(capacity_, memory) {}

// ---- NetPort: construction and control path ----

NetPort::NetPort(std::string name, const NetPortConfig& config)
    : name_(std::move(name)),
      config_(config),
      rings_(std::make_unique<std::atomic<VringState*>[]>(2u * config.queue_pairs + 1)),
      stats_(std::make_unique<PairStats[]>(config.queue_pairs)),
      guest_mac_(pack_mac(config.mac.data())),
      mtu_(config.mtu),
      rx_scratch_(std::make_unique<DescriptorChain[]>(2u * config.queue_pairs)) {
  if (config.queue_pairs == 0 || config.queue_pairs > kMaxQueuePairs) {
    throw_error(name_, ": ", config.queue_pairs, " queue pairs: must be 1..", kMaxQueuePairs);
  }
  if (config.mtu < kEthMinMtu) throw_error(name_, ": MTU ", config.mtu, " is below ", kEthMinMtu);
  for (std::size_t i = 0; i < 2u * config.queue_pairs + 1; ++i) rings_[i].store(nullptr, std::memory_order_relaxed);
  active_pairs_.store(config.queue_pairs, std::memory_order_relaxed);
}

NetPort::~NetPort() = default;

void NetPort::set_queue_placement(std::vector<std::vector<std::uint16_t>> rings_per_lcore) {
  placement_ = std::move(rings_per_lcore);
}

std::uint64_t NetPort::features() const {
  // IN_ORDER: every path of this device returns buffers in the order it took them (TX chains
  // in release(), RX buffers in transmit(), the control queue one by one); DPDK's virtio-user
  // then runs its faster in-order paths.
  // RING_PACKED: the data path is written once over DataPathQueue, for both layouts.
  std::uint64_t f = kVirtioFVersion1 | kVirtioFRingIndirectDesc | kVirtioFRingEventIdx | kVirtioFLogAll |
                    kVirtioFInOrder | kVirtioFRingPacked |
                    kNetFMac | kNetFMtu | kNetFStatus | kNetFCtrlVq | kNetFCtrlRx | kNetFCtrlMacAddr |
                    kNetFGuestAnnounce | kNetFMq;
  if (config_.mrg_rxbuf) f |= kNetFMrgRxbuf;
  if (config_.offloads) {
    f |= kNetFCsum | kNetFGuestCsum | kNetFHostTso4 | kNetFHostTso6 | kNetFGuestTso4 | kNetFGuestTso6;
  }
  return f;
}

std::uint64_t NetPort::protocol_features() const {
  return protocol_bit(ProtocolFeature::mq) | protocol_bit(ProtocolFeature::config) |
         protocol_bit(ProtocolFeature::net_mtu) | protocol_bit(ProtocolFeature::rarp);
}

void NetPort::acked_features(std::uint64_t features) {
  // Read per burst by the data path; LOG_ALL toggles arrive while rings run.
  acked_features_.store(features, std::memory_order_relaxed);
  if (!(features & kNetFMq)) active_pairs_.store(config_.queue_pairs, std::memory_order_relaxed);
}

std::vector<std::uint8_t> NetPort::get_config(std::uint32_t offset, std::uint32_t size) {
  VirtioNetConfig config{};
  const MacAddress mac = guest_mac();
  std::memcpy(config.mac, mac.data(), kEthAddrLen);
  config.status = status_.load(std::memory_order_relaxed);
  config.max_virtqueue_pairs = config_.queue_pairs;
  config.mtu = mtu();
  if (offset > sizeof config || size > sizeof config - offset) return {};
  std::vector<std::uint8_t> bytes(size);
  std::memcpy(bytes.data(), reinterpret_cast<const std::uint8_t*>(&config) + offset, size);
  return bytes;
}

void NetPort::set_mtu(std::uint16_t mtu) {
  if (mtu < kEthMinMtu) throw_error("NET_SET_MTU ", mtu, ": below the minimum of ", kEthMinMtu);
  mtu_.store(mtu, std::memory_order_relaxed);
}

void NetPort::send_rarp(const std::uint8_t (&mac)[6]) {
  MacAddress address;
  std::memcpy(address.data(), mac, kEthAddrLen);
  log_info(name_, ": SEND_RARP for ", static_cast<int>(mac[0]), ":", static_cast<int>(mac[5]));
  if (handler_ != nullptr) handler_->on_rarp(*this, address);
}

void NetPort::announce(const MacAddress& mac) noexcept {
  // Release: pairs with the data path's exchange; bit 48 marks the announcement pending.
  announce_mac_.store(pack_mac(mac.data()) | (1ull << 48), std::memory_order_release);
}

MacAddress NetPort::guest_mac() const noexcept { return unpack_mac(guest_mac_.load(std::memory_order_relaxed)); }

void NetPort::reset() {
  acked_features_.store(0, std::memory_order_relaxed);
  active_pairs_.store(config_.queue_pairs, std::memory_order_relaxed);
  guest_mac_.store(pack_mac(config_.mac.data()), std::memory_order_relaxed);
  mtu_.store(config_.mtu, std::memory_order_relaxed);
  status_.store(kNetSLinkUp, std::memory_order_relaxed);
  announce_mac_.store(0, std::memory_order_relaxed);  // meant for the guest that left
  rx_mode_ = 0;
}

void NetPort::queue_started(std::uint16_t index, VringState& ring) {
  const bool guest_tx = index != ctrl_ring() && index % 2 == 1;
  ring.visit([&](auto& queue) { queue.set_readable_only(guest_tx); });
}

bool NetPort::queue_polled(std::uint16_t index) const {
  if (index == ctrl_ring()) return true;
  if (index % 2 == 1) return true;  // guest TX
  return handler_ != nullptr && handler_->polls_guest_rx();
}

CallCoalescing NetPort::call_coalescing(std::uint16_t index) const {
  return index == ctrl_ring() ? CallCoalescing{} : config_.call_coalescing;
}

void NetPort::ring_attached(std::uint16_t index, VringState& ring) {
  // Release: the ring's configuration is visible to the lcore that acquires the pointer.
  if (index < num_queues()) rings_[index].store(&ring, std::memory_order_release);
}

void NetPort::ring_detached(std::uint16_t index) {
  // The framework synchronizes with every data lcore after this returns.
  if (index < num_queues()) rings_[index].store(nullptr, std::memory_order_release);
}

PortTotals NetPort::totals() const noexcept {
  PortTotals t;
  for (std::uint16_t q = 0; q < config_.queue_pairs; ++q) {
    const PairStats& s = stats_[q];
    t.rx_packets += s.rx.packets.load(std::memory_order_relaxed);
    t.rx_bytes += s.rx.bytes.load(std::memory_order_relaxed);
    t.rx_errors += s.rx.errors.load(std::memory_order_relaxed);
    t.tx_packets += s.tx.packets.load(std::memory_order_relaxed);
    t.tx_bytes += s.tx.bytes.load(std::memory_order_relaxed);
    t.tx_drops += s.tx.drops.load(std::memory_order_relaxed);
  }
  return t;
}

// ---- data path ----

void NetPort::handle_queue(std::uint16_t index, VringState& ring) noexcept {
  if (index == ctrl_ring()) {
    handle_control(ring);
    return;
  }
  if (handler_ == nullptr) return;
  const auto pair = static_cast<std::uint16_t>(index / 2);
  if (index % 2 == 1) {
    handler_->on_guest_tx(*this, pair);
  } else {
    handler_->on_guest_rx(*this, pair);
  }
}

std::uint16_t NetPort::receive(std::uint16_t pair, PacketBurst& burst, std::uint16_t max) noexcept {
  burst.num_packets_ = 0;
  burst.num_heads_ = 0;
  VringState* state = ring(tx_ring(pair));
  if (VHOSTD_UNLIKELY(state == nullptr)) return 0;
  return state->visit([&](auto& queue) noexcept {
    return receive_from(queue, pair, burst, std::min(max, burst.capacity_));
  });
}

template <DataPathQueue Queue>
std::uint16_t NetPort::receive_from(Queue& queue, std::uint16_t pair, PacketBurst& burst, std::uint16_t max) noexcept {
  // The runtime's poll() ran just before on_guest_tx(): use what it saw, and read the avail
  // index again only when that is used up (or receive() is called on its own).
  if (queue.poll_cached() == 0 && queue.poll() == 0) return 0;
  const std::uint64_t features = acked_features_.load(std::memory_order_relaxed);
  const std::uint32_t header_len = header_len_for(features);
  PairStats::Rx& stats = stats_[pair].rx;
  std::uint64_t bytes = 0, errors = 0;

  // Pass 1: pop the chains, prefetching each packet's first bytes. They are the burst's cache
  // misses (the guest's core wrote them); taken one after another they would be paid in
  // series, prefetched here they overlap.
  auto took = [&](const DescriptorChain& chain) noexcept {
    burst.heads_[burst.num_heads_++] = chain.head;
    if (VHOSTD_LIKELY(chain.num_readable != 0)) prefetch_tx_buffer(chain.segments[0], header_len);
  };
  while (burst.num_heads_ < max) {
    if constexpr (Queue::kLineBatch != 0) {
      // A ring line of single-descriptor chains at once (PackedQueue::pop_batch); anything else
      // goes through pop() below.
      if (static_cast<std::uint32_t>(max - burst.num_heads_) >= Queue::kLineBatch &&
          queue.pop_batch(&burst.chains_[burst.num_heads_])) {
        for (std::uint32_t k = 0; k < Queue::kLineBatch; ++k) took(burst.chains_[burst.num_heads_]);
        continue;
      }
    }
    DescriptorChain& chain = burst.chains_[burst.num_heads_];
    if (!queue.pop(chain)) break;
    took(chain);
  }
  // Pass 2: the headers.
  for (std::uint16_t c = 0; c < burst.num_heads_; ++c) {
    DescriptorChain& chain = burst.chains_[c];
    if (VHOSTD_UNLIKELY(chain.readable_bytes < header_len + kEthHeaderLen)) {
      ++errors;
      continue;
    }
    Packet& packet = burst.packets_[burst.num_packets_];
    packet.chain = &chain;
    packet.len = chain.readable_bytes - header_len;
    const ChainSegment* first = chain.segments.data();
    if (VHOSTD_LIKELY(first->len >= header_len + kEthHeaderLen)) {
      // Common case: header and Ethernet header in the first buffer.
      // Constant sizes: two fixed moves rather than a copy of a length known only at run time.
      if (header_len == kNetHeaderLen) {
        std::memcpy(&packet.header, first->host, kNetHeaderLen);
      } else {
        std::memcpy(&packet.header, first->host, kNetLegacyHeaderLen);
      }
      std::memcpy(packet.eth.data(), first->host + header_len, kEthHeaderLen);
      packet.data_segment = 0;
      packet.data_offset = header_len;
    } else {
      ReadCursor cursor{first, first + chain.num_readable, 0};
      cursor.read(reinterpret_cast<std::uint8_t*>(&packet.header), header_len);
      packet.data_segment = static_cast<std::uint16_t>(cursor.segment - first);
      packet.data_offset = cursor.offset;
      cursor.read(packet.eth.data(), kEthHeaderLen);
    }
    if (header_len == kNetLegacyHeaderLen) packet.header.num_buffers = 0;
    if (VHOSTD_UNLIKELY((packet.header.flags | packet.header.gso_type) != 0) &&
        !valid_tx_header(packet.header, packet.len, features)) {
      ++errors;
      continue;
    }
    bytes += packet.len;
    ++burst.num_packets_;
  }
  add_single_writer(stats.packets, burst.num_packets_);
  add_single_writer(stats.bytes, bytes);
  if (VHOSTD_UNLIKELY(errors != 0)) add_single_writer(stats.errors, errors);
  return burst.num_packets_;
}

void NetPort::release(std::uint16_t pair, PacketBurst& burst) noexcept {
  if (burst.num_heads_ == 0) return;
  VringState* state = ring(tx_ring(pair));
  if (VHOSTD_UNLIKELY(state == nullptr)) return;
  state->visit([&](auto& queue) noexcept {
    queue.push_used_burst(burst.heads_.data(), burst.num_heads_, 0);
    queue.flush_used();
    queue.notify();
  });
  burst.num_heads_ = 0;
  burst.num_packets_ = 0;
}

std::uint16_t NetPort::forward_lines(std::uint16_t pair, NetPort& dest, std::uint16_t dest_pair,
                                     std::uint16_t max) noexcept {
  VringState* from = ring(tx_ring(pair));
  VringState* to = dest.ring(rx_ring(dest_pair));
  if (VHOSTD_UNLIKELY(from == nullptr || to == nullptr)) return 0;
  // An announcement for the receiver goes first, with transmit().
  if (VHOSTD_UNLIKELY(dest_pair == 0 && (dest.announce_mac_.load(std::memory_order_relaxed) >> 48) != 0)) return 0;
  return from->visit([&](auto& tx_queue) noexcept {
    return to->visit([&](auto& rx_queue) noexcept {
      return forward_lines_between(tx_queue, pair, dest, rx_queue, dest_pair, max);
    });
  });
}

template <DataPathQueue TxQueue, DataPathQueue RxQueue>
std::uint16_t NetPort::forward_lines_between(TxQueue& from, std::uint16_t pair, NetPort& dest, RxQueue& to,
                                             std::uint16_t dest_pair, std::uint16_t max) noexcept {
  if constexpr (TxQueue::kLineBatch == 0 || RxQueue::kLineBatch == 0) {
    return 0;  // no lines on one side (split rings)
  } else {
    constexpr std::uint32_t kLine = TxQueue::kLineBatch;
    static_assert(RxQueue::kLineBatch == kLine && kLine == 4, "plain_tx_line() reads lines of four");
    // poll_cached() picks up each side's current memory table; a line each side or nothing.
    if (max < kLine || from.poll_cached() == 0 || (to.poll_cached() == 0 && to.idle())) return 0;
    const std::uint32_t tx_header_len = header_len_for(acked_features_.load(std::memory_order_relaxed));
    const std::uint32_t rx_header_len = header_len_for(dest.acked_features_.load(std::memory_order_relaxed));
    const MemoryTable& rx_table = *to.table();
    VirtioNetHeader header{};  // no offload; one buffer per packet
    header.num_buffers = 1;
    std::array<typename TxQueue::LineBatch, 2> tx_lines;
    std::array<typename RxQueue::LineBatch, 2> rx_lines;
    std::array<std::uint16_t, kMaxBurst> taken;  // the sender's buffer ids, given back at the end
    std::uint32_t current = 0, done = 0;
    std::uint64_t bytes = 0;
    if (!from.peek_batch(tx_lines[0]) || !to.peek_fill_batch(rx_lines[0])) return 0;
    prefetch_tx_line(tx_lines[0], tx_header_len);
    prefetch_line_buffers(rx_lines[0], rx_header_len, kPacketPrefetchBytes);
    for (;;) {
      // Both next lines are read one ahead, their buffers asked for while this line is copied
      // (transmit_lines() does the same on the receiving side).
      const unsigned next = current ^ 1;
      const bool ahead = max - done >= 2 * kLine && from.peek_batch(tx_lines[next], true) &&
                         to.peek_fill_batch(rx_lines[next], true);
      if (ahead) {
        prefetch_tx_line(tx_lines[next], tx_header_len);
        prefetch_line_buffers(rx_lines[next], rx_header_len, kPacketPrefetchBytes);
      }
      const auto& tx_line = tx_lines[current];
      const auto& rx_line = rx_lines[current];
      // Every packet of the line checked before any is written: a line is forwarded whole or
      // left whole.
      std::array<std::uint32_t, kLine> frame_len, written;
      if (!plain_tx_line(tx_line, tx_header_len, frame_len)) break;
      bool fits = true;
      for (std::uint32_t k = 0; k < kLine; ++k) {
        written[k] = rx_header_len + frame_len[k];
        fits &= rx_line.buffers[k].len >= written[k];
      }
      if (!fits) break;
      for (std::uint32_t k = 0; k < kLine; ++k) {
        const std::uint8_t* frame = tx_line.buffers[k].host + tx_header_len;
        write_whole(rx_line.buffers[k], header, rx_header_len, frame, frame + kEthHeaderLen, frame_len[k], rx_table);
        bytes += frame_len[k];
        taken[done + k] = tx_line.ids[k];
      }
      to.commit_fill_batch(rx_line, written);
      from.take_batch(tx_line);  // the line at the avail position: read for it, nothing taken since
      done += kLine;
      if (!ahead) break;
      current = next;
    }
    if (done == 0) return 0;
    to.notify();  // commit_fill_batch() published every line (nothing is staged)
    from.push_used_burst(taken.data(), done, 0);
    from.flush_used();
    from.notify();
    add_single_writer(stats_[pair].rx.packets, done);
    add_single_writer(stats_[pair].rx.bytes, bytes);
    add_single_writer(dest.stats_[dest_pair].tx.packets, done);
    add_single_writer(dest.stats_[dest_pair].tx.bytes, bytes);
    return static_cast<std::uint16_t>(done);
  }
}

void NetPort::drop(std::uint16_t pair, std::uint64_t n) noexcept {
  // An atomic add: a forwarder may count drops against a pair another lcore writes (a pair the
  // sender has and this port lacks). Drops are per burst, never per delivered packet.
  if (n != 0) stats_[pair].tx.drops.fetch_add(n, std::memory_order_relaxed);
}

std::uint16_t NetPort::rx_room(std::uint16_t pair) noexcept {
  VringState* state = ring(rx_ring(pair));
  return state == nullptr ? 0 : state->visit([](auto& queue) noexcept { return queue.poll(); });
}

std::uint16_t NetPort::transmit(std::uint16_t pair, Packet* const* packets, std::uint16_t n) noexcept {
  VringState* state = ring(rx_ring(pair));
  if (VHOSTD_UNLIKELY(state == nullptr)) return 0;  // attached means started and enabled
  return state->visit([&](auto& queue) noexcept { return transmit_into(queue, pair, packets, n); });
}

template <DataPathQueue Queue>
std::uint16_t NetPort::transmit_into(Queue& queue, std::uint16_t pair, Packet* const* packets,
                                     std::uint16_t n) noexcept {
  if constexpr (Queue::kLineBatch != 0) {
    // A packed ring's poll() walks its descriptors, which the line reads and pop() read again:
    // only make sure one is there (poll_cached() also picks up the current memory table).
    if (queue.poll_cached() == 0 && queue.idle()) return 0;
  } else {
    // Buffers seen at the last look may be enough for this burst (one per packet at least).
    if (queue.poll_cached() < n && queue.poll() == 0) return 0;
  }
  const std::uint64_t features = acked_features_.load(std::memory_order_relaxed);
  const std::uint32_t header_len = header_len_for(features);
  const bool mergeable = (features & kNetFMrgRxbuf) != 0;
  if (VHOSTD_UNLIKELY(pair == 0 && (announce_mac_.load(std::memory_order_relaxed) >> 48) != 0)) {
    inject_announcement(queue, pair, header_len, features, mergeable);
  }
  // The receiving guest's buffers are lines its core touched last: have them all on their way
  // before the first copy. The header is only compared (write_unless_equal): its line is asked
  // for reading, so where it holds nothing else it stays in the guest's cache.
  // Rings with line batches read their lines one ahead instead (transmit_lines).
  if (Queue::kLineBatch == 0 && VHOSTD_LIKELY(n != 0)) {
    queue.prefetch_buffers(n, header_len, std::min<std::uint32_t>(packets[0]->len, kPacketPrefetchBytes));
  }
  const std::uint16_t done = mergeable ? transmit_burst<true>(queue, pair, packets, n, header_len, features)
                                       : transmit_burst<false>(queue, pair, packets, n, header_len, features);
  queue.flush_used();
  queue.notify();
  return done;
}

template <DataPathQueue Queue>
void NetPort::inject_announcement(Queue& queue, std::uint16_t pair, std::uint32_t header_len,
                                  std::uint64_t features, bool mergeable) noexcept {
  // Acquire: pairs with announce()'s release store.
  const std::uint64_t pending = announce_mac_.exchange(0, std::memory_order_acquire);
  if ((pending >> 48) == 0) return;
  std::uint8_t frame[kNetHeaderLen + 60] = {};
  const std::uint32_t len = build_rarp(unpack_mac(pending & 0xffffffffffffull), frame + header_len);
  DescriptorChain source;  // only its first segment is used
  source.segments[0] = ChainSegment{frame, 0, header_len + len};
  source.num_readable = 1;
  source.readable_bytes = header_len + len;
  Packet packet;
  packet.chain = &source;
  packet.len = len;
  packet.data_offset = header_len;
  std::memcpy(packet.eth.data(), frame + header_len, kEthHeaderLen);
  Packet* one = &packet;
  if ((mergeable ? transmit_burst<true>(queue, pair, &one, 1, header_len, features)
                 : transmit_burst<false>(queue, pair, &one, 1, header_len, features)) == 0) {
    announce_mac_.store(pending, std::memory_order_relaxed);  // no room: try with the next burst
  }
}

template <bool kMergeable, DataPathQueue Queue>
std::uint16_t NetPort::transmit_burst(Queue& queue, std::uint16_t pair, Packet* const* packets,
                                      std::uint16_t n, std::uint32_t header_len, std::uint64_t features) noexcept {
  struct UsedBuffer {
    std::uint16_t head;
    std::uint32_t len;
  };
  PairStats::Tx& stats = stats_[pair].tx;
  const MemoryTable* table = queue.table();
  DescriptorChain& first = rx_scratch_[2u * pair];
  DescriptorChain& more = rx_scratch_[2u * pair + 1];
  // Used elements of the packet being copied: pushed only once all of it fits.
  UsedBuffer used[kMergeable ? kMaxMergedBuffers : 1];
  std::uint64_t delivered = 0, bytes = 0, dropped = 0;
  // A packet's used elements are all pushed: count it, and publish every kPublishEvery packets.
  auto delivered_one = [&](std::uint32_t len) noexcept {
    ++delivered;
    bytes += len;
    if ((delivered & (kPublishEvery - 1)) == 0) queue.flush_used();
  };
  std::uint16_t i = 0;

  for (; i < n; ++i) {
    if constexpr (Queue::kLineBatch != 0) {
      // Ring lines of RX buffers for the next packets, a line at a time (PackedQueue::
      // peek_fill_batch); anything the lines do not cover goes through the per-packet path below.
      if (static_cast<std::uint32_t>(n - i) >= Queue::kLineBatch) {
        const std::uint32_t lined = transmit_lines(queue, packets + i, n - i, header_len, *table, bytes);
        if (lined != 0) {
          delivered += lined;
          i = static_cast<std::uint16_t>(i + lined - 1);
          continue;
        }
      }
    }
    const Packet& packet = *packets[i];
    VirtioNetHeader header{};
    bool csum_fixup = false;
    if (VHOSTD_UNLIKELY((packet.header.flags | packet.header.gso_type) != 0) &&
        VHOSTD_UNLIKELY(!make_rx_header(packet, features, header, csum_fixup) ||
                        (csum_fixup && packet.header.csum_start < kEthHeaderLen))) {
      ++dropped;  // GSO the receiver cannot take, or a checksum inside the Ethernet header
      continue;
    }
    const std::uint32_t total = header_len + packet.len;
    // No buffer in the cached view: look at the avail index once more before giving up.
    if (!queue.pop(first) && (queue.poll() == 0 || !queue.pop(first))) break;
    if (VHOSTD_UNLIKELY(first.writable_bytes < (kMergeable ? header_len : total))) {
      if constexpr (kMergeable) {
        queue.push_used(first.head, 0);  // cannot even hold the header: give it back empty
      } else {
        queue.rewind(1);  // too small for this packet, maybe not for the next
      }
      ++dropped;
      continue;
    }

    // Fast path: the frame in one source buffer, the whole packet in the first RX buffer, no
    // checksum to compute (every 64..1518-byte packet between two ordinary guests).
    const ChainSegment& dst_segment = first.segments[first.num_readable];
    if (VHOSTD_LIKELY(!csum_fixup && in_one_segment(packet) && first.num_writable != 0 && dst_segment.len >= total)) {
      header.num_buffers = 1;
      copy_whole(dst_segment, packet, header, header_len, *table);
      queue.push_used(first.head, total);
      delivered_one(packet.len);
      continue;
    }

    std::uint16_t buffers = 1;
    used[0] = UsedBuffer{first.head, 0};
    const ChainSegment* dst_first = first.writable().data();
    WriteCursor dst{dst_first, dst_first + first.num_writable, 0, table};
    dst.skip(header_len);  // written last, once num_buffers is known
    std::uint32_t in_buffer = header_len;
    auto next_buffer = [&]() noexcept -> bool {
      if constexpr (!kMergeable) {
        return false;
      } else {
        if (buffers == kMaxMergedBuffers) return false;
        if (!queue.pop(more) && (queue.poll() == 0 || !queue.pop(more))) return false;
        used[buffers - 1].len = in_buffer;
        used[buffers++] = UsedBuffer{more.head, 0};
        const ChainSegment* s = more.writable().data();
        dst = WriteCursor{s, s + more.num_writable, 0, table};
        in_buffer = 0;
        return true;
      }
    };

    // The frame in order: the Ethernet header from the packet's own copy, then the sender's
    // bytes, with the checksum patched in where it is computed here.
    const ChainSegment* src_first = packet.chain->segments.data();
    ReadCursor source{src_first + packet.data_segment, src_first + packet.chain->num_readable, packet.data_offset};
    source.skip(kEthHeaderLen);
    auto emit = [&](const std::uint8_t* local, std::uint32_t len) noexcept -> bool {
      while (len > 0) {
        const std::uint32_t w = local != nullptr ? dst.write(local, len) : dst.copy_from(source, len);
        if (local != nullptr) local += w;
        len -= w;
        in_buffer += w;
        if (len > 0 && !next_buffer()) return false;
      }
      return true;
    };
    bool ok = emit(packet.eth.data(), kEthHeaderLen);
    if (VHOSTD_UNLIKELY(csum_fixup)) {
      // The sum covers csum_start onwards, which the Ethernet header copy never reaches.
      ReadCursor start = source;
      start.skip(packet.header.csum_start - kEthHeaderLen);
      const std::uint16_t sum = checksum(start, packet.len - packet.header.csum_start);
      const std::uint32_t pos = std::uint32_t{packet.header.csum_start} + packet.header.csum_offset;
      ok = ok && emit(nullptr, pos - kEthHeaderLen);
      source.skip(2);
      ok = ok && emit(reinterpret_cast<const std::uint8_t*>(&sum), 2);
      ok = ok && emit(nullptr, packet.len - pos - 2);
    } else {
      ok = ok && emit(nullptr, packet.len - kEthHeaderLen);
    }
    if (VHOSTD_UNLIKELY(!ok)) {
      // Not all of it fits in what the guest posted: give the buffers back untouched (their
      // contents are the device's until used). A packet no number of buffers could hold is
      // dropped; otherwise the caller retries or drops the rest of the burst.
      queue.rewind(buffers);
      if (buffers == kMaxMergedBuffers) {
        ++dropped;
        continue;
      }
      break;
    }
    used[buffers - 1].len = in_buffer;
    header.num_buffers = buffers;  // 1 without MRG_RXBUF (absent from a legacy header)
    WriteCursor head{dst_first, dst_first + first.num_writable, 0, table};
    head.write(reinterpret_cast<const std::uint8_t*>(&header), header_len);
    for (std::uint16_t k = 0; k < buffers; ++k) queue.push_used(used[k].head, used[k].len);
    delivered_one(packet.len);
  }
  add_single_writer(stats.packets, delivered);
  add_single_writer(stats.bytes, bytes);
  if (dropped != 0) drop(pair, dropped);
  return i;
}

// ---- control queue ----

void NetPort::handle_control(VringState& ring) noexcept {
  ring.visit([&](auto& queue) noexcept {
    while (queue.pop(control_chain_)) {
      ChainReader reader(control_chain_);
      std::uint8_t header[2];
      std::uint8_t ack = kNetErr;
      if (reader.read(header, 2) == 2) ack = control_command(header[0], header[1], reader);
      ChainWriter writer(control_chain_, *queue.table());
      queue.push_used(control_chain_.head, static_cast<std::uint32_t>(writer.write(&ack, 1)));
    }
    queue.flush_used();
    queue.notify();
  });
}

std::uint8_t NetPort::control_command(std::uint8_t cls, std::uint8_t cmd, ChainReader& reader) noexcept {
  switch (cls) {
    case kNetCtrlMq: {
      std::uint16_t pairs = 0;
      if (cmd != kNetCtrlMqVqPairsSet || reader.read(&pairs, 2) != 2) return kNetErr;
      if (pairs < kNetCtrlMqVqPairsMin || pairs > config_.queue_pairs) return kNetErr;
      active_pairs_.store(pairs, std::memory_order_relaxed);
      return kNetOk;
    }
    case kNetCtrlRx: {
      std::uint8_t on = 0;
      if (cmd > kNetCtrlRxNobcast || reader.read(&on, 1) != 1 || on > 1) return kNetErr;
      rx_mode_ = static_cast<std::uint8_t>(on ? (rx_mode_ | (1u << cmd)) : (rx_mode_ & ~(1u << cmd)));
      return kNetOk;
    }
    case kNetCtrlMac: {
      if (cmd == kNetCtrlMacAddrSet) {
        std::uint8_t mac[kEthAddrLen];
        if (reader.read(mac, kEthAddrLen) != kEthAddrLen) return kNetErr;
        guest_mac_.store(pack_mac(mac), std::memory_order_relaxed);
        return kNetOk;
      }
      if (cmd == kNetCtrlMacTableSet) {
        // Two tables (unicast, multicast): u32 count then count MACs each; accepted, the
        // forwarding modes do not filter.
        for (int table = 0; table < 2; ++table) {
          std::uint32_t entries = 0;
          if (reader.read(&entries, 4) != 4) return kNetErr;
          if (std::uint64_t{entries} * kEthAddrLen > reader.remaining()) return kNetErr;
          reader.skip(std::size_t{entries} * kEthAddrLen);
        }
        return kNetOk;
      }
      return kNetErr;
    }
    case kNetCtrlAnnounce:
      if (cmd != kNetCtrlAnnounceAck) return kNetErr;
      status_.fetch_and(static_cast<std::uint16_t>(~kNetSAnnounce), std::memory_order_relaxed);
      return kNetOk;
    default:
      return kNetErr;
  }
}

}  // namespace vhostd::net
