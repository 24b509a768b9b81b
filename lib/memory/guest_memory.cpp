// vhostd memory: mapping, translation, dirty log and table replacement (see guest_memory.hpp).
#include "vhostd/memory/guest_memory.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <limits>
#include <string>
#include <utility>

#include "vhostd/base/error.hpp"
#include "vhostd/memory/numa.hpp"

namespace vhostd {

namespace {

std::string hex(std::uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

std::string describe(const MemoryRegionInfo& info) {
  return str_cat("memory region gpa ", hex(info.guest_phys_addr), " size ", hex(info.memory_size));
}

// True (and sets out) when value rounded up to a multiple of align fits in a size_t.
bool align_up(std::uint64_t value, std::uint64_t align, std::size_t& out) {
  std::uint64_t rem = value % align;
  std::uint64_t pad = rem == 0 ? 0 : align - rem;
  if (value + pad < value || value + pad > std::numeric_limits<std::size_t>::max()) return false;
  out = static_cast<std::size_t>(value + pad);
  return true;
}

// fstat()s fd and checks it is a regular file holding at least `needed` bytes, so touching any
// byte below `needed` can never SIGBUS (a frontend could pass a short file or a pipe).
struct stat checked_stat(int fd, std::uint64_t needed, const std::string& what) {
  if (fd < 0) throw_error(what, ": no fd");
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw_errno(what, ": fstat");
  if (!S_ISREG(st.st_mode)) throw_error(what, ": fd is not a regular file (memfd or hugetlbfs)");
  if (st.st_size < 0 || static_cast<std::uint64_t>(st.st_size) < needed) {
    throw_error(what, ": mmap_offset+size ", hex(needed), " beyond file size ",
                hex(static_cast<std::uint64_t>(st.st_size)));
  }
  return st;
}

std::uint64_t system_page_size() {
  long page = ::sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<std::uint64_t>(page) : 4096;
}

}  // namespace

// ---- MappedRegion ----

std::shared_ptr<const MappedRegion> MappedRegion::map(const MemoryRegionInfo& info, UniqueFd fd) {
  const std::string what = describe(info);
  const std::uint64_t size = info.memory_size;
  if (size == 0) throw_error(what, ": memory_size is 0");
  if (info.guest_phys_addr + size < info.guest_phys_addr) throw_error(what, ": gpa+size overflows");
  if (info.userspace_addr + size < info.userspace_addr) {
    throw_error(what, ": userspace_addr ", hex(info.userspace_addr), "+size overflows");
  }
  const std::uint64_t file_end = info.mmap_offset + size;
  if (file_end < info.mmap_offset) throw_error(what, ": mmap_offset ", hex(info.mmap_offset), "+size overflows");

  struct stat st = checked_stat(fd.get(), file_end, what);
  // Map from file offset 0 so the mapping starts on a (huge) page boundary whatever
  // mmap_offset is; hugetlbfs reports its huge page size as st_blksize.
  const std::uint64_t page = std::max(static_cast<std::uint64_t>(st.st_blksize > 0 ? st.st_blksize : 0),
                                      system_page_size());
  std::size_t length = 0;
  if (!align_up(file_end, page, length)) throw_error(what, ": mapping length overflows");

  void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) throw_errno(what, ": mmap of ", hex(length), " bytes");

  std::shared_ptr<MappedRegion> region(new MappedRegion());
  region->info_ = info;
  region->map_base_ = base;
  region->map_len_ = length;
  region->host_base_ = static_cast<std::uint8_t*>(base) + info.mmap_offset;
  // The page at host_base_ lies inside the file (checked above), so probing it (a read fault
  // at most) cannot SIGBUS.
  region->numa_node_ = numa_node_of_address(region->host_base_);
  return region;  // the mapping keeps the memory alive; fd closes as it goes out of scope
}

MappedRegion::~MappedRegion() {
  if (map_base_ != nullptr) ::munmap(map_base_, map_len_);
}

// ---- DirtyLog ----

std::shared_ptr<DirtyLog> DirtyLog::map(UniqueFd fd, std::uint64_t size, std::uint64_t offset) {
  const std::string what = str_cat("dirty log size ", hex(size), " offset ", hex(offset));
  if (size == 0) throw_error(what, ": size is 0");
  const std::uint64_t end = size + offset;
  if (end < size || end > std::numeric_limits<std::size_t>::max()) throw_error(what, ": size+offset overflows");
  checked_stat(fd.get(), end, what);

  void* base = ::mmap(nullptr, static_cast<std::size_t>(end), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
  if (base == MAP_FAILED) throw_errno(what, ": mmap");
  std::shared_ptr<DirtyLog> log(new DirtyLog());
  log->map_base_ = base;
  log->map_len_ = static_cast<std::size_t>(end);
  log->bits_ = static_cast<std::uint8_t*>(base) + offset;
  log->size_ = size;
  return log;
}

std::shared_ptr<DirtyLog> DirtyLog::anonymous(std::uint64_t size_bytes) {
  if (size_bytes == 0 || size_bytes > std::numeric_limits<std::size_t>::max()) {
    throw_error("anonymous dirty log size ", hex(size_bytes), ": bad size");
  }
  void* base = ::mmap(nullptr, static_cast<std::size_t>(size_bytes), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw_errno("anonymous dirty log size ", hex(size_bytes), ": mmap");
  std::shared_ptr<DirtyLog> log(new DirtyLog());
  log->map_base_ = base;
  log->map_len_ = static_cast<std::size_t>(size_bytes);
  log->anonymous_ = true;
  log->bits_ = static_cast<std::uint8_t*>(base);
  log->size_ = size_bytes;
  return log;
}

DirtyLog::~DirtyLog() {
  if (map_base_ != nullptr) ::munmap(map_base_, map_len_);
}

void DirtyLog::mark(std::uint64_t gpa, std::uint64_t len) noexcept {
  if (len == 0) return;
  // Release: the caller's writes to guest memory are ordered before the bits below, so a
  // frontend that sees a bit and copies the page copies the new data (or sees the bit again).
  std::atomic_thread_fence(std::memory_order_release);
  const std::uint64_t last = gpa + (len - 1) < gpa ? std::numeric_limits<std::uint64_t>::max() : gpa + (len - 1);
  const std::uint64_t first_page = gpa / kDirtyPageSize;
  const std::uint64_t last_page = last / kDirtyPageSize;
  const std::uint64_t num_pages = size_ > std::numeric_limits<std::uint64_t>::max() / 8
                                      ? std::numeric_limits<std::uint64_t>::max()
                                      : size_ * 8;
  if (last_page >= num_pages) {
    const std::uint64_t from = std::max(first_page, num_pages);
    // Relaxed: a statistic, read by nobody for ordering.
    out_of_range_.fetch_add(last_page - from + 1, std::memory_order_relaxed);
    if (first_page >= num_pages) return;
  }
  const std::uint64_t end_page = std::min(last_page, num_pages - 1) + 1;  // exclusive

  // Relaxed in both helpers: each bit is independent and carries no data of its own; the
  // fence above already orders the guest-memory writes it stands for.
  auto or_bits = [this](std::uint64_t byte, std::uint8_t mask) {
    std::atomic_ref<std::uint8_t>(bits_[byte]).fetch_or(mask, std::memory_order_relaxed);
  };
  std::uint64_t page = first_page;
  // Leading pages up to a byte boundary.
  while (page < end_page && page % 8 != 0) {
    or_bits(page / 8, static_cast<std::uint8_t>(1u << (page % 8)));
    ++page;
  }
  // Whole bytes: setting all 8 bits needs no read-modify-write; whatever the frontend cleared
  // before, every bit ends up set, exactly as with fetch_or(0xff).
  while (end_page - page >= 8) {
    std::atomic_ref<std::uint8_t>(bits_[page / 8]).store(0xff, std::memory_order_relaxed);
    page += 8;
  }
  // Trailing pages.
  while (page < end_page) {
    or_bits(page / 8, static_cast<std::uint8_t>(1u << (page % 8)));
    ++page;
  }
}

bool DirtyLog::is_dirty(std::uint64_t gpa) const noexcept {
  const std::uint64_t page = gpa / kDirtyPageSize;
  if (page / 8 >= size_) return false;
  // Relaxed: a test/diagnostic read of one bit; no data depends on it.
  return (std::atomic_ref<std::uint8_t>(bits_[page / 8]).load(std::memory_order_relaxed) >> (page % 8)) & 1u;
}

// ---- MemoryTable ----

std::uint64_t MemoryTable::next_generation() noexcept {
  static std::atomic<std::uint64_t> counter{0};
  // Relaxed: only uniqueness matters; the table itself is published by GuestMemory.
  return counter.fetch_add(1, std::memory_order_relaxed) + 1;
}

MemoryTable::MemoryTable(std::vector<std::shared_ptr<const MappedRegion>> regions, std::shared_ptr<DirtyLog> log,
                         bool log_all)
    : regions_(std::move(regions)), log_(std::move(log)), log_all_(log_all) {
  for (const auto& r : regions_) {
    if (r == nullptr) throw_error("memory table: null region");
  }
  std::sort(regions_.begin(), regions_.end(),
            [](const auto& a, const auto& b) { return a->gpa_start() < b->gpa_start(); });
  for (std::size_t i = 1; i < regions_.size(); ++i) {
    if (regions_[i - 1]->gpa_end() > regions_[i]->gpa_start()) {
      throw_error(describe(regions_[i]->info()), ": overlaps ", describe(regions_[i - 1]->info()),
                  " in guest-physical space");
    }
  }
  spans_.reserve(regions_.size());
  for (const auto& r : regions_) spans_.push_back(GpaSpan{r->gpa_start(), r->info().memory_size, r->host_base()});
  by_uva_.resize(regions_.size());
  for (std::size_t i = 0; i < regions_.size(); ++i) by_uva_[i] = static_cast<std::uint32_t>(i);
  std::sort(by_uva_.begin(), by_uva_.end(),
            [this](std::uint32_t a, std::uint32_t b) { return regions_[a]->uva_start() < regions_[b]->uva_start(); });
  for (std::size_t i = 1; i < by_uva_.size(); ++i) {
    const MappedRegion& prev = *regions_[by_uva_[i - 1]];
    const MappedRegion& cur = *regions_[by_uva_[i]];
    if (prev.uva_end() > cur.uva_start()) {
      throw_error(describe(cur.info()), " userspace_addr ", hex(cur.uva_start()), ": overlaps ",
                  describe(prev.info()), " userspace_addr ", hex(prev.uva_start()));
    }
  }
}

int MemoryTable::find_uva(std::uint64_t uva) const noexcept {
  // Binary search: last region (in uva order) whose start <= uva.
  std::size_t lo = 0, hi = by_uva_.size();
  while (lo < hi) {
    std::size_t mid = (lo + hi) / 2;
    if (regions_[by_uva_[mid]]->uva_start() <= uva) lo = mid + 1; else hi = mid;
  }
  if (lo == 0) return -1;
  const std::uint32_t idx = by_uva_[lo - 1];
  if (uva >= regions_[idx]->uva_end()) return -1;
  return static_cast<int>(idx);
}

std::uint8_t* MemoryTable::translate_uva(std::uint64_t uva, std::uint64_t len) const noexcept {
  if (uva + len < uva) return nullptr;
  int idx = find_uva(uva);
  if (idx < 0) return nullptr;
  const MappedRegion& r = *regions_[idx];
  if (len > r.uva_end() - uva) return nullptr;
  return r.host_base() + (uva - r.uva_start());
}

bool MemoryTable::uva_to_gpa(std::uint64_t uva, std::uint64_t& gpa) const noexcept {
  int idx = find_uva(uva);
  if (idx < 0) return false;
  const MappedRegion& r = *regions_[idx];
  gpa = r.gpa_start() + (uva - r.uva_start());
  return true;
}

bool MemoryTable::write(std::uint64_t gpa, const void* src, std::uint64_t len) const noexcept {
  std::uint32_t hint = 0;
  const auto* from = static_cast<const std::uint8_t*>(src);
  bool ok = for_each_piece(gpa, len, hint, [&](std::uint8_t* host, std::uint64_t, std::uint64_t n) {
    std::memcpy(host, from, n);
    from += n;
  });
  // After the copy: a bit set before the data lands could be cleared by the frontend's copy
  // pass before the data is there.
  if (ok) mark_dirty(gpa, len);
  return ok;
}

bool MemoryTable::read(std::uint64_t gpa, void* dst, std::uint64_t len) const noexcept {
  std::uint32_t hint = 0;
  auto* to = static_cast<std::uint8_t*>(dst);
  return for_each_piece(gpa, len, hint, [&](std::uint8_t* host, std::uint64_t, std::uint64_t n) {
    std::memcpy(to, host, n);
    to += n;
  });
}

// ---- GuestMemory ----

GuestMemory::GuestMemory(QsbrDomain& domain)
    : domain_(domain),
      owned_(std::make_shared<const MemoryTable>()),
      current_(owned_.get()),
      generation_(owned_->generation()) {}

GuestMemory::~GuestMemory() { publish(std::make_shared<const MemoryTable>()); }

void GuestMemory::set_regions(std::span<const MemoryRegionInfo> regions, std::vector<UniqueFd> fds) {
  if (regions.size() > kMaxSetMemTableRegions) {
    throw_error("SET_MEM_TABLE with ", regions.size(), " regions: at most ", kMaxSetMemTableRegions);
  }
  if (fds.size() != regions.size()) {
    throw_error("SET_MEM_TABLE with ", regions.size(), " regions but ", fds.size(), " fds");
  }
  // Map everything before touching the current table: on a throw the new mappings unmap as
  // `mapped` unwinds and the old table stays published.
  std::vector<std::shared_ptr<const MappedRegion>> mapped;
  mapped.reserve(regions.size());
  for (std::size_t i = 0; i < regions.size(); ++i) mapped.push_back(MappedRegion::map(regions[i], std::move(fds[i])));
  publish(std::make_shared<const MemoryTable>(std::move(mapped), owned_->log(), owned_->log_all()));
}

void GuestMemory::add_region(const MemoryRegionInfo& region, UniqueFd fd) {
  if (owned_->num_regions() >= kMaxMemSlots) {
    throw_error("ADD_MEM_REG ", describe(region), ": all ", kMaxMemSlots, " memory slots in use");
  }
  auto regions = owned_->regions();
  regions.push_back(MappedRegion::map(region, std::move(fd)));
  publish(std::make_shared<const MemoryTable>(std::move(regions), owned_->log(), owned_->log_all()));
}

void GuestMemory::remove_region(const MemoryRegionInfo& region) {
  auto regions = owned_->regions();
  auto it = std::find_if(regions.begin(), regions.end(), [&](const auto& r) {
    return r->gpa_start() == region.guest_phys_addr && r->info().memory_size == region.memory_size &&
           r->uva_start() == region.userspace_addr;
  });
  if (it == regions.end()) {
    throw_error("REM_MEM_REG ", describe(region), " userspace_addr ", hex(region.userspace_addr),
                ": no such region");
  }
  regions.erase(it);
  publish(std::make_shared<const MemoryTable>(std::move(regions), owned_->log(), owned_->log_all()));
}

void GuestMemory::set_log(std::shared_ptr<DirtyLog> log) {
  publish(std::make_shared<const MemoryTable>(owned_->regions(), std::move(log), owned_->log_all()));
}

void GuestMemory::set_log_all(bool log_all) {
  publish(std::make_shared<const MemoryTable>(owned_->regions(), owned_->log(), log_all));
}

void GuestMemory::clear() { publish(std::make_shared<const MemoryTable>()); }

void GuestMemory::publish(std::shared_ptr<const MemoryTable> table) {
  std::shared_ptr<const MemoryTable> old = std::exchange(owned_, std::move(table));
  // Release: the new table's contents (and its regions' mappings) are visible to a poller
  // that acquires the pointer in current().
  current_.store(owned_.get(), std::memory_order_release);
  generation_.store(owned_->generation(), std::memory_order_relaxed);
  // Once every poller passed a quiescent point none can still hold `old`; dropping it then
  // unmaps the regions that only it referenced.
  domain_.synchronize();
}

}  // namespace vhostd
