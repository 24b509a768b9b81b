// echo-load: a load generator for the sample echo device (vhostd-echo).
//
//   echo-load --socket PATH [--seconds 5] [--size 64] [--queue-size 256] [--burst 32]
//             [--cpu N] [--hugepages DIR]
//
// Plays the guest driver of one split ring: connects with the in-tree test frontend, does the
// vhost-user handshake (VERSION_1 + EVENT_IDX), then keeps the ring full of echo requests for
// --seconds and counts completions. Each request is a fixed two-descriptor chain (one readable
// buffer of --size bytes, then one writable buffer of --size bytes); descriptors and buffers
// are laid out once in guest memory and reused, so refilling a slot is one avail-ring entry.
// New entries are published --burst at a time. The backend busy-polls the ring, so there is
// one kick (to start the ring) and no interrupt: used_event is kept far ahead of the used idx.
//
// Guest memory is a memfd, or a file on the hugetlbfs mount --hugepages DIR.
//
// Every completion's id and length are checked; the payload of one request in 1024 (and of
// every first-round request) is rewritten with a fresh pattern before it is
// published and compared byte for byte when it comes back. After the run the ring is drained
// and GET_VRING_BASE must return the avail index we published. Exit 0 when everything checked
// out, 1 on any mismatch or error, 2 on bad usage.
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "frontend.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/runtime/lcore_thread.hpp"
#include "vhostd/vhost/message.hpp"

namespace {

using namespace vhostd;
using namespace vhostd::test;
using Clock = std::chrono::steady_clock;

struct Options {
  std::string socket;
  double seconds = 5;
  std::uint32_t size = 64;
  std::uint32_t queue_size = 256;
  std::uint32_t burst = 32;
  std::optional<unsigned> cpu;
  std::string hugepages;  // hugetlbfs directory; empty: memfd
};

constexpr perf::Cli kCli{"echo-load",
                         "usage: echo-load --socket PATH [--seconds 5] [--size 64] [--queue-size 256] [--burst 32]\n"
                         "                 [--cpu N] [--hugepages DIR]\n"};

Options parse_options(int argc, char** argv) {
  Options o;
  std::vector<std::string> args(argv + 1, argv + argc);
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) kCli.usage(arg + " needs a value");
      return args[++i];
    };
    if (arg == "--socket") {
      o.socket = value();
    } else if (arg == "--seconds") {
      std::string v = value();
      char* end = nullptr;
      o.seconds = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.seconds > 0) || o.seconds > 3600) kCli.usage("--seconds: '" + v + "' is not in (0, 3600]");
    } else if (arg == "--size") {
      o.size = static_cast<std::uint32_t>(kCli.number(arg, value(), 1, 1u << 20));
    } else if (arg == "--queue-size") {
      o.queue_size = static_cast<std::uint32_t>(kCli.number(arg, value(), 2, kMaxQueueSize));
      if ((o.queue_size & (o.queue_size - 1)) != 0) kCli.usage("--queue-size must be a power of two");
    } else if (arg == "--burst") {
      o.burst = static_cast<std::uint32_t>(kCli.number(arg, value(), 1, kMaxQueueSize));
    } else if (arg == "--cpu") {
      o.cpu = static_cast<unsigned>(kCli.number(arg, value(), 0, 1u << 20));
    } else if (arg == "--hugepages") {
      o.hugepages = value();
    } else if (arg == "-h" || arg == "--help") {
      kCli.usage("help");
    } else {
      kCli.usage("unknown option " + arg);
    }
  }
  if (o.socket.empty()) kCli.usage("--socket is required");
  return o;
}

// Guest memory owned by this process: one shared file mapping (memfd or hugetlbfs file),
// guest-physical address 0 at offset 0, frontend virtual address = where it is mapped here.
class GuestRam {
 public:
  static GuestRam create(std::uint64_t bytes, const std::string& hugetlbfs_dir) {
    GuestRam ram;
    std::uint64_t page = 4096;
    if (hugetlbfs_dir.empty()) {
      int fd = ::memfd_create("echo-load-guest", MFD_CLOEXEC);
      if (fd < 0) throw_errno("memfd_create");
      ram.fd_.reset(fd);
      ram.kind_ = "memfd";
    } else {
      struct statfs fs {};
      if (::statfs(hugetlbfs_dir.c_str(), &fs) != 0) throw_errno("statfs ", hugetlbfs_dir);
      if (static_cast<unsigned long>(fs.f_type) != HUGETLBFS_MAGIC) {
        throw_error(hugetlbfs_dir, " is not a hugetlbfs mount");
      }
      page = static_cast<std::uint64_t>(fs.f_bsize);
      std::string path = hugetlbfs_dir + "/echo-load.XXXXXX";
      int fd = ::mkostemp(path.data(), O_CLOEXEC);
      if (fd < 0) throw_errno("create a file in ", hugetlbfs_dir);
      ::unlink(path.c_str());  // the fd (and the daemon's mapping) keep it alive
      ram.fd_.reset(fd);
      ram.kind_ = "hugetlbfs " + std::to_string(page >> 20) + " MiB pages";
    }
    ram.size_ = align_up(bytes, page);
    if (::ftruncate(ram.fd_.get(), static_cast<off_t>(ram.size_)) != 0) throw_errno("ftruncate guest memory");
    void* base = ::mmap(nullptr, ram.size_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ram.fd_.get(), 0);
    if (base == MAP_FAILED) throw_errno("mmap ", ram.size_, " bytes of guest memory (", ram.kind_, ")");
    ram.base_ = static_cast<std::uint8_t*>(base);
    return ram;
  }
  GuestRam() = default;
  GuestRam(GuestRam&& o) noexcept
      : fd_(std::move(o.fd_)), base_(std::exchange(o.base_, nullptr)), size_(o.size_), kind_(std::move(o.kind_)) {}
  GuestRam& operator=(GuestRam&&) = delete;
  ~GuestRam() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }

  int fd() const noexcept { return fd_.get(); }
  std::uint64_t size() const noexcept { return size_; }
  std::uint8_t* host(std::uint64_t gpa) const noexcept { return base_ + gpa; }
  std::uint64_t uva(std::uint64_t gpa) const noexcept { return reinterpret_cast<std::uint64_t>(base_) + gpa; }
  const std::string& kind() const noexcept { return kind_; }

 private:
  UniqueFd fd_;
  std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
  std::string kind_;
};

constexpr std::uint8_t kPoison = 0xee;
constexpr std::uint64_t kCheckEvery = 1024;  // one refill in this many gets a fresh, checked payload
constexpr auto kStallTimeout = std::chrono::seconds(2);

// The payload of a checked request: a byte pattern that differs per seed and per byte.
void fill_pattern(std::uint8_t* p, std::uint32_t len, std::uint64_t seed) noexcept {
  std::uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::uint32_t i = 0; i < len; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    p[i] = static_cast<std::uint8_t>(x);
  }
}

struct Slot {
  std::uint64_t readable_gpa = 0;
  std::uint64_t writable_gpa = 0;
  bool in_flight = false;
  std::optional<std::uint64_t> check_seed;  // set: compare the response byte for byte
};

class EchoLoad {
 public:
  EchoLoad(const Options& o, GuestRam& ram, DriverRing& ring) : o_(o), ram_(ram), ring_(ring) {
    const std::uint32_t n = o.queue_size / 2;  // two descriptors per request
    slots_.resize(n);
    avail_ring_ = reinterpret_cast<std::uint16_t*>(ring.host() + desc_table_bytes(o.queue_size) + 4);
    mask_ = static_cast<std::uint16_t>(o.queue_size - 1);
    burst_ = std::min(o.burst, n);
  }

  std::uint32_t in_flight_max() const noexcept { return static_cast<std::uint32_t>(slots_.size()); }
  std::uint32_t burst() const noexcept { return burst_; }

  // Lays out every slot's two descriptors (they never change afterwards) and buffers.
  void lay_out(std::uint64_t data_gpa) {
    const std::uint64_t stride = align_up(o_.size, 64);
    for (std::uint32_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      s.readable_gpa = data_gpa + 2ull * i * stride;
      s.writable_gpa = s.readable_gpa + stride;
      const auto head = static_cast<std::uint16_t>(2 * i);
      ring_.desc(head) = VringDesc{s.readable_gpa, o_.size, kVringDescFNext, static_cast<std::uint16_t>(head + 1)};
      ring_.desc(head + 1u) = VringDesc{s.writable_gpa, o_.size, kVringDescFWrite, 0};
    }
  }

  // Fills the whole ring once (every first-round request is checked).
  void prime() {
    for (std::uint32_t i = 0; i < slots_.size(); ++i) refill(i, true);
    publish();
  }

  // One pass: pops what the device completed, refills those slots (unless draining), and
  // publishes when a burst is ready or nothing else is in flight. Returns completions seen.
  std::uint32_t poll(bool refill_slots) {
    const std::uint16_t used = ring_.used_idx();  // acquire
    std::uint32_t n = 0;
    while (last_used_ != used) {
      const VringUsedElem e = ring_.used_elem(last_used_ & mask_);
      ++last_used_;
      ++n;
      complete(e);
      if (refill_slots) refill(e.id / 2, ++refills_ % kCheckEvery == 0);
    }
    const auto pending = static_cast<std::uint16_t>(avail_next_ - published_);
    if (pending != 0 && (pending >= burst_ || published_ == last_used_)) publish();
    completed_ += n;
    return n;
  }

  std::uint64_t completed() const noexcept { return completed_; }
  std::uint64_t checked() const noexcept { return checked_; }
  std::uint32_t outstanding() const noexcept { return static_cast<std::uint16_t>(published_ - last_used_); }
  std::uint16_t avail_idx() const noexcept { return published_; }
  const std::string& failure() const noexcept { return failure_; }

 private:
  void refill(std::uint32_t index, bool check) {
    Slot& s = slots_[index];
    if (check) {
      const std::uint64_t seed = ++seeds_;
      fill_pattern(ram_.host(s.readable_gpa), o_.size, seed);
      std::memset(ram_.host(s.writable_gpa), kPoison, o_.size);
      s.check_seed = seed;
    }
    s.in_flight = true;
    avail_ring_[avail_next_ & mask_] = static_cast<std::uint16_t>(2 * index);
    ++avail_next_;
  }

  void publish() {
    // Interrupts off: the device can get at most a ring's worth past last_used_ before we come
    // back, so it never crosses an event index half the index space ahead (relaxed: the device
    // reads it after its own full fence).
    ring_.set_used_event(static_cast<std::uint16_t>(last_used_ + 0x7fff));
    ring_.set_avail_idx(avail_next_);  // release: descriptors, payloads and entries first
    published_ = avail_next_;
  }

  void complete(const VringUsedElem& e) {
    if (e.id >= 2 * slots_.size() || e.id % 2 != 0 || !slots_[e.id / 2].in_flight) {
      fail("used element names head " + std::to_string(e.id) + ", which is not in flight");
      return;
    }
    Slot& s = slots_[e.id / 2];
    s.in_flight = false;
    if (e.len != o_.size) {
      fail("head " + std::to_string(e.id) + ": used len " + std::to_string(e.len) + ", expected " +
           std::to_string(o_.size));
    }
    if (s.check_seed) {
      expected_.resize(o_.size);
      fill_pattern(expected_.data(), o_.size, *s.check_seed);
      const std::uint8_t* got = ram_.host(s.writable_gpa);
      if (std::memcmp(got, expected_.data(), o_.size) != 0) {
        std::uint32_t k = 0;
        while (got[k] == expected_[k]) ++k;
        char msg[160];
        std::snprintf(msg, sizeof msg, "head %u: response byte %u is 0x%02x, expected 0x%02x", e.id, k, got[k],
                      expected_[k]);
        fail(msg);
      }
      // The readable buffer is unchanged until the next checked refill, so later echoes of this
      // slot still return the same bytes.
      s.check_seed.reset();
      ++checked_;
    }
  }

  void fail(const std::string& what) {
    if (failure_.empty()) failure_ = what;
  }

  const Options& o_;
  GuestRam& ram_;
  DriverRing& ring_;
  std::vector<Slot> slots_;
  std::uint16_t* avail_ring_ = nullptr;
  std::uint16_t mask_ = 0;
  std::uint32_t burst_ = 0;
  std::uint16_t avail_next_ = 0;  // next avail entry to write
  std::uint16_t published_ = 0;   // avail idx as published
  std::uint16_t last_used_ = 0;
  std::uint64_t completed_ = 0;
  std::uint64_t refills_ = 0;
  std::uint64_t seeds_ = 0;
  std::uint64_t checked_ = 0;
  std::vector<std::uint8_t> expected_;
  std::string failure_;
};

int run(const Options& o) {
  if (o.cpu) pin_current_thread({*o.cpu});

  // Guest memory: the ring, then per request slot a readable and a writable buffer.
  const std::uint64_t ring_bytes = align_up(DriverRing::footprint(o.queue_size), kTestPageSize);
  const std::uint64_t data_bytes = 2ull * align_up(o.size, 64) * (o.queue_size / 2);
  GuestRam ram = GuestRam::create(ring_bytes + data_bytes, o.hugepages);

  TestFrontend frontend = TestFrontend::connect(o.socket);
  DeviceOptions device;
  device.num_rings = 1;
  device.queue_size = static_cast<std::uint16_t>(o.queue_size);
  device.feature_mask = kVirtioFVersion1 | kVirtioFRingEventIdx;
  const std::uint64_t features = frontend.negotiate(device);
  if ((features & kVirtioFVersion1) == 0 || (features & kVirtioFRingEventIdx) == 0) {
    throw_error("the daemon does not offer VIRTIO_F_VERSION_1 and VIRTIO_RING_F_EVENT_IDX (features 0x", std::hex,
                features, ")");
  }

  // SET_MEM_TABLE for our own memory (TestFrontend::send_memory() only knows memfds it made).
  RegionSpec region{{0, ram.size(), ram.uva(0), 0}, ram.fd()};
  frontend.set_mem_table(std::span(&region, 1));

  DriverRing ring(ram.host(0), 0, ram.uva(0), o.queue_size);
  EchoLoad load(o, ram, ring);
  load.lay_out(ring_bytes);

  UniqueFd call = make_eventfd();
  UniqueFd kick = make_eventfd();
  const VringAddresses a = ring.addresses();
  frontend.set_vring_num(0, o.queue_size);
  frontend.set_vring_addr(wire::VringAddr{0, a.flags, a.desc_user_addr, a.used_user_addr, a.avail_user_addr,
                                          a.log_guest_addr});
  frontend.set_vring_base(0, 0);
  frontend.set_vring_call(0, call.get());
  frontend.set_vring_kick(0, kick.get());
  frontend.set_vring_enable(0, true);
  frontend.expect_in_sync();  // every request above was handled (the echo device has no REPLY_ACK)

  std::printf("echo-load: %u B requests, queue size %u (%u in flight), burst %u, guest memory %s (%llu KiB)%s\n",
              o.size, o.queue_size, load.in_flight_max(), load.burst(), ram.kind().c_str(),
              static_cast<unsigned long long>(ram.size() >> 10),
              o.cpu ? (", cpu " + std::to_string(*o.cpu)).c_str() : "");
  std::fflush(stdout);

  load.prime();
  eventfd_signal(kick.get());  // the one kick: starts the ring; from here the poller finds work itself

  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  auto next_report = start + std::chrono::seconds(1);
  auto last_progress = start;
  std::uint64_t reported = 0;
  auto last_report_time = start;
  unsigned second = 0;
  Clock::time_point now = start;
  std::uint64_t progress_mark = 0;
  for (std::uint64_t iter = 0;; ++iter) {
    load.poll(true);
    if (!load.failure().empty()) break;
    if ((iter & 63) != 0) continue;
    now = Clock::now();
    if (load.completed() != progress_mark || load.outstanding() == 0) {
      progress_mark = load.completed();
      last_progress = now;
    } else if (now - last_progress > kStallTimeout) {
      throw_error("no completion for 2 s (", load.outstanding(), " requests in flight, ", load.completed(),
                  " completed): is the ring being polled?");
    }
    if (now >= next_report || now >= end) {
      const std::uint64_t done = load.completed();
      const double dt = std::chrono::duration<double>(now - last_report_time).count();
      if (now >= next_report) {
        std::printf("echo-load: %3u s  %8.3f Mreq/s\n", ++second, static_cast<double>(done - reported) / dt / 1e6);
        std::fflush(stdout);
        reported = done;
        last_report_time = now;
        next_report += std::chrono::seconds(1);
      }
      if (now >= end) break;
    }
  }
  const std::uint64_t measured = load.completed();
  const double elapsed = std::chrono::duration<double>(now - start).count();

  // Drain: no more refills; every request still in flight must come back.
  const auto drain_deadline = Clock::now() + kStallTimeout;
  while (load.failure().empty() && load.outstanding() != 0) {
    load.poll(false);
    if (Clock::now() > drain_deadline) {
      throw_error("drain: ", load.outstanding(), " requests still in flight after 2 s");
    }
  }
  if (!load.failure().empty()) {
    std::fprintf(stderr, "echo-load: FAILED: %s\n", load.failure().c_str());
    return 1;
  }
  // The device stops the ring and reports where it is: everything we published was consumed.
  const std::uint32_t base = frontend.get_vring_base(0);
  if (base != load.avail_idx()) {
    std::fprintf(stderr, "echo-load: FAILED: GET_VRING_BASE returned %u, the driver published avail idx %u\n", base,
                 load.avail_idx());
    return 1;
  }
  std::uint64_t calls = 0;
  if (::read(call.get(), &calls, sizeof calls) != static_cast<ssize_t>(sizeof calls)) calls = 0;
  frontend.close();

  const double mreqs = static_cast<double>(measured) / elapsed / 1e6;
  std::printf("echo-load: %.3f Mreq/s (%u B requests, queue size %u, %u in flight, burst %u, %s, %.2f s, "
              "%llu requests, %llu payloads checked, %llu call signals)\n",
              mreqs, o.size, o.queue_size, load.in_flight_max(), load.burst(), ram.kind().c_str(), elapsed,
              static_cast<unsigned long long>(measured), static_cast<unsigned long long>(load.checked()),
              static_cast<unsigned long long>(calls));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse_options(argc, argv);
  try {
    return run(options);
  } catch (const vhostd::Error& error) {
    std::fprintf(stderr, "echo-load: %s\n", error.what());
    return 1;
  }
}
