// Unit tests for vhostd/memory/guest_memory.hpp: mapping real memfd (and hugetlbfs) regions,
// rejecting hostile descriptions, translation, the dirty log and table replacement under QSBR.
#include "vhostd/memory/guest_memory.hpp"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/base/quiescence.hpp"

namespace vhostd {
namespace {

using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();

UniqueFd make_memfd(const std::string& name, std::uint64_t size) {
  UniqueFd fd(::memfd_create(name.c_str(), MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate");
  return fd;
}

UniqueFd dup_fd(const UniqueFd& fd) { return UniqueFd(::dup(fd.get())); }

// A second, independent view of a file: what the frontend (QEMU) sees.
struct View {
  View(const UniqueFd& fd, std::size_t len) : len(len) {
    void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) throw_errno("mmap view");
    bytes = static_cast<std::uint8_t*>(p);
  }
  ~View() { ::munmap(bytes, len); }
  View(const View&) = delete;
  View& operator=(const View&) = delete;
  std::uint8_t* bytes;
  std::size_t len;
};

// Number of mappings of the memfd called `name` in this process: proves munmap happened.
int count_mappings(const std::string& name) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int count = 0;
  const std::string needle = "/memfd:" + name + " ";
  while (std::getline(maps, line)) {
    if (line.find(needle) != std::string::npos) ++count;
  }
  return count;
}

std::vector<UniqueFd> fds_of(const UniqueFd& fd, std::size_t n) {
  std::vector<UniqueFd> fds;
  for (std::size_t i = 0; i < n; ++i) fds.push_back(dup_fd(fd));
  return fds;
}

template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no Error thrown>";
}

// ---- MappedRegion ----

TEST(MappedRegion, HonoursMmapOffset) {
  UniqueFd fd = make_memfd("offset", 6 * kPage);
  const MemoryRegionInfo info{0x100000, 2 * kPage, 0x7f0000000000, 3 * kPage};
  const int fds_before = count_open_fds();
  auto region = MappedRegion::map(info, dup_fd(fd));
  EXPECT_EQ(count_open_fds(), fds_before) << "the region fd must be closed after mapping";
  EXPECT_EQ(region->gpa_start(), 0x100000u);
  EXPECT_EQ(region->gpa_end(), 0x100000u + 2 * kPage);
  EXPECT_EQ(region->uva_end(), 0x7f0000000000u + 2 * kPage);
  EXPECT_EQ(region->mapping_length() % static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)), 0u);
  EXPECT_GE(region->mapping_length(), 5 * kPage);

  View view(fd, 6 * kPage);
  region->host_base()[0] = 0x5a;
  region->host_base()[2 * kPage - 1] = 0xa5;
  EXPECT_EQ(view.bytes[3 * kPage], 0x5a);
  EXPECT_EQ(view.bytes[5 * kPage - 1], 0xa5);
  view.bytes[3 * kPage + 7] = 0x42;  // and the other way round
  EXPECT_EQ(region->host_base()[7], 0x42);
}

TEST(MappedRegion, UnmapsWhenLastReferenceGoes) {
  UniqueFd fd = make_memfd("unmap-last", kPage);
  auto region = MappedRegion::map({0, kPage, 0x1000, 0}, dup_fd(fd));
  EXPECT_EQ(count_mappings("unmap-last"), 1);
  region.reset();
  EXPECT_EQ(count_mappings("unmap-last"), 0);
}

// A hugetlbfs mount with free huge pages, or the reason there is none.
struct HugeMount {
  std::string path;
  std::string skip_reason;
};

HugeMount find_hugetlbfs() {
  std::ifstream mounts("/proc/mounts");
  std::string dev, dir, type, rest;
  std::string path;
  while (mounts >> dev >> dir >> type && std::getline(mounts, rest)) {
    if (type == "hugetlbfs") {
      path = dir;
      break;
    }
  }
  if (path.empty()) return {"", "no hugetlbfs mount in /proc/mounts"};
  std::ifstream meminfo("/proc/meminfo");
  std::string key;
  long value = 0;
  while (meminfo >> key >> value) {
    if (key == "HugePages_Free:") {
      if (value <= 0) return {"", "hugetlbfs mounted at " + path + " but HugePages_Free is 0"};
      return {path, ""};
    }
    std::getline(meminfo, rest);
  }
  return {"", "no HugePages_Free in /proc/meminfo"};
}

TEST(MappedRegion, HugetlbfsWithMmapOffset) {
  HugeMount mount = find_hugetlbfs();
  if (mount.path.empty()) GTEST_SKIP() << mount.skip_reason;
  std::string tmpl = mount.path + "/vhostd-test-XXXXXX";
  UniqueFd fd(::mkstemp(tmpl.data()));
  if (!fd) GTEST_SKIP() << "cannot create a file in " << mount.path << ": " << std::strerror(errno);
  ::unlink(tmpl.c_str());
  struct stat st {};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  const std::uint64_t huge = static_cast<std::uint64_t>(st.st_blksize);
  if (::ftruncate(fd.get(), static_cast<off_t>(huge)) != 0) GTEST_SKIP() << "cannot size a huge page file";

  // Half a huge page in: the mapping itself must still start on a huge page boundary.
  const MemoryRegionInfo info{0x40000000, huge / 2, 0x7f0040000000, huge / 2};
  std::shared_ptr<const MappedRegion> region;
  try {
    region = MappedRegion::map(info, dup_fd(fd));
  } catch (const Error& e) {
    if (std::string(e.what()).find("mmap") != std::string::npos) GTEST_SKIP() << "no huge page available: " << e.what();
    throw;
  }
  EXPECT_EQ(region->mapping_length(), huge);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(region->host_base()) % huge, huge / 2);
  region->host_base()[0] = 0x11;
  region->host_base()[huge / 2 - 1] = 0x22;
  View view(fd, huge);
  EXPECT_EQ(view.bytes[huge / 2], 0x11);
  EXPECT_EQ(view.bytes[huge - 1], 0x22);
}

TEST(MappedRegion, RejectsHostileDescriptions) {
  UniqueFd fd = make_memfd("reject", 4 * kPage);
  const int fds_before = count_open_fds();
  auto rejects = [&](const MemoryRegionInfo& info, const char* expected) {
    std::string message = error_of([&] { MappedRegion::map(info, dup_fd(fd)); });
    EXPECT_THAT(message, HasSubstr(expected)) << "gpa " << info.guest_phys_addr;
    EXPECT_THAT(message, HasSubstr("memory region gpa 0x"));
  };
  rejects({0x1000, 0, 0x1000, 0}, "memory_size is 0");
  rejects({kMax - kPage + 1, 2 * kPage, 0x1000, 0}, "gpa+size overflows");
  rejects({0x1000, kPage, kMax - 10, 0}, "userspace_addr 0xfffffffffffffff5+size overflows");
  rejects({0x1000, 2 * kPage, 0x1000, kMax - kPage}, "mmap_offset 0xffffffffffffefff+size overflows");
  rejects({0x1000, 2 * kPage, 0x1000, 3 * kPage}, "mmap_offset+size 0x5000 beyond file size 0x4000");
  rejects({0x1000, 5 * kPage, 0x1000, 0}, "beyond file size 0x4000");
  EXPECT_EQ(count_open_fds(), fds_before) << "rejected fds must be closed too";

  // Exactly filling the file is fine.
  EXPECT_NO_THROW(MappedRegion::map({0x1000, 2 * kPage, 0x1000, 2 * kPage}, dup_fd(fd)));
}

TEST(MappedRegion, RejectsNonRegularFds) {
  const MemoryRegionInfo info{0, kPage, 0x1000, 0};
  EXPECT_THAT(error_of([&] { MappedRegion::map(info, make_eventfd()); }), HasSubstr("not a regular file"));
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  UniqueFd write_end(pipe_fds[1]);
  EXPECT_THAT(error_of([&] { MappedRegion::map(info, UniqueFd(pipe_fds[0])); }), HasSubstr("not a regular file"));
  EXPECT_THAT(error_of([&] { MappedRegion::map(info, UniqueFd()); }), HasSubstr("no fd"));
}

// ---- MemoryTable: translation ----

// Three regions backed by one memfd at different offsets, passed out of order, with uva order
// differing from gpa order:
//   A gpa [0x0000, 0x4000)   uva 0x900000  file 0x0000
//   B gpa [0x4000, 0x8000)   uva 0x100000  file 0x4000 (adjacent to A in gpa)
//   C gpa [0x10000, 0x12000) uva 0x500000  file 0x8000 (after a gap)
class TableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = make_memfd("table", 0xa000);
    view_ = std::make_unique<View>(fd_, 0xa000);
    auto a = MappedRegion::map({0x0, 0x4000, 0x900000, 0x0}, dup_fd(fd_));
    auto b = MappedRegion::map({0x4000, 0x4000, 0x100000, 0x4000}, dup_fd(fd_));
    auto c = MappedRegion::map({0x10000, 0x2000, 0x500000, 0x8000}, dup_fd(fd_));
    table_ = std::make_unique<MemoryTable>(std::vector{c, a, b}, nullptr, false);
  }
  std::uint8_t* host(std::size_t region, std::uint64_t off) { return table_->region(region).host_base() + off; }

  UniqueFd fd_;
  std::unique_ptr<View> view_;
  std::unique_ptr<MemoryTable> table_;
};

TEST_F(TableTest, SortsByGpa) {
  ASSERT_EQ(table_->num_regions(), 3u);
  EXPECT_EQ(table_->region(0).gpa_start(), 0x0u);
  EXPECT_EQ(table_->region(1).gpa_start(), 0x4000u);
  EXPECT_EQ(table_->region(2).gpa_start(), 0x10000u);
}

TEST_F(TableTest, TranslateGpaBounds) {
  EXPECT_EQ(table_->translate_gpa(0x10, 4), host(0, 0x10));
  EXPECT_EQ(table_->translate_gpa(0x4010, 4), host(1, 0x10));
  EXPECT_EQ(table_->translate_gpa(0x3000, 0x1000), host(0, 0x3000)) << "range ending exactly at the region end";
  EXPECT_EQ(table_->translate_gpa(0x11fff, 1), host(2, 0x1fff)) << "last byte of memory";
  EXPECT_EQ(table_->translate_gpa(0x10000, 0x2000), host(2, 0)) << "the whole region";
  EXPECT_EQ(table_->translate_gpa(0x10000, 0x2001), nullptr) << "one byte past the end";
  EXPECT_EQ(table_->translate_gpa(0x12000, 1), nullptr) << "first byte past the end";
  EXPECT_EQ(table_->translate_gpa(0x12000, 0), nullptr) << "len 0 outside memory";
  EXPECT_EQ(table_->translate_gpa(0x3fff, 2), nullptr) << "spans two regions: not one pointer";
  EXPECT_EQ(table_->translate_gpa(0x8000, 1), nullptr) << "gap";
  EXPECT_EQ(table_->translate_gpa(0xffff, 1), nullptr) << "last gap byte";
  EXPECT_EQ(table_->translate_gpa(0x10, kMax), nullptr) << "gpa+len overflows";
  EXPECT_EQ(table_->translate_gpa(kMax - 1, 4), nullptr) << "gpa near UINT64_MAX";
  EXPECT_EQ(table_->translate_gpa(kMax, 1), nullptr);

  // The pointer is the right byte of the file: host_base + (gpa - start) at mmap_offset.
  *table_->translate_gpa(0x4123, 1) = 0x77;
  EXPECT_EQ(view_->bytes[0x4000 + 0x123], 0x77);
  *table_->translate_gpa(0x10042, 1) = 0x78;
  EXPECT_EQ(view_->bytes[0x8000 + 0x42], 0x78);
}

TEST_F(TableTest, HintAnyValueIsSafeAndUpdated) {
  for (std::uint32_t garbage : {0u, 1u, 2u, 3u, 7u, 509u, 100000u, 0xffffffffu}) {
    std::uint32_t hint = garbage;
    EXPECT_EQ(table_->translate_gpa(0x10008, 8, hint), host(2, 8)) << "hint " << garbage;
    EXPECT_EQ(hint, 2u);
    hint = garbage;
    EXPECT_EQ(table_->translate_gpa(0x8000, 1, hint), nullptr) << "hint " << garbage;
    hint = garbage;
    EXPECT_EQ(table_->translate_gpa(0x5000, 1, hint), host(1, 0x1000)) << "hint " << garbage;
    EXPECT_EQ(hint, 1u);
  }
  // A hint naming a wrong (but valid) region is not trusted.
  std::uint32_t hint = 0;
  EXPECT_EQ(table_->translate_gpa(0x11000, 1, hint), host(2, 0x1000));
}

TEST_F(TableTest, ForEachPieceSplitsAdjacentRegions) {
  std::vector<std::tuple<std::uint8_t*, std::uint64_t, std::uint64_t>> pieces;
  std::uint32_t hint = 77;
  bool ok = table_->for_each_piece(0x3000, 0x2000, hint, [&](std::uint8_t* p, std::uint64_t gpa, std::uint64_t len) {
    pieces.emplace_back(p, gpa, len);
  });
  ASSERT_TRUE(ok);
  ASSERT_EQ(pieces.size(), 2u);
  EXPECT_EQ(pieces[0], std::make_tuple(host(0, 0x3000), std::uint64_t{0x3000}, std::uint64_t{0x1000}));
  EXPECT_EQ(pieces[1], std::make_tuple(host(1, 0), std::uint64_t{0x4000}, std::uint64_t{0x1000}));

  pieces.clear();
  ASSERT_TRUE(table_->for_each_piece(0x100, 0x10, hint, [&](std::uint8_t* p, std::uint64_t gpa, std::uint64_t len) {
    pieces.emplace_back(p, gpa, len);
  }));
  ASSERT_EQ(pieces.size(), 1u);
  EXPECT_EQ(pieces[0], std::make_tuple(host(0, 0x100), std::uint64_t{0x100}, std::uint64_t{0x10}));
}

TEST_F(TableTest, ForEachPieceRejectsGapsWithoutCallingFn) {
  int calls = 0;
  std::uint32_t hint = 0;
  auto count = [&](std::uint8_t*, std::uint64_t, std::uint64_t) { ++calls; };
  EXPECT_FALSE(table_->for_each_piece(0x7000, 0x2000, hint, count)) << "runs from B into the gap";
  EXPECT_FALSE(table_->for_each_piece(0x0, 0x10001, hint, count)) << "A, B, gap, C";
  EXPECT_FALSE(table_->for_each_piece(0x11000, 0x1001, hint, count)) << "past the end";
  EXPECT_FALSE(table_->for_each_piece(0x10, kMax, hint, count)) << "overflow";
  EXPECT_EQ(calls, 0);
}

TEST_F(TableTest, WriteAndReadSpanRegions) {
  const char data[] = "abcdefgh";
  ASSERT_TRUE(table_->write(0x3ffc, data, 8));
  EXPECT_EQ(std::memcmp(view_->bytes + 0x3ffc, "abcd", 4), 0);
  EXPECT_EQ(std::memcmp(view_->bytes + 0x4000, "efgh", 4), 0);  // B's file offset is 0x4000
  char back[8] = {};
  ASSERT_TRUE(table_->read(0x3ffc, back, 8));
  EXPECT_EQ(std::memcmp(back, data, 8), 0);

  std::memset(back, 'z', sizeof back);
  EXPECT_FALSE(table_->read(0x7ffc, back, 8)) << "into the gap";
  EXPECT_EQ(back[0], 'z') << "nothing copied on failure";
  EXPECT_FALSE(table_->write(0x7ffc, data, 8));
  EXPECT_EQ(view_->bytes[0x7ffc], 0) << "nothing written on failure";
}

TEST_F(TableTest, TranslateUva) {
  EXPECT_EQ(table_->translate_uva(0x100010, 4), host(1, 0x10));
  EXPECT_EQ(table_->translate_uva(0x900000, 0x4000), host(0, 0));
  EXPECT_EQ(table_->translate_uva(0x501fff, 1), host(2, 0x1fff));
  EXPECT_EQ(table_->translate_uva(0x501fff, 2), nullptr) << "one past the end";
  EXPECT_EQ(table_->translate_uva(0x502000, 0), nullptr);
  EXPECT_EQ(table_->translate_uva(0xfffff, 1), nullptr) << "below every region";
  EXPECT_EQ(table_->translate_uva(0x104000, 1), nullptr) << "gap after B";
  EXPECT_EQ(table_->translate_uva(0x900010, kMax), nullptr) << "overflow";
  EXPECT_EQ(table_->translate_uva(kMax, 1), nullptr);

  std::uint64_t gpa = 0;
  ASSERT_TRUE(table_->uva_to_gpa(0x100010, gpa));
  EXPECT_EQ(gpa, 0x4010u);
  ASSERT_TRUE(table_->uva_to_gpa(0x903fff, gpa));
  EXPECT_EQ(gpa, 0x3fffu);
  ASSERT_TRUE(table_->uva_to_gpa(0x500000, gpa));
  EXPECT_EQ(gpa, 0x10000u);
  gpa = 0x1234;
  EXPECT_FALSE(table_->uva_to_gpa(0x904000, gpa));
  EXPECT_FALSE(table_->uva_to_gpa(0x0, gpa));
  EXPECT_EQ(gpa, 0x1234u) << "untouched when unmapped";
}

TEST(MemoryTable, RejectsOverlaps) {
  UniqueFd fd = make_memfd("overlap", 0x4000);
  auto a = MappedRegion::map({0x0, 0x2000, 0x100000, 0}, dup_fd(fd));
  auto gpa_overlap = MappedRegion::map({0x1fff, 0x1000, 0x200000, 0}, dup_fd(fd));
  auto uva_overlap = MappedRegion::map({0x8000, 0x1000, 0x101fff, 0}, dup_fd(fd));
  auto uva_contains = MappedRegion::map({0x9000, 0x4000, 0x0ff000, 0}, dup_fd(fd));
  auto adjacent = MappedRegion::map({0x2000, 0x1000, 0x102000, 0}, dup_fd(fd));
  EXPECT_THAT(error_of([&] { MemoryTable({a, gpa_overlap}, nullptr, false); }), HasSubstr("guest-physical"));
  EXPECT_THAT(error_of([&] { MemoryTable({uva_overlap, a}, nullptr, false); }), HasSubstr("userspace_addr"));
  EXPECT_THAT(error_of([&] { MemoryTable({a, uva_contains}, nullptr, false); }), HasSubstr("userspace_addr"));
  EXPECT_THAT(error_of([&] { MemoryTable({a, a}, nullptr, false); }), HasSubstr("overlaps"));
  EXPECT_NO_THROW(MemoryTable({adjacent, a}, nullptr, false)) << "touching is not overlapping";
}

TEST(MemoryTable, GenerationIsUnique) {
  MemoryTable a;
  MemoryTable b;
  EXPECT_NE(a.generation(), b.generation());
}

// ---- DirtyLog ----

std::vector<std::uint64_t> dirty_pages(const DirtyLog& log) {
  std::vector<std::uint64_t> pages;
  for (std::uint64_t page = 0; page < log.size_bytes() * 8; ++page) {
    if (log.is_dirty(page * kPage)) pages.push_back(page);
  }
  return pages;
}

std::vector<std::uint64_t> range(std::uint64_t first, std::uint64_t last) {
  std::vector<std::uint64_t> v;
  for (std::uint64_t p = first; p <= last; ++p) v.push_back(p);
  return v;
}

TEST(DirtyLog, MarksTouchedPagesOnly) {
  auto log = DirtyLog::anonymous(64);  // 512 pages
  log->mark(0x1234, 0);
  EXPECT_TRUE(dirty_pages(*log).empty()) << "len 0 marks nothing";
  log->mark(0x1234, 1);
  EXPECT_EQ(dirty_pages(*log), std::vector<std::uint64_t>{1});
  log->mark(3 * kPage - 1, 2);
  EXPECT_EQ(dirty_pages(*log), (std::vector<std::uint64_t>{1, 2, 3}));
  EXPECT_EQ(log->out_of_range(), 0u);
}

TEST(DirtyLog, LongRangesMatchPageByPage) {
  // Unaligned starts and ends around byte boundaries, and whole-byte runs.
  for (auto [first, last] : std::vector<std::pair<std::uint64_t, std::uint64_t>>{
           {0, 0}, {0, 7}, {0, 8}, {3, 5}, {5, 100}, {7, 8}, {8, 15}, {9, 200}, {1, 511}, {0, 511}}) {
    auto log = DirtyLog::anonymous(64);
    log->mark(first * kPage + 17, (last - first) * kPage + 1);  // from inside `first` to inside `last`
    EXPECT_EQ(dirty_pages(*log), range(first, last)) << first << ".." << last;
    EXPECT_EQ(log->out_of_range(), 0u);
  }
}

TEST(DirtyLog, OutOfRangeIsCountedNotWritten) {
  // A log in a memfd at offset 16: bytes around it must stay zero.
  UniqueFd fd = make_memfd("log", 64);
  View view(fd, 64);
  auto log = DirtyLog::map(dup_fd(fd), 1, 16);  // 1 byte = 8 pages
  log->mark(6 * kPage, 4 * kPage);              // pages 6..9: 6,7 in range, 8,9 not
  EXPECT_EQ(view.bytes[16], 0xc0);
  EXPECT_EQ(log->out_of_range(), 2u);
  log->mark(100 * kPage, 1);
  EXPECT_EQ(log->out_of_range(), 3u);
  log->mark(kMax - 10, 100);  // wraps: must not write anywhere
  EXPECT_GE(log->out_of_range(), 4u);
  for (std::size_t i = 0; i < 64; ++i) {
    if (i != 16) {
      EXPECT_EQ(view.bytes[i], 0) << "byte " << i;
    }
  }
  EXPECT_TRUE(log->is_dirty(7 * kPage));
  EXPECT_FALSE(log->is_dirty(8 * kPage));
}

TEST(DirtyLog, MapRejectsBadLogs) {
  UniqueFd fd = make_memfd("badlog", 4096);
  EXPECT_THAT(error_of([&] { DirtyLog::map(dup_fd(fd), 0, 0); }), HasSubstr("size is 0"));
  EXPECT_THAT(error_of([&] { DirtyLog::map(dup_fd(fd), kMax, 2); }), HasSubstr("overflows"));
  EXPECT_THAT(error_of([&] { DirtyLog::map(dup_fd(fd), 4096, 1); }), HasSubstr("beyond file size"));
  EXPECT_THAT(error_of([&] { DirtyLog::map(make_eventfd(), 8, 0); }), HasSubstr("not a regular file"));
  EXPECT_THAT(error_of([] { DirtyLog::anonymous(0); }), HasSubstr("bad size"));
}

class LoggingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = make_memfd("logging", 0x10000);
    region_ = MappedRegion::map({0x0, 0x10000, 0x700000, 0}, dup_fd(fd_));
    log_ = DirtyLog::anonymous(2);  // 16 pages: all of the region
  }
  UniqueFd fd_;
  std::shared_ptr<const MappedRegion> region_;
  std::shared_ptr<DirtyLog> log_;
};

TEST_F(LoggingTest, WriteMarksTouchedPages) {
  MemoryTable table({region_}, log_, true);
  ASSERT_TRUE(table.logging());
  std::uint8_t buf[3 * kPage] = {};
  ASSERT_TRUE(table.write(0x1234, buf, 1));
  EXPECT_EQ(dirty_pages(*log_), std::vector<std::uint64_t>{1});
  ASSERT_TRUE(table.write(0x4fff, buf, 2));
  EXPECT_EQ(dirty_pages(*log_), (std::vector<std::uint64_t>{1, 4, 5}));
  ASSERT_TRUE(table.write(0x8000, buf, 3 * kPage));
  EXPECT_EQ(dirty_pages(*log_), (std::vector<std::uint64_t>{1, 4, 5, 8, 9, 10}));
}

TEST_F(LoggingTest, WriteMarksOnlyWithLogAllAndLog) {
  std::uint8_t byte = 1;
  MemoryTable no_log_all({region_}, log_, false);
  EXPECT_FALSE(no_log_all.logging());
  ASSERT_TRUE(no_log_all.write(0x2000, &byte, 1));
  EXPECT_TRUE(dirty_pages(*log_).empty());

  MemoryTable no_log({region_}, nullptr, true);
  EXPECT_FALSE(no_log.logging());
  ASSERT_TRUE(no_log.write(0x2000, &byte, 1));  // must not crash

  MemoryTable logging({region_}, log_, true);
  ASSERT_TRUE(logging.read(0x3000, &byte, 1));
  EXPECT_TRUE(dirty_pages(*log_).empty()) << "read does not mark";
  EXPECT_FALSE(logging.write(0x10000, &byte, 1));
  EXPECT_TRUE(dirty_pages(*log_).empty()) << "failed write does not mark";
}

// ---- GuestMemory ----

// Reads one byte of guest memory through the current table, or -1 when unmapped.
int peek(const GuestMemory& mem, std::uint64_t gpa) {
  std::uint8_t* p = mem.current()->translate_gpa(gpa, 1);
  return p == nullptr ? -1 : *p;
}

class GuestMemoryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = make_memfd(name_, 0x10000);
    View view(fd_, 0x10000);
    for (std::size_t i = 0; i < 0x10000; ++i) view.bytes[i] = static_cast<std::uint8_t>(i / kPage);
  }
  // Two regions: gpa [0, 0x4000) at file 0, gpa [0x100000, 0x102000) at file 0x8000.
  void install_two() {
    const MemoryRegionInfo regions[] = {{0x0, 0x4000, 0x10000000, 0x0}, {0x100000, 0x2000, 0x20000000, 0x8000}};
    mem_.set_regions(regions, fds_of(fd_, 2));
  }
  void expect_two_intact() {
    ASSERT_EQ(mem_.current()->num_regions(), 2u);
    EXPECT_EQ(peek(mem_, 0x3fff), 3);
    EXPECT_EQ(peek(mem_, 0x100000), 8);
    EXPECT_EQ(peek(mem_, 0x101fff), 9);
    EXPECT_EQ(count_mappings(name_), 2);
  }

  const std::string name_ = "guest-memory";
  UniqueFd fd_;
  QsbrDomain domain_;
  GuestMemory mem_{domain_};
};

TEST_F(GuestMemoryTest, StartsEmpty) {
  ASSERT_NE(mem_.current(), nullptr);
  EXPECT_EQ(mem_.current()->num_regions(), 0u);
  EXPECT_EQ(mem_.snapshot().get(), mem_.current());
  EXPECT_EQ(peek(mem_, 0), -1);
}

TEST_F(GuestMemoryTest, SetRegionsReplacesAndUnmapsOld) {
  install_two();
  expect_two_intact();
  const MemoryTable* first = mem_.current();
  const MemoryRegionInfo one[] = {{0x0, 0x1000, 0x10000000, 0xf000}};
  mem_.set_regions(one, fds_of(fd_, 1));
  EXPECT_NE(mem_.current(), first);
  EXPECT_EQ(mem_.current()->num_regions(), 1u);
  EXPECT_EQ(peek(mem_, 0), 15);
  EXPECT_EQ(peek(mem_, 0x100000), -1);
  EXPECT_EQ(count_mappings(name_), 1) << "the old table's regions are unmapped";
  EXPECT_EQ(mem_.snapshot().get(), mem_.current());
}

TEST_F(GuestMemoryTest, SnapshotKeepsMappingsAlive) {
  install_two();
  std::shared_ptr<const MemoryTable> held = mem_.snapshot();
  mem_.clear();
  EXPECT_EQ(mem_.current()->num_regions(), 0u);
  EXPECT_EQ(count_mappings(name_), 2);
  EXPECT_EQ(*held->translate_gpa(0x100000, 1), 8);
  held.reset();
  EXPECT_EQ(count_mappings(name_), 0);
}

TEST_F(GuestMemoryTest, FailedSetRegionsKeepsOldTable) {
  install_two();
  const MemoryTable* before = mem_.current();
  const int fds_before = count_open_fds();
  auto fails = [&](std::vector<MemoryRegionInfo> regions, std::vector<UniqueFd> fds, const char* expected) {
    EXPECT_THAT(error_of([&] { mem_.set_regions(regions, std::move(fds)); }), HasSubstr(expected));
    EXPECT_EQ(mem_.current(), before);
    expect_two_intact();  // also: the new regions mapped before the failure are gone again
    EXPECT_EQ(count_open_fds(), fds_before) << "every passed fd is closed";
  };
  const MemoryRegionInfo good{0x0, 0x1000, 0x30000000, 0};
  fails({good, {0x1000, 0x1000, 0x30001000, 0}}, fds_of(fd_, 1), "2 regions but 1 fds");
  fails({good}, fds_of(fd_, 2), "1 regions but 2 fds");
  fails(std::vector<MemoryRegionInfo>(9, good), fds_of(fd_, 9), "at most 8");
  fails({good, {0x1000, 0x1000, 0x30001000, 0x10000}}, fds_of(fd_, 2), "beyond file size");
  fails({good, {0x1000, 0, 0x30001000, 0}}, fds_of(fd_, 2), "memory_size is 0");
  fails({good, {0x800, 0x1000, 0x30001000, 0}}, fds_of(fd_, 2), "guest-physical");
  fails({good, {0x1000, 0x1000, 0x30000800, 0}}, fds_of(fd_, 2), "userspace_addr");
  {
    std::vector<UniqueFd> fds = fds_of(fd_, 1);
    fds.push_back(make_eventfd());
    fails({good, {0x1000, 0x1000, 0x30001000, 0}}, std::move(fds), "not a regular file");
  }
  // Exactly 8 is fine.
  std::vector<MemoryRegionInfo> eight;
  for (std::uint64_t i = 0; i < 8; ++i) eight.push_back({i * kPage, kPage, 0x40000000 + i * kPage, i * kPage});
  mem_.set_regions(eight, fds_of(fd_, 8));
  EXPECT_EQ(mem_.current()->num_regions(), 8u);
  EXPECT_EQ(peek(mem_, 7 * kPage), 7);
}

TEST_F(GuestMemoryTest, AddRegionUpToMaxSlots) {
  UniqueFd page = make_memfd("slot", kPage);
  for (std::uint64_t i = 0; i < kMaxMemSlots; ++i) {
    mem_.add_region({i * 2 * kPage, kPage, 0x50000000 + i * 2 * kPage, 0}, dup_fd(page));
  }
  ASSERT_EQ(mem_.current()->num_regions(), kMaxMemSlots);
  EXPECT_EQ(count_mappings("slot"), static_cast<int>(kMaxMemSlots));
  const MemoryTable* full = mem_.current();
  EXPECT_THAT(error_of([&] { mem_.add_region({0x40000000, kPage, 0x90000000, 0}, dup_fd(page)); }),
              HasSubstr("509 memory slots"));
  EXPECT_EQ(mem_.current(), full);
  EXPECT_EQ(count_mappings("slot"), static_cast<int>(kMaxMemSlots));

  // Every slot translates, by gpa and by uva (the uva index covers 509 regions).
  for (std::uint64_t i = 0; i < kMaxMemSlots; ++i) {
    ASSERT_NE(mem_.current()->translate_gpa(i * 2 * kPage + kPage - 1, 1), nullptr) << i;
    ASSERT_EQ(mem_.current()->translate_gpa(i * 2 * kPage + kPage, 1), nullptr) << i;
    std::uint64_t gpa = 0;
    ASSERT_TRUE(mem_.current()->uva_to_gpa(0x50000000 + i * 2 * kPage + 5, gpa));
    ASSERT_EQ(gpa, i * 2 * kPage + 5);
  }

  mem_.remove_region({2 * kPage, kPage, 0x50000000 + 2 * kPage, 0});
  EXPECT_EQ(mem_.current()->num_regions(), kMaxMemSlots - 1);
  EXPECT_EQ(count_mappings("slot"), static_cast<int>(kMaxMemSlots) - 1) << "removed region is unmapped";
  EXPECT_EQ(mem_.current()->translate_gpa(2 * kPage, 1), nullptr);
  mem_.add_region({0x40000000, kPage, 0x90000000, 0}, dup_fd(page));
  EXPECT_EQ(mem_.current()->num_regions(), kMaxMemSlots);
}

TEST_F(GuestMemoryTest, AddAndRemoveRejections) {
  install_two();
  const MemoryTable* before = mem_.current();
  EXPECT_THAT(error_of([&] { mem_.add_region({0x3000, 0x2000, 0x60000000, 0}, dup_fd(fd_)); }),
              HasSubstr("guest-physical"));
  EXPECT_THAT(error_of([&] { mem_.add_region({0x200000, 0x1000, 0x10003000, 0}, dup_fd(fd_)); }),
              HasSubstr("userspace_addr"));
  EXPECT_THAT(error_of([&] { mem_.add_region({0x200000, 0x1000, 0x60000000, 0x10000}, dup_fd(fd_)); }),
              HasSubstr("beyond file size"));
  EXPECT_EQ(mem_.current(), before);
  expect_two_intact();

  // REM_MEM_REG matches gpa, size and userspace_addr (mmap_offset is not compared).
  EXPECT_THAT(error_of([&] { mem_.remove_region({0x0, 0x4000, 0x10001000, 0}); }), HasSubstr("no such region"));
  EXPECT_THAT(error_of([&] { mem_.remove_region({0x0, 0x3000, 0x10000000, 0}); }), HasSubstr("no such region"));
  EXPECT_THAT(error_of([&] { mem_.remove_region({0x1000, 0x4000, 0x10000000, 0}); }), HasSubstr("no such region"));
  EXPECT_EQ(mem_.current(), before);
  expect_two_intact();

  mem_.remove_region({0x0, 0x4000, 0x10000000, 0x1234});
  EXPECT_EQ(mem_.current()->num_regions(), 1u);
  EXPECT_EQ(peek(mem_, 0x0), -1);
  EXPECT_EQ(peek(mem_, 0x100000), 8);
  EXPECT_EQ(count_mappings(name_), 1);

  // Adding a region back works, and translation sees it.
  mem_.add_region({0x0, 0x1000, 0x10000000, 0x3000}, dup_fd(fd_));
  EXPECT_EQ(peek(mem_, 0x0), 3);
}

TEST_F(GuestMemoryTest, LogSettingsSurviveTableChanges) {
  auto log = DirtyLog::anonymous(8);
  mem_.set_log(log);
  mem_.set_log_all(true);
  EXPECT_TRUE(mem_.current()->logging());
  install_two();
  EXPECT_EQ(mem_.current()->log(), log);
  EXPECT_TRUE(mem_.current()->log_all());
  mem_.add_region({0x200000, 0x1000, 0x60000000, 0}, dup_fd(fd_));
  EXPECT_TRUE(mem_.current()->logging());
  std::uint8_t byte = 0;
  ASSERT_TRUE(mem_.current()->write(0x1000, &byte, 1));
  EXPECT_TRUE(log->is_dirty(0x1000));

  mem_.set_log_all(false);
  EXPECT_FALSE(mem_.current()->logging());
  EXPECT_EQ(mem_.current()->num_regions(), 3u) << "toggling LOG_ALL keeps the regions";
  mem_.set_log(nullptr);
  EXPECT_EQ(mem_.current()->log(), nullptr);
  mem_.clear();
  EXPECT_EQ(mem_.current()->num_regions(), 0u);
  EXPECT_EQ(count_mappings(name_), 0);
}

TEST_F(GuestMemoryTest, NoFdOrMappingLeakOverManyCycles) {
  install_two();
  mem_.clear();
  const int fds_before = count_open_fds();
  for (int i = 0; i < 1000; ++i) {
    install_two();
    mem_.clear();
  }
  EXPECT_EQ(count_open_fds(), fds_before);
  EXPECT_EQ(count_mappings(name_), 0);
}

TEST_F(GuestMemoryTest, DestructorUnmaps) {
  {
    QsbrDomain domain;
    GuestMemory mem(domain);
    const MemoryRegionInfo region{0x0, 0x1000, 0x1000, 0};
    mem.set_regions(std::span(&region, 1), fds_of(fd_, 1));
    EXPECT_EQ(count_mappings(name_), 1);
  }
  EXPECT_EQ(count_mappings(name_), 0);
}

// set_regions must not return (nor unmap) while a poller still holds the old table.
TEST_F(GuestMemoryTest, ReplacementWaitsForReader) {
  install_two();
  QsbrReader* reader = domain_.register_reader();
  const MemoryTable* held = mem_.current();  // the "poller" holds this until quiescent()
  std::atomic<bool> done{false};
  std::thread control([&] {
    mem_.clear();
    done.store(true);
  });
  std::this_thread::sleep_for(50ms);  // only proves "not yet"
  EXPECT_FALSE(done.load());
  EXPECT_EQ(*held->translate_gpa(0x100000, 1), 8) << "old table still mapped";
  EXPECT_EQ(count_mappings(name_), 2);
  reader->quiescent(domain_);
  control.join();
  EXPECT_TRUE(done.load());
  EXPECT_EQ(count_mappings(name_), 0);
  domain_.unregister_reader(reader);
}

// A poller thread reads through current() while the control thread swaps layouts; every swap
// unmaps the previous layout's mappings, so a reader touching a stale table would fault.
TEST(GuestMemorySwap, ConcurrentReaderNeverSeesUnmappedMemory) {
  constexpr std::uint8_t kA = 0xa1, kB = 0xb2;
  UniqueFd fd_a = make_memfd("swap-a", 0x20000);
  UniqueFd fd_b = make_memfd("swap-b", 0x20000);
  {
    View a(fd_a, 0x20000), b(fd_b, 0x20000);
    std::memset(a.bytes, kA, a.len);
    std::memset(b.bytes, kB, b.len);
  }
  // Both layouts map gpa [0, 0x4000); otherwise they differ.
  const MemoryRegionInfo layout_a[] = {{0x0, 0x4000, 0x10000000, 0x1000}, {0x10000, 0x4000, 0x20000000, 0x8000}};
  const MemoryRegionInfo layout_b[] = {
      {0x0, 0x8000, 0x30000000, 0x0}, {0x20000, 0x1000, 0x40000000, 0x10000}, {0x40000, 0x2000, 0x50000000, 0x0}};

  QsbrDomain domain;
  GuestMemory mem(domain);
  QsbrReader* reader = domain.register_reader();
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> iterations{0};
  std::uint64_t null_translations = 0, wrong_values = 0;
  std::set<int> seen;
  std::thread poller([&] {
    std::uint32_t hint = 0;
    while (!stop.load(std::memory_order_relaxed)) {
      const MemoryTable* t = mem.current();
      if (t->num_regions() != 0) {
        const std::uint8_t expected = t->num_regions() == 2 ? kA : kB;
        for (std::size_t i = 0; i < t->num_regions(); ++i) {
          const MappedRegion& r = t->region(i);
          std::uint8_t* first = t->translate_gpa(r.gpa_start(), 1, hint);
          std::uint8_t* last = t->translate_gpa(r.gpa_end() - 1, 1, hint);
          if (first == nullptr || last == nullptr) {
            ++null_translations;
            continue;
          }
          if (*first != expected || *last != expected) ++wrong_values;
          seen.insert(*first);
        }
        if (t->translate_gpa(0x3ff0, 0x10, hint) == nullptr) ++null_translations;
      }
      reader->quiescent(domain);
      // Relaxed: a progress counter; the test only waits for it to move.
      iterations.fetch_add(1, std::memory_order_relaxed);
    }
    reader->offline();
  });

  for (int swap = 0; swap < 240; ++swap) {
    if (swap % 2 == 0) {
      mem.set_regions(layout_a, fds_of(fd_a, 2));
    } else {
      mem.set_regions(layout_b, fds_of(fd_b, 3));
    }
    // Let the poller run a full iteration on the new table, so it sees every layout.
    const std::uint64_t n = iterations.load();
    while (iterations.load() < n + 2) std::this_thread::yield();
    EXPECT_LE(count_mappings("swap-a") + count_mappings("swap-b"), 3) << "old layouts are unmapped";
  }
  stop.store(true);
  poller.join();
  domain.unregister_reader(reader);

  EXPECT_EQ(null_translations, 0u);
  EXPECT_EQ(wrong_values, 0u);
  EXPECT_EQ(seen, (std::set<int>{kA, kB}));
}

}  // namespace
}  // namespace vhostd
