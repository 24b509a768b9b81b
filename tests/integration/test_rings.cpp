// Integration: ring state rules over a real socket: nothing before the first kick, disabled
// rings and kicks that must not be lost, rings enabled by SET_FEATURES without protocol
// features, and GET_VRING_BASE / SET_VRING_BASE stop and resume.
#include <chrono>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using RingStateTest = DaemonTest;

// Proving absence needs a wait: long enough for a spinning poller to have acted many times.
constexpr auto kAbsence = 200ms;

TEST_F(RingStateTest, NothingIsProcessedBeforeTheFirstKick) {
  TestFrontend frontend = connect();
  frontend.setup_device();
  std::uint64_t rng = 7;
  std::vector<PendingEcho> pending{push_echo(frontend, 0, random_chain(rng, 500, false))};
  std::this_thread::sleep_for(kAbsence);
  EXPECT_EQ(device_used_idx(frontend, 0), 0u) << "a ring was processed before its first kick";
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

TEST_F(RingStateTest, KickWhileDisabledIsNotLostAndRunsOnEnable) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  options.enable_rings = false;
  frontend.setup_device(options);
  ASSERT_TRUE(frontend.acked_features() & kVhostUserFProtocolFeatures);

  std::uint64_t rng = 11;
  std::vector<PendingEcho> pending;
  for (int i = 0; i < 3; ++i) pending.push_back(push_echo(frontend, 0, random_chain(rng, 800, true)));
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_EQ(device_used_idx(frontend, 0), 0u) << "a disabled ring was processed";
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
  EXPECT_EQ(device_used_idx(frontend, 0), 3u) << "a ring disabled again was processed";
  frontend.set_vring_enable(0, true);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  for (int i = 0; i < 50; ++i) echo_one(frontend, 0, 64, i);
}

TEST_F(RingStateTest, WithoutProtocolFeaturesSetFeaturesEnablesTheRings) {
  TestFrontend frontend = connect();
  DeviceOptions options;
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

TEST_F(RingStateTest, GetVringBaseStopsTheRingAndSetVringBaseResumesIt) {
  TestFrontend frontend = connect();
  DeviceOptions options;
  frontend.setup_device(options);

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
  EXPECT_EQ(base, kFirst) << "GET_VRING_BASE must return the next avail index";
  EXPECT_EQ(base, driver_avail_idx(frontend, 0));
  EXPECT_FALSE(report(0).started);
  EXPECT_FALSE(report(0).polled);

  // Stopped: a new chain (and kick) is left alone.
  std::vector<PendingEcho> pending{push_echo(frontend, 0, random_chain(rng, 1500, false))};
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_EQ(device_used_idx(frontend, 0), static_cast<std::uint16_t>(kFirst)) << "the stopped ring was processed";
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
  EXPECT_EQ(device_used_idx(frontend, 0), static_cast<std::uint16_t>(kFirst + 101));
  EXPECT_EQ(frontend.get_vring_base(0), kFirst + 101);
}

TEST_F(RingStateTest, SetVringBaseResumesAtAnArbitraryIndex) {
  // A ring handed over by a previous backend: both indexes already at 65530, about to wrap.
  TestFrontend frontend = connect();
  DeviceOptions options;
  frontend.negotiate(options);
  frontend.send_memory(options);
  frontend.setup_ring(0, options);
  frontend.setup_ring(1, options);
  constexpr std::uint16_t kStart = 65530;
  frontend.ring(0).start_at(kStart);
  frontend.set_vring_base(0, kStart);
  for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 100, i));
  EXPECT_EQ(device_used_idx(frontend, 0), static_cast<std::uint16_t>(kStart + 20));
  EXPECT_EQ(frontend.get_vring_base(0), static_cast<std::uint16_t>(kStart + 20));
}

TEST_F(RingStateTest, ResetDeviceStopsRingsAndTheDeviceCanBeSetUpAgain) {
  TestFrontend frontend = connect();
  frontend.setup_device();
  for (int i = 0; i < 10; ++i) echo_one(frontend, 0, 64, i);
  frontend.reset_device();
  EXPECT_FALSE(report(0).started);
  EXPECT_FALSE(report(0).polled);
  // Features again, then fresh rings in the same memory, from index 0.
  DeviceOptions options;
  const std::uint64_t offered = frontend.get_features();
  frontend.set_features((offered & options.feature_mask) | kVhostUserFProtocolFeatures);
  frontend.setup_ring(0, options);
  frontend.setup_ring(1, options);
  for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 64, i));
  for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(echo_one(frontend, 1, 64, i));
}

}  // namespace
}  // namespace vhostd::test
