// vhostd memory: NUMA placement of host memory (see numa.hpp).
#include "vhostd/memory/numa.hpp"

#include <numa.h>
#include <numaif.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << MAP_HUGE_SHIFT)
#endif

namespace vhostd {

namespace {

constexpr std::size_t kHugePageSize = std::size_t{2} << 20;

std::size_t page_size() noexcept {
  const long page = ::sysconf(_SC_PAGESIZE);
  return page > 0 ? static_cast<std::size_t>(page) : 4096;
}

std::size_t round_up(std::size_t value, std::size_t align) noexcept {
  return (value + align - 1) / align * align;
}

// move_pages() with no target nodes only reports: status is the page's node, -ENOENT when the
// page is not present, -EFAULT when the address is not mapped.
int page_status(void* page) noexcept {
  int status = -EFAULT;
  if (::move_pages(0, 1, &page, nullptr, &status, 0) != 0) return -errno;
  return status;
}

// A node this machine has memory on (binding to any other is refused by the kernel).
bool node_usable(int node) noexcept {
  return node >= 0 && node <= ::numa_max_node() &&
         ::numa_bitmask_isbitset(::numa_all_nodes_ptr, static_cast<unsigned>(node)) != 0;
}

}  // namespace

bool numa_supported() noexcept {
  static const bool supported = ::numa_available() >= 0;
  return supported;
}

int numa_node_of_address(const void* address) noexcept {
  if (!numa_supported()) return 0;
  void* page = reinterpret_cast<void*>(reinterpret_cast<std::uintptr_t>(address) & ~(page_size() - 1));
  int status = page_status(page);
  if (status == -ENOENT) {
    // Mapped but never touched: no node yet. Fault it in (a read is enough for a shared file
    // mapping: the page cache page is allocated) and ask again. Only -ENOENT proves a mapping,
    // so an unmapped address is never touched.
    (void)*static_cast<const volatile std::uint8_t*>(page);
    status = page_status(page);
  }
  if (status >= 0) return status;
  // move_pages may be refused (no migration support) or report the shared zero page of a
  // private mapping as -EFAULT: get_mempolicy answers for any mapped address, and fails with
  // EFAULT for an unmapped one.
  int node = -1;
  if (::get_mempolicy(&node, nullptr, 0, page, MPOL_F_NODE | MPOL_F_ADDR) != 0) return -1;
  return node;
}

NodeLocalBuffer NodeLocalBuffer::allocate(std::size_t bytes, int node) {
  if (bytes == 0) throw_error("node-local buffer: size 0");
  NodeLocalBuffer buffer;
  // Hugepages first: one TLB entry for the whole state. Fails at once (ENOMEM) when no 2 MB
  // page is free, e.g. none reserved in /proc/sys/vm/nr_hugepages.
  std::size_t length = round_up(bytes, kHugePageSize);
  void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);
  if (base != MAP_FAILED) {
    buffer.hugepages_ = true;
  } else {
    length = round_up(bytes, page_size());
    base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) throw_errno("node-local buffer of ", bytes, " bytes: mmap");
  }
  buffer.base_ = base;
  buffer.length_ = length;

  // Bound before the first touch: the pages are allocated by the memset below, on the node.
  if (numa_supported() && node_usable(node)) {
    std::vector<unsigned long> mask(static_cast<std::size_t>(node) / (8 * sizeof(unsigned long)) + 1, 0);
    mask[static_cast<std::size_t>(node) / (8 * sizeof(unsigned long))] |=
        1ul << (static_cast<unsigned>(node) % (8 * sizeof(unsigned long)));
    // maxnode counts one more than the bits the kernel reads (as libnuma passes it).
    const unsigned long maxnode = mask.size() * 8 * sizeof(unsigned long) + 1;
    if (::mbind(base, length, MPOL_PREFERRED, mask.data(), maxnode, 0) == 0) {
      buffer.bound_node_ = node;
    } else {
      log_debug("node-local buffer: mbind to node ", node, ": ", std::strerror(errno), " (left unbound)");
    }
  }
  std::memset(base, 0, length);
  return buffer;
}

NodeLocalBuffer::~NodeLocalBuffer() { release(); }

NodeLocalBuffer::NodeLocalBuffer(NodeLocalBuffer&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      length_(std::exchange(other.length_, 0)),
      hugepages_(std::exchange(other.hugepages_, false)),
      bound_node_(std::exchange(other.bound_node_, -1)) {}

NodeLocalBuffer& NodeLocalBuffer::operator=(NodeLocalBuffer&& other) noexcept {
  if (this != &other) {
    release();
    base_ = std::exchange(other.base_, nullptr);
    length_ = std::exchange(other.length_, 0);
    hugepages_ = std::exchange(other.hugepages_, false);
    bound_node_ = std::exchange(other.bound_node_, -1);
  }
  return *this;
}

void NodeLocalBuffer::release() noexcept {
  if (base_ != nullptr) ::munmap(base_, length_);
  base_ = nullptr;
  length_ = 0;
}

}  // namespace vhostd
