// vhostd virtqueue: the split virtqueue as the device side sees it.
//
// Owns: the split-ring layout, walking descriptor chains (direct and indirect) into readable
// and writable segments with every hostile-ring check of the conformance list, used-ring
// updates through a shadow batch (with VIRTIO_F_IN_ORDER, a run of read-only chains used in
// pop order written as one used entry), EVENT_IDX / NO_INTERRUPT suppression, avail_event
// publication, and the per-ring error state and counters.
//
// Threading: a SplitQueue has one owner at a time (the poller while the ring runs, the control
// lcore while it is stopped). Configuration calls are control path; poll/pop/push_used/
// flush_used/notify are data path: no allocation, no locks, no exceptions, and no syscall but
// the eventfd write of a due notification.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <span>
#include <vector>

#include "vhostd/base/compiler.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/virtqueue/call_coalescing.hpp"

namespace vhostd {

// ---- split-ring layout (virtio 1.2 §2.7) ----
inline constexpr std::uint16_t kVringDescFNext = 1;
inline constexpr std::uint16_t kVringDescFWrite = 2;
inline constexpr std::uint16_t kVringDescFIndirect = 4;
inline constexpr std::uint16_t kVringUsedFNoNotify = 1;
inline constexpr std::uint16_t kVringAvailFNoInterrupt = 1;
inline constexpr std::uint32_t kVringFLog = 1;  // SET_VRING_ADDR flags: log used-ring writes

inline constexpr std::uint32_t kMaxQueueSize = 32768;
// A chain with more segments than this is treated as hostile (QEMU caps at 1024 descriptors;
// Linux guests use at most MAX_SKB_FRAGS + 2 for net and seg_max for blk).
inline constexpr std::uint32_t kMaxChainSegments = 256;

struct VringDesc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
static_assert(sizeof(VringDesc) == 16);

struct VringUsedElem {
  std::uint32_t id;
  std::uint32_t len;
};

// Byte sizes of the three areas for a queue of `size` entries (event idx fields included).
constexpr std::uint64_t desc_table_bytes(std::uint32_t size) { return 16ull * size; }
constexpr std::uint64_t avail_ring_bytes(std::uint32_t size) { return 6ull + 2ull * size; }
constexpr std::uint64_t used_ring_bytes(std::uint32_t size) { return 6ull + 8ull * size; }

// EVENT_IDX test from the spec: notify if new_idx passed event_idx since old_idx.
constexpr bool vring_need_event(std::uint16_t event_idx, std::uint16_t new_idx, std::uint16_t old_idx) {
  return static_cast<std::uint16_t>(new_idx - event_idx - 1) < static_cast<std::uint16_t>(new_idx - old_idx);
}

// SET_VRING_ADDR payload (frontend virtual addresses; log_guest_addr is guest-physical).
struct VringAddresses {
  std::uint32_t flags = 0;
  std::uint64_t desc_user_addr = 0;
  std::uint64_t used_user_addr = 0;
  std::uint64_t avail_user_addr = 0;
  std::uint64_t log_guest_addr = 0;
};

// One ring area as SET_VRING_ADDR gives it (split: descriptor table, avail ring, used ring;
// packed: descriptor ring, driver and device event areas).
struct RingArea {
  const char* name;
  std::uint64_t uva;
  std::uint64_t bytes;
  std::uintptr_t alignment;
};
// Throws Error naming `kind` and the area when an area is not inside one mapped region of
// `table` or its host address is not aligned as the layout requires. Control path.
void check_ring_areas(const MemoryTable& table, const char* kind, std::span<const RingArea> areas);

// prefetch_buffers()' step for one single direct descriptor, either layout: translates the
// buffer [gpa, gpa + len) and prefetches its first `read_bytes` bytes for reading and the next
// `write_bytes` for writing, both cut to the buffer (prefetch_bytes_read_then_write). False,
// with nothing prefetched, when the buffer is empty or not inside one mapped region: the
// look-ahead stops there and leaves the descriptor to pop().
inline bool prefetch_descriptor_buffer(const MemoryTable& table, std::uint64_t gpa, std::uint32_t len,
                                       std::uint32_t read_bytes, std::uint32_t write_bytes,
                                       std::uint32_t& hint) noexcept {
  if (len == 0) return false;
  const std::uint8_t* host = table.translate_gpa(gpa, len, hint);
  if (host == nullptr) return false;
  const std::uint32_t read = read_bytes < len ? read_bytes : len;
  const std::uint32_t left = len - read;
  prefetch_bytes_read_then_write(host, read, write_bytes < left ? write_bytes : left);
  return true;
}

// Why a ring was put in error. The ring stops being processed until reconfigured.
enum class RingError : std::uint8_t {
  none = 0,
  ring_address,             // desc/avail/used area not inside one mapped region
  avail_idx_jump,           // avail idx moved by more than the queue size
  head_out_of_range,        // avail ring entry >= queue size
  next_out_of_range,        // desc.next >= table size
  chain_loop,               // more hops than the table has descriptors
  chain_too_long,           // more than kMaxChainSegments segments
  indirect_bad_length,      // indirect table length 0 or not a multiple of 16
  indirect_nested,          // INDIRECT flag inside an indirect table
  indirect_with_next,       // INDIRECT together with NEXT in the same descriptor
  readable_after_writable,  // device-readable descriptor after a writable one
  descriptor_address,       // buffer outside guest memory or addr+len overflow
  used_id_out_of_range,     // the device pushed an id it was never given
  count
};
inline constexpr std::size_t kNumRingErrors = static_cast<std::size_t>(RingError::count);
const char* to_string(RingError error) noexcept;

// Per-ring counters: written by the owner only (relaxed), readable from any thread.
struct RingStats {
  std::atomic<std::uint64_t> requests{0};       // chains popped
  std::atomic<std::uint64_t> batches{0};        // polls that found work
  std::atomic<std::uint64_t> empty_polls{0};    // polls that found none (idle() counts nothing)
  std::atomic<std::uint64_t> busy_cycles{0};    // TSC cycles spent on polls that found work
  std::atomic<std::uint64_t> notifications{0};  // calls signalled to the guest
  std::array<std::atomic<std::uint64_t>, kNumRingErrors> errors{};  // by RingError

  void add(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept { add_single_writer(counter, n); }
  // Every error counted so far, all kinds (relaxed: monotonic counters, read from any thread).
  std::uint64_t error_total() const noexcept {
    std::uint64_t n = 0;
    for (const auto& e : errors) n += e.load(std::memory_order_relaxed);
    return n;
  }
};

// One guest buffer piece, already translated.
struct ChainSegment {
  std::uint8_t* host;
  std::uint64_t gpa;
  std::uint32_t len;
};

// A popped descriptor chain: readable segments first, then writable ones.
// Zero-length descriptors are accepted and contribute no segment.
struct DescriptorChain {
  std::uint16_t head = 0;
  std::uint16_t num_readable = 0;
  std::uint16_t num_writable = 0;
  std::uint32_t readable_bytes = 0;
  std::uint32_t writable_bytes = 0;
  std::array<ChainSegment, kMaxChainSegments> segments;

  std::span<const ChainSegment> readable() const noexcept { return {segments.data(), num_readable}; }
  std::span<const ChainSegment> writable() const noexcept {
    return {segments.data() + num_readable, num_writable};
  }
};

// Sequential reads over a chain's readable segments.
class ChainReader {
 public:
  explicit ChainReader(const DescriptorChain& chain) noexcept;
  // Copies up to n bytes; returns how many were copied (less only at the end of the data).
  std::size_t read(void* dst, std::size_t n) noexcept;
  std::size_t skip(std::size_t n) noexcept;
  std::size_t remaining() const noexcept { return remaining_; }

 private:
  const DescriptorChain& chain_;
  std::uint32_t seg_ = 0;
  std::uint32_t offset_ = 0;
  std::size_t remaining_;
};

// Sequential writes into a chain's writable segments; every byte written is marked in the
// dirty log when logging is on (it cannot be forgotten).
class ChainWriter {
 public:
  ChainWriter(const DescriptorChain& chain, const MemoryTable& table) noexcept;
  // Copies up to n bytes; returns how many fit.
  std::size_t write(const void* src, std::size_t n) noexcept;
  std::size_t written() const noexcept { return written_; }
  std::size_t remaining() const noexcept { return remaining_; }

 private:
  const DescriptorChain& chain_;
  const MemoryTable& table_;
  std::uint32_t seg_ = 0;
  std::uint32_t offset_ = 0;
  std::size_t written_ = 0;
  std::size_t remaining_;
};

class SplitQueue {
 public:
  SplitQueue() = default;
  SplitQueue(const SplitQueue&) = delete;
  SplitQueue& operator=(const SplitQueue&) = delete;

  // ---- control path (ring stopped) ----
  // size: power of two in [1, kMaxQueueSize] (the protocol layer rejects others first).
  void set_size(std::uint32_t size);
  void set_addresses(const VringAddresses& addresses) noexcept;
  void set_memory(const GuestMemory* memory) noexcept { memory_ = memory; table_ = nullptr; }
  void set_event_idx(bool enabled) noexcept { event_idx_ = enabled; }
  // VIRTIO_F_IN_ORDER negotiated: flush_used() may write a run of staged elements as one used
  // entry (virtio 1.2 §2.7.9, "In-order use of descriptors"): at the run's first used index,
  // carrying the last element's id and len, the used idx advanced past the whole run. A run
  // is consecutive elements, each the chain popped at the used index it takes (the device
  // used them in pop order), every one but the last a chain without writable descriptors
  // pushed with len 0 (so "used completely" holds and no driver needs its len). Anything
  // else gets its own entry.
  void set_in_order(bool enabled) noexcept { in_order_ = enabled; }
  // The device only reads this ring's buffers (a net TX ring): WRITE flags are ignored and
  // every descriptor counts as device-readable. DPDK's virtio PMD marks the virtio-net header
  // entry of its packed indirect TX tables WRITE (vring_desc_init_indirect_packed); DPDK's own
  // backend ignores the flag on such rings, and so does a ring set so. Off after reset().
  void set_readable_only(bool on) noexcept { write_mask_ = on ? 0 : kVringDescFWrite; }
  // SET_VRING_BASE: next avail index to read; the used index restarts from the same value.
  void set_last_avail_idx(std::uint16_t idx) noexcept;
  std::uint16_t last_avail_idx() const noexcept { return last_avail_idx_; }
  std::uint16_t used_idx() const noexcept { return used_idx_; }
  // The call eventfd to signal (not owned); -1 = never notify.
  void set_call_fd(int fd) noexcept { call_fd_ = fd; }
  // Hold due calls back and make one for many used buffers (call_coalescing.hpp); off by default
  // and after reset(). Only for a ring whose writer is a data lcore's poller thread.
  void set_call_coalescing(const CallCoalescing& setting) noexcept { held_call_.configure(setting); }
  const CallCoalescing& call_coalescing() const noexcept { return held_call_.setting(); }
  // Throws Error naming the area if the ring areas are not each inside one mapped region.
  void check_addresses(const MemoryTable& table) const;
  // Back to the unconfigured state (error cleared, counters kept).
  void reset() noexcept;

  // No batched fill on split rings (see PackedQueue::kLineBatch): the descriptors of a batch
  // are not in one line, and the used ring is already written once per flush_used().
  static constexpr std::uint32_t kLineBatch = 0;

  std::uint32_t size() const noexcept { return size_; }
  bool event_idx() const noexcept { return event_idx_; }
  bool in_order() const noexcept { return in_order_; }
  const VringAddresses& addresses() const noexcept { return addresses_; }
  bool in_error() const noexcept { return error_ != RingError::none; }
  RingError error() const noexcept { return error_; }
  RingStats& stats() noexcept { return stats_; }
  const RingStats& stats() const noexcept { return stats_; }

  // ---- data path (owner only) ----
  // Starts a batch: picks up the current memory table (re-translating the ring areas if it
  // changed) and returns how many chains are available; 0 when empty or in error.
  std::uint16_t poll() noexcept;
  // The poller's idle check, before poll(): true when the guest has made nothing available
  // since the last chain popped, decided from this queue's cached ring pointer with one load
  // of the guest's avail index (and the memory's current generation, which says the pointer is
  // still mapped). False means "call poll()": work, a new memory table, a ring not yet
  // translated, or in error (poll() sorts those out). Counts nothing: an idle ring costs the
  // loop no store.
  bool idle() const noexcept {
    if (VHOSTD_UNLIKELY(table_ == nullptr)) return false;
    // The cached avail_ points into table_'s mappings, which stay mapped (QSBR) only while
    // table_ is current: compare generations, not pointers (a new table may reuse an address).
    if (VHOSTD_UNLIKELY(memory_->current_generation() != table_generation_)) return false;
    // Relaxed: only compared here; a moved index leads to poll(), whose acquire load of the
    // same index orders the reads of the chains behind it.
    return std::atomic_ref<std::uint16_t>(avail_[1]).load(std::memory_order_relaxed) == last_avail_idx_;
  }
  // Starts a batch without reading the avail index: picks up the current memory table like
  // poll() and returns how many chains the last poll() saw that are not popped yet (0 in
  // error). A writer that only needs "room for n" reads the shared index only when this is
  // short of n, saving a cache miss per burst on a ring the driver keeps writing.
  std::uint16_t poll_cached() noexcept;
  // Pops the next available chain into `chain`. False when none is available or the chain is
  // hostile (then in_error() is true, the counter is bumped, nothing was consumed).
  bool pop(DescriptorChain& chain) noexcept;
  // A hint before writing into the next buffers (a net RX burst): for each of the next `n`
  // available chains, as long as they are single direct descriptors, prefetches the first
  // `read_bytes` bytes for reading (a header the device compares before writing) and the next
  // `write_bytes` for writing (prefetch_bytes_read_then_write). Reads the ring as pop() would,
  // consumes nothing and judges nothing: it stops at anything else, and pop() checks every
  // descriptor.
  void prefetch_buffers(std::uint16_t n, std::uint32_t read_bytes, std::uint32_t write_bytes) const noexcept;
  // Gives back the last `n` chains popped in this batch (not yet pushed as used): the next
  // pop() returns them again. For a device that pops ahead and then finds it cannot use them
  // (a net RX packet that needs more buffers than the guest has posted).
  void rewind(std::uint16_t n) noexcept {
    last_avail_idx_ = static_cast<std::uint16_t>(last_avail_idx_ - n);
    stats_.requests.store(stats_.requests.load(std::memory_order_relaxed) - n, std::memory_order_relaxed);
  }
  // Stages a used element; visible to the guest after flush_used().
  void push_used(std::uint16_t head, std::uint32_t len) noexcept;
  // push_used() of heads[0..n) in that order, each with `len` bytes written.
  void push_used_burst(const std::uint16_t* heads, std::uint32_t n, std::uint32_t len) noexcept {
    for (std::uint32_t i = 0; i < n; ++i) push_used(heads[i], len);
  }
  // Publishes staged used elements and the used index (and logs them when LOG is set).
  void flush_used() noexcept;
  // After flush_used(): signals the call fd if the guest asked for it (EVENT_IDX used_event or
  // NO_INTERRUPT); returns whether it did.
  // With call coalescing on, a due call may be held instead (false returned) and made later by
  // the calling thread's DeferredCalls, after the same check.
  bool notify() noexcept;
  // Guest kick suppression while a poller spins on this ring, and re-enabling before a sleep.
  // enable_notifications() returns true if work arrived meanwhile (re-check before sleeping).
  void disable_notifications() noexcept;
  bool enable_notifications() noexcept;

  // The memory table the current batch uses (valid after poll()).
  const MemoryTable* table() const noexcept { return table_; }

 private:
  bool refresh_table() noexcept;
  // Used buffers were published since the last call decision (and the ring works).
  bool call_pending() const noexcept {
    return VHOSTD_LIKELY(error_ == RingError::none && avail_ != nullptr) && signalled_used_ != used_idx_;
  }
  // notify()'s decision, made now: signals the call fd if the guest wants a call.
  bool decide_call() noexcept;
  // DeferredCalls::SignalFn: the held call's time has come.
  static void make_held_call(void* queue) noexcept;
  // The bookkeeping of a successful pop(): pop record, index, counter, avail_event.
  void finish_pop(std::uint16_t head, bool writable) noexcept;
  // IN_ORDER: folds runs of shadow_used_ into single entries in place; returns how many
  // entries remain (their used-ring offsets from used_idx_ in shadow_offset_).
  std::uint32_t fold_in_order() noexcept;
  bool fail(RingError error) noexcept;
  void log_used(std::uint64_t offset, std::uint64_t len) noexcept;

  // What idle() reads, first and together (one cache line for an idle ring).
  const GuestMemory* memory_ = nullptr;
  const MemoryTable* table_ = nullptr;  // the table the ring areas below were translated from
  std::uint64_t table_generation_ = 0;  // table_->generation() when it was translated
  std::uint16_t* avail_ = nullptr;      // flags, idx, ring[size], used_event
  std::uint16_t last_avail_idx_ = 0;

  // configuration
  std::uint32_t size_ = 0;
  VringAddresses addresses_{};
  bool event_idx_ = false;
  bool in_order_ = false;
  std::uint16_t write_mask_ = kVringDescFWrite;  // 0: set_readable_only()
  int call_fd_ = -1;

  // translated ring areas for table_
  VringDesc* desc_ = nullptr;
  std::uint8_t* used_ = nullptr;    // flags, idx, ring[size], avail_event
  std::uint32_t desc_hint_ = 0;

  // indexes
  std::uint16_t avail_idx_cache_ = 0;
  std::uint16_t used_idx_ = 0;          // published used idx
  std::uint16_t signalled_used_ = 0;    // used idx at the last notify (EVENT_IDX)
  bool signalled_used_valid_ = false;
  bool notifications_enabled_ = true;

  std::vector<VringUsedElem> shadow_used_;  // sized at set_size(); staged elements
  std::uint32_t shadow_count_ = 0;

  // What was popped at each avail index (slot idx mod size), for IN_ORDER runs: the head and
  // whether its chain had a writable descriptor. Sized at set_size(); written by every pop.
  struct PopRecord {
    std::uint16_t head;
    std::uint16_t writable;
  };
  std::vector<PopRecord> popped_;
  std::vector<std::uint16_t> shadow_offset_;  // IN_ORDER: folded entry -> used idx offset

  HeldCall held_call_;

  RingError error_ = RingError::none;
  RingStats stats_;
};

}  // namespace vhostd
