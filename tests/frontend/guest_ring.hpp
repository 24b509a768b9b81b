// vhostd tests: one guest driver ring of either layout, so integration tests are written once.
//
// GuestRing wraps the split driver (DriverRing, driver_ring.hpp) or the packed one
// (PackedDriverRing, packed_driver_ring.hpp) behind what the integration tests use: add a chain
// or an indirect chain (returns its head / buffer id), pop the next used buffer as {id, len},
// how many used buffers wait, how many are in flight, free room, the SET_VRING_ADDR addresses,
// the "interrupt me" controls (split: NO_INTERRUPT and used_event; packed: the driver area's
// ENABLE / DISABLE / DESC with off_wrap) and whether a kick is needed. split() and packed()
// reach the concrete driver for layout-specific and hostile tests (they throw on the other
// layout). With IN_ORDER both drivers take the device's batched used elements and still return
// one used buffer per buffer.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "driver_ring.hpp"
#include "packed_driver_ring.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd::test {

// A buffer the device used: the chain's head (split) / buffer id (packed) and the bytes written.
struct UsedBuffer {
  std::uint16_t id = 0;
  std::uint32_t len = 0;
};

class GuestRing {
 public:
  // Lays a ring of `size` entries out in freshly allocated guest memory.
  static std::unique_ptr<GuestRing> allocate(TestGuestMemory& memory, std::uint32_t size, RingLayout layout,
                                             bool in_order = false) {
    std::unique_ptr<GuestRing> ring;
    if (layout == RingLayout::packed) {
      ring = std::make_unique<GuestRing>(PackedDriverRing::allocate(memory, size));
    } else {
      ring = std::make_unique<GuestRing>(DriverRing::allocate(memory, size));
    }
    ring->set_in_order(in_order);
    return ring;
  }
  explicit GuestRing(std::unique_ptr<DriverRing> ring) : split_(std::move(ring)) {}
  explicit GuestRing(std::unique_ptr<PackedDriverRing> ring) : packed_(std::move(ring)) {}
  GuestRing(const GuestRing&) = delete;
  GuestRing& operator=(const GuestRing&) = delete;

  RingLayout layout() const noexcept { return packed_ ? RingLayout::packed : RingLayout::split; }
  bool is_packed() const noexcept { return packed_ != nullptr; }
  // The concrete drivers (raw access for layout-specific and hostile tests).
  DriverRing& split() const {
    if (!split_) throw_error("GuestRing: split() on a packed ring");
    return *split_;
  }
  PackedDriverRing& packed() const {
    if (!packed_) throw_error("GuestRing: packed() on a split ring");
    return *packed_;
  }

  void set_in_order(bool on) { packed_ ? packed_->set_in_order(on) : split_->set_in_order(on); }
  bool in_order() const noexcept { return packed_ ? packed_->in_order() : split_->in_order(); }
  std::uint32_t size() const noexcept { return packed_ ? packed_->size() : split_->size(); }
  // Where the ring lies: [desc_gpa(), desc_gpa() + footprint()).
  std::uint64_t desc_gpa() const noexcept { return packed_ ? packed_->desc_gpa() : split_->desc_gpa(); }
  std::uint64_t footprint() const noexcept {
    return packed_ ? PackedDriverRing::footprint(size()) : DriverRing::footprint(size());
  }
  // The guest-physical range the device writes used elements to (split: the used ring; packed:
  // the descriptor ring) and the range it never writes (split: the descriptor table; packed:
  // the driver event suppression area).
  std::uint64_t used_area_gpa() const noexcept { return packed_ ? packed_->desc_gpa() : split_->used_gpa(); }
  std::uint64_t used_area_bytes() const noexcept {
    return packed_ ? packed_desc_ring_bytes(size()) : used_ring_bytes(size());
  }
  std::uint64_t driver_only_gpa() const noexcept { return packed_ ? packed_->driver_area_gpa() : split_->desc_gpa(); }
  // SET_VRING_ADDR: split desc/used/avail; packed descriptor ring / device area / driver area.
  VringAddresses addresses(std::uint32_t flags = 0) const noexcept {
    return packed_ ? packed_->addresses(flags) : split_->addresses(flags);
  }
  // The vring base a ring that starts here is set up with (split: avail index 0; packed: slot
  // 0, both wrap counters 1, in the two-halves form).
  static std::uint32_t initial_base(RingLayout layout) noexcept {
    return layout == RingLayout::packed ? kPackedInitialBase : 0u;
  }
  // What GET_VRING_BASE must answer once every buffer made available was used and popped: split
  // the avail index; packed avail slot/wrap in bits 0-15, used slot/wrap in bits 16-31.
  std::uint32_t vring_base() const noexcept {
    if (packed_) {
      return static_cast<std::uint32_t>(packed_->avail_off_wrap()) |
             static_cast<std::uint32_t>(packed_->used_off_wrap()) << 16;
    }
    return split_->avail_idx();
  }

  // ---- the well-behaved driver ----

  // Makes `buffers` available as one chain; returns its head (split) / buffer id (packed).
  std::uint16_t add_chain(std::span<const DriverBuffer> buffers) {
    const std::uint16_t id = packed_ ? packed_->add_chain(buffers) : split_->add_chain(buffers);
    ++added_;
    return id;
  }
  std::uint16_t add_chain(std::initializer_list<DriverBuffer> buffers) {
    return add_chain(std::span(buffers.begin(), buffers.size()));
  }
  // `buffers` as an indirect table at `table_gpa` behind one INDIRECT descriptor.
  std::uint16_t add_indirect(std::span<const DriverBuffer> buffers, std::uint64_t table_gpa) {
    const std::uint16_t id =
        packed_ ? packed_->add_indirect(buffers, table_gpa) : split_->add_indirect(buffers, table_gpa);
    ++added_;
    return id;
  }
  std::uint16_t add_indirect(std::initializer_list<DriverBuffer> buffers, std::uint64_t table_gpa) {
    return add_indirect(std::span(buffers.begin(), buffers.size()), table_gpa);
  }
  // Descriptors (split) / slots (packed) free for add_chain(); and whether a chain of `n`
  // descriptors fits now (packed also needs a free buffer id).
  std::uint32_t free_descriptors() const noexcept { return packed_ ? packed_->free_slots() : split_->num_free(); }
  bool has_room(std::uint32_t n) const noexcept {
    return free_descriptors() >= n && (!packed_ || packed_->free_ids() != 0);
  }

  // The next used buffer (one per buffer, batched IN_ORDER elements included).
  std::optional<UsedBuffer> pop_used() {
    if (packed_) {
      std::optional<PackedUsed> used = packed_->pop_used();
      if (!used) return std::nullopt;
      ++popped_;
      return UsedBuffer{used->id, used->len};
    }
    std::optional<VringUsedElem> elem = split_->pop_used();
    if (!elem) return std::nullopt;
    if (elem->id > 0xffff) throw_error("GuestRing: used element names id ", elem->id);
    ++popped_;
    return UsedBuffer{static_cast<std::uint16_t>(elem->id), elem->len};
  }
  // Used buffers waiting to be popped.
  std::uint32_t used_pending() const noexcept { return packed_ ? packed_->used_pending() : split_->used_pending(); }
  bool has_used() const noexcept { return packed_ ? packed_->has_used() : split_->used_pending() != 0; }
  // Buffers made available and not popped yet.
  std::uint32_t in_flight() const noexcept { return packed_ ? packed_->in_flight() : split_->in_flight(); }
  // Every buffer made available has been used (popped or waiting).
  bool all_used() const noexcept { return used_pending() == in_flight(); }
  // Buffers made available / popped through this wrapper since it was created.
  std::uint64_t added() const noexcept { return added_; }
  std::uint64_t popped() const noexcept { return popped_; }
  // Nothing in flight, and the device's used position is exactly the driver's avail position
  // (split: used idx == avail idx; packed: next used slot and wrap == next avail slot and wrap,
  // and no used descriptor beyond).
  bool settled() const noexcept {
    if (packed_) {
      return packed_->in_flight() == 0 && packed_->avail_off_wrap() == packed_->used_off_wrap() &&
             !packed_->has_used();
    }
    return split_->in_flight() == 0 && split_->used_idx() == split_->avail_idx();
  }
  // Used elements the device wrote that covered more than one buffer (IN_ORDER batches).
  std::uint64_t batched_elements() const noexcept {
    return packed_ ? packed_->batched_elements() : split_->batched_elements();
  }

  // ---- notifications ----

  // Used buffer notifications on / off (split: the NO_INTERRUPT flag, ignored by the device
  // with EVENT_IDX; packed: the driver area's ENABLE / DISABLE).
  void set_interrupts(bool on) noexcept {
    if (packed_) {
      packed_->set_used_events(on ? kRingEventFlagsEnable : kRingEventFlagsDisable);
    } else {
      split_->set_no_interrupt(!on);
    }
  }
  // EVENT_IDX: interrupt once the device publishes the used element `ahead` elements (split) /
  // slots (packed) after the driver's next used position (0: the very next one). Split:
  // used_event; packed: DESC with that off_wrap. `ahead` < 2 * size for packed.
  void set_used_event(std::uint32_t ahead) {
    if (packed_) {
      if (ahead >= 2 * size()) throw_error("GuestRing: used event ", ahead, " slots ahead of a ring of ", size());
      std::uint32_t slot = packed_->next_used() + ahead;
      bool wrap = packed_->used_wrap();
      while (slot >= size()) {
        slot -= size();
        wrap = !wrap;
      }
      packed_->set_used_events(kRingEventFlagsDesc,
                               static_cast<std::uint16_t>(slot | (wrap ? kPackedWrapBit : 0u)));
    } else {
      split_->set_used_event(static_cast<std::uint16_t>(split_->avail_idx() - split_->in_flight() + ahead));
    }
  }
  // Whether the device asked for a kick for what was made available since the last call
  // (split: NO_NOTIFY or avail_event with EVENT_IDX; packed: the device area).
  bool kick_needed(bool event_idx) {
    if (packed_) return packed_->kick_needed();
    const bool needed = split_->kick_needed(kick_mark_, event_idx);
    kick_mark_ = split_->avail_idx();
    return needed;
  }

  // Whether the device has notifications on for the next buffer the driver makes available:
  // split: NO_NOTIFY clear, or with EVENT_IDX avail_event at the driver's avail idx; packed: the
  // device area says ENABLE, or DESC naming the driver's next avail slot and wrap.
  bool device_wants_kick(bool event_idx) const noexcept {
    if (packed_) {
      const PackedEventSuppress event = packed_->device_event();
      const std::uint16_t f = event.flags & kRingEventFlagsMask;
      if (f == kRingEventFlagsEnable) return true;
      if (f != kRingEventFlagsDesc) return false;
      return event.off_wrap == (packed_->next_avail() | (packed_->avail_wrap() ? kPackedWrapBit : 0u));
    }
    if (event_idx) return split_->avail_event() == split_->avail_idx();
    return (split_->used_flags() & kVringUsedFNoNotify) == 0;
  }

  // Positions, for failure messages.
  std::string describe() const {
    if (packed_) {
      return "packed ring: next avail slot " + std::to_string(packed_->next_avail()) + " wrap " +
             std::to_string(packed_->avail_wrap()) + ", next used slot " + std::to_string(packed_->next_used()) +
             " wrap " + std::to_string(packed_->used_wrap()) + ", " + std::to_string(packed_->in_flight()) +
             " in flight";
    }
    return "split ring: avail idx " + std::to_string(split_->avail_idx()) + ", used idx " +
           std::to_string(split_->used_idx()) + ", " + std::to_string(split_->in_flight()) + " in flight";
  }

 private:
  std::unique_ptr<DriverRing> split_;
  std::unique_ptr<PackedDriverRing> packed_;
  std::uint16_t kick_mark_ = 0;
  std::uint64_t added_ = 0;
  std::uint64_t popped_ = 0;
};

inline const char* to_string(RingLayout layout) noexcept {
  return layout == RingLayout::packed ? "packed" : "split";
}

}  // namespace vhostd::test
