// Call coalescing (call_coalescing.hpp): DeferredCalls on its own, and notify() of both ring
// layouts holding calls on the calling thread's list, making them by count, by time, or when
// the list is flushed, and still only when the guest asked for a call.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "packed_harness.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd::test {
namespace {

using namespace std::chrono_literals;

// ---- DeferredCalls ----

struct FakeQueue {
  int calls = 0;
  static void signal(void* queue) noexcept { ++static_cast<FakeQueue*>(queue)->calls; }
};

TEST(DeferredCalls, FlushDueMakesOnlyTheCallsWhoseTimeHasCome) {
  DeferredCalls list;
  FakeQueue soon, late;
  ASSERT_TRUE(list.add(&soon, &FakeQueue::signal, 1us));
  ASSERT_TRUE(list.add(&late, &FakeQueue::signal, std::chrono::microseconds(std::chrono::hours(1))));
  std::this_thread::sleep_for(2ms);
  list.flush_due();
  EXPECT_EQ(soon.calls, 1);
  EXPECT_EQ(late.calls, 0);
  EXPECT_EQ(list.size(), 1u);
  list.flush_all();
  EXPECT_EQ(late.calls, 1);
  EXPECT_EQ(soon.calls, 1) << "a flushed entry was called twice";
  EXPECT_TRUE(list.empty());
}

TEST(DeferredCalls, AFullListRefusesAndTheCallerCallsAtOnce) {
  DeferredCalls list;
  std::vector<FakeQueue> queues(DeferredCalls::kCapacity + 1);
  for (std::size_t i = 0; i < DeferredCalls::kCapacity; ++i) ASSERT_TRUE(list.add(&queues[i], &FakeQueue::signal, 1s));
  EXPECT_FALSE(list.add(&queues.back(), &FakeQueue::signal, 1s));
  list.flush_all();
  for (std::size_t i = 0; i < DeferredCalls::kCapacity; ++i) EXPECT_EQ(queues[i].calls, 1) << i;
  EXPECT_EQ(queues.back().calls, 0);
}

TEST(DeferredCalls, EachThreadHasItsOwnList) {
  DeferredCalls list;
  DeferredCalls::install(&list);
  EXPECT_EQ(DeferredCalls::current(), &list);
  DeferredCalls* other_thread = &list;
  std::thread([&] { other_thread = DeferredCalls::current(); }).join();
  EXPECT_EQ(other_thread, nullptr);
  DeferredCalls::install(nullptr);
  EXPECT_EQ(DeferredCalls::current(), nullptr);
}

// ---- notify() with coalescing, both layouts ----

// A ring of either layout with a call eventfd, its guest asking for every call (no EVENT_IDX,
// interrupts on) unless a test says otherwise.
template <typename Harness>
struct CoalescedRing : Harness {
  explicit CoalescedRing(bool event_idx = false)
      : Harness(64, {{0, kMiB}}, event_idx), call(make_eventfd()), buf(this->buffer(64)) {
    this->queue.set_call_fd(call.get());
  }
  // Pushes `n` chains through the device, publishes them and calls notify(); returns its answer.
  bool complete(int n) {
    for (int i = 0; i < n; ++i) this->ring->add_chain({DriverBuffer{buf, 16, true}});
    EXPECT_EQ(this->queue.poll(), n);
    DescriptorChain chain;
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(this->queue.pop(chain));
      this->queue.push_used(chain.head, 16);
    }
    this->queue.flush_used();
    while (this->ring->pop_used()) {
    }
    return this->queue.notify();
  }
  // The guest's interrupt switch (split: NO_INTERRUPT; packed: ENABLE / DISABLE).
  void guest_interrupts(bool on) {
    if constexpr (std::is_same_v<Harness, PackedHarness>) {
      this->ring->set_used_events(on ? kRingEventFlagsEnable : kRingEventFlagsDisable);
    } else {
      this->ring->set_no_interrupt(!on);
    }
  }
  // Whether the call eventfd was written since the last look.
  bool called() { return eventfd_drain(call.get()); }
  std::uint64_t calls() { return this->queue.stats().notifications.load(); }

  UniqueFd call;
  std::uint64_t buf;
};

template <typename Harness>
class CallCoalescingTest : public ::testing::Test {
 protected:
  void SetUp() override { DeferredCalls::install(&list_); }
  void TearDown() override {
    list_.flush_all();  // while r_ still exists: a listed ring must outlive its entry
    DeferredCalls::install(nullptr);
  }
  DeferredCalls list_;
  CoalescedRing<Harness> r_;
};

TYPED_TEST_SUITE(CallCoalescingTest, BothLayouts, LayoutName);

TYPED_TEST(CallCoalescingTest, OffByDefaultEveryDueCallIsMadeAtOnce) {
  auto& r = this->r_;
  EXPECT_FALSE(r.queue.call_coalescing().enabled());
  for (int i = 0; i < 5; ++i) {
    EXPECT_TRUE(r.complete(1));
    EXPECT_TRUE(r.called());
  }
  EXPECT_TRUE(this->list_.empty());
  EXPECT_EQ(r.calls(), 5u);
}

TYPED_TEST(CallCoalescingTest, HeldCallsBecomeOneCallWhenTheListIsFlushed) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({0, 1h});
  for (int i = 0; i < 10; ++i) {
    EXPECT_FALSE(r.complete(1)) << "completion " << i << ": the call was not held";
    EXPECT_FALSE(r.called());
  }
  EXPECT_EQ(this->list_.size(), 1u) << "a ring is listed once, whatever it holds";
  this->list_.flush_due();
  EXPECT_FALSE(r.called()) << "made before its time";
  this->list_.flush_all();
  EXPECT_TRUE(r.called());
  EXPECT_EQ(r.calls(), 1u);
  this->list_.flush_all();
  EXPECT_FALSE(r.called()) << "a flushed call was made again";
  // Listed again by the next completion.
  EXPECT_FALSE(r.complete(2));
  EXPECT_EQ(this->list_.size(), 1u);
}

TYPED_TEST(CallCoalescingTest, TheCallIsMadeOnceItsDelayHasPassed) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({0, 1ms});
  EXPECT_FALSE(r.complete(3));
  std::this_thread::sleep_for(3ms);
  this->list_.flush_due();
  EXPECT_TRUE(r.called());
  EXPECT_EQ(r.calls(), 1u);
  EXPECT_TRUE(this->list_.empty());
}

TYPED_TEST(CallCoalescingTest, EnoughWaitingBuffersMakeTheCallAtOnce) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({4, 1h});
  EXPECT_FALSE(r.complete(1));
  EXPECT_FALSE(r.complete(2));
  EXPECT_FALSE(r.called());
  EXPECT_TRUE(r.complete(1)) << "4 buffers wait: the call is made by notify() itself";
  EXPECT_TRUE(r.called());
  // A burst of 4 or more at once is called at once too.
  EXPECT_TRUE(r.complete(6));
  EXPECT_TRUE(r.called());
  // The ring stayed listed; flushing it finds nothing new to call for.
  this->list_.flush_all();
  EXPECT_FALSE(r.called());
  EXPECT_EQ(r.calls(), 2u);
}

TYPED_TEST(CallCoalescingTest, AHeldCallIsStillOnlyMadeIfTheGuestWantsIt) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({0, 1h});
  EXPECT_FALSE(r.complete(1));
  r.guest_interrupts(false);
  this->list_.flush_all();
  EXPECT_FALSE(r.called()) << "the guest turned interrupts off while the call was held";
  r.guest_interrupts(true);
  EXPECT_FALSE(r.complete(1));
  this->list_.flush_all();
  EXPECT_TRUE(r.called());
  EXPECT_EQ(r.calls(), 1u);
}

TYPED_TEST(CallCoalescingTest, WithoutAListOnTheThreadCallsAreMadeAtOnce) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({0, 1h});
  DeferredCalls::install(nullptr);
  EXPECT_TRUE(r.complete(1)) << "the control lcore, or a device thread, has no list";
  EXPECT_TRUE(r.called());
  DeferredCalls::install(&this->list_);
}

TYPED_TEST(CallCoalescingTest, ResetTurnsCoalescingOff) {
  auto& r = this->r_;
  r.queue.set_call_coalescing({8, 50us});
  EXPECT_EQ(r.queue.call_coalescing(), (CallCoalescing{8, 50us}));
  r.queue.reset();
  EXPECT_FALSE(r.queue.call_coalescing().enabled());
}

TEST(VringStateCallCoalescing, AppliesToTheLayoutTheRingRuns) {
  VringState state;
  state.set_call_coalescing({16, 100us});
  EXPECT_EQ(state.call_coalescing(), (CallCoalescing{16, 100us}));
  state.set_layout(RingLayout::packed);  // a layout change resets both queues
  EXPECT_FALSE(state.call_coalescing().enabled());
  state.set_call_coalescing({0, 20us});
  EXPECT_EQ(state.packed_queue().call_coalescing(), (CallCoalescing{0, 20us}));
}

}  // namespace
}  // namespace vhostd::test
