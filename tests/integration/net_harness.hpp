// vhostd integration tests: vhost-user-net ports (drivers/net NetPort) and the forwarding engine
// (apps/vhostd-fwd Forwarder) served over real Unix sockets, each port's guest played by the
// in-tree TestFrontend over real memfd guest memory, eventfds and the runtime's pinned pollers.
//
//   NetFixture  a Runtime (Runtime::default_cores()), N NetPorts each served by a Daemon on a
//               socket in a temp dir, one Forwarder in a given mode; connect(i) gives port i a
//               guest.
//   NetGuest    the guest driver of one port: negotiates features, sets every ring up (ring 2q
//               guest RX, 2q+1 guest TX, the last one the control queue), posts RX buffers,
//               puts packets (virtio-net header + Ethernet frame, any descriptor split) in a
//               TX ring, sends control commands, and reads back what the device used.
//
//   NetLayoutTest  NetFixture run once per ring layout (INSTANTIATE_NET_LAYOUTS): every guest
//               it connects uses split rings, or packed rings (RING_PACKED acked), unless its
//               GuestOptions name a layout.
//
// Determinism: nothing here sleeps and hopes. complete_tx() waits until the device has used
// every TX chain the guest published; the forwarder's receive -> transmit -> drop -> release
// all run on the one lcore that polls the TX ring, and release() publishes the used index with
// a release store after the RX ring's used index and every counter of that burst were written,
// so once complete_tx() returns, what the burst delivered (or did not) and every counter are
// visible to the test.
//
// Helper failures (timeouts, unknown used ids, malformed device output) throw vhostd::Error,
// which fails the calling test with the message.
#pragma once

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "forwarding.hpp"
#include "frontend.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/net/net_port.hpp"
#include "vhostd/net/virtio_net.hpp"
#include "vhostd/runtime/daemon.hpp"
#include "vhostd/runtime/runtime.hpp"

namespace vhostd::test::nettest {

using namespace std::chrono_literals;
using Bytes = std::vector<std::uint8_t>;
using net::MacAddress;
using net::VirtioNetHeader;

// ---- feature masks (what a guest acks, intersected with what the port offers) ----

// Everything the port offers but LOG_ALL, RING_PACKED and IN_ORDER (as the frontend's
// default; GuestOptions::layout and in_order ask for the last two).
inline constexpr std::uint64_t kAllFeatures = ~(kVirtioFLogAll | kVirtioFRingPacked | kVirtioFInOrder);
inline constexpr std::uint64_t kHostTso = net::kNetFHostTso4 | net::kNetFHostTso6;
inline constexpr std::uint64_t kGuestTso = net::kNetFGuestTso4 | net::kNetFGuestTso6;
// A receiver that cannot take partial checksums (no GUEST_CSUM, hence no GUEST_TSO either).
inline constexpr std::uint64_t kNoGuestCsum = kAllFeatures & ~(net::kNetFGuestCsum | kGuestTso);
// A sender that cannot hand partial checksums over (no CSUM, hence no HOST_TSO either).
inline constexpr std::uint64_t kNoCsum = kAllFeatures & ~(net::kNetFCsum | kHostTso);
inline constexpr std::uint64_t kNoOffloads = kNoGuestCsum & kNoCsum;

// ---- frames ----

inline void put16be(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 8);
  p[1] = static_cast<std::uint8_t>(v);
}
inline std::uint16_t get16be(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] << 8 | p[1]); }

inline constexpr MacAddress kBroadcast{0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
inline constexpr MacAddress kMacA{0x02, 0xaa, 0, 0, 0, 0x0a};
inline constexpr MacAddress kMacB{0x02, 0xbb, 0, 0, 0, 0x0b};
inline constexpr MacAddress kMacC{0x02, 0xcc, 0, 0, 0, 0x0c};

// An Ethernet frame of `len` bytes (>= 14): dst, src, ethertype, then a payload derived from
// `seed` (every byte position differs, so a shifted or truncated copy is noticed).
inline Bytes eth_frame(const MacAddress& dst, const MacAddress& src, std::size_t len, std::uint32_t seed = 1,
                       std::uint16_t ethertype = 0x88b5 /* local experimental */) {
  Bytes f(std::max<std::size_t>(len, 14), 0);
  std::memcpy(f.data(), dst.data(), 6);
  std::memcpy(f.data() + 6, src.data(), 6);
  put16be(&f[12], ethertype);
  std::uint32_t x = seed * 2654435761u + 12345u;
  for (std::size_t i = 14; i < f.size(); ++i) {
    x = x * 1103515245u + 12345u;
    f[i] = static_cast<std::uint8_t>((x >> 16) ^ i);
  }
  return f;
}

// RFC 1071 arithmetic on big-endian 16-bit words (written independently of the device's code).
inline std::uint32_t sum_be(const std::uint8_t* p, std::size_t n, std::uint32_t sum = 0) {
  std::uint64_t s = sum;
  for (std::size_t i = 0; i + 1 < n; i += 2) s += static_cast<std::uint32_t>(p[i] << 8 | p[i + 1]);
  if (n & 1) s += static_cast<std::uint32_t>(p[n - 1] << 8);
  while (s >> 32) s = (s & 0xffffffffu) + (s >> 32);
  return static_cast<std::uint32_t>(s);
}
inline std::uint16_t fold16(std::uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<std::uint16_t>(sum);
}

inline constexpr std::uint32_t kUdpCsumStart = 14 + 20;  // Ethernet + IPv4 (IHL 5)
inline constexpr std::uint32_t kUdpCsumOffset = 6;
inline constexpr std::uint32_t kTcpCsumOffset = 16;

// The IPv4 pseudo-header sum of an IPv4 frame (protocol and L4 length from its header).
inline std::uint32_t pseudo_header_sum(const Bytes& f) {
  const std::uint8_t* ip = &f[14];
  const std::uint16_t l4_len = static_cast<std::uint16_t>(get16be(ip + 2) - (ip[0] & 0xf) * 4);
  std::uint32_t sum = sum_be(ip + 12, 8);  // saddr, daddr
  sum += ip[9];
  sum += l4_len;
  return sum;
}

// An IPv4 frame with an L4 header of `l4_header` bytes and `payload` bytes after it. The L4
// checksum field (at `csum_offset` in the L4 header) holds the folded pseudo-header sum when
// `partial` (what a guest with CSUM offload sends with NEEDS_CSUM, as Linux does), else the
// full checksum.
inline Bytes ipv4_frame(std::uint8_t protocol, std::size_t l4_header, std::uint32_t csum_offset, std::size_t payload,
                        bool partial, const MacAddress& dst = kMacB, const MacAddress& src = kMacA,
                        std::uint32_t seed = 7) {
  Bytes f = eth_frame(dst, src, 14 + 20 + l4_header + payload, seed, 0x0800);
  std::uint8_t* ip = &f[14];
  std::memset(ip, 0, 20 + l4_header);
  ip[0] = 0x45;
  put16be(ip + 2, static_cast<std::uint16_t>(20 + l4_header + payload));
  put16be(ip + 4, 0x1234);
  ip[6] = 0x40;  // DF
  ip[8] = 64;
  ip[9] = protocol;
  const std::uint8_t saddr[4] = {10, 0, 0, 1}, daddr[4] = {10, 0, 0, 2};
  std::memcpy(ip + 12, saddr, 4);
  std::memcpy(ip + 16, daddr, 4);
  put16be(ip + 10, static_cast<std::uint16_t>(~fold16(sum_be(ip, 20))));
  std::uint8_t* l4 = ip + 20;
  put16be(l4, 40000);     // source port
  put16be(l4 + 2, 5001);  // destination port
  if (protocol == 17) {
    put16be(l4 + 4, static_cast<std::uint16_t>(l4_header + payload));
  } else {
    l4[12] = static_cast<std::uint8_t>((l4_header / 4) << 4);  // TCP data offset
    l4[13] = 0x18;                                             // PSH ACK
    put16be(l4 + 14, 65535);
  }
  const std::uint32_t pseudo = pseudo_header_sum(f);
  if (partial) {
    put16be(l4 + csum_offset, fold16(pseudo));
  } else {
    std::uint16_t c = static_cast<std::uint16_t>(~fold16(sum_be(l4, l4_header + payload, pseudo)));
    if (protocol == 17 && c == 0) c = 0xffff;
    put16be(l4 + csum_offset, c);
  }
  return f;
}
inline Bytes udp_frame(std::size_t payload, bool partial, std::uint32_t seed = 7) {
  return ipv4_frame(17, 8, kUdpCsumOffset, payload, partial, kMacB, kMacA, seed);
}
inline Bytes tcp_frame(std::size_t payload, bool partial, std::uint32_t seed = 7) {
  return ipv4_frame(6, 20, kTcpCsumOffset, payload, partial, kMacB, kMacA, seed);
}

// True when the IPv4 header checksum verifies.
inline bool ipv4_header_ok(const Bytes& f) {
  return f.size() >= 34 && fold16(sum_be(&f[14], (f[14] & 0xf) * 4u)) == 0xffff;
}
// True when the L4 (UDP/TCP) checksum of an IPv4 frame verifies over pseudo-header, header and
// payload (a UDP checksum of 0, "none", does not count as verified).
inline bool l4_checksum_ok(const Bytes& f, std::uint32_t csum_offset) {
  if (f.size() < 34) return false;
  const std::size_t l4 = 14 + (f[14] & 0xf) * 4u;
  const std::size_t l4_len = get16be(&f[16]) - (f[14] & 0xf) * 4u;
  if (l4 + l4_len > f.size() || l4_len < csum_offset + 2) return false;
  if (f[14 + 9] == 17 && get16be(&f[l4 + csum_offset]) == 0) return false;
  return fold16(sum_be(&f[l4], l4_len, pseudo_header_sum(f))) == 0xffff;
}

inline VirtioNetHeader plain_header() { return VirtioNetHeader{}; }
inline VirtioNetHeader csum_header(std::uint16_t start, std::uint16_t offset) {
  VirtioNetHeader h{};
  h.flags = net::kNetHdrFNeedsCsum;
  h.csum_start = start;
  h.csum_offset = offset;
  return h;
}

inline std::string hex(const Bytes& b, std::size_t max = 64) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (std::size_t i = 0; i < b.size() && i < max; ++i) {
    s += digits[b[i] >> 4];
    s += digits[b[i] & 0xf];
    s += ' ';
  }
  if (b.size() > max) s += "...";
  return s;
}

// ---- the guest driver of one port ----

struct GuestOptions {
  std::uint64_t feature_mask = kAllFeatures;
  std::uint16_t queue_size = 256;
  bool protocol_features = true;
  // The guest's ring layout; unset: the fixture's (NetLayoutTest's parameter, else split).
  std::optional<RingLayout> layout;
  // Ack VIRTIO_F_IN_ORDER (the driver rings then accept batched used elements).
  bool in_order = false;
  // Hand the control queue (the last ring) to the device. Off: the guest keeps it, as QEMU
  // and DPDK virtio-user do; with 128 pairs its index (256) does not fit the 8-bit ring index
  // of SET_VRING_KICK/CALL, so it cannot be handed over.
  bool control_queue = true;
};

// One packet the device put in a guest RX ring: its header, the frame after it, and the used
// length of each buffer it took.
struct RxPacket {
  VirtioNetHeader header{};
  Bytes frame;
  std::vector<std::uint32_t> used_lens;
  std::uint32_t total_len() const {
    std::uint32_t n = 0;
    for (std::uint32_t l : used_lens) n += l;
    return n;
  }
};

class NetGuest {
 public:
  // Connects to the port's socket (the device is set up by setup()).
  NetGuest(const std::string& path, std::uint16_t pairs) : frontend_(TestFrontend::connect(path)), pairs_(pairs) {}

  // Negotiates and sets up every ring (2 per pair + control queue), then kicks each ring once
  // so the daemon starts it (the RX rings are not polled: only a kick starts them).
  void setup(const GuestOptions& options) {
    control_queue_ = options.control_queue;
    DeviceOptions d;
    d.num_rings = num_rings();
    d.queue_size = options.queue_size;
    d.feature_mask = options.feature_mask;
    d.protocol_features = options.protocol_features;
    d.packed = options.layout.value_or(RingLayout::split) == RingLayout::packed;
    d.in_order = options.in_order;
    d.memory_bytes = 4u * 1024 * 1024 + num_rings() * (2u * 1024 * 1024 + 64 * 1024);
    features_ = frontend_.setup_device(d);
    posted_.assign(num_rings(), {});
    for (std::size_t r = 0; r < num_rings(); ++r) frontend_.kick(r);
  }

  TestFrontend& frontend() { return frontend_; }
  std::uint64_t features() const { return features_; }
  bool has(std::uint64_t feature) const { return (features_ & feature) != 0; }
  std::uint32_t header_len() const {
    return has(kVirtioFVersion1 | net::kNetFMrgRxbuf) ? net::kNetHeaderLen : net::kNetLegacyHeaderLen;
  }
  std::uint16_t pairs() const { return pairs_; }
  // Rings set up: 2 per pair, and the control queue unless GuestOptions::control_queue is off.
  std::size_t num_rings() const { return 2u * pairs_ + (control_queue_ ? 1u : 0u); }
  static std::size_t rx(std::uint16_t pair = 0) { return 2u * pair; }
  static std::size_t tx(std::uint16_t pair = 0) { return 2u * pair + 1; }
  std::size_t ctrl() const { return 2u * pairs_; }
  GuestRing& ring(std::size_t index) { return frontend_.ring(index); }
  RingLayout layout() const { return frontend_.layout(); }
  void close() { frontend_.close(); }

  // ---- RX ----

  // Posts one RX chain of writable descriptors of `sizes` bytes (one data slot, 16 KiB at most
  // in all), pre-filled with 0xee. Returns its head.
  std::uint16_t post_rx_chain(const std::vector<std::uint32_t>& sizes, std::uint16_t pair = 0) {
    const std::size_t r = rx(pair);
    std::uint32_t total = 0;
    for (std::uint32_t s : sizes) total += s;
    if (total > TestFrontend::kSlotBytes) throw_error("post_rx_chain: ", total, " bytes do not fit a slot");
    const std::uint32_t slot = take_slot(r);
    const std::uint64_t gpa = slot_gpa(r, slot);
    frontend_.memory().fill(gpa, 0xee, TestFrontend::kSlotBytes);
    std::vector<DriverBuffer> bufs;
    std::uint64_t at = gpa;
    for (std::uint32_t s : sizes) {
      bufs.push_back(DriverBuffer{at, s, true});
      at += s;
    }
    const std::uint16_t head = ring(r).add_chain(bufs);
    posted_[r][head] = Posted{slot, std::move(bufs)};
    return head;
  }
  // Overwrites the start of a posted RX chain's first buffer with `header` (header_len() bytes
  // of it), as a recycled buffer would hold it: what the device finds there before it writes.
  void prefill_rx_header(std::uint16_t head, const VirtioNetHeader& header, std::uint16_t pair = 0) {
    const DriverBuffer& first = posted_[rx(pair)].at(head).bufs.at(0);
    std::memcpy(frontend_.memory().host(first.gpa, header_len()), &header, header_len());
  }
  // Posts `count` RX buffers of `len` bytes (one descriptor each).
  void post_rx(std::size_t count, std::uint32_t len = 2048, std::uint16_t pair = 0) {
    for (std::size_t i = 0; i < count; ++i) post_rx_chain({len}, pair);
  }
  // Used elements of the RX ring of `pair` not yet read.
  std::uint16_t rx_pending(std::uint16_t pair = 0) { return static_cast<std::uint16_t>(ring(rx(pair)).used_pending()); }
  // RX buffers posted and not yet used.
  std::size_t rx_posted(std::uint16_t pair = 0) const { return posted_[rx(pair)].size(); }

  // The next packet of the RX ring of `pair`: waits for its first buffer, and with MRG_RXBUF
  // for the num_buffers - 1 that follow. Throws on timeout or malformed device output.
  RxPacket receive(std::uint16_t pair = 0, std::chrono::milliseconds timeout = kReplyTimeout) {
    const std::size_t r = rx(pair);
    if (!wait_until([&] { return ring(r).used_pending() >= 1; }, timeout)) {
      throw_error("receive: no packet in RX ring ", r, " within ", timeout.count(), " ms");
    }
    Used first = pop_used(r);
    const std::uint32_t hl = header_len();
    if (first.bytes.size() < hl) {
      throw_error("receive: first used buffer has ", first.bytes.size(), " bytes, header needs ", hl);
    }
    RxPacket packet;
    std::memcpy(&packet.header, first.bytes.data(), hl);
    packet.frame.assign(first.bytes.begin() + hl, first.bytes.end());
    packet.used_lens.push_back(first.len);
    if (has(net::kNetFMrgRxbuf)) {
      const std::uint16_t buffers = packet.header.num_buffers;
      if (buffers == 0) throw_error("receive: num_buffers 0 with MRG_RXBUF");
      if (!wait_until([&] { return ring(r).used_pending() + 1u >= buffers; }, timeout)) {
        throw_error("receive: num_buffers ", buffers, " but only ", ring(r).used_pending() + 1u, " buffers used");
      }
      for (std::uint16_t i = 1; i < buffers; ++i) {
        Used more = pop_used(r);
        packet.frame.insert(packet.frame.end(), more.bytes.begin(), more.bytes.end());
        packet.used_lens.push_back(more.len);
      }
    }
    return packet;
  }

  // ---- TX ----

  // Puts `header` (header_len() bytes of it) + `frame` in the TX ring of `pair` as one chain
  // whose descriptors have `split` sizes (summing to the whole; empty: one descriptor).
  std::uint16_t send(const VirtioNetHeader& header, const Bytes& frame, const std::vector<std::uint32_t>& split = {},
                     std::uint16_t pair = 0, bool indirect = false) {
    Bytes bytes(header_len());
    std::memcpy(bytes.data(), &header, header_len());
    bytes.insert(bytes.end(), frame.begin(), frame.end());
    return send_bytes(bytes, split, pair, indirect);
  }
  std::uint16_t send(const Bytes& frame, std::uint16_t pair = 0) { return send(plain_header(), frame, {}, pair); }

  // Puts raw bytes in the TX ring of `pair` (a hostile or truncated packet).
  std::uint16_t send_bytes(const Bytes& bytes, std::vector<std::uint32_t> split = {}, std::uint16_t pair = 0,
                           bool indirect = false) {
    const std::size_t r = tx(pair);
    constexpr std::uint64_t kTableRoom = 4096;  // indirect table at the end of the slot
    if (bytes.size() > TestFrontend::kSlotBytes - kTableRoom) throw_error("send_bytes: ", bytes.size(), " bytes");
    if (split.empty()) split.push_back(static_cast<std::uint32_t>(bytes.size()));
    std::uint64_t sum = 0;
    for (std::uint32_t s : split) sum += s;
    if (sum != bytes.size()) throw_error("send_bytes: split sums to ", sum, ", packet has ", bytes.size(), " bytes");
    const std::uint32_t slot = take_slot(r);
    const std::uint64_t gpa = slot_gpa(r, slot);
    if (!bytes.empty()) frontend_.memory().write(gpa, bytes.data(), bytes.size());
    std::vector<DriverBuffer> bufs;
    std::uint64_t at = gpa;
    for (std::uint32_t s : split) {
      bufs.push_back(DriverBuffer{at, s, false});
      at += s;
    }
    const std::uint16_t head = indirect ? ring(r).add_indirect(bufs, gpa + TestFrontend::kSlotBytes - kTableRoom)
                                        : ring(r).add_chain(bufs);
    posted_[r][head] = Posted{slot, std::move(bufs)};
    return head;
  }

  // Waits until the device has used every chain published in the TX ring of `pair`, pops them
  // (their used length must be 0: the device writes nothing there) and frees their buffers.
  // Returns how many were completed. Throws on timeout.
  std::size_t complete_tx(std::uint16_t pair = 0, std::chrono::milliseconds timeout = kReplyTimeout) {
    const std::size_t r = tx(pair);
    GuestRing& d = ring(r);
    if (!wait_until([&] { return d.all_used(); }, timeout)) {
      throw_error("complete_tx: TX ring ", r, ": ", d.used_pending(), " of ", d.in_flight(),
                  " chains used within ", timeout.count(), " ms (", d.describe(), ")");
    }
    std::size_t n = 0;
    while (d.has_used()) {
      Used u = pop_used(r);
      if (u.len != 0) throw_error("complete_tx: TX chain ", u.id, " used with length ", u.len, " (expected 0)");
      ++n;
    }
    return n;
  }
  std::size_t tx_in_flight(std::uint16_t pair = 0) const { return posted_[tx(pair)].size(); }

  // ---- control queue ----

  // Sends one control command (header {class, command}, then `data`, then a 1-byte writable
  // ack) and returns the ack the device wrote. Throws on timeout or a used length other than 1.
  // `header_bytes` < 2 cuts the command header short; `one_descriptor` puts header and data in
  // one readable descriptor (as some drivers do) instead of one each.
  std::uint8_t control(std::uint8_t cls, std::uint8_t cmd, const Bytes& data = {}, std::size_t header_bytes = 2,
                       bool one_descriptor = false) {
    const std::size_t r = ctrl();
    const std::uint32_t slot = take_slot(r);
    const std::uint64_t gpa = slot_gpa(r, slot);
    const std::uint8_t header[2] = {cls, cmd};
    frontend_.memory().write(gpa, header, 2);
    const std::uint64_t data_gpa = one_descriptor ? gpa + 2 : gpa + 64;
    if (!data.empty()) frontend_.memory().write(data_gpa, data.data(), data.size());
    frontend_.memory().fill(gpa + 4096, 0xee, 1);
    std::vector<DriverBuffer> bufs;
    if (one_descriptor) {
      bufs.push_back({gpa, static_cast<std::uint32_t>(header_bytes + data.size()), false});
    } else {
      bufs.push_back({gpa, static_cast<std::uint32_t>(header_bytes), false});
      if (!data.empty()) bufs.push_back({data_gpa, static_cast<std::uint32_t>(data.size()), false});
    }
    bufs.push_back({gpa + 4096, 1, true});
    const std::uint16_t head = ring(r).add_chain(bufs);
    posted_[r][head] = Posted{slot, std::move(bufs)};
    if (!wait_until([&] { return ring(r).used_pending() >= 1; })) {
      throw_error("control class ", int{cls}, " cmd ", int{cmd}, ": no answer");
    }
    Used u = pop_used(r);
    if (u.id != head) throw_error("control: used id ", u.id, ", expected ", head);
    if (u.len != 1) {
      throw_error("control class ", int{cls}, " cmd ", int{cmd}, ": used length ", u.len, " (expected 1)");
    }
    return frontend_.memory().bytes(gpa + 4096, 1)[0];
  }

 private:
  struct Posted {
    std::uint32_t slot;
    std::vector<DriverBuffer> bufs;
  };
  struct Used {
    std::uint16_t id;
    std::uint32_t len;
    Bytes bytes;  // the writable bytes the device reported (len of them)
  };

  std::uint32_t take_slot(std::size_t r) {
    auto& free = frontend_.ring_fds(r).free_slots;
    if (free.empty()) throw_error("ring ", r, ": no free data slot (too many chains in flight)");
    const std::uint32_t slot = free.back();
    free.pop_back();
    return slot;
  }
  std::uint64_t slot_gpa(std::size_t r, std::uint32_t slot) {
    return frontend_.ring_fds(r).data_gpa + std::uint64_t{slot} * TestFrontend::kSlotBytes;
  }

  Used pop_used(std::size_t r) {
    std::optional<UsedBuffer> e = ring(r).pop_used();
    if (!e) throw_error("ring ", r, ": no used element");
    auto it = posted_[r].find(e->id);
    if (it == posted_[r].end()) throw_error("ring ", r, ": used id ", e->id, " is not a chain in flight");
    Used u{e->id, e->len, {}};
    std::uint32_t writable = 0;
    for (const DriverBuffer& b : it->second.bufs) writable += b.writable ? b.len : 0;
    if (e->len > writable) {
      throw_error("ring ", r, ": used length ", e->len, " exceeds the ", writable, " writable bytes of chain ", e->id);
    }
    std::uint32_t left = e->len;
    for (const DriverBuffer& b : it->second.bufs) {
      if (!b.writable || left == 0) continue;
      const std::uint32_t take = std::min(left, b.len);
      Bytes part = frontend_.memory().bytes(b.gpa, take);
      u.bytes.insert(u.bytes.end(), part.begin(), part.end());
      left -= take;
    }
    frontend_.ring_fds(r).free_slots.push_back(it->second.slot);
    posted_[r].erase(it);
    return u;
  }

  TestFrontend frontend_;
  std::uint16_t pairs_;
  bool control_queue_ = true;
  std::uint64_t features_ = 0;
  std::vector<std::map<std::uint16_t, Posted>> posted_;  // per ring: chains in flight by head
};

// ---- the fixture: runtime, ports, daemons, forwarder ----

class NetFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/vhostd-net-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    runtime_ = std::make_unique<Runtime>(Runtime::default_cores());
  }

  // The layout of guests whose GuestOptions do not name one.
  virtual RingLayout layout() const { return RingLayout::split; }
  bool packed() const { return layout() == RingLayout::packed; }

  void TearDown() override {
    for (auto& d : daemons_) d->stop();
    for (auto& d : daemons_) d->wait();
    daemons_.clear();  // every ring off the pollers before the engine and ports go
    forwarder_.reset();
    ports_.clear();
    runtime_.reset();
    for (std::size_t i = 0; i < std::max<std::size_t>(8, num_sockets_); ++i) ::unlink(path(i).c_str());
    ::rmdir(dir_.c_str());
  }

  // `configs.size()` ports, forwarded by one engine in `mode`, each served on path(i).
  void start(fwd::FwdMode mode, std::vector<net::NetPortConfig> configs, fwd::FwdOptions options = {}) {
    options.mode = mode;
    std::vector<net::NetPort*> raw;
    for (std::size_t i = 0; i < configs.size(); ++i) {
      if (configs[i].mac == net::NetPortConfig{}.mac) configs[i].mac[5] = static_cast<std::uint8_t>(i + 1);
      ports_.push_back(std::make_shared<net::NetPort>("port" + std::to_string(i), configs[i]));
      raw.push_back(ports_.back().get());
    }
    std::vector<int> lcore_nodes;  // as vhostd-fwd does: each data lcore's scratch on its node
    for (std::size_t l = 0; l < runtime_->num_pollers(); ++l) lcore_nodes.push_back(runtime_->poller(l).numa_node());
    forwarder_ = std::make_unique<fwd::Forwarder>(options, raw, lcore_nodes);
    for (std::size_t i = 0; i < ports_.size(); ++i) {
      ports_[i]->set_handler(forwarder_.get());
      ports_[i]->set_queue_placement(forwarder_->plan_placement(i));
    }
    for (std::size_t i = 0; i < ports_.size(); ++i) {
      daemons_.push_back(std::make_unique<Daemon>("port" + std::to_string(i), ports_[i], *runtime_));
      daemons_.back()->start_server(path(i));
    }
    num_sockets_ = ports_.size();
  }
  void start(fwd::FwdMode mode, std::size_t num_ports, fwd::FwdOptions options = {}) {
    start(mode, std::vector<net::NetPortConfig>(num_ports), options);
  }

  std::string path(std::size_t i) const { return dir_ + "/port" + std::to_string(i) + ".sock"; }
  net::NetPort& port(std::size_t i) { return *ports_.at(i); }
  Daemon& daemon(std::size_t i) { return *daemons_.at(i); }
  fwd::Forwarder& forwarder() { return *forwarder_; }
  net::PortTotals totals(std::size_t i) { return port(i).totals(); }

  // A guest for port i: connected, device set up, every ring on the data path.
  std::unique_ptr<NetGuest> connect(std::size_t i, const GuestOptions& options = {}) {
    Daemon& d = daemon(i);
    const std::uint64_t before = d.connections();
    auto guest = std::make_unique<NetGuest>(path(i), port(i).config().queue_pairs);
    if (!wait_until([&] { return d.connections() > before && d.connected(); })) {
      throw_error("port ", i, ": the daemon did not accept the connection");
    }
    GuestOptions o = options;
    if (!o.layout) o.layout = layout();
    guest->setup(o);
    const std::size_t rings = guest->num_rings();  // the guest's: the device's first `rings`
    if (!wait_until([&] {
          auto reports = d.ring_reports();
          if (reports.size() != port(i).num_queues()) return false;
          for (std::size_t r = 0; r < rings; ++r) {
            if (!reports[r].attached) return false;
          }
          return true;
        })) {
      std::string state;
      for (const RingReport& r : d.ring_reports()) {
        state += " ring " + std::to_string(r.index) + (r.started ? " started" : "") + (r.enabled ? " enabled" : "") +
                 (r.attached ? " attached" : " detached") + ";";
      }
      throw_error("port ", i, ": rings not all on the data path:", state);
    }
    return guest;
  }

  bool wait_disconnected(std::size_t i) { return wait_until([&] { return !daemon(i).connected(); }, 10s); }

  std::string dir_;
  std::unique_ptr<Runtime> runtime_;
  std::vector<std::shared_ptr<net::NetPort>> ports_;
  std::unique_ptr<fwd::Forwarder> forwarder_;
  std::vector<std::unique_ptr<Daemon>> daemons_;
  std::size_t num_sockets_ = 0;
};

// NetFixture once per ring layout: guests use the parameter's layout unless told otherwise.
class NetLayoutTest : public NetFixture, public ::testing::WithParamInterface<RingLayout> {
 protected:
  RingLayout layout() const override { return GetParam(); }
};

inline std::string net_layout_param_name(const ::testing::TestParamInfo<RingLayout>& info) {
  return to_string(info.param);
}

// Field-by-field header comparison output.
inline std::string describe(const VirtioNetHeader& h) {
  return "{flags " + std::to_string(h.flags) + " gso_type " + std::to_string(h.gso_type) + " hdr_len " +
         std::to_string(h.hdr_len) + " gso_size " + std::to_string(h.gso_size) + " csum_start " +
         std::to_string(h.csum_start) + " csum_offset " + std::to_string(h.csum_offset) + " num_buffers " +
         std::to_string(h.num_buffers) + "}";
}

}  // namespace vhostd::test::nettest

// Runs every TEST_P of `suite` (a NetLayoutTest) with split-ring guests and packed-ring guests.
#define INSTANTIATE_NET_LAYOUTS(suite)                                                               \
  INSTANTIATE_TEST_SUITE_P(Layouts, suite,                                                           \
                           ::testing::Values(::vhostd::RingLayout::split, ::vhostd::RingLayout::packed), \
                           ::vhostd::test::nettest::net_layout_param_name)
