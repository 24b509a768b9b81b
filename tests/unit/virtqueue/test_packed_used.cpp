// Used descriptors on packed rings: out-of-order completion and the slots chains skip, batch
// visibility, the WRITE flag, the vring base (GET/SET_VRING_BASE), the dirty log, and a device
// and a driver on two threads.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>

#include "packed_harness.hpp"

namespace vhostd::test {
namespace {

TEST(PackedQueueUsed, OutOfOrderCompletionSkipsEachChainsSlots) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  const std::uint16_t a = h.ring->add_chain({{buf, 8, true}}, 4);                                   // slot 0
  const std::uint16_t b = h.ring->add_chain({{buf, 8, false}, {buf, 8, false}, {buf, 8, true}}, 9);  // 1-3
  const std::uint16_t c = h.ring->add_chain({{buf, 8, false}, {buf, 8, true}}, 1);                  // 4-5
  ASSERT_EQ(h.queue.poll(), 3);
  DescriptorChain chain;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(h.queue.pop(chain));
  EXPECT_EQ(h.queue.in_flight(), 6u);

  // Completed c, a, b: used descriptors go in completion order, each skipping its chain's slots.
  h.queue.push_used(c, 30);
  h.queue.push_used(a, 10);
  h.queue.flush_used();
  EXPECT_EQ(h.queue.used_idx(), 3);
  EXPECT_EQ(h.queue.in_flight(), 3u);
  auto first = h.ring->pop_used();
  ASSERT_TRUE(first.has_value());
  EXPECT_EQ(first->id, c);
  EXPECT_EQ(first->len, 30u);
  EXPECT_EQ(first->slot, 0);
  auto second = h.ring->pop_used();
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(second->id, a);
  EXPECT_EQ(second->slot, 2) << "after c's two slots";
  EXPECT_FALSE(h.ring->has_used());

  h.queue.push_used(b, 20);
  h.queue.flush_used();
  auto third = h.ring->pop_used();
  ASSERT_TRUE(third.has_value());
  EXPECT_EQ(third->id, b);
  EXPECT_EQ(third->len, 20u);
  EXPECT_EQ(third->slot, 3);
  EXPECT_EQ(h.ring->next_used(), 6);
  EXPECT_EQ(h.queue.in_flight(), 0u);
  EXPECT_EQ(h.ring->free_slots(), 16u);
  EXPECT_EQ(h.ring->free_ids(), 16u);

  // The ring keeps going with the freed slots and ids.
  const std::uint16_t d = h.ring->add_chain({{buf, 8, true}});
  ASSERT_TRUE(h.pop_one(chain));
  EXPECT_EQ(chain.head, d);
  EXPECT_EQ(h.complete(d, 1)->slot, 6);
  EXPECT_FALSE(h.queue.in_error());
}

TEST(PackedQueueUsed, BatchBecomesVisibleOnlyAtFlush) {
  PackedHarness h(16);
  const std::uint64_t buf = h.buffer(64);
  std::vector<std::uint16_t> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(h.ring->add_chain({{buf, 64, true}}));
  ASSERT_EQ(h.queue.poll(), 5);
  DescriptorChain chain;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(h.queue.pop(chain));
    h.queue.push_used(chain.head, 100 + i);
  }
  EXPECT_FALSE(h.ring->has_used()) << "staged elements must not be visible before flush_used()";
  for (std::uint32_t slot = 0; slot < 5; ++slot) {
    EXPECT_TRUE(packed_desc_available(h.ring->flags(slot), true)) << "slot " << slot << " untouched";
  }
  EXPECT_EQ(h.queue.used_idx(), 0);
  h.queue.flush_used();
  EXPECT_EQ(h.queue.used_idx(), 5);
  for (int i = 0; i < 5; ++i) {
    auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, ids[i]);
    EXPECT_EQ(used->len, 100u + i);
  }
}

TEST(PackedQueueUsed, FlushWithNothingStagedWritesNothing) {
  PackedHarness h(16);
  std::memset(h.ring->host(), 0xab, packed_desc_ring_bytes(16));
  ASSERT_EQ(h.queue.poll(), 0);
  h.queue.flush_used();
  for (std::uint32_t slot = 0; slot < 16; ++slot) EXPECT_EQ(h.ring->desc(slot).id, 0xabab);
}

TEST(PackedQueueUsed, UsedFlagsCarryWriteOnlyWhenDataWasWritten) {
  PackedHarness h(4);
  const std::uint64_t buf = h.buffer(64);
  DescriptorChain chain;
  for (int lap = 0; lap < 4; ++lap) {  // both values of the wrap counter
    for (std::uint32_t len : {0u, 7u}) {
      h.ring->add_chain({{buf, 8, true}});
      ASSERT_TRUE(h.pop_one(chain));
      const bool wrap = h.queue.used_wrap();
      auto used = h.complete(chain.head, len);
      ASSERT_TRUE(used.has_value());
      EXPECT_EQ(used->flags, packed_used_flags(wrap) | (len != 0 ? kVringDescFWrite : 0)) << lap << " " << len;
    }
  }
}

// While the device publishes batches, a driver that sees a batch's first element used must see
// every element of it used too: the first element's flags are written last.
TEST(PackedQueueUsed, DriverSeesAWholeBatchOrNothing) {
  constexpr std::uint32_t kSize = 64;
  constexpr std::uint32_t kBatch = 32;
  constexpr int kRounds = 5000;
  PackedHarness h(kSize);
  const std::uint64_t buf = h.buffer(16);
  for (std::uint32_t i = 0; i < kSize; ++i) h.ring->add_chain({{buf, 16, true}});
  DescriptorChain chain;
  ASSERT_EQ(h.queue.poll(), PackedQueue::kPollWindow);

  std::atomic<bool> torn{false};
  std::atomic<bool> device_done{false};
  std::atomic<bool> stop{false};
  std::thread device([&] {
    struct Done {
      std::atomic<bool>& flag;
      ~Done() { flag.store(true, std::memory_order_release); }
    } done{device_done};
    std::uint32_t popped = 0;
    for (int r = 0; r < kRounds; ++r) {
      // Publishes exactly kBatch elements at a time, so the driver's used position is always at
      // the start of a batch.
      while (h.queue.poll() < kBatch) {
        if (h.queue.in_error() || stop.load(std::memory_order_relaxed)) return;
        std::this_thread::yield();  // the test machine may have fewer cores than spinners
      }
      for (std::uint32_t i = 0; i < kBatch; ++i) {
        if (!h.queue.pop(chain)) return;
        h.queue.push_used(chain.head, popped++);
      }
      h.queue.flush_used();
    }
  });
  bool stalled = false;
  // Waits for the next used descriptor; false if the device stopped without publishing it.
  auto wait_used = [&] {
    while (!h.ring->has_used()) {
      if (device_done.load(std::memory_order_acquire) && !h.ring->has_used()) return false;
      std::this_thread::yield();
    }
    return true;
  };
  for (int r = 0; r < kRounds && !stalled; ++r) {
    // The slots of this round's batch, from the driver's used position on.
    const std::uint32_t first = h.ring->next_used();
    const bool wrap = h.ring->used_wrap();
    if (!wait_used()) {
      stalled = true;
      break;
    }
    for (std::uint32_t i = 1; i < kBatch; ++i) {
      const std::uint32_t pos = first + i;
      const bool w = pos >= kSize ? !wrap : wrap;
      if (!packed_desc_used(h.ring->flags(pos % kSize), w)) torn = true;
    }
    for (std::uint32_t i = 0; i < kBatch && !stalled; ++i) {
      stalled = !wait_used() || !h.ring->pop_used().has_value();
      if (!stalled) h.ring->add_chain({{buf, 16, true}});
    }
  }
  stop = true;
  device.join();
  EXPECT_FALSE(stalled);
  EXPECT_FALSE(torn.load()) << "a batch was seen partly published";
  EXPECT_FALSE(h.queue.in_error()) << to_string(h.queue.error());
}

#if defined(__x86_64__) && defined(__linux__)
// Watches the device's stores into one page of its own mapping of the ring: the page is made
// read-only, each store into it faults, is let through alone (single-stepped with the trap
// flag), and the page is protected again. After every such store the handler looks at the ring
// through the test's mapping and notes what the other used elements looked like at the moment
// the first element became used.
namespace store_watch {
std::uint8_t* page = nullptr;
const PackedDesc* first = nullptr;  // the batch's first element (test mapping)
const PackedDesc* rest = nullptr;   // the other elements, contiguous (test mapping)
std::uint32_t rest_count = 0;
bool wrap = true;
// Lock-free atomics: safe to touch from a signal handler.
std::atomic<int> stores{0};
std::atomic<bool> first_became_used{false};
std::atomic<bool> rest_used_then{false};

std::uint16_t load_flags(const PackedDesc& d) {
  return std::atomic_ref<const std::uint16_t>(d.flags).load(std::memory_order_relaxed);
}
void on_segv(int, siginfo_t* info, void* context) {
  auto* addr = static_cast<std::uint8_t*>(info->si_addr);
  if (addr < page || addr >= page + kTestPageSize) {
    ::signal(SIGSEGV, SIG_DFL);  // a real crash: let it happen
    return;
  }
  ++stores;
  ::mprotect(page, kTestPageSize, PROT_READ | PROT_WRITE);
  static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_EFL] |= 0x100;  // trap after it
}
void on_trap(int, siginfo_t*, void* context) {
  static_cast<ucontext_t*>(context)->uc_mcontext.gregs[REG_EFL] &= ~0x100;
  if (!first_became_used && packed_desc_used(load_flags(*first), wrap)) {
    first_became_used = true;
    bool all = true;
    for (std::uint32_t i = 0; i < rest_count; ++i) all = all && packed_desc_used(load_flags(rest[i]), wrap);
    rest_used_then = all;
  }
  ::mprotect(page, kTestPageSize, PROT_READ);
}
}  // namespace store_watch

TEST(PackedQueueUsed, FirstElementsFlagsAreTheBatchsLastStore) {
  // A ring of 512: slot 255 ends the first page of the descriptor ring, 256.. start the second.
  constexpr std::uint32_t kBatch = 8;
  PackedHarness h(512);
  const std::uint64_t buf = h.buffer(64);
  h.ring->start_at(255, true);
  h.queue.set_vring_base(255 | kPackedWrapBit);
  std::vector<std::uint16_t> ids;
  for (std::uint32_t i = 0; i < kBatch; ++i) ids.push_back(h.ring->add_chain({{buf, 8, true}}));
  ASSERT_EQ(h.queue.poll(), kBatch);
  DescriptorChain chain;
  for (std::uint32_t i = 0; i < kBatch; ++i) ASSERT_TRUE(h.queue.pop(chain));
  for (std::uint32_t i = kBatch; i-- > 0;) h.queue.push_used(ids[i], i + 1);  // completed in reverse

  // The device's page holding slot 255, and the test's view of slots 255.. 262.
  auto* device_slot = h.queue.table()->translate_gpa(h.ring->desc_gpa() + 255 * 16, 16);
  ASSERT_NE(device_slot, nullptr);
  store_watch::page = reinterpret_cast<std::uint8_t*>(reinterpret_cast<std::uintptr_t>(device_slot) &
                                                      ~(kTestPageSize - 1));
  ASSERT_EQ(device_slot + 16, store_watch::page + kTestPageSize) << "slot 255 ends the page";
  store_watch::first = &h.ring->desc(255);
  store_watch::rest = &h.ring->desc(256);
  store_watch::rest_count = kBatch - 1;
  store_watch::wrap = true;
  struct sigaction segv {}, trap {}, old_segv {}, old_trap {};
  segv.sa_sigaction = store_watch::on_segv;
  segv.sa_flags = SA_SIGINFO;
  trap.sa_sigaction = store_watch::on_trap;
  trap.sa_flags = SA_SIGINFO;
  ASSERT_EQ(::sigaction(SIGSEGV, &segv, &old_segv), 0);
  ASSERT_EQ(::sigaction(SIGTRAP, &trap, &old_trap), 0);
  ASSERT_EQ(::mprotect(store_watch::page, kTestPageSize, PROT_READ), 0);

  h.queue.flush_used();

  ::mprotect(store_watch::page, kTestPageSize, PROT_READ | PROT_WRITE);
  ::sigaction(SIGSEGV, &old_segv, nullptr);
  ::sigaction(SIGTRAP, &old_trap, nullptr);
  EXPECT_GE(store_watch::stores.load(), 2) << "id/len and flags of slot 255";
  ASSERT_TRUE(store_watch::first_became_used.load());
  EXPECT_TRUE(store_watch::rest_used_then.load()) << "the first element became used before the rest of its batch";
  for (std::uint32_t i = kBatch; i-- > 0;) {
    auto used = h.ring->pop_used();
    ASSERT_TRUE(used.has_value());
    EXPECT_EQ(used->id, ids[i]);
    EXPECT_EQ(used->len, i + 1);
  }
}
#endif

TEST(PackedQueueBase, FreshRingEncodesBothWrapCountersSet) {
  PackedQueue queue;
  EXPECT_EQ(queue.vring_base(), kPackedInitialBase);
  queue.set_size(256);
  EXPECT_EQ(queue.vring_base(), 0x8000'8000u);
  EXPECT_EQ(queue.avail_idx(), 0);
  EXPECT_TRUE(queue.avail_wrap());
  EXPECT_TRUE(queue.used_wrap());
}

TEST(PackedQueueBase, GetAndSetRoundTripMidRingAfterAWrap) {
  PackedHarness h(8);
  const std::uint64_t buf = h.buffer(64);
  DescriptorChain chain;
  for (int i = 0; i < 11; ++i) {  // 11 slots: lap 2, slot 3
    h.ring->add_chain({{buf, 8, true}});
    ASSERT_TRUE(h.pop_one(chain));
    ASSERT_TRUE(h.complete(chain.head, 1).has_value());
  }
  // Two more popped, not completed: the used position stays two behind.
  const std::uint16_t x = h.ring->add_chain({{buf, 8, true}});
  const std::uint16_t y = h.ring->add_chain({{buf, 8, true}, {buf, 8, true}});
  ASSERT_EQ(h.queue.poll(), 2);
  ASSERT_TRUE(h.queue.pop(chain));
  ASSERT_TRUE(h.queue.pop(chain));
  const std::uint32_t base = h.queue.vring_base();
  EXPECT_EQ(base & 0xffff, 6u) << "avail slot 6, driver wrap counter 0";
  EXPECT_EQ(base >> 16, 3u) << "used slot 3, device wrap counter 0";

  // A new device (after GET_VRING_BASE / SET_VRING_BASE) resumes where this one stopped: the
  // two outstanding chains are lost with the old device, the ring goes on.
  PackedQueue resumed;
  attach(resumed, *h.ring, h.memory);
  resumed.set_vring_base(base);
  EXPECT_EQ(resumed.vring_base(), base);
  EXPECT_EQ(resumed.in_flight(), 3u);
  EXPECT_EQ(resumed.avail_idx(), 6);
  EXPECT_FALSE(resumed.avail_wrap());
  const std::uint16_t z = h.ring->add_chain({{buf, 8, true}});
  ASSERT_EQ(resumed.poll(), 1);
  ASSERT_TRUE(resumed.pop(chain));
  EXPECT_EQ(chain.head, z);
  EXPECT_NE(z, x);
  EXPECT_NE(z, y);
  resumed.push_used(z, 5);
  resumed.flush_used();
  EXPECT_EQ(h.ring->desc(3).id, z) << "the used descriptor goes to the used position sent";
  EXPECT_TRUE(packed_desc_used(h.ring->flags(3), false));
  EXPECT_FALSE(resumed.in_error());
}

TEST(PackedQueueBase, AvailHalfOnlyRestartsUsedAtTheSamePosition) {
  PackedHarness h(8);
  h.ring->start_at(5, false);
  h.queue.set_vring_base(5);  // slot 5, wrap 0, nothing in the used half
  EXPECT_EQ(h.queue.vring_base(), 5u | (5u << 16));
  EXPECT_EQ(h.queue.in_flight(), 0u);
  const std::uint64_t buf = h.buffer(16);
  for (int i = 0; i < 6; ++i) {  // across the end of the ring: wrap 0 -> 1
    const std::uint16_t id = h.ring->add_chain({{buf, 8, true}});
    DescriptorChain chain;
    ASSERT_TRUE(h.pop_one(chain)) << i;
    EXPECT_EQ(chain.head, id);
    auto used = h.complete(chain.head, 1);
    ASSERT_TRUE(used.has_value()) << i;
    EXPECT_EQ(used->id, id);
  }
  EXPECT_EQ(h.queue.vring_base(), (3u | kPackedWrapBit) * 0x10001u);
}

TEST(PackedQueueBase, SetBeforeSizeAndRejections) {
  PackedQueue queue;
  // avail slot 2 wrap 0, used slot 5 wrap 1: five slots outstanding (5, 6, 7, 0, 1).
  queue.set_vring_base(0x8005'0002);
  queue.set_size(8);
  EXPECT_EQ(queue.vring_base(), 0x8005'0002u);
  EXPECT_EQ(queue.in_flight(), 5u);
  EXPECT_THROW(queue.set_vring_base(8 | kPackedWrapBit), Error) << "avail slot beyond the ring";
  EXPECT_THROW(queue.set_vring_base(0x8000'0008), Error) << "used slot beyond the ring";
  // avail (3, 1) with used (5, 1): the used position would be ahead of the avail one.
  EXPECT_THROW(queue.set_vring_base(0x8005'8003), Error);
  EXPECT_EQ(queue.vring_base(), 0x8005'0002u) << "a rejected base changes nothing";
  try {
    queue.set_vring_base(0x8005'8003);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("8003"), std::string::npos) << e.what();
  }
  // A later size the base does not fit restarts the ring.
  queue.set_size(4);
  EXPECT_EQ(queue.vring_base(), kPackedInitialBase);
  EXPECT_EQ(queue.in_flight(), 0u);
}

TEST(PackedQueueConcurrency, DeviceAndDriverOnTwoThreads) {
  constexpr std::uint32_t kSize = 64;
  constexpr std::uint64_t kRequests = 20000;
  PackedHarness h(kSize);
  std::vector<std::uint64_t> slots;
  for (std::uint32_t i = 0; i < kSize / 2; ++i) slots.push_back(h.buffer(16));

  std::atomic<bool> stop{false};
  std::thread device([&] {
    std::uint64_t done = 0;
    DescriptorChain chain;
    while (done < kRequests && !h.queue.in_error() && !stop.load(std::memory_order_relaxed)) {
      if (h.queue.poll() == 0) {
        std::this_thread::yield();
        continue;
      }
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

  std::vector<std::uint64_t> slot_of_id(kSize), seq_of_id(kSize);
  std::vector<std::uint64_t> free_slots = slots;
  std::uint64_t sent = 0, received = 0;
  bool ok = true;
  while (received < kRequests && ok && !h.queue.in_error()) {
    // Chains of two descriptors: most laps put one across the end of the ring.
    while (sent < kRequests && !free_slots.empty() && h.ring->free_slots() >= 2) {
      const std::uint64_t slot = free_slots.back();
      free_slots.pop_back();
      h.guest->write(slot, &sent, sizeof sent);
      const std::uint16_t id = h.ring->add_chain({{slot, 8, false}, {slot + 8, 8, true}});
      slot_of_id[id] = slot;
      seq_of_id[id] = sent++;
    }
    while (auto used = h.ring->pop_used()) {
      std::uint64_t echoed = 0;
      ok = used->known;
      if (!ok) break;
      h.guest->read(slot_of_id[used->id] + 8, &echoed, sizeof echoed);
      ok = used->len == 8 && echoed == seq_of_id[used->id];
      free_slots.push_back(slot_of_id[used->id]);
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

struct PackedLoggingHarness : PackedHarness {
  // A ring of 512: the descriptor ring spans two pages.
  explicit PackedLoggingHarness(bool log_all, std::uint32_t addr_flags)
      : PackedHarness(512, {{0, kMiB}}, false, addr_flags), log(DirtyLog::anonymous(kMiB / kDirtyPageSize / 8)) {
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

// One writable buffer crossing a page boundary, written, pushed and flushed from slot 300
// (second page of the descriptor ring).
void write_one_response(PackedLoggingHarness& h, std::uint64_t buf) {
  h.ring->start_at(300, true);
  h.queue.set_vring_base(300 | kPackedWrapBit);
  h.ring->add_chain({{buf, 200, true}});
  DescriptorChain chain;
  ASSERT_TRUE(h.pop_one(chain));
  const auto resp = pattern(200, 8);
  ASSERT_EQ(ChainWriter(chain, *h.queue.table()).write(resp.data(), 200), 200u);
  h.queue.push_used(chain.head, 200);
  h.queue.flush_used();
}

TEST(PackedQueueDirtyLog, FlushMarksTheUsedDescriptorAndWriterMarksTheBuffer) {
  PackedLoggingHarness h(true, kVringFLog);
  const std::uint64_t buf = 0x80000 + kDirtyPageSize - 100;
  write_one_response(h, buf);
  const std::uint64_t ring = h.ring->desc_gpa();
  ASSERT_EQ(ring % kDirtyPageSize, 0u);
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{ring + kDirtyPageSize, 0x80000, 0x80000 + kDirtyPageSize}))
      << "slot 300 is in the ring's second page";
  h.queue.disable_notifications();
  const std::uint64_t device_area_page = h.ring->device_area_gpa() & ~(kDirtyPageSize - 1);
  EXPECT_TRUE(h.log->is_dirty(device_area_page));
  EXPECT_EQ(h.log->out_of_range(), 0u);
}

TEST(PackedQueueDirtyLog, RingWritesAreNotLoggedWithoutTheRingLogFlag) {
  PackedLoggingHarness h(true, 0);
  write_one_response(h, 0x80000 + kDirtyPageSize - 100);
  h.queue.disable_notifications();
  EXPECT_EQ(h.dirty_pages(), (std::vector<std::uint64_t>{0x80000, 0x80000 + kDirtyPageSize}));
}

TEST(PackedQueueDirtyLog, NothingIsLoggedWithoutLogAll) {
  PackedLoggingHarness h(false, kVringFLog);
  write_one_response(h, 0x80000 + kDirtyPageSize - 100);
  EXPECT_TRUE(h.dirty_pages().empty());
}

}  // namespace
}  // namespace vhostd::test
