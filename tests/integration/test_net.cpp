// Integration: vhost-user-net ports (drivers/net NetPort) forwarded by the vhostd-fwd engine
// (apps/vhostd-fwd Forwarder), each port served by a Daemon on a real socket and driven by the
// in-tree test frontend as its guest (see net_harness.hpp).
//
// Directions follow the device: a port's "rx" is what its guest sent (the guest's TX ring),
// its "tx" what the device put into its guest (the guest's RX ring).
//
// Every NetTest runs twice: with split-ring guests and with packed-ring guests (NetLayoutTest).
// NetMixedTest forwards between a split-ring guest and a packed-ring one; NetPackedTest holds
// hostile cases only packed rings can express.
#include <thread>

#include "net_harness.hpp"

namespace vhostd::test::nettest {
namespace {

using fwd::FwdMode;
using net::NetPortConfig;

using NetTest = NetLayoutTest;
using NetMixedTest = NetFixture;
using NetPackedTest = NetFixture;

void expect_frame_eq(const Bytes& got, const Bytes& want, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what << ": frame length";
  if (got != want) {
    std::size_t i = 0;
    while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
    ADD_FAILURE() << what << ": frame differs from byte " << i << "\n got:  " << hex(got) << "\n want: " << hex(want);
  }
}

void expect_plain_header(const VirtioNetHeader& h, std::uint16_t num_buffers, const std::string& what) {
  EXPECT_EQ(h.flags, 0) << what << " " << describe(h);
  EXPECT_EQ(h.gso_type, net::kNetHdrGsoNone) << what << " " << describe(h);
  EXPECT_EQ(h.num_buffers, num_buffers) << what << " " << describe(h);
}

// Enables or disables the guest's TX ring of pair 0 and waits until the daemon has put it on
// or taken it off the data path (a sender queues a whole round while it is off).
void set_tx_ring_enabled(NetGuest& guest, Daemon& daemon, bool on) {
  guest.frontend().set_vring_enable(NetGuest::tx(), on);
  ASSERT_TRUE(wait_until([&] {
    for (const RingReport& r : daemon.ring_reports()) {
      if (r.index == NetGuest::tx()) return r.attached == on;
    }
    return false;
  }));
}

// ---- 1. io mode: byte for byte, headers, chain shapes, counters ----

TEST_P(NetTest, IoForwardsFramesByteForByteOverAnyChainShape) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  ASSERT_TRUE(g0->has(kVirtioFVersion1) && g1->has(net::kNetFMrgRxbuf));
  g1->post_rx(8, 2048);

  struct Shape {
    const char* name;
    std::size_t frame_len;
    std::vector<std::uint32_t> split;  // descriptor sizes over header + frame
    bool indirect;
  };
  const std::vector<Shape> shapes = {
      {"one descriptor", 100, {}, false},
      {"header alone, frame over two descriptors", 100, {12, 40, 60}, false},
      {"header and 5 frame bytes, then the rest", 60, {17, 55}, false},
      {"header split, Ethernet header split", 64, {5, 7, 3, 11, 50}, false},
      {"indirect: header alone, frame over two", 1514, {12, 1000, 514}, true},
      {"minimum: header + Ethernet header", 14, {12, 14}, false},
  };
  std::uint64_t bytes = 0;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const Shape& s = shapes[i];
    const Bytes frame = eth_frame(kMacB, kMacA, s.frame_len, static_cast<std::uint32_t>(i + 1));
    g0->send(plain_header(), frame, s.split, 0, s.indirect);
    ASSERT_EQ(g0->complete_tx(), 1u) << s.name << ": TX chain not returned to port 0";
    ASSERT_EQ(g1->rx_pending(), 1u) << s.name << ": not delivered to port 1 (by the time the TX chain was used)";
    RxPacket p = g1->receive();
    expect_plain_header(p.header, 1, s.name);
    ASSERT_EQ(p.used_lens.size(), 1u) << s.name;
    EXPECT_EQ(p.used_lens[0], 12 + s.frame_len) << s.name << ": used length";
    expect_frame_eq(p.frame, frame, s.name);
    bytes += s.frame_len;
  }

  const net::PortTotals t0 = totals(0), t1 = totals(1);
  EXPECT_EQ(t0.rx_packets, shapes.size());
  EXPECT_EQ(t0.rx_bytes, bytes);
  EXPECT_EQ(t0.rx_errors, 0u);
  EXPECT_EQ(t0.tx_packets, 0u);
  EXPECT_EQ(t1.tx_packets, shapes.size());
  EXPECT_EQ(t1.tx_bytes, bytes);
  EXPECT_EQ(t1.tx_drops, 0u);
  EXPECT_EQ(t1.rx_packets, 0u);

  // And back: port 1 -> port 0.
  g0->post_rx(1, 2048);
  const Bytes back = eth_frame(kMacA, kMacB, 200, 99);
  g1->send(back);
  ASSERT_EQ(g1->complete_tx(), 1u);
  RxPacket p = g0->receive();
  expect_plain_header(p.header, 1, "port 1 -> port 0");
  expect_frame_eq(p.frame, back, "port 1 -> port 0");
  EXPECT_EQ(totals(1).rx_packets, 1u);
  EXPECT_EQ(totals(0).tx_packets, 1u);
}

// One guest on split rings, the other on packed rings (each port's layout is its own guest's
// choice): frames cross both ways byte for byte, over chain shapes and MRG_RXBUF.
TEST_F(NetMixedTest, SplitAndPackedGuestsForwardToEachOther) {
  start(FwdMode::io, 2);
  GuestOptions split_guest, packed_guest;
  split_guest.layout = RingLayout::split;
  packed_guest.layout = RingLayout::packed;
  packed_guest.queue_size = 100;  // packed: any size
  auto g0 = connect(0, split_guest);
  auto g1 = connect(1, packed_guest);
  ASSERT_EQ(g0->layout(), RingLayout::split);
  ASSERT_EQ(g1->layout(), RingLayout::packed);
  ASSERT_EQ(g1->ring(NetGuest::rx()).size(), 100u);
  g0->post_rx(16, 1024);
  g1->post_rx(16, 1024);
  std::uint32_t seed = 1;
  for (int round = 0; round < 30; ++round) {
    NetGuest& from = round % 2 == 0 ? *g0 : *g1;
    NetGuest& to = round % 2 == 0 ? *g1 : *g0;
    const std::size_t len = 60 + (seed * 97) % 2900;  // up to three 1024-byte RX buffers
    const Bytes frame = eth_frame(kMacB, kMacA, len, seed++);
    const std::uint32_t first = std::min<std::uint32_t>(12 + 7, static_cast<std::uint32_t>(12 + len));
    from.send(plain_header(), frame, {first, static_cast<std::uint32_t>(12 + len - first)}, 0, round % 3 == 0);
    ASSERT_EQ(from.complete_tx(), 1u) << "round " << round;
    RxPacket p = to.receive();
    EXPECT_EQ(p.header.num_buffers, p.used_lens.size()) << "round " << round;
    EXPECT_EQ(p.total_len(), 12 + len) << "round " << round;
    expect_frame_eq(p.frame, frame, "round " + std::to_string(round));
    to.post_rx(p.used_lens.size(), 1024);
  }
  EXPECT_EQ(totals(0).rx_packets, 15u);
  EXPECT_EQ(totals(1).rx_packets, 15u);
  EXPECT_EQ(totals(0).tx_drops + totals(1).tx_drops, 0u);
}

TEST_P(NetTest, IoKeepsOrderOverManyBurstsAndWrapsTheRings) {
  start(FwdMode::io, 2);
  GuestOptions small;
  small.queue_size = 64;  // 600 packets wrap every ring several times
  auto g0 = connect(0, small);
  auto g1 = connect(1, small);
  std::uint32_t seed = 1;
  std::size_t total = 0;
  for (int round = 0; round < 20; ++round) {
    const std::size_t burst = 1 + (round * 7) % 30;
    g1->post_rx(burst, 2048);
    std::vector<Bytes> sent;
    for (std::size_t k = 0; k < burst; ++k) {
      sent.push_back(eth_frame(kMacB, kMacA, 60 + (seed * 37) % 1400, seed));
      ++seed;
      g0->send(plain_header(), sent.back(), {}, 0, k % 3 == 0);
    }
    ASSERT_EQ(g0->complete_tx(), burst) << "round " << round;
    for (std::size_t k = 0; k < burst; ++k) {
      RxPacket p = g1->receive();
      expect_frame_eq(p.frame, sent[k], "round " + std::to_string(round) + " packet " + std::to_string(k));
      if (HasFailure()) return;
    }
    total += burst;
  }
  EXPECT_EQ(totals(0).rx_packets, total);
  EXPECT_EQ(totals(1).tx_packets, total);
  EXPECT_EQ(totals(1).tx_drops, 0u);
}

TEST_P(NetTest, RxHeaderIsRightWhetherTheRecycledBufferHeldItOrAnother) {
  // transmit() writes the virtio-net header only where it differs from what the buffer holds
  // (a recycled buffer usually holds the very same header): the guest reads the right header
  // either way, here from a buffer already holding it and from one holding a stale offload one.
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  VirtioNetHeader same{};
  same.num_buffers = 1;
  VirtioNetHeader stale{};
  stale.flags = net::kNetHdrFNeedsCsum;
  stale.gso_type = net::kNetHdrGsoTcpv4;
  stale.hdr_len = 54;
  stale.gso_size = 1448;
  stale.csum_start = 34;
  stale.csum_offset = 16;
  stale.num_buffers = 3;
  g1->prefill_rx_header(g1->post_rx_chain({2048}), same);
  g1->prefill_rx_header(g1->post_rx_chain({2048}), stale);
  const Bytes first = eth_frame(kMacB, kMacA, 64, 1), second = eth_frame(kMacB, kMacA, 64, 2);
  g0->send(first);
  g0->send(second);
  ASSERT_EQ(g0->complete_tx(), 2u);
  RxPacket p = g1->receive();
  expect_plain_header(p.header, 1, "buffer already holding the header");
  expect_frame_eq(p.frame, first, "first");
  RxPacket q = g1->receive();
  expect_plain_header(q.header, 1, "buffer holding a stale offload header");
  EXPECT_EQ(q.header.csum_start, 0) << describe(q.header);
  EXPECT_EQ(q.header.gso_size, 0) << describe(q.header);
  expect_frame_eq(q.frame, second, "second");
}

TEST_P(NetTest, RxBurstsGetEachHeaderAndFrameRightHoweverTheRingTakesThem) {
  // A burst of RX buffers may be filled a ring line at a time (packed rings: four single
  // buffers taken and published together) or one by one; either way each buffer gets its own
  // frame and a right header, whatever header the recycled buffer held, in order. The sender's
  // TX ring is disabled while it queues each round, so that the forwarder takes the whole round
  // as one burst.
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  auto set_tx_enabled = [&](bool on) { set_tx_ring_enabled(*g0, daemon(0), on); };
  VirtioNetHeader stale{};
  stale.flags = net::kNetHdrFNeedsCsum;
  stale.csum_start = 34;
  stale.csum_offset = 16;
  stale.num_buffers = 2;
  std::uint32_t seed = 7;
  constexpr std::size_t kBurst = 26;  // not a multiple of 4: rounds after the first start mid-line
  for (int round = 0; round < 5; ++round) {
    for (std::size_t k = 0; k < kBurst; ++k) {
      const std::uint16_t head = g1->post_rx_chain({2048});
      if (k % 3 == 1) g1->prefill_rx_header(head, stale);
    }
    set_tx_enabled(false);
    std::vector<Bytes> sent;
    for (std::size_t k = 0; k < kBurst; ++k) {
      sent.push_back(eth_frame(kMacB, kMacA, 60 + (seed * 53) % 1450, seed));
      ++seed;
      g0->send(sent.back());
    }
    set_tx_enabled(true);
    ASSERT_EQ(g0->complete_tx(), kBurst) << "round " << round;
    for (std::size_t k = 0; k < kBurst; ++k) {
      RxPacket p = g1->receive();
      const std::string what = "round " + std::to_string(round) + " packet " + std::to_string(k);
      expect_plain_header(p.header, 1, what);
      EXPECT_EQ(p.header.csum_start, 0) << what << ": " << describe(p.header);
      expect_frame_eq(p.frame, sent[k], what);
      if (HasFailure()) return;
    }
  }
  EXPECT_EQ(totals(1).tx_packets, 5u * kBurst);
  EXPECT_EQ(totals(1).tx_drops, 0u);
}

class NetLinesTest : public NetLayoutTest {
 protected:
  // io mode forwards whole ring lines of plain packets straight from ring to ring
  // (NetPort::forward_lines, packed rings) and the rest through receive()/transmit(). A round
  // mixes both in every line position: packets with offload metadata, a runt, a chained
  // packet, and a packet too large for its RX buffer. Every valid packet arrives once, in the
  // order sent, with the right header; the runt is counted and dropped. The sender speaks the
  // 10-byte legacy header in one pass and the modern one in the other (the receiver's header
  // is rebuilt either way). Small rings: the rounds wrap them.
  void forward_rounds(bool legacy_sender) {
    start(FwdMode::io, 2);
    GuestOptions sender_options;
    sender_options.queue_size = 64;
    if (legacy_sender) sender_options.feature_mask = kAllFeatures & ~(kVirtioFVersion1 | net::kNetFMrgRxbuf);
    GuestOptions receiver_options;
    receiver_options.queue_size = 64;
    auto g0 = connect(0, sender_options);
    auto g1 = connect(1, receiver_options);
    ASSERT_TRUE(g1->has(net::kNetFMrgRxbuf) && g1->has(net::kNetFGuestCsum));
    auto set_tx_enabled = [&](bool on) { set_tx_ring_enabled(*g0, daemon(0), on); };
    constexpr std::size_t kRound = 24;
    std::uint32_t seed = 11;
    std::uint64_t delivered = 0, bytes = 0, runts = 0;
    for (int round = 0; round < 4; ++round) {
      // RX buffers: 2048 bytes, but a 256-byte one where packet 17 (1000 bytes) lands; one
      // more buffer for the part of it that spills over (MRG_RXBUF).
      for (std::size_t k = 0; k < kRound + 1; ++k) g1->post_rx_chain({k == 17 ? 256u : 2048u});
      set_tx_enabled(false);
      struct Sent {
        Bytes frame;
        bool csum;
      };
      std::vector<Sent> sent;
      for (std::size_t k = 0; k < kRound; ++k) {
        const std::size_t where = (k + round) % 8;  // the odd packets move along the lines
        if (k == 12) {
          g0->send_bytes(Bytes(g0->header_len() + 13, 0));  // runt: dropped, counted
          ++runts;
          continue;
        }
        if (k == 8 + where % 4 && !legacy_sender) {
          Bytes frame = udp_frame(40, true, seed++);
          g0->send(csum_header(34, kUdpCsumOffset), frame);
          sent.push_back({frame, true});
          continue;
        }
        Bytes frame = eth_frame(kMacB, kMacA, k == 17 ? 1000 : 60 + (seed * 13) % 40, seed);
        ++seed;
        if (k == 20 + where % 4) {
          g0->send(plain_header(), frame, {g0->header_len(), static_cast<std::uint32_t>(frame.size())});  // chained
        } else {
          g0->send(frame);
        }
        sent.push_back({frame, false});
      }
      set_tx_enabled(true);
      ASSERT_EQ(g0->complete_tx(), kRound) << "round " << round;
      for (std::size_t k = 0; k < sent.size(); ++k) {
        const std::string what = "round " + std::to_string(round) + " packet " + std::to_string(k);
        RxPacket p = g1->receive();
        expect_frame_eq(p.frame, sent[k].frame, what);
        if (sent[k].csum) {
          EXPECT_EQ(p.header.flags, net::kNetHdrFNeedsCsum) << what << ": " << describe(p.header);
          EXPECT_EQ(p.header.csum_start, 34) << what;
        } else {
          EXPECT_EQ(p.header.flags, 0) << what << ": " << describe(p.header);
          EXPECT_EQ(p.header.num_buffers, p.used_lens.size()) << what;
        }
        ++delivered;
        bytes += sent[k].frame.size();
        if (HasFailure()) return;
      }
      EXPECT_EQ(g1->rx_pending(), 0u) << "round " << round << ": a packet delivered twice";
      // The buffer the 1000-byte packet spilled into is used; the spare one is the next round's.
    }
    const net::PortTotals t0 = totals(0), t1 = totals(1);
    EXPECT_EQ(t0.rx_packets, delivered);
    EXPECT_EQ(t0.rx_bytes, bytes);
    EXPECT_EQ(t0.rx_errors, runts);
    EXPECT_EQ(t1.tx_packets, delivered);
    EXPECT_EQ(t1.tx_bytes, bytes);
    EXPECT_EQ(t1.tx_drops, 0u);
  }
};

TEST_P(NetLinesTest, IoForwardsLinesOfPlainPacketsAndEverythingElseInOneOrder) { forward_rounds(false); }
TEST_P(NetLinesTest, IoForwardsLinesFromALegacyHeaderSenderAndEverythingElseInOneOrder) { forward_rounds(true); }
INSTANTIATE_NET_LAYOUTS(NetLinesTest);

TEST_P(NetTest, IoLoneLastPortLoopsBackToItself) {
  start(FwdMode::io, 3);
  EXPECT_EQ(forwarder().io_peer(0), 1u);
  EXPECT_EQ(forwarder().io_peer(1), 0u);
  EXPECT_EQ(forwarder().io_peer(2), 2u);
  auto g2 = connect(2);
  g2->post_rx(1);
  const Bytes frame = eth_frame(kMacC, kMacC, 128, 5);
  g2->send(frame);
  ASSERT_EQ(g2->complete_tx(), 1u);
  RxPacket p = g2->receive();
  expect_frame_eq(p.frame, frame, "port 2 -> port 2");
  EXPECT_EQ(totals(2).rx_packets, 1u);
  EXPECT_EQ(totals(2).tx_packets, 1u);
}

TEST_P(NetTest, LegacyTenByteHeaderGuestTalksToAModernGuest) {
  start(FwdMode::io, 2);
  GuestOptions legacy;
  legacy.feature_mask = kAllFeatures & ~(kVirtioFVersion1 | net::kNetFMrgRxbuf);
  auto g0 = connect(0, legacy);
  auto g1 = connect(1);
  ASSERT_EQ(g0->header_len(), net::kNetLegacyHeaderLen);
  ASSERT_EQ(g1->header_len(), net::kNetHeaderLen);
  g0->post_rx(1);
  g1->post_rx(1);

  const Bytes a = eth_frame(kMacB, kMacA, 90, 3);
  g0->send(a);  // 10-byte header
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p1 = g1->receive();
  expect_plain_header(p1.header, 1, "legacy -> modern");
  EXPECT_EQ(p1.used_lens[0], 12u + 90u);
  expect_frame_eq(p1.frame, a, "legacy -> modern");

  const Bytes b = eth_frame(kMacA, kMacB, 91, 4);
  g1->send(b);
  ASSERT_EQ(g1->complete_tx(), 1u);
  RxPacket p0 = g0->receive();
  EXPECT_EQ(p0.header.flags, 0);
  EXPECT_EQ(p0.used_lens[0], 10u + 91u) << "a legacy guest's header is 10 bytes";
  expect_frame_eq(p0.frame, b, "modern -> legacy");
}

// ---- 2. MRG_RXBUF ----

TEST_P(NetTest, MergeableRxSpreadsALargeFrameOverSeveralBuffers) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  ASSERT_TRUE(g1->has(net::kNetFMrgRxbuf));
  g1->post_rx(8, 1024);

  const Bytes frame = eth_frame(kMacB, kMacA, 3000, 11);
  g0->send(plain_header(), frame, {12, 1500, 1500});
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_GE(p.header.num_buffers, 3);
  EXPECT_EQ(p.header.num_buffers, p.used_lens.size());
  EXPECT_EQ(p.total_len(), 12u + 3000u) << "used lengths must sum to header + frame";
  for (std::size_t i = 0; i + 1 < p.used_lens.size(); ++i) EXPECT_EQ(p.used_lens[i], 1024u) << "buffer " << i;
  expect_frame_eq(p.frame, frame, "3000-byte frame over 1024-byte buffers");
  EXPECT_EQ(g1->rx_posted(), 8u - p.used_lens.size());
  EXPECT_EQ(totals(1).tx_packets, 1u);
  EXPECT_EQ(totals(1).tx_bytes, 3000u);
  EXPECT_EQ(totals(1).tx_drops, 0u);

  // The next packet takes the next buffer, not the rest of the last one.
  const Bytes small = eth_frame(kMacB, kMacA, 64, 12);
  g0->send(small);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket q = g1->receive();
  EXPECT_EQ(q.header.num_buffers, 1);
  expect_frame_eq(q.frame, small, "small frame after the large one");
}

TEST_P(NetTest, RxChainsOfSeveralDescriptorsTakeTheHeaderAcrossDescriptors) {
  start(FwdMode::io, 3);  // port 2 loops back: a second receiver, without MRG_RXBUF
  auto g0 = connect(0);
  auto g1 = connect(1);
  GuestOptions no_mrg;
  no_mrg.feature_mask = kAllFeatures & ~net::kNetFMrgRxbuf;
  auto g2 = connect(2, no_mrg);

  // MRG_RXBUF: chains of {5, 7, 1012} (the header split over two descriptors), a 2000-byte
  // frame over two of them.
  for (int i = 0; i < 3; ++i) g1->post_rx_chain({5, 7, 1012});
  const Bytes big = eth_frame(kMacB, kMacA, 2000, 1);
  g0->send(big);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.num_buffers, 2);
  EXPECT_EQ(p.total_len(), 12u + 2000u);
  expect_frame_eq(p.frame, big, "MRG_RXBUF over 3-descriptor chains");

  // Without MRG_RXBUF: one chain {4, 8, 30, 2000}.
  g2->post_rx_chain({4, 8, 30, 2000});
  const Bytes f = eth_frame(kMacC, kMacC, 1500, 2);
  g2->send(f);
  ASSERT_EQ(g2->complete_tx(), 1u);
  RxPacket q = g2->receive();
  expect_plain_header(q.header, 1, "4-descriptor chain");
  EXPECT_EQ(q.used_lens[0], 12u + 1500u);
  expect_frame_eq(q.frame, f, "4-descriptor chain");
}

TEST_P(NetTest, MergeableRxFirstBufferHoldingOnlyTheHeader) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(1, 12);
  g1->post_rx(2, 1024);
  const Bytes frame = eth_frame(kMacB, kMacA, 1500, 3);
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.num_buffers, 3);
  ASSERT_EQ(p.used_lens.size(), 3u);
  EXPECT_EQ(p.used_lens[0], 12u);
  EXPECT_EQ(p.total_len(), 12u + 1500u);
  expect_frame_eq(p.frame, frame, "header alone in the first buffer");
}

TEST_P(NetTest, MergeableRxPacketLargerThanEveryPostedBufferWaitsForMoreOrDrops) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(2, 1024);  // 2048 bytes posted: a 3000-byte frame does not fit
  const Bytes big = eth_frame(kMacB, kMacA, 3000, 21);
  g0->send(big);
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(g1->rx_pending(), 0u) << "a partial packet was published";
  EXPECT_EQ(totals(1).tx_drops, 1u);
  EXPECT_EQ(totals(1).tx_packets, 0u);
  // The two buffers were given back untouched: a small packet takes the first.
  const Bytes small = eth_frame(kMacB, kMacA, 100, 22);
  g0->send(small);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.num_buffers, 1);
  expect_frame_eq(p.frame, small, "small frame after the drop");
}

TEST_P(NetTest, WithoutMergeableRxAFrameLargerThanTheBufferIsDroppedAndTheBufferKept) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  GuestOptions no_mrg;
  no_mrg.feature_mask = kAllFeatures & ~net::kNetFMrgRxbuf;
  auto g1 = connect(1, no_mrg);
  ASSERT_FALSE(g1->has(net::kNetFMrgRxbuf));
  ASSERT_EQ(g1->header_len(), 12u) << "VERSION_1 keeps the 12-byte header";
  g1->post_rx(1, 1024);

  g0->send(eth_frame(kMacB, kMacA, 3000, 31));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(1).tx_drops, 1u);
  EXPECT_EQ(totals(1).tx_packets, 0u);

  // Exactly the buffer's size fits (12 + 1012 = 1024); one byte more does not.
  g0->send(eth_frame(kMacB, kMacA, 1013, 32));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(1).tx_drops, 2u);

  const Bytes fits = eth_frame(kMacB, kMacA, 1012, 33);
  g0->send(fits);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  expect_plain_header(p.header, 1, "no MRG_RXBUF: num_buffers is 1");
  EXPECT_EQ(p.used_lens[0], 1024u);
  expect_frame_eq(p.frame, fits, "frame filling the buffer exactly");
  EXPECT_EQ(totals(1).tx_packets, 1u);
  EXPECT_EQ(totals(1).tx_drops, 2u);
}

// ---- 3. header validation (DPDK CVE-2024-11614) ----

struct BadPacket {
  std::string name;
  Bytes bytes;
  std::vector<std::uint32_t> split;
};

Bytes with_header(const VirtioNetHeader& h, const Bytes& frame) {
  Bytes b(12);
  std::memcpy(b.data(), &h, 12);
  b.insert(b.end(), frame.begin(), frame.end());
  return b;
}

// Sends each bad packet, then a good one: each bad one is dropped and counted in rx_errors,
// its chain given back; the good one after it arrives.
void expect_each_dropped_then_ring_works(NetGuest& sender, NetGuest& receiver, net::NetPort& sender_port,
                                         const std::vector<BadPacket>& bad) {
  std::uint32_t seed = 100;
  for (const BadPacket& b : bad) {
    const net::PortTotals before = sender_port.totals();
    sender.send_bytes(b.bytes, b.split);
    ASSERT_EQ(sender.complete_tx(), 1u) << b.name << ": TX chain not returned";
    EXPECT_EQ(receiver.rx_pending(), 0u) << b.name << ": delivered although invalid";
    const net::PortTotals after = sender_port.totals();
    EXPECT_EQ(after.rx_errors, before.rx_errors + 1) << b.name << ": not counted in rx_errors";
    EXPECT_EQ(after.rx_packets, before.rx_packets) << b.name << ": counted as a received packet";

    const Bytes good = eth_frame(kMacB, kMacA, 80, ++seed);
    sender.send(good);
    ASSERT_EQ(sender.complete_tx(), 1u) << "good packet after " << b.name;
    if (receiver.rx_pending() != 1u) {
      ADD_FAILURE() << "good packet after " << b.name << " not forwarded";
      continue;
    }
    RxPacket p = receiver.receive();
    expect_frame_eq(p.frame, good, "good packet after " + b.name);
  }
}

TEST_P(NetTest, InvalidHeadersAreDroppedCountedAndTheChainReturned) {
  start(FwdMode::io, 2);
  GuestOptions no_tso;
  no_tso.feature_mask = kAllFeatures & ~kHostTso;
  auto g0 = connect(0, no_tso);
  auto g1 = connect(1);
  ASSERT_TRUE(g0->has(net::kNetFCsum));
  ASSERT_FALSE(g0->has(net::kNetFHostTso4));
  g1->post_rx(32);

  const Bytes frame60 = eth_frame(kMacB, kMacA, 60, 1);
  VirtioNetHeader gso = csum_header(34, 16);
  gso.gso_type = net::kNetHdrGsoTcpv4;
  gso.gso_size = 1448;
  gso.hdr_len = 54;
  VirtioNetHeader gso_udp = csum_header(34, 6);
  gso_udp.gso_type = net::kNetHdrGsoUdp;
  gso_udp.gso_size = 1400;
  VirtioNetHeader unknown_flag{};
  unknown_flag.flags = 0x04;
  const std::vector<BadPacket> bad = {
      {"NEEDS_CSUM, csum_start+csum_offset+2 one past the packet", with_header(csum_header(50, 9), frame60), {}},
      {"NEEDS_CSUM, csum_start past the packet", with_header(csum_header(61, 0), frame60), {}},
      {"NEEDS_CSUM, csum_start and csum_offset 0xffff", with_header(csum_header(0xffff, 0xffff), frame60), {}},
      {"NEEDS_CSUM past the packet, header in its own descriptor", with_header(csum_header(40, 20), frame60),
       {12, 30, 30}},
      {"GSO TCPv4 without HOST_TSO4", with_header(gso, tcp_frame(2000, true)), {}},
      {"GSO UDP (never offered)", with_header(gso_udp, udp_frame(2000, true)), {}},
      {"unknown header flag", with_header(unknown_flag, frame60), {}},
      {"runt: header + 13 bytes", Bytes(12 + 13, 0), {}},
      {"runt: header + 13 bytes over three descriptors", Bytes(12 + 13, 0), {6, 6, 13}},
      {"runt: header only", Bytes(12, 0), {}},
      {"runt: half a header", Bytes(6, 0), {}},
  };
  expect_each_dropped_then_ring_works(*g0, *g1, port(0), bad);
  EXPECT_EQ(totals(0).rx_errors, bad.size());
  EXPECT_EQ(totals(1).tx_drops, 0u);

  // At the limit: csum_start + csum_offset + 2 == frame length is valid.
  const Bytes ok = eth_frame(kMacB, kMacA, 60, 77);
  g0->send(csum_header(50, 8), ok);
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(totals(0).rx_errors, bad.size()) << "a checksum field ending at the last byte was refused";
  ASSERT_EQ(g1->rx_pending(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.flags, net::kNetHdrFNeedsCsum);
  EXPECT_EQ(p.header.csum_start, 50);
  EXPECT_EQ(p.header.csum_offset, 8);
}

TEST_P(NetTest, NeedsCsumOrGsoWithoutCsumNegotiatedIsDropped) {
  start(FwdMode::io, 2);
  GuestOptions no_csum;
  no_csum.feature_mask = kNoCsum;
  auto g0 = connect(0, no_csum);
  auto g1 = connect(1);
  ASSERT_FALSE(g0->has(net::kNetFCsum));
  g1->post_rx(16);
  VirtioNetHeader gso = csum_header(34, 16);
  gso.gso_type = net::kNetHdrGsoTcpv4;
  gso.gso_size = 1448;
  VirtioNetHeader gso_no_csum{};
  gso_no_csum.gso_type = net::kNetHdrGsoTcpv4;
  gso_no_csum.gso_size = 1448;
  const std::vector<BadPacket> bad = {
      {"NEEDS_CSUM without CSUM", with_header(csum_header(kUdpCsumStart, kUdpCsumOffset), udp_frame(100, true)), {}},
      {"GSO TCPv4 without CSUM/HOST_TSO4", with_header(gso, tcp_frame(3000, true)), {}},
      {"GSO without NEEDS_CSUM", with_header(gso_no_csum, tcp_frame(3000, true)), {}},
  };
  expect_each_dropped_then_ring_works(*g0, *g1, port(0), bad);
  EXPECT_EQ(totals(0).rx_errors, bad.size());
}

// ---- 4. checksum offload across ports ----

// Header alone, Ethernet + IPv4 headers in two, then descriptors of 3 and 1 bytes alternating.
std::vector<std::uint32_t> many_small_descriptors(std::uint32_t total) {
  std::vector<std::uint32_t> split{12, 14, 20};
  std::uint32_t sum = 46;
  for (std::uint32_t k = 0; sum < total; ++k) {
    const std::uint32_t s = std::min<std::uint32_t>(k % 2 == 0 ? 3 : 1, total - sum);
    split.push_back(s);
    sum += s;
  }
  return split;
}

TEST_P(NetTest, PartialChecksumIsCompletedForAReceiverWithoutGuestCsum) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  GuestOptions no_guest_csum;
  no_guest_csum.feature_mask = kNoGuestCsum;
  auto g1 = connect(1, no_guest_csum);
  ASSERT_TRUE(g0->has(net::kNetFCsum));
  ASSERT_FALSE(g1->has(net::kNetFGuestCsum));
  g1->post_rx(16);

  struct Case {
    std::string name;
    std::size_t payload;
    std::vector<std::uint32_t> split;  // over header + frame (12 + 42 + payload)
  };
  const std::vector<Case> cases = {
      {"one descriptor, even payload", 200, {}},
      {"one descriptor, odd payload", 301, {}},
      {"split at odd offsets inside the payload", 301, {12, 45, 101, 197}},
      {"header alone, checksum field split across descriptors", 50, {12, 14 + 20 + 7, 1 + 50}},
      {"many one- and three-byte descriptors", 33, many_small_descriptors(12 + 42 + 33)},
      {"jumbo", 8000, {12, 4000, 4042}},
      {"empty payload", 0, {}},
  };
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const Bytes sent = udp_frame(c.payload, true, static_cast<std::uint32_t>(i + 40));
    ASSERT_FALSE(l4_checksum_ok(sent, kUdpCsumOffset)) << c.name << ": test bug: partial checksum already verifies";
    std::vector<std::uint32_t> split = c.split;
    std::uint32_t sum = 0;
    for (auto s : split) sum += s;
    ASSERT_TRUE(split.empty() || sum == 12 + sent.size()) << c.name << ": test bug: split sums to " << sum;
    g0->send(csum_header(kUdpCsumStart, kUdpCsumOffset), sent, split);
    ASSERT_EQ(g0->complete_tx(), 1u) << c.name;
    ASSERT_GE(g1->rx_pending(), 1u) << c.name << ": not delivered";
    RxPacket p = g1->receive();
    EXPECT_EQ(p.header.flags, 0) << c.name << ": NEEDS_CSUM given to a guest without GUEST_CSUM " << describe(p.header);
    EXPECT_EQ(p.header.csum_start, 0) << c.name;
    EXPECT_EQ(p.header.csum_offset, 0) << c.name;
    ASSERT_EQ(p.frame.size(), sent.size()) << c.name;
    // Every other byte as sent.
    const Bytes expected = udp_frame(c.payload, false, static_cast<std::uint32_t>(i + 40));
    EXPECT_TRUE(l4_checksum_ok(p.frame, kUdpCsumOffset))
        << c.name << ": UDP checksum 0x" << std::hex << get16be(&p.frame[kUdpCsumStart + kUdpCsumOffset])
        << " does not verify; expected 0x" << get16be(&expected[kUdpCsumStart + kUdpCsumOffset]);
    expect_frame_eq(p.frame, expected, c.name);
  }

  // TCP: same path, the field 16 bytes in.
  const Bytes tcp = tcp_frame(555, true, 90);
  g0->send(csum_header(kUdpCsumStart, kTcpCsumOffset), tcp, {12, 33, static_cast<std::uint32_t>(12 + tcp.size() - 45)});
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.flags, 0);
  EXPECT_TRUE(l4_checksum_ok(p.frame, kTcpCsumOffset)) << "TCP checksum does not verify";
  expect_frame_eq(p.frame, tcp_frame(555, false, 90), "TCP frame");
  EXPECT_EQ(totals(1).tx_drops, 0u);
}

TEST_P(NetTest, PartialChecksumIsPassedOnToAReceiverWithGuestCsum) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  ASSERT_TRUE(g1->has(net::kNetFGuestCsum));
  g1->post_rx(4);
  const Bytes sent = udp_frame(301, true, 8);
  g0->send(csum_header(kUdpCsumStart, kUdpCsumOffset), sent, {12, 45, static_cast<std::uint32_t>(sent.size() - 45)});
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.flags, net::kNetHdrFNeedsCsum) << describe(p.header);
  EXPECT_EQ(p.header.csum_start, kUdpCsumStart);
  EXPECT_EQ(p.header.csum_offset, kUdpCsumOffset);
  EXPECT_EQ(p.header.gso_type, net::kNetHdrGsoNone);
  EXPECT_EQ(p.header.num_buffers, 1);
  expect_frame_eq(p.frame, sent, "partial checksum left for the receiver");

  // DATA_VALID alone is passed on to a guest that understands checksum flags.
  VirtioNetHeader valid{};
  valid.flags = net::kNetHdrFDataValid;
  const Bytes full = udp_frame(64, false, 9);
  g0->send(valid, full);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket q = g1->receive();
  EXPECT_EQ(q.header.flags, net::kNetHdrFDataValid) << describe(q.header);
  expect_frame_eq(q.frame, full, "DATA_VALID frame");
}

TEST_P(NetTest, ChecksumStartInsideTheEthernetHeaderIsDroppedForAReceiverWithoutGuestCsum) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  GuestOptions no_guest_csum;
  no_guest_csum.feature_mask = kNoGuestCsum;
  auto g1 = connect(1, no_guest_csum);
  g1->post_rx(2);
  g0->send(csum_header(4, 2), eth_frame(kMacB, kMacA, 60, 1));  // valid for the sender's header check
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(totals(0).rx_errors, 0u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(1).tx_drops, 1u);
  EXPECT_EQ(g1->rx_posted(), 2u) << "the dropped packet consumed an RX buffer";
  const Bytes good = eth_frame(kMacB, kMacA, 60, 2);
  g0->send(good);
  ASSERT_EQ(g0->complete_tx(), 1u);
  expect_frame_eq(g1->receive().frame, good, "next packet");
}

TEST_P(NetTest, GsoPacketGoesOnlyToAReceiverThatNegotiatedGuestTso) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  GuestOptions no_tso;
  no_tso.feature_mask = kAllFeatures & ~kGuestTso;
  auto g1 = connect(1, no_tso);
  ASSERT_TRUE(g0->has(net::kNetFHostTso4));
  ASSERT_FALSE(g1->has(net::kNetFGuestTso4));
  g1->post_rx(4, 4096);
  VirtioNetHeader gso = csum_header(kUdpCsumStart, kTcpCsumOffset);
  gso.gso_type = net::kNetHdrGsoTcpv4;
  gso.gso_size = 1448;
  gso.hdr_len = 54;
  const Bytes seg = tcp_frame(3000, true, 3);
  g0->send(gso, seg);
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(totals(0).rx_errors, 0u) << "a valid GSO packet from a HOST_TSO4 guest was refused";
  EXPECT_EQ(g1->rx_pending(), 0u) << "GSO packet given to a guest without GUEST_TSO4";
  EXPECT_EQ(totals(1).tx_drops, 1u);
  EXPECT_EQ(g1->rx_posted(), 4u);
  g1.reset();
  ASSERT_TRUE(wait_disconnected(1));

  auto g1b = connect(1);  // now with GUEST_TSO4 and GUEST_CSUM
  ASSERT_TRUE(g1b->has(net::kNetFGuestTso4));
  g1b->post_rx(4, 4096);
  g0->send(gso, seg);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1b->receive();
  EXPECT_EQ(p.header.gso_type, net::kNetHdrGsoTcpv4) << describe(p.header);
  EXPECT_EQ(p.header.gso_size, 1448);
  EXPECT_EQ(p.header.hdr_len, 54);
  EXPECT_EQ(p.header.flags, net::kNetHdrFNeedsCsum);
  EXPECT_EQ(p.header.csum_start, kUdpCsumStart);
  EXPECT_EQ(p.header.csum_offset, kTcpCsumOffset);
  EXPECT_EQ(p.header.num_buffers, 1);
  expect_frame_eq(p.frame, seg, "GSO frame");
}

TEST_P(NetTest, ChecksumFieldSplitAcrossReceiverBuffersIsCompletedInPlace) {
  start(FwdMode::io, 3);  // port 2 loops back to itself
  auto g0 = connect(0);
  GuestOptions mrg_no_csum;
  mrg_no_csum.feature_mask = kNoGuestCsum;
  auto g1 = connect(1, mrg_no_csum);
  GuestOptions plain_no_csum;
  plain_no_csum.feature_mask = kNoGuestCsum & ~net::kNetFMrgRxbuf;
  auto g2 = connect(2, plain_no_csum);

  // MRG_RXBUF with 53-byte buffers: header + 41 frame bytes in the first, so the UDP checksum
  // field (frame bytes 40 and 41) straddles the first two buffers.
  g1->post_rx(8, 53);
  const Bytes sent = udp_frame(301, true, 61);  // 343 bytes: 7 buffers
  g0->send(csum_header(kUdpCsumStart, kUdpCsumOffset), sent, {12, 41, static_cast<std::uint32_t>(sent.size() - 41)});
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.num_buffers, 7);
  EXPECT_EQ(p.header.flags, 0);
  EXPECT_TRUE(l4_checksum_ok(p.frame, kUdpCsumOffset)) << "checksum split over two RX buffers";
  expect_frame_eq(p.frame, udp_frame(301, false, 61), "checksum split over two RX buffers");

  // Without MRG_RXBUF: one RX chain whose descriptors split the field.
  g2->post_rx_chain({53, 1, 4000});
  Bytes self = udp_frame(100, true, 62);
  std::memcpy(self.data(), kMacC.data(), 6);
  g2->send(csum_header(kUdpCsumStart, kUdpCsumOffset), self);
  ASSERT_EQ(g2->complete_tx(), 1u);
  RxPacket q = g2->receive();
  EXPECT_EQ(q.header.flags, 0);
  EXPECT_TRUE(l4_checksum_ok(q.frame, kUdpCsumOffset)) << "checksum split over RX descriptors";
}

// ---- 5. no room ----

TEST_P(NetTest, NoRxBuffersDropsAndCountsThenTrafficFlowsOncePosted) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  for (int i = 0; i < 5; ++i) g0->send(eth_frame(kMacB, kMacA, 64, i));
  ASSERT_EQ(g0->complete_tx(), 5u) << "TX chains must come back even when nothing could be delivered";
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(1).tx_drops, 5u);
  EXPECT_EQ(totals(1).tx_packets, 0u);
  EXPECT_EQ(totals(0).rx_packets, 5u);

  // Room for 2 of the next 5.
  g1->post_rx(2);
  std::vector<Bytes> sent;
  for (int i = 0; i < 5; ++i) {
    sent.push_back(eth_frame(kMacB, kMacA, 64, 10 + i));
    g0->send(sent.back());
  }
  ASSERT_EQ(g0->complete_tx(), 5u);
  EXPECT_EQ(g1->rx_pending(), 2u);
  EXPECT_EQ(totals(1).tx_packets, 2u);
  EXPECT_EQ(totals(1).tx_drops, 8u);
  expect_frame_eq(g1->receive().frame, sent[0], "first of the partial burst");
  expect_frame_eq(g1->receive().frame, sent[1], "second of the partial burst");

  g1->post_rx(8);
  for (int i = 0; i < 8; ++i) {
    sent.push_back(eth_frame(kMacB, kMacA, 64, 20 + i));
    g0->send(sent.back());
  }
  ASSERT_EQ(g0->complete_tx(), 8u);
  for (int i = 0; i < 8; ++i) expect_frame_eq(g1->receive().frame, sent[5 + i], "after posting");
  EXPECT_EQ(totals(1).tx_packets, 10u);
  EXPECT_EQ(totals(1).tx_drops, 8u);
}

TEST_P(NetTest, TxRetryStillDropsWhenTheGuestNeverPostsBuffers) {
  fwd::FwdOptions options;
  options.tx_retries = 100;
  start(FwdMode::io, 2, options);
  auto g0 = connect(0);
  auto g1 = connect(1);
  for (int i = 0; i < 3; ++i) g0->send(eth_frame(kMacB, kMacA, 64, i));
  ASSERT_EQ(g0->complete_tx(), 3u);
  EXPECT_EQ(totals(1).tx_drops, 3u);
}

TEST_P(NetTest, DisabledRxRingDropsThenFlowsWhenReenabled) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(4);
  g1->frontend().set_vring_enable(NetGuest::rx(), false);
  g0->send(eth_frame(kMacB, kMacA, 64, 1));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(g1->rx_pending(), 0u) << "delivered into a disabled ring";
  EXPECT_EQ(totals(1).tx_drops, 1u);
  g1->frontend().set_vring_enable(NetGuest::rx(), true);
  ASSERT_TRUE(wait_until([&] {
    for (const RingReport& r : daemon(1).ring_reports()) {
      if (r.index == NetGuest::rx() && r.attached) return true;
    }
    return false;
  }));
  const Bytes frame = eth_frame(kMacB, kMacA, 64, 2);
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  expect_frame_eq(g1->receive().frame, frame, "after re-enabling");
}

// Split: an avail entry naming head 5000; packed: a descriptor with buffer id 5000. Either way
// an id out of range for the 256-entry ring.
TEST_P(NetTest, HostileRxRingIsPutInErrorAndOnlyItsOwnDeliveriesStop) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(1);
  push_hostile_id(g1->frontend(), NetGuest::rx(), 5000, true);
  const Bytes first = eth_frame(kMacB, kMacA, 64, 1);
  g0->send(first);
  ASSERT_EQ(g0->complete_tx(), 1u);
  expect_frame_eq(g1->receive().frame, first, "the valid buffer before the hostile entry");
  for (int i = 0; i < 3; ++i) g0->send(eth_frame(kMacB, kMacA, 64, 2 + i));
  ASSERT_EQ(g0->complete_tx(), 3u) << "the sender's chains must come back";
  EXPECT_EQ(totals(1).tx_drops, 3u);
  ASSERT_TRUE(wait_until([&] { return daemon(1).ring_reports().at(NetGuest::rx()).error != RingError::none; }));
  EXPECT_EQ(daemon(1).ring_reports().at(NetGuest::rx()).error, RingError::head_out_of_range);
  EXPECT_EQ(daemon(1).ring_reports().at(NetGuest::rx()).errors, 1u);

  // Port 1's guest can still send; port 0 is unaffected; both daemons keep serving.
  const Bytes back = eth_frame(kMacA, kMacB, 64, 9);
  g1->send(back);
  ASSERT_EQ(g1->complete_tx(), 1u);
  expect_frame_eq(g0->receive().frame, back, "from the port whose RX ring is in error");
  g1->frontend().expect_in_sync();
  g0->frontend().expect_in_sync();

  // A fresh connection serves again.
  g1.reset();
  ASSERT_TRUE(wait_disconnected(1));
  auto g1b = connect(1);
  g1b->post_rx(1);
  g0->send(first);
  ASSERT_EQ(g0->complete_tx(), 1u);
  expect_frame_eq(g1b->receive().frame, first, "after reconnecting");
}

TEST_P(NetTest, HostileTxRingStopsOnlyThatGuestsSending) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(4);
  push_hostile_id(g0->frontend(), NetGuest::tx(), 4000);
  ASSERT_TRUE(wait_until([&] { return daemon(0).ring_reports().at(NetGuest::tx()).error != RingError::none; }));
  EXPECT_EQ(daemon(0).ring_reports().at(NetGuest::tx()).error, RingError::head_out_of_range);
  EXPECT_EQ(daemon(0).ring_reports().at(NetGuest::tx()).errors, 1u);
  EXPECT_EQ(totals(0).rx_packets, 0u);
  const Bytes back = eth_frame(kMacA, kMacB, 64, 1);
  g1->send(back);
  ASSERT_EQ(g1->complete_tx(), 1u);
  expect_frame_eq(g0->receive().frame, back, "into the guest whose TX ring is in error");
}

// Packed: a guest makes an RX buffer id available again while the device still holds it (a
// mergeable packet takes both before publishing either). The RX ring goes into error
// (used_id_out_of_range), the packet is dropped and counted, nothing of it is published; the
// guest can still send, and a new connection receives again.
TEST_F(NetPackedTest, RxBufferIdMadeAvailableTwiceWhileHeldPutsTheRingInError) {
  start(FwdMode::io, 2);
  GuestOptions packed;
  packed.layout = RingLayout::packed;
  auto g0 = connect(0, packed);
  auto g1 = connect(1, packed);
  ASSERT_TRUE(g1->has(net::kNetFMrgRxbuf));
  g0->post_rx(2);
  const std::uint16_t id = g1->post_rx_chain({1024});
  PackedDriverRing& rx = g1->ring(NetGuest::rx()).packed();
  const std::uint64_t gpa = g1->frontend().ring_fds(NetGuest::rx()).data_gpa + 100 * TestFrontend::kSlotBytes;
  rx.put(rx.next_avail(), PackedDesc{gpa, 1024, id, static_cast<std::uint16_t>(rx.avail_bits() | kVringDescFWrite)});

  g0->send(eth_frame(kMacB, kMacA, 1500, 1));  // 12 + 1500 bytes: two 1024-byte buffers
  ASSERT_EQ(g0->complete_tx(), 1u) << "the sender's chain must come back";
  ASSERT_TRUE(wait_until([&] { return daemon(1).ring_reports().at(NetGuest::rx()).error != RingError::none; }));
  const RingReport r = daemon(1).ring_reports().at(NetGuest::rx());
  EXPECT_EQ(r.error, RingError::used_id_out_of_range) << to_string(r.error);
  EXPECT_EQ(r.errors, 1u);
  EXPECT_EQ(g1->rx_pending(), 0u) << "part of the packet was published";
  EXPECT_EQ(totals(1).tx_drops, 1u);
  EXPECT_EQ(totals(1).tx_packets, 0u);

  // Port 1's guest can still send; both daemons keep serving.
  const Bytes back = eth_frame(kMacA, kMacB, 64, 2);
  g1->send(back);
  ASSERT_EQ(g1->complete_tx(), 1u);
  expect_frame_eq(g0->receive().frame, back, "from the port whose RX ring is in error");
  g1->frontend().expect_in_sync();

  g1.reset();
  ASSERT_TRUE(wait_disconnected(1));
  auto g1b = connect(1, packed);
  g1b->post_rx(2, 1024);
  const Bytes frame = eth_frame(kMacB, kMacA, 1500, 3);
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1b->receive();
  EXPECT_EQ(p.header.num_buffers, 2);
  expect_frame_eq(p.frame, frame, "after reconnecting");
}

// ---- 6. forwarding modes ----

TEST_P(NetTest, MacswapSendsBackOnTheSamePortWithAddressesSwapped) {
  start(FwdMode::macswap, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(4);
  const Bytes frame = eth_frame(kMacB, kMacA, 300, 5);
  g0->send(plain_header(), frame, {12, 10, 300 - 10});  // the Ethernet header split, too
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g0->receive();
  Bytes expected = frame;
  std::swap_ranges(expected.begin(), expected.begin() + 6, expected.begin() + 6);
  expect_frame_eq(p.frame, expected, "macswap");
  EXPECT_EQ(g1->rx_pending(), 0u) << "macswap sent to the other port";
  EXPECT_EQ(totals(0).rx_packets, 1u);
  EXPECT_EQ(totals(0).tx_packets, 1u);
  EXPECT_EQ(totals(1).tx_packets, 0u);

  // The sender's own buffer is not rewritten.
  Bytes again = eth_frame(kMacC, kMacB, 64, 6);
  g1->send(again);
  ASSERT_EQ(g1->complete_tx(), 1u);
  RxPacket q = g1->receive();
  std::swap_ranges(again.begin(), again.begin() + 6, again.begin() + 6);
  expect_frame_eq(q.frame, again, "macswap on port 1");
}

TEST_P(NetTest, RxonlyCountsAndDeliversNothing) {
  start(FwdMode::rxonly, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(4);
  std::uint64_t bytes = 0;
  for (int i = 0; i < 10; ++i) {
    const Bytes f = eth_frame(kMacB, kMacA, 64 + i, i);
    bytes += f.size();
    g0->send(f);
  }
  ASSERT_EQ(g0->complete_tx(), 10u);
  EXPECT_EQ(g0->rx_pending(), 0u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(0).rx_packets, 10u);
  EXPECT_EQ(totals(0).rx_bytes, bytes);
  EXPECT_EQ(totals(0).tx_packets + totals(1).tx_packets, 0u);
  EXPECT_EQ(totals(0).tx_drops + totals(1).tx_drops, 0u);
}

TEST_P(NetTest, TxonlyFillsTheGuestsRxBuffersWithValidUdpFrames) {
  start(FwdMode::txonly, 1);
  auto g0 = connect(0);
  g0->post_rx(8, 2048);
  ASSERT_TRUE(wait_until([&] { return g0->rx_pending() >= 8; }))
      << "txonly filled " << g0->rx_pending() << " of 8 buffers";
  for (int i = 0; i < 8; ++i) {
    RxPacket p = g0->receive();
    const std::string what = "txonly frame " + std::to_string(i);
    expect_plain_header(p.header, 1, what);
    EXPECT_EQ(p.used_lens[0], 12u + 64u) << what;
    const Bytes& f = p.frame;
    ASSERT_EQ(f.size(), 64u) << what;
    EXPECT_TRUE(std::equal(f.begin(), f.begin() + 6, port(0).config().mac.begin()))
        << what << ": destination " << hex(f, 6);
    EXPECT_EQ(get16be(&f[12]), 0x0800) << what;
    EXPECT_EQ(f[14], 0x45) << what;
    EXPECT_EQ(get16be(&f[16]), 64 - 14) << what << ": IPv4 total length";
    EXPECT_EQ(f[23], 17) << what << ": protocol";
    EXPECT_TRUE(ipv4_header_ok(f)) << what << ": IPv4 header checksum";
    EXPECT_EQ(get16be(&f[38]), 64 - 34) << what << ": UDP length";
    EXPECT_TRUE(l4_checksum_ok(f, kUdpCsumOffset)) << what << ": UDP checksum";
  }
  EXPECT_EQ(g0->rx_posted(), 0u);
  EXPECT_EQ(totals(0).tx_packets, 8u);

  // More buffers, more frames.
  g0->post_rx(3, 2048);
  ASSERT_TRUE(wait_until([&] { return g0->rx_pending() >= 3; }));
  EXPECT_EQ(totals(0).tx_packets, 11u);
}

TEST_P(NetTest, TxonlyHonoursTxpktsAndMergeableBuffers) {
  fwd::FwdOptions options;
  options.txpkts = 1500;
  start(FwdMode::txonly, 1, options);
  auto g0 = connect(0);
  g0->post_rx(4, 1024);  // 1512 bytes take two mergeable buffers
  ASSERT_TRUE(wait_until([&] { return g0->rx_pending() >= 4; }));
  for (int i = 0; i < 2; ++i) {
    RxPacket p = g0->receive();
    EXPECT_EQ(p.header.num_buffers, 2);
    ASSERT_EQ(p.frame.size(), 1500u);
    EXPECT_EQ(get16be(&p.frame[16]), 1500 - 14);
    EXPECT_TRUE(ipv4_header_ok(p.frame));
    EXPECT_TRUE(l4_checksum_ok(p.frame, kUdpCsumOffset));
  }
}

TEST_P(NetTest, L2FloodsUnknownAndBroadcastAndLearnsWhereAddressesAre) {
  start(FwdMode::l2, 3);
  auto g0 = connect(0);
  auto g1 = connect(1);
  auto g2 = connect(2);
  for (auto* g : {g0.get(), g1.get(), g2.get()}) g->post_rx(16);
  NetGuest* guests[3] = {g0.get(), g1.get(), g2.get()};
  auto pending = [&] {
    return std::vector<std::uint16_t>{g0->rx_pending(), g1->rx_pending(), g2->rx_pending()};
  };
  auto send_from = [&](std::size_t from, const Bytes& frame) {
    guests[from]->send(frame);
    ASSERT_EQ(guests[from]->complete_tx(), 1u);
  };
  using P = std::vector<std::uint16_t>;

  // A (port 0) -> B: unknown, flooded to ports 1 and 2.
  const Bytes a_to_b = eth_frame(kMacB, kMacA, 70, 1);
  send_from(0, a_to_b);
  EXPECT_EQ(pending(), (P{0, 1, 1})) << "unknown destination must flood to every other port";
  expect_frame_eq(g1->receive().frame, a_to_b, "flood to port 1");
  expect_frame_eq(g2->receive().frame, a_to_b, "flood to port 2");

  // B (port 1) -> A: A was learned on port 0.
  const Bytes b_to_a = eth_frame(kMacA, kMacB, 71, 2);
  send_from(1, b_to_a);
  EXPECT_EQ(pending(), (P{1, 0, 0})) << "learned destination must go to its port only";
  expect_frame_eq(g0->receive().frame, b_to_a, "learned A");

  // A -> B again: B is now known on port 1.
  send_from(0, a_to_b);
  EXPECT_EQ(pending(), (P{0, 1, 0}));
  expect_frame_eq(g1->receive().frame, a_to_b, "learned B");

  // Broadcast from C (port 2): both others.
  const Bytes bcast = eth_frame(kBroadcast, kMacC, 60, 3, 0x0806);
  send_from(2, bcast);
  EXPECT_EQ(pending(), (P{1, 1, 0})) << "broadcast must flood";
  expect_frame_eq(g0->receive().frame, bcast, "broadcast to port 0");
  expect_frame_eq(g1->receive().frame, bcast, "broadcast to port 1");

  // Multicast: flooded too, and a group source is never learned.
  const MacAddress mcast{0x01, 0x00, 0x5e, 0, 0, 1};
  send_from(1, eth_frame(mcast, kMacB, 60, 4));
  EXPECT_EQ(pending(), (P{1, 0, 1}));
  g0->receive();
  g2->receive();
  send_from(2, eth_frame(kMacB, mcast, 60, 5));  // bogus group source
  EXPECT_EQ(pending(), (P{0, 1, 0}));
  g1->receive();
  EXPECT_EQ(forwarder().mac_table().lookup(mcast.data()), fwd::MacTable::kNone) << "a group source address was learned";

  // A destination on the port the frame came from is not sent back.
  send_from(0, eth_frame(kMacA, kMacA, 60, 7));
  EXPECT_EQ(pending(), (P{0, 0, 0}));

  // A moves to port 2: learned there from its next frame.
  send_from(2, eth_frame(kMacB, kMacA, 60, 8));
  EXPECT_EQ(pending(), (P{0, 1, 0}));
  g1->receive();
  send_from(1, b_to_a);
  EXPECT_EQ(pending(), (P{0, 0, 1})) << "A moved to port 2";
  g2->receive();
  EXPECT_EQ(forwarder().mac_table().lookup(kMacA.data()), 2);
  EXPECT_EQ(forwarder().mac_table().lookup(kMacB.data()), 1);
}

// ---- 7. control queue ----

Bytes u16_bytes(std::uint16_t v) { return Bytes{static_cast<std::uint8_t>(v), static_cast<std::uint8_t>(v >> 8)}; }

TEST_P(NetTest, ControlQueueCommands) {
  NetPortConfig two;
  two.queue_pairs = 2;
  start(FwdMode::io, {two, two});
  auto g0 = connect(0);
  ASSERT_TRUE(g0->has(net::kNetFCtrlVq) && g0->has(net::kNetFMq) && g0->has(net::kNetFCtrlMacAddr));
  EXPECT_EQ(port(0).active_pairs(), 2);

  // MQ VQ_PAIRS_SET.
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(1)), net::kNetOk);
  EXPECT_EQ(port(0).active_pairs(), 1);
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(2)), net::kNetOk);
  EXPECT_EQ(port(0).active_pairs(), 2);
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(3)), net::kNetErr);
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(0)), net::kNetErr);
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(0x8000)), net::kNetErr);
  EXPECT_EQ(port(0).active_pairs(), 2) << "a refused VQ_PAIRS_SET changed the active pairs";
  EXPECT_EQ(g0->control(net::kNetCtrlMq, 7, u16_bytes(1)), net::kNetErr) << "unknown MQ command";
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, Bytes{1}), net::kNetErr) << "short argument";

  // MAC_ADDR_SET, seen in config space.
  const MacAddress mac{0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
  EXPECT_EQ(g0->control(net::kNetCtrlMac, net::kNetCtrlMacAddrSet, Bytes(mac.begin(), mac.end())), net::kNetOk);
  EXPECT_EQ(port(0).guest_mac(), mac);
  auto config = g0->frontend().get_config(0, 6);
  ASSERT_TRUE(config.has_value());
  EXPECT_EQ(Bytes(config->begin(), config->end()), Bytes(mac.begin(), mac.end()));
  EXPECT_EQ(g0->control(net::kNetCtrlMac, net::kNetCtrlMacAddrSet, Bytes{1, 2, 3}), net::kNetErr) << "short MAC";

  // MAC_TABLE_SET: two tables (1 unicast, 2 multicast entries), accepted; a count past the data refused.
  Bytes table;
  auto put32 = [&](std::uint32_t v) {
    for (int i = 0; i < 4; ++i) table.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  };
  put32(1);
  table.insert(table.end(), mac.begin(), mac.end());
  put32(2);
  for (int i = 0; i < 2; ++i) table.insert(table.end(), {0x01, 0x00, 0x5e, 0, 0, static_cast<std::uint8_t>(i)});
  EXPECT_EQ(g0->control(net::kNetCtrlMac, net::kNetCtrlMacTableSet, table), net::kNetOk);
  table.clear();
  put32(1000);
  EXPECT_EQ(g0->control(net::kNetCtrlMac, net::kNetCtrlMacTableSet, table), net::kNetErr);

  // RX mode.
  EXPECT_EQ(g0->control(net::kNetCtrlRx, net::kNetCtrlRxPromisc, Bytes{1}), net::kNetOk);
  EXPECT_EQ(g0->control(net::kNetCtrlRx, net::kNetCtrlRxAllmulti, Bytes{0}), net::kNetOk);
  EXPECT_EQ(g0->control(net::kNetCtrlRx, net::kNetCtrlRxPromisc, Bytes{2}), net::kNetErr) << "on must be 0 or 1";
  EXPECT_EQ(g0->control(net::kNetCtrlRx, 6, Bytes{1}), net::kNetErr) << "unknown RX command";

  // Announce ack, unknown class, header cut short.
  EXPECT_EQ(g0->control(net::kNetCtrlAnnounce, net::kNetCtrlAnnounceAck), net::kNetOk);
  EXPECT_EQ(g0->control(0x42, 0, Bytes{1}), net::kNetErr);
  EXPECT_EQ(g0->control(net::kNetCtrlRx, net::kNetCtrlRxPromisc, {}, 1), net::kNetErr) << "1-byte command header";

  // Command header and data in one descriptor.
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(1), 2, true), net::kNetOk);
  EXPECT_EQ(port(0).active_pairs(), 1);
  EXPECT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(5), 2, true), net::kNetErr);

  EXPECT_EQ(totals(0).rx_errors, 0u);
}

TEST_P(NetTest, SecondQueuePairForwardsToThePeersSecondPair) {
  NetPortConfig two;
  two.queue_pairs = 2;
  start(FwdMode::io, {two, two});
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(2, 2048, 0);
  g1->post_rx(2, 2048, 1);
  const Bytes f1 = eth_frame(kMacB, kMacA, 100, 1);
  g0->send(plain_header(), f1, {}, 1);
  ASSERT_EQ(g0->complete_tx(1), 1u);
  EXPECT_EQ(g1->rx_pending(0), 0u);
  expect_frame_eq(g1->receive(1).frame, f1, "pair 1 -> pair 1");
  const Bytes f0 = eth_frame(kMacB, kMacA, 100, 2);
  g0->send(plain_header(), f0, {}, 0);
  ASSERT_EQ(g0->complete_tx(0), 1u);
  EXPECT_EQ(g1->rx_pending(1), 0u);
  expect_frame_eq(g1->receive(0).frame, f0, "pair 0 -> pair 0");
  EXPECT_EQ(port(0).stats(1).rx.packets.load(), 1u);
  EXPECT_EQ(port(1).stats(1).tx.packets.load(), 1u);
}

TEST_P(NetTest, PacketsOnAQueuePairThePeerLacksAreCountedAsDrops) {
  NetPortConfig two;
  two.queue_pairs = 2;
  start(FwdMode::io, {two, NetPortConfig{}});
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(4);
  g0->send(plain_header(), eth_frame(kMacB, kMacA, 64, 1), {}, 1);  // pair 1: port 1 has none
  ASSERT_EQ(g0->complete_tx(1), 1u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  EXPECT_EQ(totals(0).rx_packets, 1u);
  // What the app's totals line promises: every packet received is delivered or counted as a
  // drop ("drops counts packets the backend could not deliver").
  EXPECT_EQ(totals(1).tx_packets + totals(1).tx_drops, totals(0).rx_packets)
      << "a packet received on pair 1 of port 0 vanished: neither delivered nor counted as dropped";
}

TEST_P(NetTest, GetQueueNumAnswersQueuePairs) {
  NetPortConfig four;
  four.queue_pairs = 4;
  start(FwdMode::io, {four});
  auto g0 = connect(0);
  ASSERT_TRUE(g0->frontend().acked_protocol_features() & protocol_bit(ProtocolFeature::mq));
  // For a net device it is a count of queue pairs: QEMU's net/vhost-user.c compares it with the
  // netdev's queues= (pairs), DPDK's vhost library answers rte_vhost_driver_get_queue_num()
  // (pairs), and Backend::queue_num() documents exactly that.
  EXPECT_EQ(g0->frontend().get_queue_num(), 4u) << "GET_QUEUE_NUM must answer queue pairs for a net device";
}

TEST_P(NetTest, PortConfigDecidesWhatIsOffered) {
  NetPortConfig bare;
  bare.mrg_rxbuf = false;
  bare.offloads = false;
  start(FwdMode::io, {NetPortConfig{}, bare});
  auto g0 = connect(0);
  auto g1 = connect(1);
  for (std::uint64_t f : {net::kNetFMrgRxbuf, net::kNetFCsum, net::kNetFGuestCsum, net::kNetFHostTso4,
                          net::kNetFGuestTso6}) {
    EXPECT_TRUE(g0->has(f)) << "feature 0x" << std::hex << f << " not offered by default";
    EXPECT_FALSE(g1->has(f)) << "feature 0x" << std::hex << f << " offered although disabled";
  }
  // A partial checksum from the offloading guest reaches the bare one completed.
  g1->post_rx(1);
  g0->send(csum_header(kUdpCsumStart, kUdpCsumOffset), udp_frame(77, true, 5));
  ASSERT_EQ(g0->complete_tx(), 1u);
  RxPacket p = g1->receive();
  EXPECT_EQ(p.header.flags, 0);
  EXPECT_EQ(p.header.num_buffers, 1);
  EXPECT_TRUE(l4_checksum_ok(p.frame, kUdpCsumOffset));
  // The bare guest cannot send NEEDS_CSUM.
  g0->post_rx(1);
  g1->send(csum_header(kUdpCsumStart, kUdpCsumOffset), udp_frame(77, true, 6));
  ASSERT_EQ(g1->complete_tx(), 1u);
  EXPECT_EQ(totals(1).rx_errors, 1u);
  EXPECT_EQ(g0->rx_pending(), 0u);
}

// ---- 8. vhost-user net messages: GET_CONFIG, NET_SET_MTU, SEND_RARP ----

net::VirtioNetConfig read_config(NetGuest& g) {
  auto bytes = g.frontend().get_config(0, sizeof(net::VirtioNetConfig));
  if (!bytes) throw_error("GET_CONFIG of the whole net config refused");
  net::VirtioNetConfig c{};
  std::memcpy(&c, bytes->data(), sizeof c);
  return c;
}

TEST_P(NetTest, GetConfigReportsMacStatusPairsAndMtu) {
  NetPortConfig config;
  config.queue_pairs = 3;
  config.mac = {0x02, 0x12, 0x34, 0x56, 0x78, 0x9a};
  config.mtu = 1400;
  start(FwdMode::io, {config});
  auto g0 = connect(0);
  ASSERT_TRUE(g0->has(net::kNetFMac) && g0->has(net::kNetFStatus) && g0->has(net::kNetFMtu));
  const net::VirtioNetConfig c = read_config(*g0);
  EXPECT_TRUE(std::equal(config.mac.begin(), config.mac.end(), c.mac));
  EXPECT_EQ(c.status, net::kNetSLinkUp);
  EXPECT_EQ(c.max_virtqueue_pairs, 3);
  EXPECT_EQ(c.mtu, 1400);
  // Pieces of it, as a driver reads them.
  auto mtu = g0->frontend().get_config(10, 2);
  ASSERT_TRUE(mtu.has_value());
  EXPECT_EQ((*mtu)[0] | (*mtu)[1] << 8, 1400);
  auto status = g0->frontend().get_config(6, 2);
  ASSERT_TRUE(status.has_value());
  EXPECT_EQ((*status)[0], net::kNetSLinkUp);
  EXPECT_FALSE(g0->frontend().get_config(0, 13).has_value()) << "read past the config space";
  EXPECT_FALSE(g0->frontend().get_config(12, 1).has_value()) << "read past the config space";
  g0->frontend().expect_in_sync();
}

TEST_P(NetTest, NetSetMtuRangeAndConfigSpace) {
  start(FwdMode::io, 1);
  auto g0 = connect(0);
  TestFrontend& fe = g0->frontend();
  ASSERT_TRUE(fe.acked_protocol_features() & protocol_bit(ProtocolFeature::net_mtu));
  EXPECT_NE(fe.request_ack_struct(Request::net_set_mtu, std::uint64_t{67}), 0u) << "MTU below 68 accepted";
  EXPECT_EQ(port(0).mtu(), 1500);
  EXPECT_NE(fe.request_ack_struct(Request::net_set_mtu, std::uint64_t{65536}), 0u)
      << "65536 accepted (truncated to 16 bits?)";
  EXPECT_NE(fe.request_ack_struct(Request::net_set_mtu, std::uint64_t{0x1'0000'2328}), 0u)
      << "a u64 whose low 16 bits are 9000 was accepted";
  EXPECT_EQ(port(0).mtu(), 1500);
  EXPECT_EQ(read_config(*g0).mtu, 1500);
  EXPECT_EQ(fe.request_ack_struct(Request::net_set_mtu, std::uint64_t{9000}), 0u);
  EXPECT_EQ(port(0).mtu(), 9000);
  EXPECT_EQ(read_config(*g0).mtu, 9000);
  EXPECT_EQ(fe.request_ack_struct(Request::net_set_mtu, std::uint64_t{68}), 0u);
  EXPECT_EQ(read_config(*g0).mtu, 68);
  fe.expect_in_sync();
}

std::uint64_t mac_u64(const MacAddress& mac) {
  std::uint64_t v = 0;
  std::memcpy(&v, mac.data(), 6);
  return v;
}

void expect_rarp(const Bytes& f, const MacAddress& mac) {
  ASSERT_GE(f.size(), 42u) << "RARP frame too short";
  EXPECT_EQ(Bytes(f.begin(), f.begin() + 6), Bytes(kBroadcast.begin(), kBroadcast.end())) << "destination";
  EXPECT_EQ(Bytes(f.begin() + 6, f.begin() + 12), Bytes(mac.begin(), mac.end())) << "source";
  EXPECT_EQ(get16be(&f[12]), 0x8035) << "ethertype";
  EXPECT_EQ(get16be(&f[14]), 1) << "hardware type";
  EXPECT_EQ(get16be(&f[16]), 0x0800) << "protocol type";
  EXPECT_EQ(get16be(&f[20]), 3) << "opcode: reverse request";
  EXPECT_EQ(Bytes(f.begin() + 22, f.begin() + 28), Bytes(mac.begin(), mac.end())) << "sender hardware address";
  EXPECT_EQ(Bytes(f.begin() + 32, f.begin() + 38), Bytes(mac.begin(), mac.end())) << "target hardware address";
}

TEST_P(NetTest, SendRarpOnOnePortAnnouncesTheMacToTheOthersWithTheNextTransmit) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(4);
  const MacAddress moved{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef};
  ASSERT_EQ(g0->frontend().request_ack_struct(Request::send_rarp, mac_u64(moved)), 0u);
  EXPECT_EQ(g1->rx_pending(), 0u);
  const Bytes frame = eth_frame(kMacB, kMacA, 80, 1);
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  ASSERT_EQ(g1->rx_pending(), 2u) << "expected the RARP announcement and the packet";
  RxPacket rarp = g1->receive();
  expect_plain_header(rarp.header, 1, "RARP");
  expect_rarp(rarp.frame, moved);
  expect_frame_eq(g1->receive().frame, frame, "the packet after the announcement");
  EXPECT_EQ(g0->rx_pending(), 0u) << "the announcing port's own guest got the announcement";

  // Once only.
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  ASSERT_EQ(g1->rx_pending(), 1u) << "the announcement was repeated";
  expect_frame_eq(g1->receive().frame, frame, "second packet");
}

TEST_P(NetTest, SendRarpInL2ModeAlsoLearnsTheMac) {
  start(FwdMode::l2, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g0->post_rx(4);
  g1->post_rx(4);
  const MacAddress moved{0x52, 0x54, 0x00, 0x01, 0x02, 0x03};
  ASSERT_EQ(g0->frontend().request_ack_struct(Request::send_rarp, mac_u64(moved)), 0u);
  EXPECT_EQ(forwarder().mac_table().lookup(moved.data()), 0);
  // Traffic from port 1 to the moved MAC goes to port 0, and the announcement comes to port 1
  // with port 1's next delivery.
  const Bytes to_moved = eth_frame(moved, kMacB, 64, 1);
  g1->send(to_moved);
  ASSERT_EQ(g1->complete_tx(), 1u);
  expect_frame_eq(g0->receive().frame, to_moved, "to the moved MAC");
  g0->send(eth_frame(kMacB, moved, 64, 2));
  ASSERT_EQ(g0->complete_tx(), 1u);
  expect_rarp(g1->receive().frame, moved);
}

// ---- 9. disconnect and reconnect while traffic flows ----

TEST_P(NetTest, PeerDisconnectWhileSendingDropsAndCountsThenReconnectResumes) {
  start(FwdMode::io, 2);
  auto g0 = connect(0);
  auto g1 = connect(1);
  g1->post_rx(100);

  std::uint64_t sent = 0;
  std::uint32_t seed = 1;
  auto burst = [&](std::size_t n) {
    for (std::size_t i = 0; i < n; ++i, ++seed) g0->send(eth_frame(kMacB, kMacA, 64 + seed % 200, seed));
    ASSERT_EQ(g0->complete_tx(), n);
    sent += n;
  };
  for (int i = 0; i < 5; ++i) burst(4);
  EXPECT_EQ(totals(1).tx_packets, 20u);

  // Close port 1's guest from another thread while port 0 keeps sending.
  std::thread closer([&] {
    std::this_thread::sleep_for(2ms);
    g1->close();
  });
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (daemon(1).connected() && std::chrono::steady_clock::now() < deadline) {
    burst(4);
    if (HasFatalFailure()) break;
  }
  closer.join();
  ASSERT_FALSE(daemon(1).connected()) << "port 1 never saw the disconnect";
  const std::uint64_t delivered_before = totals(1).tx_packets;
  const std::uint64_t drops_before = totals(1).tx_drops;
  for (int i = 0; i < 10; ++i) burst(4);
  EXPECT_EQ(totals(1).tx_packets, delivered_before) << "delivered into a disconnected port";
  EXPECT_EQ(totals(1).tx_drops, drops_before + 40);
  EXPECT_EQ(totals(1).tx_packets + totals(1).tx_drops, sent) << "every packet delivered or counted as dropped";
  EXPECT_EQ(totals(0).rx_packets, sent);
  EXPECT_TRUE(daemon(0).connected());

  // Reconnect (a fresh guest, without MRG_RXBUF this time) and traffic flows again.
  g1.reset();
  GuestOptions no_mrg;
  no_mrg.feature_mask = kAllFeatures & ~net::kNetFMrgRxbuf;
  auto g1b = connect(1, no_mrg);
  g1b->post_rx(8);
  std::vector<Bytes> frames;
  for (int i = 0; i < 5; ++i) {
    frames.push_back(eth_frame(kMacB, kMacA, 100 + i, 500 + i));
    g0->send(frames.back());
  }
  ASSERT_EQ(g0->complete_tx(), 5u);
  for (int i = 0; i < 5; ++i) {
    RxPacket p = g1b->receive();
    expect_plain_header(p.header, 1, "after reconnect");
    expect_frame_eq(p.frame, frames[i], "after reconnect");
  }
  // And the other way.
  g0->post_rx(1);
  const Bytes back = eth_frame(kMacA, kMacB, 70, 9);
  g1b->send(back);
  ASSERT_EQ(g1b->complete_tx(), 1u);
  expect_frame_eq(g0->receive().frame, back, "reconnected port sending");
}

TEST_P(NetTest, ReconnectResetsMtuMacAndActivePairs) {
  NetPortConfig two;
  two.queue_pairs = 2;
  start(FwdMode::io, {two});
  {
    auto g0 = connect(0);
    ASSERT_EQ(g0->frontend().request_ack_struct(Request::net_set_mtu, std::uint64_t{9000}), 0u);
    ASSERT_EQ(g0->control(net::kNetCtrlMq, net::kNetCtrlMqVqPairsSet, u16_bytes(1)), net::kNetOk);
    const MacAddress mac{0x52, 0x54, 0, 0, 0, 9};
    ASSERT_EQ(g0->control(net::kNetCtrlMac, net::kNetCtrlMacAddrSet, Bytes(mac.begin(), mac.end())), net::kNetOk);
  }
  ASSERT_TRUE(wait_disconnected(0));
  auto g0 = connect(0);
  const net::VirtioNetConfig c = read_config(*g0);
  EXPECT_EQ(c.mtu, 1500);
  EXPECT_TRUE(std::equal(c.mac, c.mac + 6, port(0).config().mac.begin()));
  EXPECT_EQ(port(0).active_pairs(), 2);
}

// ---- notifications ----

TEST_P(NetTest, DeliveryAndTxCompletionSignalTheGuestPerEventIdx) {
  start(FwdMode::io, 2);
  GuestOptions no_event_idx;
  no_event_idx.feature_mask = kAllFeatures & ~kVirtioFRingEventIdx;
  auto g0 = connect(0, no_event_idx);
  auto g1 = connect(1);  // EVENT_IDX
  ASSERT_FALSE(g0->has(kVirtioFRingEventIdx));
  ASSERT_TRUE(g1->has(kVirtioFRingEventIdx));
  TestFrontend& f0 = g0->frontend();
  TestFrontend& f1 = g1->frontend();
  g1->post_rx(16);

  // EVENT_IDX receiver asking to be told about the next used entry.
  g1->ring(NetGuest::rx()).set_used_event(0);
  f0.drain_call(NetGuest::tx());
  f1.drain_call(NetGuest::rx());
  g0->send(eth_frame(kMacB, kMacA, 64, 1));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_TRUE(f0.wait_call(NetGuest::tx())) << "no call for the used TX chain (no EVENT_IDX, interrupts on)";
  EXPECT_TRUE(f1.wait_call(NetGuest::rx())) << "no call although the RX used index passed used_event";
  g1->receive();

  // used_event far ahead: deliveries without a call. (A call can only be shown absent by
  // waiting; the wait first absorbs any call of an earlier completion still being written.)
  g1->ring(NetGuest::rx()).set_used_event(g1->ring(NetGuest::rx()).size());
  f1.wait_call(NetGuest::rx(), 100ms);
  for (int i = 0; i < 3; ++i) g0->send(eth_frame(kMacB, kMacA, 64, 2 + i));
  ASSERT_EQ(g0->complete_tx(), 3u);
  ASSERT_EQ(g1->rx_pending(), 3u);
  EXPECT_FALSE(f1.wait_call(NetGuest::rx(), 100ms)) << "call although used_event is far ahead";

  // Interrupts off on the sender's TX ring (no EVENT_IDX; split: NO_INTERRUPT, packed:
  // DISABLE): no call for completions.
  g0->ring(NetGuest::tx()).set_interrupts(false);
  f0.wait_call(NetGuest::tx(), 100ms);
  g0->send(eth_frame(kMacB, kMacA, 64, 9));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_FALSE(f0.wait_call(NetGuest::tx(), 100ms)) << "call although interrupts are off";

  // And on again.
  g0->ring(NetGuest::tx()).set_interrupts(true);
  g0->send(eth_frame(kMacB, kMacA, 64, 10));
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_TRUE(f0.wait_call(NetGuest::tx())) << "no call after interrupts were switched on again";
}

// ---- frontends without VHOST_USER_F_PROTOCOL_FEATURES ----

TEST_P(NetTest, WithoutProtocolFeaturesRingsEnabledBySetFeaturesCarryTraffic) {
  start(FwdMode::io, 2);
  GuestOptions plain;
  plain.protocol_features = false;
  auto g0 = connect(0, plain);
  auto g1 = connect(1, plain);
  g1->post_rx(2);
  const Bytes frame = eth_frame(kMacB, kMacA, 64, 1);
  g0->send(frame);
  ASSERT_EQ(g0->complete_tx(), 1u);
  EXPECT_EQ(totals(1).tx_drops, 0u) << "packet dropped: the RX ring enabled by SET_FEATURES is seen as disabled";
  ASSERT_EQ(g1->rx_pending(), 1u);
  expect_frame_eq(g1->receive().frame, frame, "without protocol features");
}

// VIRTIO_F_IN_ORDER is offered and negotiated, so the device must use buffers exactly in the
// order the guest made them available: TX chains (valid or dropped as invalid) and RX buffers,
// including a buffer passed over for one packet (too small, without MRG_RXBUF) and used by the
// next. The TX chains are read-only: the device may return a run of them as one used element
// (the driver rings expand it; each chain must still come back, in order).
TEST_P(NetTest, InOrderIsOfferedAndBuffersAreUsedInTheOrderMadeAvailable) {
  start(FwdMode::io, 2);
  GuestOptions in_order;
  in_order.in_order = true;
  GuestOptions no_mrg = in_order;
  no_mrg.feature_mask = kAllFeatures & ~net::kNetFMrgRxbuf;
  auto g0 = connect(0, in_order);
  auto g1 = connect(1, no_mrg);
  ASSERT_TRUE(g0->has(kVirtioFInOrder));
  ASSERT_TRUE(g1->has(kVirtioFInOrder));

  // Port 1's RX buffers: a small one first, then large ones.
  std::vector<std::uint16_t> rx_heads;
  rx_heads.push_back(g1->post_rx_chain({256}));
  for (int i = 0; i < 4; ++i) rx_heads.push_back(g1->post_rx_chain({2048}));

  // The 1000-byte frame does not fit the small head buffer (dropped, the buffer kept), the
  // runt is dropped as invalid, the 60-byte frame takes the small buffer, the 600-byte one
  // the next.
  std::vector<std::uint16_t> tx_heads;
  tx_heads.push_back(g0->send(eth_frame(kMacA, kMacB, 1000, 1)));
  tx_heads.push_back(g0->send_bytes(Bytes(8, 0)));
  tx_heads.push_back(g0->send(eth_frame(kMacA, kMacB, 60, 2)));
  tx_heads.push_back(g0->send(eth_frame(kMacA, kMacB, 600, 3)));

  GuestRing& tx = g0->ring(NetGuest::tx());
  ASSERT_TRUE(tx.in_order());
  ASSERT_TRUE(wait_until([&] { return tx.all_used(); }, kReplyTimeout)) << tx.describe();
  for (std::uint16_t head : tx_heads) {
    auto used = tx.pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, head) << "TX chains used out of order";
    EXPECT_EQ(used->len, 0u);
  }
  EXPECT_FALSE(tx.has_used());
  EXPECT_TRUE(tx.settled()) << tx.describe();
  GuestRing& rx = g1->ring(NetGuest::rx());
  ASSERT_TRUE(wait_until([&] { return rx.used_pending() == 2; }, kReplyTimeout));
  const std::uint32_t expected_len[] = {12 + 60, 12 + 600};
  for (int i = 0; i < 2; ++i) {
    auto used = rx.pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, rx_heads[i]) << "RX buffer " << i << " used out of order";
    EXPECT_EQ(used->len, expected_len[i]);
  }
  EXPECT_EQ(port(1).totals().tx_drops, 1u);
  EXPECT_EQ(port(0).totals().rx_errors, 1u);
}

INSTANTIATE_NET_LAYOUTS(NetTest);

}  // namespace
}  // namespace vhostd::test::nettest
