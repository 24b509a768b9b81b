// Unit tests for vhostd/memory/numa.hpp: the NUMA node of a mapped page (memfd guest memory,
// pages not yet present, unmapped addresses) and NodeLocalBuffer (normal pages always; the
// hugepage path only where hugepages are reserved).
#include <gtest/gtest.h>
#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <fstream>
#include <string>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/memory/numa.hpp"

namespace vhostd {
namespace {

const std::size_t kPage = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));

UniqueFd make_memfd(std::uint64_t size) {
  UniqueFd fd(::memfd_create("numa-test", MFD_CLOEXEC));
  if (!fd) throw_errno("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("ftruncate");
  return fd;
}

bool resident(const void* page) {
  unsigned char vec = 0;
  if (::mincore(const_cast<void*>(page), kPage, &vec) != 0) return false;
  return (vec & 1) != 0;
}

// mincore() fails with ENOMEM exactly when part of the range is not mapped.
bool mapped(const void* page) {
  unsigned char vec = 0;
  return ::mincore(const_cast<void*>(page), kPage, &vec) == 0;
}

long read_proc_number(const std::string& path) {
  std::ifstream in(path);
  long value = 0;
  if (!(in >> value)) return 0;
  return value;
}

// A page of a fresh memfd mapping, as guest memory arrives: shared, never touched.
class MemfdPage : public ::testing::Test {
 protected:
  void SetUp() override {
    fd_ = make_memfd(4 * kPage);
    base_ = ::mmap(nullptr, 4 * kPage, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    ASSERT_NE(base_, MAP_FAILED);
  }
  void TearDown() override { ::munmap(base_, 4 * kPage); }
  std::uint8_t* page(std::size_t i) const { return static_cast<std::uint8_t*>(base_) + i * kPage; }

  UniqueFd fd_;
  void* base_ = nullptr;
};

TEST_F(MemfdPage, UntouchedPageIsFaultedInAndItsNodeReported) {
  ASSERT_FALSE(resident(page(1))) << "a fresh memfd page should not be present yet";
  const int node = numa_node_of_address(page(1) + 123);  // any address inside the page
  if (numa_supported()) {
    ASSERT_GE(node, 0) << "a mapped page must have a node";
    EXPECT_LE(node, ::numa_max_node());
    if (::numa_max_node() == 0) {
      EXPECT_EQ(node, 0) << "one-node machine";
    }
    EXPECT_TRUE(resident(page(1))) << "the page was not faulted in before the second query";
    // The kernel's own answer for the now present page.
    int expected = -1;
    ASSERT_EQ(::get_mempolicy(&expected, nullptr, 0, page(1), MPOL_F_NODE | MPOL_F_ADDR), 0);
    EXPECT_EQ(node, expected);
  } else {
    EXPECT_EQ(node, 0) << "without NUMA support every address is on node 0";
  }
  EXPECT_FALSE(resident(page(2))) << "only the probed page may be touched";
}

TEST_F(MemfdPage, PageBoundToTheLastNodeIsReportedThere) {
  if (!numa_supported()) GTEST_SKIP() << "no NUMA support in this kernel";
  const int last = ::numa_max_node();
  // An anonymous page bound to the highest node (node 0 on a one-node machine), then touched.
  void* anon = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(anon, MAP_FAILED);
  unsigned long mask = 1ul << last;
  ASSERT_EQ(::mbind(anon, kPage, MPOL_BIND, &mask, sizeof mask * 8 + 1, 0), 0);
  *static_cast<volatile std::uint8_t*>(anon) = 1;
  EXPECT_EQ(numa_node_of_address(anon), last);
  ::munmap(anon, kPage);
}

TEST(NumaNodeOfAddress, UnmappedAddressIsUnknown) {
  if (!numa_supported()) GTEST_SKIP() << "no NUMA support: every address reads as node 0";
  void* p = ::mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(p, MAP_FAILED);
  ASSERT_EQ(::munmap(p, kPage), 0);
  ASSERT_FALSE(mapped(p));
  EXPECT_EQ(numa_node_of_address(p), -1);  // and no SIGSEGV: an unmapped page is never touched
  EXPECT_EQ(numa_node_of_address(nullptr), -1);
}

TEST(MappedRegionNode, RecordedAfterMapping) {
  MemoryRegionInfo info{0x100000, 8 * kPage, 0x7f0000000000, kPage};
  auto region = MappedRegion::map(info, make_memfd(9 * kPage));
  if (numa_supported()) {
    ASSERT_GE(region->numa_node(), 0);
    EXPECT_LE(region->numa_node(), ::numa_max_node());
    EXPECT_EQ(region->numa_node(), numa_node_of_address(region->host_base()));
  } else {
    EXPECT_EQ(region->numa_node(), 0);
  }
}

TEST(NodeLocalBuffer, NormalPagesOnTheRequestedNodeZeroedAndWritable) {
  NodeLocalBuffer buffer = NodeLocalBuffer::allocate(3 * kPage + 1, 0);
  ASSERT_NE(buffer.data(), nullptr);
  ASSERT_GE(buffer.size(), 3 * kPage + 1);
  auto* bytes = static_cast<std::uint8_t*>(buffer.data());
  for (std::size_t i = 0; i < buffer.size(); ++i) ASSERT_EQ(bytes[i], 0) << "byte " << i;
  for (std::size_t i = 0; i < buffer.size(); i += kPage) {
    EXPECT_TRUE(resident(bytes + i)) << "page " << i / kPage << " not populated up front";
    bytes[i] = 0xab;
  }
  if (read_proc_number("/proc/sys/vm/nr_hugepages") == 0) {
    EXPECT_FALSE(buffer.hugepages()) << "no hugepage is reserved";
    EXPECT_EQ(buffer.size(), 4 * kPage) << "normal pages: rounded to the page size";
  }
  if (numa_supported()) {
    EXPECT_EQ(buffer.bound_node(), 0);
    EXPECT_EQ(numa_node_of_address(buffer.data()), 0);
  } else {
    EXPECT_EQ(buffer.bound_node(), -1);
  }
}

TEST(NodeLocalBuffer, HugepageWhenOneIsFree) {
  if (read_proc_number("/proc/sys/vm/nr_hugepages") == 0) {
    GTEST_SKIP() << "no hugepage reserved (/proc/sys/vm/nr_hugepages is 0): the hugepage path "
                    "cannot be exercised here";
  }
  NodeLocalBuffer buffer = NodeLocalBuffer::allocate(1000, 0);
  // Another process may have taken every reserved page: then normal pages are the right answer.
  if (!buffer.hugepages()) GTEST_SKIP() << "hugepages reserved but none free right now";
  EXPECT_EQ(buffer.size(), std::size_t{2} << 20);
  static_cast<std::uint8_t*>(buffer.data())[(std::size_t{2} << 20) - 1] = 1;
}

TEST(NodeLocalBuffer, NodeThisMachineLacksStillAllocatesUnbound) {
  const int missing = numa_supported() ? ::numa_max_node() + 1 : 1;
  NodeLocalBuffer buffer = NodeLocalBuffer::allocate(kPage, missing);
  ASSERT_NE(buffer.data(), nullptr);
  EXPECT_EQ(buffer.bound_node(), -1);
  static_cast<std::uint8_t*>(buffer.data())[0] = 1;
  NodeLocalBuffer negative = NodeLocalBuffer::allocate(kPage, -1);
  EXPECT_EQ(negative.bound_node(), -1);
}

TEST(NodeLocalBuffer, ZeroBytesIsAnError) { EXPECT_THROW(NodeLocalBuffer::allocate(0, 0), Error); }

TEST(NodeLocalBuffer, UnmappedOnDestructionMovedOwnershipKept) {
  void* address = nullptr;
  {
    NodeLocalBuffer first = NodeLocalBuffer::allocate(kPage, 0);
    address = first.data();
    NodeLocalBuffer second = std::move(first);
    EXPECT_EQ(first.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
    EXPECT_EQ(second.data(), address);
    NodeLocalBuffer third;
    third = std::move(second);
    EXPECT_EQ(third.data(), address);
    EXPECT_TRUE(mapped(address));
  }
  EXPECT_FALSE(mapped(address)) << "the mapping outlived its owner";
}

}  // namespace
}  // namespace vhostd
