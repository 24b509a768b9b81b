// vhostd virtqueue: the device side of a split virtqueue (virtio 1.2 §2.7).
//
// Policies worth knowing (the spec leaves them to the device):
//   - A zero-length descriptor is accepted and yields no segment; its address is not checked.
//   - A buffer crossing from one mapped region into an adjacent one becomes two segments.
//   - A descriptor may switch to an indirect table anywhere in a chain (Linux vhost does the
//     same); the chain then ends inside that table.
//   - An indirect table may hold at most kMaxQueueSize descriptors (bounds the walk).
//   - A chain of more than 4 GiB in either direction is chain_too_long (the totals are u32).
//   - The ring areas must have the spec's alignment (desc 16, avail 2, used 4); else
//     ring_address.
//   - IN_ORDER batching (§2.7.9) only folds chains the device could not write (no WRITE
//     descriptor, used len 0): DPDK's virtio PMD reads every used entry's len on its RX paths,
//     and a read-only chain is "used completely" by definition. A run is folded only when each
//     element is the chain popped at the used index it takes; a device pushing out of pop
//     order gets one entry per element.
#include "vhostd/virtqueue/split_queue.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd {
namespace {

// Byte offsets inside the used area: flags, idx, ring[size], avail_event.
constexpr std::uint64_t kUsedIdxOffset = 2;
constexpr std::uint64_t kUsedRingOffset = 4;
constexpr std::uint64_t used_event_offset_u16(std::uint32_t size) { return 2ull + size; }  // in avail_
constexpr std::uint64_t avail_event_offset(std::uint32_t size) { return kUsedRingOffset + 8ull * size; }

std::uint16_t& used_u16(std::uint8_t* used, std::uint64_t offset) noexcept {
  return *reinterpret_cast<std::uint16_t*>(used + offset);
}

// Copies a descriptor out of guest memory with each field read exactly once: the guest may
// rewrite the table at any time, so every check and every use works on this local copy.
VringDesc read_desc(const VringDesc* src) noexcept {
  const volatile VringDesc* v = src;
  VringDesc d;
  d.addr = v->addr;
  d.len = v->len;
  d.flags = v->flags;
  d.next = v->next;
  return d;
}

bool aligned(const void* p, std::uintptr_t alignment) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) & (alignment - 1)) == 0;
}

}  // namespace

const char* to_string(RingError error) noexcept {
  switch (error) {
    case RingError::none: return "none";
    case RingError::ring_address: return "ring_address";
    case RingError::avail_idx_jump: return "avail_idx_jump";
    case RingError::head_out_of_range: return "head_out_of_range";
    case RingError::next_out_of_range: return "next_out_of_range";
    case RingError::chain_loop: return "chain_loop";
    case RingError::chain_too_long: return "chain_too_long";
    case RingError::indirect_bad_length: return "indirect_bad_length";
    case RingError::indirect_nested: return "indirect_nested";
    case RingError::indirect_with_next: return "indirect_with_next";
    case RingError::readable_after_writable: return "readable_after_writable";
    case RingError::descriptor_address: return "descriptor_address";
    case RingError::used_id_out_of_range: return "used_id_out_of_range";
    case RingError::count: break;
  }
  return "unknown";
}

// ---- ChainReader / ChainWriter ----

ChainReader::ChainReader(const DescriptorChain& chain) noexcept
    : chain_(chain), remaining_(chain.readable_bytes) {}

std::size_t ChainReader::read(void* dst, std::size_t n) noexcept {
  auto* out = static_cast<std::uint8_t*>(dst);
  std::size_t done = 0;
  while (done < n && seg_ < chain_.num_readable) {
    const ChainSegment& seg = chain_.segments[seg_];
    const std::size_t take = std::min<std::size_t>(n - done, seg.len - offset_);
    std::memcpy(out + done, seg.host + offset_, take);
    done += take;
    offset_ += static_cast<std::uint32_t>(take);
    if (offset_ == seg.len) {
      ++seg_;
      offset_ = 0;
    }
  }
  remaining_ -= done;
  return done;
}

std::size_t ChainReader::skip(std::size_t n) noexcept {
  std::size_t done = 0;
  while (done < n && seg_ < chain_.num_readable) {
    const ChainSegment& seg = chain_.segments[seg_];
    const std::size_t take = std::min<std::size_t>(n - done, seg.len - offset_);
    done += take;
    offset_ += static_cast<std::uint32_t>(take);
    if (offset_ == seg.len) {
      ++seg_;
      offset_ = 0;
    }
  }
  remaining_ -= done;
  return done;
}

ChainWriter::ChainWriter(const DescriptorChain& chain, const MemoryTable& table) noexcept
    : chain_(chain), table_(table), remaining_(chain.writable_bytes) {}

std::size_t ChainWriter::write(const void* src, std::size_t n) noexcept {
  const auto* in = static_cast<const std::uint8_t*>(src);
  std::size_t done = 0;
  while (done < n && seg_ < chain_.num_writable) {
    const ChainSegment& seg = chain_.segments[chain_.num_readable + seg_];
    const std::size_t take = std::min<std::size_t>(n - done, seg.len - offset_);
    std::memcpy(seg.host + offset_, in + done, take);
    table_.mark_dirty(seg.gpa + offset_, take);
    done += take;
    offset_ += static_cast<std::uint32_t>(take);
    if (offset_ == seg.len) {
      ++seg_;
      offset_ = 0;
    }
  }
  written_ += done;
  remaining_ -= done;
  return done;
}

// ---- SplitQueue: control path ----

void SplitQueue::set_size(std::uint32_t size) {
  if (size == 0 || size > kMaxQueueSize || (size & (size - 1)) != 0) {
    throw_error("virtqueue size ", size, " is not a power of two in [1, ", kMaxQueueSize, "]");
  }
  shadow_used_.assign(size, VringUsedElem{});
  shadow_offset_.assign(size, 0);
  popped_.assign(size, PopRecord{0, 0});
  shadow_count_ = 0;
  size_ = size;
  table_ = nullptr;  // the area sizes changed: re-translate on the next poll
}

void SplitQueue::set_addresses(const VringAddresses& addresses) noexcept {
  addresses_ = addresses;
  table_ = nullptr;
}

void SplitQueue::set_last_avail_idx(std::uint16_t idx) noexcept {
  last_avail_idx_ = idx;
  avail_idx_cache_ = idx;
  used_idx_ = idx;
  signalled_used_ = idx;
  signalled_used_valid_ = false;
  shadow_count_ = 0;
}

void check_ring_areas(const MemoryTable& table, const char* kind, std::span<const RingArea> areas) {
  for (const RingArea& area : areas) {
    const std::uint8_t* host = table.translate_uva(area.uva, area.bytes);
    if (host == nullptr) {
      throw_error(kind, " ", area.name, " at 0x", std::hex, area.uva, std::dec, " (", area.bytes,
                  " bytes) is not inside one mapped region");
    }
    if (!aligned(host, area.alignment)) {
      throw_error(kind, " ", area.name, " at 0x", std::hex, area.uva, std::dec, " is not ", area.alignment,
                  "-byte aligned");
    }
  }
}

void SplitQueue::check_addresses(const MemoryTable& table) const {
  if (size_ == 0) throw_error("virtqueue addresses checked before its size was set");
  const RingArea areas[] = {
      {"descriptor table", addresses_.desc_user_addr, desc_table_bytes(size_), 16},
      {"avail ring", addresses_.avail_user_addr, avail_ring_bytes(size_), 2},
      {"used ring", addresses_.used_user_addr, used_ring_bytes(size_), 4},
  };
  check_ring_areas(table, "virtqueue", areas);
}

void SplitQueue::reset() noexcept {
  // The GuestMemory binding belongs to the connection, not to the ring: it is kept.
  size_ = 0;
  addresses_ = {};
  event_idx_ = false;
  in_order_ = false;
  write_mask_ = kVringDescFWrite;
  call_fd_ = -1;
  // A held call stays listed (a reset ring is off every data lcore, whose lists were flushed
  // first: see call_coalescing.hpp); only the setting goes.
  held_call_.configure({});
  table_ = nullptr;
  desc_ = nullptr;
  avail_ = nullptr;
  used_ = nullptr;
  desc_hint_ = 0;
  last_avail_idx_ = 0;
  avail_idx_cache_ = 0;
  used_idx_ = 0;
  signalled_used_ = 0;
  signalled_used_valid_ = false;
  notifications_enabled_ = true;
  shadow_used_.clear();
  shadow_offset_.clear();
  popped_.clear();
  shadow_count_ = 0;
  error_ = RingError::none;
}

// ---- SplitQueue: data path ----

bool SplitQueue::fail(RingError error) noexcept {
  error_ = error;
  stats_.add(stats_.errors[static_cast<std::size_t>(error)], 1);
  return false;
}

bool SplitQueue::refresh_table() noexcept {
  const MemoryTable* table = memory_->current();
  // Compare generations, not pointers: a new table may be allocated at a freed one's address.
  if (VHOSTD_LIKELY(table_ != nullptr && table->generation() == table_generation_)) return true;
  table_ = nullptr;
  std::uint8_t* desc = table->translate_uva(addresses_.desc_user_addr, desc_table_bytes(size_));
  std::uint8_t* avail = table->translate_uva(addresses_.avail_user_addr, avail_ring_bytes(size_));
  std::uint8_t* used = table->translate_uva(addresses_.used_user_addr, used_ring_bytes(size_));
  if (desc == nullptr || avail == nullptr || used == nullptr || !aligned(desc, 16) || !aligned(avail, 2) ||
      !aligned(used, 4)) {
    return fail(RingError::ring_address);
  }
  table_ = table;
  table_generation_ = table->generation();
  desc_ = reinterpret_cast<VringDesc*>(desc);
  avail_ = reinterpret_cast<std::uint16_t*>(avail);
  used_ = used;
  desc_hint_ = 0;
  if (!notifications_enabled_ && !event_idx_) {
    // disable_notifications() ran before the ring areas were translated: apply it now.
    notifications_enabled_ = true;
    disable_notifications();
  }
  return true;
}

std::uint16_t SplitQueue::poll() noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0 || memory_ == nullptr)) return 0;
  if (VHOSTD_UNLIKELY(!refresh_table())) return 0;
  // Acquire: the descriptors and avail ring entries the driver wrote before this idx are
  // visible to the reads pop() makes after it.
  const std::uint16_t avail_idx = std::atomic_ref<std::uint16_t>(avail_[1]).load(std::memory_order_acquire);
  const std::uint16_t pending = static_cast<std::uint16_t>(avail_idx - last_avail_idx_);
  if (VHOSTD_UNLIKELY(pending > size_)) {
    fail(RingError::avail_idx_jump);
    return 0;
  }
  avail_idx_cache_ = avail_idx;
  stats_.add(pending == 0 ? stats_.empty_polls : stats_.batches, 1);
  return pending;
}

std::uint16_t SplitQueue::poll_cached() noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0 || memory_ == nullptr)) return 0;
  if (VHOSTD_UNLIKELY(!refresh_table())) return 0;
  return static_cast<std::uint16_t>(avail_idx_cache_ - last_avail_idx_);
}

void SplitQueue::prefetch_buffers(std::uint16_t n, std::uint32_t read_bytes, std::uint32_t write_bytes) const noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || table_ == nullptr)) return;
  const auto available = static_cast<std::uint16_t>(avail_idx_cache_ - last_avail_idx_);
  std::uint32_t hint = desc_hint_;
  for (std::uint16_t i = 0; i < std::min(n, available); ++i) {
    // Relaxed: ordered after the avail idx by poll()'s acquire, as in pop().
    const std::uint16_t head = std::atomic_ref<std::uint16_t>(
        avail_[2 + (static_cast<std::uint16_t>(last_avail_idx_ + i) & (size_ - 1))]).load(std::memory_order_relaxed);
    if (head >= size_) return;
    const VringDesc d = read_desc(&desc_[head]);
    if ((d.flags & (kVringDescFNext | kVringDescFIndirect)) != 0) return;
    if (!prefetch_descriptor_buffer(*table_, d.addr, d.len, read_bytes, write_bytes, hint)) return;
  }
}

bool SplitQueue::pop(DescriptorChain& chain) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || table_ == nullptr)) return false;
  if (last_avail_idx_ == avail_idx_cache_) return false;

  // Relaxed: ordered after the avail idx by poll()'s acquire; read once into a local.
  const std::uint16_t head =
      std::atomic_ref<std::uint16_t>(avail_[2 + (last_avail_idx_ & (size_ - 1))]).load(std::memory_order_relaxed);
  if (VHOSTD_UNLIKELY(head >= size_)) return fail(RingError::head_out_of_range);

  // Fast path: a single direct descriptor inside one region (every net packet and RX buffer
  // of Linux and DPDK guests). Anything else, or a miss, takes the general walk below, which
  // reads the descriptor again and decides on that copy alone.
  const VringDesc first = read_desc(&desc_[head]);
  if (VHOSTD_LIKELY((first.flags & (kVringDescFNext | kVringDescFIndirect)) == 0 && first.len != 0)) {
    std::uint8_t* host = table_->translate_gpa(first.addr, first.len, desc_hint_);
    if (VHOSTD_LIKELY(host != nullptr)) {
      const bool writable = (first.flags & write_mask_) != 0;
      chain.segments[0] = ChainSegment{host, first.addr, first.len};
      chain.head = head;
      chain.num_readable = writable ? 0 : 1;
      chain.num_writable = writable ? 1 : 0;
      chain.readable_bytes = writable ? 0 : first.len;
      chain.writable_bytes = writable ? first.len : 0;
      finish_pop(head, writable);
      return true;
    }
  }

  const VringDesc* table = desc_;
  std::uint32_t table_len = size_;
  std::uint32_t idx = head;
  std::uint32_t hops = 0;
  bool in_indirect = false;
  bool seen_writable = false;
  std::uint32_t count = 0;
  std::uint16_t num_readable = 0;
  std::uint64_t readable_bytes = 0, writable_bytes = 0;

  for (;;) {
    if (VHOSTD_UNLIKELY(++hops > table_len)) return fail(RingError::chain_loop);
    const VringDesc d = read_desc(&table[idx]);

    if (d.flags & kVringDescFIndirect) {
      if (VHOSTD_UNLIKELY(in_indirect)) return fail(RingError::indirect_nested);
      if (VHOSTD_UNLIKELY(d.flags & kVringDescFNext)) return fail(RingError::indirect_with_next);
      if (VHOSTD_UNLIKELY(d.len == 0 || d.len % sizeof(VringDesc) != 0 ||
                          d.len / sizeof(VringDesc) > kMaxQueueSize)) {
        return fail(RingError::indirect_bad_length);
      }
      const std::uint8_t* indirect = table_->translate_gpa(d.addr, d.len, desc_hint_);
      if (VHOSTD_UNLIKELY(indirect == nullptr)) return fail(RingError::descriptor_address);
      table = reinterpret_cast<const VringDesc*>(indirect);
      table_len = d.len / sizeof(VringDesc);
      idx = 0;
      hops = 0;
      in_indirect = true;
      continue;
    }

    const bool writable = (d.flags & write_mask_) != 0;
    if (VHOSTD_UNLIKELY(!writable && seen_writable)) return fail(RingError::readable_after_writable);
    seen_writable = writable;

    if (d.len != 0) {
      bool too_many = false;
      const bool mapped = table_->for_each_piece(
          d.addr, d.len, desc_hint_, [&](std::uint8_t* host, std::uint64_t gpa, std::uint64_t len) {
            if (count == kMaxChainSegments) {
              too_many = true;
              return;
            }
            chain.segments[count++] = ChainSegment{host, gpa, static_cast<std::uint32_t>(len)};
          });
      if (VHOSTD_UNLIKELY(!mapped)) return fail(RingError::descriptor_address);
      if (VHOSTD_UNLIKELY(too_many)) return fail(RingError::chain_too_long);
      (writable ? writable_bytes : readable_bytes) += d.len;
      if (!writable) num_readable = static_cast<std::uint16_t>(count);
      if (VHOSTD_UNLIKELY(readable_bytes > std::numeric_limits<std::uint32_t>::max() ||
                          writable_bytes > std::numeric_limits<std::uint32_t>::max())) {
        return fail(RingError::chain_too_long);
      }
    }

    if (!(d.flags & kVringDescFNext)) break;
    if (VHOSTD_UNLIKELY(d.next >= table_len)) return fail(RingError::next_out_of_range);
    idx = d.next;
  }

  chain.head = head;
  chain.num_readable = num_readable;
  chain.num_writable = static_cast<std::uint16_t>(count - num_readable);
  chain.readable_bytes = static_cast<std::uint32_t>(readable_bytes);
  chain.writable_bytes = static_cast<std::uint32_t>(writable_bytes);
  // seen_writable: the last descriptor's WRITE, so any descriptor's (readable never follows).
  finish_pop(head, seen_writable);
  return true;
}

void SplitQueue::finish_pop(std::uint16_t head, bool writable) noexcept {
  popped_[last_avail_idx_ & (size_ - 1)] = PopRecord{head, static_cast<std::uint16_t>(writable)};
  ++last_avail_idx_;
  stats_.add(stats_.requests, 1);
  if (event_idx_ && notifications_enabled_) {
    // Relaxed: a hint for the driver's kick decision; enable_notifications() fences before sleeping.
    std::atomic_ref<std::uint16_t>(used_u16(used_, avail_event_offset(size_)))
        .store(last_avail_idx_, std::memory_order_relaxed);
    log_used(avail_event_offset(size_), 2);
  }
}

void SplitQueue::push_used(std::uint16_t head, std::uint32_t len) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0)) return;
  if (VHOSTD_UNLIKELY(head >= size_)) {
    fail(RingError::used_id_out_of_range);
    return;
  }
  // At most size_ chains are outstanding; a full shadow means the device pushes more than it
  // popped, so publish what we have rather than drop or overflow.
  if (VHOSTD_UNLIKELY(shadow_count_ == size_)) flush_used();
  shadow_used_[shadow_count_++] = VringUsedElem{head, len};
}

void SplitQueue::log_used(std::uint64_t offset, std::uint64_t len) noexcept {
  if (VHOSTD_UNLIKELY((addresses_.flags & kVringFLog) && table_->logging())) {
    // Release: the used-ring bytes are written before their dirty bits can be seen set.
    std::atomic_thread_fence(std::memory_order_release);
    table_->mark_dirty(addresses_.log_guest_addr + offset, len);
  }
}

std::uint32_t SplitQueue::fold_in_order() noexcept {
  const std::uint32_t mask = size_ - 1;
  // Whether staged element k is the chain popped at the used index it takes (used_idx_ + k):
  // that index must have been popped (at most size_ before last_avail_idx_) and its record
  // name the same head.
  auto in_place = [&](std::uint32_t k) noexcept {
    const auto at = static_cast<std::uint16_t>(used_idx_ + k);
    const auto behind = static_cast<std::uint16_t>(last_avail_idx_ - at);
    return behind != 0 && behind <= size_ && popped_[at & mask].head == shadow_used_[k].id;
  };
  std::uint32_t out = 0;
  for (std::uint32_t i = 0; i < shadow_count_;) {
    std::uint32_t last = i;
    if (in_place(i)) {
      // Extend while the current element may be skipped (read-only chain, nothing written)
      // and the next one is the next chain popped.
      while (last + 1 < shadow_count_ && shadow_used_[last].len == 0 &&
             popped_[(used_idx_ + last) & mask].writable == 0 && in_place(last + 1)) {
        ++last;
      }
    }
    // out <= i <= last: the in-place copy never overwrites an element still to be read.
    shadow_used_[out] = shadow_used_[last];
    shadow_offset_[out] = static_cast<std::uint16_t>(i);
    ++out;
    i = last + 1;
  }
  return out;
}

void SplitQueue::flush_used() noexcept {
  if (shadow_count_ == 0 || error_ != RingError::none || used_ == nullptr) return;
  auto* ring = reinterpret_cast<VringUsedElem*>(used_ + kUsedRingOffset);
  const std::uint32_t start = used_idx_ & (size_ - 1);
  const auto new_used_idx = static_cast<std::uint16_t>(used_idx_ + shadow_count_);

  if (in_order_) {
    // One entry per folded run, at the run's first used index; the entries between are not
    // written (the driver takes them as used, in order, from the advanced used idx).
    const std::uint32_t entries = fold_in_order();
    for (std::uint32_t e = 0; e < entries; ++e) {
      ring[(start + shadow_offset_[e]) & (size_ - 1)] = shadow_used_[e];
    }
    // Release: the used entries above are visible before the driver can see the new used idx.
    std::atomic_ref<std::uint16_t>(used_u16(used_, kUsedIdxOffset)).store(new_used_idx, std::memory_order_release);
    for (std::uint32_t e = 0; e < entries; ++e) {
      log_used(kUsedRingOffset + ((start + shadow_offset_[e]) & (size_ - 1)) * sizeof(VringUsedElem),
               sizeof(VringUsedElem));
    }
    log_used(kUsedIdxOffset, 2);
    used_idx_ = new_used_idx;
    shadow_count_ = 0;
    return;
  }

  const std::uint32_t first = std::min(shadow_count_, size_ - start);
  const std::uint32_t rest = shadow_count_ - first;
  std::memcpy(ring + start, shadow_used_.data(), first * sizeof(VringUsedElem));
  if (rest != 0) std::memcpy(ring, shadow_used_.data() + first, rest * sizeof(VringUsedElem));

  // Release: the used elements above are visible before the driver can see the new used idx.
  std::atomic_ref<std::uint16_t>(used_u16(used_, kUsedIdxOffset)).store(new_used_idx, std::memory_order_release);

  log_used(kUsedRingOffset + start * sizeof(VringUsedElem), first * sizeof(VringUsedElem));
  if (rest != 0) log_used(kUsedRingOffset, rest * sizeof(VringUsedElem));
  log_used(kUsedIdxOffset, 2);

  used_idx_ = new_used_idx;
  shadow_count_ = 0;
}

bool SplitQueue::notify() noexcept {
  if (!call_pending()) return false;
  if (VHOSTD_UNLIKELY(held_call_.hold(this, &make_held_call, static_cast<std::uint16_t>(used_idx_ - signalled_used_)))) return false;
  return decide_call();
}

void SplitQueue::make_held_call(void* queue) noexcept {
  auto& self = *static_cast<SplitQueue*>(queue);
  self.held_call_.released();
  // The ring may have gone into error, or had its call decided (max_buffers), since it was held.
  if (self.call_pending()) self.decide_call();
}

bool SplitQueue::decide_call() noexcept {
  // Full fence: our used idx store is visible before we read flags/used_event; pairs with the
  // driver's fence between reading used idx and writing used_event (else both miss an update).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool due;
  if (event_idx_) {
    // Relaxed: ordered by the fence above; read once.
    const std::uint16_t used_event =
        std::atomic_ref<std::uint16_t>(avail_[used_event_offset_u16(size_)]).load(std::memory_order_relaxed);
    due = !signalled_used_valid_ || vring_need_event(used_event, used_idx_, signalled_used_);
  } else {
    // Relaxed: ordered by the fence above.
    const std::uint16_t flags = std::atomic_ref<std::uint16_t>(avail_[0]).load(std::memory_order_relaxed);
    due = (flags & kVringAvailFNoInterrupt) == 0;
  }
  signalled_used_ = used_idx_;
  signalled_used_valid_ = true;
  if (!due) return false;
  if (call_fd_ >= 0) eventfd_signal(call_fd_);
  stats_.add(stats_.notifications, 1);
  return true;
}

void SplitQueue::disable_notifications() noexcept {
  if (!notifications_enabled_) return;
  notifications_enabled_ = false;
  // With EVENT_IDX we simply stop advancing avail_event: the driver kicks at most once more.
  if (event_idx_ || used_ == nullptr || error_ != RingError::none) return;
  std::atomic_ref<std::uint16_t> flags(used_u16(used_, 0));
  // Relaxed: a hint; the driver tolerates seeing it late (one spurious kick).
  flags.store(flags.load(std::memory_order_relaxed) | kVringUsedFNoNotify, std::memory_order_relaxed);
  log_used(0, 2);
}

bool SplitQueue::enable_notifications() noexcept {
  notifications_enabled_ = true;
  if (used_ == nullptr || error_ != RingError::none) return false;
  if (event_idx_) {
    // Relaxed: made visible before the avail idx re-read by the fence below.
    std::atomic_ref<std::uint16_t>(used_u16(used_, avail_event_offset(size_)))
        .store(last_avail_idx_, std::memory_order_relaxed);
    log_used(avail_event_offset(size_), 2);
  } else {
    std::atomic_ref<std::uint16_t> flags(used_u16(used_, 0));
    // Relaxed: made visible before the avail idx re-read by the fence below.
    flags.store(flags.load(std::memory_order_relaxed) & ~kVringUsedFNoNotify, std::memory_order_relaxed);
    log_used(0, 2);
  }
  // Full fence: our flags/avail_event store is visible before we re-read avail idx; pairs with
  // the driver's fence between its avail idx store and its read of flags/avail_event, so
  // either it kicks or we see its new entries here.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Acquire: like poll(), entries behind this idx are visible (the caller polls next anyway).
  const std::uint16_t avail_idx = std::atomic_ref<std::uint16_t>(avail_[1]).load(std::memory_order_acquire);
  return avail_idx != last_avail_idx_;
}

}  // namespace vhostd
