// Integration: guest memory under traffic over a real socket: memory table swaps while rings
// run, LOG_ALL toggling and the dirty log, buffers spanning regions, ADD_MEM_REG/REM_MEM_REG;
// each on split and on packed rings.
#include <sys/mman.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>

#include "harness.hpp"

namespace vhostd::test {
namespace {

using MemoryTest = LayoutTest;

// Pushes random bursts through both rings on its own thread (it owns the rings; the test
// thread only talks on the socket) until stopped. Every response is checked.
class TrafficThread {
 public:
  TrafficThread(TestFrontend& frontend, bool indirect) : frontend_(frontend), indirect_(indirect) {
    thread_ = std::thread([this] { run(); });
  }
  ~TrafficThread() { stop(); }

  std::uint64_t completed() const { return completed_.load(std::memory_order_acquire); }
  // Waits until at least `more` further requests completed; false on timeout or failure.
  bool wait_progress(std::uint64_t more, std::chrono::milliseconds timeout = 10s) {
    const std::uint64_t target = completed() + more;
    return wait_until([&] { return completed() >= target || failed_.load(); }, timeout) && !failed_.load();
  }
  // Joins; returns the failure ("" if none) and the per-ring counts.
  std::string stop() {
    stopping_.store(true);
    if (thread_.joinable()) thread_.join();
    std::lock_guard lock(mutex_);
    return error_;
  }
  std::uint64_t per_ring(std::size_t ring) const { return per_ring_[ring]; }

 private:
  void run() {
    std::uint64_t rng = 0x5eed;
    try {
      while (!stopping_.load()) {
        for (std::size_t ring = 0; ring < 2; ++ring) {
          std::vector<PendingEcho> pending;
          const std::size_t burst = 1 + rng % 16;
          for (std::size_t k = 0; k < burst; ++k) {
            pending.push_back(push_echo(frontend_, ring, random_chain(rng, 4000, indirect_)));
          }
          frontend_.kick(ring);
          complete_echoes(frontend_, ring, pending, 10s);
          per_ring_[ring] += burst;
          completed_.fetch_add(burst, std::memory_order_release);
        }
      }
    } catch (const std::exception& e) {
      std::lock_guard lock(mutex_);
      error_ = e.what();
      failed_.store(true);
    }
  }

  TestFrontend& frontend_;
  bool indirect_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> failed_{false};
  std::atomic<std::uint64_t> completed_{0};
  std::uint64_t per_ring_[2] = {0, 0};
  std::mutex mutex_;
  std::string error_;
};

TEST_P(MemoryTest, MemTableSwapUnderTrafficIsAckedAndLosesNothing) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  frontend.setup_device(options);
  ASSERT_TRUE(frontend.reply_ack());
  // Every layout keeps each ring's areas inside one region (a ring may not span regions).
  for (std::size_t n : {2u, 3u}) {
    for (const RegionSpec& r : frontend.memory_regions(n)) {
      for (std::size_t ring = 0; ring < 2; ++ring) {
        const std::uint64_t start = frontend.ring(ring).desc_gpa();
        const std::uint64_t end = start + frontend.ring(ring).footprint();
        const std::uint64_t rs = r.region.guest_phys_addr, re = rs + r.region.memory_size;
        ASSERT_TRUE(end <= rs || start >= re || (start >= rs && end <= re)) << "ring " << ring << " spans regions";
      }
    }
  }

  TrafficThread traffic(frontend, true);
  ASSERT_TRUE(traffic.wait_progress(100));
  for (int swap = 0; swap < 30; ++swap) {
    const std::size_t n = std::size_t{1} + swap % 3;  // 1, 2, 3 regions: same gpa -> same bytes
    // set_mem_table() sends NEED_REPLY (reply_ack mode) and requires ack 0.
    ASSERT_NO_THROW(frontend.set_mem_table(frontend.memory_regions(n))) << "swap " << swap;
    ASSERT_TRUE(traffic.wait_progress(20)) << "traffic stalled after swap " << swap << ": " << traffic.stop();
  }
  const std::string error = traffic.stop();
  EXPECT_EQ(error, "");
  for (std::size_t ring = 0; ring < 2; ++ring) {
    EXPECT_EQ(frontend.ring(ring).popped(), traffic.per_ring(ring)) << "ring " << ring;
    EXPECT_TRUE(frontend.ring(ring).settled()) << "ring " << ring << ": " << frontend.ring(ring).describe();
  }
  EXPECT_EQ(report(0).errors + report(1).errors, 0u);
  EXPECT_TRUE(daemon_->connected());
}

TEST_P(MemoryTest, BuffersSpanningTwoRegionsAreSplitCorrectly) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.mem_regions = 2;
  frontend.setup_device(options);
  const auto regions = frontend.memory_regions(2);
  const std::uint64_t boundary = regions[1].region.guest_phys_addr;
  // Rings and chain slots sit in the first few MiB: the pages around the boundary are free.
  ASSERT_LT(frontend.memory().alloc(64, 64), boundary - 16384);

  TestGuestMemory& memory = frontend.memory();
  std::vector<std::uint8_t> request(3000);
  for (std::size_t i = 0; i < request.size(); ++i) request[i] = static_cast<std::uint8_t>(i * 13 + 5);
  GuestRing& ring = frontend.ring(0);

  // 1) The readable buffer straddles the boundary ([b-500, b+2500)); the writable one is in region 1.
  const std::uint64_t read_span = boundary - 500;
  const std::uint64_t write_gpa = boundary + 4096;
  memory.write(read_span, request.data(), request.size());
  memory.fill(write_gpa, 0xee, request.size());
  const std::uint16_t first = ring.add_chain({DriverBuffer{read_span, 3000, false}, DriverBuffer{write_gpa, 3000, true}});
  frontend.kick(0);
  ASSERT_TRUE(wait_until([&] { return ring.used_pending() == 1; })) << to_string(report(0).error);
  auto used = ring.pop_used();
  EXPECT_EQ(used->id, first);
  EXPECT_EQ(used->len, 3000u);
  EXPECT_EQ(memory.bytes(write_gpa, 3000), request);

  // 2) The readable buffer is in region 1; the writable one straddles ([b-1500, b+1500)).
  const std::uint64_t read_gpa = boundary + 8192;
  const std::uint64_t write_span = boundary - 1500;
  memory.write(read_gpa, request.data(), request.size());
  memory.fill(write_span, 0xee, 3000);
  const std::uint16_t second = ring.add_chain({DriverBuffer{read_gpa, 3000, false}, DriverBuffer{write_span, 3000, true}});
  frontend.kick(0);
  ASSERT_TRUE(wait_until([&] { return ring.used_pending() == 1; })) << to_string(report(0).error);
  used = ring.pop_used();
  EXPECT_EQ(used->id, second);
  EXPECT_EQ(used->len, 3000u);
  EXPECT_EQ(memory.bytes(write_span, 3000), request);
  EXPECT_EQ(report(0).error, RingError::none);
}

TEST_P(MemoryTest, LogAllToggledUnderTrafficNeverStopsOrResetsRings) {
  TestFrontend frontend = connect();
  const std::uint64_t features = frontend.setup_device(options());
  ASSERT_TRUE(frontend.get_features() & kVirtioFLogAll) << "LOG_ALL not offered";

  TrafficThread traffic(frontend, true);
  ASSERT_TRUE(traffic.wait_progress(100));
  for (int toggle = 0; toggle < 20; ++toggle) {
    const bool on = toggle % 2 == 0;
    ASSERT_NO_THROW(frontend.set_features(on ? features | kVirtioFLogAll : features)) << "toggle " << toggle;
    ASSERT_TRUE(traffic.wait_progress(20)) << "traffic stalled after LOG_ALL " << (on ? "on" : "off") << ": "
                                           << traffic.stop();
    for (std::size_t ring = 0; ring < 2; ++ring) {
      RingReport r = report(ring);
      EXPECT_TRUE(r.started && r.enabled && r.polled) << "ring " << ring << " after toggle " << toggle;
    }
  }
  EXPECT_EQ(traffic.stop(), "");
  // The positions continued: every request ever pushed on a ring was used, nothing more (split:
  // used idx == avail idx == requests; packed: used position == avail position).
  for (std::size_t ring = 0; ring < 2; ++ring) {
    EXPECT_EQ(frontend.ring(ring).popped(), traffic.per_ring(ring)) << "ring " << ring;
    EXPECT_TRUE(frontend.ring(ring).settled()) << "ring " << ring << ": " << frontend.ring(ring).describe();
    if (!packed()) {
      EXPECT_EQ(device_used_idx(frontend, ring), static_cast<std::uint16_t>(traffic.per_ring(ring)));
    }
  }
  EXPECT_TRUE(wait_until([&] { return report(0).requests + report(1).requests == traffic.completed(); }));
}

class DirtyLog {
 public:
  explicit DirtyLog(std::uint64_t bytes) : bytes_(bytes) {
    fd_.reset(::memfd_create("vhostd-test-log", MFD_CLOEXEC));
    if (!fd_ || ::ftruncate(fd_.get(), static_cast<off_t>(bytes)) != 0) throw_errno("log memfd");
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap log");
    bits_ = static_cast<std::uint8_t*>(p);
  }
  ~DirtyLog() { ::munmap(bits_, bytes_); }
  int fd() const { return fd_.get(); }
  void clear() { std::memset(bits_, 0, bytes_); }
  bool dirty(std::uint64_t gpa) const {
    const std::uint64_t page = gpa / 4096;
    return (std::atomic_ref<std::uint8_t>(bits_[page / 8]).load() >> (page % 8)) & 1;
  }
  bool any() const {
    for (std::uint64_t i = 0; i < bytes_; ++i) {
      if (std::atomic_ref<std::uint8_t>(bits_[i]).load()) return true;
    }
    return false;
  }

 private:
  UniqueFd fd_;
  std::uint8_t* bits_ = nullptr;
  std::uint64_t bytes_;
};

// Split: the used ring is logged; packed: the descriptors the used elements were written to.
TEST_P(MemoryTest, DirtyLogMarksWrittenBuffersAndTheUsedRing) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  const std::uint64_t features = frontend.setup_device(options);
  ASSERT_TRUE(frontend.acked_protocol_features() & protocol_bit(ProtocolFeature::log_shmfd));
  echo_one(frontend, 0);

  DirtyLog log(options.memory_bytes / 4096 / 8);
  EXPECT_EQ(frontend.set_log_base(log.fd(), options.memory_bytes / 4096 / 8, 0), 0u);
  frontend.set_features(features | kVirtioFLogAll);
  // QEMU switches used-ring logging on by re-sending SET_VRING_ADDR on the running ring.
  frontend.set_vring_addr(frontend.ring_addresses(0, kVringFLog));
  log.clear();

  std::uint64_t rng = 3;
  std::vector<PendingEcho> pending;
  for (int i = 0; i < 8; ++i) {
    EchoChain chain = random_chain(rng, 6000, false);
    chain.readable_sizes = {static_cast<std::uint32_t>(chain.request.size())};
    chain.writable_sizes = {static_cast<std::uint32_t>(chain.request.size())};
    pending.push_back(push_echo(frontend, 0, chain));
  }
  const std::vector<PendingEcho> written = pending;
  frontend.kick(0);
  ASSERT_NO_THROW(complete_echoes(frontend, 0, pending));

  const GuestRing& ring = frontend.ring(0);
  for (const PendingEcho& p : written) {
    for (const auto& [gpa, len] : p.writable) {
      for (std::uint64_t page = gpa & ~4095ull; page < gpa + len; page += 4096) {
        EXPECT_TRUE(log.dirty(page)) << "written page 0x" << std::hex << page << " not marked (buffer 0x" << gpa
                                     << " + " << std::dec << len << ")";
      }
    }
    // The slot's first page holds only readable bytes: the device never wrote it.
    const std::uint64_t slot_page = frontend.ring_fds(0).data_gpa + p.slot * TestFrontend::kSlotBytes;
    if (p.writable.front().first >= slot_page + 4096) {
      EXPECT_FALSE(log.dirty(slot_page)) << "read-only page 0x" << std::hex << slot_page << " marked dirty";
    }
  }
  if (packed()) {
    // 8 two-descriptor chains after echo_one's (slots 0-1): used descriptors in slots 2, 4, ..., 16.
    for (std::uint32_t k = 0; k < 8; ++k) {
      const std::uint32_t slot = 2 + 2 * k;
      EXPECT_TRUE(log.dirty(ring.desc_gpa() + 16ull * slot)) << "page of used descriptor slot " << slot
                                                             << " not marked";
    }
  } else {
    for (std::uint64_t page = ring.used_area_gpa(); page < ring.used_area_gpa() + ring.used_area_bytes();
         page += 4096) {
      EXPECT_TRUE(log.dirty(page)) << "used ring page 0x" << std::hex << page << " not marked";
    }
    EXPECT_FALSE(log.dirty(ring.desc_gpa())) << "the descriptor table is never written by the device";
  }

  // LOG_ALL off: nothing is marked any more.
  frontend.set_features(features);
  log.clear();
  for (int i = 0; i < 8; ++i) echo_one(frontend, 0, 5000, i);
  EXPECT_FALSE(log.any()) << "pages marked dirty while LOG_ALL is off";
}

TEST_P(MemoryTest, AddAndRemoveMemoryRegions) {
  TestFrontend frontend = connect();
  DeviceOptions options = this->options();
  options.add_mem_reg = true;
  options.mem_regions = 2;
  frontend.setup_device(options);
  ASSERT_TRUE(frontend.acked_protocol_features() & protocol_bit(ProtocolFeature::configure_mem_slots));
  EXPECT_EQ(frontend.get_max_mem_slots(), 509u);
  std::uint64_t rng = 5;
  for (int i = 0; i < 20; ++i) {
    std::vector<EchoChain> burst{random_chain(rng, 4000, true), random_chain(rng, 4000, false)};
    ASSERT_NO_THROW(echo_burst(frontend, i % 2, burst));
  }

  // A third region, in a memfd of its own, at 1 GiB.
  constexpr std::uint64_t kExtraGpa = 1ull << 30;
  TestGuestMemory extra({{kExtraGpa, 1u << 20}}, 0x7e00'0000'0000ull);
  const MemoryRegionInfo& info = extra.regions()[0];
  RegionSpec spec{{info.guest_phys_addr, info.memory_size, info.userspace_addr, info.mmap_offset}, extra.fd()};
  ASSERT_NO_THROW(frontend.add_mem_reg(spec));
  EXPECT_NE(frontend.request_ack_struct(Request::add_mem_reg, wire::MemRegPayload{0, spec.region},
                                        std::span(&spec.fd, 1)),
            0u)
      << "an overlapping region was accepted";

  // Buffers in the new region work.
  std::vector<std::uint8_t> request(2000, 0x5a);
  extra.write(kExtraGpa, request.data(), request.size());
  extra.fill(kExtraGpa + 4096, 0, request.size());
  GuestRing& ring = frontend.ring(0);
  const std::uint16_t id = ring.add_chain({DriverBuffer{kExtraGpa, 2000, false}, DriverBuffer{kExtraGpa + 4096, 2000, true}});
  frontend.kick(0);
  ASSERT_TRUE(wait_until([&] { return ring.used_pending() == 1; }));
  const std::optional<UsedBuffer> used = ring.pop_used();
  EXPECT_EQ(used->id, id);
  EXPECT_EQ(used->len, 2000u);
  EXPECT_EQ(extra.bytes(kExtraGpa + 4096, 2000), request);

  ASSERT_NO_THROW(frontend.rem_mem_reg(spec.region));
  EXPECT_NE(frontend.request_ack_struct(Request::rem_mem_reg, wire::MemRegPayload{0, spec.region}), 0u)
      << "removing a region twice was accepted";
  frontend.expect_in_sync();
  for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, i % 2, 300, i));

  // A chain into the removed region is a bad address now: that ring stops, the other serves.
  ring.add_chain({DriverBuffer{kExtraGpa, 2000, false}, DriverBuffer{kExtraGpa + 4096, 2000, true}});
  frontend.kick(0);
  EXPECT_TRUE(wait_until([&] { return report(0).error == RingError::descriptor_address; }))
      << "error " << to_string(report(0).error);
  for (int i = 0; i < 20; ++i) ASSERT_NO_THROW(echo_one(frontend, 1, 300, i));
}

INSTANTIATE_LAYOUTS(MemoryTest);

}  // namespace
}  // namespace vhostd::test
