// The line batches of packed rings, four single descriptors in one ring line at once.
//   - The batched fill (PackedQueue::peek_fill_batch / commit_fill_batch): writable buffers
//     taken and published as used together; every case it refuses (taking nothing, so that
//     pop() judges those descriptors); staged elements published before it; the wrap counter of
//     the next lap; EVENT_IDX; the dirty log.
//   - The batched pop (PackedQueue::pop_batch): readable chains popped as pop() pops them, each
//     used like any popped chain (and, with IN_ORDER, a run of them as one used descriptor);
//     the same refusals; rewind.
//   - The same pop in two steps (PackedQueue::peek_batch / take_batch): a peek takes nothing,
//     the line read ahead is taken after the first, a stale batch is not taken.
#include <gtest/gtest.h>

#include <array>
#include <optional>
#include <vector>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

constexpr std::uint32_t kBatch = PackedQueue::kLineBatch;

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

  PackedQueue::LineBatch batch;
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
  PackedQueue::LineBatch batch;
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
  PackedQueue::LineBatch batch;
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
      PackedQueue::LineBatch batch;
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
  PackedQueue::LineBatch batch;
  ASSERT_TRUE(h.queue.peek_fill_batch(batch));
  h.queue.commit_fill_batch(batch, {1, 1, 1, 1});
  EXPECT_EQ(h.ring->device_event().off_wrap, 4 | kPackedWrapBit)
      << "the driver's kick decision sees the device's new avail position";
}

TEST(PackedFillBatch, TheNextLineIsReadAheadAndCommittedAfterTheFirst) {
  PackedHarness h(8);
  const auto first = add_buffers(h, 4);
  PackedQueue::LineBatch now, ahead;
  ASSERT_GT(h.queue.poll(), 0);
  EXPECT_FALSE(h.queue.peek_fill_batch(ahead, true)) << "the next line is not available yet";
  const auto second = add_buffers(h, 4);  // slots 4-7: the ring is full
  ASSERT_TRUE(h.queue.peek_fill_batch(now));
  ASSERT_TRUE(h.queue.peek_fill_batch(ahead, true));
  EXPECT_EQ(ahead.ids[0], second[0]);
  EXPECT_EQ(ahead.buffers[3].gpa, h.ring->desc(7).addr);
  const QueueState before = state_of(h.queue);
  h.queue.commit_fill_batch(ahead, {1, 1, 1, 1});
  EXPECT_EQ(state_of(h.queue), before) << "a line read ahead is not committed before the line before it";
  EXPECT_FALSE(h.ring->has_used());
  h.queue.commit_fill_batch(now, {1, 2, 3, 4});
  h.queue.commit_fill_batch(ahead, {5, 6, 7, 8});
  for (std::uint32_t i = 0; i < 8; ++i) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_EQ(used->id, i < 4 ? first[i] : second[i - 4]);
    EXPECT_EQ(used->len, i + 1);
    EXPECT_EQ(used->slot, i);
  }
  // Read ahead across the wrap: slots 4-7, then slots 0-3 of the next lap (the driver's wrap
  // counter flipped there).
  add_buffers(h, 4);  // slots 0-3 of lap 2
  ASSERT_GT(h.queue.poll(), 0);
  ASSERT_TRUE(h.queue.peek_fill_batch(now));
  h.queue.commit_fill_batch(now, {1, 1, 1, 1});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(h.ring->pop_used().has_value());
  const auto before_wrap = add_buffers(h, 4);  // slots 4-7 of lap 2
  const auto after_wrap = add_buffers(h, 4);   // slots 0-3 of lap 3
  ASSERT_GT(h.queue.poll(), 0);
  ASSERT_TRUE(h.queue.peek_fill_batch(now));
  ASSERT_TRUE(h.queue.peek_fill_batch(ahead, true));
  EXPECT_EQ(ahead.ids[0], after_wrap[0]);
  h.queue.commit_fill_batch(now, {2, 2, 2, 2});
  h.queue.commit_fill_batch(ahead, {3, 3, 3, 3});
  for (std::uint32_t i = 0; i < 8; ++i) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, i < 4 ? before_wrap[i] : after_wrap[i - 4]);
    EXPECT_EQ(used->slot, (4 + i) % 8);
    EXPECT_EQ(used->len, i < 4 ? 2u : 3u);
  }
  EXPECT_EQ(h.queue.in_flight(), 0u);
}

TEST(PackedFillBatch, ALineReadAheadIsStaleOnceThePositionMoves) {
  PackedHarness h(16);
  add_buffers(h, 8);
  ASSERT_GT(h.queue.poll(), 0);
  PackedQueue::LineBatch now, ahead;
  ASSERT_TRUE(h.queue.peek_fill_batch(now));
  ASSERT_TRUE(h.queue.peek_fill_batch(ahead, true));
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));  // the per-packet path took slot 0 instead
  const QueueState before = state_of(h.queue);
  h.queue.commit_fill_batch(now, {1, 1, 1, 1});
  h.queue.commit_fill_batch(ahead, {1, 1, 1, 1});
  EXPECT_EQ(state_of(h.queue), before) << "neither batch names the current position";
  EXPECT_FALSE(h.ring->has_used());
  EXPECT_FALSE(h.queue.in_error());
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
  PackedQueue::LineBatch batch;
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

// ---- the batched pop ----

// Makes `n` single readable buffers of `len` bytes available; returns their ids.
std::vector<std::uint16_t> add_readable(PackedHarness& h, std::uint32_t n, std::uint32_t len = 76) {
  std::vector<std::uint16_t> ids;
  for (std::uint32_t i = 0; i < n; ++i) ids.push_back(h.ring->add_chain({{h.buffer(len), len, false}}));
  return ids;
}

// A refused pop_batch() takes nothing and judges nothing.
void expect_pop_refused(PackedHarness& h, const char* why) {
  h.queue.poll();
  const QueueState before = state_of(h.queue);
  std::array<DescriptorChain, kBatch> chains;
  EXPECT_FALSE(h.queue.pop_batch(chains.data())) << why;
  EXPECT_EQ(state_of(h.queue), before) << why;
  EXPECT_FALSE(h.queue.in_error()) << why << ": refusing is not judging";
}

TEST(PackedPopBatch, FourReadableChainsArePoppedAsPopPopsThem) {
  PackedHarness batched(16), single(16);
  const auto ids = add_readable(batched, 8, 76);
  add_readable(single, 8, 76);
  ASSERT_EQ(batched.queue.poll(), 8);
  ASSERT_EQ(single.queue.poll(), 8);
  std::array<DescriptorChain, kBatch> chains;
  ASSERT_TRUE(batched.queue.pop_batch(chains.data()));
  EXPECT_EQ(batched.queue.avail_idx(), 4);
  EXPECT_EQ(batched.queue.in_flight(), 4u);
  EXPECT_EQ(batched.queue.stats().requests.load(), 4u);
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    DescriptorChain expected;
    ASSERT_TRUE(single.queue.pop(expected));
    const DescriptorChain& got = chains[k];
    EXPECT_EQ(got.head, ids[k]);
    EXPECT_EQ(got.head, expected.head);
    EXPECT_EQ(got.num_readable, 1);
    EXPECT_EQ(got.num_writable, 0);
    EXPECT_EQ(got.readable_bytes, 76u);
    EXPECT_EQ(got.writable_bytes, 0u);
    EXPECT_EQ(got.segments[0].gpa, expected.segments[0].gpa);
    EXPECT_EQ(got.segments[0].len, expected.segments[0].len);
    EXPECT_EQ(got.segments[0].host - batched.queue.table()->translate_gpa(got.segments[0].gpa, 76), 0);
  }
  // Used like any popped chain, in any order; the next line comes through pop() too.
  for (std::uint32_t k = kBatch; k-- > 0;) batched.queue.push_used(chains[k].head, 0);
  batched.queue.flush_used();
  for (std::uint32_t k = kBatch; k-- > 0;) {
    const auto used = batched.ring->pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, ids[k]);
    EXPECT_EQ(used->len, 0u);
    EXPECT_EQ(used->flags & kVringDescFWrite, 0) << "nothing written";
  }
  DescriptorChain next;
  ASSERT_TRUE(batched.queue.pop(next));
  EXPECT_EQ(next.head, ids[4]);
  EXPECT_FALSE(batched.queue.pop_batch(chains.data())) << "slot 5 starts no line";
  EXPECT_FALSE(batched.queue.in_error());
}

TEST(PackedPopBatch, RefusesWhatIsNotFourSingleReadableBuffersInOneLine) {
  {
    PackedHarness h(16);
    add_readable(h, 3);
    expect_pop_refused(h, "three available");
  }
  {
    PackedHarness h(16);
    add_readable(h, 3);
    h.ring->add_chain({{h.buffer(64), 64, true}});
    expect_pop_refused(h, "a device-writable buffer");
  }
  {
    PackedHarness h(16);
    add_readable(h, 2);
    h.ring->add_chain({{h.buffer(12), 12, false}, {h.buffer(64), 64, false}});
    expect_pop_refused(h, "a two-descriptor chain");
  }
  {
    PackedHarness h(16);
    add_readable(h, 3);
    h.ring->add_indirect({{h.buffer(64), 64, false}}, h.buffer(32));
    expect_pop_refused(h, "an indirect descriptor");
  }
  {
    PackedHarness h(10);
    h.ring->start_at(8, true);
    h.queue.set_vring_base(8 | kPackedWrapBit);
    add_readable(h, 4);  // slots 8, 9, 0, 1
    expect_pop_refused(h, "a line that would span the wrap");
  }
  // Hostile lines: refused here, judged by pop().
  {
    PackedHarness h(16);
    for (std::uint32_t k = 0; k < kBatch; ++k) {
      h.ring->put(k, PackedDesc{h.buffer(64), 64, static_cast<std::uint16_t>(k == 3 ? 16 : k), h.ring->avail_bits()});
    }
    expect_pop_refused(h, "id 16 in a ring of 16");
    DescriptorChain chain;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_FALSE(h.queue.pop(chain));
    EXPECT_EQ(h.queue.error(), RingError::head_out_of_range);
  }
  {
    PackedHarness h(16);
    const std::uint16_t ids[kBatch] = {0, 1, 2, 1};
    for (std::uint32_t k = 0; k < kBatch; ++k) h.ring->put(k, PackedDesc{h.buffer(64), 64, ids[k], h.ring->avail_bits()});
    expect_pop_refused(h, "id 1 twice");
    DescriptorChain chain;
    for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_FALSE(h.queue.pop(chain));
    EXPECT_EQ(h.queue.error(), RingError::used_id_out_of_range) << "a descriptor made available twice";
  }
  for (const auto& [addr, len] : {std::pair<std::uint64_t, std::uint32_t>{kMiB - 8, 64}, {0x1000, 0}}) {
    PackedHarness h(16);
    for (std::uint32_t k = 0; k < kBatch; ++k) {
      h.ring->put(k, PackedDesc{k == 2 ? addr : h.buffer(64), k == 2 ? len : 64u, static_cast<std::uint16_t>(k),
                                h.ring->avail_bits()});
    }
    expect_pop_refused(h, len == 0 ? "a zero-length buffer" : "a buffer past the end of guest memory");
  }
}

TEST(PackedPopBatch, AReadableOnlyRingTakesWriteFlaggedBuffersAndFillsNothing) {
  // DPDK's virtio PMD marks the header entry of its packed indirect TX tables WRITE; on a ring
  // the device only reads (a net TX ring) the flag is ignored, here as in pop().
  PackedHarness h(16);
  h.queue.set_readable_only(true);
  for (int i = 0; i < 4; ++i) h.ring->add_chain({{h.buffer(64), 64, i % 2 == 0}});
  ASSERT_EQ(h.queue.poll(), 4);
  PackedQueue::LineBatch line;
  EXPECT_FALSE(h.queue.peek_fill_batch(line)) << "no buffer of a readable-only ring is the device's to write";
  std::array<DescriptorChain, kBatch> chains;
  ASSERT_TRUE(h.queue.pop_batch(chains.data()));
  for (const DescriptorChain& chain : chains) {
    EXPECT_EQ(chain.num_readable, 1);
    EXPECT_EQ(chain.readable_bytes, 64u);
  }
}

TEST(PackedPopBatch, RewindGivesABatchBack) {
  PackedHarness h(16);
  const auto ids = add_readable(h, 4);
  ASSERT_EQ(h.queue.poll(), 4);
  std::array<DescriptorChain, kBatch> chains;
  ASSERT_TRUE(h.queue.pop_batch(chains.data()));
  h.queue.rewind(4);
  EXPECT_EQ(h.queue.avail_idx(), 0);
  EXPECT_EQ(h.queue.in_flight(), 0u);
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    DescriptorChain chain;
    ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_EQ(chain.head, ids[k]);
  }
}

TEST(PackedPopBatch, InOrderPublishesARunOfBatchesAsOneUsedDescriptor) {
  PackedHarness h(16);
  h.ring->set_in_order(true);
  h.queue.set_in_order(true);
  for (int round = 0; round < 3; ++round) {  // three rounds: the run's slot moves on each time
    const auto ids = add_readable(h, 8);
    ASSERT_EQ(h.queue.poll(), 8);
    std::array<DescriptorChain, 2 * kBatch> chains;
    ASSERT_TRUE(h.queue.pop_batch(chains.data()));
    ASSERT_TRUE(h.queue.pop_batch(chains.data() + kBatch));
    for (const DescriptorChain& chain : chains) h.queue.push_used(chain.head, 0);
    h.queue.flush_used();
    const std::uint64_t entries_before = h.ring->used_entries();
    for (std::uint32_t i = 0; i < 2 * kBatch; ++i) {
      const auto used = h.ring->pop_used();
      ASSERT_TRUE(used.has_value()) << round << "/" << i;
      EXPECT_EQ(used->id, ids[i]);
      EXPECT_EQ(used->slot, (round * 8) % 16) << "one used descriptor at the run's first slot";
    }
    EXPECT_EQ(h.ring->used_entries() - entries_before, 1u);
    EXPECT_FALSE(h.ring->has_used());
  }
  EXPECT_EQ(h.queue.in_flight(), 0u);
}

// ---- the batched pop in two steps ----

TEST(PackedPeekBatch, APeekTakesNothingAndTheTakeIsPopBatchs) {
  PackedHarness h(16);
  const auto ids = add_readable(h, 8, 76);
  ASSERT_EQ(h.queue.poll(), 8);
  const QueueState before = state_of(h.queue);
  PackedQueue::LineBatch first, ahead;
  ASSERT_TRUE(h.queue.peek_batch(first));
  ASSERT_TRUE(h.queue.peek_batch(ahead, true));
  EXPECT_EQ(state_of(h.queue), before) << "peeking took something";
  EXPECT_EQ(first.pos, 0u);
  EXPECT_EQ(ahead.pos, 4u);
  for (std::uint32_t k = 0; k < kBatch; ++k) {
    EXPECT_EQ(first.ids[k], ids[k]);
    EXPECT_EQ(ahead.ids[k], ids[kBatch + k]);
    EXPECT_EQ(first.buffers[k].len, 76u);
    EXPECT_EQ(first.buffers[k].host, h.queue.table()->translate_gpa(first.buffers[k].gpa, 76));
  }
  EXPECT_FALSE(h.queue.take_batch(ahead)) << "the line ahead is taken only after the first";
  EXPECT_EQ(state_of(h.queue), before);
  ASSERT_TRUE(h.queue.take_batch(first));
  EXPECT_FALSE(h.queue.take_batch(first)) << "a batch is taken once";
  ASSERT_TRUE(h.queue.take_batch(ahead));
  EXPECT_EQ(h.queue.avail_idx(), 8);
  EXPECT_EQ(h.queue.in_flight(), 8u);
  EXPECT_EQ(h.queue.stats().requests.load(), 8u);
  // Taken chains are outstanding: the same ids are refused until used, then pushed like any.
  for (std::uint32_t k = 0; k < 2 * kBatch; ++k) h.queue.push_used(ids[k], 0);
  h.queue.flush_used();
  for (std::uint32_t k = 0; k < 2 * kBatch; ++k) {
    const auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value()) << k;
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, ids[k]);
  }
  EXPECT_FALSE(h.queue.in_error());
  EXPECT_EQ(h.queue.in_flight(), 0u);
}

TEST(PackedPeekBatch, RefusesWritableBuffersHostileIdsAndABatchMadeStaleByPop) {
  {
    PackedHarness h(16);
    add_buffers(h, 4);  // WRITE set: an RX refill, not a TX line
    h.queue.poll();
    PackedQueue::LineBatch line;
    EXPECT_FALSE(h.queue.peek_batch(line));
  }
  {
    PackedHarness h(16);
    add_readable(h, 4);
    h.ring->desc(2).id = 16;  // an id equal to the size
    h.queue.poll();
    PackedQueue::LineBatch line;
    EXPECT_FALSE(h.queue.peek_batch(line));
    EXPECT_FALSE(h.queue.in_error()) << "refusing is not judging";
  }
  {
    PackedHarness h(16);
    add_readable(h, 8);
    ASSERT_EQ(h.queue.poll(), 8);
    PackedQueue::LineBatch line;
    ASSERT_TRUE(h.queue.peek_batch(line));
    DescriptorChain chain;
    ASSERT_TRUE(h.queue.pop(chain));
    const QueueState before = state_of(h.queue);
    EXPECT_FALSE(h.queue.take_batch(line)) << "pop() moved the position";
    EXPECT_EQ(state_of(h.queue), before);
  }
}

}  // namespace
}  // namespace vhostd::test
