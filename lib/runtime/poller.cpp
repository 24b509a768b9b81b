// vhostd runtime: a data lcore's poller (see poller.hpp).
#include "vhostd/runtime/poller.hpp"

#include <algorithm>
#include <type_traits>

#include "vhostd/base/compiler.hpp"
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

Poller::Poller(unsigned lcore_id, std::vector<unsigned> cpus, QsbrDomain& domain)
    : lcore_id_(lcore_id),
      cpus_(std::move(cpus)),
      domain_(domain),
      reader_(domain.register_reader()),
      owned_(std::make_shared<PollList>()),
      current_(owned_.get()) {
  thread_ = std::make_unique<LcoreThread>(lcore_id_, cpus_, [this](std::stop_token stop) { run(stop); },
                                          "lcore-" + std::to_string(lcore_id_));
}

Poller::~Poller() {
  thread_.reset();  // requests stop and joins
  domain_.unregister_reader(reader_);
}

std::size_t Poller::num_rings() const noexcept { return owned_->rings.size(); }

void Poller::add(const PolledRing& ring) {
  auto list = std::make_shared<PollList>(*owned_);
  // The layout is fixed while the ring is handed over: pick its specialisation once, here.
  const bool packed = ring.vring->with_ref([](const VringState& state) { return state.packed(); });
  list->rings.push_back(Entry{ring, packed ? &poll_ring<PackedQueue> : &poll_ring<SplitQueue>});
  publish(std::move(list));
}

void Poller::remove(const Vring* ring) {
  auto list = std::make_shared<PollList>(*owned_);
  std::erase_if(list->rings, [ring](const Entry& e) { return e.ring.vring == ring; });
  publish(std::move(list));
}

void Poller::publish(std::shared_ptr<const PollList> list) {
  // Release: the list's contents (and the rings' configuration done by the control lcore)
  // are visible to the poller that acquires the pointer.
  current_.store(list.get(), std::memory_order_release);
  std::shared_ptr<const PollList> old = std::exchange(owned_, std::move(list));
  // Once every reader passed a quiescent point, none still iterates the old list or a ring
  // only it held.
  domain_.synchronize();
}

void Poller::run(std::stop_token stop) {
  reader_->online(domain_);
  while (!stop.stop_requested()) {
    // Acquire: pairs with publish(); the rings in the list are fully configured.
    const PollList* list = current_.load(std::memory_order_acquire);
    bool busy = false;
    for (const Entry& entry : list->rings) {
      const PolledRing& polled = entry.ring;
      if (VHOSTD_LIKELY(polled.vring->locking() == VringLocking::none)) {
        busy |= entry.poll(polled, polled.vring->unlocked());
      } else {
        busy |= polled.vring->with_mut([&](VringState& ring) { return entry.poll(polled, ring); });
      }
    }
    // Quiescent point: this thread holds no pointer into the list, any ring or memory table.
    reader_->quiescent(domain_);
    add_single_writer(stats_.loops, 1);
    if (busy) add_single_writer(stats_.busy_loops, 1); else cpu_relax();
  }
  reader_->offline();
}

}  // namespace vhostd
