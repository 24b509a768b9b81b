// Well-formed rings: chains in and out, the used ring, resuming, memory table swaps, dirty log.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "ring_harness.hpp"

namespace vhostd::test {
namespace {

std::vector<std::uint8_t> concat(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  std::vector<std::uint8_t> out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

TEST(SplitQueueChains, ReadableThenWritableChainThroughReaderAndWriter) {
  RingHarness h;
  const auto req_a = pattern(100, 1), req_b = pattern(50, 2);
  const std::uint64_t a = h.buffer(100, req_a), b = h.buffer(50, req_b);
  const std::uint64_t c = h.buffer(64), d = h.buffer(200);
  const std::uint16_t head = h.ring->add_chain({{a, 100, false}, {b, 50, false}, {c, 64, true}, {d, 200, true}});

  ASSERT_EQ(h.queue.poll(), 1);
  DescriptorChain chain;
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.head, head);
  EXPECT_EQ(chain.num_readable, 2);
  EXPECT_EQ(chain.num_writable, 2);
  EXPECT_EQ(chain.readable_bytes, 150u);
  EXPECT_EQ(chain.writable_bytes, 264u);
  EXPECT_EQ(chain.readable()[1].gpa, b);
  EXPECT_EQ(chain.writable()[0].gpa, c);

  ChainReader reader(chain);
  EXPECT_EQ(reader.remaining(), 150u);
  std::vector<std::uint8_t> got(160, 0);
  EXPECT_EQ(reader.skip(10), 10u);
  EXPECT_EQ(reader.read(got.data(), 160), 140u);  // stops at the end of the readable data
  got.resize(140);
  const auto want = concat(req_a, req_b);
  EXPECT_EQ(got, std::vector<std::uint8_t>(want.begin() + 10, want.end()));
  EXPECT_EQ(reader.remaining(), 0u);
  EXPECT_EQ(reader.read(got.data(), 1), 0u);

  const auto resp = pattern(300, 9);
  ChainWriter writer(chain, *h.queue.table());
  EXPECT_EQ(writer.write(resp.data(), 30), 30u);
  EXPECT_EQ(writer.write(resp.data() + 30, 270), 234u);  // only 264 bytes are writable
  EXPECT_EQ(writer.written(), 264u);
  EXPECT_EQ(writer.remaining(), 0u);
  EXPECT_EQ(h.guest->bytes(c, 64), std::vector<std::uint8_t>(resp.begin(), resp.begin() + 64));
  EXPECT_EQ(h.guest->bytes(d, 200), std::vector<std::uint8_t>(resp.begin() + 64, resp.begin() + 264));

  h.queue.push_used(chain.head, 264);
  h.queue.flush_used();
  auto used = h.ring->pop_used();
  ASSERT_TRUE(used.has_value());
  EXPECT_EQ(used->id, head);
  EXPECT_EQ(used->len, 264u);
  EXPECT_EQ(h.queue.stats().requests.load(), 1u);
  EXPECT_EQ(h.queue.stats().batches.load(), 1u);
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.queue.stats().empty_polls.load(), 1u);
  EXPECT_FALSE(h.queue.pop(chain));
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueChains, IndirectChain) {
  RingHarness h;
  const auto req = pattern(40, 3);
  const std::uint64_t r = h.buffer(40, req), w = h.buffer(80);
  const std::uint64_t table = h.buffer(3 * 16);
  const std::uint16_t head = h.ring->add_indirect({{r, 40, false}, {w, 30, true}, {w + 30, 50, true}}, table);

  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.head, head);
  EXPECT_EQ(chain.num_readable, 1);
  EXPECT_EQ(chain.num_writable, 2);
  EXPECT_EQ(chain.writable_bytes, 80u);
  std::vector<std::uint8_t> got(40);
  ChainReader reader(chain);
  EXPECT_EQ(reader.read(got.data(), 40), 40u);
  EXPECT_EQ(got, req);
  const auto resp = pattern(80, 4);
  ChainWriter writer(chain, *h.queue.table());
  EXPECT_EQ(writer.write(resp.data(), 80), 80u);
  EXPECT_EQ(h.guest->bytes(w, 80), resp);
  h.queue.push_used(chain.head, 80);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->pop_used()->id, head);
}

TEST(SplitQueueChains, BufferSpanningTwoAdjacentRegionsIsSplit) {
  constexpr std::uint64_t kRegion = 64 * 1024;
  RingHarness h(64, {{0, kRegion}, {kRegion, kRegion}});
  ASSERT_EQ(h.memory.current()->num_regions(), 2u);
  const auto req = pattern(30, 5);
  const std::uint64_t gpa = kRegion - 10;
  h.guest->write(gpa, req.data(), req.size());
  const std::uint64_t out = kRegion * 2 - 8;  // writable buffer ending exactly at memory's end
  h.ring->add_chain({{gpa, 30, false}, {out, 8, true}});

  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  ASSERT_EQ(chain.num_readable, 2);
  EXPECT_EQ(chain.readable_bytes, 30u);
  EXPECT_EQ(chain.segments[0].gpa, gpa);
  EXPECT_EQ(chain.segments[0].len, 10u);
  EXPECT_EQ(chain.segments[1].gpa, kRegion);
  EXPECT_EQ(chain.segments[1].len, 20u);
  // Each piece points into its own region's mapping.
  EXPECT_EQ(chain.segments[0].host, h.queue.table()->translate_gpa(gpa, 10));
  EXPECT_EQ(chain.segments[1].host, h.queue.table()->translate_gpa(kRegion, 20));
  std::vector<std::uint8_t> got(30);
  ChainReader reader(chain);
  EXPECT_EQ(reader.read(got.data(), 30), 30u);
  EXPECT_EQ(got, req);
}

TEST(SplitQueueChains, ZeroLengthDescriptorsYieldNoSegment) {
  RingHarness h;
  const auto req = pattern(16, 6);
  const std::uint64_t r = h.buffer(16, req), w = h.buffer(32);
  // Policy: a zero-length descriptor's address is never used, so even an unmapped one is fine.
  h.ring->add_chain({{0xdead'0000'0000ull, 0, false}, {r, 16, false}, {w, 0, true}, {w, 32, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.num_readable, 1);
  EXPECT_EQ(chain.num_writable, 1);
  EXPECT_EQ(chain.readable()[0].gpa, r);
  EXPECT_EQ(chain.writable()[0].gpa, w);
  EXPECT_EQ(chain.writable()[0].len, 32u);
}

TEST(SplitQueueUsed, BatchIsPublishedWithOneIndexUpdate) {
  RingHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  std::vector<std::uint16_t> heads;
  for (int i = 0; i < 5; ++i) heads.push_back(h.ring->add_chain({{buf, 64, true}}));
  ASSERT_EQ(h.queue.poll(), 5);
  DescriptorChain chain;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(h.queue.pop(chain));
    EXPECT_EQ(chain.head, heads[i]);
    h.queue.push_used(chain.head, 100 + i);
  }
  EXPECT_EQ(h.ring->used_idx(), 0) << "staged elements must not be visible before flush_used()";
  EXPECT_EQ(h.queue.used_idx(), 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->used_idx(), 5);
  EXPECT_EQ(h.queue.used_idx(), 5);
  for (int i = 0; i < 5; ++i) {
    const VringUsedElem elem = h.ring->used_elem(i);
    EXPECT_EQ(elem.id, heads[i]);
    EXPECT_EQ(elem.len, 100u + i);
  }
}

TEST(SplitQueueUsed, FlushWithNothingStagedWritesNothing) {
  RingHarness h(16);
  auto* used_idx = reinterpret_cast<std::uint16_t*>(h.ring->host() + DriverRing::used_offset(16) + 2);
  *used_idx = 77;  // not what the device would write: any write would show
  std::memset(h.ring->host() + DriverRing::used_offset(16) + 4, 0xab, 8 * 16);
  ASSERT_EQ(h.queue.poll(), 0);
  h.queue.flush_used();
  EXPECT_EQ(*used_idx, 77);
  EXPECT_EQ(h.ring->used_elem(0).id, 0xababababu);
}

TEST(SplitQueueUsed, WrapsAroundTheRingEndOverManyBatches) {
  constexpr std::uint32_t kSize = 8;
  RingHarness h(kSize);
  const std::uint64_t buf = h.buffer(16);
  std::uint32_t next_len = 1;
  // Batches of 3 against a ring of 8 put the wrap in the middle of a batch most of the time.
  for (int round = 0; round < 40; ++round) {
    std::vector<std::uint16_t> heads;
    for (int i = 0; i < 3; ++i) heads.push_back(h.ring->add_chain({{buf, 16, true}}));
    ASSERT_EQ(h.queue.poll(), 3);
    DescriptorChain chain;
    std::vector<std::uint32_t> lens;
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(h.queue.pop(chain));
      ASSERT_EQ(chain.head, heads[i]);
      lens.push_back(next_len);
      h.queue.push_used(chain.head, next_len++);
    }
    h.queue.flush_used();
    ASSERT_EQ(h.ring->used_pending(), 3);
    for (int i = 0; i < 3; ++i) {
      auto elem = h.ring->pop_used();
      ASSERT_TRUE(elem.has_value());
      EXPECT_EQ(elem->id, heads[i]) << "round " << round;
      EXPECT_EQ(elem->len, lens[i]) << "round " << round;
    }
  }
  EXPECT_EQ(h.queue.used_idx(), 120);
  EXPECT_EQ(h.ring->used_idx(), 120);
  EXPECT_EQ(h.queue.stats().requests.load(), 120u);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueUsed, ResumesAtSetLastAvailIdxAcrossTheIndexWrap) {
  RingHarness h(16);
  const std::uint64_t buf = h.buffer(16);
  h.ring->start_at(65530);
  h.queue.set_last_avail_idx(65530);
  EXPECT_EQ(h.queue.used_idx(), 65530);
  for (int i = 0; i < 10; ++i) {
    const std::uint16_t head = h.ring->add_chain({{buf, 16, true}});
    DescriptorChain chain;
    ASSERT_TRUE(h.pop_one(chain)) << i;
    EXPECT_EQ(chain.head, head);
    h.queue.push_used(chain.head, i);
    h.queue.flush_used();
    auto elem = h.ring->pop_used();
    ASSERT_TRUE(elem.has_value()) << i;
    EXPECT_EQ(elem->id, head);
    EXPECT_EQ(elem->len, static_cast<std::uint32_t>(i));
  }
  EXPECT_EQ(h.queue.last_avail_idx(), 4);
  EXPECT_EQ(h.queue.used_idx(), 4);
  EXPECT_EQ(h.ring->used_idx(), 4);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(SplitQueueMemory, TableSwapIsPickedUpOnTheNextPoll) {
  RingHarness h(16, {{0, 2 * kMiB}});
  const auto req = pattern(32, 7);
  const std::uint64_t buf = h.buffer(32, req);
  h.ring->add_chain({{buf, 32, false}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  const MemoryTable* old_table = h.queue.table();
  ASSERT_EQ(old_table, h.memory.current());

  // Same guest memory, described as two regions: new mappings, the old ones are unmapped.
  const auto split = h.guest->split_regions(2);
  h.memory.set_regions(split, h.guest->region_fds(split.size()));
  const MemoryTable* new_table = h.memory.current();
  ASSERT_NE(new_table, old_table);
  ASSERT_EQ(new_table->num_regions(), 2u);

  h.ring->add_chain({{buf, 32, false}});
  ASSERT_EQ(h.queue.poll(), 1);
  EXPECT_EQ(h.queue.table(), new_table);
  ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(chain.readable()[0].host, new_table->translate_gpa(buf, 32));
  std::vector<std::uint8_t> got(32);
  ChainReader reader(chain);
  EXPECT_EQ(reader.read(got.data(), 32), 32u);
  EXPECT_EQ(got, req);
  h.queue.push_used(chain.head, 0);
  h.queue.flush_used();
  EXPECT_EQ(h.ring->used_idx(), 1);  // written through the new mapping of the used ring

  // A table that no longer maps the ring puts it in error on the next poll.
  const MemoryRegionInfo only_second[] = {split[1]};
  h.memory.set_regions(only_second, h.guest->region_fds(1));
  EXPECT_EQ(h.queue.poll(), 0);
  EXPECT_EQ(h.queue.error(), RingError::ring_address);
}

TEST(SplitQueueConcurrency, DeviceAndDriverOnTwoThreads) {
  constexpr std::uint32_t kSize = 64;
  constexpr std::uint64_t kRequests = 20000;
  RingHarness h(kSize);
  // One (request, response) pair of 8-byte buffers per possible in-flight chain.
  std::vector<std::uint64_t> slots;
  for (std::uint32_t i = 0; i < kSize / 2; ++i) slots.push_back(h.buffer(16));

  std::atomic<bool> stop{false};
  std::thread device([&] {
    std::uint64_t done = 0;
    DescriptorChain chain;
    while (done < kRequests && !h.queue.in_error() && !stop.load(std::memory_order_relaxed)) {
      if (h.queue.poll() == 0) continue;
      while (h.queue.pop(chain)) {
        std::uint64_t seq = 0;
        ChainReader(chain).read(&seq, sizeof seq);
        ChainWriter(chain, *h.queue.table()).write(&seq, sizeof seq);
        h.queue.push_used(chain.head, sizeof seq);
        ++done;
      }
      h.queue.flush_used();
    }
  });

  std::vector<std::uint64_t> slot_of_head(kSize), seq_of_head(kSize);
  std::vector<std::uint64_t> free_slots = slots;
  std::uint64_t sent = 0, received = 0;
  bool ok = true;
  while (received < kRequests && ok) {
    while (sent < kRequests && !free_slots.empty()) {
      const std::uint64_t slot = free_slots.back();
      free_slots.pop_back();
      h.guest->write(slot, &sent, sizeof sent);
      const std::uint16_t head = h.ring->add_chain({{slot, 8, false}, {slot + 8, 8, true}});
      slot_of_head[head] = slot;
      seq_of_head[head] = sent++;
    }
    while (auto elem = h.ring->pop_used()) {
      std::uint64_t echoed = 0;
      h.guest->read(slot_of_head[elem->id] + 8, &echoed, sizeof echoed);
      ok = elem->len == 8 && echoed == seq_of_head[elem->id];
      free_slots.push_back(slot_of_head[elem->id]);
      ++received;
    }
  }
  stop = true;
  device.join();
  EXPECT_TRUE(ok) << "wrong response after " << received << " requests";
  EXPECT_FALSE(h.queue.in_error()) << to_string(h.queue.error());
  EXPECT_EQ(received, kRequests);
}

// ---- dirty log ----

struct LoggingHarness : RingHarness {
  // Queue of 512: the used ring (6 + 8 * 512 bytes) spans two pages.
  explicit LoggingHarness(bool log_all, std::uint32_t addr_flags)
      : RingHarness(512, {{0, kMiB}}, false, addr_flags), log(DirtyLog::anonymous(kMiB / kDirtyPageSize / 8)) {
    memory.set_log(log);
    memory.set_log_all(log_all);
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

// One writable chain crossing a page boundary, written, pushed and flushed.
void write_one_response(LoggingHarness& h, std::uint64_t buf) {
  h.ring->add_chain({{buf, 200, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  const auto resp = pattern(200, 8);
  ChainWriter writer(chain, *h.queue.table());
  ASSERT_EQ(writer.write(resp.data(), 200), 200u);
  h.queue.push_used(chain.head, 200);
  h.queue.flush_used();
}

TEST(SplitQueueDirtyLog, FlushMarksUsedRingAndWriterMarksBuffer) {
  LoggingHarness h(true, kVringFLog);
  const std::uint64_t buf = 0x80000 + kDirtyPageSize - 100;  // far from the ring, crosses a page
  h.ring->start_at(511);  // the first used element goes to slot 511: bytes 4092..4099, across pages
  h.queue.set_last_avail_idx(511);
  write_one_response(h, buf);
  const std::uint64_t used = h.ring->used_gpa();
  ASSERT_EQ(used % kDirtyPageSize, 0u);
  EXPECT_EQ(h.dirty_pages(),
            (std::vector<std::uint64_t>{used, used + kDirtyPageSize, 0x80000, 0x80000 + kDirtyPageSize}));
  EXPECT_EQ(h.log->out_of_range(), 0u);
}

TEST(SplitQueueDirtyLog, UsedRingIsNotLoggedWithoutTheRingLogFlag) {
  LoggingHarness h(true, 0);
  write_one_response(h, 0x80000 + kDirtyPageSize - 100);
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{0x80000, 0x80000 + kDirtyPageSize}));
}

TEST(SplitQueueDirtyLog, NothingIsLoggedWithoutLogAll) {
  LoggingHarness h(false, kVringFLog);
  write_one_response(h, 0x80000 + kDirtyPageSize - 100);
  EXPECT_TRUE(h.dirty_pages().empty());
}

}  // namespace
}  // namespace vhostd::test
