// vhostd runtime: the control lcore's event loop (see control_loop.hpp).
#include "vhostd/runtime/control_loop.hpp"

#include <sys/epoll.h>

#include <exception>
#include <future>

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"

namespace vhostd {

namespace {
constexpr std::uint64_t kWakeupId = 0;
}

ControlLoop::ControlLoop() : wakeup_(make_eventfd()) {
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) throw_errno("epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kWakeupId;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, wakeup_.get(), &ev) != 0) throw_errno("epoll_ctl wakeup");
}

ControlLoop::~ControlLoop() = default;

void ControlLoop::watch(int fd, Handler handler, std::uint32_t events) {
  if (watch_by_fd_.count(fd)) throw_error("control loop: fd ", fd, " is already watched");
  std::uint64_t id = next_id_++;
  epoll_event ev{};
  ev.events = events;
  ev.data.u64 = id;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) throw_errno("epoll_ctl add fd ", fd);
  watches_.emplace(id, std::make_shared<Watch>(Watch{fd, std::move(handler)}));
  watch_by_fd_.emplace(fd, id);
}

void ControlLoop::unwatch(int fd) {
  auto it = watch_by_fd_.find(fd);
  if (it == watch_by_fd_.end()) return;
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr);
  watches_.erase(it->second);
  watch_by_fd_.erase(it);
}

std::uint64_t ControlLoop::add_timer(std::chrono::milliseconds delay, std::function<void()> fn) {
  std::uint64_t id = next_id_++;
  timers_.emplace(Clock::now() + delay, std::make_pair(id, std::move(fn)));
  return id;
}

void ControlLoop::cancel_timer(std::uint64_t id) {
  for (auto it = timers_.begin(); it != timers_.end(); ++it) {
    if (it->second.first == id) {
      timers_.erase(it);
      return;
    }
  }
}

void ControlLoop::post(std::function<void()> fn) {
  {
    std::lock_guard lock(posted_mutex_);
    posted_.push_back(std::move(fn));
  }
  eventfd_signal(wakeup_.get());
}

void ControlLoop::call(const std::function<void()>& fn) {
  if (in_loop_thread()) {
    fn();
    return;
  }
  std::promise<void> done;
  post([&] {
    try {
      fn();
      done.set_value();
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  done.get_future().get();
}

void ControlLoop::stop() {
  {
    std::lock_guard lock(posted_mutex_);
    stop_requested_ = true;
  }
  eventfd_signal(wakeup_.get());
}

void ControlLoop::run_posted() {
  std::vector<std::function<void()>> work;
  {
    std::lock_guard lock(posted_mutex_);
    work.swap(posted_);
    if (stop_requested_) stopping_ = true;
  }
  for (auto& fn : work) fn();
}

void ControlLoop::run_timers() {
  auto now = Clock::now();
  while (!timers_.empty() && timers_.begin()->first <= now) {
    auto fn = std::move(timers_.begin()->second.second);
    timers_.erase(timers_.begin());
    fn();
  }
}

int ControlLoop::next_timeout_ms() const {
  if (timers_.empty()) return -1;
  auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(timers_.begin()->first - Clock::now());
  return wait.count() < 0 ? 0 : static_cast<int>(wait.count()) + 1;
}

void ControlLoop::run() {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_release);
  stopping_ = false;
  epoll_event events[32];
  while (!stopping_) {
    int n = ::epoll_wait(epoll_.get(), events, 32, next_timeout_ms());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw_errno("epoll_wait");
    }
    for (int i = 0; i < n; ++i) {
      if (events[i].data.u64 == kWakeupId) {
        eventfd_drain(wakeup_.get());
        continue;
      }
      auto it = watches_.find(events[i].data.u64);
      if (it == watches_.end()) continue;  // unwatched by an earlier handler this round
      std::shared_ptr<Watch> watch = it->second;  // keeps the handler alive through unwatch()
      try {
        watch->handler(events[i].events);
      } catch (const std::exception& error) {
        log_error("control loop: handler for fd ", watch->fd, " failed: ", error.what());
      }
    }
    run_posted();
    run_timers();
  }
  run_posted();
}

}  // namespace vhostd
