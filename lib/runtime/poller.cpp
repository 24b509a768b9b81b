// vhostd runtime: a data lcore's poller (see poller.hpp).
#include "vhostd/runtime/poller.hpp"

#include <algorithm>

#include "vhostd/base/compiler.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace vhostd {

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

template <typename Queue, bool Locked>
bool Poller::poll_ring(const Entry& entry) noexcept {
  Queue& queue = *static_cast<Queue*>(entry.queue);
  const PolledRing& polled = entry.ring;
  if constexpr (Locked) {
    // Device threads share the ring: it is only looked at under its lock (no idle check).
    return polled.vring->with_mut([&](VringState& ring) {
      if (queue.poll() == 0) return false;
      const std::uint64_t start = read_cycles();
      polled.backend->handle_queue(polled.index, ring);
      add_single_writer(queue.stats().busy_cycles, read_cycles() - start);
      return true;
    });
  } else {
    // The poller owns the ring: an idle one costs its idle() and nothing else.
    if (VHOSTD_LIKELY(queue.idle()) || queue.poll() == 0) return false;
    const std::uint64_t start = read_cycles();
    polled.backend->handle_queue(polled.index, polled.vring->unlocked());
    add_single_writer(queue.stats().busy_cycles, read_cycles() - start);
    return true;
  }
}

std::size_t Poller::num_rings() const noexcept { return owned_->rings.size(); }

void Poller::add(const PolledRing& ring) {
  auto list = std::make_shared<PollList>(*owned_);
  // The layout and locking are fixed while the ring is handed over: pick its specialisation
  // and its queue once, here.
  const bool locked = ring.vring->locking() != VringLocking::none;
  Entry entry{ring, nullptr, nullptr};
  ring.vring->with_mut([&](VringState& state) {
    if (state.packed()) {
      entry.queue = &state.packed_queue();
      entry.poll = locked ? &poll_ring<PackedQueue, true> : &poll_ring<PackedQueue, false>;
    } else {
      entry.queue = &state.split_queue();
      entry.poll = locked ? &poll_ring<SplitQueue, true> : &poll_ring<SplitQueue, false>;
    }
  });
  list->rings.push_back(entry);
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
    for (const Entry& entry : list->rings) busy |= entry.poll(entry);
    // Quiescent point: this thread holds no pointer into the list, any ring or memory table.
    reader_->quiescent(domain_);
    add_single_writer(stats_.loops, 1);
    if (busy) add_single_writer(stats_.busy_loops, 1); else cpu_relax();
  }
  reader_->offline();
}

}  // namespace vhostd
