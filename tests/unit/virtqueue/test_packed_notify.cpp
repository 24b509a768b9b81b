// Packed-ring event suppression in both directions: the driver area (ENABLE / DISABLE / DESC
// with EVENT_IDX) deciding used buffer notifications, the device area deciding kicks, across
// the wrap of the ring, and the call eventfd actually being written.
#include <gtest/gtest.h>

#include "packed_harness.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint16_t off_wrap(std::uint16_t slot, bool wrap) {
  return static_cast<std::uint16_t>(slot | (wrap ? kPackedWrapBit : 0));
}

// The definition, slot by slot: was the event's position among the `written` positions before
// (new_idx, new_wrap)?
bool need_event_by_walking(std::uint16_t event, std::uint16_t new_idx, bool new_wrap, std::uint32_t written,
                           std::uint32_t size) {
  std::uint32_t idx = new_idx;
  bool wrap = new_wrap;
  for (std::uint32_t k = 0; k < written; ++k) {
    if (idx == 0) {
      idx = size;
      wrap = !wrap;
    }
    --idx;
    if (idx == (event & kPackedIdxMask) && wrap == ((event & kPackedWrapBit) != 0)) return true;
  }
  return false;
}

TEST(PackedNeedEvent, WrapAwareMath) {
  constexpr std::uint32_t S = 8;
  EXPECT_TRUE(packed_need_event(off_wrap(5, true), 6, true, 3, S));    // wrote 3, 4, 5
  EXPECT_FALSE(packed_need_event(off_wrap(5, true), 5, true, 2, S));   // reached, not passed
  EXPECT_TRUE(packed_need_event(off_wrap(7, true), 1, false, 3, S));   // 6, 7 | 0 across the wrap
  EXPECT_TRUE(packed_need_event(off_wrap(0, false), 1, false, 1, S));  // slot 0 of the next lap
  EXPECT_FALSE(packed_need_event(off_wrap(0, false), 0, false, 2, S));
  EXPECT_FALSE(packed_need_event(off_wrap(2, true), 5, false, 3, S)) << "a lap behind";
  EXPECT_FALSE(packed_need_event(off_wrap(2, false), 5, true, 3, S)) << "a lap ahead";
  EXPECT_TRUE(packed_need_event(off_wrap(2, false), 2, true, 2 * S, S)) << "a whole cycle went by";
  EXPECT_FALSE(packed_need_event(off_wrap(5, true), 6, true, 0, S));
}

TEST(PackedNeedEvent, AgreesWithTheDefinitionEverywhere) {
  for (std::uint32_t size : {1u, 6u, 8u}) {
    for (std::uint32_t ev = 0; ev < 2 * size; ++ev) {
      const auto event = off_wrap(static_cast<std::uint16_t>(ev % size), ev < size);
      for (std::uint32_t now = 0; now < 2 * size; ++now) {
        for (std::uint32_t written = 0; written <= 2 * size; ++written) {
          const auto idx = static_cast<std::uint16_t>(now % size);
          const bool wrap = now < size;
          ASSERT_EQ(packed_need_event(event, idx, wrap, written, size),
                    need_event_by_walking(event, idx, wrap, written, size))
              << "size " << size << " event " << ev << " now " << now << " written " << written;
        }
      }
    }
  }
}

struct CallHarness : PackedHarness {
  explicit CallHarness(bool event_idx, std::uint32_t size = 16)
      : PackedHarness(size, {{0, kMiB}}, event_idx), call(make_eventfd()), buf(buffer(64)) {
    queue.set_call_fd(call.get());
  }
  // Calls notify() and checks its answer against what the eventfd really saw.
  bool notify() {
    const bool due = queue.notify();
    EXPECT_EQ(eventfd_drain(call.get()), due) << "notify() result and the call eventfd disagree";
    return due;
  }
  // Pushes `n` chains of `slots` descriptors through the device and publishes them (no notify).
  void complete(int n, std::uint32_t slots = 1) {
    for (int i = 0; i < n; ++i) ring->add_chain(std::vector<DriverBuffer>(slots, DriverBuffer{buf, 16, true}));
    ASSERT_GT(queue.poll(), 0);
    DescriptorChain chain;
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(queue.pop(chain));
      queue.push_used(chain.head, 16);
    }
    queue.flush_used();
    while (ring->pop_used()) {
    }
  }
  UniqueFd call;
  std::uint64_t buf;
};

TEST(PackedQueueNotify, EnableAndDisableWithoutEventIdx) {
  CallHarness h(false);
  EXPECT_FALSE(h.notify()) << "nothing used yet";
  h.complete(1);
  EXPECT_TRUE(h.notify());
  EXPECT_FALSE(h.notify()) << "nothing new was used";
  h.ring->set_used_events(kRingEventFlagsDisable);
  h.complete(1);
  EXPECT_FALSE(h.notify());
  h.ring->set_used_events(kRingEventFlagsEnable);
  h.complete(2);
  EXPECT_TRUE(h.notify());
  // DESC is only valid with EVENT_IDX: without it the device notifies as for ENABLE.
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(12, true));
  h.complete(1);
  EXPECT_TRUE(h.notify());
  EXPECT_EQ(h.queue.stats().notifications.load(), 3u);
}

TEST(PackedQueueNotify, EventIdxSignalsOnlyWhenTheEventSlotIsUsed) {
  CallHarness h(true);
  h.complete(1);  // slot 0
  EXPECT_TRUE(h.notify()) << "the first notification is always due";
  EXPECT_FALSE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(5, true));
  h.complete(2);  // slots 1, 2
  EXPECT_FALSE(h.notify());
  h.complete(2);  // 3, 4: reached 5, not passed
  EXPECT_FALSE(h.notify());
  h.complete(1);  // 5
  EXPECT_TRUE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(8, true));
  h.complete(3);  // 6, 7, 8: the event in the middle of the batch
  EXPECT_TRUE(h.notify());
  // A chain whose used element is written at slot 9 but takes 9, 10, 11: an event on a slot
  // it skips fires with it.
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(10, true));
  h.complete(1, 3);
  EXPECT_TRUE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDisable);
  h.complete(1);
  EXPECT_FALSE(h.notify());
  h.ring->set_used_events(kRingEventFlagsEnable);
  h.complete(1);
  EXPECT_TRUE(h.notify());
  EXPECT_EQ(h.queue.stats().notifications.load(), 5u);
}

TEST(PackedQueueNotify, EventIdxAcrossTheWrapOfTheRing) {
  CallHarness h(true, 8);
  h.ring->start_at(6, true);
  h.queue.set_vring_base(off_wrap(6, true));
  EXPECT_FALSE(h.notify()) << "nothing used yet";
  h.complete(1);  // slot 6
  EXPECT_TRUE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(0, false));  // slot 0 of the next lap
  h.complete(1);  // 7
  EXPECT_FALSE(h.notify());
  h.complete(1);  // 0, wrap 0
  EXPECT_TRUE(h.notify());
  EXPECT_FALSE(h.queue.used_wrap());
  // An event already behind (slot 1 of the lap just finished) is due only when slot 1 comes
  // round with wrap 1 again.
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(1, true));
  for (int i = 0; i < 8; ++i) {  // slots 1..7 with wrap 0, then 0 with wrap 1
    h.complete(1);
    EXPECT_FALSE(h.notify()) << i;
  }
  h.complete(1);  // slot 1, wrap 1
  EXPECT_TRUE(h.notify());
  EXPECT_TRUE(h.queue.used_wrap());
}

TEST(PackedQueueNotify, NoCallFdStillReportsDue) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(16);
  h.ring->add_chain({{buf, 16, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  h.complete(chain.head, 0);
  EXPECT_TRUE(h.queue.notify());
  EXPECT_EQ(h.queue.stats().notifications.load(), 1u);
}

TEST(PackedQueueKicks, DisableAndEnableWithoutEventIdx) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(16);
  ASSERT_EQ(h.queue.poll(), 0);
  h.queue.disable_notifications();
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsDisable);
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_FALSE(h.ring->kick_needed());
  EXPECT_TRUE(h.queue.enable_notifications()) << "a descriptor arrived while disabled";
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsEnable);
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_FALSE(h.queue.enable_notifications());
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_TRUE(h.ring->kick_needed());
}

TEST(PackedQueueKicks, EventIdxOffsetFollowsPopsOnlyWhileEnabled) {
  PackedHarness h(8, {{0, kMiB}}, true);
  const std::uint64_t buf = h.buffer(16);
  ASSERT_EQ(h.queue.poll(), 0);
  EXPECT_FALSE(h.queue.enable_notifications()) << "nothing pending";
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsDesc);
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(0, true));
  h.ring->add_chain({{buf, 16, true}});
  EXPECT_TRUE(h.ring->kick_needed()) << "slot 0 is the one the device asked about";
  h.ring->add_chain({{buf, 16, true}, {buf, 16, true}});
  EXPECT_FALSE(h.ring->kick_needed()) << "the device has not caught up: no second kick";
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(3, true)) << "pop keeps the offset published";

  h.queue.disable_notifications();
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsDisable);
  h.ring->add_chain({{buf, 16, true}, {buf, 16, true}, {buf, 16, true}});  // slots 3, 4, 5
  EXPECT_FALSE(h.ring->kick_needed());
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(3, true)) << "disabled: left stale";

  // Across the end of the ring: the next avail slot is 0 of the second lap.
  h.ring->add_chain({{buf, 16, true}, {buf, 16, true}});  // slots 6, 7
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_FALSE(h.queue.enable_notifications());
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsDesc);
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(0, false));
}

TEST(PackedQueueKicks, DriverKicksForTheSlotTheDeviceNamesAfterAWrap) {
  PackedHarness h(8, {{0, kMiB}}, true);
  const std::uint64_t buf = h.buffer(16);
  h.ring->start_at(6, false);
  h.queue.set_vring_base(off_wrap(6, false));
  ASSERT_EQ(h.queue.poll(), 0);
  EXPECT_FALSE(h.queue.enable_notifications());
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(6, false));
  h.ring->add_chain({{buf, 16, true}, {buf, 16, true}, {buf, 16, true}});  // 6, 7 | 0 (wrap 1)
  EXPECT_TRUE(h.ring->kick_needed());
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(h.ring->device_event().off_wrap, off_wrap(1, true));
  h.ring->add_chain({{buf, 16, true}});  // slot 1, wrap 1
  EXPECT_TRUE(h.ring->kick_needed());
}

// The control lcore disables kicks when it hands a ring to a poller, before the ring areas are
// translated (that happens at the first poll): the flag must still reach the guest.
TEST(PackedQueueKicks, DisableRequestedBeforeTheFirstPollIsApplied) {
  PackedHarness h(16);
  h.queue.disable_notifications();
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsEnable) << "not translated yet";
  ASSERT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.ring->device_event().flags, kRingEventFlagsDisable);
}

}  // namespace
}  // namespace vhostd::test
