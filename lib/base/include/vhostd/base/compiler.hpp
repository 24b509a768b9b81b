// vhostd base: small compiler and CPU helpers shared by the data path.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

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

#if defined(__x86_64__) || defined(__i386__)
// Whether this CPU has PREFETCHW (CPUID 0x80000001 ECX bit 8: every Intel core since Broadwell,
// every AMD core). A portable build may not emit it unconditionally; read once at start-up.
inline const bool kCpuHasPrefetchw = [] {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid(0x80000001u, &a, &b, &c, &d) != 0 && (c & (1u << 8)) != 0;
}();
#endif

// Prefetches of the start of a guest buffer before the data path reads or writes it: the cache
// lines of its first bytes, at most kPrefetchMaxLines of them (a packet's headers; a small packet
// whole). Hints only: p need not be mapped, nothing is read. The lines are usually in the other
// core's cache (the guest's), so each miss is a cross-core transfer; issued for a whole burst
// first, the transfers overlap instead of being paid one after another.
inline constexpr std::size_t kPrefetchMaxLines = 3;

namespace detail {
// Calls prefetch(line, for_write) for each cache line of [p, p + read_len + write_len), at most
// kPrefetchMaxLines of them; for_write is true for a line holding any of the last write_len
// bytes, false for a line holding only the first read_len.
template <typename Prefetch>
inline void for_each_prefetch_line(const void* p, std::size_t read_len, std::size_t write_len,
                                   Prefetch prefetch) noexcept {
  const auto start = reinterpret_cast<std::uintptr_t>(p);
  const std::uintptr_t first = start & ~(kCacheLine - 1);
  const std::uintptr_t end = start + read_len + write_len;
  const std::uintptr_t first_written = write_len == 0 ? end : (start + read_len) & ~(kCacheLine - 1);
  const std::uintptr_t stop = end < first + kPrefetchMaxLines * kCacheLine ? end : first + kPrefetchMaxLines * kCacheLine;
#pragma GCC unroll 3
  for (std::uintptr_t line = first; line < stop; line += kCacheLine) {
    prefetch(reinterpret_cast<const char*>(line), line >= first_written);
  }
}

// For writing: the line arrives owned (PREFETCHW), so the store that follows does not wait for
// the other core to give it up. Without PREFETCHW, a read prefetch (half the wait).
inline void prefetch_line_for_write(const char* line) noexcept {
#if defined(__PRFCHW__)
  __builtin_prefetch(line, 1, 3);
#elif defined(__x86_64__) || defined(__i386__)
  if (VHOSTD_LIKELY(kCpuHasPrefetchw)) {
    asm volatile("prefetchw %0" : : "m"(*line));  // only names the address: nothing is read
  } else {
    __builtin_prefetch(line, 1, 3);
  }
#else
  __builtin_prefetch(line, 1, 3);
#endif
}
}  // namespace detail

// A buffer whose first read_len bytes are only compared (and written where they differ: the
// virtio-net header of a recycled RX buffer, see write_unless_equal in drivers/net) and whose
// next write_len bytes are written: lines holding written bytes are prefetched for writing,
// lines holding only compared bytes for reading. Taking a compared line for writing would take
// it out of the guest's cache although nothing changes there, and the guest's next read of it
// would miss.
inline void prefetch_bytes_read_then_write(const void* p, std::size_t read_len, std::size_t write_len) noexcept {
  detail::for_each_prefetch_line(p, read_len, write_len, [](const char* line, bool for_write) {
    if (for_write) {
      detail::prefetch_line_for_write(line);
    } else {
      __builtin_prefetch(line, 0, 3);
    }
  });
}

// For reading only.
inline void prefetch_bytes(const void* p, std::size_t len) noexcept { prefetch_bytes_read_then_write(p, len, 0); }

// The same two for the data path's short spans, with no loop: the lines of the first and the
// last byte (every line of a span of up to 65 bytes, which any span of two lines is; the middle
// line of a longer one is left out). prefetch_packet_read_then_write(): `read_len` bytes (at
// most a line) compared, then write_len > 0 bytes written, as prefetch_bytes_read_then_write().
inline void prefetch_packet(const void* p, std::size_t len) noexcept {
  const char* c = static_cast<const char*>(p);
  __builtin_prefetch(c, 0, 3);
  __builtin_prefetch(c + len - 1, 0, 3);
}
inline void prefetch_packet_read_then_write(const void* p, std::size_t read_len, std::size_t write_len) noexcept {
  const char* c = static_cast<const char*>(p);
  const char* written = c + read_len;
  // The compared bytes' line for reading, unless it holds written bytes too.
  if (((reinterpret_cast<std::uintptr_t>(c) ^ reinterpret_cast<std::uintptr_t>(written)) & ~(kCacheLine - 1)) != 0) {
    __builtin_prefetch(c, 0, 3);
  }
  detail::prefetch_line_for_write(written);
  detail::prefetch_line_for_write(written + write_len - 1);
}

// Adds n to a counter that only the calling thread writes: a relaxed load and store, no locked
// instruction; other threads read whole values at any time (stats).
inline void add_single_writer(std::atomic<std::uint64_t>& counter, std::uint64_t n) noexcept {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace vhostd
