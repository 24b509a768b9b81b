// vhostd runtime: a data lcore's poller (see poller.hpp).
#include "vhostd/runtime/poller.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <type_traits>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"
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

// Runs fn(VringState&) on a ring the poller owns, under the ring's locking if it has one.
template <typename Fn>
decltype(auto) with_polled_state(const PolledRing& polled, Fn&& fn) {
  if (VHOSTD_LIKELY(polled.vring->locking() == VringLocking::none)) return fn(polled.vring->unlocked());
  return polled.vring->with_mut(std::forward<Fn>(fn));
}

}  // namespace

const char* to_string(PollMode mode) noexcept {
  switch (mode) {
    case PollMode::busy: return "busy";
    case PollMode::interrupt: return "interrupt";
    case PollMode::adaptive: return "adaptive";
  }
  return "?";
}

PollMode parse_poll_mode(std::string_view text) {
  for (PollMode mode : {PollMode::busy, PollMode::interrupt, PollMode::adaptive}) {
    if (text == to_string(mode)) return mode;
  }
  throw_error("poll mode '", text, "': expected busy, interrupt or adaptive");
}

Poller::Poller(unsigned lcore_id, std::vector<unsigned> cpus, QsbrDomain& domain, PollerOptions options)
    : lcore_id_(lcore_id),
      cpus_(std::move(cpus)),
      domain_(domain),
      options_(options),
      reader_(domain.register_reader()),
      owned_(std::make_shared<PollList>()),
      current_(owned_.get()) {
  if (options_.mode != PollMode::busy) {
    epoll_ = UniqueFd(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) throw_errno("lcore ", lcore_id_, ": epoll_create1");
    wakeup_ = make_eventfd();
    // Edge-triggered: every write to an eventfd is a new edge, so nothing is ever read back.
    epoll_event event{};
    event.events = EPOLLIN | EPOLLET;
    event.data.fd = wakeup_.get();
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wakeup_.get(), &event) != 0) {
      throw_errno("lcore ", lcore_id_, ": epoll_ctl(wake-up eventfd)");
    }
  }
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
  // The layout and the kick fd are fixed while the ring is handed over (the session takes a
  // ring off its poller to change either): read them once, here.
  const auto [packed, kick] = ring.vring->with_ref(
      [](const VringState& state) { return std::pair{state.packed(), state.kick_fd()}; });
  int registered = -1;
  if (options_.mode != PollMode::busy) {
    if (kick < 0) {
      log_info("lcore ", lcore_id_, ": ring ", ring.index, " has no kick fd (the frontend polls): this lcore ",
               "spins while it serves the ring");
    } else {
      epoll_event event{};
      event.events = EPOLLIN | EPOLLET;  // edge-triggered: the frontend's eventfd is never read
      event.data.fd = kick;
      if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, kick, &event) == 0) {
        registered = kick;
      } else {
        log_warning("lcore ", lcore_id_, ": ring ", ring.index, ": kick fd ", kick, " cannot be waited on (",
                    std::strerror(errno), "): this lcore spins while it serves the ring");
      }
    }
    if (registered < 0) ++list->without_kick;
  }
  list->rings.push_back(Entry{ring, packed ? &poll_ring<PackedQueue> : &poll_ring<SplitQueue>, registered});
  publish(std::move(list));
}

void Poller::remove(const Vring* ring) {
  auto list = std::make_shared<PollList>(*owned_);
  std::erase_if(list->rings, [&](const Entry& e) {
    if (e.ring.vring != ring) return false;
    if (e.kick_fd >= 0) {
      // Before the session may close the fd: a closed fd whose file the frontend still holds
      // would stay in the epoll set with no way to remove it.
      (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, e.kick_fd, nullptr);
    } else if (options_.mode != PollMode::busy) {
      --list->without_kick;
    }
    return true;
  });
  publish(std::move(list));
}

void Poller::publish(std::shared_ptr<const PollList> list) {
  // Release: the list's contents (and the rings' configuration done by the control lcore)
  // are visible to the poller that acquires the pointer.
  current_.store(list.get(), std::memory_order_release);
  // A sleeping poller wakes and polls the new list (a ring handed over with pending work,
  // whose guest will not kick while notifications are off, is not left waiting).
  if (wakeup_) eventfd_signal(wakeup_.get());
  std::shared_ptr<const PollList> old = std::exchange(owned_, std::move(list));
  // Once every reader passed a quiescent point (or went offline to sleep), none still
  // iterates the old list or a ring only it held.
  domain_.synchronize();
}

bool Poller::idle_long_enough(std::uint64_t idle_loops,
                              std::chrono::steady_clock::time_point& idle_since) const noexcept {
  if (options_.mode == PollMode::interrupt) return true;
  // Adaptive: the clock (vDSO, no syscall) is read on the first idle loop, then every 64th.
  if (idle_loops == 1) {
    idle_since = std::chrono::steady_clock::now();
    return false;
  }
  if ((idle_loops & 63) != 0) return false;
  return std::chrono::steady_clock::now() - idle_since >= options_.idle_threshold;
}

void Poller::sleep_until_kicked() {
  // Acquire: pairs with publish().
  const PollList* list = current_.load(std::memory_order_acquire);
  if (list->without_kick != 0) return;
  // Notifications on, then one more look at every ring: enable_notifications() fences between
  // its flag / avail_event store and its re-read of the ring, pairing with the driver's fence
  // between publishing and reading our flag. Either the guest kicks, or we see its work here.
  bool work = false;
  for (const Entry& entry : list->rings) {
    work |= with_polled_state(entry.ring, [](VringState& ring) {
      return ring.visit([](auto& queue) { return queue.enable_notifications(); });
    });
  }
  if (!work) {
    // Relaxed: a hint for stats and tests; QSBR offline below is what the control lcore needs.
    stats_.sleeping.store(true, std::memory_order_relaxed);
    // Offline: the control lcore must not wait for this thread's quiescent point while it
    // sleeps; from here until online() the thread holds no pointer into the list or a ring.
    reader_->offline();
    epoll_event events[16];
    // Which fd fired does not matter (every ring is polled next); EINTR: just poll again.
    (void)::epoll_wait(epoll_.get(), events, 16, -1);
    reader_->online(domain_);
    stats_.sleeping.store(false, std::memory_order_relaxed);
    add_single_writer(stats_.sleeps, 1);
    // Acquire: the list may have been replaced while we slept.
    list = current_.load(std::memory_order_acquire);
  }
  // Back to spinning: kicks would only cost the guest exits.
  for (const Entry& entry : list->rings) {
    with_polled_state(entry.ring, [](VringState& ring) {
      ring.visit([](auto& queue) { queue.disable_notifications(); });
    });
  }
}

void Poller::run(std::stop_token stop) {
  // Stop wakes a sleeping poller (the token is checked right after epoll returns).
  std::stop_callback wake_on_stop(stop, [this] {
    if (wakeup_) eventfd_signal(wakeup_.get());
  });
  reader_->online(domain_);
  const bool may_sleep = options_.mode != PollMode::busy;
  std::uint64_t idle_loops = 0;
  std::chrono::steady_clock::time_point idle_since;
  while (!stop.stop_requested()) {
    // Acquire: pairs with publish(); the rings in the list are fully configured.
    const PollList* list = current_.load(std::memory_order_acquire);
    bool busy = false;
    for (const Entry& entry : list->rings) {
      const PolledRing& polled = entry.ring;
      busy |= with_polled_state(polled, [&](VringState& ring) { return entry.poll(polled, ring); });
    }
    // Quiescent point: this thread holds no pointer into the list, any ring or memory table.
    reader_->quiescent(domain_);
    add_single_writer(stats_.loops, 1);
    if (busy) {
      add_single_writer(stats_.busy_loops, 1);
      idle_loops = 0;
    } else if (may_sleep && idle_long_enough(++idle_loops, idle_since)) {
      if (!stop.stop_requested()) sleep_until_kicked();
      idle_loops = 0;
    } else {
      cpu_relax();
    }
  }
  reader_->offline();
}

}  // namespace vhostd
