// Well-formed packed rings: chains in (direct, indirect, ids that are not slots, across the end
// of the ring over many laps), zero-length and region-spanning buffers, rewind, poll's count.
#include <gtest/gtest.h>

#include <cstring>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

std::vector<std::uint8_t> concat(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  std::vector<std::uint8_t> out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

TEST(PackedQueueChains, ReadableThenWritableChainThroughReaderAndWriter) {
  PackedHarness h;
  const auto req_a = pattern(100, 1), req_b = pattern(50, 2);
  const std::uint64_t a = h.buffer(100, req_a), b = h.buffer(50, req_b);
  const std::uint64_t c = h.buffer(64), d = h.buffer(200);
  const std::uint16_t id = h.ring->add_chain({{a, 100, false}, {b, 50, false}, {c, 64, true}, {d, 200, true}});

  ASSERT_EQ(h.queue.poll(), 1);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.head, id);
  EXPECT_EQ(chain.num_readable, 2);
  EXPECT_EQ(chain.num_writable, 2);
  EXPECT_EQ(chain.readable_bytes, 150u);
  EXPECT_EQ(chain.writable_bytes, 264u);
  EXPECT_EQ(chain.readable()[1].gpa, b);
  EXPECT_EQ(chain.writable()[0].gpa, c);
  EXPECT_EQ(h.queue.in_flight(), 4u);
  EXPECT_EQ(h.queue.avail_idx(), 4);

  ChainReader reader(chain);
  std::vector<std::uint8_t> got(150);
  EXPECT_EQ(reader.read(got.data(), 160), 150u);
  EXPECT_EQ(got, concat(req_a, req_b));

  const auto resp = pattern(264, 9);
  ChainWriter writer(chain, *h.queue.table());
  EXPECT_EQ(writer.write(resp.data(), 300), 264u);
  EXPECT_EQ(h.guest->bytes(c, 64), std::vector<std::uint8_t>(resp.begin(), resp.begin() + 64));
  EXPECT_EQ(h.guest->bytes(d, 200), std::vector<std::uint8_t>(resp.begin() + 64, resp.end()));

  auto used = h.complete(chain.head, 264);
  ASSERT_TRUE(used.has_value());
  EXPECT_TRUE(used->known);
  EXPECT_EQ(used->id, id);
  EXPECT_EQ(used->len, 264u);
  EXPECT_EQ(used->slot, 0);
  EXPECT_EQ(h.ring->next_used(), 4) << "the driver skips the four slots the chain took";
  EXPECT_EQ(h.queue.used_idx(), 4);
  EXPECT_EQ(h.queue.in_flight(), 0u);
  EXPECT_EQ(h.queue.stats().requests.load(), 1u);
  EXPECT_EQ(h.queue.stats().batches.load(), 1u);
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.queue.stats().empty_polls.load(), 1u);
  EXPECT_FALSE(h.queue.pop(chain));
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueChains, ChainsOfOneToRingSizeDescriptors) {
  constexpr std::uint32_t kSize = 16;
  PackedHarness h(kSize);
  const std::uint64_t buf = h.buffer(64 * kSize);
  DescriptorChain chain;
  // Chain n starts where chain n-1 ended, so most of them cross the end of the ring.
  for (std::uint32_t n = 1; n <= kSize; ++n) {
    std::vector<DriverBuffer> buffers;
    const std::uint32_t readable = n / 2;
    for (std::uint32_t i = 0; i < n; ++i) buffers.push_back({buf + 64 * i, 8 + i, i >= readable});
    const std::uint16_t id = h.ring->add_chain(buffers);
    ASSERT_TRUE(h.pop_one(chain)) << n;
    EXPECT_EQ(chain.head, id);
    ASSERT_EQ(chain.num_readable, readable) << n;
    ASSERT_EQ(chain.num_writable, n - readable) << n;
    for (std::uint32_t i = 0; i < n; ++i) {
      EXPECT_EQ(chain.segments[i].gpa, buf + 64 * i) << n << "/" << i;
      EXPECT_EQ(chain.segments[i].len, 8 + i) << n << "/" << i;
    }
    auto used = h.complete(chain.head, n);
    ASSERT_TRUE(used.has_value()) << n;
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, id);
    EXPECT_EQ(used->len, n);
    ASSERT_EQ(h.ring->next_used(), h.ring->next_avail()) << n;
    ASSERT_EQ(h.ring->used_wrap(), h.ring->avail_wrap()) << n;
  }
  // 1 + 2 + ... + 16 = 136 slots: eight laps and a half.
  EXPECT_EQ(h.queue.avail_idx(), 136 % kSize);
  EXPECT_EQ(h.queue.avail_wrap(), (136 / kSize) % 2 == 0);
  EXPECT_EQ(h.queue.used_idx(), h.queue.avail_idx());
  EXPECT_EQ(h.queue.used_wrap(), h.queue.avail_wrap());
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueChains, BufferIdsAreNotSlots) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  EXPECT_EQ(h.ring->add_chain({{buf, 8, false}}, 11), 11);
  EXPECT_EQ(h.ring->add_chain({{buf, 8, false}, {buf + 8, 8, true}}, 3), 3);
  EXPECT_EQ(h.ring->add_chain({{buf, 8, true}}, 15), 15);
  ASSERT_EQ(h.queue.poll(), 3);
  DescriptorChain chain;
  for (std::uint16_t want : {11, 3, 15}) {
    ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_EQ(chain.head, want);
    h.queue.push_used(chain.head, want);
  }
  h.queue.flush_used();
  for (std::uint16_t want : {11, 3, 15}) {
    auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_TRUE(used->known);
    EXPECT_EQ(used->id, want);
    EXPECT_EQ(used->len, want);
  }
  EXPECT_EQ(h.ring->free_ids(), 16u);
}

TEST(PackedQueueChains, TheChainsIdIsTheLastDescriptors) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  // The first two descriptors carry junk ids (0xbeef...), beyond the queue size even.
  const std::uint16_t id = h.ring->add_chain({{buf, 8, false}, {buf + 8, 8, false}, {buf + 16, 8, true}}, 9, false);
  ASSERT_EQ(h.ring->desc(0).id, 0xbeef);
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.head, id);
  EXPECT_EQ(h.complete(chain.head, 0)->id, 9);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueChains, IndirectChain) {
  PackedHarness h;
  const auto req = pattern(40, 3);
  const std::uint64_t r = h.buffer(40, req), w = h.buffer(80);
  const std::uint16_t id = h.ring->add_indirect({{r, 40, false}, {w, 30, true}, {w + 30, 50, true}}, h.buffer(3 * 16), 77);

  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.head, id);
  EXPECT_EQ(chain.num_readable, 1);
  EXPECT_EQ(chain.num_writable, 2);
  EXPECT_EQ(chain.writable_bytes, 80u);
  std::vector<std::uint8_t> got(40);
  EXPECT_EQ(ChainReader(chain).read(got.data(), 40), 40u);
  EXPECT_EQ(got, req);
  const auto resp = pattern(80, 4);
  EXPECT_EQ(ChainWriter(chain, *h.queue.table()).write(resp.data(), 80), 80u);
  EXPECT_EQ(h.guest->bytes(w, 80), resp);
  EXPECT_EQ(h.queue.in_flight(), 1u) << "an indirect chain takes one slot";
  auto used = h.complete(chain.head, 80);
  EXPECT_EQ(used->id, 77);
  EXPECT_EQ(h.ring->next_used(), 1);
}

// DPDK's virtio PMD sets NEXT and the AVAIL/USED bits inside indirect tables; only WRITE counts.
TEST(PackedQueueChains, IndirectTableFlagsOtherThanWriteAreIgnored) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(256);
  const std::vector<DriverBuffer> buffers = {{buf, 16, false}, {buf + 16, 16, false}, {buf + 32, 64, true}};
  for (int lap = 0; lap < 40; ++lap) {  // both wrap values of the AVAIL/USED bits in the table
    const std::uint16_t id = h.ring->add_indirect(buffers, h.buffer(3 * 16), std::nullopt, true);
    DescriptorChain chain;
    ASSERT_TRUE(h.pop_one(chain)) << lap;
    EXPECT_EQ(chain.head, id);
    EXPECT_EQ(chain.num_readable, 2);
    EXPECT_EQ(chain.num_writable, 1);
    EXPECT_EQ(h.complete(chain.head, 64)->id, id);
  }
  EXPECT_FALSE(h.queue.in_error());
}

// DPDK's virtio PMD builds its packed indirect TX tables with the virtio-net header entry
// marked WRITE, followed by the (readable) frame: a hostile order on a ring that may carry
// writable buffers, the expected shape on one the device only reads (a net TX ring).
TEST(PackedQueueChains, ReadableOnlyRingIgnoresWriteFlags) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(256);
  const std::vector<DriverBuffer> dpdk_tx = {{buf, 12, true}, {buf + 12, 64, false}, {buf + 76, 936, false}};
  h.queue.set_readable_only(true);
  for (int lap = 0; lap < 40; ++lap) {
    const std::uint16_t id = h.ring->add_indirect(dpdk_tx, h.buffer(3 * 16), std::nullopt, true);
    DescriptorChain chain;
    ASSERT_TRUE(h.pop_one(chain)) << lap;
    EXPECT_EQ(chain.head, id);
    EXPECT_EQ(chain.num_readable, 3);
    EXPECT_EQ(chain.num_writable, 0);
    EXPECT_EQ(chain.readable_bytes, 12u + 64u + 936u);
    EXPECT_EQ(h.complete(chain.head, 0)->id, id);
  }
  EXPECT_FALSE(h.queue.in_error());

  // The same table on an ordinary ring is a readable descriptor after a writable one.
  PackedHarness strict(16);
  strict.ring->add_indirect(dpdk_tx, strict.buffer(3 * 16), std::nullopt, true);
  DescriptorChain chain;
  EXPECT_FALSE(strict.pop_one(chain));
  EXPECT_EQ(strict.queue.error(), RingError::readable_after_writable);
  // reset() forgets the setting.
  h.queue.reset();
  attach(h.queue, *h.ring, h.memory);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueChains, ZeroLengthDescriptorsYieldNoSegment) {
  PackedHarness h;
  const std::uint64_t r = h.buffer(16, pattern(16, 6)), w = h.buffer(32);
  // Policy: a zero-length descriptor's address is never used, so even an unmapped one is fine.
  h.ring->add_chain({{0xdead'0000'0000ull, 0, false}, {r, 16, false}, {w, 0, true}, {w, 32, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_readable, 1);
  EXPECT_EQ(chain.num_writable, 1);
  EXPECT_EQ(chain.readable()[0].gpa, r);
  EXPECT_EQ(chain.writable()[0].gpa, w);
  EXPECT_EQ(h.queue.in_flight(), 4u) << "zero-length descriptors still take their slots";
}

TEST(PackedQueueChains, BufferSpanningTwoAdjacentRegionsIsSplit) {
  constexpr std::uint64_t kRegion = 64 * 1024;
  PackedHarness h(64, {{0, kRegion}, {kRegion, kRegion}});
  const auto req = pattern(30, 5);
  const std::uint64_t gpa = kRegion - 10;
  h.guest->write(gpa, req.data(), req.size());
  const std::uint64_t out = kRegion * 2 - 8;  // ends exactly at the end of memory
  h.ring->add_chain({{gpa, 30, false}, {out, 8, true}});

  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  ASSERT_EQ(chain.num_readable, 2);
  EXPECT_EQ(chain.segments[0].len, 10u);
  EXPECT_EQ(chain.segments[1].gpa, kRegion);
  EXPECT_EQ(chain.segments[1].len, 20u);
  EXPECT_EQ(chain.segments[0].host, h.queue.table()->translate_gpa(gpa, 10));
  EXPECT_EQ(chain.segments[1].host, h.queue.table()->translate_gpa(kRegion, 20));
  std::vector<std::uint8_t> got(30);
  EXPECT_EQ(ChainReader(chain).read(got.data(), 30), 30u);
  EXPECT_EQ(got, req);
}

// Both wrap counters over many laps: batches of chains of 1, 2 and 3 descriptors against a ring
// of 8 put chains across the end of the ring most of the time.
void many_laps(std::uint32_t size) {
  PackedHarness h(size);
  const std::uint64_t buf = h.buffer(4096);
  std::uint32_t next_len = 1, laps = 0;
  bool last_wrap = h.queue.avail_wrap();
  for (int round = 0; round < 200; ++round) {
    std::vector<std::uint16_t> ids;
    std::vector<std::uint32_t> lengths;
    std::uint32_t slots = 0;
    for (std::uint32_t k = 0; k < 3; ++k) {
      const std::uint32_t n = 1 + (round + k) % 3;
      if (slots + n > size) break;
      std::vector<DriverBuffer> buffers;
      for (std::uint32_t i = 0; i < n; ++i) {
        buffers.push_back({buf + 64 * ((round + k + i) % 60), 16 + i, i + 1 == n});
      }
      ids.push_back(h.ring->add_chain(buffers));
      lengths.push_back(n);
      slots += n;
    }
    ASSERT_EQ(h.queue.poll(), ids.size()) << "round " << round;
    DescriptorChain chain;
    std::vector<std::uint32_t> lens;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      ASSERT_TRUE(h.queue.pop(chain)) << "round " << round;
      ASSERT_EQ(chain.head, ids[i]) << "round " << round;
      ASSERT_EQ(chain.num_readable + chain.num_writable, lengths[i]) << "round " << round;
      lens.push_back(next_len);
      h.queue.push_used(chain.head, next_len++);
    }
    if (h.queue.avail_wrap() != last_wrap) {
      ++laps;
      last_wrap = h.queue.avail_wrap();
    }
    ASSERT_EQ(h.queue.avail_idx(), h.ring->next_avail());
    ASSERT_EQ(h.queue.avail_wrap(), h.ring->avail_wrap());
    h.queue.flush_used();
    for (std::size_t i = 0; i < ids.size(); ++i) {
      auto used = h.ring->pop_used();
      ASSERT_TRUE(used.has_value()) << "round " << round;
      EXPECT_TRUE(used->known);
      EXPECT_EQ(used->id, ids[i]) << "round " << round;
      EXPECT_EQ(used->len, lens[i]) << "round " << round;
    }
    ASSERT_FALSE(h.ring->has_used());
    ASSERT_EQ(h.queue.used_idx(), h.ring->next_used());
    ASSERT_EQ(h.queue.used_wrap(), h.ring->used_wrap());
  }
  EXPECT_GE(laps, 20u);
  EXPECT_FALSE(h.queue.in_error()) << to_string(h.queue.error());
}

TEST(PackedQueueChains, ManyLapsWithChainsAcrossTheEndOfTheRing) { many_laps(8); }
TEST(PackedQueueChains, ManyLapsOnARingWhoseSizeIsNotAPowerOfTwo) { many_laps(6); }

TEST(PackedQueueChains, PollCountsWholeChains) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  EXPECT_EQ(h.queue.poll(), 0);
  h.ring->add_chain({{buf, 8, false}});
  h.ring->add_chain({{buf, 8, false}, {buf, 8, false}, {buf, 8, true}});
  h.ring->add_chain({{buf, 8, false}, {buf, 8, true}});
  EXPECT_EQ(h.queue.poll(), 3);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(h.queue.poll(), 2);
  // A chain longer than the window still counts as work.
  PackedHarness big(256);
  const std::uint64_t b = big.buffer(16);
  std::vector<DriverBuffer> long_chain(PackedQueue::kPollWindow + 10, DriverBuffer{b, 1, true});
  big.ring->add_chain(long_chain);
  EXPECT_EQ(big.queue.poll(), 1);
  ASSERT_TRUE(big.queue.pop(chain));
  EXPECT_EQ(chain.num_writable, PackedQueue::kPollWindow + 10);
}

TEST(PackedQueueChains, RewindGivesBackTheLastChainsAcrossTheEnd) {
  PackedHarness h(8);
  const std::uint64_t buf = h.buffer(64);
  h.ring->start_at(5, true);
  h.queue.set_vring_base(5 | kPackedWrapBit);
  const std::uint16_t a = h.ring->add_chain({{buf, 8, true}});                  // slot 5
  const std::uint16_t b = h.ring->add_chain({{buf, 8, true}, {buf, 8, true}});  // slots 6, 7
  const std::uint16_t c = h.ring->add_chain({{buf, 8, true}, {buf, 8, true}});  // slots 0, 1 (next lap)
  ASSERT_EQ(h.queue.poll(), 3);
  DescriptorChain chain;
  for (std::uint16_t want : {a, b, c}) {
    ASSERT_TRUE(h.queue.pop(chain));
    ASSERT_EQ(chain.head, want);
  }
  EXPECT_EQ(h.queue.avail_idx(), 2);
  EXPECT_FALSE(h.queue.avail_wrap());
  EXPECT_EQ(h.queue.stats().requests.load(), 3u);

  h.queue.rewind(2);
  EXPECT_EQ(h.queue.avail_idx(), 6);
  EXPECT_TRUE(h.queue.avail_wrap());
  EXPECT_EQ(h.queue.in_flight(), 1u);
  EXPECT_EQ(h.queue.stats().requests.load(), 1u);
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.head, b);
  EXPECT_EQ(chain.num_writable, 2);
  // b is pushed: a rewind stops at it.
  h.queue.push_used(b, 8);
  h.queue.rewind(2);
  EXPECT_EQ(h.queue.avail_idx(), 0);
  EXPECT_FALSE(h.queue.avail_wrap());
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.head, c);
  h.queue.push_used(a, 0);
  h.queue.push_used(c, 0);
  h.queue.flush_used();
  for (std::uint16_t want : {b, a, c}) EXPECT_EQ(h.ring->pop_used()->id, want);
  EXPECT_EQ(h.queue.in_flight(), 0u);
  EXPECT_FALSE(h.queue.in_error());
}

// The same device code (a template over DataPathQueue) serving a split and a packed ring.
template <DataPathQueue Queue>
unsigned echo(Queue& queue, DescriptorChain& chain) {
  unsigned served = 0;
  while (queue.pop(chain)) {
    ChainWriter writer(chain, *queue.table());
    for (const ChainSegment& segment : chain.readable()) writer.write(segment.host, segment.len);
    queue.push_used(chain.head, static_cast<std::uint32_t>(writer.written()));
    ++served;
  }
  queue.flush_used();
  queue.notify();
  return served;
}

TEST(PackedQueueChains, OneDeviceTemplateServesBothLayouts) {
  const auto req = pattern(24, 12);
  DescriptorChain chain;
  {
    RingHarness split(16);
    const std::uint64_t in = split.buffer(24, req), out = split.buffer(24);
    split.ring->add_chain({{in, 24, false}, {out, 24, true}});
    ASSERT_GT(split.queue.poll(), 0);
    EXPECT_EQ(echo(split.queue, chain), 1u);
    EXPECT_EQ(split.guest->bytes(out, 24), req);
    EXPECT_EQ(split.ring->pop_used()->len, 24u);
  }
  {
    PackedHarness packed(16);
    const std::uint64_t in = packed.buffer(24, req), out = packed.buffer(24);
    packed.ring->add_chain({{in, 24, false}, {out, 24, true}});
    ASSERT_GT(packed.queue.poll(), 0);
    EXPECT_EQ(echo(packed.queue, chain), 1u);
    EXPECT_EQ(packed.guest->bytes(out, 24), req);
    EXPECT_EQ(packed.ring->pop_used()->len, 24u);
  }
}

TEST(PackedQueueMemory, TableSwapIsPickedUpOnTheNextPoll) {
  PackedHarness h(16, {{0, 2 * kMiB}});
  const auto req = pattern(32, 7);
  const std::uint64_t buf = h.buffer(32, req);
  h.ring->add_chain({{buf, 32, false}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  const MemoryTable* old_table = h.queue.table();

  const auto split = h.guest->split_regions(2);
  h.memory.set_regions(split, h.guest->region_fds(split.size()));
  const MemoryTable* new_table = h.memory.current();
  ASSERT_NE(new_table, old_table);

  h.ring->add_chain({{buf, 32, false}});
  ASSERT_EQ(h.queue.poll(), 1);
  EXPECT_EQ(h.queue.table(), new_table);
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.readable()[0].host, new_table->translate_gpa(buf, 32));
  h.queue.push_used(chain.head, 0);
  h.queue.flush_used();
  EXPECT_TRUE(h.ring->pop_used().has_value());  // written through the new mapping of the ring

  // A table that no longer maps the ring puts it in error on the next poll.
  const MemoryRegionInfo only_second[] = {split[1]};
  h.memory.set_regions(only_second, h.guest->region_fds(1));
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.queue.error(), RingError::ring_address);
}

}  // namespace
}  // namespace vhostd::test
