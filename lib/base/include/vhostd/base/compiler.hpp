// vhostd base: small compiler and CPU helpers shared by the data path.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace vhostd {

inline constexpr std::size_t kCacheLine = 64;

#define VHOSTD_LIKELY(x) __builtin_expect(!!(x), 1)
#define VHOSTD_UNLIKELY(x) __builtin_expect(!!(x), 0)

// Tells the CPU we are spinning (PAUSE on x86), easing the sibling hyperthread.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

inline std::uint64_t read_cycles() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_ia32_rdtsc();
#else
  return static_cast<std::uint64_t>(__builtin_readcyclecounter());
#endif
}

// Adds n to a counter that only the calling thread writes: a relaxed load and store, no locked
// instruction; other threads read whole values at any time (stats).
inline void add_single_writer(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace vhostd
