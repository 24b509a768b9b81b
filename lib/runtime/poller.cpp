// vhostd runtime: a data lcore's poller (see poller.hpp).
#include "vhostd/runtime/poller.hpp"

#include <sys/epoll.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <new>
#include <type_traits>

#include "vhostd/base/compiler.hpp"
#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"
#include "vhostd/runtime/lcore_thread.hpp"

namespace vhostd {

namespace {

// Initial-exec: one %fs-relative load (the library is never dlopen()ed).
[[gnu::tls_model("initial-exec")]] thread_local const Poller* t_current_poller = nullptr;

// Runs fn(VringState&) on a ring the poller owns, under the ring's locking if it has one.
template <typename Fn>
decltype(auto) with_polled_state(const PolledRing& polled, Fn&& fn) {
  if (VHOSTD_LIKELY(polled.vring->locking() == VringLocking::none)) return fn(polled.vring->unlocked());
  return polled.vring->with_mut(std::forward<Fn>(fn));
}

}  // namespace
const Poller* Poller::current() noexcept { return t_current_poller; }

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

Poller::Poller(unsigned lcore_id, std::vector<unsigned> cpus, int numa_node, QsbrDomain& domain,
               PollerOptions options)
    : lcore_id_(lcore_id),
      cpus_(std::move(cpus)),
      numa_node_(numa_node),
      domain_(domain),
      options_(options),
      reader_(domain.register_reader()),
      memory_(NodeLocalBuffer::allocate(sizeof(HotState), numa_node)) {
  static_assert(std::is_trivially_copyable_v<Entry> && std::is_trivially_destructible_v<HotState>);
  static_assert(alignof(HotState) <= 4096, "the buffer is page aligned");
  hot_ = new (memory_.data()) HotState();
  // Relaxed: the thread below is started after this store (thread creation orders it).
  hot_->current.store(&hot_->lists[0], std::memory_order_relaxed);
  published_ = 0;
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
  // HotState is trivially destructible: the buffer's unmapping ends it.
}

std::size_t Poller::num_rings() const noexcept { return hot_->lists[published_].size; }

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

void Poller::add(const PolledRing& ring) {
  const PollList& now = hot_->lists[published_];
  if (now.size >= kMaxRings) {
    throw_error("lcore ", lcore_id_, ": already polls ", kMaxRings, " rings, the most one poller can");
  }
  // The layout, locking and kick fd are fixed while the ring is handed over (the session takes
  // a ring off its poller to change any of them): pick its specialisation, its queue and its
  // kick fd once, here.
  const bool locked = ring.vring->locking() != VringLocking::none;
  Entry entry{ring, nullptr, nullptr, -1};
  const int kick = ring.vring->with_mut([&](VringState& state) {
    if (state.packed()) {
      entry.queue = &state.packed_queue();
      entry.poll = locked ? &poll_ring<PackedQueue, true> : &poll_ring<PackedQueue, false>;
    } else {
      entry.queue = &state.split_queue();
      entry.poll = locked ? &poll_ring<SplitQueue, true> : &poll_ring<SplitQueue, false>;
    }
    return state.kick_fd();
  });
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
  }
  // The spare list: no reader can see it since the last publish() returned.
  PollList& next = hot_->lists[1 - published_];
  std::copy_n(now.rings, now.size, next.rings);
  next.size = now.size;
  next.without_kick = now.without_kick + (options_.mode != PollMode::busy && registered < 0 ? 1 : 0);
  entry.kick_fd = registered;
  next.rings[next.size++] = entry;
  publish(1 - published_);
}

void Poller::remove(const Vring* ring) {
  const PollList& now = hot_->lists[published_];
  PollList& next = hot_->lists[1 - published_];
  next.size = 0;
  next.without_kick = 0;
  for (std::size_t i = 0; i < now.size; ++i) {
    const Entry& entry = now.rings[i];
    if (entry.ring.vring != ring) {
      next.rings[next.size++] = entry;
      if (options_.mode != PollMode::busy && entry.kick_fd < 0) ++next.without_kick;
    } else if (entry.kick_fd >= 0) {
      // Before the session may close the fd: a closed fd whose file the frontend still holds
      // would stay in the epoll set with no way to remove it.
      (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, entry.kick_fd, nullptr);
    }
  }
  publish(1 - published_);
}

void Poller::publish(std::size_t which) {
  // Release: the list's contents (and the rings' configuration done by the control lcore)
  // are visible to the poller that acquires the pointer.
  hot_->current.store(&hot_->lists[which], std::memory_order_release);
  published_ = which;
  // A sleeping poller wakes and polls the new list (a ring handed over with pending work,
  // whose guest will not kick while notifications are off, is not left waiting).
  if (wakeup_) eventfd_signal(wakeup_.get());
  // Once every reader passed a quiescent point (or went offline to sleep), none still
  // iterates the old list (now the spare, rewritten by the next change) or a ring only it held.
  domain_.synchronize();
}

bool Poller::idle_long_enough(std::uint64_t idle_loops,
                              std::chrono::steady_clock::time_point& idle_since) const noexcept {
  if (options_.mode == PollMode::interrupt) return true;
  // Adaptive: the clock (vDSO, no syscall) is read only once 64 loops in a row found nothing
  // (microseconds: a loaded ring's gap between two bursts never costs a clock read), then every
  // 64th idle loop; the threshold counts from that first read.
  if ((idle_loops & 63) != 0) return false;
  if (idle_loops == 64) {
    idle_since = std::chrono::steady_clock::now();
    return false;
  }
  return std::chrono::steady_clock::now() - idle_since >= options_.idle_threshold;
}

void Poller::sleep_until_kicked() {
  // Acquire: pairs with publish().
  const PollList* list = hot_->current.load(std::memory_order_acquire);
  if (list->without_kick != 0) return;
  // Notifications on, then one more look at every ring: enable_notifications() fences between
  // its flag / avail_event store and its re-read of the ring, pairing with the driver's fence
  // between publishing and reading our flag. Either the guest kicks, or we see its work here.
  bool work = false;
  for (std::size_t i = 0; i < list->size; ++i) {
    const Entry& entry = list->rings[i];
    work |= with_polled_state(entry.ring, [](VringState& ring) {
      return ring.visit([](auto& queue) { return queue.enable_notifications(); });
    });
  }
  if (!work) {
    // Relaxed: a hint for stats and tests; QSBR offline below is what the control lcore needs.
    hot_->stats.sleeping.store(true, std::memory_order_relaxed);
    // Offline: the control lcore must not wait for this thread's quiescent point while it
    // sleeps; from here until online() the thread holds no pointer into the list or a ring.
    // Offline holds nothing: the held calls are made now (the guest may be waiting on them).
    hot_->held_calls.flush_all();
    reader_->offline();
    epoll_event events[16];
    // Which fd fired does not matter (every ring is polled next); EINTR: just poll again.
    (void)::epoll_wait(epoll_.get(), events, 16, -1);
    reader_->online(domain_);
    hot_->stats.sleeping.store(false, std::memory_order_relaxed);
    add_single_writer(hot_->stats.sleeps, 1);
    // Acquire: the list may have been replaced while we slept.
    list = hot_->current.load(std::memory_order_acquire);
  }
  // Back to spinning: kicks would only cost the guest exits.
  for (std::size_t i = 0; i < list->size; ++i) {
    const Entry& entry = list->rings[i];
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
  DeferredCalls& held_calls = hot_->held_calls;
  DeferredCalls::install(&held_calls);
  t_current_poller = this;
  const bool may_sleep = options_.mode != PollMode::busy;
  std::uint64_t idle_loops = 0;
  std::chrono::steady_clock::time_point idle_since;
  while (!stop.stop_requested()) {
    // Acquire: pairs with publish(); the rings in the list are fully configured.
    const PollList* list = hot_->current.load(std::memory_order_acquire);
    bool busy = false;
    for (std::size_t i = 0; i < list->size; ++i) busy |= list->rings[i].poll(list->rings[i]);
    // Quiescent point: this thread holds no pointer into the list, any ring or memory table,
    // but for the rings of held calls. Those are made first when the epoch moved (the control
    // lcore waits to change or free a ring); otherwise only those whose time has come.
    const std::uint64_t epoch = domain_.epoch();
    if (!held_calls.empty()) {
      if (epoch != reader_->seen()) {
        held_calls.flush_all();
      } else {
        held_calls.flush_due();
      }
    }
    reader_->quiescent_at(epoch);
    add_single_writer(hot_->stats.loops, 1);
    if (busy) {
      add_single_writer(hot_->stats.busy_loops, 1);
      idle_loops = 0;
    } else if (may_sleep && idle_long_enough(++idle_loops, idle_since)) {
      if (!stop.stop_requested()) sleep_until_kicked();
      idle_loops = 0;
    } else {
      cpu_relax();
    }
  }
  held_calls.flush_all();
  DeferredCalls::install(nullptr);
  t_current_poller = nullptr;
  reader_->offline();
}

}  // namespace vhostd
