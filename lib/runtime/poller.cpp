// vhostd runtime: a data lcore's poller (see poller.hpp).
#include "vhostd/runtime/poller.hpp"

#include <algorithm>
#include <new>
#include <type_traits>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace vhostd {

namespace {

// Polls one ring of layout Queue; true if the backend had work.
template <typename Queue>
bool poll_ring(const PolledRing& polled, VringState& ring) noexcept {
  Queue& queue = [&]() -> Queue& {
    if constexpr (std::is_same_v<Queue, PackedQueue>) {
      return ring.packed_queue();
    } else {
      return ring.split_queue();
    }
  }();
  if (queue.poll() == 0) return false;
  const std::uint64_t start = read_cycles();
  polled.backend->handle_queue(polled.index, ring);
  add_single_writer(queue.stats().busy_cycles, read_cycles() - start);
  return true;
}

}  // namespace

Poller::Poller(unsigned lcore_id, std::vector<unsigned> cpus, int numa_node, QsbrDomain& domain)
    : lcore_id_(lcore_id),
      cpus_(std::move(cpus)),
      numa_node_(numa_node),
      domain_(domain),
      reader_(domain.register_reader()),
      memory_(NodeLocalBuffer::allocate(sizeof(HotState), numa_node)) {
  static_assert(std::is_trivially_copyable_v<Entry> && std::is_trivially_destructible_v<HotState>);
  static_assert(alignof(HotState) <= 4096, "the buffer is page aligned");
  hot_ = new (memory_.data()) HotState();
  // Relaxed: the thread below is started after this store (thread creation orders it).
  hot_->current.store(&hot_->lists[0], std::memory_order_relaxed);
  published_ = 0;
  thread_ = std::make_unique<LcoreThread>(lcore_id_, cpus_, [this](std::stop_token stop) { run(stop); },
                                          "lcore-" + std::to_string(lcore_id_));
}

Poller::~Poller() {
  thread_.reset();  // requests stop and joins
  domain_.unregister_reader(reader_);
  // HotState is trivially destructible: the buffer's unmapping ends it.
}

std::size_t Poller::num_rings() const noexcept { return hot_->lists[published_].size; }

void Poller::add(const PolledRing& ring) {
  const PollList& now = hot_->lists[published_];
  if (now.size >= kMaxRings) {
    throw_error("lcore ", lcore_id_, ": already polls ", kMaxRings, " rings, the most one poller can");
  }
  // The spare list: no reader can see it since the last publish() returned.
  PollList& next = hot_->lists[1 - published_];
  std::copy_n(now.rings, now.size, next.rings);
  next.size = now.size;
  // The layout is fixed while the ring is handed over: pick its specialisation once, here.
  const bool packed = ring.vring->with_ref([](const VringState& state) { return state.packed(); });
  next.rings[next.size++] = Entry{ring, packed ? &poll_ring<PackedQueue> : &poll_ring<SplitQueue>};
  publish(1 - published_);
}

void Poller::remove(const Vring* ring) {
  const PollList& now = hot_->lists[published_];
  PollList& next = hot_->lists[1 - published_];
  next.size = 0;
  for (std::size_t i = 0; i < now.size; ++i) {
    if (now.rings[i].ring.vring != ring) next.rings[next.size++] = now.rings[i];
  }
  publish(1 - published_);
}

void Poller::publish(std::size_t which) {
  // Release: the list's contents (and the rings' configuration done by the control lcore)
  // are visible to the poller that acquires the pointer.
  hot_->current.store(&hot_->lists[which], std::memory_order_release);
  published_ = which;
  // Once every reader passed a quiescent point, none still iterates the old list (now the
  // spare, rewritten by the next change) or a ring only it held.
  domain_.synchronize();
}

void Poller::run(std::stop_token stop) {
  reader_->online(domain_);
  while (!stop.stop_requested()) {
    // Acquire: pairs with publish(); the rings in the list are fully configured.
    const PollList* list = hot_->current.load(std::memory_order_acquire);
    bool busy = false;
    for (std::size_t i = 0; i < list->size; ++i) {
      const Entry& entry = list->rings[i];
      const PolledRing& polled = entry.ring;
      if (VHOSTD_LIKELY(polled.vring->locking() == VringLocking::none)) {
        busy |= entry.poll(polled, polled.vring->unlocked());
      } else {
        busy |= polled.vring->with_mut([&](VringState& ring) { return entry.poll(polled, ring); });
      }
    }
    // Quiescent point: this thread holds no pointer into the list, any ring or memory table.
    reader_->quiescent(domain_);
    add_single_writer(hot_->stats.loops, 1);
    if (busy) add_single_writer(hot_->stats.busy_loops, 1); else cpu_relax();
  }
  reader_->offline();
}

}  // namespace vhostd
