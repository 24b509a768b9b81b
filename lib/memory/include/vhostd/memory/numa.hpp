// vhostd memory: NUMA placement of host memory (libnuma / the NUMA system calls).
//
// Owns: finding the NUMA node of a mapped page (guest memory regions are probed once, after
// mapping) and NodeLocalBuffer, the memory each lcore's own state lives in: on the lcore's node,
// from a 2 MB hugepage when one is free. Control path only (system calls, page faults).
//
// Works on a machine without NUMA support (numa_available() < 0: every address is on node 0 and
// allocations are plain pages) and without reserved hugepages (normal pages).
#pragma once

#include <cstddef>

namespace vhostd {

// Whether the kernel answers NUMA policy calls (libnuma's numa_available()).
bool numa_supported() noexcept;

// The NUMA node of the page holding `address`, or -1 when it cannot be told (the address is not
// mapped, or the kernel refuses the query). A mapped page that is not present yet is faulted in
// with one volatile read, then asked again: the caller guarantees that reading one byte there
// cannot fault fatally (a readable mapping inside its file). Without NUMA support: 0.
int numa_node_of_address(const void* address) noexcept;

// Zeroed memory for one lcore's state, preferably on NUMA node `node`. Tries one MAP_HUGETLB
// mapping of 2 MB pages first, then normal pages; binds it to the node with MPOL_PREFERRED
// (so a node short of memory, or a node this machine does not have, never makes it fail), then
// touches every page so nothing faults later on the data path. Unmapped on destruction.
class NodeLocalBuffer {
 public:
  NodeLocalBuffer() = default;
  // Throws Error when no memory can be mapped at all. `bytes` must be non-zero.
  static NodeLocalBuffer allocate(std::size_t bytes, int node);
  ~NodeLocalBuffer();
  NodeLocalBuffer(NodeLocalBuffer&& other) noexcept;
  NodeLocalBuffer& operator=(NodeLocalBuffer&& other) noexcept;
  NodeLocalBuffer(const NodeLocalBuffer&) = delete;
  NodeLocalBuffer& operator=(const NodeLocalBuffer&) = delete;

  void* data() const noexcept { return base_; }
  // The mapping's length: `bytes` rounded up to the page size used.
  std::size_t size() const noexcept { return length_; }
  bool hugepages() const noexcept { return hugepages_; }
  // The node the memory was bound to (preferred), or -1 when it was not bound (no NUMA
  // support, node < 0 or not a node of this machine, or mbind refused).
  int bound_node() const noexcept { return bound_node_; }

 private:
  void release() noexcept;
  void* base_ = nullptr;
  std::size_t length_ = 0;
  bool hugepages_ = false;
  int bound_node_ = -1;
};

}  // namespace vhostd
