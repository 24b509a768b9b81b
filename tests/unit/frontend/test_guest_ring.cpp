// Unit tests for GuestRing (tests/frontend/guest_ring.hpp) over both driver rings, the device
// side played by the real SplitQueue / PackedQueue: chains in and used buffers out ({id, len},
// in order), IN_ORDER descriptor order and batched used elements (one per buffer either way),
// used_pending / in_flight / all_used / settled, and the interrupt and kick controls.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "guest_ring.hpp"
#include "vhostd/base/quiescence.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/packed_queue.hpp"
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint64_t kMiB = 1ull << 20;

template <typename Queue>
constexpr RingLayout layout_of() {
  return std::is_same_v<Queue, PackedQueue> ? RingLayout::packed : RingLayout::split;
}

// A GuestRing of `size` entries and the device queue attached to it.
template <typename Queue>
struct Harness {
  explicit Harness(std::uint32_t size = 16, bool in_order = false, bool device_in_order = false,
                   bool event_idx = false)
      : guest(TestGuestMemory::create({{0, kMiB}})) {
    guest->install(memory);
    ring = GuestRing::allocate(*guest, size, layout_of<Queue>(), in_order);
    queue.set_size(size);
    queue.set_addresses(ring->addresses());
    queue.set_memory(&memory);
    queue.set_event_idx(event_idx);
    queue.set_in_order(device_in_order);
  }

  // A readable chain of `readable` descriptors, plus one writable descriptor if `writable`.
  std::uint16_t add(std::uint32_t readable, bool writable) {
    std::vector<DriverBuffer> buffers;
    for (std::uint32_t i = 0; i < readable; ++i) buffers.push_back({guest->alloc(64, 16), 64, false});
    if (writable) buffers.push_back({guest->alloc(256, 16), 256, true});
    return ring->add_chain(buffers);
  }
  // Pops `n` chains on the device side (their heads / ids in pop order).
  std::vector<std::uint16_t> pop(std::size_t n) {
    std::vector<std::uint16_t> ids;
    DescriptorChain chain;
    while (ids.size() < n) {
      if (queue.poll() == 0) break;
      while (ids.size() < n && queue.pop(chain)) ids.push_back(chain.head);
    }
    EXPECT_EQ(ids.size(), n) << "device popped fewer chains than made available";
    return ids;
  }

  QsbrDomain domain;
  GuestMemory memory{domain};
  std::unique_ptr<TestGuestMemory> guest;
  std::unique_ptr<GuestRing> ring;
  Queue queue;
};

template <typename Queue>
class GuestRingTest : public ::testing::Test {};
using Queues = ::testing::Types<SplitQueue, PackedQueue>;
class QueueNames {
 public:
  template <typename T>
  static std::string GetName(int) {
    return std::is_same_v<T, PackedQueue> ? "packed" : "split";
  }
};
TYPED_TEST_SUITE(GuestRingTest, Queues, QueueNames);

TYPED_TEST(GuestRingTest, ChainsComeBackAsIdAndLenInOrder) {
  Harness<TypeParam> h;
  EXPECT_EQ(h.ring->layout(), layout_of<TypeParam>());
  std::vector<std::uint16_t> ids;
  for (std::uint32_t i = 0; i < 5; ++i) ids.push_back(h.add(1 + i % 3, true));
  EXPECT_EQ(h.ring->in_flight(), 5u);
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_FALSE(h.ring->all_used());
  const std::vector<std::uint16_t> popped = h.pop(5);
  EXPECT_EQ(popped, ids);
  for (std::size_t i = 0; i < 5; ++i) h.queue.push_used(popped[i], static_cast<std::uint32_t>(10 * i));
  h.queue.flush_used();
  EXPECT_EQ(h.ring->used_pending(), 5u);
  EXPECT_TRUE(h.ring->all_used());
  for (std::size_t i = 0; i < 5; ++i) {
    const std::optional<UsedBuffer> used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_EQ(used->id, ids[i]);
    EXPECT_EQ(used->len, 10 * i);
  }
  EXPECT_FALSE(h.ring->pop_used().has_value());
  EXPECT_EQ(h.ring->popped(), 5u);
  EXPECT_TRUE(h.ring->settled()) << h.ring->describe();
  EXPECT_EQ(h.ring->free_descriptors(), 16u) << "every descriptor / slot given back";
}

TYPED_TEST(GuestRingTest, InOrderBatchesComeBackOneBufferEach) {
  Harness<TypeParam> h(16, /*in_order=*/true, /*device_in_order=*/true);
  // Three read-only chains, then one with a writable buffer: the device may fold all four
  // into one used element (the last one's id and len).
  std::vector<std::uint16_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(h.add(2, false));
  ids.push_back(h.add(1, true));
  const std::vector<std::uint16_t> popped = h.pop(4);
  ASSERT_EQ(popped, ids);
  for (int i = 0; i < 3; ++i) h.queue.push_used(popped[i], 0);
  h.queue.push_used(popped[3], 77);
  h.queue.flush_used();

  EXPECT_EQ(h.ring->used_pending(), 4u) << "a batch counts for every buffer in it";
  EXPECT_TRUE(h.ring->all_used());
  for (int i = 0; i < 4; ++i) {
    const std::optional<UsedBuffer> used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_EQ(used->id, ids[i]) << i;
    EXPECT_EQ(used->len, i == 3 ? 77u : 0u) << i;
    EXPECT_EQ(h.ring->used_pending(), 3u - i);
  }
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_EQ(h.ring->batched_elements(), 1u) << "the device was expected to fold the run into one element";
  EXPECT_TRUE(h.ring->settled()) << h.ring->describe();
  EXPECT_EQ(h.ring->free_descriptors(), 16u);

  // Again across the end of the ring (16 entries: 3 x 3 descriptors from position 7 wrap).
  ids.clear();
  for (int i = 0; i < 3; ++i) ids.push_back(h.add(3, false));
  const std::vector<std::uint16_t> again = h.pop(3);
  ASSERT_EQ(again, ids);
  for (std::uint16_t id : again) h.queue.push_used(id, 0);
  h.queue.flush_used();
  for (int i = 0; i < 3; ++i) {
    const std::optional<UsedBuffer> used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_EQ(used->id, ids[i]);
    EXPECT_EQ(used->len, 0u);
  }
  EXPECT_EQ(h.ring->batched_elements(), 2u);
  EXPECT_TRUE(h.ring->settled()) << h.ring->describe();
}

TYPED_TEST(GuestRingTest, InOrderDriverWithADeviceThatDoesNotBatch) {
  Harness<TypeParam> h(8, /*in_order=*/true, /*device_in_order=*/false);
  std::uint64_t total = 0;
  for (int round = 0; round < 10; ++round) {  // 10 x 3 x 2 descriptors: wraps an 8-entry ring
    std::vector<std::uint16_t> ids;
    for (int i = 0; i < 3; ++i) ids.push_back(h.add(2, false));
    const std::vector<std::uint16_t> popped = h.pop(3);
    ASSERT_EQ(popped, ids) << "round " << round;
    for (std::uint16_t id : popped) h.queue.push_used(id, 0);
    h.queue.flush_used();
    EXPECT_EQ(h.ring->used_pending(), 3u);
    for (int i = 0; i < 3; ++i) EXPECT_EQ(h.ring->pop_used()->id, ids[i]) << "round " << round;
    total += 3;
  }
  EXPECT_EQ(h.ring->batched_elements(), 0u);
  EXPECT_EQ(h.ring->popped(), total);
  EXPECT_TRUE(h.ring->settled()) << h.ring->describe();
}

// The spec's IN_ORDER driver rule for split rings: descriptors in table order, wrapping at the
// end of the table (a free stack would hand out 2, 1, 0, 6 below).
TEST(GuestRingSplitTest, InOrderTakesDescriptorsInTableOrderAcrossTheEnd) {
  Harness<SplitQueue> h(8, /*in_order=*/true, /*device_in_order=*/true);
  DriverRing& ring = h.ring->split();
  EXPECT_EQ(h.add(2, true), 0);   // descriptors 0, 1, 2
  EXPECT_EQ(h.add(2, true), 3);   // 3, 4, 5
  EXPECT_EQ(ring.desc(0).next, 1);
  EXPECT_EQ(ring.desc(1).next, 2);
  const std::vector<std::uint16_t> popped = h.pop(2);
  h.queue.push_used(popped[0], 5);
  h.queue.flush_used();
  ASSERT_EQ(h.ring->pop_used()->id, 0);
  EXPECT_EQ(h.add(3, true), 6);   // 6, 7, 0, 1
  EXPECT_EQ(ring.desc(6).next, 7);
  EXPECT_EQ(ring.desc(7).next, 0);
  EXPECT_EQ(ring.desc(0).next, 1);
  EXPECT_EQ(ring.desc(1).flags & kVringDescFNext, 0);
  EXPECT_EQ(h.ring->free_descriptors(), 1u);
  // The device reads the wrapped chain like any other.
  const std::vector<std::uint16_t> next = h.pop(1);
  EXPECT_EQ(next, std::vector<std::uint16_t>{6});
  h.queue.push_used(popped[1], 0);
  h.queue.push_used(6, 9);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->pop_used()->id, 3);
  const std::optional<UsedBuffer> last = h.ring->pop_used();
  EXPECT_EQ(last->id, 6);
  EXPECT_EQ(last->len, 9u);
  EXPECT_TRUE(h.ring->settled()) << h.ring->describe();
}

// A batch naming a buffer the used idx does not cover is a device bug the driver reports.
TEST(GuestRingSplitTest, InOrderBatchBeyondTheUsedIdxThrows) {
  Harness<SplitQueue> h(8, /*in_order=*/true);
  h.add(1, false);
  const std::uint16_t second = h.add(1, false);
  DriverRing& ring = h.ring->split();
  // A hand-written used entry naming the second chain, with the used idx advanced by one only.
  VringUsedElem elem{second, 0};
  std::memcpy(ring.host() + DriverRing::used_offset(8) + 4, &elem, sizeof elem);
  std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(ring.host() + DriverRing::used_offset(8) + 2))
      .store(1, std::memory_order_release);
  EXPECT_THROW(h.ring->pop_used(), Error);
}

// Interrupt controls as the device reads them: split NO_INTERRUPT / used_event, packed
// DISABLE / ENABLE / DESC.
TYPED_TEST(GuestRingTest, InterruptControlsDecideTheDevicesNotify) {
  for (const bool event_idx : {false, true}) {
    SCOPED_TRACE(event_idx ? "EVENT_IDX" : "no EVENT_IDX");
    Harness<TypeParam> h(16, false, false, event_idx);
    auto complete_one = [&] {
      const std::uint16_t id = h.add(1, true);
      h.pop(1);
      h.queue.push_used(id, 1);
      h.queue.flush_used();
      const bool notified = h.queue.notify();
      EXPECT_EQ(h.ring->pop_used()->id, id);
      return notified;
    };
    EXPECT_TRUE(complete_one()) << "the first completion after start always notifies";
    if (event_idx) {
      h.ring->set_used_event(0);
      EXPECT_TRUE(complete_one()) << "event at the next used element";
      h.ring->set_used_event(2);  // split: 2 elements ahead; packed: 2 slots ahead (one 2-slot chain)
      const bool first = complete_one();
      if (layout_of<TypeParam>() == RingLayout::split) {
        EXPECT_FALSE(first);
        EXPECT_FALSE(complete_one());
        EXPECT_TRUE(complete_one());
      } else {
        EXPECT_FALSE(first) << "slots 0-1 of the next chain do not reach slot +2";
        EXPECT_TRUE(complete_one()) << "the chain over slots +2 and +3";
      }
    } else {
      h.ring->set_interrupts(false);
      EXPECT_FALSE(complete_one());
      EXPECT_FALSE(complete_one());
      h.ring->set_interrupts(true);
      EXPECT_TRUE(complete_one());
    }
  }
}

// Kicks: needed while the device leaves notifications on, not once it disables them.
TYPED_TEST(GuestRingTest, KickNeededFollowsTheDevice) {
  for (const bool event_idx : {false, true}) {
    SCOPED_TRACE(event_idx ? "EVENT_IDX" : "no EVENT_IDX");
    Harness<TypeParam> h(16, false, false, event_idx);
    h.queue.poll();  // translates the ring areas
    h.add(1, false);
    EXPECT_TRUE(h.ring->kick_needed(event_idx));
    h.pop(1);
    h.queue.disable_notifications();
    h.add(1, false);
    // Split with EVENT_IDX: the device disables by no longer advancing avail_event, which the
    // pop above left at this very entry: one last kick is due.
    const bool last_kick = event_idx && layout_of<TypeParam>() == RingLayout::split;
    EXPECT_EQ(h.ring->kick_needed(event_idx), last_kick);
    h.add(1, false);
    EXPECT_FALSE(h.ring->kick_needed(event_idx));
    h.pop(2);
    EXPECT_FALSE(h.queue.enable_notifications()) << "nothing new was available";
    h.add(1, false);
    EXPECT_TRUE(h.ring->kick_needed(event_idx)) << "notifications re-enabled";
  }
}

}  // namespace
}  // namespace vhostd::test
