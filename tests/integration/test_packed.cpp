// Integration: what is particular to packed rings, over a real socket to the echo daemon: the
// session's packed SET_VRING_NUM / SET_VRING_ADDR / SET_VRING_BASE / GET_VRING_BASE rules,
// stop and resume after the ring wrapped, RING_PACKED refused while a ring runs, and hostile
// packed rings (the daemon puts the ring in error, counts it, and keeps serving the other ring
// and the next connection). Everything layout-independent runs on packed rings in the other
// suites (LayoutTest).
#include <chrono>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using PackedTest = DaemonTest;

constexpr auto kAbsence = 200ms;

DeviceOptions packed_options(std::uint16_t queue_size = 256) {
  DeviceOptions options;
  options.packed = true;
  options.queue_size = queue_size;
  return options;
}

// Descriptors (packed: ring slots) an echo chain takes.
std::uint32_t slots_of(const EchoChain& chain) {
  return chain.indirect ? 1u : static_cast<std::uint32_t>(chain.readable_sizes.size() + chain.writable_sizes.size());
}

// The packed vring base of a ring both of whose positions are `slots` slots past the start.
std::uint32_t base_after(std::uint64_t slots, std::uint32_t size) {
  const std::uint32_t slot = static_cast<std::uint32_t>(slots % size);
  const bool wrap = (slots / size) % 2 == 0;  // both wrap counters start at 1
  const std::uint32_t half = slot | (wrap ? kPackedWrapBit : 0u);
  return half | half << 16;
}

// Resumes ring `index` after GET_VRING_BASE as QEMU does: base, fresh call and kick fds, kick.
void resume(TestFrontend& frontend, std::uint32_t index, std::uint32_t base) {
  frontend.set_vring_base(index, base);
  TestFrontend::Ring& fds = frontend.ring_fds(index);
  fds.call = make_eventfd();
  frontend.set_vring_call(index, fds.call.get());
  fds.kick = make_eventfd();
  frontend.set_vring_kick(index, fds.kick.get());
  frontend.kick(index);
}

// ---- SET_VRING_NUM ----

TEST_F(PackedTest, SetVringNumTakesAnySizeOnPackedRingsAndPowersOfTwoOnSplitRings) {
  {
    TestFrontend frontend = connect();
    frontend.negotiate(packed_options());
    ASSERT_TRUE(frontend.acked_features() & kVirtioFRingPacked);
    for (std::uint32_t good : {250u, 1u, 3u, 1000u, 1023u, 1024u}) {
      EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, good}), 0u) << "size " << good;
    }
    for (std::uint32_t bad : {0u, 1025u, 65535u, 65536u}) {
      EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, bad}), 0u) << "size " << bad;
    }
    frontend.expect_in_sync();
  }
  ASSERT_TRUE(wait_disconnected());
  TestFrontend frontend = connect();
  frontend.negotiate(DeviceOptions{});
  ASSERT_FALSE(frontend.acked_features() & kVirtioFRingPacked);
  for (std::uint32_t bad : {250u, 3u, 1000u}) {
    EXPECT_NE(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, bad}), 0u)
        << "size " << bad << " accepted on a split ring";
  }
  EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_num, wire::VringState{0, 256}), 0u);
  frontend.expect_in_sync();
}

// ---- SET_VRING_ADDR ----

// Packed: descriptor ring 16-aligned, driver area (avail_user_addr) and device area
// (used_user_addr) 4-aligned. Split allows a 2-aligned avail ring: the same addresses are
// accepted there.
TEST_F(PackedTest, SetVringAddrChecksThePackedAlignment) {
  for (const bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed" : "split");
    TestFrontend frontend = connect();
    DeviceOptions options = packed ? packed_options() : DeviceOptions{};
    frontend.negotiate(options);
    frontend.send_memory(options);
    frontend.set_vring_num(0, 256);
    // An area that fits either layout's rings, 16-aligned.
    const std::uint64_t gpa = frontend.memory().alloc(64 * 1024, 4096);
    const std::uint64_t uva = frontend.memory().uva(gpa);
    auto addr = [&](std::uint64_t desc, std::uint64_t driver, std::uint64_t device) {
      return wire::VringAddr{0, 0, uva + desc, uva + device, uva + driver, gpa + device};
    };
    const std::uint64_t driver = 16 * 1024, device = 32 * 1024;
    EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_addr, addr(0, driver, device)), 0u);
    EXPECT_EQ(frontend.request_ack_struct(Request::set_vring_addr, addr(0, driver + 4, device + 4)), 0u)
        << "4-aligned areas refused";
    const std::uint64_t two_aligned = frontend.request_ack_struct(Request::set_vring_addr, addr(0, driver + 2, device));
    if (packed) {
      EXPECT_NE(two_aligned, 0u) << "a driver area 2- but not 4-aligned was accepted";
    } else {
      EXPECT_EQ(two_aligned, 0u) << "a 2-aligned split avail ring was refused";
    }
    EXPECT_NE(frontend.request_ack_struct(Request::set_vring_addr, addr(0, driver, device + 2)), 0u)
        << "a device area / used ring 2- but not 4-aligned was accepted";
    EXPECT_NE(frontend.request_ack_struct(Request::set_vring_addr, addr(8, driver, device)), 0u)
        << "a descriptor ring 8- but not 16-aligned was accepted";
    frontend.expect_in_sync();
    frontend.close();
    ASSERT_TRUE(wait_disconnected());
  }
}

// ---- GET_VRING_BASE / SET_VRING_BASE ----

// More than twice the ring's slots of traffic (both wrap counters flipped at least twice; a
// non-power-of-two ring), then GET_VRING_BASE: the packed encoding, with each position and wrap
// counter where the slots the driver used put them. A stop / restart from that value resumes
// exactly there, twice: with both halves, and with the avail half only (bits 16-31 zero:
// "used = avail").
TEST_F(PackedTest, GetVringBaseAfterTheRingWrappedAndResumeFromIt) {
  constexpr std::uint16_t kSize = 50;
  TestFrontend frontend = connect();
  frontend.setup_device(packed_options(kSize));
  GuestRing& ring = frontend.ring(0);
  std::uint64_t rng = 0xfeed;
  std::uint64_t slots = 0, requests = 0;
  auto traffic = [&](std::uint64_t min_slots) {
    const std::uint64_t target = slots + min_slots;
    while (slots < target) {
      std::vector<EchoChain> burst;
      std::uint32_t burst_slots = 0;
      for (int k = 0; k < 6; ++k) {
        burst.push_back(random_chain(rng, 1500, true));
        burst_slots += slots_of(burst.back());
      }
      ASSERT_LE(burst_slots, kSize);
      ASSERT_NO_THROW(echo_burst(frontend, 0, burst));
      slots += burst_slots;
      requests += burst.size();
    }
  };

  traffic(2 * kSize + 17);
  ASSERT_FALSE(HasFatalFailure());
  ASSERT_GT(slots, 2u * kSize);
  std::uint32_t base = frontend.get_vring_base(0);
  EXPECT_EQ(base, base_after(slots, kSize)) << "after " << slots << " slots";
  EXPECT_EQ(base, ring.vring_base()) << ring.describe();
  EXPECT_EQ((base & kPackedWrapBit) != 0, ring.packed().avail_wrap()) << "driver ring wrap counter";
  EXPECT_EQ((base >> 16 & kPackedWrapBit) != 0, ring.packed().used_wrap()) << "device ring wrap counter";
  EXPECT_FALSE(report(0).started);

  // Stopped: a chain made available now waits.
  const EchoChain waiting = random_chain(rng, 1500, false);
  std::vector<PendingEcho> pending{push_echo(frontend, 0, waiting)};
  frontend.kick(0);
  std::this_thread::sleep_for(kAbsence);
  EXPECT_FALSE(ring.has_used()) << "the stopped ring was processed";
  EXPECT_EQ(report(0).requests, requests);

  resume(frontend, 0, base);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));
  slots += slots_of(waiting);
  ++requests;
  traffic(2 * kSize + 3);
  ASSERT_FALSE(HasFatalFailure());
  base = frontend.get_vring_base(0);
  EXPECT_EQ(base, base_after(slots, kSize)) << "after " << slots << " slots";
  EXPECT_EQ(base, ring.vring_base()) << ring.describe();

  // The avail half only (DPDK's and older QEMU's form): the used position restarts there too.
  resume(frontend, 0, base & 0xffff);
  traffic(kSize + 5);
  ASSERT_FALSE(HasFatalFailure());
  EXPECT_EQ(frontend.get_vring_base(0), base_after(slots, kSize));
  EXPECT_TRUE(ring.settled()) << ring.describe();
  EXPECT_EQ(ring.popped(), requests);
  EXPECT_TRUE(wait_until([&] { return report(0).requests == requests; })) << report(0).requests;
  EXPECT_EQ(report(0).errors, 0u);
}

// A packed base whose avail or used slot is not below the size, or whose used position is more
// than a ring behind the avail one, is refused with an error reply and changes nothing: the
// ring then starts from the base set before.
TEST_F(PackedTest, OutOfRangePackedBaseIsRefused) {
  TestFrontend frontend = connect();
  DeviceOptions options = packed_options(256);
  frontend.setup_device(options);  // base kPackedInitialBase
  auto refused = [&](std::uint32_t base) {
    return frontend.request_ack_struct(Request::set_vring_base, wire::VringState{0, base}) != 0;
  };
  EXPECT_TRUE(refused(0x8000u | 256u)) << "avail slot 256 of a 256-entry ring";
  EXPECT_TRUE(refused(0x7fffu)) << "avail slot 32767";
  EXPECT_TRUE(refused((0x8000u | 256u) << 16 | 0x8000u)) << "used slot 256";
  // used (20, wrap 1) with avail (10, wrap 1): used is 2 * 256 - 10 slots behind.
  EXPECT_TRUE(refused((0x8000u | 20u) << 16 | 0x8000u | 10u)) << "used position ahead of avail";
  // Valid forms are accepted: both halves, the avail half alone.
  EXPECT_FALSE(refused((0x8000u | 5u) << 16 | (0x8000u | 9u))) << "used 4 slots behind avail";
  EXPECT_FALSE(refused(0x8000u | 17u)) << "avail half only";
  EXPECT_FALSE(refused(kPackedInitialBase));
  frontend.expect_in_sync();
  // Traffic from the start, as the last accepted base says.
  for (int i = 0; i < 10; ++i) ASSERT_NO_THROW(echo_one(frontend, 0, 100, i));
  EXPECT_EQ(frontend.get_vring_base(0), base_after(20, 256));
}

// ---- RING_PACKED cannot change under a running ring ----

TEST_F(PackedTest, TogglingRingPackedWhileARingRunsIsRefused) {
  for (const bool packed : {true, false}) {
    SCOPED_TRACE(packed ? "packed, then split asked for" : "split, then packed asked for");
    TestFrontend frontend = connect();
    DeviceOptions options = packed ? packed_options() : DeviceOptions{};
    const std::uint64_t features = frontend.setup_device(options);
    echo_one(frontend, 0);
    const std::uint64_t toggled = features ^ kVirtioFRingPacked;
    EXPECT_NE(frontend.request_ack_struct(Request::set_features, toggled), 0u)
        << "RING_PACKED toggled while ring 0 runs";
    frontend.expect_in_sync();
    // The ring keeps its layout and runs on.
    for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, i % 2, 64, i));
    EXPECT_EQ(report(0).errors + report(1).errors, 0u);

    // Both rings stopped (GET_VRING_BASE): now the layout may change, and new rings in it work.
    frontend.get_vring_base(0);
    frontend.get_vring_base(1);
    EXPECT_EQ(frontend.request_ack_struct(Request::set_features, toggled), 0u) << "refused with every ring stopped";
    frontend.set_features(toggled);
    ASSERT_EQ(frontend.layout(), packed ? RingLayout::split : RingLayout::packed);
    frontend.setup_ring(0, options);
    frontend.setup_ring(1, options);
    ASSERT_EQ(frontend.ring(0).layout(), frontend.layout());
    for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, i % 2, 64, i));
    frontend.close();
    ASSERT_TRUE(wait_disconnected());
  }
}

// ---- hostile packed rings ----

struct HostileCase {
  const char* name;
  RingError error;
  // Writes the hostile descriptors in ring 0 (not kicked yet) of `frontend`.
  void (*write)(TestFrontend& frontend);
};

std::uint64_t arena(TestFrontend& frontend) { return frontend.ring_fds(0).data_gpa; }

// (A buffer id >= the queue size: TrafficTest.HostileHeadIndexStopsOnlyThatRing/packed. A
// buffer id made available while the device still holds it: NetPackedTest, where the net
// device holds several RX buffers at once; the echo device gives each chain back before it
// reads the next.)
const HostileCase kHostileCases[] = {
    {"a chain longer than the ring (every slot chained)", RingError::chain_loop,
     [](TestFrontend& f) {
       PackedDriverRing& r = f.ring(0).packed();
       for (std::uint32_t s = r.size(); s-- > 0;) {  // the head (slot 0) last
         r.put(s, PackedDesc{arena(f) + 64 * s, 64, 1, static_cast<std::uint16_t>(r.avail_bits() | kVringDescFNext)});
       }
     }},
    {"nested indirect table", RingError::indirect_nested,
     [](TestFrontend& f) {
       PackedDriverRing& r = f.ring(0).packed();
       const PackedDesc table[] = {{arena(f) + 4096, 64, 0, 0}, {arena(f) + 8192, 32, 0, kVringDescFIndirect}};
       f.memory().write(arena(f), table, sizeof table);
       r.put(r.next_avail(), PackedDesc{arena(f), sizeof table, 0,
                                        static_cast<std::uint16_t>(r.avail_bits() | kVringDescFIndirect)});
     }},
    {"INDIRECT together with NEXT", RingError::indirect_with_next,
     [](TestFrontend& f) {
       PackedDriverRing& r = f.ring(0).packed();
       const PackedDesc table[] = {{arena(f) + 4096, 64, 0, 0}};
       f.memory().write(arena(f), table, sizeof table);
       r.put(r.next_avail() + 1, PackedDesc{arena(f) + 4096, 64, 0, r.avail_bits()});
       r.put(r.next_avail(), PackedDesc{arena(f), sizeof table, 0,
                                        static_cast<std::uint16_t>(r.avail_bits() | kVringDescFIndirect |
                                                                   kVringDescFNext)});
     }},
    {"NEXT into a slot that is not available", RingError::next_out_of_range,
     [](TestFrontend& f) {
       PackedDriverRing& r = f.ring(0).packed();
       r.put(r.next_avail(), PackedDesc{arena(f), 64, 0, static_cast<std::uint16_t>(r.avail_bits() | kVringDescFNext)});
     }},
    {"buffer outside guest memory", RingError::descriptor_address,
     [](TestFrontend& f) {
       PackedDriverRing& r = f.ring(0).packed();
       r.put(r.next_avail(), PackedDesc{1ull << 40, 64, 0, r.avail_bits()});
     }},
};

TEST_F(PackedTest, HostileRingsAreStoppedAndCountedAndTheDaemonServesOn) {
  std::uint64_t connections = 0;
  for (const HostileCase& c : kHostileCases) {
    SCOPED_TRACE(c.name);
    {
      TestFrontend frontend = connect();
      ++connections;
      frontend.setup_device(packed_options(64));
      UniqueFd err = make_eventfd();
      frontend.set_vring_err(0, err.get());
      echo_one(frontend, 1);
      c.write(frontend);
      frontend.kick(0);
      ASSERT_TRUE(wait_until([&] { return report(0).error != RingError::none; }))
          << "ring 0 did not report the hostile chain";
      // The daemon takes the broken ring off the data path and tells the frontend through the
      // ring's error eventfd (the reason goes to the log).
      EXPECT_TRUE(wait_until([&] { return !report(0).polled; })) << "the broken ring is still polled";
      EXPECT_TRUE(wait_until([&] { return eventfd_drain(err.get()); })) << "SET_VRING_ERR fd not signalled";
      EXPECT_EQ(report(0).error, c.error) << to_string(report(0).error);
      EXPECT_EQ(report(0).errors, 1u);
      EXPECT_FALSE(frontend.ring(0).has_used()) << "a hostile chain was used";
      EXPECT_EQ(report(0).requests, 0u);
      // The other ring and the connection keep serving.
      for (int i = 0; i < 50; ++i) ASSERT_NO_THROW(echo_one(frontend, 1, 128, i));
      EXPECT_EQ(report(0).errors, 1u) << "the ring in error was counted again";
      EXPECT_EQ(report(1).error, RingError::none);
      EXPECT_EQ(report(1).errors, 0u);
      EXPECT_TRUE(daemon_->connected());
      frontend.expect_in_sync();
      frontend.close();
      ASSERT_TRUE(wait_disconnected());
    }
    // A new connection gets both rings back.
    TestFrontend next = connect();
    ++connections;
    next.setup_device(packed_options(64));
    for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(next, i % 2, 256, i));
    EXPECT_EQ(report(0).error, RingError::none);
    next.close();
    ASSERT_TRUE(wait_disconnected());
  }
  EXPECT_EQ(daemon_->connections(), connections);
}

}  // namespace
}  // namespace vhostd::test
