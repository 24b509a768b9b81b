// vhostd virtqueue: the per-thread list of deferred guest calls (see call_coalescing.hpp).
#include "vhostd/virtqueue/call_coalescing.hpp"

namespace vhostd {

namespace {

// Initial-exec: one %fs-relative load on the data path, no __tls_get_addr call (the library is
// linked into the program or loaded with it, never dlopen()ed).
[[gnu::tls_model("initial-exec")]] thread_local DeferredCalls* t_deferred_calls = nullptr;

std::int64_t now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

DeferredCalls* DeferredCalls::current() noexcept { return t_deferred_calls; }

void DeferredCalls::install(DeferredCalls* list) noexcept { t_deferred_calls = list; }

bool DeferredCalls::add(void* queue, SignalFn signal, std::chrono::microseconds max_delay) noexcept {
  if (size_ == kCapacity) return false;
  entries_[size_++] = Entry{queue, signal, now_ns() + std::chrono::nanoseconds(max_delay).count()};
  return true;
}

void DeferredCalls::flush_due() noexcept {
  if (size_ == 0) return;
  const std::int64_t now = now_ns();
  for (std::size_t i = 0; i < size_;) {
    if (entries_[i].deadline_ns > now) {
      ++i;
      continue;
    }
    const Entry due = entries_[i];
    entries_[i] = entries_[--size_];  // order does not matter: each entry has its own deadline
    due.signal(due.queue);
  }
}

void DeferredCalls::flush_all() noexcept {
  while (size_ != 0) {
    const Entry entry = entries_[--size_];
    entry.signal(entry.queue);
  }
}

}  // namespace vhostd
