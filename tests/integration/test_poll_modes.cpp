// vhostd integration tests: the pollers' interrupt and adaptive modes (PollerOptions).
//
// The echo daemon's poller sleeps in epoll once its rings are idle; the test frontend plays a
// guest that honours the device's notification suppression exactly (it kicks only when the
// ring says a kick is needed, as Linux and DPDK drivers do). A wake-up lost between the
// poller's last look at a ring and its sleep leaves a request uncompleted, which fails the test.
#include <gtest/gtest.h>

#include <random>
#include <tuple>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kEventIdx = 1ull << 29;

using ModeParam = std::tuple<RingLayout, PollMode>;

class PollModeTest : public DaemonTest, public ::testing::WithParamInterface<ModeParam> {
 protected:
  void SetUp() override {
    poller_options_.mode = std::get<1>(GetParam());
    poller_options_.idle_threshold = 20us;
    DaemonTest::SetUp();
  }

  DeviceOptions options() const {
    DeviceOptions o;
    o.packed = std::get<0>(GetParam()) == RingLayout::packed;
    return o;
  }

  const PollerStats& stats() { return runtime_->poller(0).stats(); }
  bool asleep() { return stats().sleeping.load(std::memory_order_relaxed); }
  // Waits until the poller sleeps with notifications on for every ring in `rings`, and stays
  // so across a 2 ms look (a poller that was just handed a new poll list may pass through a
  // sleep it leaves at once; only a settled sleep says the guest must kick).
  bool wait_settled_asleep(TestFrontend& frontend, std::initializer_list<std::size_t> rings) {
    const bool event_idx = (frontend.acked_features() & kEventIdx) != 0;
    auto armed = [&] {
      if (!asleep()) return false;
      for (std::size_t ring : rings) {
        if (!frontend.ring(ring).device_wants_kick(event_idx)) return false;
      }
      return true;
    };
    return wait_until([&] {
      if (!armed()) return false;
      const std::uint64_t sleeps = stats().sleeps.load();
      std::this_thread::sleep_for(2ms);
      return armed() && stats().sleeps.load() == sleeps;
    });
  }

  // Publishes `count` echo requests on `ring` and kicks only if the device asked for a kick.
  // Returns whether it kicked.
  bool publish(TestFrontend& frontend, std::size_t ring, std::size_t count, std::uint32_t seed,
               std::vector<PendingEcho>& pending) {
    for (std::size_t i = 0; i < count; ++i) {
      EchoChain chain;
      const std::uint32_t size = 16 + (seed + static_cast<std::uint32_t>(i)) % 200;
      chain.request.resize(size);
      for (std::uint32_t b = 0; b < size; ++b) chain.request[b] = static_cast<std::uint8_t>(seed * 31 + i * 7 + b);
      chain.readable_sizes = {size};
      chain.writable_sizes = {size};
      pending.push_back(push_echo(frontend, ring, chain));
    }
    const bool kick = frontend.ring(ring).kick_needed((frontend.acked_features() & kEventIdx) != 0);
    if (kick) frontend.kick(ring);
    return kick;
  }
};

// Every burst finds the poller asleep: the device must have asked for a kick (notifications
// on), and the kick must wake it.
TEST_P(PollModeTest, SleepsWhenIdleAndWakesForEveryBurst) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  constexpr int kRounds = 40;
  for (int round = 0; round < kRounds; ++round) {
    const std::size_t ring = round % 2;
    ASSERT_TRUE(wait_settled_asleep(frontend, {ring}))
        << "round " << round << ": the poller never went to sleep";
    const std::uint64_t sleeps_before = stats().sleeps.load();
    std::vector<PendingEcho> pending;
    EXPECT_TRUE(publish(frontend, ring, 1 + round % 8, round, pending))
        << "round " << round << ": the sleeping poller did not ask the guest for a kick";
    ASSERT_NO_THROW(complete_echoes(frontend, ring, pending)) << "round " << round;
    EXPECT_GT(stats().sleeps.load(), sleeps_before) << "round " << round << ": the poller did not wake from its sleep";
  }
  EXPECT_GE(stats().sleeps.load(), static_cast<std::uint64_t>(kRounds));
}

constexpr int kBursts = 20000;

// Bursts separated by gaps of 0 to 60 us (the idle threshold is 20 us), several in flight:
// the poller keeps going to sleep while the guest publishes. Nothing may be lost.
TEST_P(PollModeTest, NoRequestLostWhenPublishesRaceTheSleep) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  std::mt19937 rng(1234);
  std::vector<PendingEcho> pending;
  std::uint64_t completed = 0;
  for (int burst = 0; burst < kBursts; ++burst) {
    publish(frontend, 0, 1 + rng() % 4, burst, pending);
    const auto gap = std::chrono::microseconds(rng() % 60);
    const auto until = std::chrono::steady_clock::now() + gap;
    while (std::chrono::steady_clock::now() < until) {
    }
    if (pending.size() >= 16 || rng() % 2 == 0) {
      completed += pending.size();
      ASSERT_NO_THROW(complete_echoes(frontend, 0, pending)) << "burst " << burst << ", "
                                                             << stats().sleeps.load() << " sleeps so far";
    }
  }
  completed += pending.size();
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  EXPECT_GT(completed, static_cast<std::uint64_t>(kBursts));
  // The test only means something if the poller did sleep in between.
  EXPECT_GT(stats().sleeps.load(), 100u);
  EXPECT_TRUE(frontend.ring(0).settled()) << frontend.ring(0).describe();
}

// Asleep, the data lcore does not loop at all until a guest kicks.
TEST_P(PollModeTest, IdlePollerStopsLooping) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  ASSERT_NO_THROW(echo_one(frontend, 0));
  ASSERT_TRUE(wait_settled_asleep(frontend, {0, 1}));
  const std::uint64_t loops = stats().loops.load();
  std::this_thread::sleep_for(100ms);
  EXPECT_TRUE(asleep());
  EXPECT_EQ(stats().loops.load(), loops) << "the poller looped while every ring was idle";
}

// A ring given without a kick fd (NOFD: the frontend expects polling) keeps the poller
// spinning; once it gets a kick fd again the poller may sleep again.
TEST_P(PollModeTest, RingWithoutKickFdKeepsThePollerSpinning) {
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  ASSERT_TRUE(wait_until([&] { return asleep(); }));
  frontend.set_vring_kick(0, -1);
  ASSERT_TRUE(wait_until([&] { return !asleep(); }));
  const std::uint64_t sleeps = stats().sleeps.load();
  for (int i = 0; i < 20; ++i) {
    std::vector<PendingEcho> pending;
    publish(frontend, 0, 2, i, pending);  // no kick fd: the poller must find them by polling
    ASSERT_NO_THROW(complete_echoes(frontend, 0, pending)) << "request " << i;
    std::this_thread::sleep_for(1ms);
  }
  EXPECT_EQ(stats().sleeps.load(), sleeps) << "the poller slept although a ring has no kick fd";
  EXPECT_FALSE(asleep());

  frontend.set_vring_kick(0, frontend.ring_fds(0).kick.get());
  ASSERT_TRUE(wait_settled_asleep(frontend, {0}))
      << "the poller kept spinning after the kick fd came back";
  std::vector<PendingEcho> pending;
  EXPECT_TRUE(publish(frontend, 0, 3, 99, pending));
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
}

// A frontend that goes away while the poller sleeps, and one that comes back: the new rings
// are handed to the sleeping poller, which must wake up to poll them.
TEST_P(PollModeTest, ReconnectWhileAsleep) {
  for (int connection = 0; connection < 3; ++connection) {
    TestFrontend frontend = connect();
    frontend.setup_device(options());
    ASSERT_TRUE(wait_settled_asleep(frontend, {1}));
    std::vector<PendingEcho> pending;
    EXPECT_TRUE(publish(frontend, 1, 5, connection, pending));
    ASSERT_NO_THROW(complete_echoes(frontend, 1, pending)) << "connection " << connection;
    ASSERT_TRUE(wait_until([&] { return asleep(); }));
    frontend.close();
    ASSERT_TRUE(wait_disconnected());
  }
}

std::string mode_param_name(const ::testing::TestParamInfo<ModeParam>& info) {
  return std::string(to_string(std::get<0>(info.param))) + "_" + to_string(std::get<1>(info.param));
}

// A data lcore makes its held calls (call coalescing) before it sleeps: a guest waiting for its
// interrupt is not left waiting for the delay, or for ever once no traffic comes.
TEST_P(PollModeTest, HeldCallsAreMadeBeforeThePollerSleeps) {
  backend_->set_call_coalescing({0, std::chrono::hours(1)});
  TestFrontend frontend = connect();
  frontend.setup_device(options());
  for (int round = 0; round < 5; ++round) {
    ASSERT_TRUE(wait_settled_asleep(frontend, {0})) << "round " << round;
    frontend.drain_call(0);
    // Interrupt me at the next used element: set before publishing (set after the completions,
    // it would point past them and rightly suppress the call still held for them).
    frontend.ring(0).set_used_event(0);
    const std::uint64_t sleeps = stats().sleeps.load();
    std::vector<PendingEcho> pending;
    publish(frontend, 0, 4, round, pending);
    ASSERT_NO_THROW(complete_echoes(frontend, 0, pending)) << "round " << round;
    EXPECT_TRUE(frontend.wait_call(0, 2s)) << "round " << round << ": the held call was not made";
    EXPECT_TRUE(wait_until([&] { return stats().sleeps.load() > sleeps; })) << "round " << round;
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, PollModeTest,
                         ::testing::Combine(::testing::Values(RingLayout::split, RingLayout::packed),
                                            ::testing::Values(PollMode::interrupt, PollMode::adaptive)),
                         mode_param_name);

// Busy mode (the default) never sleeps: the lcore spins with the rings idle.
TEST_F(DaemonTest, BusyPollerNeverSleeps) {
  TestFrontend frontend = connect();
  frontend.setup_device();
  ASSERT_NO_THROW(echo_one(frontend, 0));
  const std::uint64_t loops = runtime_->poller(0).stats().loops.load();
  std::this_thread::sleep_for(20ms);
  EXPECT_GT(runtime_->poller(0).stats().loops.load(), loops);
  EXPECT_EQ(runtime_->poller(0).stats().sleeps.load(), 0u);
  EXPECT_FALSE(runtime_->poller(0).stats().sleeping.load());
}

TEST(PollModeNames, ParseAndPrint) {
  for (PollMode mode : {PollMode::busy, PollMode::interrupt, PollMode::adaptive}) {
    EXPECT_EQ(parse_poll_mode(to_string(mode)), mode);
  }
  EXPECT_THROW(parse_poll_mode("polling"), Error);
  EXPECT_THROW(parse_poll_mode(""), Error);
}

}  // namespace
}  // namespace vhostd::test
