// vhostd memory: guest memory mapped from the frontend's region fds.
//
// Owns: mapping regions (memfd or hugetlbfs, MAP_SHARED, honouring mmap_offset; each region's
// NUMA node recorded), bounds-checked translation of guest-physical and frontend-virtual ranges
// to host pointers, the dirty-page log used during live migration, and replacing the memory
// table while pollers run.
//
// Concurrency: a MemoryTable is immutable. GuestMemory publishes the current table through one
// atomic pointer; pollers load it (acquire) and may use it until their next QSBR quiescent
// point. A replaced table, and any mapping only it referenced, is released only after
// QsbrDomain::synchronize() returned, so a poller never touches an unmapped page.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/base/quiescence.hpp"

namespace vhostd {

// VHOST_USER_GET_MAX_MEM_SLOTS answer: how many regions ADD_MEM_REG may create.
inline constexpr std::size_t kMaxMemSlots = 509;
// SET_MEM_TABLE carries at most this many regions (the fd limit of one message).
inline constexpr std::size_t kMaxSetMemTableRegions = 8;
inline constexpr std::uint64_t kDirtyPageSize = 4096;

// A region as the frontend describes it (VhostUserMemoryRegion on the wire).
struct MemoryRegionInfo {
  std::uint64_t guest_phys_addr = 0;
  std::uint64_t memory_size = 0;
  std::uint64_t userspace_addr = 0;
  std::uint64_t mmap_offset = 0;
};

// One region mapped into this process; unmapped when the last table referencing it is gone.
class MappedRegion {
 public:
  // Validates the description (non-zero size, no overflow, fits in the file) and maps it.
  // Throws Error naming the offending field on failure; the fd is closed either way.
  static std::shared_ptr<const MappedRegion> map(const MemoryRegionInfo& info, UniqueFd fd);
  ~MappedRegion();
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;

  const MemoryRegionInfo& info() const noexcept { return info_; }
  std::uint64_t gpa_start() const noexcept { return info_.guest_phys_addr; }
  std::uint64_t gpa_end() const noexcept { return info_.guest_phys_addr + info_.memory_size; }
  std::uint64_t uva_start() const noexcept { return info_.userspace_addr; }
  std::uint64_t uva_end() const noexcept { return info_.userspace_addr + info_.memory_size; }
  // Host address of guest_phys_addr (mapping base + mmap_offset).
  std::uint8_t* host_base() const noexcept { return host_base_; }
  std::size_t mapping_length() const noexcept { return map_len_; }
  // The NUMA node of the region's first page, probed once after mapping (numa.hpp); -1 when
  // it cannot be told. Placement reads it to put the rings' lcores near the guest's memory.
  int numa_node() const noexcept { return numa_node_; }

 private:
  MappedRegion() = default;
  MemoryRegionInfo info_{};
  int numa_node_ = -1;
  void* map_base_ = nullptr;
  std::size_t map_len_ = 0;
  std::uint8_t* host_base_ = nullptr;
};

// The dirty-page log of VHOST_USER_SET_LOG_BASE: one bit per 4 KiB guest page
// (rust-vmm's vhost-user-backend `Bitmap`). Bits are set atomically; the frontend reads and
// clears them concurrently.
class DirtyLog {
 public:
  // Maps `size` bytes of the log fd at `offset`. Throws Error on a bad size or mmap failure.
  static std::shared_ptr<DirtyLog> map(UniqueFd fd, std::uint64_t size, std::uint64_t offset);
  // A log in anonymous memory, for tests and for devices that keep their own log.
  static std::shared_ptr<DirtyLog> anonymous(std::uint64_t size_bytes);
  ~DirtyLog();
  DirtyLog(const DirtyLog&) = delete;
  DirtyLog& operator=(const DirtyLog&) = delete;

  // Sets the bit of every page touched by [gpa, gpa+len). Pages past the log are counted in
  // out_of_range() and otherwise ignored (never a stray write).
  void mark(std::uint64_t gpa, std::uint64_t len) noexcept;
  bool is_dirty(std::uint64_t gpa) const noexcept;
  std::uint64_t size_bytes() const noexcept { return size_; }
  std::uint64_t out_of_range() const noexcept { return out_of_range_.load(std::memory_order_relaxed); }

 private:
  DirtyLog() = default;
  void* map_base_ = nullptr;
  std::size_t map_len_ = 0;
  bool anonymous_ = false;
  std::uint8_t* bits_ = nullptr;
  std::uint64_t size_ = 0;
  std::atomic<std::uint64_t> out_of_range_{0};
};

// An immutable snapshot of the memory map (plus the dirty log and whether LOG_ALL is on).
class MemoryTable {
 public:
  MemoryTable() = default;
  // Regions must not overlap in guest-physical or frontend-virtual space (checked: throws).
  MemoryTable(std::vector<std::shared_ptr<const MappedRegion>> regions,
              std::shared_ptr<DirtyLog> log, bool log_all);

  std::size_t num_regions() const noexcept { return regions_.size(); }
  const MappedRegion& region(std::size_t i) const noexcept { return *regions_[i]; }
  const std::vector<std::shared_ptr<const MappedRegion>>& regions() const noexcept { return regions_; }
  const std::shared_ptr<DirtyLog>& log() const noexcept { return log_; }
  bool log_all() const noexcept { return log_all_; }
  // Unique per table for the life of the process: a cached table is still current only if
  // the generation matches (a pointer compare could be fooled by address reuse).
  std::uint64_t generation() const noexcept { return generation_; }

  // Host pointer for [gpa, gpa+len) when the whole range lies in one region, else nullptr
  // (also for len == 0 outside memory and for gpa+len overflow). `hint` is the caller's
  // last-hit region index (any value is safe; it is updated on a hit).
  std::uint8_t* translate_gpa(std::uint64_t gpa, std::uint64_t len, std::uint32_t& hint) const noexcept;
  std::uint8_t* translate_gpa(std::uint64_t gpa, std::uint64_t len) const noexcept {
    std::uint32_t hint = 0;
    return translate_gpa(gpa, len, hint);
  }
  // Same for frontend virtual addresses (SET_VRING_ADDR ring addresses).
  std::uint8_t* translate_uva(std::uint64_t uva, std::uint64_t len) const noexcept;
  // Guest-physical address of a frontend virtual address, or false when unmapped.
  bool uva_to_gpa(std::uint64_t uva, std::uint64_t& gpa) const noexcept;
  // The region holding frontend virtual address `uva`, or nullptr (control path: placement).
  const MappedRegion* region_of_uva(std::uint64_t uva) const noexcept {
    const int idx = find_uva(uva);
    return idx < 0 ? nullptr : regions_[static_cast<std::size_t>(idx)].get();
  }

  // Splits [gpa, gpa+len) over adjacent regions, calling fn(host, gpa, len) per piece in
  // order. Returns false (having called fn for no piece) if any byte is unmapped or on overflow.
  template <typename Fn>
  bool for_each_piece(std::uint64_t gpa, std::uint64_t len, std::uint32_t& hint, Fn&& fn) const noexcept;

  // Dirty logging: marks [gpa, gpa+len) when LOG_ALL is on and a log is set.
  bool logging() const noexcept { return log_all_ && log_ != nullptr; }
  void mark_dirty(std::uint64_t gpa, std::uint64_t len) const noexcept {
    if (logging()) log_->mark(gpa, len);
  }

  // Copy helpers that never forget the dirty log; false if any byte is unmapped.
  bool write(std::uint64_t gpa, const void* src, std::uint64_t len) const noexcept;
  bool read(std::uint64_t gpa, void* dst, std::uint64_t len) const noexcept;

 private:
  // Index of the region containing gpa, or -1.
  int find_gpa(std::uint64_t gpa, std::uint32_t& hint) const noexcept;
  // The host address of [gpa, gpa+len) when the hinted region holds all of it, else nullptr.
  std::uint8_t* translate_hinted(std::uint64_t gpa, std::uint64_t len, std::uint32_t hint) const noexcept;
  // translate_gpa() when the hinted region does not hold the whole range.
  std::uint8_t* translate_gpa_search(std::uint64_t gpa, std::uint64_t len, std::uint32_t& hint) const noexcept;

  static std::uint64_t next_generation() noexcept;
  // Index of the region containing uva (via by_uva_), or -1.
  int find_uva(std::uint64_t uva) const noexcept;

  // What a guest-physical translation reads of a region, flat and in regions_' order: the data
  // path's hinted lookup is one load of the span and two compares, no pointer chase.
  struct GpaSpan {
    std::uint64_t start;
    std::uint64_t size;
    std::uint8_t* host;
  };

  std::vector<std::shared_ptr<const MappedRegion>> regions_;  // sorted by guest_phys_addr
  std::vector<GpaSpan> spans_;  // spans_[i] describes regions_[i]
  std::vector<std::uint32_t> by_uva_;  // indices into regions_, sorted by userspace_addr
  std::shared_ptr<DirtyLog> log_;
  bool log_all_ = false;
  std::uint64_t generation_ = next_generation();
};

// The memory of one frontend connection: the current table and its replacement protocol.
class GuestMemory {
 public:
  explicit GuestMemory(QsbrDomain& domain);
  ~GuestMemory();
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;

  // Data path: the current table; valid until the caller's next quiescent point.
  const MemoryTable* current() const noexcept { return current_.load(std::memory_order_acquire); }
  // Data path: current()->generation() in one load, from the line current_ is on (a poller's
  // idle check on a ring whose ring pointers it translated from that table). Relaxed: only
  // compared with a generation the caller read from a table it holds; a stale value means the
  // table it names is not released yet (QSBR), the same as a stale current().
  std::uint64_t current_generation() const noexcept { return generation_.load(std::memory_order_relaxed); }
  // Control path / other threads: a reference-counted snapshot, valid as long as it is held.
  std::shared_ptr<const MemoryTable> snapshot() const noexcept { return owned_; }

  // Each mutation validates first (throws Error, leaving the old table in place), then
  // publishes the new table and returns only after the old one is unreachable by pollers.
  void set_regions(std::span<const MemoryRegionInfo> regions, std::vector<UniqueFd> fds);  // SET_MEM_TABLE
  void add_region(const MemoryRegionInfo& region, UniqueFd fd);  // ADD_MEM_REG
  void remove_region(const MemoryRegionInfo& region);            // REM_MEM_REG (gpa, size, uaddr match)
  void set_log(std::shared_ptr<DirtyLog> log);                   // SET_LOG_BASE
  void set_log_all(bool log_all);                                // LOG_ALL feature toggled
  void clear();                                                  // disconnect: unmap everything

 private:
  void publish(std::shared_ptr<const MemoryTable> table);

  QsbrDomain& domain_;
  std::shared_ptr<const MemoryTable> owned_;
  std::atomic<const MemoryTable*> current_;
  std::atomic<std::uint64_t> generation_;  // current_'s generation
};

// ---- inline definitions ----

template <typename Fn>
bool MemoryTable::for_each_piece(std::uint64_t gpa, std::uint64_t len, std::uint32_t& hint,
                                 Fn&& fn) const noexcept {
  if (gpa + len < gpa) return false;
  // Fast path: the whole range inside the last-hit region (every buffer of a one-region guest).
  if (len != 0) {
    if (std::uint8_t* host = translate_hinted(gpa, len, hint)) {
      fn(host, gpa, len);
      return true;
    }
  }
  // First pass validates the whole range so fn never sees a partial success.
  std::uint64_t cursor = gpa, left = len;
  std::uint32_t probe = hint;
  while (left > 0) {
    int idx = find_gpa(cursor, probe);
    if (idx < 0) return false;
    const GpaSpan& span = spans_[static_cast<std::size_t>(idx)];
    std::uint64_t room = span.start + span.size - cursor;
    std::uint64_t take = left < room ? left : room;
    cursor += take;
    left -= take;
  }
  cursor = gpa;
  left = len;
  while (left > 0) {
    const GpaSpan& span = spans_[static_cast<std::size_t>(find_gpa(cursor, hint))];
    std::uint64_t room = span.start + span.size - cursor;
    std::uint64_t take = left < room ? left : room;
    fn(span.host + (cursor - span.start), cursor, take);
    cursor += take;
    left -= take;
  }
  return true;
}

inline int MemoryTable::find_gpa(std::uint64_t gpa, std::uint32_t& hint) const noexcept {
  const std::size_t n = spans_.size();
  if (hint < n && gpa - spans_[hint].start < spans_[hint].size) return static_cast<int>(hint);
  // Binary search: last region whose start <= gpa.
  std::size_t lo = 0, hi = n;
  while (lo < hi) {
    std::size_t mid = (lo + hi) / 2;
    if (spans_[mid].start <= gpa) lo = mid + 1; else hi = mid;
  }
  if (lo == 0) return -1;
  if (gpa - spans_[lo - 1].start >= spans_[lo - 1].size) return -1;
  hint = static_cast<std::uint32_t>(lo - 1);
  return static_cast<int>(lo - 1);
}

inline std::uint8_t* MemoryTable::translate_hinted(std::uint64_t gpa, std::uint64_t len,
                                                   std::uint32_t hint) const noexcept {
  // The offset wraps to a huge value below the region's start; within the region, start + size
  // does not overflow (MappedRegion::map checked), so neither does gpa + len.
  if (VHOSTD_UNLIKELY(hint >= spans_.size())) return nullptr;
  const GpaSpan& span = spans_[hint];
  const std::uint64_t offset = gpa - span.start;
  return VHOSTD_LIKELY(offset < span.size && len <= span.size - offset) ? span.host + offset : nullptr;
}

inline std::uint8_t* MemoryTable::translate_gpa(std::uint64_t gpa, std::uint64_t len,
                                                std::uint32_t& hint) const noexcept {
  // The hinted region holds the whole range: every buffer of a one-region guest.
  if (std::uint8_t* host = translate_hinted(gpa, len, hint); VHOSTD_LIKELY(host != nullptr)) return host;
  return translate_gpa_search(gpa, len, hint);
}

inline std::uint8_t* MemoryTable::translate_gpa_search(std::uint64_t gpa, std::uint64_t len,
                                                       std::uint32_t& hint) const noexcept {
  if (gpa + len < gpa) return nullptr;
  const int idx = find_gpa(gpa, hint);
  if (idx < 0) return nullptr;
  const GpaSpan& span = spans_[static_cast<std::size_t>(idx)];
  if (len > span.size - (gpa - span.start)) return nullptr;
  return span.host + (gpa - span.start);
}

}  // namespace vhostd
