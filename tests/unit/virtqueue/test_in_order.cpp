// VIRTIO_F_IN_ORDER on split rings: runs of read-only chains used in pop order are published
// as one used entry (at the run's first used index, the last chain's id, the used idx advanced
// past the run); what splits a run; pushes out of pop order; EVENT_IDX over a batch; the dirty
// log; and a driver reading the batches the way an in-order driver does.
#include <gtest/gtest.h>

#include <deque>

#include "ring_harness.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint32_t kSentinel = 0xdead'beef;

// An in-order driver (Linux's virtqueue_get_buf_ctx_split_in_order, DPDK's in-order cleanup):
// a used entry names the last buffer of a batch that starts at the driver's next expected
// buffer; every buffer up to it is used and its descriptors are free again. DriverRing's own
// bookkeeping (pop_used()) reads one entry per buffer, so this driver keeps its own: it writes
// descriptors through the raw accessors and publishes heads with publish_head().
struct InOrderDriver {
  struct Batch {
    std::vector<std::uint16_t> heads;  // freed by this entry, oldest first
    std::uint32_t len;                 // the entry's len (the last buffer's)
  };

  InOrderDriver(DriverRing& ring, std::uint16_t start) : ring(ring), last_used(start), chains(ring.size()) {
    for (std::uint32_t i = ring.size(); i-- > 0;) free.push_back(static_cast<std::uint16_t>(i));
  }

  // Makes `buffers` available as one chain; returns its head.
  std::uint16_t add(const std::vector<DriverBuffer>& buffers) {
    if (buffers.size() > free.size()) throw_error("InOrderDriver: no free descriptors");
    std::vector<std::uint16_t> ids(buffers.size());
    for (auto& id : ids) {
      id = free.back();
      free.pop_back();
    }
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      ring.desc(ids[i]) = VringDesc{buffers[i].gpa, buffers[i].len,
                                    static_cast<std::uint16_t>((buffers[i].writable ? kVringDescFWrite : 0) |
                                                               (last ? 0 : kVringDescFNext)),
                                    last ? std::uint16_t{0} : ids[i + 1]};
    }
    const std::uint16_t head = ids[0];
    chains[head] = std::move(ids);
    pending.push_back(head);
    ring.publish_head(head);
    return head;
  }

  // Every batch the device published since the last call (its buffers freed); stops with a
  // failure when an entry names a buffer that is not among the ones it may cover.
  std::vector<Batch> read() {
    std::vector<Batch> out;
    const std::uint16_t used_idx = ring.used_idx();
    while (last_used != used_idx) {
      const auto published = static_cast<std::uint16_t>(used_idx - last_used);
      const VringUsedElem elem = ring.used_elem(last_used & (ring.size() - 1));
      std::size_t k = 0;
      while (k < pending.size() && k < published && pending[k] != elem.id) ++k;
      if (k == pending.size() || k == published) {
        ADD_FAILURE() << "used entry at " << last_used << " names id " << elem.id
                      << ", not one of the next " << published << " buffers";
        return out;
      }
      Batch batch{{pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(k + 1)}, elem.len};
      pending.erase(pending.begin(), pending.begin() + static_cast<std::ptrdiff_t>(k + 1));
      for (std::uint16_t head : batch.heads) {
        for (std::uint16_t id : chains[head]) free.push_back(id);
        chains[head].clear();
      }
      last_used = static_cast<std::uint16_t>(last_used + k + 1);
      out.push_back(std::move(batch));
    }
    return out;
  }

  std::size_t num_free() const { return free.size(); }

  DriverRing& ring;
  std::uint16_t last_used;
  std::deque<std::uint16_t> pending;                // heads made available, not used yet
  std::vector<std::uint16_t> free;                  // free descriptors (a stack)
  std::vector<std::vector<std::uint16_t>> chains;   // per head: its descriptors
};

struct InOrderHarness : RingHarness {
  explicit InOrderHarness(std::uint32_t size = 16, bool in_order = true, bool event_idx = false,
                          std::uint16_t start = 0, std::uint32_t addr_flags = 0)
      : RingHarness(size, {{0, kMiB}}, event_idx, addr_flags), driver(*ring, start) {
    queue.set_in_order(in_order);
    if (start != 0) {
      ring->start_at(start);
      queue.set_last_avail_idx(start);
    }
    buf = buffer(4096);
    fill_used_ring();
  }

  // Marks every used ring entry so that the entries the device did not write show.
  void fill_used_ring() {
    for (std::uint32_t i = 0; i < ring->size(); ++i) {
      const VringUsedElem junk{kSentinel, kSentinel};
      guest->write(ring->used_gpa() + 4 + 8ull * i, &junk, sizeof junk);
    }
  }
  // A read-only chain of `descs` descriptors, or a writable one (one readable, then writable).
  std::uint16_t add(bool writable, std::uint32_t descs = 1) {
    std::vector<DriverBuffer> buffers;
    for (std::uint32_t i = 0; i < descs; ++i) {
      buffers.push_back(DriverBuffer{buf + 64 * i, 64, writable && (i + 1 == descs)});
    }
    return driver.add(buffers);
  }
  // Pops `n` chains, checking their heads.
  void pop(const std::vector<std::uint16_t>& heads) {
    ASSERT_GT(queue.poll(), 0);
    DescriptorChain chain;
    for (std::uint16_t head : heads) {
      ASSERT_TRUE(queue.pop(chain));
      ASSERT_EQ(chain.head, head);
    }
  }
  VringUsedElem used_at(std::uint32_t index) const { return ring->used_elem(index & (ring->size() - 1)); }
  bool untouched(std::uint32_t index) const {
    const VringUsedElem e = used_at(index);
    return e.id == kSentinel && e.len == kSentinel;
  }

  InOrderDriver driver;
  std::uint64_t buf = 0;
};

TEST(SplitQueueInOrder, ReadOnlyRunIsOneUsedEntryAtTheFirstIndex) {
  InOrderHarness h;
  std::vector<std::uint16_t> heads;
  for (std::uint32_t descs : {1u, 3u, 2u, 1u, 4u}) heads.push_back(h.add(false, descs));
  h.pop(heads);
  for (std::uint16_t head : heads) h.queue.push_used(head, 0);
  EXPECT_EQ(h.ring->used_idx(), 0) << "nothing visible before flush_used()";
  h.queue.flush_used();

  EXPECT_EQ(h.ring->used_idx(), 5);
  EXPECT_EQ(h.queue.used_idx(), 5);
  EXPECT_EQ(h.used_at(0).id, heads.back());
  EXPECT_EQ(h.used_at(0).len, 0u);
  for (std::uint32_t i = 1; i < 5; ++i) EXPECT_TRUE(h.untouched(i)) << "entry " << i << " was written";

  const auto batches = h.driver.read();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].heads, heads) << "the driver frees every buffer of the batch";
  EXPECT_TRUE(h.driver.pending.empty());
  EXPECT_EQ(h.driver.num_free(), 16u);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueInOrder, BatchAcrossTheRingsEndAndTheIndexWrap) {
  InOrderHarness h(16, true, false, 65533);  // used index 65533 = ring entry 13
  std::vector<std::uint16_t> heads;
  for (int i = 0; i < 6; ++i) heads.push_back(h.add(false, i % 2 + 1));
  h.pop(heads);
  for (std::uint16_t head : heads) h.queue.push_used(head, 0);
  h.queue.flush_used();

  EXPECT_EQ(h.ring->used_idx(), 3) << "65533 + 6";
  EXPECT_EQ(h.used_at(13).id, heads.back());
  for (std::uint32_t i : {14u, 15u, 0u, 1u, 2u}) EXPECT_TRUE(h.untouched(i)) << "entry " << i;
  const auto batches = h.driver.read();
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_EQ(batches[0].heads, heads);
  EXPECT_EQ(h.driver.num_free(), 16u);
}

TEST(SplitQueueInOrder, WritableChainEndsARunAndKeepsItsLen) {
  InOrderHarness h;
  // R R W R R: the run R R W takes one entry with W's id and len, then R R another.
  std::vector<std::uint16_t> heads = {h.add(false), h.add(false, 2), h.add(true, 2), h.add(false), h.add(false)};
  h.pop(heads);
  const std::uint32_t lens[] = {0, 0, 100, 0, 0};
  for (int i = 0; i < 5; ++i) h.queue.push_used(heads[i], lens[i]);
  h.queue.flush_used();

  EXPECT_EQ(h.ring->used_idx(), 5);
  EXPECT_EQ(h.used_at(0).id, heads[2]);
  EXPECT_EQ(h.used_at(0).len, 100u);
  EXPECT_EQ(h.used_at(3).id, heads[4]);
  EXPECT_EQ(h.used_at(3).len, 0u);
  for (std::uint32_t i : {1u, 2u, 4u}) EXPECT_TRUE(h.untouched(i)) << "entry " << i;
  const auto batches = h.driver.read();
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_EQ(batches[0].heads, (std::vector<std::uint16_t>{heads[0], heads[1], heads[2]}));
  EXPECT_EQ(batches[0].len, 100u);
  EXPECT_EQ(batches[1].heads, (std::vector<std::uint16_t>{heads[3], heads[4]}));
  EXPECT_EQ(h.driver.num_free(), 16u);
}

TEST(SplitQueueInOrder, WritableChainIsNeverSkippedEvenWithLenZero) {
  InOrderHarness h;
  // W(len 0) R R: W cannot be skipped (its used len is what a driver reads), so it keeps its
  // own entry; a read-only chain with a len is not skipped either. Then W(len 0) ends R W.
  std::vector<std::uint16_t> heads = {h.add(true), h.add(false), h.add(false), h.add(false), h.add(true)};
  h.pop(heads);
  const std::uint32_t lens[] = {0, 0, 7, 0, 0};
  for (int i = 0; i < 5; ++i) h.queue.push_used(heads[i], lens[i]);
  h.queue.flush_used();

  EXPECT_EQ(h.used_at(0).id, heads[0]);
  EXPECT_EQ(h.used_at(0).len, 0u);
  EXPECT_EQ(h.used_at(1).id, heads[2]) << "R(0) R(7): one entry with the second's id and len";
  EXPECT_EQ(h.used_at(1).len, 7u);
  EXPECT_TRUE(h.untouched(2));
  EXPECT_EQ(h.used_at(3).id, heads[4]) << "R(0) W(0)";
  EXPECT_TRUE(h.untouched(4));
  const auto batches = h.driver.read();
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_TRUE(h.driver.pending.empty());
}

TEST(SplitQueueInOrder, RunsOverSeveralFlushesAndLaps) {
  InOrderHarness h(8);
  std::uint16_t expected_used = 0;
  for (int round = 0; round < 20; ++round) {
    // 3 + 2 + 1 chains per round: one entry per flush; the ring's 8 entries wrap many times.
    std::vector<std::uint16_t> heads;
    for (int i = 0; i < 6; ++i) heads.push_back(h.add(false));
    h.pop(heads);
    std::size_t next = 0;
    for (std::size_t n : {3u, 2u, 1u}) {
      for (std::size_t i = 0; i < n; ++i) h.queue.push_used(heads[next++], 0);
      h.fill_used_ring();
      h.queue.flush_used();
      const std::uint16_t first = expected_used;
      expected_used = static_cast<std::uint16_t>(expected_used + n);
      ASSERT_EQ(h.ring->used_idx(), expected_used);
      ASSERT_EQ(h.used_at(first).id, heads[next - 1]) << "round " << round;
      for (std::uint16_t i = 1; i < n; ++i) ASSERT_TRUE(h.untouched(first + i)) << "round " << round;
      const auto batches = h.driver.read();
      ASSERT_EQ(batches.size(), 1u);
      ASSERT_EQ(batches[0].heads,
                std::vector<std::uint16_t>(heads.begin() + static_cast<std::ptrdiff_t>(next - n),
                                           heads.begin() + static_cast<std::ptrdiff_t>(next)));
    }
    ASSERT_EQ(h.driver.num_free(), 8u) << "every descriptor is free again";
  }
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueInOrder, OutOfPopOrderGetsOneEntryPerElement) {
  InOrderHarness h;
  std::vector<std::uint16_t> heads = {h.add(false), h.add(false), h.add(false), h.add(false)};
  h.pop(heads);
  // C A B D: C, A and B are not at the used index they were popped at; D is, but it is alone.
  constexpr int kOrder[] = {2, 0, 1, 3};
  for (int i : kOrder) h.queue.push_used(heads[i], 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->used_idx(), 4);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(h.used_at(i).id, heads[kOrder[i]]) << "entry " << i;

  // B A C D: B and A each get an entry; C and D, back at their own indexes, form a run.
  InOrderHarness g;
  heads = {g.add(false), g.add(false), g.add(false), g.add(false)};
  g.pop(heads);
  for (int i : {1, 0, 2, 3}) g.queue.push_used(heads[i], 0);
  g.queue.flush_used();
  EXPECT_EQ(g.ring->used_idx(), 4);
  EXPECT_EQ(g.used_at(0).id, heads[1]);
  EXPECT_EQ(g.used_at(1).id, heads[0]);
  EXPECT_EQ(g.used_at(2).id, heads[3]);
  EXPECT_TRUE(g.untouched(3));
}

TEST(SplitQueueInOrder, RewoundChainsKeepThePopOrder) {
  InOrderHarness h;
  std::vector<std::uint16_t> heads = {h.add(false), h.add(false), h.add(false)};
  h.pop(heads);
  h.queue.rewind(2);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  ASSERT_TRUE(h.queue.pop(chain));
  for (std::uint16_t head : heads) h.queue.push_used(head, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.used_at(0).id, heads[2]);
  EXPECT_TRUE(h.untouched(1));
  EXPECT_TRUE(h.untouched(2));
}

TEST(SplitQueueInOrder, WithoutInOrderEveryElementGetsItsEntry) {
  InOrderHarness h(16, false);
  std::vector<std::uint16_t> heads;
  for (std::uint32_t descs : {1u, 3u, 2u, 1u}) heads.push_back(h.add(false, descs));
  h.pop(heads);
  for (std::uint16_t head : heads) h.queue.push_used(head, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->used_idx(), 4);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(h.used_at(i).id, heads[i]);
    EXPECT_EQ(h.used_at(i).len, 0u);
  }
  const auto batches = h.driver.read();
  ASSERT_EQ(batches.size(), 4u);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(batches[i].heads, std::vector<std::uint16_t>{heads[i]});
}

struct InOrderCallHarness : InOrderHarness {
  InOrderCallHarness() : InOrderHarness(16, true, true), call(make_eventfd()) { queue.set_call_fd(call.get()); }
  bool notify() {
    const bool due = queue.notify();
    EXPECT_EQ(eventfd_drain(call.get()), due) << "notify() result and the call eventfd disagree";
    return due;
  }
  // `n` read-only chains made available, popped, pushed in order and flushed (one entry).
  void complete(int n) {
    std::vector<std::uint16_t> heads;
    for (int i = 0; i < n; ++i) heads.push_back(add(false));
    pop(heads);
    for (std::uint16_t head : heads) queue.push_used(head, 0);
    queue.flush_used();
    driver.read();
    EXPECT_EQ(driver.num_free(), ring->size());
  }
  UniqueFd call;
};

TEST(SplitQueueInOrder, EventIdxCountsTheSkippedEntries) {
  InOrderCallHarness h;
  h.complete(1);
  EXPECT_TRUE(h.notify()) << "the first notification is always due";
  h.ring->set_used_event(3);
  h.complete(4);  // used idx 1 -> 5 with one entry at 1: passes 3, which was skipped
  EXPECT_EQ(h.ring->used_idx(), 5);
  EXPECT_TRUE(h.notify());
  h.ring->set_used_event(9);
  h.complete(4);  // 5 -> 9: reaches 9, does not pass it
  EXPECT_FALSE(h.notify());
  h.complete(2);  // 9 -> 11: passes 9
  EXPECT_TRUE(h.notify());
}

// ---- dirty log ----

struct InOrderLoggingHarness : InOrderHarness {
  // A ring of 1024: the used ring (4 + 8 * 1024 bytes) spans three pages; entries 511 and on
  // are (partly) on its second page. Starting at 500, a run of 20 writes only entry 500.
  InOrderLoggingHarness(bool in_order, std::uint32_t addr_flags)
      : InOrderHarness(1024, in_order, false, 500, addr_flags), log(DirtyLog::anonymous(kMiB / kDirtyPageSize / 8)) {
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
  void run_of(int n) {
    std::vector<std::uint16_t> heads;
    for (int i = 0; i < n; ++i) heads.push_back(add(false));
    pop(heads);
    for (std::uint16_t head : heads) queue.push_used(head, 0);
    queue.flush_used();
  }
  std::shared_ptr<DirtyLog> log;
};

TEST(SplitQueueInOrder, DirtyLogMarksOnlyTheWrittenEntriesAndTheIndex) {
  InOrderLoggingHarness h(true, kVringFLog);
  const std::uint64_t used = h.ring->used_gpa();
  ASSERT_EQ(used % kDirtyPageSize, 0u);
  h.run_of(20);
  EXPECT_EQ(h.ring->used_idx(), 520);
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{used})) << "only entry 500 and the used idx";

  InOrderLoggingHarness without(false, kVringFLog);
  without.run_of(20);
  const std::uint64_t used2 = without.ring->used_gpa();
  EXPECT_EQ(without.dirty_pages(), (std::vector<std::uint64_t>{used2, used2 + kDirtyPageSize}));
}

TEST(SplitQueueInOrder, DirtyLogOfABatchEndingOnTheSecondPage) {
  InOrderLoggingHarness h(true, kVringFLog);
  const std::uint64_t used = h.ring->used_gpa();
  // 11 read-only chains and one more used with len 5: one entry at 500 (page 0); then a
  // writable chain (len 0, not written) alone at 512 (page 1).
  std::vector<std::uint16_t> heads;
  for (int i = 0; i < 12; ++i) heads.push_back(h.add(false));
  heads.push_back(h.add(true));
  h.pop(heads);
  for (std::size_t i = 0; i < heads.size(); ++i) h.queue.push_used(heads[i], i == 11 ? 5 : 0);
  h.queue.flush_used();
  EXPECT_EQ(h.used_at(500).id, heads[11]);
  EXPECT_EQ(h.used_at(512).id, heads[12]);
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{used, used + kDirtyPageSize}));
  EXPECT_EQ(h.log->out_of_range(), 0u);
}

}  // namespace
}  // namespace vhostd::test
