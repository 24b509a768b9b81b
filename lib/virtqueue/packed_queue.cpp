// vhostd virtqueue: the device side of a packed virtqueue (virtio 1.2 §2.8).
//
// Policies worth knowing (the spec leaves them to the device, or the guest may break them):
//   - Every descriptor of a chain must be marked available for its own lap (the spec asks the
//     driver to set AVAIL/USED in all of them, and Linux and DPDK do); a chain running into one
//     that is not is next_out_of_range: the chain continues where the driver put nothing.
//   - A chain of more than size descriptors is chain_loop; more slots outstanding than the ring
//     has (the driver re-made available slots the device has not used yet) is avail_idx_jump.
//   - The buffer id is the last descriptor's (§2.8.6); ids of the others are ignored. An id not
//     below the size is head_out_of_range; an id made available again while its chain is still
//     outstanding, or a used id that is not outstanding, is used_id_out_of_range.
//   - INDIRECT only on a lone descriptor: with NEXT, or after a NEXT, it is indirect_with_next
//     (§2.8.7 forbids indirect descriptors in a NEXT list). Inside the table only WRITE counts;
//     NEXT, AVAIL, USED and ids are ignored as the spec says (DPDK's driver sets them there),
//     but INDIRECT is indirect_nested. The whole table (len / 16 entries) is the buffer.
//   - A zero-length descriptor is accepted and yields no segment; its address is not checked.
//   - A buffer crossing from one mapped region into an adjacent one becomes two segments; an
//     indirect table must lie inside one region.
//   - A used descriptor gets WRITE when len != 0 (§2.8.3: "whether any data has been written").
//   - With LOG, used descriptors and device area writes are logged at their own guest-physical
//     addresses (translated from the ring addresses), not relative to log_guest_addr: for
//     packed rings QEMU passes the device area there, while used elements live in the
//     descriptor ring.
//   - IN_ORDER batching only joins chains the device could not write (no WRITE descriptor,
//     used len 0) to the chain after them: DPDK's virtio PMD reads every used descriptor on
//     its RX paths and would stall on a skipped slot, while its TX cleanup walks a batch; a
//     read-only chain is "used completely" by definition. A run grows only while each chain
//     starts where the previous one ends (the device used them in pop order); otherwise one
//     used descriptor per element, as without IN_ORDER.
#include "vhostd/virtqueue/packed_queue.hpp"

#include <algorithm>
#include <atomic>
#include <limits>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd {
namespace {

// Copies a descriptor out of guest memory with each field read exactly once: the guest may
// rewrite the ring or a table at any time, so every check and use works on this local copy.
PackedDesc read_desc(const PackedDesc* src) noexcept {
  const volatile PackedDesc* v = src;
  PackedDesc d;
  d.addr = v->addr;
  d.len = v->len;
  d.id = v->id;
  d.flags = v->flags;
  return d;
}

// Same, for a ring descriptor whose flags the caller already loaded (atomically, once).
PackedDesc read_desc(const PackedDesc* src, std::uint16_t flags) noexcept {
  const volatile PackedDesc* v = src;
  PackedDesc d;
  d.addr = v->addr;
  d.len = v->len;
  d.id = v->id;
  d.flags = flags;
  return d;
}

std::atomic_ref<std::uint16_t> flags_of(PackedDesc& desc) noexcept { return std::atomic_ref<std::uint16_t>(desc.flags); }

// `chain` as one buffer, the whole chain: what pop() and pop_batch() give for a single descriptor.
void set_single_buffer(DescriptorChain& chain, const ChainSegment& buffer, std::uint16_t id, bool writable) noexcept {
  chain.segments[0] = buffer;
  chain.head = id;
  chain.num_readable = writable ? 0 : 1;
  chain.num_writable = writable ? 1 : 0;
  chain.readable_bytes = writable ? 0 : buffer.len;
  chain.writable_bytes = writable ? buffer.len : 0;
}

bool aligned(const void* p, std::uintptr_t alignment) noexcept {
  return (reinterpret_cast<std::uintptr_t>(p) & (alignment - 1)) == 0;
}

// Fills a base's used half from its avail half when the frontend sent only the latter.
std::uint32_t complete_base(std::uint32_t base) noexcept {
  return (base >> 16) != 0 ? base : (base & 0xffffu) | ((base & 0xffffu) << 16);
}

}  // namespace

// ---- control path ----

bool PackedQueue::base_fits(std::uint32_t base, std::uint32_t size) noexcept {
  const std::uint32_t avail_idx = base & kPackedIdxMask;
  const std::uint32_t used_idx = (base >> 16) & kPackedIdxMask;
  if (avail_idx >= size || used_idx >= size) return false;
  const std::uint32_t avail = avail_idx + ((base & kPackedWrapBit) ? 0u : size);
  const std::uint32_t used = used_idx + (((base >> 16) & kPackedWrapBit) ? 0u : size);
  const std::uint32_t outstanding = avail >= used ? avail - used : avail + 2 * size - used;
  return outstanding <= size;
}

void PackedQueue::apply_base() noexcept {
  avail_pos_ = position(static_cast<std::uint16_t>(base_));
  used_pos_ = position(static_cast<std::uint16_t>(base_ >> 16));
  avail_counted_ = 0;
  used_slots_ = 0;
  signalled_slots_ = 0;
  signalled_valid_ = false;
  std::fill(chain_slots_.begin(), chain_slots_.end(), std::uint16_t{0});
  pop_head_ = 0;
  rewindable_ = 0;
  shadow_count_ = 0;
  shadow_slots_ = 0;
}

void PackedQueue::set_size(std::uint32_t size) {
  if (size == 0 || size > kMaxQueueSize) {
    throw_error("packed virtqueue size ", size, " is not in [1, ", kMaxQueueSize, "]");
  }
  chain_slots_.assign(size, 0);
  chain_start_.assign(size, 0);
  chain_writable_.assign(size, 0);
  pop_history_.assign(size, 0);
  shadow_used_.assign(size, UsedElem{});
  size_ = size;
  if (!base_fits(base_, size)) base_ = kPackedInitialBase;
  apply_base();
  table_ = nullptr;  // the ring's byte size changed: re-translate on the next poll
}

void PackedQueue::set_addresses(const VringAddresses& addresses) noexcept {
  addresses_ = addresses;
  table_ = nullptr;
}

void PackedQueue::set_vring_base(std::uint32_t base) {
  const std::uint32_t full = complete_base(base);
  if (size_ != 0 && !base_fits(full, size_)) {
    throw_error("packed vring base 0x", std::hex, base, std::dec, " (avail ", full & kPackedIdxMask, " wrap ",
                (full >> 15) & 1, ", used ", (full >> 16) & kPackedIdxMask, " wrap ", full >> 31,
                ") does not fit a ring of ", size_);
  }
  base_ = full;
  if (size_ != 0) apply_base();
}

std::uint32_t PackedQueue::vring_base() const noexcept {
  if (size_ == 0) return base_;
  return std::uint32_t{encode(avail_pos_)} | (std::uint32_t{encode(used_pos_)} << 16);
}

void PackedQueue::check_addresses(const MemoryTable& table) const {
  if (size_ == 0) throw_error("packed virtqueue addresses checked before its size was set");
  const RingArea areas[] = {
      {"descriptor ring", addresses_.desc_user_addr, packed_desc_ring_bytes(size_), 16},
      {"driver event area", addresses_.avail_user_addr, kPackedEventAreaBytes, 4},
      {"device event area", addresses_.used_user_addr, kPackedEventAreaBytes, 4},
  };
  check_ring_areas(table, "packed virtqueue", areas);
}

void PackedQueue::reset() noexcept {
  size_ = 0;
  addresses_ = {};
  event_idx_ = false;
  in_order_ = false;
  write_mask_ = kVringDescFWrite;
  call_fd_ = -1;
  // A held call stays listed (a reset ring is off every data lcore, whose lists were flushed
  // first: see call_coalescing.hpp); only the setting goes.
  held_call_.configure({});
  base_ = kPackedInitialBase;
  table_ = nullptr;
  desc_ = nullptr;
  driver_event_ = nullptr;
  device_event_ = nullptr;
  desc_gpa_ = 0;
  device_event_gpa_ = 0;
  desc_hint_ = 0;
  avail_counted_ = 0;
  avail_pos_ = 0;
  used_pos_ = 0;
  used_slots_ = 0;
  signalled_slots_ = 0;
  signalled_valid_ = false;
  notifications_enabled_ = true;
  chain_slots_.clear();
  chain_start_.clear();
  chain_writable_.clear();
  pop_history_.clear();
  pop_head_ = 0;
  rewindable_ = 0;
  shadow_used_.clear();
  shadow_count_ = 0;
  shadow_slots_ = 0;
  error_ = RingError::none;
}

// ---- data path ----

bool PackedQueue::fail(RingError error) noexcept {
  error_ = error;
  stats_.add(stats_.errors[static_cast<std::size_t>(error)], 1);
  return false;
}

void PackedQueue::log_write(std::uint64_t gpa, std::uint64_t len) noexcept {
  if (VHOSTD_UNLIKELY((addresses_.flags & kVringFLog) && table_->logging())) {
    // Release: the ring bytes are written before their dirty bits can be seen set.
    std::atomic_thread_fence(std::memory_order_release);
    table_->mark_dirty(gpa, len);
  }
}

bool PackedQueue::refresh_table() noexcept {
  const MemoryTable* table = memory_->current();
  // Compare generations, not pointers: a new table may be allocated at a freed one's address.
  if (VHOSTD_LIKELY(table_ != nullptr && table->generation() == table_generation_)) return true;
  table_ = nullptr;
  std::uint8_t* desc = table->translate_uva(addresses_.desc_user_addr, packed_desc_ring_bytes(size_));
  std::uint8_t* driver = table->translate_uva(addresses_.avail_user_addr, kPackedEventAreaBytes);
  std::uint8_t* device = table->translate_uva(addresses_.used_user_addr, kPackedEventAreaBytes);
  std::uint64_t desc_gpa = 0, device_gpa = 0;
  if (desc == nullptr || driver == nullptr || device == nullptr || !aligned(desc, 16) || !aligned(driver, 4) ||
      !aligned(device, 4) || !table->uva_to_gpa(addresses_.desc_user_addr, desc_gpa) ||
      !table->uva_to_gpa(addresses_.used_user_addr, device_gpa)) {
    return fail(RingError::ring_address);
  }
  table_ = table;
  table_generation_ = table->generation();
  desc_ = reinterpret_cast<PackedDesc*>(desc);
  driver_event_ = reinterpret_cast<PackedEventSuppress*>(driver);
  device_event_ = reinterpret_cast<PackedEventSuppress*>(device);
  desc_gpa_ = desc_gpa;
  device_event_gpa_ = device_gpa;
  desc_hint_ = 0;
  // disable_notifications() may have run before the ring areas were translated: apply it now.
  if (!notifications_enabled_) write_device_flags(kRingEventFlagsDisable);
  return true;
}

std::uint16_t PackedQueue::poll() noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0 || memory_ == nullptr)) return 0;
  if (VHOSTD_UNLIKELY(!refresh_table())) return 0;
  // Count chain ends among the available descriptors ahead. Each flags load is acquire for the
  // same reason as in pop(); pop() checks again and never relies on this count. The walk keeps
  // its own slot and the AVAIL/USED bits an available descriptor has in that slot's lap.
  const std::uint32_t size = size_;
  const std::uint32_t window = std::min(kPollWindow, size);
  std::uint32_t slot = slot_of(avail_pos_);
  auto avail = packed_avail_flags(wrap_of(avail_pos_));
  std::uint32_t seen = 0, chains = 0;
  for (; seen < window; ++seen) {
    const std::uint16_t flags = flags_of(desc_[slot]).load(std::memory_order_acquire);
    if ((flags & (kPackedDescFAvail | kPackedDescFUsed)) != avail) break;
    chains += (flags & kVringDescFNext) == 0 ? 1 : 0;
    if (++slot == size) {
      slot = 0;
      avail ^= kPackedDescFAvail | kPackedDescFUsed;  // the next lap
    }
  }
  // A chain longer than the window (or a broken one, for pop() to judge) still counts as work.
  if (seen != 0 && chains == 0) chains = 1;
  stats_.add(chains == 0 ? stats_.empty_polls : stats_.batches, 1);
  avail_counted_ = chains;
  return static_cast<std::uint16_t>(chains);
}

std::uint16_t PackedQueue::poll_cached() noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0 || memory_ == nullptr)) return 0;
  if (VHOSTD_UNLIKELY(!refresh_table())) return 0;
  return static_cast<std::uint16_t>(avail_counted_);
}

void PackedQueue::prefetch_buffers(std::uint16_t n, std::uint32_t read_bytes, std::uint32_t write_bytes) const noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || table_ == nullptr)) return;
  const std::uint32_t size = size_;
  const std::uint32_t count = std::min<std::uint32_t>(n, size);
  std::uint32_t slot = slot_of(avail_pos_);
  auto avail = packed_avail_flags(wrap_of(avail_pos_));
  std::uint32_t hint = desc_hint_;
  for (std::uint32_t i = 0; i < count; ++i) {
    PackedDesc& desc = desc_[slot];
    // Acquire, as in pop(): the fields read below were written before these flags.
    const std::uint16_t flags = flags_of(desc).load(std::memory_order_acquire);
    if ((flags & (kPackedDescFAvail | kPackedDescFUsed | kVringDescFNext | kVringDescFIndirect)) != avail) return;
    const PackedDesc d = read_desc(&desc, flags);
    if (!prefetch_descriptor_buffer(*table_, d.addr, d.len, read_bytes, write_bytes, hint)) return;
    if (++slot == size) {
      slot = 0;
      avail ^= kPackedDescFAvail | kPackedDescFUsed;
    }
  }
}

// Inline: once per chain popped.
inline void PackedQueue::record_outstanding(std::uint16_t id, std::uint32_t slots, std::uint32_t start, bool writable) noexcept {
  chain_slots_[id] = static_cast<std::uint16_t>(slots);
  chain_start_[id] = static_cast<std::uint16_t>(start);
  chain_writable_[id] = writable ? 1 : 0;
  pop_history_[pop_head_] = id;
  pop_head_ = pop_head_ + 1 == size_ ? 0 : pop_head_ + 1;
}

inline void PackedQueue::take_chain(std::uint16_t id, std::uint32_t slots, bool writable) noexcept {
  record_outstanding(id, slots, avail_pos_, writable);
  if (rewindable_ < size_) ++rewindable_;
  avail_pos_ = advance(avail_pos_, slots);
  if (avail_counted_ != 0) --avail_counted_;
}

inline void PackedQueue::chains_taken(std::uint32_t n) noexcept {
  stats_.add(stats_.requests, n);
  if (event_idx_ && notifications_enabled_) publish_avail_event();
}

static_assert(PackedQueue::kLineBatch == 4, "read_line() compares the ids of four descriptors");

bool PackedQueue::read_line(LineBatch& batch, std::uint16_t write_flag, std::uint32_t ahead) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || table_ == nullptr)) return false;
  const std::uint32_t size = size_;
  if (in_flight() + ahead + kLineBatch > size) return false;
  const std::uint32_t pos = advance(avail_pos_, ahead);
  const std::uint32_t slot = slot_of(pos);
  if ((slot & (kLineBatch - 1)) != 0 || slot + kLineBatch > size) return false;
  PackedDesc* line = desc_ + slot;
  // Under `mask` every descriptor's flags must read `want`: AVAIL/USED as the driver sets them
  // to make a descriptor available in this lap, no NEXT, no INDIRECT, WRITE as asked.
  const auto mask = static_cast<std::uint16_t>(kPackedDescFAvail | kPackedDescFUsed | kVringDescFNext |
                                               kVringDescFIndirect | write_mask_);
  const auto want = static_cast<std::uint16_t>(packed_avail_flags(wrap_of(pos)) | (write_flag & write_mask_));
  std::array<std::uint16_t, kLineBatch> flags;
  std::uint16_t mismatch = 0;
#pragma GCC unroll 4
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    // Acquire, as in pop(): each descriptor's fields were written before its flags.
    flags[k] = flags_of(line[k]).load(std::memory_order_acquire);
    mismatch |= static_cast<std::uint16_t>((flags[k] & mask) ^ want);
  }
  if (mismatch != 0) return false;
  // The rest of each descriptor, read once (the driver may rewrite the line at any time).
  std::array<PackedDesc, kLineBatch> d;
  bool bad = false;
#pragma GCC unroll 4
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    d[k] = read_desc(&line[k], flags[k]);
    bad |= d[k].len == 0 || d[k].id >= size;
  }
  if (bad) return false;
  // Ids not outstanding (a descriptor made available twice) and distinct within the line.
  const std::uint16_t* outstanding = chain_slots_.data();
  if ((outstanding[d[0].id] | outstanding[d[1].id] | outstanding[d[2].id] | outstanding[d[3].id]) != 0 ||
      d[0].id == d[1].id || d[0].id == d[2].id || d[0].id == d[3].id || d[1].id == d[2].id ||
      d[1].id == d[3].id || d[2].id == d[3].id) {
    return false;
  }
  std::uint32_t hint = desc_hint_;
#pragma GCC unroll 4
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    std::uint8_t* host = table_->translate_gpa(d[k].addr, d[k].len, hint);
    if (host == nullptr) return false;
    batch.buffers[k] = ChainSegment{host, d[k].addr, d[k].len};
    batch.ids[k] = d[k].id;
  }
  desc_hint_ = hint;
  batch.pos = pos;
  return true;
}

bool PackedQueue::peek_fill_batch(LineBatch& batch, bool next_line) noexcept {
  // A readable-only ring has no buffer the device may write.
  return write_mask_ != 0 && read_line(batch, kVringDescFWrite, next_line ? kLineBatch : 0);
}

bool PackedQueue::peek_batch(LineBatch& batch, bool next_line) noexcept {
  return read_line(batch, 0, next_line ? kLineBatch : 0);
}

bool PackedQueue::take_batch(const LineBatch& batch) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || batch.pos != avail_pos_)) return false;
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    record_outstanding(batch.ids[k], 1, batch.pos + k, false);  // the line lies in one lap
  }
  // take_chain()'s position updates, once for the line.
  rewindable_ = std::min(rewindable_ + kLineBatch, size_);
  avail_pos_ = advance(avail_pos_, kLineBatch);
  avail_counted_ = avail_counted_ > kLineBatch ? avail_counted_ - kLineBatch : 0;
  chains_taken(kLineBatch);
  return true;
}

bool PackedQueue::pop_batch(DescriptorChain* chains) noexcept {
  LineBatch line;
  if (!peek_batch(line) || !take_batch(line)) return false;
  for (std::uint32_t k = 0; k < kLineBatch; ++k) set_single_buffer(chains[k], line.buffers[k], line.ids[k], false);
  return true;
}

void PackedQueue::commit_fill_batch(const LineBatch& batch,
                                    const std::array<std::uint32_t, kLineBatch>& written) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || desc_ == nullptr || batch.pos != avail_pos_)) return;
  flush_used();  // what was used before the batch is published before it
  // The next used slots: the batch's own line when nothing else is outstanding (the usual
  // case), else earlier slots the device already read (used descriptors go in completion order).
  // Written here rather than staged for flush_used(): staging the four and flushing them
  // measured a little slower on the two-port forward (perf/README.md).
  const std::uint32_t first = used_pos_;
  std::array<PackedDesc*, kLineBatch> at;
  std::array<std::uint16_t, kLineBatch> used_flags;
  if (VHOSTD_LIKELY(first == batch.pos)) {
    // Nothing else outstanding: the line just read, which lies in one lap (read_line()).
    PackedDesc* line = desc_ + slot_of(first);
    const std::uint16_t used = packed_used_flags(wrap_of(first));
    for (std::uint32_t k = 0; k < kLineBatch; ++k) {
      at[k] = line + k;
      used_flags[k] = used;
    }
  } else {
    for (std::uint32_t k = 0, pos = first; k < kLineBatch; ++k, pos = advance(pos, 1)) {
      at[k] = desc_ + slot_of(pos);
      used_flags[k] = packed_used_flags(wrap_of(pos));
    }
  }
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    at[k]->id = batch.ids[k];
    at[k]->len = written[k];
  }
  // Release: every id and len above is visible before any of the flags below; the driver reads
  // a descriptor's fields only after seeing its flags say used.
  std::atomic_thread_fence(std::memory_order_release);
  for (std::uint32_t k = 0; k < kLineBatch; ++k) {
    // Relaxed: ordered after the ids and lengths by the fence above.
    flags_of(*at[k]).store(static_cast<std::uint16_t>(used_flags[k] | (written[k] != 0 ? kVringDescFWrite : 0)),
                           std::memory_order_relaxed);
  }
  if (VHOSTD_UNLIKELY(logging_used())) {
    for (std::uint32_t k = 0, at = first; k < kLineBatch; ++k, at = advance(at, 1)) log_used_desc(at);
  }
  used_pos_ = advance(first, kLineBatch);
  used_slots_ += kLineBatch;
  avail_pos_ = advance(avail_pos_, kLineBatch);
  avail_counted_ = avail_counted_ > kLineBatch ? avail_counted_ - kLineBatch : 0;
  rewindable_ = 0;  // a chain popped before a published batch can no longer be given back
  stats_.add(stats_.requests, kLineBatch);
  if (event_idx_ && notifications_enabled_) publish_avail_event();
}

bool PackedQueue::pop(DescriptorChain& chain) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || table_ == nullptr)) return false;

  std::uint32_t pos = avail_pos_;
  PackedDesc& head_slot = desc_[slot_of(pos)];
  // Acquire: pairs with the driver's release of the head's flags, written after every other
  // field of the chain; the reads below see them.
  const std::uint16_t head_flags = flags_of(head_slot).load(std::memory_order_acquire);
  if (!packed_desc_available(head_flags, wrap_of(pos))) return false;
  PackedDesc d = read_desc(&head_slot, head_flags);

  // Fast path: a single direct descriptor inside one region (every net packet and RX buffer of
  // Linux and DPDK guests). Anything else, or a miss, takes the general walk below on the same
  // local copy.
  if (VHOSTD_LIKELY((head_flags & (kVringDescFNext | kVringDescFIndirect)) == 0 && d.len != 0 &&
                    d.id < size_ && chain_slots_[d.id] == 0 && in_flight() < size_)) {
    std::uint8_t* host = table_->translate_gpa(d.addr, d.len, desc_hint_);
    if (VHOSTD_LIKELY(host != nullptr)) {
      const bool writable = (head_flags & write_mask_) != 0;
      set_single_buffer(chain, ChainSegment{host, d.addr, d.len}, d.id, writable);
      take_chain(d.id, 1, writable);
      chains_taken(1);
      return true;
    }
  }

  bool seen_writable = false;
  std::uint32_t count = 0;  // segments
  std::uint16_t num_readable = 0;
  std::uint64_t readable_bytes = 0, writable_bytes = 0;
  bool too_many = false;
  // Appends one buffer's pieces; false (with the error set) if it is hostile.
  auto add_buffer = [&](std::uint64_t addr, std::uint32_t len, bool writable) noexcept -> bool {
    if (VHOSTD_UNLIKELY(!writable && seen_writable)) return fail(RingError::readable_after_writable);
    seen_writable = writable;
    if (len == 0) return true;
    const bool mapped = table_->for_each_piece(
        addr, len, desc_hint_, [&](std::uint8_t* host, std::uint64_t gpa, std::uint64_t piece) {
          if (count == kMaxChainSegments) {
            too_many = true;
            return;
          }
          chain.segments[count++] = ChainSegment{host, gpa, static_cast<std::uint32_t>(piece)};
        });
    if (VHOSTD_UNLIKELY(!mapped)) return fail(RingError::descriptor_address);
    if (VHOSTD_UNLIKELY(too_many)) return fail(RingError::chain_too_long);
    (writable ? writable_bytes : readable_bytes) += len;
    if (!writable) num_readable = static_cast<std::uint16_t>(count);
    if (VHOSTD_UNLIKELY(readable_bytes > std::numeric_limits<std::uint32_t>::max() ||
                        writable_bytes > std::numeric_limits<std::uint32_t>::max())) {
      return fail(RingError::chain_too_long);
    }
    return true;
  };

  std::uint32_t slots = 0;
  for (;;) {
    ++slots;
    if (d.flags & kVringDescFIndirect) {
      if (VHOSTD_UNLIKELY((d.flags & kVringDescFNext) || slots != 1)) return fail(RingError::indirect_with_next);
      if (VHOSTD_UNLIKELY(d.len == 0 || d.len % sizeof(PackedDesc) != 0 ||
                          d.len / sizeof(PackedDesc) > kMaxQueueSize)) {
        return fail(RingError::indirect_bad_length);
      }
      const auto* table = reinterpret_cast<const PackedDesc*>(table_->translate_gpa(d.addr, d.len, desc_hint_));
      if (VHOSTD_UNLIKELY(table == nullptr)) return fail(RingError::descriptor_address);
      const std::uint32_t entries = d.len / sizeof(PackedDesc);
      for (std::uint32_t i = 0; i < entries; ++i) {
        const PackedDesc e = read_desc(&table[i]);
        if (VHOSTD_UNLIKELY(e.flags & kVringDescFIndirect)) return fail(RingError::indirect_nested);
        if (!add_buffer(e.addr, e.len, (e.flags & write_mask_) != 0)) return false;
      }
      break;  // d.id is the chain's id: the INDIRECT descriptor is its last (only) one
    }
    if (!add_buffer(d.addr, d.len, (d.flags & write_mask_) != 0)) return false;
    if ((d.flags & kVringDescFNext) == 0) break;
    if (VHOSTD_UNLIKELY(slots == size_)) return fail(RingError::chain_loop);
    pos = advance(pos, 1);
    PackedDesc& next = desc_[slot_of(pos)];
    // Relaxed: ordered after the head's acquire load; the driver wrote these flags before it.
    const std::uint16_t flags = flags_of(next).load(std::memory_order_relaxed);
    if (VHOSTD_UNLIKELY(!packed_desc_available(flags, wrap_of(pos)))) return fail(RingError::next_out_of_range);
    d = read_desc(&next, flags);
  }

  if (VHOSTD_UNLIKELY(in_flight() + slots > size_)) return fail(RingError::avail_idx_jump);
  if (VHOSTD_UNLIKELY(d.id >= size_)) return fail(RingError::head_out_of_range);
  if (VHOSTD_UNLIKELY(chain_slots_[d.id] != 0)) return fail(RingError::used_id_out_of_range);

  chain.head = d.id;
  chain.num_readable = num_readable;
  chain.num_writable = static_cast<std::uint16_t>(count - num_readable);
  chain.readable_bytes = static_cast<std::uint32_t>(readable_bytes);
  chain.writable_bytes = static_cast<std::uint32_t>(writable_bytes);
  // seen_writable: the last buffer's WRITE, so any buffer's (readable never follows).
  take_chain(d.id, slots, seen_writable);
  chains_taken(1);
  return true;
}


void PackedQueue::publish_avail_event() noexcept {
  // Relaxed: a hint for the driver's kick decision; enable_notifications() fences before
  // sleeping, and while DESC is set the flags need no rewrite.
  std::atomic_ref<std::uint16_t>(device_event_->off_wrap).store(encode(avail_pos_), std::memory_order_relaxed);
  log_write(device_event_gpa_, 2);
}

void PackedQueue::rewind(std::uint16_t n) noexcept {
  std::uint32_t undone = 0;
  while (undone < n && rewindable_ != 0) {
    const std::uint32_t prev = pop_head_ == 0 ? size_ - 1 : pop_head_ - 1;
    const std::uint16_t id = pop_history_[prev];
    const std::uint16_t slots = chain_slots_[id];
    if (slots == 0) break;  // already pushed: not ours to give back
    chain_slots_[id] = 0;
    avail_pos_ = retreat(avail_pos_, slots);
    pop_head_ = prev;
    --rewindable_;
    ++undone;
  }
  avail_counted_ += undone;
  stats_.requests.store(stats_.requests.load(std::memory_order_relaxed) - undone, std::memory_order_relaxed);
  if (undone != 0 && event_idx_ && notifications_enabled_ && device_event_ != nullptr) publish_avail_event();
}

void PackedQueue::flush_used() noexcept {
  if (shadow_count_ == 0 || error_ != RingError::none || desc_ == nullptr) return;
  // With IN_ORDER each element may be a run of chains (push_used()): its used descriptor skips
  // the slots of the whole run.
  const std::uint32_t first_pos = used_pos_;
  std::uint32_t pos = first_pos;
  std::uint16_t first_flags = 0;
  for (std::uint32_t i = 0; i < shadow_count_; ++i) {
    const UsedElem& e = shadow_used_[i];
    PackedDesc& d = desc_[slot_of(pos)];
    // The slot is one the device already read (it lies before avail_pos_): the driver does not
    // look at it until its flags say used.
    d.id = e.id;
    d.len = e.len;
    const auto flags = static_cast<std::uint16_t>(packed_used_flags(wrap_of(pos)) | (e.len != 0 ? kVringDescFWrite : 0));
    if (i == 0) {
      first_flags = flags;
    } else {
      // Relaxed: the driver reads element i only after element 0, whose release store below
      // orders this one before it.
      flags_of(d).store(flags, std::memory_order_relaxed);
    }
    pos = advance(pos, e.slots);
  }
  // Release: every id/len above and the flags of the later elements are visible before the
  // first element's flags, the only slot the driver polls; it sees the whole batch or none.
  flags_of(desc_[slot_of(first_pos)]).store(first_flags, std::memory_order_release);

  if (VHOSTD_UNLIKELY(logging_used())) {
    std::uint32_t at = first_pos;
    for (std::uint32_t i = 0; i < shadow_count_; ++i) {
      log_used_desc(at);
      at = advance(at, shadow_used_[i].slots);
    }
  }
  used_pos_ = pos;
  used_slots_ += shadow_slots_;
  shadow_count_ = 0;
  shadow_slots_ = 0;
}

bool PackedQueue::notify() noexcept {
  if (!call_pending()) return false;
  if (VHOSTD_UNLIKELY(held_call_.hold(this, &make_held_call, used_slots_ - signalled_slots_))) return false;
  return decide_call();
}

void PackedQueue::make_held_call(void* queue) noexcept {
  auto& self = *static_cast<PackedQueue*>(queue);
  self.held_call_.released();
  // The ring may have gone into error, or had its call decided (max_buffers), since it was held.
  if (self.call_pending()) self.decide_call();
}

bool PackedQueue::decide_call() noexcept {
  // Full fence: our used flags stores are visible before we read the driver area; pairs with
  // the driver's fence between re-enabling events there and re-checking its next used
  // descriptor (else both miss an update).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Acquire: the driver writes off_wrap before it switches flags to DESC, so the off_wrap read
  // after a DESC value is at least that recent.
  const std::uint16_t flags = static_cast<std::uint16_t>(
      std::atomic_ref<std::uint16_t>(driver_event_->flags).load(std::memory_order_acquire) & kRingEventFlagsMask);
  bool due;
  if (flags == kRingEventFlagsDisable) {
    due = false;
  } else if (flags == kRingEventFlagsDesc && event_idx_) {
    // Relaxed: ordered by the acquire above; read once.
    const std::uint16_t off_wrap =
        std::atomic_ref<std::uint16_t>(driver_event_->off_wrap).load(std::memory_order_relaxed);
    // The first call after (re)starting cannot know what was signalled before: always due.
    due = !signalled_valid_ || packed_need_event(off_wrap, static_cast<std::uint16_t>(slot_of(used_pos_)),
                                                 wrap_of(used_pos_), used_slots_ - signalled_slots_, size_);
  } else {
    due = true;  // ENABLE, the reserved value, or DESC without EVENT_IDX
  }
  signalled_slots_ = used_slots_;
  signalled_valid_ = true;
  if (!due) return false;
  if (call_fd_ >= 0) eventfd_signal(call_fd_);
  stats_.add(stats_.notifications, 1);
  return true;
}

void PackedQueue::write_device_flags(std::uint16_t flags) noexcept {
  // Relaxed: a hint; the driver tolerates seeing it late (one spurious or one missing kick that
  // enable_notifications()'s re-check covers).
  std::atomic_ref<std::uint16_t>(device_event_->flags).store(flags, std::memory_order_relaxed);
  log_write(device_event_gpa_ + 2, 2);
}

void PackedQueue::disable_notifications() noexcept {
  if (!notifications_enabled_) return;
  notifications_enabled_ = false;
  if (device_event_ == nullptr || error_ != RingError::none) return;  // refresh_table() applies it
  write_device_flags(kRingEventFlagsDisable);
}

bool PackedQueue::enable_notifications() noexcept {
  notifications_enabled_ = true;
  if (device_event_ == nullptr || error_ != RingError::none) return false;
  if (event_idx_) {
    // Relaxed: the release store of the flags below orders it.
    std::atomic_ref<std::uint16_t>(device_event_->off_wrap).store(encode(avail_pos_), std::memory_order_relaxed);
    // Release: off_wrap is visible before DESC, for a driver reading flags then off_wrap.
    std::atomic_ref<std::uint16_t>(device_event_->flags).store(kRingEventFlagsDesc, std::memory_order_release);
    log_write(device_event_gpa_, kPackedEventAreaBytes);
  } else {
    write_device_flags(kRingEventFlagsEnable);
  }
  // Full fence: our device area stores are visible before we re-read the next descriptor;
  // pairs with the driver's fence between making a descriptor available and reading the device
  // area, so either it kicks or we see the descriptor here.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  // Acquire: like pop(), the chain behind these flags is visible (the caller polls next anyway).
  const std::uint16_t flags = flags_of(desc_[slot_of(avail_pos_)]).load(std::memory_order_acquire);
  return packed_desc_available(flags, wrap_of(avail_pos_));
}

}  // namespace vhostd
