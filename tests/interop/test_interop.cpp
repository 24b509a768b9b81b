// The interop suite: DPDK's own vhost-user frontend (dpdk-testpmd with net_virtio_user ports,
// i.e. what a DPDK guest or container runs) against vhostd-fwd, asserting what users depend on:
//  - guest -> backend and backend -> guest: exact packet and byte accounting, frame sizes;
//  - two ports forwarding in a loop: conservation (nothing lost or duplicated), the
//    --stats-period line format; frames field by field after a trip (MACs, EtherType, length,
//    IPv4/UDP headers), sent as two-descriptor chains;
//  - each of the above on split rings and on packed rings with IN_ORDER and MRG_RXBUF off and
//    on (virtio-user's packed_vq / in_order / mrg_rxbuf devargs);
//  - two queue pairs, both directions; MRG_RXBUF off and on, frames up to 4000 bytes, and
//    oversize frames without MRG_RXBUF dropped and counted, never truncated;
//  - a frontend SIGKILLed and restarted; vhostd-fwd as the vhost-user client; SIGINT and
//    SIGTERM shutdowns with a frontend gone or still connected.
//
// Naming follows DPDK's vhost PMD and vhostd-fwd: a port's rx is what the backend receives from
// the guest (testpmd's TX), its tx what the backend puts into the guest (testpmd's RX).
//
// How the counts are made exact: testpmd runs interactively (commands on a pipe). Its `stop`
// ends forwarding but keeps the ports started, so vhostd-fwd keeps polling the rings and
// consumes every packet testpmd handed over; only after a short drain are the counters read
// and the programs ended. So every packet testpmd counted as sent was seen by the backend:
// guest->backend counts are equal, not approximately equal. In the backend->guest direction,
// what vhostd-fwd counted as sent but testpmd never counted as received is bounded by two
// rings per queue: what was left unread in the guest's RX ring at the end, plus what the
// backend had already written into it when testpmd started the port (DPDK's virtio PMD
// discards the used ring at port start -- virtio_dev_start's "flush the old packets" --
// without counting it).
//
// Both programs pin their polling thread: vhostd-fwd's data lcore to CPU 1, testpmd's
// forwarding lcore to CPU 0 (their control threads share the other CPU); two CPUs suffice.
#include <gtest/gtest.h>

#include <signal.h>

#include <filesystem>
#include <iostream>
#include <regex>
#include <thread>

#include "interop.hpp"

namespace vhostd::interop {
namespace {

// virtio-user's default ring size (queue_size devarg): the most packets a guest RX ring holds.
constexpr std::uint64_t kRingSize = 256;
// testpmd's burst (also what `start tx_first` injects per forwarding stream).
constexpr int kBurst = 32;
// How long traffic runs in the throughput-style tests, and how long the backend gets to drain
// the guest's TX rings after testpmd stopped forwarding (it needs microseconds; the rest is
// slack for a loaded machine).
constexpr auto kTraffic = 1500ms;
constexpr auto kDrain = 500ms;

FwdSpec backend(std::vector<FwdPortSpec> ports, std::string fwd, int txpkts = 64) {
  FwdSpec spec;
  spec.ports = std::move(ports);
  spec.fwd = std::move(fwd);
  spec.txpkts = txpkts;
  return spec;
}

TestpmdConfig guest(std::vector<VirtioUserPort> ports, std::string mode,
                    std::string txpkts = "64", std::vector<std::string> extra = {}) {
  TestpmdConfig config;
  config.ports = std::move(ports);
  config.forward_mode = std::move(mode);
  config.txpkts = std::move(txpkts);
  config.burst = kBurst;
  config.extra_args = std::move(extra);
  return config;
}

// Stops testpmd's forwarding, lets the backend drain, reads testpmd's port counters, then
// ends both: the order that makes the counts exact (see the top). Which one goes first varies
// between tests, as both happen in real life: the guest goes away and the backend keeps
// running until it is stopped (kFrontendFirst), or the backend is stopped under a connected
// guest (kBackendFirst).
enum class Order { kFrontendFirst, kBackendFirst };
struct Result {
  ForwardStats fwd;
  std::map<int, NicStats> nic;
  std::map<int, PortTotals> totals;
};
Result finish(Testpmd& pmd, VhostdFwd& vhostd, Order order, int sig = SIGINT) {
  Result run;
  run.fwd = pmd.stop();
  std::this_thread::sleep_for(kDrain);
  run.nic = pmd.port_stats();
  if (order == Order::kFrontendFirst) {
    pmd.quit();
    std::this_thread::sleep_for(100ms);
    EXPECT_TRUE(vhostd.running()) << "vhostd-fwd exited when its frontend quit";
    run.totals = vhostd.stop(sig);
  } else {
    run.totals = vhostd.stop(sig);
    pmd.quit(/*backend_gone=*/true);
  }
  // A guest that follows the virtio spec never gets a ring stopped as broken.
  EXPECT_EQ(vhostd.process().output().find("stopped: the guest broke"), std::string::npos)
      << vhostd.process().tail();
  for (const auto& [port, t] : run.totals) {
    const FwdPortStats f = run.fwd.ports.count(port) ? run.fwd.ports.at(port) : FwdPortStats{};
    const NicStats n = run.nic.count(port) ? run.nic.at(port) : NicStats{};
    std::cerr << "[interop] port " << port << ": testpmd TX " << f.tx_packets << " (dropped "
              << f.tx_dropped << ") RX " << n.rx_packets << " (" << n.rx_bytes
              << " bytes) | vhostd-fwd rx " << t.rx_packets << " (" << t.rx_bytes << " bytes) tx "
              << t.tx_packets << " (" << t.tx_bytes << " bytes) drops " << t.drops << " errors "
              << t.errors << "\n";
  }
  return run;
}

// The ring layouts and ring features the traffic tests run under: virtio-user's defaults
// (split rings, IN_ORDER and MRG_RXBUF on), and packed rings with IN_ORDER and MRG_RXBUF each
// off and on. The backend offers all of them; the frontend's devargs pick.
struct RingCase {
  const char* name;
  std::optional<int> packed_vq, in_order, mrg_rxbuf;
};
class InteropRingTest : public InteropTest, public ::testing::WithParamInterface<RingCase> {
 protected:
  // `config` with every port's virtio-user devargs set to this case's.
  TestpmdConfig with_ring(TestpmdConfig config) const {
    for (VirtioUserPort& port : config.ports) {
      port.packed_vq = GetParam().packed_vq;
      port.in_order = GetParam().in_order;
      if (GetParam().mrg_rxbuf) port.mrg_rxbuf = GetParam().mrg_rxbuf;
    }
    return config;
  }
  // vhostd-fwd logs what each connection negotiated: every one must have this case's layout
  // and in-order setting (virtio-user silently falls back to split rings when packed ones are
  // not offered, which would make the packed cases test nothing).
  void expect_negotiated(VhostdFwd& vhostd) const {
    const bool packed = GetParam().packed_vq.value_or(0) == 1;
    const bool in_order = GetParam().in_order.value_or(1) == 1;
    int connections = 0;
    for (const std::string& line : split_lines(vhostd.process().output())) {
      const auto at = line.find(": features 0x");
      if (at == std::string::npos) continue;
      ++connections;
      EXPECT_NE(line.find(packed ? ": packed rings" : ": split rings"), std::string::npos) << line;
      EXPECT_EQ(line.find(", in-order") != std::string::npos, in_order) << line;
    }
    EXPECT_GE(connections, 1) << "no negotiation logged:\n" << vhostd.process().tail();
  }
};

// Guest -> backend: testpmd generates 64-byte frames, vhostd-fwd counts and drops them.
TEST_P(InteropRingTest, GuestToBackendCountsMatch) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock")}}, "rxonly"));
  Testpmd& pmd = start_testpmd(with_ring(guest({{socket("p0.sock")}}, "txonly")));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kFrontendFirst);
  expect_negotiated(vhostd);

  const std::uint64_t sent = run.fwd.ports.at(0).tx_packets;
  // More than one ring's worth: the backend returned descriptors and testpmd reused them.
  EXPECT_GT(sent, kRingSize);
  EXPECT_EQ(run.nic.at(0).tx_packets, sent);
  const PortTotals& t = run.totals.at(0);
  EXPECT_EQ(t.rx_packets, sent) << "every frame testpmd sent must be counted once";
  EXPECT_EQ(t.rx_bytes, sent * 64);
  EXPECT_EQ(t.tx_packets, 0u);
  EXPECT_EQ(t.errors, 0u);
  EXPECT_EQ(t.drops, 0u);
}

// Backend -> guest: vhostd-fwd generates 64-byte frames, testpmd receives them.
TEST_P(InteropRingTest, BackendToGuestFrames) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock")}}, "txonly", 64));
  Testpmd& pmd = start_testpmd(with_ring(guest({{socket("p0.sock")}}, "rxonly")));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kFrontendFirst);
  expect_negotiated(vhostd);

  const NicStats& nic = run.nic.at(0);
  const PortTotals& t = run.totals.at(0);
  EXPECT_GT(nic.rx_packets, kRingSize);
  EXPECT_EQ(nic.rx_bytes, nic.rx_packets * 64) << "every frame testpmd got must be 64 bytes";
  EXPECT_EQ(nic.rx_errors, 0u);
  EXPECT_LE(nic.rx_packets, t.tx_packets);
  EXPECT_LE(t.tx_packets - nic.rx_packets, 2 * kRingSize)
      << "more sent than testpmd received plus what its RX ring holds (twice, see the top)";
  EXPECT_EQ(t.tx_bytes, t.tx_packets * 64);
  EXPECT_EQ(t.rx_packets, 0u);
  EXPECT_EQ(t.errors, 0u);
}

// Two ports, vhostd-fwd forwarding 0 <-> 1 (io), testpmd forwarding 1 <-> 0 (io) after one
// injected burst per port: the same 2 x 32 packets go round the loop for the whole run. The
// books must balance exactly: nothing lost, nothing duplicated.
TEST_P(InteropRingTest, TwoPortLoopConservesPackets) {
  FwdSpec spec = backend({{socket("p0.sock")}, {socket("p1.sock")}}, "io");
  spec.stats_period = 1;
  VhostdFwd& vhostd = start_vhostd(spec);
  Testpmd& pmd = start_testpmd(with_ring(guest({{socket("p0.sock")}, {socket("p1.sock")}}, "io")));
  pmd.start(/*tx_first=*/true);
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kBackendFirst);
  expect_negotiated(vhostd);

  const std::uint64_t injected = 2 * kBurst;
  std::uint64_t pmd_rx = 0, pmd_tx = 0, pmd_dropped = 0, rx = 0, tx = 0, drops = 0, errors = 0;
  for (int p : {0, 1}) {
    pmd_rx += run.fwd.ports.at(p).rx_packets;
    pmd_tx += run.fwd.ports.at(p).tx_packets;
    pmd_dropped += run.fwd.ports.at(p).tx_dropped;
    const PortTotals& t = run.totals.at(p);
    rx += t.rx_packets;
    tx += t.tx_packets;
    drops += t.drops;
    errors += t.errors;
    // What testpmd sent on a port is what vhostd-fwd received on it.
    EXPECT_EQ(t.rx_packets, run.fwd.ports.at(p).tx_packets) << "port " << p;
    EXPECT_EQ(t.rx_bytes, t.rx_packets * 64) << "port " << p;
    EXPECT_EQ(t.tx_bytes, t.tx_packets * 64) << "port " << p;
  }
  // 64 packets in flight never fill a 256-entry ring: no drops anywhere.
  EXPECT_EQ(pmd_dropped, 0u);
  EXPECT_EQ(drops, 0u);
  EXPECT_EQ(errors, 0u);
  // They went round many times.
  EXPECT_GT(pmd_rx, 100 * injected);
  // testpmd sent the injected packets plus everything it received.
  EXPECT_EQ(pmd_tx, injected + pmd_rx);
  // vhostd-fwd forwarded everything it received: port 0 -> port 1 and back.
  EXPECT_EQ(run.totals.at(1).tx_packets, run.totals.at(0).rx_packets);
  EXPECT_EQ(run.totals.at(0).tx_packets, run.totals.at(1).rx_packets);
  // And every injected packet still exists exactly once: in a guest RX ring when it stopped.
  EXPECT_EQ(tx, rx);
  EXPECT_EQ(tx - pmd_rx, injected);

  // --stats-period 1: a line per port per second, in the documented format, showing traffic.
  const std::regex format(
      R"(port (\d+): rx (\d+\.\d+) Mpps \d+\.\d+ Gbit/s \| tx (\d+\.\d+) Mpps \d+\.\d+ Gbit/s)"
      R"( \| drops \d+ \| busy \d+(\.\d+)?% \| lcores ([0-9,-]+|none) \| calls \d+/s)");
  std::map<int, int> lines, busy_lines;
  for (const std::string& line : split_lines(vhostd.process().output())) {
    if (!starts_with(line, "port ")) continue;
    std::smatch m;
    EXPECT_TRUE(std::regex_match(line, m, format)) << "stats line not as documented: " << line;
    if (m.empty()) continue;
    const int port = std::stoi(m[1]);
    ++lines[port];
    if (std::stod(m[2]) > 0 && std::stod(m[3]) > 0) ++busy_lines[port];
  }
  for (int p : {0, 1}) {
    EXPECT_GE(lines[p], 1) << "no --stats-period line for port " << p;
    EXPECT_GE(busy_lines[p], 1) << "no --stats-period line with traffic for port " << p;
  }
}

// vhostd-fwd as the vhost-user client (--port path=P,client): testpmd's virtio-user listens
// (server=1) and vhostd-fwd connects. One port looping back through vhostd-fwd (io), so both
// directions run over the connection vhostd-fwd made; stopped with SIGTERM under the live
// frontend. The books balance as in the two-port loop.
TEST_F(InteropTest, BackendAsClient) {
  const std::string path = socket("guest.sock");
  Testpmd& pmd = start_testpmd(guest({{path, 1, {}, {}, /*server=*/true}}, "io"),
                               /*wait_ready=*/false);
  ASSERT_TRUE(pmd.process().wait_for(
      [&](const std::string&) { return std::filesystem::exists(path); }, 30s))
      << "testpmd does not listen on " << path << ":\n" << pmd.process().tail();
  VhostdFwd& vhostd = start_vhostd(backend({{path, 1, {}, /*client=*/true}}, "io"));
  pmd.wait_ready();
  pmd.start(/*tx_first=*/true);
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kBackendFirst, SIGTERM);

  const FwdPortStats& s = run.fwd.ports.at(0);
  const PortTotals& t = run.totals.at(0);
  EXPECT_GT(s.rx_packets, 100u * kBurst);
  EXPECT_EQ(s.tx_dropped, 0u);
  EXPECT_EQ(s.tx_packets, kBurst + s.rx_packets);
  EXPECT_EQ(t.rx_packets, s.tx_packets);
  EXPECT_EQ(t.tx_packets, t.rx_packets);
  EXPECT_EQ(t.tx_packets - run.nic.at(0).rx_packets, std::uint64_t{kBurst});
  EXPECT_EQ(t.drops, 0u);
  EXPECT_EQ(t.errors, 0u);
}

// Frames checked field by field after a trip through vhostd-fwd's io forwarding. What testpmd
// 22.11 can check: it cannot write a payload pattern (txonly leaves the payload as it finds the
// mbuf) nor print payload bytes (no hex dump before 24.x), but `set verbose 1` prints, per
// received packet, the Ethernet source and destination, EtherType, total length, segment count,
// and its software parse of the headers (L2_ETHER L3_IPV4 L4_UDP with l2/l3/l4 lengths, which
// needs intact IPv4 version/IHL/protocol and UDP headers). So: testpmd (rxonly, `start
// tx_first`) sends one burst of 32 frames of 1000 bytes on each port, each frame in two
// segments (64 + 936 bytes: the backend must gather a descriptor chain, or an indirect table
// if negotiated), with known MACs; every frame must arrive once, on the other port, unchanged
// in all of the above, and the byte counts must match on both sides.
TEST_P(InteropRingTest, TwoPortFramesIntact) {
  const std::string mac[2] = {"02:00:00:00:00:10", "02:00:00:00:00:11"};
  constexpr std::uint64_t kFrame = 1000;
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock")}, {socket("p1.sock")}}, "io"));
  Testpmd& pmd = start_testpmd(with_ring(guest(
      {{socket("p0.sock"), 1, {}, mac[0]}, {socket("p1.sock"), 1, {}, mac[1]}}, "rxonly", "64,936",
      {"--tx-offloads=0x8000", "--eth-peer=0," + mac[1], "--eth-peer=1," + mac[0]})));
  pmd.command("set verbose 1");
  const std::size_t before = pmd.process().output().size();
  pmd.start(/*tx_first=*/true);
  const bool all = pmd.process().wait_for(
      [&](const std::string& out) {
        return parse_rx_dumps(out.substr(before)).size() >= 2 * kBurst;
      },
      20s);
  EXPECT_TRUE(all) << "testpmd did not receive the " << 2 * kBurst << " frames";
  std::this_thread::sleep_for(200ms);  // anything extra would show now
  const Result run = finish(pmd, vhostd, Order::kFrontendFirst);
  expect_negotiated(vhostd);

  const auto dumps = parse_rx_dumps(pmd.process().output().substr(before));
  EXPECT_EQ(dumps.size(), 2u * kBurst);
  std::map<int, int> per_port;
  for (const RxDump& d : dumps) {
    ASSERT_TRUE(d.port == 0 || d.port == 1) << d.port;
    ++per_port[d.port];
    const int other = 1 - d.port;
    EXPECT_EQ(d.src, mac[other]) << "port " << d.port;
    EXPECT_EQ(d.dst, mac[d.port]) << "port " << d.port;
    EXPECT_EQ(d.type, "0x0800");
    EXPECT_EQ(d.length, kFrame);
    EXPECT_EQ(d.sw_ptype, "L2_ETHER L3_IPV4 L4_UDP");
    EXPECT_EQ(d.l2_len, 14u);
    EXPECT_EQ(d.l3_len, 20u);
    EXPECT_EQ(d.l4_len, 8u);
  }
  EXPECT_EQ(per_port[0], kBurst);
  EXPECT_EQ(per_port[1], kBurst);
  for (int p : {0, 1}) {
    EXPECT_EQ(run.fwd.ports.at(p).tx_packets, std::uint64_t{kBurst}) << "port " << p;
    EXPECT_EQ(run.fwd.ports.at(p).rx_packets, std::uint64_t{kBurst}) << "port " << p;
    EXPECT_EQ(run.nic.at(p).rx_bytes, kBurst * kFrame) << "port " << p;
    const PortTotals& t = run.totals.at(p);
    EXPECT_EQ(t.rx_packets, std::uint64_t{kBurst}) << "port " << p;
    EXPECT_EQ(t.tx_packets, std::uint64_t{kBurst}) << "port " << p;
    EXPECT_EQ(t.rx_bytes, kBurst * kFrame) << "port " << p;
    EXPECT_EQ(t.tx_bytes, kBurst * kFrame) << "port " << p;
    EXPECT_EQ(t.drops, 0u) << "port " << p;
    EXPECT_EQ(t.errors, 0u) << "port " << p;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Rings, InteropRingTest,
    ::testing::Values(RingCase{"split", {}, {}, {}}, RingCase{"packed_inorder0_mrg0", 1, 0, 0},
                      RingCase{"packed_inorder0_mrg1", 1, 0, 1}, RingCase{"packed_inorder1_mrg0", 1, 1, 0},
                      RingCase{"packed_inorder1_mrg1", 1, 1, 1}),
    [](const ::testing::TestParamInfo<RingCase>& info) { return std::string(info.param.name); });

// Two queue pairs, guest -> backend: testpmd sends on both TX queues; more than a ring's worth
// on each proves the backend serves both, and the counts add up exactly.
TEST_F(InteropTest, TwoQueuePairsGuestToBackend) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock"), 2}}, "rxonly"));
  const std::string out = vhostd.process().output();
  EXPECT_NE(out.find("assign: port 0 queue-pair 0 -> lcore 1"), std::string::npos) << out;
  EXPECT_NE(out.find("assign: port 0 queue-pair 1 -> lcore 1"), std::string::npos) << out;
  Testpmd& pmd = start_testpmd(guest({{socket("p0.sock"), 2}}, "txonly"));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kBackendFirst);

  ASSERT_EQ(run.fwd.streams.size(), 2u);
  std::uint64_t sent = 0;
  for (const FwdStreamStats& s : run.fwd.streams) {
    EXPECT_GT(s.tx_packets, kRingSize) << "TX queue " << s.tx_queue;
    sent += s.tx_packets;
  }
  EXPECT_EQ(run.fwd.ports.at(0).tx_packets, sent);
  EXPECT_EQ(run.totals.at(0).rx_packets, sent);
  EXPECT_EQ(run.totals.at(0).rx_bytes, sent * 64);
  EXPECT_EQ(run.totals.at(0).errors, 0u);
}

// Two queue pairs, backend -> guest: vhostd-fwd fills both of the guest's RX queues.
TEST_F(InteropTest, TwoQueuePairsBackendToGuest) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock"), 2}}, "txonly", 64));
  Testpmd& pmd = start_testpmd(guest({{socket("p0.sock"), 2}}, "rxonly"));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kFrontendFirst);

  ASSERT_EQ(run.fwd.streams.size(), 2u);
  std::uint64_t received = 0;
  for (const FwdStreamStats& s : run.fwd.streams) {
    EXPECT_GT(s.rx_packets, kRingSize) << "RX queue " << s.rx_queue;
    received += s.rx_packets;
  }
  const NicStats& nic = run.nic.at(0);
  EXPECT_EQ(nic.rx_packets, received);
  EXPECT_EQ(nic.rx_bytes, received * 64);
  const PortTotals& t = run.totals.at(0);
  EXPECT_LE(received, t.tx_packets);
  EXPECT_LE(t.tx_packets - nic.rx_packets, 2 * 2 * kRingSize);
  EXPECT_EQ(t.errors, 0u);
}

// MRG_RXBUF off and on (both sides), backend -> guest, at several frame sizes. testpmd's RX
// buffers hold 1920 bytes of frame: 4000-byte frames only fit with MRG_RXBUF, spread over three
// buffers that the guest's driver reassembles from the header's num_buffers.
struct MrgCase {
  int mrg_rxbuf;
  int frame;
};
class InteropMrgTest : public InteropTest, public ::testing::WithParamInterface<MrgCase> {};

TEST_P(InteropMrgTest, BackendToGuest) {
  const MrgCase c = GetParam();
  VhostdFwd& vhostd =
      start_vhostd(backend({{socket("p0.sock"), 1, c.mrg_rxbuf}}, "txonly", c.frame));
  Testpmd& pmd = start_testpmd(guest({{socket("p0.sock"), 1, c.mrg_rxbuf}}, "rxonly"));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kBackendFirst);

  const std::uint64_t frame = static_cast<std::uint64_t>(c.frame);
  const NicStats& nic = run.nic.at(0);
  const PortTotals& t = run.totals.at(0);
  EXPECT_GT(nic.rx_packets, kRingSize);
  EXPECT_EQ(nic.rx_bytes, nic.rx_packets * frame) << "a frame arrived with the wrong length";
  EXPECT_EQ(nic.rx_errors, 0u);
  EXPECT_LE(nic.rx_packets, t.tx_packets);
  EXPECT_LE(t.tx_packets - nic.rx_packets, 2 * kRingSize);
  EXPECT_EQ(t.tx_bytes, t.tx_packets * frame);
  EXPECT_EQ(t.errors, 0u);
}

INSTANTIATE_TEST_SUITE_P(Mrg, InteropMrgTest,
                         ::testing::Values(MrgCase{0, 64}, MrgCase{0, 1500}, MrgCase{1, 1500},
                                           MrgCase{1, 4000}),
                         [](const ::testing::TestParamInfo<MrgCase>& info) {
                           return "mrg" + std::to_string(info.param.mrg_rxbuf) + "_" +
                                  std::to_string(info.param.frame);
                         });

// Without MRG_RXBUF a 4000-byte frame fits no guest RX buffer (1920 bytes each, one per
// packet): vhostd-fwd must drop and count it, never deliver a truncated frame.
TEST_F(InteropTest, MrgRxbufOffOversizeDropped) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock"), 1, 0}}, "txonly", 4000));
  Testpmd& pmd = start_testpmd(guest({{socket("p0.sock"), 1, 0}}, "rxonly"));
  pmd.start();
  std::this_thread::sleep_for(kTraffic);
  const Result run = finish(pmd, vhostd, Order::kFrontendFirst);

  const NicStats& nic = run.nic.at(0);
  const PortTotals& t = run.totals.at(0);
  EXPECT_EQ(nic.rx_packets, 0u) << "frames arrived: " << nic.rx_bytes << " bytes";
  EXPECT_EQ(nic.rx_errors, 0u);
  EXPECT_EQ(t.tx_packets, 0u);
  EXPECT_GT(t.drops, 0u) << "undeliverable frames must be counted as drops";
  EXPECT_EQ(t.errors, 0u);
}

// The frontend is SIGKILLed mid-traffic (no orderly shutdown: rings left mid-flight, socket
// just closed) and a new one connects to the same socket: vhostd-fwd keeps running and serves
// the new connection in both directions (io: a lone port loops back to itself).
TEST_F(InteropTest, FrontendKilledAndRestarted) {
  VhostdFwd& vhostd = start_vhostd(backend({{socket("p0.sock")}}, "io"));

  Testpmd& first = start_testpmd(guest({{socket("p0.sock")}}, "io"));
  first.start(/*tx_first=*/true);
  std::uint64_t looped = 0;
  for (auto deadline = Clock::now() + 10s; looped <= 100 * kBurst && Clock::now() < deadline;) {
    std::this_thread::sleep_for(100ms);
    looped = first.port_stats()[0].rx_packets;
  }
  EXPECT_GT(looped, 100u * kBurst) << "no traffic on the first connection";
  kill_testpmd(first);

  std::this_thread::sleep_for(kDrain);
  ASSERT_TRUE(vhostd.running()) << "vhostd-fwd died with its frontend";

  Testpmd& second = start_testpmd(guest({{socket("p0.sock")}}, "io"));
  second.start(/*tx_first=*/true);
  std::this_thread::sleep_for(kTraffic);
  ASSERT_TRUE(vhostd.running());
  const Result run = finish(second, vhostd, Order::kFrontendFirst);

  const FwdPortStats& s = run.fwd.ports.at(0);
  EXPECT_GT(s.rx_packets, 100u * kBurst) << "no traffic on the new connection";
  EXPECT_EQ(s.tx_packets, kBurst + s.rx_packets - s.tx_dropped);
  const PortTotals& t = run.totals.at(0);
  // The totals span both connections.
  EXPECT_GT(t.rx_packets, s.tx_packets);
  EXPECT_GT(t.tx_packets, s.rx_packets);
  EXPECT_EQ(t.errors, 0u);
}

// vhostd-fwd in adaptive poll mode (--poll-mode adaptive): a two-port loop started, stopped
// and left idle three times. While testpmd is stopped the backend's poller goes to sleep on
// the kick eventfds; virtio-user must then kick (notifications on) and the loop must resume
// with every packet accounted for.
TEST_F(InteropTest, AdaptivePollModeLoopAcrossIdleGaps) {
  FwdSpec spec = backend({{socket("p0.sock")}, {socket("p1.sock")}}, "io");
  spec.extra_args = {"--poll-mode", "adaptive", "--idle-threshold-us", "100"};
  VhostdFwd& vhostd = start_vhostd(spec);
  Testpmd& pmd = start_testpmd(guest({{socket("p0.sock")}, {socket("p1.sock")}}, "io"));
  constexpr int kCycles = 3;
  std::map<int, std::uint64_t> pmd_tx;
  std::uint64_t pmd_rx = 0, pmd_dropped = 0;
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    pmd.start(/*tx_first=*/true);
    std::this_thread::sleep_for(500ms);
    const ForwardStats fwd = pmd.stop();  // testpmd counts each start..stop afresh
    std::uint64_t cycle_rx = 0;
    for (int p : {0, 1}) {
      pmd_tx[p] += fwd.ports.at(p).tx_packets;
      cycle_rx += fwd.ports.at(p).rx_packets;
      pmd_dropped += fwd.ports.at(p).tx_dropped;
    }
    pmd_rx += cycle_rx;
    EXPECT_GT(cycle_rx, 100u * kBurst) << "cycle " << cycle << ": the loop did not resume after the idle gap";
    std::this_thread::sleep_for(300ms);  // idle: the backend's poller sleeps
  }
  const std::map<int, PortTotals> totals = vhostd.stop();
  pmd.quit(/*backend_gone=*/true);

  std::uint64_t rx = 0, tx = 0;
  for (int p : {0, 1}) {
    EXPECT_EQ(totals.at(p).rx_packets, pmd_tx[p]) << "port " << p;
    EXPECT_EQ(totals.at(p).drops, 0u) << "port " << p;
    EXPECT_EQ(totals.at(p).errors, 0u) << "port " << p;
    rx += totals.at(p).rx_packets;
    tx += totals.at(p).tx_packets;
  }
  EXPECT_EQ(pmd_dropped, 0u);
  EXPECT_EQ(tx, rx);
  // Every injected packet still exists exactly once: in a guest RX ring when it stopped.
  EXPECT_EQ(tx - pmd_rx, static_cast<std::uint64_t>(kCycles) * 2 * kBurst);
  // The data lcore did sleep in the gaps (vhostd-fwd prints its pollers' totals at exit).
  std::smatch m;
  const std::string output = vhostd.process().output();
  ASSERT_TRUE(std::regex_search(output, m, std::regex(R"(total lcore 1: loops \d+ busy-loops \d+ sleeps (\d+))")))
      << vhostd.process().tail();
  EXPECT_GE(std::stoull(m[1]), static_cast<std::uint64_t>(kCycles)) << vhostd.process().tail();
  EXPECT_NE(output.find("poll mode adaptive"), std::string::npos);
}

}  // namespace
}  // namespace vhostd::interop
