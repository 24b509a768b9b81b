// Integration: requests through the echo device over a real socket, on split and on packed
// rings: bulk traffic with varied chain shapes, IN_ORDER, notifications (call eventfd,
// EVENT_IDX, interrupt suppression, kick suppression), and a hostile ring (more hostile packed
// rings in test_packed.cpp).
#include <chrono>
#include <numeric>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using TrafficTest = LayoutTest;

std::uint64_t total_requests(Daemon& daemon) {
  std::uint64_t total = 0;
  for (const RingReport& r : daemon.ring_reports()) total += r.requests;
  return total;
}

TEST_P(TrafficTest, TenThousandRequestsWithVariedChainsThroughTwoRings) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  // Packed rings need not be a power of two: run this one on 250 entries.
  if (packed()) options.queue_size = 250;
  const std::uint64_t features = frontend.setup_device(options);
  ASSERT_TRUE(features & kVirtioFRingIndirectDesc) << "INDIRECT_DESC not negotiated";
  ASSERT_EQ(frontend.ring(0).layout(), layout());
  ASSERT_EQ(frontend.ring(0).size(), options.queue_size);

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
  for (std::size_t ring = 0; ring < 2; ++ring) {
    EXPECT_EQ(frontend.ring(ring).popped(), per_ring[ring]) << "ring " << ring;
    // The device used exactly what was made available: no extra used element.
    EXPECT_TRUE(frontend.ring(ring).settled()) << "ring " << ring << ": " << frontend.ring(ring).describe();
  }

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

TEST_P(TrafficTest, CallIsSignalledWithoutEventIdx) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
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

// Split: the NO_INTERRUPT flag; packed: the driver area's DISABLE / ENABLE.
TEST_P(TrafficTest, DisabledInterruptsSuppressTheCallWithoutEventIdx) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.feature_mask &= ~kVirtioFRingEventIdx;
  frontend.setup_device(options);

  echo_one(frontend, 0);
  frontend.ring(0).set_interrupts(false);
  frontend.wait_call(0, 200ms);  // the call of the first request may land late: drain it
  frontend.drain_call(0);
  for (int i = 0; i < 5; ++i) echo_one(frontend, 0, 64, i);
  // Absence can only be shown by waiting: a due call would have been written right after
  // the used index we already saw.
  EXPECT_FALSE(frontend.wait_call(0, 200ms)) << "call signalled although the driver disabled interrupts";
  EXPECT_GE(report(0).requests, 6u);

  frontend.ring(0).set_interrupts(true);
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call after interrupts were enabled again";
}

// Split: used_event; packed: DESC with the off_wrap of a used slot.
TEST_P(TrafficTest, EventIdxUsedEventFarAheadSuppressesTheCall) {
  TestFrontend frontend = connect();
  const std::uint64_t features = frontend.setup_device(options());
  ASSERT_TRUE(features & kVirtioFRingEventIdx) << "EVENT_IDX not negotiated";
  GuestRing& ring = frontend.ring(0);

  // The event at the next used element: the next completion reaches it and must call.
  ring.set_used_event(0);
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call although the used position passed the event";

  // A whole ring ahead: ten completions (twenty descriptors) never reach it.
  ring.set_used_event(ring.size());
  frontend.wait_call(0, 50ms);
  frontend.drain_call(0);
  for (int i = 0; i < 10; ++i) echo_one(frontend, 0, 64, i);
  EXPECT_FALSE(frontend.wait_call(0, 200ms)) << "call signalled although the event is far ahead";

  // Back to "now": the next completion calls again.
  ring.set_used_event(0);
  echo_one(frontend, 0);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call after the event was brought back";

  // An event three completions ahead (split: elements; packed: slots, two per echo chain):
  // the first completions do not call, the one reaching it does.
  ring.set_used_event(packed() ? 5 : 2);
  frontend.wait_call(0, 50ms);
  frontend.drain_call(0);
  echo_one(frontend, 0, 64, 1);
  echo_one(frontend, 0, 64, 2);
  EXPECT_FALSE(frontend.wait_call(0, 200ms)) << "call before the used position reached the event";
  echo_one(frontend, 0, 64, 3);
  EXPECT_TRUE(frontend.wait_call(0)) << "no call when the used position reached the event";
}

// The poller spins on a started ring, so the daemon tells the guest not to kick (split:
// NO_NOTIFY, or avail_event left behind with EVENT_IDX; packed: DISABLE in the device area);
// before the first kick the guest must kick.
TEST_P(TrafficTest, KicksAreSuppressedWhileTheRingIsPolled) {
  for (const bool event_idx : {false, true}) {
    SCOPED_TRACE(event_idx ? "EVENT_IDX" : "no EVENT_IDX");
    TestFrontend frontend = connect();
    DeviceOptions options = this->options();
    if (!event_idx) options.feature_mask &= ~kVirtioFRingEventIdx;
    ASSERT_EQ((frontend.setup_device(options) & kVirtioFRingEventIdx) != 0, event_idx);
    GuestRing& ring = frontend.ring(0);

    std::uint64_t rng = 5;
    std::vector<PendingEcho> pending{push_echo(frontend, 0, random_chain(rng, 500, false))};
    EXPECT_TRUE(ring.kick_needed(event_idx)) << "a ring that never started must be kicked";
    frontend.kick(0);
    ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));

    // Started and polled: chains complete without any kick, and the guest is told so.
    for (int i = 0; i < 20; ++i) {
      pending.push_back(push_echo(frontend, 0, random_chain(rng, 500, i % 2 == 0)));
      EXPECT_FALSE(ring.kick_needed(event_idx)) << "request " << i << ": kick asked for while the ring is polled";
      ASSERT_NO_THROW(complete_echoes(frontend, 0, pending)) << "request " << i << " (never kicked)";
    }
    EXPECT_TRUE(wait_until([&] { return report(0).requests == 21u; })) << report(0).requests;
    frontend.close();
    ASSERT_TRUE(wait_disconnected());
  }
}

// IN_ORDER: runs of chains the device only reads (used len 0) may come back as one used
// element (split: the run's last head at the first one's used slot; packed: the last buffer id
// at the run's first slot); every buffer must still come back, in order, with its length and
// bytes, whether the device batches or not.
TEST_P(TrafficTest, InOrderMixOfReadOnlyAndEchoChains) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.in_order = true;
  const std::uint64_t features = frontend.setup_device(options);
  ASSERT_TRUE(features & kVirtioFInOrder) << "IN_ORDER not negotiated";
  ASSERT_TRUE(frontend.ring(0).in_order());

  std::uint64_t rng = 0x1234;
  std::size_t total = 0;
  for (int burst = 0; burst < 60; ++burst) {
    std::vector<EchoChain> chains;
    const std::size_t n = 1 + (rng >> 40) % 24;
    for (std::size_t k = 0; k < n; ++k) {
      EchoChain chain = random_chain(rng, 2000, true);
      // Runs of read-only chains (nothing to echo into: used len 0), broken by echo chains.
      if ((burst + k / 3) % 2 == 0) chain.writable_sizes.clear();
      chains.push_back(std::move(chain));
    }
    ASSERT_NO_THROW(echo_burst(frontend, 0, chains)) << "burst " << burst;
    total += n;
  }
  EXPECT_EQ(frontend.ring(0).popped(), total);
  EXPECT_TRUE(frontend.ring(0).settled()) << frontend.ring(0).describe();
  EXPECT_TRUE(wait_until([&] { return report(0).requests == total; })) << report(0).requests;
  EXPECT_EQ(report(0).errors, 0u);
  // How many used elements covered several buffers (0 when the device does not batch).
  RecordProperty("batched_used_elements", static_cast<int>(frontend.ring(0).batched_elements()));
}

// Split: an avail entry naming head size + 5; packed: a descriptor whose buffer id is size + 5
// (more hostile packed rings in test_packed.cpp).
TEST_P(TrafficTest, HostileHeadIndexStopsOnlyThatRing) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  frontend.setup_device(options);
  echo_one(frontend, 0);
  echo_one(frontend, 1);

  push_hostile_id(frontend, 0, static_cast<std::uint16_t>(options.queue_size + 5));
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

INSTANTIATE_LAYOUTS(TrafficTest);

}  // namespace
}  // namespace vhostd::test
