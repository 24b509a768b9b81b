// VIRTIO_F_IN_ORDER on packed rings: runs of read-only chains used in pop order are published
// as one used descriptor (at the run's first slot, the last chain's buffer id, every slot of
// the run skipped); what splits a run; pushes out of pop order; EVENT_IDX offsets on skipped
// slots; the dirty log; and a driver reading the batches the way an in-order driver does.
#include <gtest/gtest.h>

#include <deque>

#include "packed_harness.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint16_t off_wrap(std::uint32_t slot, bool wrap) {
  return static_cast<std::uint16_t>(slot | (wrap ? kPackedWrapBit : 0));
}

// An in-order driver (DPDK's virtio_xmit_cleanup_inorder_packed, Linux's in-order packed
// path): the used descriptor at its next used slot names the last buffer of a batch that starts
// with its oldest outstanding buffer; it frees every buffer up to that one and skips all their
// slots. PackedDriverRing::pop_used() skips only the named buffer's slots, so this driver keeps
// its own bookkeeping and writes descriptors through the raw accessors.
struct InOrderPackedDriver {
  struct Outstanding {
    std::uint16_t id;
    std::uint32_t slots;
  };
  struct Batch {
    std::vector<std::uint16_t> ids;  // freed by this used descriptor, oldest first
    std::uint32_t len;
    std::uint16_t flags;
    std::uint16_t slot;  // where it was written
  };

  explicit InOrderPackedDriver(PackedDriverRing& ring)
      : ring(ring),
        next_avail(ring.next_avail()),
        avail_wrap(ring.avail_wrap()),
        next_used(ring.next_used()),
        used_wrap(ring.used_wrap()),
        free_slots(ring.size()) {
    for (std::uint32_t i = ring.size(); i-- > 0;) free_ids.push_back(static_cast<std::uint16_t>(i));
  }

  void step(std::uint32_t& slot, bool& wrap) const {
    if (++slot == ring.size()) {
      slot = 0;
      wrap = !wrap;
    }
  }

  // Makes `buffers` available as one chain in the next slots; returns its buffer id.
  std::uint16_t add(const std::vector<DriverBuffer>& buffers) {
    const auto n = static_cast<std::uint32_t>(buffers.size());
    if (n > free_slots || free_ids.empty()) throw_error("InOrderPackedDriver: no room");
    const std::uint16_t id = free_ids.back();
    free_ids.pop_back();
    const std::uint32_t head = next_avail;
    std::uint16_t head_flags = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const auto flags = static_cast<std::uint16_t>(packed_avail_flags(avail_wrap) | (i + 1 < n ? kVringDescFNext : 0) |
                                                    (buffers[i].writable ? kVringDescFWrite : 0));
      PackedDesc& d = ring.desc(next_avail);
      d.addr = buffers[i].gpa;
      d.len = buffers[i].len;
      d.id = id;
      if (i == 0) {
        head_flags = flags;
      } else {
        ring.publish_flags(next_avail, flags);
      }
      step(next_avail, avail_wrap);
    }
    ring.publish_flags(head, head_flags);  // release: the head last
    free_slots -= n;
    pending.push_back(Outstanding{id, n});
    return id;
  }

  // Every batch the device published since the last call (its buffers and slots freed); stops
  // with a failure when a used descriptor names a buffer that is not outstanding.
  std::vector<Batch> read() {
    std::vector<Batch> out;
    for (;;) {
      const std::uint16_t flags = ring.flags(next_used);  // acquire: id and len are the device's
      if (!packed_desc_used(flags, used_wrap)) return out;
      const PackedDesc& d = ring.desc(next_used);
      Batch batch{{}, d.len, flags, static_cast<std::uint16_t>(next_used)};
      std::size_t k = 0;
      while (k < pending.size() && pending[k].id != d.id) ++k;
      if (k == pending.size()) {
        ADD_FAILURE() << "used descriptor at slot " << next_used << " names id " << d.id << ", not outstanding";
        return out;
      }
      for (std::size_t i = 0; i <= k; ++i) {
        batch.ids.push_back(pending.front().id);
        for (std::uint32_t s = 0; s < pending.front().slots; ++s) step(next_used, used_wrap);
        free_slots += pending.front().slots;
        free_ids.push_back(pending.front().id);
        pending.pop_front();
      }
      out.push_back(std::move(batch));
    }
  }

  PackedDriverRing& ring;
  std::uint32_t next_avail;
  bool avail_wrap;
  std::uint32_t next_used;
  bool used_wrap;
  std::uint32_t free_slots;
  std::vector<std::uint16_t> free_ids;  // a stack
  std::deque<Outstanding> pending;      // in the order made available
};

struct PackedInOrderHarness : PackedHarness {
  explicit PackedInOrderHarness(std::uint32_t size = 16, bool in_order = true, bool event_idx = false,
                                std::uint32_t start = 0, bool start_wrap = true, std::uint32_t addr_flags = 0)
      : PackedHarness(size, {{0, kMiB}}, event_idx, addr_flags) {
    queue.set_in_order(in_order);
    if (start != 0 || !start_wrap) {
      ring->start_at(static_cast<std::uint16_t>(start), start_wrap);
      queue.set_vring_base(off_wrap(start, start_wrap));
    }
    driver = std::make_unique<InOrderPackedDriver>(*ring);
    buf = buffer(4096);
  }

  // A read-only chain of `descs` descriptors, or one whose last descriptor is writable.
  std::uint16_t add(bool writable, std::uint32_t descs = 1) {
    std::vector<DriverBuffer> buffers;
    for (std::uint32_t i = 0; i < descs; ++i) {
      buffers.push_back(DriverBuffer{buf + 64 * i, 64, writable && i + 1 == descs});
    }
    return driver->add(buffers);
  }
  void pop(const std::vector<std::uint16_t>& ids) {
    ASSERT_GT(queue.poll(), 0);
    DescriptorChain chain;
    for (std::uint16_t id : ids) {
      ASSERT_TRUE(queue.pop(chain));
      ASSERT_EQ(chain.head, id);
    }
  }
  // Whether the device left `slot` alone (still available for the lap it was made so in).
  bool untouched(std::uint32_t slot, bool wrap) const { return packed_desc_available(ring->flags(slot), wrap); }

  std::unique_ptr<InOrderPackedDriver> driver;
  std::uint64_t buf = 0;
};

TEST(PackedQueueInOrder, ReadOnlyRunIsOneUsedDescriptorSkippingEverySlot) {
  PackedInOrderHarness h;
  std::vector<std::uint16_t> ids;
  for (std::uint32_t descs : {1u, 3u, 2u, 1u, 4u}) ids.push_back(h.add(false, descs));  // slots 0..10
  h.pop(ids);
  EXPECT_EQ(h.queue.in_flight(), 11u);
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  EXPECT_FALSE(h.driver->read().size()) << "nothing visible before flush_used()";
  h.queue.flush_used();

  EXPECT_EQ(h.queue.used_idx(), 11);
  EXPECT_TRUE(h.queue.used_wrap());
  EXPECT_EQ(h.queue.in_flight(), 0u);
  EXPECT_EQ(h.ring->desc(0).id, ids.back());
  EXPECT_EQ(h.ring->desc(0).len, 0u);
  EXPECT_EQ(h.ring->flags(0), packed_used_flags(true)) << "len 0: no WRITE";
  for (std::uint32_t slot = 1; slot < 11; ++slot) EXPECT_TRUE(h.untouched(slot, true)) << "slot " << slot;

  const auto batches = h.driver->read();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].ids, ids) << "the driver frees every buffer of the batch";
  EXPECT_EQ(h.driver->next_used, 11u);
  EXPECT_EQ(h.driver->free_slots, 16u);
  EXPECT_EQ(h.driver->free_ids.size(), 16u);

  // The ring keeps going from there (and the next run is found at slot 11).
  ids = {h.add(false, 2), h.add(false)};
  h.pop(ids);
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  h.queue.flush_used();
  const auto next = h.driver->read();
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].slot, 11);
  EXPECT_EQ(next[0].ids, ids);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueInOrder, BatchAcrossTheWrap) {
  PackedInOrderHarness h(16, true, false, 13, true);
  // Chains of 2 slots: 13-14, 15-0, 1-2, 3-4; one used descriptor at 13 with the first lap's bits.
  std::vector<std::uint16_t> ids;
  for (int i = 0; i < 4; ++i) ids.push_back(h.add(false, 2));
  h.pop(ids);
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  h.queue.flush_used();

  EXPECT_EQ(h.queue.used_idx(), 5);
  EXPECT_FALSE(h.queue.used_wrap());
  EXPECT_EQ(h.ring->desc(13).id, ids.back());
  EXPECT_EQ(h.ring->flags(13), packed_used_flags(true));
  EXPECT_TRUE(h.untouched(15, true));
  EXPECT_TRUE(h.untouched(1, false));
  EXPECT_TRUE(h.untouched(3, false));
  const auto batches = h.driver->read();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].ids, ids);
  EXPECT_EQ(h.driver->next_used, 5u);
  EXPECT_FALSE(h.driver->used_wrap);
  EXPECT_EQ(h.driver->free_slots, 16u);
}

TEST(PackedQueueInOrder, WritableChainEndsARunAndKeepsItsLen) {
  PackedInOrderHarness h;
  // R(0) R(1-2) W(3-4) R(5) R(6): R R W -> one descriptor at 0 with W's id, len and WRITE;
  // R R -> one at 5.
  std::vector<std::uint16_t> ids = {h.add(false), h.add(false, 2), h.add(true, 2), h.add(false), h.add(false)};
  h.pop(ids);
  const std::uint32_t lens[] = {0, 0, 100, 0, 0};
  for (int i = 0; i < 5; ++i) h.queue.push_used(ids[i], lens[i]);
  h.queue.flush_used();

  EXPECT_EQ(h.queue.used_idx(), 7);
  EXPECT_EQ(h.ring->desc(0).id, ids[2]);
  EXPECT_EQ(h.ring->desc(0).len, 100u);
  EXPECT_EQ(h.ring->flags(0), packed_used_flags(true) | kVringDescFWrite);
  EXPECT_EQ(h.ring->desc(5).id, ids[4]);
  EXPECT_EQ(h.ring->flags(5), packed_used_flags(true));
  for (std::uint32_t slot : {1u, 3u, 6u}) EXPECT_TRUE(h.untouched(slot, true)) << "slot " << slot;
  const auto batches = h.driver->read();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].ids, (std::vector<std::uint16_t>{ids[0], ids[1], ids[2]}));
  EXPECT_EQ(batches[0].len, 100u);
  EXPECT_EQ(batches[1].ids, (std::vector<std::uint16_t>{ids[3], ids[4]}));
  EXPECT_EQ(h.driver->free_slots, 16u);
}

TEST(PackedQueueInOrder, WritableChainIsNeverSkippedEvenWithLenZero) {
  PackedInOrderHarness h;
  // W(0) R(0) R(7) R(0) W(0): W alone; R(0) R(7) one descriptor with len 7; R(0) W(0) one.
  std::vector<std::uint16_t> ids = {h.add(true), h.add(false), h.add(false), h.add(false), h.add(true)};
  h.pop(ids);
  const std::uint32_t lens[] = {0, 0, 7, 0, 0};
  for (int i = 0; i < 5; ++i) h.queue.push_used(ids[i], lens[i]);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->desc(0).id, ids[0]);
  EXPECT_EQ(h.ring->desc(1).id, ids[2]);
  EXPECT_EQ(h.ring->desc(1).len, 7u);
  EXPECT_TRUE(h.untouched(2, true));
  EXPECT_EQ(h.ring->desc(3).id, ids[4]);
  EXPECT_TRUE(h.untouched(4, true));
  EXPECT_EQ(h.driver->read().size(), 3u);
  EXPECT_EQ(h.driver->free_slots, 16u);
}

TEST(PackedQueueInOrder, RunsOverSeveralFlushesAndLaps) {
  PackedInOrderHarness h(8);
  std::uint32_t used_slots = 0;
  for (int round = 0; round < 20; ++round) {
    // Chains of 1, 2, 1, 1 slots flushed as 2 + 1 + 1: one used descriptor per flush.
    std::vector<std::uint16_t> ids = {h.add(false), h.add(false, 2), h.add(false), h.add(false)};
    h.pop(ids);
    const std::uint32_t slots[] = {1, 2, 1, 1};
    std::size_t next = 0;
    for (std::size_t n : {2u, 1u, 1u}) {
      const std::uint32_t first = used_slots % 8;
      for (std::size_t i = 0; i < n; ++i) {
        h.queue.push_used(ids[next], 0);
        used_slots += slots[next++];
      }
      h.queue.flush_used();
      ASSERT_EQ(h.queue.used_idx(), used_slots % 8);
      ASSERT_EQ(h.queue.used_wrap(), (used_slots / 8) % 2 == 0);
      const auto batches = h.driver->read();
      ASSERT_EQ(batches.size(), 1u) << "round " << round;
      ASSERT_EQ(batches[0].slot, first);
      ASSERT_EQ(batches[0].ids, std::vector<std::uint16_t>(ids.begin() + static_cast<std::ptrdiff_t>(next - n),
                                                           ids.begin() + static_cast<std::ptrdiff_t>(next)));
    }
    ASSERT_EQ(h.driver->free_slots, 8u);
    ASSERT_EQ(h.queue.in_flight(), 0u);
  }
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueInOrder, OutOfPopOrderGetsOneUsedDescriptorPerElement) {
  {
    // A(0) B(1-2) C(3-5) D(6) completed C A B D: none of C, A, B starts where its used
    // descriptor goes; D does but is alone. The ordinary driver reads them all.
    PackedInOrderHarness h;
    const std::uint64_t buf = h.buf;
    const std::uint16_t a = h.ring->add_chain({{buf, 8, false}});
    const std::uint16_t b = h.ring->add_chain({{buf, 8, false}, {buf, 8, false}});
    const std::uint16_t c = h.ring->add_chain({{buf, 8, false}, {buf, 8, false}, {buf, 8, false}});
    const std::uint16_t d = h.ring->add_chain({{buf, 8, false}});
    h.pop({a, b, c, d});
    for (std::uint16_t id : {c, a, b, d}) h.queue.push_used(id, 0);
    h.queue.flush_used();
    EXPECT_EQ(h.queue.used_idx(), 7);
    for (std::uint16_t id : {c, a, b, d}) {
      auto used = h.ring->pop_used();
      ASSERT_TRUE(used.has_value());
      EXPECT_EQ(used->id, id);
    }
    EXPECT_EQ(h.ring->free_slots(), 16u);
  }
  {
    // B A C D: B and A each get one; C and D, back where they were popped, form a run.
    PackedInOrderHarness h;
    const std::uint64_t buf = h.buf;
    const std::uint16_t a = h.ring->add_chain({{buf, 8, false}});
    const std::uint16_t b = h.ring->add_chain({{buf, 8, false}, {buf, 8, false}});
    const std::uint16_t c = h.ring->add_chain({{buf, 8, false}, {buf, 8, false}, {buf, 8, false}});
    const std::uint16_t d = h.ring->add_chain({{buf, 8, false}});
    h.pop({a, b, c, d});
    for (std::uint16_t id : {b, a, c, d}) h.queue.push_used(id, 0);
    h.queue.flush_used();
    EXPECT_EQ(h.queue.used_idx(), 7);
    EXPECT_EQ(h.ring->desc(0).id, b);
    EXPECT_EQ(h.ring->desc(2).id, a);
    EXPECT_EQ(h.ring->desc(3).id, d);
    EXPECT_TRUE(h.untouched(4, true));
    EXPECT_TRUE(h.untouched(6, true));
  }
}

TEST(PackedQueueInOrder, RewoundChainsKeepThePopOrder) {
  PackedInOrderHarness h;
  std::vector<std::uint16_t> ids = {h.add(false), h.add(false, 2), h.add(false)};
  h.pop(ids);
  h.queue.rewind(2);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  ASSERT_TRUE(h.queue.pop(chain));
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->desc(0).id, ids[2]);
  EXPECT_TRUE(h.untouched(1, true));
  EXPECT_TRUE(h.untouched(3, true));
  EXPECT_EQ(h.driver->read().size(), 1u);
  EXPECT_EQ(h.driver->free_slots, 16u);
}

TEST(PackedQueueInOrder, WithoutInOrderEveryElementGetsItsDescriptor) {
  PackedInOrderHarness h(16, false);
  std::vector<std::uint16_t> ids;
  for (std::uint32_t descs : {1u, 3u, 2u, 1u}) ids.push_back(h.add(false, descs));
  h.pop(ids);
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.queue.used_idx(), 7);
  const std::uint32_t slots[] = {0, 1, 4, 6};
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.ring->desc(slots[i]).id, ids[i]);
  const auto batches = h.driver->read();
  ASSERT_EQ(batches.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(batches[i].ids, std::vector<std::uint16_t>{ids[i]});
}

struct PackedInOrderCallHarness : PackedInOrderHarness {
  PackedInOrderCallHarness() : PackedInOrderHarness(16, true, true), call(make_eventfd()) {
    queue.set_call_fd(call.get());
  }
  bool notify() {
    const bool due = queue.notify();
    EXPECT_EQ(eventfd_drain(call.get()), due) << "notify() result and the call eventfd disagree";
    return due;
  }
  // `n` read-only chains of `slots` descriptors made available, popped, pushed in order and
  // flushed (one used descriptor).
  void complete(int n, std::uint32_t slots) {
    std::vector<std::uint16_t> ids;
    for (int i = 0; i < n; ++i) ids.push_back(add(false, slots));
    pop(ids);
    for (std::uint16_t id : ids) queue.push_used(id, 0);
    queue.flush_used();
    EXPECT_EQ(driver->read().size(), 1u);
  }
  UniqueFd call;
};

TEST(PackedQueueInOrder, EventOffsetOnASkippedSlotFires) {
  PackedInOrderCallHarness h;
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(0, true));
  h.complete(1, 1);
  EXPECT_TRUE(h.notify()) << "the first notification is always due";
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(4, true));
  h.complete(3, 2);  // slots 1-6 in one used descriptor at 1; slot 4 was skipped
  EXPECT_EQ(h.queue.used_idx(), 7);
  EXPECT_TRUE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(13, true));
  h.complete(2, 3);  // slots 7-12: 13 not written yet
  EXPECT_FALSE(h.notify());
  h.ring->set_used_events(kRingEventFlagsDesc, off_wrap(1, false));
  h.complete(3, 2);  // slots 13-15, 0-2 of the next lap: passes (1, wrap 0) on a skipped slot
  EXPECT_EQ(h.queue.used_idx(), 3);
  EXPECT_FALSE(h.queue.used_wrap());
  EXPECT_TRUE(h.notify());
}

// ---- dirty log ----

struct PackedInOrderLoggingHarness : PackedInOrderHarness {
  // A ring of 512: the descriptor ring spans two pages (slot 256 starts the second). Starting
  // at slot 250, a run of 10 one-slot chains writes only slot 250.
  PackedInOrderLoggingHarness(bool in_order, std::uint32_t addr_flags)
      : PackedInOrderHarness(512, in_order, false, 250, true, addr_flags),
        log(DirtyLog::anonymous(kMiB / kDirtyPageSize / 8)) {
    memory.set_log(log);
    memory.set_log_all(true);
  }
  std::vector<std::uint64_t> dirty_pages() const {
    std::vector<std::uint64_t> pages;
    for (std::uint64_t gpa = 0; gpa < kMiB; gpa += kDirtyPageSize) {
      if (log->is_dirty(gpa)) pages.push_back(gpa);
    }
    return pages;
  }
  std::shared_ptr<DirtyLog> log;
};

TEST(PackedQueueInOrder, DirtyLogMarksOnlyTheWrittenDescriptors) {
  for (bool in_order : {true, false}) {
    PackedInOrderLoggingHarness h(in_order, kVringFLog);
    const std::uint64_t ring = h.ring->desc_gpa();
    ASSERT_EQ(ring % kDirtyPageSize, 0u);
    std::vector<std::uint16_t> ids;
    for (int i = 0; i < 10; ++i) ids.push_back(h.add(false));
    h.pop(ids);
    for (std::uint16_t id : ids) h.queue.push_used(id, 0);
    h.queue.flush_used();
    EXPECT_EQ(h.queue.used_idx(), 260);
    if (in_order) {
      EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{ring})) << "only slot 250";
    } else {
      EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{ring, ring + kDirtyPageSize}));
    }
    EXPECT_EQ(h.log->out_of_range(), 0u);
  }
}

TEST(PackedQueueInOrder, DirtyLogOfABatchEndingOnTheSecondPage) {
  PackedInOrderLoggingHarness h(true, kVringFLog);
  const std::uint64_t ring = h.ring->desc_gpa();
  // Six read-only chains at 250-255 then a writable one at 256 with len 0: one used descriptor
  // at 250 with the writable one's id (page 0); slot 256 (page 1) is not written.
  std::vector<std::uint16_t> ids;
  for (int i = 0; i < 6; ++i) ids.push_back(h.add(false));
  ids.push_back(h.add(true));
  ids.push_back(h.add(false));  // 257: its own used descriptor, on page 1
  h.pop(ids);
  for (std::uint16_t id : ids) h.queue.push_used(id, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->desc(250).id, ids[6]);
  EXPECT_TRUE(h.untouched(256, true));
  EXPECT_EQ(h.ring->desc(257).id, ids[7]);
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{ring, ring + kDirtyPageSize}));
  EXPECT_EQ(h.driver->read().size(), 2u);
}

}  // namespace
}  // namespace vhostd::test
