// Integration: requests through the echo device over a real socket: bulk traffic with varied
// chain shapes, notifications (call eventfd, EVENT_IDX, NO_INTERRUPT), and hostile rings.
#include <chrono>
#include <numeric>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using TrafficTest = DaemonTest;

std::uint64_t total_requests(Daemon& daemon) {
  std::uint64_t total = 0;
  for (const RingReport& r : daemon.ring_reports()) total += r.requests;
  return total;
}

TEST_F(TrafficTest, TenThousandRequestsWithVariedChainsThroughTwoRings) {
  TestFrontend frontend = connect();
  const std::uint64_t features = frontend.setup_device();
  ASSERT_TRUE(features & kVirtioFRingIndirectDesc) << "INDIRECT_DESC not negotiated";

  constexpr std::size_t kTotal = 10000;
  std::uint64_t rng = 0x9e3779b97f4a7c15ull;
  std::size_t pushed = 0;
  std::size_t per_ring[2] = {0, 0};
  while (pushed < kTotal) {
    std::vector<PendingEcho> pending[2];
    for (std::size_t ring = 0; ring < 2 && pushed < kTotal; ++ring) {
      rng = rng * 6364136223846793005ull + 1442695040888963407ull;
      std::size_t burst = 1 + (rng >> 33) % 32;
      burst = std::min(burst, kTotal - pushed);
      for (std::size_t k = 0; k < burst; ++k) {
        pending[ring].push_back(push_echo(frontend, ring, random_chain(rng, 3000, true)));
      }
      pushed += burst;
      per_ring[ring] += burst;
    }
    frontend.kick(0);
    frontend.kick(1);
    for (std::size_t ring = 0; ring < 2; ++ring) {
      ASSERT_NO_THROW(complete_echoes(frontend, ring, pending[ring])) << "after " << pushed << " requests";
    }
  }
  EXPECT_EQ(device_used_idx(frontend, 0), static_cast<std::uint16_t>(per_ring[0]));
  EXPECT_EQ(device_used_idx(frontend, 1), static_cast<std::uint16_t>(per_ring[1]));

  // Counters are relaxed atomics published by the poller: give them a moment to land.
  EXPECT_TRUE(wait_until([&] { return total_requests(*daemon_) == kTotal; }))
      << "ring reports count " << total_requests(*daemon_) << " requests";
  for (std::size_t ring = 0; ring < 2; ++ring) {
    RingReport r = report(ring);
    EXPECT_EQ(r.requests, per_ring[ring]) << "ring " << ring;
    EXPECT_EQ(r.errors, 0u) << "ring " << ring;
    EXPECT_EQ(r.error, RingError::none) << "ring " << ring;
    EXPECT_TRUE(r.started && r.enabled && r.polled) << "ring " << ring;
    EXPECT_GE(r.lcore, 0) << "ring " << ring;
    EXPECT_GT(r.batches, 0u) << "ring " << ring;
  }
}

TEST_F(TrafficTest, CallIsSignalledWithoutEventIdx) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  options.feature_mask &= ~kVirtioFRingEventIdx;
  const std::uint64_t features = frontend.setup_device(options);
  ASSERT_FALSE(features & kVirtioFRingEventIdx);

  for (std::size_t ring = 0; ring < 2; ++ring) {
    for (int i = 0; i < 5; ++i) {
      frontend.drain_call(ring);
      echo_one(frontend, ring, 100, i);
      EXPECT_TRUE(frontend.wait_call(ring)) << "ring " << ring << " request " << i << ": no call";
    }
  }
  EXPECT_TRUE(wait_until([&] { return report(0).notifications >= 5 && report(1).notifications >= 5; }));
}

TEST_F(TrafficTest, NoInterruptSuppressesTheCallWithoutEventIdx) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  options.feature_mask &= ~kVirtioFRingEventIdx;
  frontend.setup_device(options);

  echo_one(frontend, 0);
  set_no_interrupt(frontend, 0, true);
  frontend.wait_call(0, 200ms);  // the call of the first request may land late: drain it
  frontend.drain_call(0);
  for (int i = 0; i < 5; ++i) echo_one(frontend, 0, 64, i);
  // Absence can only be shown by waiting: a due call would have been written right after
  // the used index we already saw.
  EXPECT_FALSE(frontend.wait_call(0, 200ms)) << "call signalled although NO_INTERRUPT was set";

  set_no_interrupt(frontend, 0, false);
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call after NO_INTERRUPT was cleared";
}

TEST_F(TrafficTest, EventIdxUsedEventFarAheadSuppressesTheCall) {
  TestFrontend frontend = connect();
  const std::uint64_t features = frontend.setup_device();
  ASSERT_TRUE(features & kVirtioFRingEventIdx) << "EVENT_IDX not negotiated";

  // used_event == current used idx: the next completion crosses it and must call.
  set_used_event(frontend, 0, device_used_idx(frontend, 0));
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call although the used index passed used_event";

  // Far ahead: ten completions never reach it.
  set_used_event(frontend, 0, static_cast<std::uint16_t>(device_used_idx(frontend, 0) + 0x4000));
  frontend.wait_call(0, 50ms);
  frontend.drain_call(0);
  for (int i = 0; i < 10; ++i) echo_one(frontend, 0, 64, i);
  EXPECT_FALSE(frontend.wait_call(0, 200ms)) << "call signalled although used_event is far ahead";

  // Back to "now": the next completion calls again.
  set_used_event(frontend, 0, device_used_idx(frontend, 0));
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call after used_event was brought back";
}

TEST_F(TrafficTest, HostileHeadIndexStopsOnlyThatRing) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  frontend.setup_device(options);
  echo_one(frontend, 0);
  echo_one(frontend, 1);

  push_raw_head(frontend, 0, static_cast<std::uint16_t>(options.queue_size + 5));
  frontend.kick(0);
  ASSERT_TRUE(wait_until([&] { return report(0).error != RingError::none; }))
      << "ring 0 did not report the out-of-range head";
  EXPECT_EQ(report(0).error, RingError::head_out_of_range);
  EXPECT_EQ(report(0).errors, 1u);

  // The other ring keeps serving, and so does the daemon.
  for (int i = 0; i < 200; ++i) echo_one(frontend, 1, 128, i);
  EXPECT_EQ(report(0).errors, 1u) << "the ring in error was counted again";
  EXPECT_EQ(report(1).error, RingError::none);
  EXPECT_EQ(report(1).errors, 0u);
  EXPECT_TRUE(daemon_->connected());
  frontend.expect_in_sync();
}

}  // namespace
}  // namespace vhostd::test
