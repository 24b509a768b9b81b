// vhostd virtqueue: the packed virtqueue as the device side sees it.
//
// Owns: the packed-ring layout (virtio 1.2 §2.8), reading available descriptors against the
// driver's ring wrap counter into the same DescriptorChain the split ring produces (chains
// over consecutive slots and across the ring's end, indirect tables, buffer ids that are not
// slots) with every hostile-ring check; used descriptors staged and published a batch at a
// time (the first element's flags written last; with VIRTIO_F_IN_ORDER a run of read-only
// chains used in pop order written as one used descriptor); event suppression both ways
// (ENABLE, DISABLE, and DESC offsets with EVENT_IDX); the vhost-user packed vring base
// encoding; the per-ring error state and counters.
//
// The data-path interface is SplitQueue's, so a device is written once against either layout
// (DataPathQueue below states it). The control-path differences: the queue size need not be a
// power of two, set_vring_base()/vring_base() carry both positions and wrap counters, and
// SET_VRING_ADDR's three addresses mean descriptor ring / driver area / device area.
//
// Threading: as SplitQueue. A PackedQueue has one owner at a time (the poller while the ring
// runs, the control lcore while it is stopped). Configuration calls are control path; poll/
// pop/rewind/push_used/flush_used/notify/(en|dis)able_notifications are data path: no
// allocation, no locks, no exceptions, and no syscall but the eventfd write of a due
// notification.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <vector>

#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/call_coalescing.hpp"
#include "vhostd/virtqueue/split_queue.hpp"

namespace vhostd {

// ---- packed-ring layout (virtio 1.2 §2.8) ----
// NEXT, WRITE and INDIRECT keep their split-ring values (kVringDescF*).
inline constexpr std::uint16_t kPackedDescFAvail = 1u << 7;
inline constexpr std::uint16_t kPackedDescFUsed = 1u << 15;
// Event suppression flags (pvirtq_event_suppress.flags bits 0-1; 3 is reserved).
inline constexpr std::uint16_t kRingEventFlagsEnable = 0;
inline constexpr std::uint16_t kRingEventFlagsDisable = 1;
inline constexpr std::uint16_t kRingEventFlagsDesc = 2;  // only with EVENT_IDX
inline constexpr std::uint16_t kRingEventFlagsMask = 3;
// off_wrap: bits 0-14 ring offset, bit 15 wrap counter. The vring base uses the same layout.
inline constexpr std::uint16_t kPackedWrapBit = 1u << 15;
inline constexpr std::uint16_t kPackedIdxMask = 0x7fff;
// The vring base of a fresh ring: both positions at slot 0, both wrap counters 1.
inline constexpr std::uint32_t kPackedInitialBase = 0x8000'8000u;

struct PackedDesc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t id;     // buffer id: the chain's is the one in its last descriptor
  std::uint16_t flags;
};
static_assert(sizeof(PackedDesc) == 16);

// Both event suppression areas (driver area: written by the driver, read by the device; device
// area: the other way round).
struct PackedEventSuppress {
  std::uint16_t off_wrap;
  std::uint16_t flags;
};
static_assert(sizeof(PackedEventSuppress) == 4);

constexpr std::uint64_t packed_desc_ring_bytes(std::uint32_t size) { return 16ull * size; }
inline constexpr std::uint64_t kPackedEventAreaBytes = sizeof(PackedEventSuppress);

// A descriptor is available in the lap whose wrap counter is `wrap` when AVAIL matches it and
// USED does not; it is used when both match (§2.8.1).
constexpr bool packed_desc_available(std::uint16_t flags, bool wrap) {
  return ((flags & kPackedDescFAvail) != 0) == wrap && ((flags & kPackedDescFUsed) != 0) != wrap;
}
constexpr bool packed_desc_used(std::uint16_t flags, bool wrap) {
  return ((flags & kPackedDescFAvail) != 0) == wrap && ((flags & kPackedDescFUsed) != 0) == wrap;
}
// The AVAIL/USED bits a driver writes to make a descriptor available, and a device to use it.
constexpr std::uint16_t packed_avail_flags(bool wrap) { return wrap ? kPackedDescFAvail : kPackedDescFUsed; }
constexpr std::uint16_t packed_used_flags(bool wrap) {
  return wrap ? static_cast<std::uint16_t>(kPackedDescFAvail | kPackedDescFUsed) : std::uint16_t{0};
}

// EVENT_IDX for packed rings, in either direction: true if the `written` slots that end just
// before (new_idx, new_wrap) include the slot `off_wrap` names. A ring position and its wrap
// counter repeat every 2 * size slots, so positions are compared on that cycle (the packed
// form of vring_need_event; Linux and DPDK subtract the size when the wrap counters differ,
// which is the same thing). Used descriptors a chain (or an IN_ORDER batch) skips count as
// written: an event offset on a skipped slot fires when the used element is published.
constexpr bool packed_need_event(std::uint16_t off_wrap, std::uint16_t new_idx, bool new_wrap,
                                 std::uint64_t written, std::uint32_t size) {
  const std::uint32_t cycle = 2 * size;
  if (written == 0 || size == 0) return false;
  if (written >= cycle) return true;  // a whole cycle went by: every position was passed
  const std::uint32_t event =
      ((off_wrap & kPackedIdxMask) + ((off_wrap & kPackedWrapBit) ? 0u : size)) % cycle;
  const std::uint32_t now = new_idx + (new_wrap ? 0u : size);
  return (now + cycle - event - 1) % cycle < written;
}

class PackedQueue {
 public:
  PackedQueue() = default;
  PackedQueue(const PackedQueue&) = delete;
  PackedQueue& operator=(const PackedQueue&) = delete;

  // ---- control path (ring stopped) ----
  // size: any value in [1, kMaxQueueSize] (packed rings need not be powers of two; the
  // protocol layer may be stricter). Sizes the per-id arrays; keeps the vring base set before
  // when it fits the new size, else the ring restarts at kPackedInitialBase. Throws Error.
  void set_size(std::uint32_t size);
  // desc_user_addr: descriptor ring; avail_user_addr: driver event suppression area;
  // used_user_addr: device event suppression area (SET_VRING_ADDR for packed rings).
  void set_addresses(const VringAddresses& addresses) noexcept;
  void set_memory(const GuestMemory* memory) noexcept {
    memory_ = memory;
    table_ = nullptr;
  }
  void set_event_idx(bool enabled) noexcept { event_idx_ = enabled; }
  // VIRTIO_F_IN_ORDER negotiated: push_used() stages a run of used chains as one element, and
  // flush_used() writes it as one used descriptor (the spec's packed "In-order use of
  // descriptors"): at the slot of the run's first chain, with the last chain's buffer id and
  // len; the slots of every chain of the run are skipped (and count as used for event
  // suppression). A run is chains pushed one after another, each the chain that starts at the
  // slot the previous one ends on (the device used them in pop order), the first one starting
  // at the slot its used descriptor goes to, every one but the last a chain without writable
  // descriptors pushed with len 0 (so "used completely" holds and no driver needs its len).
  // Anything else gets its own used descriptor.
  void set_in_order(bool enabled) noexcept { in_order_ = enabled; }
  // The device only reads this ring's buffers (a net TX ring): WRITE flags are ignored and
  // every descriptor counts as device-readable. DPDK's virtio PMD marks the virtio-net header
  // entry of its packed indirect TX tables WRITE (vring_desc_init_indirect_packed); DPDK's own
  // backend ignores the flag on such rings, and so does a ring set so. Off after reset().
  void set_readable_only(bool on) noexcept { write_mask_ = on ? 0 : kVringDescFWrite; }
  // SET_VRING_BASE for packed rings: bits 0-14 the next avail slot, bit 15 the driver ring
  // wrap counter; bits 16-30 / 31 the next used slot and the device ring wrap counter. When
  // bits 16-31 are all zero the frontend did not send them (DPDK's and older QEMU's form) and
  // the used position restarts at the avail position. Throws Error when a slot is not below
  // the size, or the used position is more than a ring behind the avail one (checked now when
  // the size is known, else by set_size()).
  void set_vring_base(std::uint32_t base);
  // GET_VRING_BASE: the same encoding, both halves always filled in.
  std::uint32_t vring_base() const noexcept;
  // The call eventfd to signal (not owned); -1 = never notify.
  void set_call_fd(int fd) noexcept { call_fd_ = fd; }
  // Hold due calls back and make one for many used buffers (call_coalescing.hpp); off by default
  // and after reset(). Only for a ring whose writer is a data lcore's poller thread.
  void set_call_coalescing(const CallCoalescing& setting) noexcept { held_call_.configure(setting); }
  const CallCoalescing& call_coalescing() const noexcept { return held_call_.setting(); }
  // Throws Error naming the area if one is not inside one mapped region or misaligned
  // (descriptor ring 16 bytes, event areas 4).
  void check_addresses(const MemoryTable& table) const;
  // Back to the unconfigured state (error cleared, counters kept, memory binding kept).
  void reset() noexcept;

  // ---- batched fill (data path, owner only) ----
  // A writable buffer for each of kLineBatch descriptors that share one cache line of the ring:
  // the common RX refill of DPDK's and Linux's drivers (single descriptors, posted in order).
  // The device reads the line once, writes the buffers, and publishes them as used in that same
  // line right away, the way DPDK's packed enqueue does; the per-chain pop and push bookkeeping
  // is skipped (perf/README.md has what it is worth).
  static constexpr std::uint32_t kLineBatch = 4;
  struct LineBatch {
    std::array<ChainSegment, kLineBatch> buffers;  // host, gpa and length of each buffer
    std::array<std::uint16_t, kLineBatch> ids;
    std::uint32_t pos;  // the ring position of the line's first descriptor
  };
  // Reads the next kLineBatch descriptors and returns true when every one is an available
  // single (no NEXT, no INDIRECT) writable descriptor inside guest memory, with a buffer id
  // below the size that is not outstanding and differs from the others, and the first of them
  // starts a cache line of the ring: a slot that is a multiple of kLineBatch, the last one in
  // the same lap (one line when the ring is 64-byte aligned, as DPDK's and Linux's are). Takes
  // nothing: on false pop() handles these descriptors one by one and judges them (a hostile
  // one puts the ring in error there).
  // `next_line`: the line after those, read ahead while they are not committed yet (the caller
  // prefetches its buffers while it writes the first line's), under the same conditions.
  bool peek_fill_batch(LineBatch& batch, bool next_line = false) noexcept;
  // Takes the buffers of a batch peek_fill_batch() returned for the line at the current avail
  // position (the first line; a line read ahead once the one before it is committed) and
  // publishes each as used with written[k] bytes: staged elements first (flush_used()), then
  // the batch at the next used slots, ids and lengths before one release fence, flags after
  // it. A batch for another position (the queue moved since, through pop() or rewind()) is
  // ignored. The caller notifies as after flush_used().
  void commit_fill_batch(const LineBatch& batch, const std::array<std::uint32_t, kLineBatch>& written) noexcept;
  // The same line read for a ring the device reads (a net TX ring): pops the next kLineBatch
  // chains at once when every one is an available single descriptor the device reads (no
  // WRITE, unless the ring is set readable-only), with peek_fill_batch()'s other conditions.
  // chains[0..kLineBatch) then hold them in ring order as pop() would give them, each to be
  // pushed as used like any popped chain. False takes nothing: pop() then takes them one by
  // one and judges them.
  bool pop_batch(DescriptorChain* chains) noexcept;
  // pop_batch() in two steps, for a device that uses the buffers straight from the line (the
  // net device's line forward): peek_batch() reads the line as pop_batch() would pop it and
  // takes nothing (`next_line` as for peek_fill_batch()); take_batch() then takes the chains of
  // a batch read for the line at the current avail position, each outstanding until pushed as
  // used like any popped chain. A batch for another position is not taken (false).
  bool peek_batch(LineBatch& batch, bool next_line = false) noexcept;
  bool take_batch(const LineBatch& batch) noexcept;

  std::uint32_t size() const noexcept { return size_; }
  bool event_idx() const noexcept { return event_idx_; }
  bool in_order() const noexcept { return in_order_; }
  const VringAddresses& addresses() const noexcept { return addresses_; }
  bool in_error() const noexcept { return error_ != RingError::none; }
  RingError error() const noexcept { return error_; }
  RingStats& stats() noexcept { return stats_; }
  const RingStats& stats() const noexcept { return stats_; }
  // The next slot to read and the driver ring wrap counter expected there.
  std::uint16_t avail_idx() const noexcept { return static_cast<std::uint16_t>(slot_of(avail_pos_)); }
  bool avail_wrap() const noexcept { return wrap_of(avail_pos_); }
  // The next slot a used descriptor goes to and the device ring wrap counter (published state).
  std::uint16_t used_idx() const noexcept { return static_cast<std::uint16_t>(slot_of(used_pos_)); }
  bool used_wrap() const noexcept { return wrap_of(used_pos_); }
  // Slots read but not yet published as used (popped chains, pushed or not).
  std::uint32_t in_flight() const noexcept { return distance(used_pos_, avail_pos_); }

  // ---- data path (owner only) ----
  // Starts a batch: picks up the current memory table (re-translating the ring areas if it
  // changed) and returns how many whole chains are available among the next kPollWindow
  // descriptors, at least 1 when the next descriptor is available; 0 when empty or in error.
  std::uint16_t poll() noexcept;
  // The poller's idle check, before poll() (see SplitQueue::idle()): true when the descriptor
  // at the next avail position is not available, read from this queue's cached ring pointer
  // with one load of its flags. False means "call poll()".
  bool idle() const noexcept {
    if (VHOSTD_UNLIKELY(table_ == nullptr)) return false;
    // desc_ stays mapped (QSBR) only while table_ is current: compare generations.
    if (VHOSTD_UNLIKELY(memory_->current_generation() != table_generation_)) return false;
    // Relaxed: only tested here; an available descriptor leads to poll(), whose acquire loads
    // of the same flags order the reads of the descriptors.
    const std::uint16_t flags =
        std::atomic_ref<std::uint16_t>(desc_[slot_of(avail_pos_)].flags).load(std::memory_order_relaxed);
    return !packed_desc_available(flags, wrap_of(avail_pos_));
  }
  // Starts a batch without reading the ring: picks up the current memory table like poll() and
  // returns how many of the chains the last poll() counted are not popped yet (0 in error).
  // pop() reads the ring itself, so a short count only means "poll() again to know more".
  std::uint16_t poll_cached() noexcept;
  // Pops the next available chain into `chain` (chain.head is its buffer id). False when none
  // is available or the chain is hostile (then in_error() is true, the counter is bumped,
  // nothing was consumed).
  bool pop(DescriptorChain& chain) noexcept;
  // A hint before writing into the next buffers (a net RX burst): for each of the next `n`
  // available chains, as long as they are single direct descriptors, prefetches the first
  // `read_bytes` bytes for reading (a header the device compares before writing) and the next
  // `write_bytes` for writing (prefetch_bytes_read_then_write). Reads the ring as pop() would,
  // consumes nothing and judges nothing: it stops at anything else, and pop() checks every
  // descriptor.
  void prefetch_buffers(std::uint16_t n, std::uint32_t read_bytes, std::uint32_t write_bytes) const noexcept;
  // Gives back the last `n` chains popped (not yet pushed as used): the next pop() returns them
  // again. Stops early at a chain that was already pushed.
  void rewind(std::uint16_t n) noexcept;
  // Stages a used element for the chain whose buffer id is `id`, `len` bytes written; visible
  // to the guest after flush_used(). An id that is not outstanding is used_id_out_of_range.
  void push_used(std::uint16_t id, std::uint32_t len) noexcept { push_used_burst(&id, 1, len); }
  // push_used() of ids[0..n) in that order, each with `len` bytes written (a burst of guest TX
  // chains released at once); stops at an id that is not outstanding (the ring is then in
  // error).
  void push_used_burst(const std::uint16_t* ids, std::uint32_t n, std::uint32_t len) noexcept;
  // Writes the staged used descriptors, the batch becoming visible at once (and logs them when
  // LOG is set).
  void flush_used() noexcept;
  // After flush_used(): signals the call fd if the driver area asks for it (ENABLE, or DESC
  // with EVENT_IDX and its offset passed); returns whether it did.
  // With call coalescing on, a due call may be held instead (false returned) and made later by
  // the calling thread's DeferredCalls, after the same check.
  bool notify() noexcept;
  // Driver kick suppression while a poller spins on this ring (DISABLE), and re-enabling
  // before a sleep (ENABLE, or DESC at the next avail slot with EVENT_IDX).
  // enable_notifications() returns true if work arrived meanwhile (re-check before sleeping).
  void disable_notifications() noexcept;
  bool enable_notifications() noexcept;

  // The memory table the current batch uses (valid after poll()).
  const MemoryTable* table() const noexcept { return table_; }

  // How many descriptors poll() looks ahead to count chains (16 cache lines).
  static constexpr std::uint32_t kPollWindow = 64;

 private:
  // A staged used element: the buffer id, the slots its chain took (after folding: the slots
  // the used descriptor skips), the bytes written, and for IN_ORDER the position its chain
  // started at and whether it had a writable descriptor.
  struct UsedElem {
    std::uint16_t id;
    std::uint16_t slots;
    std::uint32_t len;
    std::uint16_t start;
    std::uint8_t writable;
  };

  // Ring positions run over [0, 2 * size): slot `pos mod size`, wrap counter 1 on the first
  // half. Advancing by one slot from the last slot flips the wrap counter, as the spec says.
  std::uint32_t slot_of(std::uint32_t pos) const noexcept { return pos < size_ ? pos : pos - size_; }
  bool wrap_of(std::uint32_t pos) const noexcept { return pos < size_; }
  std::uint32_t advance(std::uint32_t pos, std::uint32_t n) const noexcept {
    pos += n;  // n <= size, so one subtraction is enough
    return pos >= 2 * size_ ? pos - 2 * size_ : pos;
  }
  std::uint32_t retreat(std::uint32_t pos, std::uint32_t n) const noexcept {
    return pos >= n ? pos - n : pos + 2 * size_ - n;
  }
  std::uint32_t distance(std::uint32_t from, std::uint32_t to) const noexcept {
    return to >= from ? to - from : to + 2 * size_ - from;
  }
  std::uint32_t position(std::uint16_t idx_wrap) const noexcept {
    return (idx_wrap & kPackedIdxMask) + ((idx_wrap & kPackedWrapBit) ? 0u : size_);
  }
  std::uint16_t encode(std::uint32_t pos) const noexcept {
    return static_cast<std::uint16_t>(slot_of(pos) | (wrap_of(pos) ? kPackedWrapBit : 0u));
  }
  // Whether `base` (with its used half filled in) fits a ring of `size`.
  static bool base_fits(std::uint32_t base, std::uint32_t size) noexcept;
  void apply_base() noexcept;

  bool refresh_table() noexcept;
  // Used buffers were published since the last call decision (and the ring works).
  bool call_pending() const noexcept {
    return VHOSTD_LIKELY(error_ == RingError::none && driver_event_ != nullptr) && used_slots_ != signalled_slots_;
  }
  // notify()'s decision, made now: signals the call fd if the guest wants a call.
  bool decide_call() noexcept;
  // DeferredCalls::SignalFn: the held call's time has come.
  static void make_held_call(void* queue) noexcept;
  bool fail(RingError error) noexcept;
  // Records a chain taken from the ring as outstanding (for push_used(), rewind() and IN_ORDER
  // runs): buffer id, slots, the position it starts at, whether it has a writable descriptor.
  void record_outstanding(std::uint16_t id, std::uint32_t slots, std::uint32_t start, bool writable) noexcept;
  // A chain of `slots` slots with buffer id `id` taken at the avail position: recorded as
  // outstanding and the position moved past it.
  void take_chain(std::uint16_t id, std::uint32_t slots, bool writable) noexcept;
  // After take_chain() for n chains: counts them and tells the driver the new avail position
  // (EVENT_IDX).
  void chains_taken(std::uint32_t n) noexcept;
  // The next kLineBatch descriptors as peek_fill_batch() and pop_batch() take them: true when
  // they fill one line and each is available, single, inside guest memory, with a distinct id
  // that is below the size and not outstanding, and has WRITE as `write_flag` (kVringDescFWrite
  // or 0) where the ring tells (write_mask_).
  // `ahead`: 0 for the line at the avail position, kLineBatch for the one after it.
  bool read_line(LineBatch& batch, std::uint16_t write_flag, std::uint32_t ahead) noexcept;
  void publish_avail_event() noexcept;
  void write_device_flags(std::uint16_t flags) noexcept;
  void log_write(std::uint64_t gpa, std::uint64_t len) noexcept;
  // Used descriptor writes go to the dirty log (VHOST_VRING_F_LOG set and logging on).
  bool logging_used() const noexcept { return (addresses_.flags & kVringFLog) && table_->logging(); }
  void log_used_desc(std::uint32_t pos) noexcept {
    log_write(desc_gpa_ + sizeof(PackedDesc) * slot_of(pos), sizeof(PackedDesc));
  }

  // What idle() reads, first and together (one cache line for an idle ring).
  const GuestMemory* memory_ = nullptr;
  const MemoryTable* table_ = nullptr;  // the table the ring areas below were translated from
  std::uint64_t table_generation_ = 0;  // table_->generation() when it was translated
  PackedDesc* desc_ = nullptr;
  std::uint32_t size_ = 0;
  std::uint32_t avail_pos_ = 0;  // next descriptor to read (see slot_of)

  // configuration
  VringAddresses addresses_{};
  bool event_idx_ = false;
  bool in_order_ = false;
  std::uint16_t write_mask_ = kVringDescFWrite;  // 0: set_readable_only()
  int call_fd_ = -1;
  std::uint32_t base_ = kPackedInitialBase;  // last SET_VRING_BASE, used half filled in

  // translated ring areas for table_
  PackedEventSuppress* driver_event_ = nullptr;
  PackedEventSuppress* device_event_ = nullptr;
  std::uint64_t desc_gpa_ = 0;          // for the dirty log of used descriptors
  std::uint64_t device_event_gpa_ = 0;  // for the dirty log of device area writes
  std::uint32_t desc_hint_ = 0;

  // chains the last poll() counted and pop() has not taken yet
  std::uint32_t avail_counted_ = 0;

  // positions (see slot_of) and notification state
  std::uint32_t used_pos_ = 0;         // next used descriptor to write (published)
  std::uint64_t used_slots_ = 0;       // slots published as used since the base was set
  std::uint64_t signalled_slots_ = 0;  // used_slots_ at the last notify()
  bool signalled_valid_ = false;
  bool notifications_enabled_ = true;

  // per buffer id: slots its outstanding chain took (0: not outstanding); sized at set_size()
  std::vector<std::uint16_t> chain_slots_;
  // per buffer id, for IN_ORDER runs: the position its outstanding chain starts at, and
  // whether it had a writable descriptor; sized at set_size(), written by every pop
  std::vector<std::uint16_t> chain_start_;
  std::vector<std::uint8_t> chain_writable_;
  // ids of the last chains popped, newest at pop_head_ - 1 (for rewind)
  std::vector<std::uint16_t> pop_history_;
  std::uint32_t pop_head_ = 0;
  std::uint32_t rewindable_ = 0;
  std::vector<UsedElem> shadow_used_;  // staged used elements; sized at set_size()
  std::uint32_t shadow_count_ = 0;
  std::uint32_t shadow_slots_ = 0;

  HeldCall held_call_;

  RingError error_ = RingError::none;
  RingStats stats_;
};

// Inline: a push is a few loads and stores; the ring's fields are read once into locals (the
// stores into the per-id arrays and the shadow may alias them as far as the compiler knows).
inline void PackedQueue::push_used_burst(const std::uint16_t* ids, std::uint32_t n, std::uint32_t len) noexcept {
  if (VHOSTD_UNLIKELY(error_ != RingError::none || size_ == 0)) return;
  const std::uint32_t size = size_;
  const bool in_order = in_order_;
  std::uint16_t* const outstanding = chain_slots_.data();
  const std::uint16_t* const start_of = chain_start_.data();
  const std::uint8_t* const writable_of = chain_writable_.data();
  UsedElem* const shadow = shadow_used_.data();
  std::uint32_t count = shadow_count_;
  std::uint32_t staged = shadow_slots_;
  auto advance_by = [size](std::uint32_t pos, std::uint32_t k) noexcept {
    pos += k;  // k <= size
    return pos >= 2 * size ? pos - 2 * size : pos;
  };
  // The element staged last, kept in locals while the burst extends it (stored back before a
  // new element starts and at the end); where its used descriptor goes, and where the next
  // element's would.
  UsedElem last = count != 0 ? shadow[count - 1] : UsedElem{};
  std::uint32_t last_at = count != 0 ? advance_by(used_pos_, staged - last.slots) : 0;
  std::uint32_t next_at = advance_by(used_pos_, staged);
  bool unknown = false;  // an id that is not outstanding: stop there
  for (std::uint32_t i = 0; i < n; ++i) {
    const std::uint16_t id = ids[i];
    if (VHOSTD_UNLIKELY(id >= size || outstanding[id] == 0)) {
      unknown = true;
      break;
    }
    const std::uint16_t slots = outstanding[id];
    const std::uint16_t start = start_of[id];
    const std::uint8_t writable = writable_of[id];
    outstanding[id] = 0;
    // IN_ORDER (see set_in_order()): the chain joins the run staged last when that run starts at
    // the slot its used descriptor goes to, ends with a read-only chain used with len 0, and
    // this chain starts where it ends. The run's slots never exceed the slots in flight (at
    // most size_), so they fit 16 bits.
    if (in_order && count != 0 && last.len == 0 && last.writable == 0 && last.start == last_at && start == next_at) {
      last = UsedElem{id, static_cast<std::uint16_t>(last.slots + slots), len, last.start, writable};
    } else {
      if (count != 0) shadow[count - 1] = last;
      // Staged slots never exceed the slots in flight (at most size_), so the shadow cannot
      // fill; publish rather than overflow should that ever be wrong.
      if (VHOSTD_UNLIKELY(count == size)) {
        shadow_count_ = count;
        shadow_slots_ = staged;
        flush_used();  // used_pos_ becomes next_at
        count = 0;
        staged = 0;
      }
      ++count;
      last = UsedElem{id, slots, len, start, writable};
      last_at = next_at;
    }
    staged += slots;
    next_at = advance_by(next_at, slots);
  }
  if (count != 0) shadow[count - 1] = last;
  shadow_count_ = count;
  shadow_slots_ = staged;
  if (VHOSTD_UNLIKELY(unknown)) fail(RingError::used_id_out_of_range);
}

// What a device's data path needs from a ring, whichever its layout: write a device once as a
// template over this and instantiate it for SplitQueue and PackedQueue.
template <typename Q>
concept DataPathQueue = requires(Q& q, const Q& cq, DescriptorChain& chain, std::uint16_t id, std::uint32_t len) {
  { q.poll() } noexcept -> std::same_as<std::uint16_t>;
  { q.poll_cached() } noexcept -> std::same_as<std::uint16_t>;
  { q.pop(chain) } noexcept -> std::same_as<bool>;
  { cq.prefetch_buffers(id, len, len) } noexcept;
  { q.rewind(id) } noexcept;
  { q.push_used(id, len) } noexcept;
  { q.push_used_burst(&id, len, len) } noexcept;
  { q.flush_used() } noexcept;
  { q.notify() } noexcept -> std::same_as<bool>;
  { q.disable_notifications() } noexcept;
  { q.enable_notifications() } noexcept -> std::same_as<bool>;
  { cq.table() } noexcept -> std::same_as<const MemoryTable*>;
  { cq.in_error() } noexcept -> std::same_as<bool>;
  { cq.error() } noexcept -> std::same_as<RingError>;
  { q.stats() } noexcept -> std::same_as<RingStats&>;
};
static_assert(DataPathQueue<SplitQueue>);
static_assert(DataPathQueue<PackedQueue>);

}  // namespace vhostd
