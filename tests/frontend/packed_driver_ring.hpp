// vhostd tests: the guest driver's side of packed virtqueues, over TestGuestMemory.
//
// PackedDriverRing lays a packed ring out in guest memory (the descriptor ring, then the driver
// event suppression area, then the device's) and plays the driver the way Linux and DPDK do:
// add_chain() takes a free buffer id, writes every descriptor of the chain (consecutive slots,
// wrapping past the end of the ring) with the AVAIL/USED bits of its own lap, the buffer id in
// each (or only in the last one, which is all the spec promises), and writes the head's flags
// last with a release store; pop_used() reads the used descriptor at its next used slot
// (acquire) and skips the slots that buffer's chain took. Raw accessors (put(), desc(),
// publish_flags(), ...) let hostile-ring tests write anything at all.
// Header-only; failures of the test's own setup throw vhostd::Error.
//
// VIRTIO_F_IN_ORDER (set_in_order()): the device may write one used descriptor for a run of
// buffers, at the slot of the run's first chain and with the buffer id of its LAST chain,
// skipping the slots of the whole run. pop_used() then completes every outstanding chain up to
// the one named and still returns one PackedUsed per buffer, oldest first (len 0 for every
// buffer of the run but the last), so callers never see the difference.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <deque>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "driver_ring.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/virtqueue/packed_queue.hpp"

namespace vhostd::test {

// A used descriptor as the driver found it.
struct PackedUsed {
  std::uint16_t id = 0;
  std::uint32_t len = 0;
  std::uint16_t flags = 0;
  std::uint16_t slot = 0;  // where it was written
  bool known = false;      // the id named a buffer this driver had outstanding
};

class PackedDriverRing {
 public:
  static constexpr std::uint64_t driver_area_offset(std::uint32_t size) { return packed_desc_ring_bytes(size); }
  static constexpr std::uint64_t device_area_offset(std::uint32_t size) {
    return packed_desc_ring_bytes(size) + kPackedEventAreaBytes;
  }
  static constexpr std::uint64_t footprint(std::uint32_t size) {
    return packed_desc_ring_bytes(size) + 2 * kPackedEventAreaBytes;
  }

  // A ring at `gpa` in `memory` (all of footprint(size) must be mapped contiguously, 16-aligned).
  PackedDriverRing(TestGuestMemory& memory, std::uint64_t gpa, std::uint32_t size)
      : memory_(memory), host_(memory.host(gpa, footprint(size))), gpa_(gpa), uva_(memory.uva(gpa)), size_(size) {
    if (size == 0 || size > kMaxQueueSize) throw_error("PackedDriverRing: size ", size);
    if (gpa % 16 != 0 || reinterpret_cast<std::uintptr_t>(host_) % 16 != 0) {
      throw_error("PackedDriverRing: base not 16-aligned");
    }
    std::memset(host_, 0, footprint(size));  // the descriptor ring is zero-initialized (§2.8)
    for (std::uint32_t i = size; i-- > 0;) free_ids_.push_back(static_cast<std::uint16_t>(i));
    chain_slots_.assign(size, 0);
    free_slots_ = size;
  }
  // Allocates footprint(size) bytes of `memory` and lays the ring out there.
  static std::unique_ptr<PackedDriverRing> allocate(TestGuestMemory& memory, std::uint32_t size) {
    return std::make_unique<PackedDriverRing>(memory, memory.alloc(footprint(size), kTestPageSize), size);
  }
  PackedDriverRing(const PackedDriverRing&) = delete;
  PackedDriverRing& operator=(const PackedDriverRing&) = delete;

  std::uint32_t size() const noexcept { return size_; }
  std::uint64_t desc_gpa() const noexcept { return gpa_; }
  std::uint64_t driver_area_gpa() const noexcept { return gpa_ + driver_area_offset(size_); }
  std::uint64_t device_area_gpa() const noexcept { return gpa_ + device_area_offset(size_); }
  // SET_VRING_ADDR for this ring: desc = descriptor ring, avail = driver area, used = device
  // area; log_guest_addr = the device area's guest-physical address (what QEMU sends).
  VringAddresses addresses(std::uint32_t flags = 0) const noexcept {
    return VringAddresses{flags, uva_, uva_ + device_area_offset(size_), uva_ + driver_area_offset(size_),
                          device_area_gpa()};
  }

  // ---- the well-behaved driver ----

  // Makes `buffers` available as one chain in the next slots; returns its buffer id (`id` or
  // the next free one). With id_in_every_descriptor false only the last descriptor carries the
  // id and the others carry junk. Throws if the id is not free or the ring has no room.
  std::uint16_t add_chain(std::span<const DriverBuffer> buffers, std::optional<std::uint16_t> id = std::nullopt,
                          bool id_in_every_descriptor = true) {
    const std::uint32_t n = static_cast<std::uint32_t>(buffers.size());
    if (n == 0 || n > free_slots_) throw_error("PackedDriverRing: no room for ", n, " descriptors");
    const std::uint16_t buffer_id = take_id(id);
    std::uint32_t slot = next_avail_;
    bool wrap = avail_wrap_;
    std::uint16_t head_flags = 0;
    for (std::uint32_t i = 0; i < n; ++i) {
      const bool last = i + 1 == n;
      PackedDesc& d = desc(slot);
      d.addr = buffers[i].gpa;
      d.len = buffers[i].len;
      d.id = last || id_in_every_descriptor ? buffer_id : static_cast<std::uint16_t>(0xbeef + i);
      const auto flags = static_cast<std::uint16_t>(packed_avail_flags(wrap) | (last ? 0 : kVringDescFNext) |
                                                    (buffers[i].writable ? kVringDescFWrite : 0));
      if (i == 0) {
        head_flags = flags;
      } else {
        // Relaxed: published by the head's release store below.
        std::atomic_ref<std::uint16_t>(d.flags).store(flags, std::memory_order_relaxed);
      }
      step(slot, wrap);
    }
    publish(n, buffer_id, head_flags);
    return buffer_id;
  }
  std::uint16_t add_chain(std::initializer_list<DriverBuffer> buffers, std::optional<std::uint16_t> id = std::nullopt,
                          bool id_in_every_descriptor = true) {
    return add_chain(std::span(buffers.begin(), buffers.size()), id, id_in_every_descriptor);
  }

  // Writes `buffers` as an indirect table at `table_gpa` (16 bytes each, in one region) and
  // makes one INDIRECT descriptor available. dpdk_style sets NEXT and the AVAIL/USED bits in the
  // table entries as DPDK's virtio PMD does (the device must ignore them).
  std::uint16_t add_indirect(std::span<const DriverBuffer> buffers, std::uint64_t table_gpa,
                             std::optional<std::uint16_t> id = std::nullopt, bool dpdk_style = false) {
    if (buffers.empty() || free_slots_ == 0) throw_error("PackedDriverRing: cannot add an indirect chain");
    auto* table = reinterpret_cast<PackedDesc*>(memory_.host(table_gpa, 16 * buffers.size()));
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      std::uint16_t flags = buffers[i].writable ? kVringDescFWrite : 0;
      if (dpdk_style) flags |= static_cast<std::uint16_t>(packed_avail_flags(avail_wrap_) | (i + 1 < buffers.size() ? kVringDescFNext : 0));
      table[i] = PackedDesc{buffers[i].gpa, buffers[i].len, 0, flags};
    }
    const std::uint16_t buffer_id = take_id(id);
    PackedDesc& d = desc(next_avail_);
    d.addr = table_gpa;
    d.len = static_cast<std::uint32_t>(16 * buffers.size());
    d.id = buffer_id;
    publish(1, buffer_id, static_cast<std::uint16_t>(packed_avail_flags(avail_wrap_) | kVringDescFIndirect));
    return buffer_id;
  }
  std::uint16_t add_indirect(std::initializer_list<DriverBuffer> buffers, std::uint64_t table_gpa,
                             std::optional<std::uint16_t> id = std::nullopt, bool dpdk_style = false) {
    return add_indirect(std::span(buffers.begin(), buffers.size()), table_gpa, id, dpdk_style);
  }

  // VIRTIO_F_IN_ORDER negotiated: batched used descriptors accepted (see the top of this
  // file). Only while nothing is outstanding.
  void set_in_order(bool on) {
    if (in_flight() != 0) throw_error("PackedDriverRing: set_in_order with ", in_flight(), " buffers outstanding");
    in_order_ = on;
  }
  bool in_order() const noexcept { return in_order_; }

  // Whether a used buffer is waiting (acquire, like pop_used()).
  bool has_used() const noexcept { return !batched_.empty() || packed_desc_used(flags(next_used_), used_wrap_); }
  // The next used buffer; its buffer id and slots are freed when this driver knows it. With
  // IN_ORDER, one per buffer even when the device batched them.
  std::optional<PackedUsed> pop_used() {
    if (!batched_.empty()) {
      const PackedUsed used = batched_.front();
      batched_.pop_front();
      return used;
    }
    const std::uint16_t f = flags(next_used_);  // acquire: id and len below are the device's
    if (!packed_desc_used(f, used_wrap_)) return std::nullopt;
    const PackedDesc& d = desc(next_used_);
    PackedUsed used{d.id, d.len, f, static_cast<std::uint16_t>(next_used_), false};
    ++used_entries_;
    const std::size_t run = in_order_ ? run_length(used.id) : 0;
    if (run > 1) {
      // A batch: every outstanding chain up to the one named, oldest first.
      ++batched_elements_;
      for (std::size_t i = 0; i < run; ++i) {
        const std::uint16_t id = outstanding_.front();
        PackedUsed part{id, i + 1 == run ? used.len : 0, f, used.slot, true};
        batched_.push_back(part);
        complete(id);
      }
      used = batched_.front();
      batched_.pop_front();
      return used;
    }
    if (used.id < size_ && chain_slots_[used.id] != 0) {
      used.known = true;
      complete(used.id);
    } else {
      step(next_used_, used_wrap_);
    }
    return used;
  }
  // Used buffers waiting to be popped (walks the used descriptors without consuming them).
  std::uint32_t used_pending() const noexcept {
    std::uint32_t count = static_cast<std::uint32_t>(batched_.size());
    std::uint32_t pos = next_used_;
    bool wrap = used_wrap_;
    std::size_t next_outstanding = 0;  // outstanding_ index of the oldest chain not counted yet
    for (std::uint32_t walked = 0; walked < size_;) {
      const std::uint16_t f = flags(pos);  // acquire: the id below is the device's
      if (!packed_desc_used(f, wrap)) break;
      const std::uint16_t id = desc(pos).id;
      std::uint32_t slots = 1;
      std::size_t buffers = 1;
      if (in_order_) {
        std::size_t k = next_outstanding;
        while (k < outstanding_.size() && outstanding_[k] != id) ++k;
        if (k < outstanding_.size()) {
          buffers = k - next_outstanding + 1;
          slots = 0;
          for (std::size_t j = next_outstanding; j <= k; ++j) slots += chain_slots_[outstanding_[j]];
          next_outstanding = k + 1;
        }
      } else if (id < size_ && chain_slots_[id] != 0) {
        slots = chain_slots_[id];
      }
      count += static_cast<std::uint32_t>(buffers);
      walked += slots;
      for (std::uint32_t i = 0; i < slots; ++i) step(pos, wrap);
    }
    return count;
  }
  // Buffers made available and not popped yet (used or not).
  std::uint32_t in_flight() const noexcept {
    return static_cast<std::uint32_t>(size_ - free_ids_.size() + batched_.size());
  }
  // Used descriptors read so far, and how many of them covered more than one buffer (an
  // IN_ORDER batch).
  std::uint64_t used_entries() const noexcept { return used_entries_; }
  std::uint64_t batched_elements() const noexcept { return batched_elements_; }

  std::uint32_t free_slots() const noexcept { return free_slots_; }
  std::uint32_t free_ids() const noexcept { return static_cast<std::uint32_t>(free_ids_.size()); }
  std::uint16_t next_avail() const noexcept { return static_cast<std::uint16_t>(next_avail_); }
  bool avail_wrap() const noexcept { return avail_wrap_; }
  std::uint16_t next_used() const noexcept { return static_cast<std::uint16_t>(next_used_); }
  bool used_wrap() const noexcept { return used_wrap_; }
  // The driver's avail position in the vring base layout (bits 0-14 slot, bit 15 wrap).
  std::uint16_t avail_off_wrap() const noexcept {
    return static_cast<std::uint16_t>(next_avail_ | (avail_wrap_ ? kPackedWrapBit : 0));
  }
  std::uint16_t used_off_wrap() const noexcept {
    return static_cast<std::uint16_t>(next_used_ | (used_wrap_ ? kPackedWrapBit : 0));
  }

  // ---- event suppression ----

  // The driver area: used buffer notifications wanted (ENABLE), not (DISABLE), or for the slot
  // `off_wrap` names (DESC). off_wrap is written first, then flags with a release store.
  void set_used_events(std::uint16_t flags, std::uint16_t off_wrap = 0) noexcept {
    PackedEventSuppress& area = event_area(driver_area_offset(size_));
    // Relaxed: published by the release store of the flags.
    std::atomic_ref<std::uint16_t>(area.off_wrap).store(off_wrap, std::memory_order_relaxed);
    // Release: the device reads flags (acquire) then off_wrap.
    std::atomic_ref<std::uint16_t>(area.flags).store(flags, std::memory_order_release);
  }
  // What the device wrote in the device area.
  PackedEventSuppress device_event() const noexcept {
    PackedEventSuppress& area = event_area(device_area_offset(size_));
    PackedEventSuppress out;
    out.flags = std::atomic_ref<std::uint16_t>(area.flags).load(std::memory_order_acquire);
    out.off_wrap = std::atomic_ref<std::uint16_t>(area.off_wrap).load(std::memory_order_relaxed);
    return out;
  }
  // Whether the device asked for a kick for what was made available since the last call
  // (Linux's virtqueue_kick_prepare_packed).
  bool kick_needed() noexcept {
    // Full fence: our descriptor flags are visible before we read the device area; pairs with
    // the device's fence in enable_notifications().
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const PackedEventSuppress event = device_event();
    const std::uint32_t added = added_since_kick_check_;
    added_since_kick_check_ = 0;
    const std::uint16_t f = event.flags & kRingEventFlagsMask;
    if (f == kRingEventFlagsDesc) {
      return packed_need_event(event.off_wrap, static_cast<std::uint16_t>(next_avail_), avail_wrap_, added, size_);
    }
    return f != kRingEventFlagsDisable;
  }

  // Pretends a previous driver and device left both positions at (idx, wrap) with nothing
  // outstanding: every slot holds a used descriptor of the lap it was last used in.
  void start_at(std::uint16_t idx, bool wrap) {
    if (idx >= size_) throw_error("PackedDriverRing: start slot ", idx);
    for (std::uint32_t s = 0; s < size_; ++s) {
      std::atomic_ref<std::uint16_t>(desc(s).flags).store(packed_used_flags(s < idx ? wrap : !wrap),
                                                          std::memory_order_relaxed);
    }
    next_avail_ = next_used_ = idx;
    avail_wrap_ = used_wrap_ = wrap;
    added_since_kick_check_ = 0;
  }

  // ---- raw access for hostile tests ----

  PackedDesc& desc(std::uint32_t slot) const noexcept { return reinterpret_cast<PackedDesc*>(host_)[slot]; }
  std::uint16_t flags(std::uint32_t slot) const noexcept {
    return std::atomic_ref<std::uint16_t>(desc(slot).flags).load(std::memory_order_acquire);
  }
  // Writes addr/len/id of a slot, then its flags with a release store (no bookkeeping).
  void put(std::uint32_t slot, const PackedDesc& d) noexcept {
    PackedDesc& out = desc(slot);
    out.addr = d.addr;
    out.len = d.len;
    out.id = d.id;
    publish_flags(slot, d.flags);
  }
  // Release: the descriptor fields written before are visible with these flags.
  void publish_flags(std::uint32_t slot, std::uint16_t f) noexcept {
    std::atomic_ref<std::uint16_t>(desc(slot).flags).store(f, std::memory_order_release);
  }
  // The AVAIL/USED bits that make a descriptor available at the driver's current avail slot.
  std::uint16_t avail_bits() const noexcept { return packed_avail_flags(avail_wrap_); }
  std::uint8_t* host() const noexcept { return host_; }

 private:
  void step(std::uint32_t& slot, bool& wrap) const noexcept {
    if (++slot == size_) {
      slot = 0;
      wrap = !wrap;
    }
  }
  // With IN_ORDER: how many outstanding chains a used descriptor naming `id` completes (0 when
  // `id` is not outstanding).
  std::size_t run_length(std::uint16_t id) const noexcept {
    for (std::size_t k = 0; k < outstanding_.size(); ++k) {
      if (outstanding_[k] == id) return k + 1;
    }
    return 0;
  }
  // Frees an outstanding chain's id and slots and moves the next used slot past them.
  void complete(std::uint16_t id) {
    const std::uint32_t skip = chain_slots_[id];
    chain_slots_[id] = 0;
    free_ids_.push_back(id);
    free_slots_ += skip;
    for (std::uint32_t i = 0; i < skip; ++i) step(next_used_, used_wrap_);
    for (auto it = outstanding_.begin(); it != outstanding_.end(); ++it) {
      if (*it == id) {
        outstanding_.erase(it);
        break;
      }
    }
  }
  std::uint16_t take_id(std::optional<std::uint16_t> id) {
    if (free_ids_.empty()) throw_error("PackedDriverRing: no free buffer id");
    if (!id) {
      const std::uint16_t out = free_ids_.back();
      free_ids_.pop_back();
      return out;
    }
    for (auto it = free_ids_.begin(); it != free_ids_.end(); ++it) {
      if (*it == *id) {
        free_ids_.erase(it);
        return *id;
      }
    }
    throw_error("PackedDriverRing: buffer id ", *id, " is not free");
  }
  // Exposes a chain of `n` slots whose head is at next_avail_: the head's flags last.
  void publish(std::uint32_t n, std::uint16_t buffer_id, std::uint16_t head_flags) noexcept {
    chain_slots_[buffer_id] = static_cast<std::uint16_t>(n);
    outstanding_.push_back(buffer_id);
    free_slots_ -= n;
    // Release: every other field and descriptor of the chain is visible before the head is
    // available (the spec's "first descriptor last").
    publish_flags(next_avail_, head_flags);
    for (std::uint32_t i = 0; i < n; ++i) step(next_avail_, avail_wrap_);
    added_since_kick_check_ += n;
  }
  PackedEventSuppress& event_area(std::uint64_t offset) const noexcept {
    return *reinterpret_cast<PackedEventSuppress*>(host_ + offset);
  }

  TestGuestMemory& memory_;
  std::uint8_t* host_;
  std::uint64_t gpa_;
  std::uint64_t uva_;
  std::uint32_t size_;
  std::uint32_t next_avail_ = 0;
  bool avail_wrap_ = true;  // both wrap counters start at 1 (§2.8.1)
  std::uint32_t next_used_ = 0;
  bool used_wrap_ = true;
  std::uint32_t free_slots_ = 0;
  std::uint32_t added_since_kick_check_ = 0;
  std::vector<std::uint16_t> free_ids_;     // a stack
  std::vector<std::uint16_t> chain_slots_;  // per outstanding id: the slots its chain took
  std::deque<std::uint16_t> outstanding_;   // ids made available, oldest first
  bool in_order_ = false;
  std::deque<PackedUsed> batched_;          // IN_ORDER: rest of a batch, to return
  std::uint64_t used_entries_ = 0;
  std::uint64_t batched_elements_ = 0;
};

}  // namespace vhostd::test
