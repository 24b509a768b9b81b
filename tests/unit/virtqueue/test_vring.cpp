// Vring: one interface over the three locking flavours.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "vhostd/base/fd.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd {
namespace {

constexpr int kThreads = 4;
constexpr int kIterations = 50000;

// Non-atomic read-modify-writes of the state: only exclusive access keeps every increment.
void hammer(Vring& vring) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&vring] {
      for (int i = 0; i < kIterations; ++i) {
        vring.with_mut([](VringState& state) {
          RingStats& stats = state.split_queue().stats();
          stats.add(stats.requests, 1);
          state.set_enabled(!state.enabled());
        });
      }
    });
  }
  for (auto& thread : threads) thread.join();
}

class VringLocked : public ::testing::TestWithParam<VringLocking> {};

TEST_P(VringLocked, WithMutFromManyThreadsGivesExactTotals) {
  Vring vring(GetParam());
  EXPECT_EQ(vring.locking(), GetParam());
  hammer(vring);
  const auto requests = vring.with_ref([](const VringState& state) { return state.split_queue().stats().requests.load(); });
  EXPECT_EQ(requests, static_cast<std::uint64_t>(kThreads) * kIterations);
  // An even number of toggles in total leaves the flag where it started.
  EXPECT_FALSE(vring.with_ref([](const VringState& state) { return state.enabled(); }));
}

INSTANTIATE_TEST_SUITE_P(Vring, VringLocked, ::testing::Values(VringLocking::mutex, VringLocking::rwlock));

// Two readers inside with_ref() at once: each waits (bounded) until it sees the other inside.
bool readers_overlap(Vring& vring) {
  std::atomic<int> inside{0};
  std::atomic<int> overlapped{0};
  auto reader = [&] {
    vring.with_ref([&](const VringState&) {
      inside.fetch_add(1);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
      while (inside.load() < 2 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
      if (inside.load() == 2) overlapped.fetch_add(1);
      return 0;
    });
  };
  std::thread a(reader), b(reader);
  a.join();
  b.join();
  return overlapped.load() == 2;
}

TEST(Vring, RwlockReadersShare) {
  Vring vring(VringLocking::rwlock);
  EXPECT_TRUE(readers_overlap(vring));
}

TEST(Vring, MutexReadersAreExclusive) {
  Vring vring(VringLocking::mutex);
  EXPECT_FALSE(readers_overlap(vring));
}

TEST(Vring, UnlockedSingleOwner) {
  Vring vring;
  EXPECT_EQ(vring.locking(), VringLocking::none);
  vring.with_mut([](VringState& state) { state.set_enabled(true); });
  EXPECT_TRUE(vring.unlocked().enabled());
  EXPECT_EQ(&vring.unlocked(), &vring.with_mut([](VringState& state) -> VringState& { return state; }));
}

TEST(Vring, StateResetDropsFdsAndConfiguration) {
  VringState state;
  state.set_call(make_eventfd());
  state.set_kick(make_eventfd());
  state.set_enabled(true);
  state.split_queue().set_size(64);
  state.split_queue().stats().add(state.split_queue().stats().requests, 3);
  const int before = count_open_fds();
  state.reset();
  EXPECT_EQ(count_open_fds(), before - 2);
  EXPECT_EQ(state.call_fd(), -1);
  EXPECT_FALSE(state.enabled());
  EXPECT_EQ(state.split_queue().size(), 0u);
  EXPECT_EQ(state.split_queue().stats().requests.load(), 3u);
}

}  // namespace
}  // namespace vhostd
