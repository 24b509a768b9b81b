// Integration: ring state rules over a real socket: nothing before the first kick, disabled
// rings and kicks that must not be lost, rings enabled by SET_FEATURES without protocol
// features, and GET_VRING_BASE / SET_VRING_BASE stop and resume; each on split and on packed
// rings.
#include <chrono>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using RingStateTest = LayoutTest;

// Proving absence needs a wait: long enough for a spinning poller to have acted many times.
constexpr auto kAbsence = 200ms;

TEST_P(RingStateTest, NothingIsProcessedBeforeTheFirstKick) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  std::uint64_t rng = 7;
  std::vector<PendingEcho> pending{push_echo(frontend, 0, random_chain(rng, 500, false))};
  std::this_thread::sleep_for(kAbsence);
  EXPECT_FALSE(frontend.ring(0).has_used()) << "a ring was processed before its first kick";
  RingReport before = report(0);
  EXPECT_FALSE(before.started);
  EXPECT_FALSE(before.polled);
  EXPECT_EQ(before.requests, 0u);

  frontend.kick(0);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  EXPECT_TRUE(wait_until([&] { return report(0).started && report(0).polled; }));
  // Ring 1 was never kicked: still idle.
  EXPECT_FALSE(report(1).started);
}

TEST_P(RingStateTest, KickWhileDisabledIsNotLostAndRunsOnEnable) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.enable_rings = false;
  frontend.setup_device(options);
  ASSERT_TRUE(frontend.acked_features() & kVhostUserFProtocolFeatures);

  std::uint64_t rng = 11;
  std::vector<PendingEcho> pending;
  for (int i = 0; i < 3; ++i) pending.push_back(push_echo(frontend, 0, random_chain(rng, 800, true)));
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_FALSE(frontend.ring(0).has_used()) << "a disabled ring was processed";
  EXPECT_FALSE(report(0).enabled);
  EXPECT_FALSE(report(0).polled);

  // No new kick: the one sent while disabled must still count.
  frontend.set_vring_enable(0, true);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  EXPECT_TRUE(report(0).enabled);

  // Disabling again stops processing; enabling resumes it.
  frontend.set_vring_enable(0, false);
  pending.push_back(push_echo(frontend, 0, random_chain(rng, 800, false)));
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_FALSE(frontend.ring(0).has_used()) << "a ring disabled again was processed";
  EXPECT_EQ(frontend.ring(0).popped(), 3u);
  frontend.set_vring_enable(0, true);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  for (int i = 0; i < 50; ++i) echo_one(frontend, 0, 64, i);
}

TEST_P(RingStateTest, WithoutProtocolFeaturesSetFeaturesEnablesTheRings) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.protocol_features = false;
  const std::uint64_t features = frontend.setup_device(options);
  ASSERT_FALSE(features & kVhostUserFProtocolFeatures);
  EXPECT_TRUE(report(0).enabled);
  EXPECT_TRUE(report(1).enabled);
  for (std::size_t ring = 0; ring < 2; ++ring) {
    for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, ring, 200, i));
  }
  // SET_VRING_ENABLE needs protocol features: refused (no ack is due without REPLY_ACK).
  frontend.set_vring_enable(0, false);
  frontend.expect_in_sync();
  echo_one(frontend, 0);
}

TEST_P(RingStateTest, GetVringBaseStopsTheRingAndSetVringBaseResumesIt) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  frontend.setup_device(options);
  GuestRing& ring = frontend.ring(0);

  // More requests than the queue has entries, so the indexes wrap the ring.
  std::uint64_t rng = 99;
  constexpr std::size_t kFirst = 301;
  for (std::size_t done = 0; done < kFirst;) {
    std::vector<EchoChain> burst;
    for (std::size_t k = 0; k < 17 && done < kFirst; ++k, ++done) burst.push_back(random_chain(rng, 1500, true));
    ASSERT_NO_THROW(echo_burst(frontend, 0, burst));
  }
  echo_one(frontend, 1);

  const std::uint32_t base = frontend.get_vring_base(0);
  // Split: the next avail index; packed: next avail and used slots with their wrap counters.
  EXPECT_EQ(base, ring.vring_base()) << "GET_VRING_BASE must return the driver's position (" << ring.describe()
                                     << ")";
  if (!packed()) {
    EXPECT_EQ(base, kFirst) << "GET_VRING_BASE must return the next avail index";
  }
  EXPECT_FALSE(report(0).started);
  EXPECT_FALSE(report(0).polled);

  // Stopped: a new chain (and kick) is left alone.
  std::vector<PendingEcho> pending{push_echo(frontend, 0, random_chain(rng, 1500, false))};
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_FALSE(ring.has_used()) << "the stopped ring was processed";
  EXPECT_EQ(ring.popped(), kFirst);
  EXPECT_EQ(report(0).requests, kFirst);
  // The other ring is unaffected.
  echo_one(frontend, 1);

  // Resume as QEMU does: base, fresh call and kick fds, then a kick.
  frontend.set_vring_base(0, base);
  TestFrontend::Ring& fds = frontend.ring_fds(0);
  fds.call = make_eventfd();
  frontend.set_vring_call(0, fds.call.get());
  fds.kick = make_eventfd();
  frontend.set_vring_kick(0, fds.kick.get());
  frontend.kick(0);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  for (int i = 0; i < 100; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 64 + i, i));
  EXPECT_EQ(ring.popped(), kFirst + 101);
  EXPECT_TRUE(ring.settled()) << ring.describe();
  EXPECT_EQ(frontend.get_vring_base(0), ring.vring_base());
  if (!packed()) {
    EXPECT_EQ(frontend.get_vring_base(0), kFirst + 101);
  }
}

TEST_P(RingStateTest, SetVringBaseResumesAtAnArbitraryIndex) {
  // A ring handed over by a previous backend. Split: both indexes already at 65530, about to
  // wrap the 16-bit index. Packed: both positions 3 slots before the end of the ring in the lap
  // whose wrap counters are 0, about to wrap the ring.
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  frontend.negotiate(options);
  frontend.send_memory(options);
  frontend.setup_ring(0, options);
  frontend.setup_ring(1, options);
  GuestRing& ring = frontend.ring(0);
  const std::uint32_t size = options.queue_size;
  constexpr int kRequests = 20;  // two descriptors each
  std::uint32_t start_base, end_base;
  if (packed()) {
    const auto start = static_cast<std::uint16_t>(size - 3);
    ring.packed().start_at(start, false);
    start_base = std::uint32_t{start} | std::uint32_t{start} << 16;
    const std::uint32_t end = (start + 2 * kRequests) % size;  // past the end: wrap counters 1
    end_base = (end | kPackedWrapBit) * 0x10001u;
  } else {
    constexpr std::uint16_t kStart = 65530;
    ring.split().start_at(kStart);
    start_base = kStart;
    end_base = static_cast<std::uint16_t>(kStart + kRequests);
  }
  frontend.set_vring_base(0, start_base);
  for (int i = 0; i < kRequests; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 100, i));
  EXPECT_TRUE(ring.settled()) << ring.describe();
  if (!packed()) {
    EXPECT_EQ(device_used_idx(frontend, 0), static_cast<std::uint16_t>(65530 + kRequests));
  }
  EXPECT_EQ(ring.vring_base(), end_base) << "test bug: the driver is not where the test expects";
  EXPECT_EQ(frontend.get_vring_base(0), end_base);
}

TEST_P(RingStateTest, ResetDeviceStopsRingsAndTheDeviceCanBeSetUpAgain) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  frontend.setup_device(options);
  for (int i = 0; i < 10; ++i) echo_one(frontend, 0, 64, i);
  frontend.reset_device();
  EXPECT_FALSE(report(0).started);
  EXPECT_FALSE(report(0).polled);
  // Features again, then fresh rings in the same memory, from the start.
  frontend.set_features(TestFrontend::features_for(options, frontend.get_features()));
  frontend.setup_ring(0, options);
  frontend.setup_ring(1, options);
  for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 64, i));
  for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(echo_one(frontend, 1, 64, i));
}

INSTANTIATE_LAYOUTS(RingStateTest);

}  // namespace
}  // namespace vhostd::test
