// vhostd base: quiescent-state based reclamation (QSBR) between the control lcore and pollers.
//
// Pollers read shared, immutable snapshots (memory tables, poll lists) without locks. The
// control lcore publishes a new snapshot with one atomic store, then calls synchronize():
// it returns once every registered reader has passed a quiescent point (the top of its poll
// loop) or is offline, so no reader can still hold a pointer into the old snapshot, which
// may then be freed or unmapped. Readers pay one relaxed load and one release store per loop.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "vhostd/base/compiler.hpp"

namespace vhostd {

class QsbrDomain;

// One reader's slot. Owned by the domain; a reader thread keeps a pointer to it.
struct alignas(kCacheLine) QsbrReader {
  // Epoch the reader last observed at a quiescent point; 0 = offline (holds nothing).
  std::atomic<std::uint64_t> seen_epoch{0};
  std::atomic<bool> registered{false};

  // Called between iterations: the reader holds no snapshot pointer here.
  void quiescent(const QsbrDomain& domain) noexcept;
  // The same for an `epoch` the reader loaded itself (domain.epoch()) and compared with
  // seen(): a reader that keeps a pointer across iterations lets it go when the epoch moved
  // (a writer is waiting), before it reports that epoch.
  void quiescent_at(std::uint64_t epoch) noexcept;
  // The epoch this reader last reported (reader thread only).
  std::uint64_t seen() const noexcept { return seen_epoch.load(std::memory_order_relaxed); }
  // The reader will hold nothing until online() (e.g. it is about to sleep).
  void offline() noexcept;
  void online(const QsbrDomain& domain) noexcept;
};

class QsbrDomain {
 public:
  QsbrDomain() = default;
  QsbrDomain(const QsbrDomain&) = delete;
  QsbrDomain& operator=(const QsbrDomain&) = delete;

  // Registers a reader (starts online). Valid until unregister_reader().
  QsbrReader* register_reader();
  void unregister_reader(QsbrReader* reader);

  // Waits until every online reader has been quiescent since this call began.
  // Must not be called by a registered reader on its own slot (it would wait for itself).
  void synchronize() noexcept;

  std::uint64_t epoch() const noexcept { return epoch_.load(std::memory_order_acquire); }

 private:
  std::atomic<std::uint64_t> epoch_{1};
  std::mutex mutex_;  // guards readers_ (control path only)
  std::vector<std::unique_ptr<QsbrReader>> readers_;
};

inline void QsbrReader::quiescent_at(std::uint64_t epoch) noexcept {
  // Release: every access to the previous snapshot is ordered before the writer sees this.
  seen_epoch.store(epoch, std::memory_order_release);
}
inline void QsbrReader::quiescent(const QsbrDomain& domain) noexcept { quiescent_at(domain.epoch()); }
inline void QsbrReader::offline() noexcept {
  seen_epoch.store(0, std::memory_order_release);
}
inline void QsbrReader::online(const QsbrDomain& domain) noexcept {
  seen_epoch.store(domain.epoch(), std::memory_order_seq_cst);
  // seq_cst store then load pairs with the writer's seq_cst epoch bump: either the writer
  // sees us online, or we see the new snapshot when we next load it.
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace vhostd
