// Integration: many ports per data lcore. 64 vhost-user-net ports on one data lcore whose
// guests come and go while one port keeps carrying traffic (no fd or mapping leak, nothing
// unexpected logged), a port with 128 queue pairs carrying traffic on every pair, and new
// rings placed on the least-loaded data lcore as ports come and go (echo daemons, two data
// lcores).

#include <numa.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>

#include "harness.hpp"  // count_mappings, kExactMappingCount
#include "net_harness.hpp"
#include "vhostd/echo/echo_backend.hpp"

namespace vhostd::test::nettest {
namespace {

using fwd::FwdMode;
using net::NetPortConfig;

void expect_frame_eq(const Bytes& got, const Bytes& want, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what << ": frame length";
  EXPECT_TRUE(got == want) << what << ": frame differs\n got:  " << hex(got) << "\n want: " << hex(want);
}

Bytes swapped(Bytes frame) {
  std::swap_ranges(frame.begin(), frame.begin() + 6, frame.begin() + 6);
  return frame;
}

using ManyPortsTest = NetFixture;

// One macswap round trip per guest in `which`: each gets its own frame back, addresses swapped.
void round_trip(std::vector<std::unique_ptr<NetGuest>>& guests, const std::vector<std::size_t>& which,
                std::uint32_t seed) {
  for (std::size_t i : which) {
    guests[i]->post_rx(1);
    guests[i]->send(eth_frame(kMacB, kMacA, 60 + i, seed + static_cast<std::uint32_t>(i)));
  }
  for (std::size_t i : which) {
    SCOPED_TRACE("port " + std::to_string(i));
    ASSERT_EQ(guests[i]->complete_tx(), 1u);
    const Bytes sent = eth_frame(kMacB, kMacA, 60 + i, seed + static_cast<std::uint32_t>(i));
    expect_frame_eq(guests[i]->receive().frame, swapped(sent), "round trip");
  }
}

// Each data lcore forwards with the scratch (burst arrays, per-port lists) made for its NUMA
// node, on a fake two-node machine (cpu 0 on node 0, cpu 1 on node 1): port 0's rings on data
// lcore 1 (node 0), port 1's on data lcore 2 (node 1). The contexts are handed to the forwarder
// in the other order, so only the claim by node gets them right.
TEST_F(ManyPortsTest, EachDataLcoreForwardsWithTheScratchMadeForItsNode) {
  runtime_.reset();
  const CpuTopology topology = CpuTopology::from_synthetic("node:2 core:1 pu:1");
  CoreConfig cores;
  cores.lcores = {{0, {0}}, {1, {0}}, {2, {1}}};
  cores.main_lcore = 0;
  runtime_ = std::make_unique<Runtime>(cores, topology);
  ASSERT_EQ(runtime_->poller(0).numa_node(), 0);
  ASSERT_EQ(runtime_->poller(1).numa_node(), 1);
  start(FwdMode::macswap, 2);
  forwarder_ = std::make_unique<fwd::Forwarder>(fwd::FwdOptions{.mode = FwdMode::macswap},
                                                std::vector<net::NetPort*>{&port(0), &port(1)}, std::vector<int>{1, 0});
  for (std::size_t i = 0; i < 2; ++i) port(i).set_handler(forwarder_.get());
  port(0).set_queue_placement({{1, 2}, {}});  // TX ring and control queue on data lcore 1
  port(1).set_queue_placement({{}, {1, 2}});  // on data lcore 2
  std::vector<std::unique_ptr<NetGuest>> guests;
  guests.push_back(connect(0));
  guests.push_back(connect(1));
  ASSERT_NO_FATAL_FAILURE(round_trip(guests, {0, 1}, 11));
  ASSERT_EQ(daemon(0).ring_reports().at(1).lcore, 1);
  ASSERT_EQ(daemon(1).ring_reports().at(1).lcore, 2);

  const auto reports = forwarder().scratch_reports();
  ASSERT_EQ(reports.size(), 2u);
  for (const auto& r : reports) {
    SCOPED_TRACE("scratch for node " + std::to_string(r.node));
    EXPECT_EQ(r.lcore, r.node == 0 ? 1 : 2) << "claimed by the lcore of another node";
    // Node 0 exists here and is bound (preferred); node 1 is this machine's fiction.
    if (numa_available() >= 0) {
      EXPECT_EQ(r.bound_node, r.node == 0 ? 0 : -1);
    }
  }
}

TEST_F(ManyPortsTest, SixtyFourPortsOnOneDataLcoreComeAndGoWhileOneCarriesTrafficWithoutLeaks) {
  constexpr std::size_t kPorts = 64;
  constexpr std::uint16_t kBurst = 32;
  ASSERT_EQ(runtime_->num_pollers(), 1u) << "Runtime::default_cores() gives one data lcore";
  const unsigned data_lcore = runtime_->poller(0).lcore_id();
  start(FwdMode::macswap, kPorts);

  // Everything the daemons log from here on is checked at the end.
  ::testing::internal::CaptureStderr();
  struct StopCapture {
    bool active = true;
    std::string take() {
      active = false;
      return ::testing::internal::GetCapturedStderr();
    }
    ~StopCapture() {
      if (active) ::testing::internal::GetCapturedStderr();
    }
  } capture;

  // Baseline: runtime and daemons created, no guest yet.
  const int fds0 = count_open_fds();
  const std::size_t maps0 = count_mappings();
  const std::size_t memfd_maps0 = count_mappings("memfd:");
  std::size_t connects = 0;

  std::vector<std::unique_ptr<NetGuest>> guests(kPorts);
  for (std::size_t i = 0; i < kPorts; ++i) {
    ASSERT_NO_THROW(guests[i] = connect(i)) << "port " << i;
    ++connects;
  }
  for (std::size_t i = 0; i < kPorts; ++i) {
    const RingReport tx = daemon(i).ring_reports().at(NetGuest::tx(0));
    EXPECT_TRUE(tx.polled && tx.lcore == static_cast<int>(data_lcore)) << "port " << i;
  }
  std::vector<std::size_t> others(kPorts - 1);
  for (std::size_t i = 1; i < kPorts; ++i) others[i - 1] = i;
  round_trip(guests, others, 1000);

  // Port 0 carries traffic throughout: a burst is published, the control lcore takes other
  // ports' rings off (or puts them on) the data lcore while the poller forwards it, then the
  // burst must come back whole, in order, addresses swapped: the guest posted room for all.
  NetGuest& busy = *guests[0];
  std::uint32_t sent = 0;
  auto with_traffic = [&](const std::function<void()>& churn) {
    busy.post_rx(kBurst);
    std::vector<Bytes> frames;
    for (std::uint16_t k = 0; k < kBurst; ++k) {
      frames.push_back(eth_frame(kMacB, kMacA, 64 + (sent + k) % 512, sent + k));
      busy.send(frames.back());
    }
    churn();
    ASSERT_EQ(busy.complete_tx(), kBurst);
    for (std::uint16_t k = 0; k < kBurst; ++k) {
      RxPacket p = busy.receive();
      ASSERT_EQ(p.frame, swapped(frames[k])) << "packet " << sent + k << " of port 0";
    }
    sent += kBurst;
  };
  auto disconnect = [&](std::size_t i) {
    guests[i]->close();
    ASSERT_TRUE(wait_disconnected(i)) << "port " << i;
    guests[i].reset();
  };
  auto reconnect = [&](std::size_t i) {
    ASSERT_NO_THROW(guests[i] = connect(i)) << "port " << i;
    ++connects;
  };
  // Disconnects `down`, then reconnects `up`, 8 ports per traffic burst of port 0; every
  // reconnected guest then makes a round trip.
  auto churn = [&](const std::vector<std::size_t>& down, const std::vector<std::size_t>& up) {
    for (std::size_t at = 0; at < down.size(); at += 8) {
      with_traffic([&] {
        for (std::size_t k = at; k < std::min(at + 8, down.size()); ++k) disconnect(down[k]);
      });
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (std::size_t at = 0; at < up.size(); at += 8) {
      with_traffic([&] {
        for (std::size_t k = at; k < std::min(at + 8, up.size()); ++k) reconnect(up[k]);
      });
      if (::testing::Test::HasFatalFailure()) return;
    }
    round_trip(guests, up, 2000 + sent);
  };

  {
    SCOPED_TRACE("all others");
    churn(others, others);
  }
  {
    SCOPED_TRACE("the odd half");
    std::vector<std::size_t> odd;
    for (std::size_t i = 1; i < kPorts; i += 2) odd.push_back(i);
    churn(odd, odd);
  }
  std::mt19937 rng(5);
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE("random round " + std::to_string(round));
    std::vector<std::size_t> down = others;
    std::shuffle(down.begin(), down.end(), rng);
    down.resize(8 + rng() % 48);
    std::vector<std::size_t> up = down;
    std::shuffle(up.begin(), up.end(), rng);
    churn(down, up);
  }
  if (HasFatalFailure()) return;

  // Port 0 never stopped: still its first connection, nothing dropped, nothing in error.
  EXPECT_EQ(daemon(0).connections(), 1u);
  const net::PortTotals t0 = totals(0);
  EXPECT_EQ(t0.rx_packets, sent);
  EXPECT_EQ(t0.tx_packets, sent);
  EXPECT_EQ(t0.tx_drops, 0u);
  EXPECT_EQ(t0.rx_errors, 0u);
  for (const RingReport& r : daemon(0).ring_reports()) EXPECT_EQ(r.errors, 0u) << "port 0 ring " << r.index;

  // Everyone leaves: the process is back to its baseline, not one fd or mapping more.
  for (std::size_t i = 0; i < kPorts; ++i) disconnect(i);
  EXPECT_EQ(count_open_fds(), fds0) << "fds leaked";
  EXPECT_EQ(count_mappings("memfd:"), memfd_maps0) << "guest memory mappings leaked";
  if (kExactMappingCount) {
    EXPECT_EQ(count_mappings(), maps0) << "mappings leaked";
  }

  // The log: a connect, a negotiated-features and a disconnect line per guest, and a placement
  // line per started ring, nothing else.
  const std::string log = capture.take();
  std::istringstream lines(log);
  std::string line;
  std::size_t connected_lines = 0, features_lines = 0, disconnected_lines = 0, placement_lines = 0;
  while (std::getline(lines, line)) {
    if (line.find(": frontend connected") != std::string::npos) {
      ++connected_lines;
    } else if (line.find(": features 0x") != std::string::npos) {
      ++features_lines;
    } else if (line.find(": disconnecting: frontend closed the connection") != std::string::npos) {
      ++disconnected_lines;
    } else if (line.find(" -> lcore ") != std::string::npos) {
      // Where each started ring was placed: the one data lcore there is.
      EXPECT_NE(line.find(" -> lcore 1 ("), std::string::npos) << line;
      ++placement_lines;
    } else {
      ADD_FAILURE() << "unexpected log line: " << line;
    }
  }
  EXPECT_EQ(connected_lines, connects);
  EXPECT_EQ(features_lines, connects);
  EXPECT_EQ(disconnected_lines, connects);
  EXPECT_GE(placement_lines, connects);
}

TEST_F(ManyPortsTest, OneHundredTwentyEightQueuePairsCarryTrafficOnEveryPair) {
  constexpr std::uint16_t kPairs = net::kMaxQueuePairs;
  static_assert(kPairs == 128);
  NetPortConfig config;
  config.queue_pairs = kPairs;
  start(FwdMode::io, {config});  // a lone port: io loops it back to itself, pair q to pair q
  ASSERT_EQ(forwarder().io_peer(0), 0u);
  // The guest keeps the control queue: ring 256 cannot be named by SET_VRING_KICK/CALL.
  GuestOptions options;
  options.control_queue = false;
  std::unique_ptr<NetGuest> g;
  ASSERT_NO_THROW(g = connect(0, options));
  ASSERT_TRUE(g->has(net::kNetFMq) && g->has(net::kNetFCtrlVq));
  EXPECT_EQ(g->frontend().get_queue_num(), kPairs);
  auto pairs = g->frontend().get_config(8, 2);  // max_virtqueue_pairs
  ASSERT_TRUE(pairs.has_value());
  EXPECT_EQ((*pairs)[0] | (*pairs)[1] << 8, kPairs);
  EXPECT_EQ(port(0).active_pairs(), kPairs);

  const auto reports = daemon(0).ring_reports();
  ASSERT_EQ(reports.size(), 2u * kPairs + 1);
  for (std::uint16_t q = 0; q < kPairs; ++q) {
    EXPECT_TRUE(reports[NetGuest::tx(q)].polled) << "pair " << q;
    EXPECT_TRUE(reports[NetGuest::rx(q)].attached && reports[NetGuest::rx(q)].enabled) << "pair " << q;
  }
  EXPECT_FALSE(reports[2u * kPairs].attached) << "the control queue stayed with the guest";

  // A frame on every pair at once (pairs 0 and 127 included), each back on its own pair.
  auto frame_of = [](std::uint16_t q) { return eth_frame(kMacB, kMacA, 64 + q * 7, 100 + q); };
  for (std::uint16_t q = 0; q < kPairs; ++q) g->post_rx(1, 2048, q);
  for (std::uint16_t q = 0; q < kPairs; ++q) g->send(frame_of(q), q);
  for (std::uint16_t q = 0; q < kPairs; ++q) {
    SCOPED_TRACE("pair " + std::to_string(q));
    ASSERT_EQ(g->complete_tx(q), 1u);
    expect_frame_eq(g->receive(q).frame, frame_of(q), "io loop");
    EXPECT_EQ(port(0).stats(q).rx.packets.load(), 1u);
    EXPECT_EQ(port(0).stats(q).tx.packets.load(), 1u);
  }
  // More on the first and last pairs: several bursts, order kept.
  for (std::uint16_t q : {std::uint16_t{0}, std::uint16_t{1}, std::uint16_t{kPairs - 1}}) {
    g->post_rx(16, 2048, q);
    std::vector<Bytes> frames;
    for (std::uint32_t k = 0; k < 16; ++k) {
      frames.push_back(eth_frame(kMacB, kMacA, 80 + k, 1000 * q + k));
      g->send(frames.back(), q);
    }
    ASSERT_EQ(g->complete_tx(q), 16u) << "pair " << q;
    for (const Bytes& f : frames) expect_frame_eq(g->receive(q).frame, f, "pair " + std::to_string(q));
  }
  const net::PortTotals t = totals(0);
  EXPECT_EQ(t.rx_packets, kPairs + 48u);
  EXPECT_EQ(t.tx_packets, kPairs + 48u);
  EXPECT_EQ(t.tx_drops, 0u);
  EXPECT_EQ(t.rx_errors, 0u);
  for (const RingReport& r : daemon(0).ring_reports()) EXPECT_EQ(r.errors, 0u) << "ring " << r.index;
}

// ---- placement: rings go to the least-loaded data lcore ----

TEST(RingPlacementTest, NewRingsGoToTheLeastLoadedDataLcoreAsPortsComeAndGo) {
  // Two data lcores. They share the last CPU (this may be a 2-CPU machine): placement does not
  // depend on where they run, and both still make progress.
  const std::vector<unsigned> cpus = CpuTopology::from_system().cpus();
  CoreConfig cores;
  cores.lcores = {{0, {cpus.front()}}, {1, {cpus.back()}}, {2, {cpus.back()}}};
  cores.main_lcore = 0;
  Runtime runtime(cores);
  ASSERT_EQ(runtime.num_pollers(), 2u);

  char tmpl[] = "/tmp/vhostd-place-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  constexpr std::size_t kPorts = 6;
  auto path = [&](std::size_t i) { return dir + "/echo" + std::to_string(i) + ".sock"; };
  std::vector<std::unique_ptr<Daemon>> daemons;
  for (std::size_t i = 0; i < kPorts; ++i) {
    // One ring each, no placement of its own: every port's ring is ring 0.
    daemons.push_back(std::make_unique<Daemon>("echo" + std::to_string(i), std::make_shared<EchoBackend>(1), runtime));
    daemons.back()->start_server(path(i));
  }
  DeviceOptions options;
  options.num_rings = 1;
  std::vector<std::optional<TestFrontend>> guests(kPorts);
  // Connects port i and returns the data lcore its ring landed on.
  auto connect = [&](std::size_t i) {
    const std::uint64_t before = daemons[i]->connections();
    guests[i].emplace(TestFrontend::connect(path(i)));
    EXPECT_TRUE(wait_until([&] { return daemons[i]->connections() > before; }));
    guests[i]->setup_device(options);
    echo_one(*guests[i], 0);  // started and served
    const auto reports = daemons[i]->ring_reports();
    return reports.empty() || !reports[0].polled ? -1 : reports[0].lcore;
  };
  auto disconnect = [&](std::size_t i) {
    guests[i]->close();
    EXPECT_TRUE(wait_until([&] { return !daemons[i]->connected(); }));
    guests[i].reset();
  };
  const int lcore1 = static_cast<int>(runtime.poller(0).lcore_id());
  const int lcore2 = static_cast<int>(runtime.poller(1).lcore_id());

  // Ties go to the first data lcore, then they alternate.
  EXPECT_EQ(connect(0), lcore1);
  EXPECT_EQ(connect(1), lcore2);
  EXPECT_EQ(connect(2), lcore1);
  EXPECT_EQ(connect(3), lcore2);
  // Ports 1 and 3 leave: their lcore is the empty one, and takes the next two.
  disconnect(1);
  disconnect(3);
  echo_one(*guests[0], 0, 64, 1);
  EXPECT_EQ(connect(4), lcore2);
  EXPECT_EQ(connect(5), lcore2);
  // Port 0's ring went on serving through all of it, never moved or restarted.
  for (int k = 0; k < 8; ++k) ASSERT_NO_THROW(echo_one(*guests[0], 0, 100, 10 + k));
  EXPECT_EQ(daemons[0]->connections(), 1u);
  EXPECT_EQ(daemons[0]->ring_reports().at(0).lcore, lcore1);
  // Port 2 leaves and port 1 comes back: the first lcore is the lighter one now.
  disconnect(2);
  EXPECT_EQ(connect(1), lcore1);

  for (std::size_t i = 0; i < kPorts; ++i) {
    if (guests[i]) disconnect(i);
  }
  for (auto& d : daemons) d->stop();
  for (auto& d : daemons) d->wait();
  daemons.clear();
  for (std::size_t i = 0; i < kPorts; ++i) ::unlink(path(i).c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace vhostd::test::nettest
