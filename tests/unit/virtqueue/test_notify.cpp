// Notification suppression in both directions: used_event / NO_INTERRUPT for calls, avail_event /
// NO_NOTIFY for kicks, and the call eventfd actually being written.
#include <gtest/gtest.h>

#include "ring_harness.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd::test {
namespace {

// Pushes `n` chains through the device and publishes them as used (no notify).
void complete(RingHarness& h, int n) {
  const std::uint64_t buf = h.buffer(16);
  for (int i = 0; i < n; ++i) h.ring->add_chain({{buf, 16, true}});
  ASSERT_EQ(h.queue.poll(), n);
  DescriptorChain chain;
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(h.queue.pop(chain));
    h.queue.push_used(chain.head, 16);
  }
  h.queue.flush_used();
  while (h.ring->pop_used()) {
  }
}

struct CallHarness : RingHarness {
  explicit CallHarness(bool event_idx) : RingHarness(16, {{0, kMiB}}, event_idx), call(make_eventfd()) {
    queue.set_call_fd(call.get());
  }
  // Calls notify() and checks its answer against what the eventfd really saw.
  bool notify() {
    const bool due = queue.notify();
    EXPECT_EQ(eventfd_drain(call.get()), due) << "notify() result and the call eventfd disagree";
    return due;
  }
  UniqueFd call;
};

TEST(VringNeedEvent, SixteenBitWrapMath) {
  EXPECT_TRUE(vring_need_event(5, 6, 3));     // crossed 5
  EXPECT_FALSE(vring_need_event(5, 5, 3));    // reached, not passed
  EXPECT_FALSE(vring_need_event(5, 3, 1));
  EXPECT_TRUE(vring_need_event(2, 4, 0));     // crossed in the middle of a batch
  EXPECT_TRUE(vring_need_event(65535, 0, 65534));  // across the wrap
  EXPECT_FALSE(vring_need_event(0, 0, 65535));
  EXPECT_TRUE(vring_need_event(0, 1, 0));
  EXPECT_TRUE(vring_need_event(65534, 2, 65530));
  EXPECT_FALSE(vring_need_event(3, 2, 65530));
}

TEST(SplitQueueNotify, EventIdxSignalsOnlyWhenUsedEventIsCrossed) {
  CallHarness h(true);
  complete(h, 1);
  EXPECT_TRUE(h.notify()) << "the first notification is always due";
  EXPECT_FALSE(h.notify()) << "nothing new was used";
  h.ring->set_used_event(5);
  complete(h, 2);  // used idx 3
  EXPECT_FALSE(h.notify());
  complete(h, 2);  // 5: reached but not passed
  EXPECT_FALSE(h.notify());
  complete(h, 1);  // 6: passed 5
  EXPECT_TRUE(h.notify());
  h.ring->set_used_event(7);
  complete(h, 3);  // 6 -> 9 passes 7 in the middle of the batch
  EXPECT_TRUE(h.notify());
  EXPECT_EQ(h.queue.stats().notifications.load(), 3u);
}

TEST(SplitQueueNotify, EventIdxAcrossTheIndexWrap) {
  CallHarness h(true);
  h.ring->start_at(65534);
  h.queue.set_last_avail_idx(65534);
  EXPECT_FALSE(h.notify()) << "nothing used yet";
  complete(h, 1);  // used 65535
  EXPECT_TRUE(h.notify());
  h.ring->set_used_event(0);
  complete(h, 1);  // used 0: reached 0, not passed
  EXPECT_FALSE(h.notify());
  complete(h, 1);  // used 1: passed 0
  EXPECT_TRUE(h.notify());
  h.ring->set_used_event(65535);  // already behind: not due until the index comes around
  complete(h, 1);
  EXPECT_FALSE(h.notify());
}

TEST(SplitQueueNotify, NoInterruptIsHonouredWithoutEventIdx) {
  CallHarness h(false);
  h.ring->set_used_event(0);  // ignored without EVENT_IDX
  complete(h, 1);
  EXPECT_TRUE(h.notify());
  h.ring->set_no_interrupt(true);
  complete(h, 1);
  EXPECT_FALSE(h.notify());
  h.ring->set_no_interrupt(false);
  complete(h, 1);
  EXPECT_TRUE(h.notify());
  EXPECT_FALSE(h.notify()) << "nothing new was used";
  EXPECT_EQ(h.queue.stats().notifications.load(), 2u);
}

TEST(SplitQueueNotify, NoCallFdStillReportsDue) {
  RingHarness h(16);
  complete(h, 1);
  EXPECT_TRUE(h.queue.notify());
  EXPECT_EQ(h.queue.stats().notifications.load(), 1u);
}

TEST(SplitQueueKicks, EventIdxAvailEventFollowsPopsOnlyWhileEnabled) {
  RingHarness h(16, {{0, kMiB}}, true);
  const std::uint64_t buf = h.buffer(16);
  ASSERT_EQ(h.queue.poll(), 0);
  // A junk avail_event proves enable_notifications() writes it.
  reinterpret_cast<std::uint16_t*>(h.ring->host() + DriverRing::used_offset(16) + 4 + 8 * 16)[0] = 0xffff;
  EXPECT_FALSE(h.queue.enable_notifications()) << "nothing pending";
  EXPECT_EQ(h.ring->avail_event(), 0);
  h.ring->add_chain({{buf, 16, true}});
  h.ring->add_chain({{buf, 16, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(h.ring->avail_event(), 2) << "pop keeps avail_event published while enabled";

  h.queue.disable_notifications();
  const std::uint16_t old = h.ring->avail_idx();
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_TRUE(h.ring->kick_needed(old, true)) << "the driver kicks for entry avail_event";
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(h.ring->avail_event(), 2) << "disabled: avail_event is left stale";
  const std::uint16_t old2 = h.ring->avail_idx();
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_FALSE(h.ring->kick_needed(old2, true)) << "stale avail_event: no further kicks";

  EXPECT_TRUE(h.queue.enable_notifications()) << "an entry arrived while disabled";
  EXPECT_EQ(h.ring->avail_event(), 3);
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_FALSE(h.queue.enable_notifications());
  EXPECT_EQ(h.ring->avail_event(), 4);
}

TEST(SplitQueueKicks, NoNotifyFlagWithoutEventIdx) {
  RingHarness h(16);
  const std::uint64_t buf = h.buffer(16);
  ASSERT_EQ(h.queue.poll(), 0);
  h.queue.disable_notifications();
  EXPECT_EQ(h.ring->used_flags() & kVringUsedFNoNotify, kVringUsedFNoNotify);
  std::uint16_t old = h.ring->avail_idx();
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_FALSE(h.ring->kick_needed(old, false));
  EXPECT_TRUE(h.queue.enable_notifications()) << "an entry arrived while disabled";
  EXPECT_EQ(h.ring->used_flags() & kVringUsedFNoNotify, 0);
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_FALSE(h.queue.enable_notifications());
  old = h.ring->avail_idx();
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_TRUE(h.ring->kick_needed(old, false));
}

// The control lcore disables kicks when it hands a ring to a poller, before the ring areas
// are translated (that happens at the first poll): the flag must still reach the guest.
TEST(SplitQueueKicks, NoNotifyRequestedBeforeTheFirstPollIsApplied) {
  RingHarness h(16);
  h.queue.disable_notifications();
  EXPECT_EQ(h.ring->used_flags() & kVringUsedFNoNotify, 0) << "not translated yet";
  ASSERT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.ring->used_flags() & kVringUsedFNoNotify, kVringUsedFNoNotify);
}

// A replaced memory table is noticed by generation, and the ring keeps working on it.
TEST(SplitQueueMemory, TableReplacedTwiceWhileIdleIsRetranslated) {
  RingHarness h(16);
  ASSERT_EQ(h.queue.poll(), 0);
  for (int i = 0; i < 2; ++i) h.guest->install(h.memory);  // two swaps, no poll between
  const std::uint64_t buf = h.buffer(16);
  h.ring->add_chain({{buf, 16, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.writable_bytes, 16u);
  EXPECT_EQ(h.queue.table(), h.memory.current());
}

}  // namespace
}  // namespace vhostd::test
