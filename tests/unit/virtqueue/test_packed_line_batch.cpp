// The batched fill of packed rings (PackedQueue::peek_fill_batch / commit_fill_batch): four
// single writable descriptors in one ring line taken and published as used together; every
// case it refuses (taking nothing, so that pop() judges those descriptors); staged elements
// published before it; the wrap counter of the next lap; EVENT_IDX; the dirty log.
#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <vector>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint32_t kBatch = PackedQueue::kFillBatch;

// Makes `n` single writable buffers of `len` bytes available; returns their ids.
std::vector<std::uint16_t> add_buffers(PackedHarness& h, std::uint32_t n, std::uint32_t len = 128) {
  std::vector<std::uint16_t> ids;
  for (std::uint32_t i = 0; i < n; ++i) ids.push_back(h.ring->add_chain({{h.buffer(len), len, true}}));
  return ids;
}

// The queue's positions and counters, to check a refusal took nothing.
struct QueueState {
  std::uint16_t avail_idx, used_idx;
  std::uint32_t in_flight;
  std::uint64_t requests;
  bool operator==(const QueueState&) const = default;
};
QueueState state_of(PackedQueue& q) {
  return {q.avail_idx(), q.used_idx(), q.in_flight(), q.stats().requests.load()};
}

TEST(PackedFillBatch, FourSingleBuffersAreTakenAndPublishedTogether) {
  PackedHarness h(16);
  const auto ids = add_buffers(h, 4);
  ASSERT_EQ(h.queue.poll(), 4);
  const QueueState before = state_of(h.queue);

  PackedQueue::FillBatch batch;
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  EXPECT_EQ(state_of(h.queue), before) << "peeking takes nothing";
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    const PackedDesc& d = h.ring->desc(k);
    EXPECT_EQ(batch.ids[k], ids[k]);
    EXPECT_EQ(batch.buffers[k].gpa, d.addr);
    EXPECT_EQ(batch.buffers[k].len, 128u);
    EXPECT_EQ(batch.buffers[k].host, h.queue.table()->translate_gpa(d.addr, d.len));
  }

  h.queue.commit_fill_batch(batch, {64, 76, 1, 0});
  EXPECT_EQ(h.queue.avail_idx(), 4);
  EXPECT_EQ(h.queue.used_idx(), 4);
  EXPECT_EQ(h.queue.in_flight(), 0u);
  EXPECT_EQ(h.queue.stats().requests.load(), 4u);
  const std::array<std::uint32_t, kBatch> lens{64, 76, 1, 0};
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << k;
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, ids[k]);
    EXPECT_EQ(used->len, lens[k]);
    EXPECT_EQ(used->slot, k) << "the batch's own line";
    EXPECT_EQ((used->flags & kVringDescFWrite) != 0, lens[k] != 0) << "WRITE only where bytes were written";
  }
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_EQ(h.ring->free_slots(), 16u);

  // The next line works the same way.
  const auto more = add_buffers(h, 4);
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  EXPECT_EQ(batch.ids[0], more[0]);
  h.queue.commit_fill_batch(batch, {10, 10, 10, 10});
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, more[k]);
    EXPECT_EQ(used->slot, 4 + k);
  }
}

// Each case leaves the batch's descriptors to pop(), so the queue must not have moved.
void expect_refused(PackedHarness& h, const char* why) {
  h.queue.poll();
  const QueueState before = state_of(h.queue);
  PackedQueue::FillBatch batch;
  EXPECT_FALSE(h.queue.peek_fill_batch(batch)) << why;
  EXPECT_EQ(state_of(h.queue), before) << why;
  EXPECT_FALSE(h.ring->has_used()) << why;
  EXPECT_FALSE(h.queue.in_error()) << why << ": refusing is not judging";
}

// Writes a line of four writable descriptors from `first` on, behind the driver's back (no
// bookkeeping): ids[k], each `len` bytes at `addr` unless a replacement is given for one slot.
struct RawDesc {
  std::uint32_t at;  // index in the line
  std::uint64_t addr;
  std::uint32_t len;
};
void put_writable_line(PackedHarness& h, std::uint32_t first, const std::array<std::uint16_t, kBatch>& ids,
                       std::uint64_t addr, std::optional<RawDesc> other = std::nullopt) {
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    const bool replaced = other && other->at == k;
    h.ring->put(first + k, PackedDesc{replaced ? other->addr : addr, replaced ? other->len : 64u, ids[k],
                                      static_cast<std::uint16_t>(h.ring->avail_bits() | kVringDescFWrite)});
  }
}

TEST(PackedFillBatch, RefusesWhatIsNotFourSingleWritableBuffersInOneLine) {
  {
    PackedHarness h(16);
    add_buffers(h, 3);
    expect_refused(h, "three available");
  }
  {
    PackedHarness h(16);
    add_buffers(h, 1);
    DescriptorChain chain;
    ASSERT_TRUE(h.pop_one(chain));
    add_buffers(h, 4);
    expect_refused(h, "slot 1 starts no line");
    h.queue.push_used(chain.head, 0);
    h.queue.flush_used();
  }
  {
    PackedHarness h(16);
    add_buffers(h, 2);
    h.ring->add_chain({{h.buffer(64), 64, true}, {h.buffer(64), 64, true}});
    expect_refused(h, "a two-descriptor chain");
  }
  {
    PackedHarness h(16);
    add_buffers(h, 3);
    h.ring->add_chain({{h.buffer(64), 64, false}});
    expect_refused(h, "a device-readable buffer");
  }
  {
    PackedHarness h(16);
    add_buffers(h, 3);
    const std::uint64_t table = h.buffer(32);
    h.ring->add_indirect({{h.buffer(64), 64, true}}, table);
    expect_refused(h, "an indirect descriptor");
  }
  {
    PackedHarness h(10);  // packed rings need not be powers of two
    h.ring->start_at(8, true);
    h.queue.set_vring_base(8 | kPackedWrapBit);
    add_buffers(h, 4);  // slots 8, 9, 0, 1
    expect_refused(h, "a line that would span the wrap");
  }
}

TEST(PackedFillBatch, RefusesHostileIdsAndAddressesAndLeavesThemToPop) {
  // A buffer id made available twice within the line.
  {
    PackedHarness h(16);
    put_writable_line(h, 0, {0, 1, 2, 1}, h.buffer(64));
    expect_refused(h, "id 1 twice");
  }
  // An id at or above the queue size.
  {
    PackedHarness h(16);
    put_writable_line(h, 0, {0, 1, 16, 3}, h.buffer(64));
    expect_refused(h, "id 16 in a ring of 16");
    DescriptorChain chain;
    ASSERT_TRUE(h.queue.pop(chain));
    ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_FALSE(h.queue.pop(chain));
    EXPECT_EQ(h.queue.error(), RingError::head_out_of_range) << "pop() judges what the batch left";
  }
  // An id still outstanding (popped, not yet used) made available again.
  {
    PackedHarness h(16);
    const auto ids = add_buffers(h, 4);
    DescriptorChain chain;
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(h.pop_one(chain));
    put_writable_line(h, 4, {8, ids[0], 10, 11}, h.buffer(64));
    expect_refused(h, "an outstanding id");
  }
  // A buffer outside guest memory, and one of length 0.
  for (const auto& [addr, len] : {std::pair<std::uint64_t, std::uint32_t>{kMiB - 8, 64}, {0x1000, 0}}) {
    PackedHarness h(16);
    put_writable_line(h, 0, {0, 1, 2, 3}, h.buffer(64), RawDesc{3, addr, len});
    expect_refused(h, len == 0 ? "a zero-length buffer" : "a buffer past the end of guest memory");
  }
}

TEST(PackedFillBatch, StagedElementsArePublishedBeforeTheBatch) {
  PackedHarness h(16);
  const auto first = add_buffers(h, 4);
  DescriptorChain chains[4];
  for (auto& c : chains) ASSERT_TRUE(h.pop_one(c));
  h.queue.push_used(chains[0].head, 5);  // staged, not flushed
  h.queue.push_used(chains[1].head, 6);
  const auto batch_ids = add_buffers(h, 4);  // slots 4-7
  ASSERT_GT(h.queue.poll(), 0);
  PackedQueue::FillBatch batch;
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  h.queue.commit_fill_batch(batch, {7, 8, 9, 10});
  // Two chains are still outstanding: the batch's used descriptors take the next used slots.
  h.queue.push_used(chains[2].head, 11);
  h.queue.push_used(chains[3].head, 12);
  h.queue.flush_used();

  const std::vector<std::uint16_t> order{first[0], first[1], batch_ids[0], batch_ids[1],
                                         batch_ids[2], batch_ids[3], first[2], first[3]};
  for (std::uint32_t i = 0; i < order.size(); ++i) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, order[i]) << i;
    EXPECT_EQ(used->len, 5 + i) << i;
    EXPECT_EQ(used->slot, i);
  }
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_EQ(h.queue.in_flight(), 0u);
}

TEST(PackedFillBatch, LapsKeepTheWrapCountersRight) {
  PackedHarness h(8);
  std::uint32_t seen = 0;
  for (int lap = 0; lap < 5; ++lap) {  // five laps: both wrap counters flip five times
    for (int half = 0; half < 2; ++half) {
      const auto ids = add_buffers(h, 4);
      ASSERT_GT(h.queue.poll(), 0);
      PackedQueue::FillBatch batch;
      ASSERT_TRUE(h.queue.peek_fill_batch(batch)) << "lap " << lap;
      h.queue.commit_fill_batch(batch, {1, 2, 3, 4});
      for (std::uint32_t k = 0; k < kBatch; ++k) {
        const auto used = h.ring->pop_used();
        ASSERT_TRUE(used.has_value()) << "lap " << lap;
        EXPECT_TRUE(used->known);
        EXPECT_EQ(used->id, ids[k]);
        EXPECT_EQ(used->slot, half * 4 + k);
        ++seen;
      }
    }
  }
  EXPECT_EQ(seen, 40u);
  EXPECT_EQ(h.queue.vring_base(), 0u) << "back at slot 0 with both wrap counters 0";
  EXPECT_EQ(h.ring->used_wrap(), false);
}

TEST(PackedFillBatch, EventIdxNamesThePositionAfterTheBatch) {
  PackedHarness h(16, {{0, kMiB}}, true);
  add_buffers(h, 4);
  ASSERT_GT(h.queue.poll(), 0);
  PackedQueue::FillBatch batch;
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  h.queue.commit_fill_batch(batch, {1, 1, 1, 1});
  EXPECT_EQ(h.ring->device_event().off_wrap, 4 | kPackedWrapBit)
      << "the driver's kick decision sees the device's new avail position";
}

// ---- dirty log ----

struct FillLoggingHarness : PackedHarness {
  // A ring of 512: the descriptor ring spans two pages.
  explicit FillLoggingHarness(std::uint32_t addr_flags)
      : PackedHarness(512, {{0, kMiB}}, false, addr_flags), log(DirtyLog::anonymous(kMiB / kDirtyPageSize / 8)) {
    memory.set_log(log);
    memory.set_log_all(true);
  }
  std::shared_ptr<DirtyLog> log;
};

void commit_one_batch_at_slot_304(FillLoggingHarness& h) {
  h.ring->start_at(304, true);
  h.queue.set_vring_base(304 | kPackedWrapBit);
  add_buffers(h, 4);
  ASSERT_GT(h.queue.poll(), 0);
  PackedQueue::FillBatch batch;
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  h.queue.commit_fill_batch(batch, {64, 64, 64, 64});
}

TEST(PackedFillBatch, TheUsedDescriptorsAreLoggedWithTheRingLogFlag) {
  FillLoggingHarness h(kVringFLog);
  commit_one_batch_at_slot_304(h);
  const std::uint64_t ring = h.ring->desc_gpa();
  ASSERT_EQ(ring % kDirtyPageSize, 0u);
  EXPECT_TRUE(h.log->is_dirty(ring + kDirtyPageSize)) << "slots 304-307 are in the ring's second page";
  EXPECT_FALSE(h.log->is_dirty(ring));
  EXPECT_EQ(h.log->out_of_range(), 0u);
}

TEST(PackedFillBatch, NoRingLoggingWithoutTheFlag) {
  FillLoggingHarness h(0);
  commit_one_batch_at_slot_304(h);
  EXPECT_FALSE(h.log->is_dirty(h.ring->desc_gpa() + kDirtyPageSize));
}

}  // namespace
}  // namespace vhostd::test
