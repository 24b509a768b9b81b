// vhostd-fwd: the l2 mode's MAC learning table.
//
// A fixed-size open-addressed table, lock-free for the data lcores: each slot is one 64-bit
// word (48-bit MAC, 16-bit port + 1) and a 32-bit last-seen second, so a concurrent learn
// never tears an entry (the last writer of a slot wins, as in any learning switch). Entries
// older than the ageing time are ignored and overwritten. Lookups probe a bounded window.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>

namespace vhostd::fwd {

class MacTable {
 public:
  static constexpr std::size_t kSlots = 4096;  // power of two
  static constexpr std::size_t kProbe = 8;
  static constexpr int kNone = -1;

  explicit MacTable(std::uint32_t age_seconds = 300) : age_(age_seconds), slots_(new Slot[kSlots]) {}

  void set_now(std::uint32_t seconds) noexcept { now_.store(seconds, std::memory_order_relaxed); }
  void set_age(std::uint32_t seconds) noexcept { age_ = seconds; }

  // The port `mac` was last seen on, or kNone (unknown or aged out).
  int lookup(const std::uint8_t* mac) const noexcept {
    const std::uint64_t key = pack(mac);
    const std::uint32_t now = now_.load(std::memory_order_relaxed);
    for (std::size_t i = 0, s = hash(key); i < kProbe; ++i, s = (s + 1) & (kSlots - 1)) {
      const std::uint64_t entry = slots_[s].entry.load(std::memory_order_relaxed);
      if ((entry & kMacMask) == key && (entry >> 48) != 0) {
        if (now - slots_[s].seen.load(std::memory_order_relaxed) > age_) return kNone;
        return static_cast<int>((entry >> 48) - 1);
      }
    }
    return kNone;
  }

  // Records that `mac` (a unicast source address) is behind `port`.
  void learn(const std::uint8_t* mac, int port) noexcept {
    if (mac[0] & 1) return;  // never learn a group address
    const std::uint64_t key = pack(mac);
    const std::uint64_t entry = key | (static_cast<std::uint64_t>(port + 1) << 48);
    const std::uint32_t now = now_.load(std::memory_order_relaxed);
    std::size_t victim = kSlots;
    for (std::size_t i = 0, s = hash(key); i < kProbe; ++i, s = (s + 1) & (kSlots - 1)) {
      const std::uint64_t old = slots_[s].entry.load(std::memory_order_relaxed);
      if ((old & kMacMask) == key || (old >> 48) == 0) {
        victim = s;
        break;
      }
      if (victim == kSlots && now - slots_[s].seen.load(std::memory_order_relaxed) > age_) victim = s;
    }
    if (victim == kSlots) victim = hash(key);  // window full of live entries: replace the first
    // Relaxed: entries are hints; a reader seeing the old port for a moment is harmless.
    if (slots_[victim].entry.load(std::memory_order_relaxed) != entry) {
      slots_[victim].entry.store(entry, std::memory_order_relaxed);
    }
    if (slots_[victim].seen.load(std::memory_order_relaxed) != now) {
      slots_[victim].seen.store(now, std::memory_order_relaxed);
    }
  }

 private:
  static constexpr std::uint64_t kMacMask = (1ull << 48) - 1;
  struct Slot {
    std::atomic<std::uint64_t> entry{0};
    std::atomic<std::uint32_t> seen{0};
  };
  static std::uint64_t pack(const std::uint8_t* mac) noexcept {
    std::uint64_t v = 0;
    std::memcpy(&v, mac, 6);
    return v;
  }
  static std::size_t hash(std::uint64_t key) noexcept {
    return static_cast<std::size_t>((key * 0x9e3779b97f4a7c15ull) >> 52) & (kSlots - 1);
  }

  std::atomic<std::uint32_t> now_{0};
  std::uint32_t age_;
  std::unique_ptr<Slot[]> slots_;
};

}  // namespace vhostd::fwd
