// vhostd tests: the guest driver's side of split virtqueues, over test-owned guest memory.
//
// TestGuestMemory is guest memory as a frontend (QEMU) would own it: one memfd holding every
// region back to back, mapped here once so a test reads and writes guest memory by
// guest-physical address, described to the backend as MemoryRegionInfo with made-up frontend
// virtual addresses (uva_base + offset in the memfd). install() hands it to a GuestMemory.
//
// DriverRing lays a split ring out in such memory (desc table, avail ring + used_event, then
// the used ring + avail_event on the next 4 KiB boundary) and plays the driver: add_chain()
// writes descriptors, then the avail entry, then release-stores avail idx, exactly as a guest
// does. Raw accessors (desc(), publish_head(), set_avail_idx(), ...) let hostile-ring tests
// write anything at all. Header-only; failures of the test's own setup throw vhostd::Error.
//
// VIRTIO_F_IN_ORDER (set_in_order()): descriptors are taken in table order (from slot 0,
// wrapping at the end of the table) instead of from a free stack, as the spec requires of the
// driver, and pop_used() accepts the device's batched form: one used element, written where
// the run's first buffer's element goes, naming the head of the run's LAST buffer, with the used
// idx advanced by the whole run. pop_used() then still returns one element per buffer, oldest
// first (len 0 for every buffer of the run but the last), so callers never see the difference.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd::test {

inline constexpr std::uint64_t kTestPageSize = 4096;
// Where the pretend frontend "mapped" the guest memory (never dereferenced here).
inline constexpr std::uint64_t kDefaultUvaBase = 0x7f00'0000'0000ull;

constexpr std::uint64_t align_up(std::uint64_t value, std::uint64_t alignment) {
  return (value + alignment - 1) & ~(alignment - 1);
}

class TestGuestMemory {
 public:
  // One region per (guest-physical address, size), in this order back to back in one memfd
  // (region i at mmap_offset = sum of the sizes before it; userspace_addr = uva_base + that).
  // Sizes must be multiples of 4 KiB. Regions adjacent in both gpa and order are contiguous
  // in the local mapping too, so host() may span them.
  explicit TestGuestMemory(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& layout,
                           std::uint64_t uva_base = kDefaultUvaBase) {
    if (layout.empty()) throw_error("TestGuestMemory: no regions");
    std::uint64_t offset = 0;
    for (const auto& [gpa, size] : layout) {
      if (size == 0 || size % kTestPageSize != 0) throw_error("TestGuestMemory: region size ", size);
      regions_.push_back(MemoryRegionInfo{gpa, size, uva_base + offset, offset});
      offset += size;
    }
    size_ = offset;
    int fd = ::memfd_create("vhostd-test-guest", MFD_CLOEXEC);
    if (fd < 0) throw_errno("memfd_create");
    fd_.reset(fd);
    if (::ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) throw_errno("ftruncate guest memfd");
    void* base = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (base == MAP_FAILED) throw_errno("mmap guest memfd");
    base_ = static_cast<std::uint8_t*>(base);
    next_free_.assign(regions_.size(), 0);
  }
  static std::unique_ptr<TestGuestMemory> create(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& layout,
                                                 std::uint64_t uva_base = kDefaultUvaBase) {
    return std::make_unique<TestGuestMemory>(layout, uva_base);
  }
  ~TestGuestMemory() {
    if (base_ != nullptr) ::munmap(base_, size_);
  }
  TestGuestMemory(const TestGuestMemory&) = delete;
  TestGuestMemory& operator=(const TestGuestMemory&) = delete;

  // The memfd (owned here; the kernel duplicates it when sent with SCM_RIGHTS).
  int fd() const noexcept { return fd_.get(); }
  std::uint64_t size_bytes() const noexcept { return size_; }
  const std::vector<MemoryRegionInfo>& regions() const noexcept { return regions_; }

  // `n` fresh duplicates of the memfd (default: one per region), for GuestMemory::set_regions().
  std::vector<UniqueFd> region_fds(std::size_t n = 0) const {
    std::vector<UniqueFd> fds;
    for (std::size_t i = 0; i < (n == 0 ? regions_.size() : n); ++i) {
      int fd = ::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0);
      if (fd < 0) throw_errno("dup guest memfd");
      fds.emplace_back(fd);
    }
    return fds;
  }
  // Describes the memory to a backend's GuestMemory (SET_MEM_TABLE with these regions).
  void install(GuestMemory& memory) const { memory.set_regions(regions_, region_fds()); }

  // The same single-region memory described as `n` regions (sizes page-aligned, the last one
  // takes the remainder), all in this memfd. Throws for a multi-region layout.
  std::vector<MemoryRegionInfo> split_regions(std::size_t n) const {
    if (regions_.size() != 1) throw_error("split_regions: layout has ", regions_.size(), " regions");
    const MemoryRegionInfo& whole = regions_[0];
    const std::uint64_t piece = n == 0 ? 0 : (whole.memory_size / n) & ~(kTestPageSize - 1);
    if (piece == 0) throw_error("split_regions: cannot split ", whole.memory_size, " bytes in ", n);
    std::vector<MemoryRegionInfo> out;
    for (std::size_t i = 0; i < n; ++i) {
      const std::uint64_t off = i * piece;
      const std::uint64_t size = i + 1 == n ? whole.memory_size - off : piece;
      out.push_back(MemoryRegionInfo{whole.guest_phys_addr + off, size, whole.userspace_addr + off,
                                     whole.mmap_offset + off});
    }
    return out;
  }

  // Local pointer to [gpa, gpa+len); throws unless every byte is mapped contiguously here.
  std::uint8_t* host(std::uint64_t gpa, std::uint64_t len = 1) const {
    std::size_t i = find(gpa);
    std::uint8_t* p = base_ + regions_[i].mmap_offset + (gpa - regions_[i].guest_phys_addr);
    std::uint64_t room = regions_[i].guest_phys_addr + regions_[i].memory_size - gpa;
    while (room < len) {  // continue into the next region when it follows in gpa and in the file
      if (i + 1 == regions_.size() ||
          regions_[i + 1].guest_phys_addr != regions_[i].guest_phys_addr + regions_[i].memory_size) {
        throw_error("TestGuestMemory: gpa 0x", std::hex, gpa, " + 0x", len, " is not mapped contiguously");
      }
      room += regions_[++i].memory_size;
    }
    return p;
  }
  // The frontend virtual address of a guest-physical address.
  std::uint64_t uva(std::uint64_t gpa) const {
    const MemoryRegionInfo& r = regions_[find(gpa)];
    return r.userspace_addr + (gpa - r.guest_phys_addr);
  }

  void write(std::uint64_t gpa, const void* src, std::uint64_t len) { std::memcpy(host(gpa, len), src, len); }
  void read(std::uint64_t gpa, void* dst, std::uint64_t len) const { std::memcpy(dst, host(gpa, len), len); }
  void fill(std::uint64_t gpa, std::uint8_t byte, std::uint64_t len) { std::memset(host(gpa, len), byte, len); }
  std::vector<std::uint8_t> bytes(std::uint64_t gpa, std::uint64_t len) const {
    std::vector<std::uint8_t> out(len);
    read(gpa, out.data(), len);
    return out;
  }

  // Bump allocator: `len` bytes aligned to `alignment`, inside one region (the first with
  // room, in layout order). Throws when none has room. Memory is never freed.
  std::uint64_t alloc(std::uint64_t len, std::uint64_t alignment = 64) {
    for (std::size_t i = 0; i < regions_.size(); ++i) {
      const std::uint64_t start = align_up(regions_[i].guest_phys_addr + next_free_[i], alignment);
      const std::uint64_t end = regions_[i].guest_phys_addr + regions_[i].memory_size;
      if (start <= end && len <= end - start) {
        next_free_[i] = start + len - regions_[i].guest_phys_addr;
        return start;
      }
    }
    throw_error("TestGuestMemory: no room for ", len, " bytes");
  }

 private:
  std::size_t find(std::uint64_t gpa) const {
    for (std::size_t i = 0; i < regions_.size(); ++i) {
      if (gpa >= regions_[i].guest_phys_addr && gpa - regions_[i].guest_phys_addr < regions_[i].memory_size) return i;
    }
    throw_error("TestGuestMemory: gpa 0x", std::hex, gpa, " is not guest memory");
  }

  std::vector<MemoryRegionInfo> regions_;
  std::vector<std::uint64_t> next_free_;  // per region, bytes from its start
  UniqueFd fd_;
  std::uint8_t* base_ = nullptr;
  std::uint64_t size_ = 0;
};

// One buffer of a chain as the driver describes it.
struct DriverBuffer {
  std::uint64_t gpa = 0;
  std::uint32_t len = 0;
  bool writable = false;  // device-writable (VRING_DESC_F_WRITE)
};

class DriverRing {
 public:
  // Bytes a ring of `size` entries occupies from its (16-byte aligned) base.
  static constexpr std::uint64_t used_offset(std::uint32_t size) {
    return align_up(desc_table_bytes(size) + avail_ring_bytes(size), kTestPageSize);
  }
  static constexpr std::uint64_t footprint(std::uint32_t size) { return used_offset(size) + used_ring_bytes(size); }

  // A ring at `host` (the local view of guest-physical `gpa`, frontend address `uva`).
  // add_indirect() needs the TestGuestMemory constructor.
  DriverRing(std::uint8_t* host, std::uint64_t gpa, std::uint64_t uva, std::uint32_t size)
      : host_(host), gpa_(gpa), uva_(uva), size_(size) {
    if (size == 0 || size > kMaxQueueSize || (size & (size - 1)) != 0) throw_error("DriverRing: size ", size);
    if (gpa % 16 != 0 || reinterpret_cast<std::uintptr_t>(host) % 16 != 0) throw_error("DriverRing: base not 16-aligned");
    std::memset(host_, 0, footprint(size));
    free_.reserve(size);
    for (std::uint32_t i = size; i-- > 0;) free_.push_back(static_cast<std::uint16_t>(i));
    chains_.resize(size);
  }
  // A ring at `gpa` in `memory` (all of footprint(size) must be mapped contiguously).
  DriverRing(TestGuestMemory& memory, std::uint64_t gpa, std::uint32_t size)
      : DriverRing(memory.host(gpa, footprint(size)), gpa, memory.uva(gpa), size) {
    memory_ = &memory;
  }
  // Allocates footprint(size) bytes of `memory` and lays the ring out there.
  static std::unique_ptr<DriverRing> allocate(TestGuestMemory& memory, std::uint32_t size) {
    return std::make_unique<DriverRing>(memory, memory.alloc(footprint(size), kTestPageSize), size);
  }
  DriverRing(const DriverRing&) = delete;
  DriverRing& operator=(const DriverRing&) = delete;

  std::uint32_t size() const noexcept { return size_; }
  std::uint64_t desc_gpa() const noexcept { return gpa_; }
  std::uint64_t avail_gpa() const noexcept { return gpa_ + desc_table_bytes(size_); }
  std::uint64_t used_gpa() const noexcept { return gpa_ + used_offset(size_); }
  std::uint64_t desc_uva() const noexcept { return uva_; }
  std::uint64_t avail_uva() const noexcept { return uva_ + desc_table_bytes(size_); }
  std::uint64_t used_uva() const noexcept { return uva_ + used_offset(size_); }
  // SET_VRING_ADDR for this ring (log_guest_addr = the used ring's guest-physical address).
  VringAddresses addresses(std::uint32_t flags = 0) const noexcept {
    return VringAddresses{flags, desc_uva(), used_uva(), avail_uva(), used_gpa()};
  }

  // ---- the well-behaved driver ----

  // VIRTIO_F_IN_ORDER negotiated: descriptors in table order, batched used elements accepted
  // (see the top of this file). Only while nothing is outstanding.
  void set_in_order(bool on) {
    if (in_flight() != 0) throw_error("DriverRing: set_in_order with ", in_flight(), " buffers outstanding");
    in_order_ = on;
  }
  bool in_order() const noexcept { return in_order_; }

  // Writes the chain into free descriptors, then its avail entry, then publishes avail idx.
  // Returns the head. Throws if not enough descriptors are free.
  std::uint16_t add_chain(std::span<const DriverBuffer> buffers) {
    if (buffers.empty() || buffers.size() > num_free()) throw_error("DriverRing: cannot add ", buffers.size(), " descriptors");
    std::vector<std::uint16_t> ids = take_descriptors(buffers.size());
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      desc(ids[i]) = VringDesc{buffers[i].gpa, buffers[i].len,
                               static_cast<std::uint16_t>((buffers[i].writable ? kVringDescFWrite : 0) |
                                                          (last ? 0 : kVringDescFNext)),
                               last ? std::uint16_t{0} : ids[i + 1]};
    }
    const std::uint16_t head = ids[0];
    chains_[head] = std::move(ids);
    outstanding_.push_back(head);
    publish_head(head);
    return head;
  }
  std::uint16_t add_chain(std::initializer_list<DriverBuffer> buffers) {
    return add_chain(std::span(buffers.begin(), buffers.size()));
  }

  // Writes the buffers as an indirect table at `table_gpa` (16 bytes per buffer, in one
  // region) and publishes one INDIRECT descriptor pointing at it. Returns the head.
  std::uint16_t add_indirect(std::span<const DriverBuffer> buffers, std::uint64_t table_gpa) {
    if (memory_ == nullptr) throw_error("DriverRing: add_indirect needs the TestGuestMemory constructor");
    if (buffers.empty() || num_free() == 0) throw_error("DriverRing: cannot add an indirect chain");
    auto* table = reinterpret_cast<VringDesc*>(memory_->host(table_gpa, 16 * buffers.size()));
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      table[i] = VringDesc{buffers[i].gpa, buffers[i].len,
                           static_cast<std::uint16_t>((buffers[i].writable ? kVringDescFWrite : 0) |
                                                      (last ? 0 : kVringDescFNext)),
                           static_cast<std::uint16_t>(last ? 0 : i + 1)};
    }
    const std::uint16_t head = take_descriptors(1)[0];
    desc(head) = VringDesc{table_gpa, static_cast<std::uint32_t>(16 * buffers.size()), kVringDescFIndirect, 0};
    chains_[head] = {head};
    outstanding_.push_back(head);
    publish_head(head);
    return head;
  }
  std::uint16_t add_indirect(std::initializer_list<DriverBuffer> buffers, std::uint64_t table_gpa) {
    return add_indirect(std::span(buffers.begin(), buffers.size()), table_gpa);
  }

  // The avail idx this driver last published.
  std::uint16_t avail_idx() const noexcept { return avail_idx_; }
  // Acquire: the used elements the device wrote before this idx are visible to pop_used().
  std::uint16_t used_idx() const noexcept {
    return std::atomic_ref<std::uint16_t>(u16(used_offset(size_) + 2)).load(std::memory_order_acquire);
  }
  // Used buffers the device published that this driver has not popped yet (with IN_ORDER a
  // batched element counts for every buffer of its run, as the used idx does).
  std::uint16_t used_pending() const noexcept {
    return static_cast<std::uint16_t>(used_idx() - last_used_ + batched_.size());
  }
  // Buffers made available and not popped yet (used or not).
  std::uint16_t in_flight() const noexcept {
    return static_cast<std::uint16_t>(avail_idx_ - last_used_ + batched_.size());
  }
  // The next used element (its descriptors are freed when it names a chain add_* made). With
  // IN_ORDER, one element per buffer even when the device batched them (see the top of this
  // file); throws Error when a batch claims more buffers than the used idx advanced by.
  std::optional<VringUsedElem> pop_used() {
    if (!batched_.empty()) {
      const VringUsedElem elem = batched_.front();
      batched_.pop_front();
      return elem;
    }
    if (used_idx() == last_used_) return std::nullopt;
    const VringUsedElem elem = used_elem(last_used_ & (size_ - 1));
    ++used_entries_;
    if (!in_order_) {
      ++last_used_;
      if (elem.id < size_) free_chain(static_cast<std::uint16_t>(elem.id));
      drop_outstanding(elem.id);
      return elem;
    }
    // In order: the element completes every outstanding chain up to the one it names.
    std::size_t run = 0;
    while (run < outstanding_.size() && outstanding_[run] != elem.id) ++run;
    if (run == outstanding_.size()) {  // not a chain of ours (a hostile test's raw head)
      ++last_used_;
      return elem;
    }
    ++run;
    const std::uint16_t published = static_cast<std::uint16_t>(used_idx() - last_used_);
    if (published < run) {
      throw_error("DriverRing: in-order used element at index ", last_used_, " names head ", elem.id, ", the ", run,
                  "th buffer outstanding, but the used idx only advanced by ", published);
    }
    if (run > 1) ++batched_elements_;
    for (std::size_t i = 0; i < run; ++i) {
      const std::uint16_t head = outstanding_.front();
      outstanding_.pop_front();
      free_chain(head);
      if (i + 1 < run) batched_.push_back(VringUsedElem{head, 0});
    }
    batched_.push_back(elem);
    last_used_ = static_cast<std::uint16_t>(last_used_ + run);
    const VringUsedElem first = batched_.front();
    batched_.pop_front();
    return first;
  }
  std::uint32_t num_free() const noexcept {
    return in_order_ ? in_order_free_ : static_cast<std::uint32_t>(free_.size());
  }
  // Used ring entries read so far, and how many of them covered more than one buffer (an
  // IN_ORDER batch).
  std::uint64_t used_entries() const noexcept { return used_entries_; }
  std::uint64_t batched_elements() const noexcept { return batched_elements_; }

  // EVENT_IDX: interrupt me once the used idx passes `idx` (avail ring's trailing u16).
  void set_used_event(std::uint16_t idx) noexcept {
    // Relaxed: the device reads it after its own full fence in notify().
    std::atomic_ref<std::uint16_t>(u16(desc_table_bytes(size_) + 4 + 2ull * size_)).store(idx, std::memory_order_relaxed);
  }
  void set_no_interrupt(bool on) noexcept {
    std::atomic_ref<std::uint16_t> flags(u16(desc_table_bytes(size_)));
    // Relaxed: a hint to the device, read after its own full fence.
    flags.store(on ? kVringAvailFNoInterrupt : 0, std::memory_order_relaxed);
  }
  // What the device wrote: the used ring's flags and trailing avail_event.
  std::uint16_t used_flags() const noexcept {
    return std::atomic_ref<std::uint16_t>(u16(used_offset(size_))).load(std::memory_order_relaxed);
  }
  std::uint16_t avail_event() const noexcept {
    return std::atomic_ref<std::uint16_t>(u16(used_offset(size_) + 4 + 8ull * size_)).load(std::memory_order_relaxed);
  }
  // After publishing entries from `old_avail_idx` on: whether the device asked for a kick.
  bool kick_needed(std::uint16_t old_avail_idx, bool event_idx) const noexcept {
    // Full fence: our avail idx store is visible before we read flags/avail_event; pairs with
    // the device's fence in enable_notifications().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (event_idx) return vring_need_event(avail_event(), avail_idx_, old_avail_idx);
    return (used_flags() & kVringUsedFNoNotify) == 0;
  }

  // Pretends a previous device left both indexes at `idx` (to test SET_VRING_BASE resume).
  void start_at(std::uint16_t idx) noexcept {
    avail_idx_ = idx;
    last_used_ = idx;
    std::atomic_ref<std::uint16_t>(u16(used_offset(size_) + 2)).store(idx, std::memory_order_relaxed);
    // Release: the used idx above is in place before avail idx is published.
    std::atomic_ref<std::uint16_t>(u16(desc_table_bytes(size_) + 2)).store(idx, std::memory_order_release);
  }

  // ---- raw access for hostile tests ----

  VringDesc& desc(std::uint32_t i) noexcept { return reinterpret_cast<VringDesc*>(host_)[i]; }
  // Puts `head` in the next avail slot and publishes avail idx + 1 (descriptors untouched).
  void publish_head(std::uint16_t head) noexcept {
    u16(desc_table_bytes(size_) + 4 + 2ull * (avail_idx_ & (size_ - 1))) = head;
    // Release: the descriptors and the avail entry are visible before the new avail idx.
    set_avail_idx(static_cast<std::uint16_t>(avail_idx_ + 1));
  }
  // Publishes any avail idx (release store).
  void set_avail_idx(std::uint16_t idx) noexcept {
    avail_idx_ = idx;
    // Release: the descriptors and avail entries written before are visible before this idx.
    std::atomic_ref<std::uint16_t>(u16(desc_table_bytes(size_) + 2)).store(idx, std::memory_order_release);
  }
  // Used ring slot `slot` as the device wrote it.
  VringUsedElem used_elem(std::uint32_t slot) const noexcept {
    VringUsedElem elem;
    std::memcpy(&elem, host_ + used_offset(size_) + 4 + 8ull * slot, sizeof elem);
    return elem;
  }
  std::uint8_t* host() const noexcept { return host_; }

 private:
  std::uint16_t& u16(std::uint64_t offset) const noexcept {
    return *reinterpret_cast<std::uint16_t*>(host_ + offset);
  }
  // `n` free descriptors: the next ones in table order with IN_ORDER, else from the stack.
  std::vector<std::uint16_t> take_descriptors(std::size_t n) {
    std::vector<std::uint16_t> ids(n);
    for (auto& id : ids) {
      if (in_order_) {
        id = static_cast<std::uint16_t>(next_desc_);
        next_desc_ = next_desc_ + 1 == size_ ? 0 : next_desc_ + 1;
        --in_order_free_;
      } else {
        id = free_.back();
        free_.pop_back();
      }
    }
    return ids;
  }
  void free_chain(std::uint16_t head) {
    if (in_order_) {
      in_order_free_ += static_cast<std::uint32_t>(chains_[head].size());
    } else {
      for (std::uint16_t id : chains_[head]) free_.push_back(id);
    }
    chains_[head].clear();
  }
  void drop_outstanding(std::uint32_t head) {
    for (auto it = outstanding_.begin(); it != outstanding_.end(); ++it) {
      if (*it == head) {
        outstanding_.erase(it);
        return;
      }
    }
  }

  std::uint8_t* host_;
  std::uint64_t gpa_;
  std::uint64_t uva_;
  std::uint32_t size_;
  TestGuestMemory* memory_ = nullptr;
  std::uint16_t avail_idx_ = 0;
  std::uint16_t last_used_ = 0;
  std::vector<std::uint16_t> free_;                 // free descriptor ids (a stack)
  std::vector<std::vector<std::uint16_t>> chains_;  // per head: the descriptors of its chain
  std::deque<std::uint16_t> outstanding_;           // heads made available, oldest first
  bool in_order_ = false;
  std::uint32_t next_desc_ = 0;                     // IN_ORDER: the next descriptor to take
  std::uint32_t in_order_free_ = size_;             // IN_ORDER: free descriptors
  std::deque<VringUsedElem> batched_;               // IN_ORDER: rest of a batch, to return
  std::uint64_t used_entries_ = 0;
  std::uint64_t batched_elements_ = 0;
};

}  // namespace vhostd::test
