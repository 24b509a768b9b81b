// vhostd runtime: the control lcore's event loop.
//
// One thread owns every vhost-user socket, listener, not-yet-started kick fd and timer of the
// process; epoll lives here and only here (pollers never block). Everything registered runs
// on the loop thread; other threads get work onto it with post() or call().
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include "vhostd/base/fd.hpp"

namespace vhostd {

class ControlLoop {
 public:
  using Handler = std::function<void(std::uint32_t events)>;
  using Clock = std::chrono::steady_clock;

  ControlLoop();
  ~ControlLoop();
  ControlLoop(const ControlLoop&) = delete;
  ControlLoop& operator=(const ControlLoop&) = delete;

  // ---- loop thread only ----
  // Calls handler(epoll events) whenever fd is ready for `events` (EPOLLIN by default).
  void watch(int fd, Handler handler, std::uint32_t events = 0x001 /* EPOLLIN */);
  // Safe from inside a handler, including the fd's own.
  void unwatch(int fd);
  // Runs fn once after delay; returns an id for cancel_timer.
  std::uint64_t add_timer(std::chrono::milliseconds delay, std::function<void()> fn);
  void cancel_timer(std::uint64_t id);

  // ---- any thread ----
  // Queues fn to run on the loop thread.
  void post(std::function<void()> fn);
  // Runs fn on the loop thread and waits for it; rethrows what it threw. From the loop thread
  // itself it runs fn directly.
  void call(const std::function<void()>& fn);
  // Runs the loop on the calling thread until stop().
  void run();
  void stop();
  bool in_loop_thread() const noexcept {
    return std::this_thread::get_id() == loop_thread_.load(std::memory_order_acquire);
  }

 private:
  struct Watch {
    int fd;
    Handler handler;
  };
  void run_posted();
  void run_timers();
  int next_timeout_ms() const;

  UniqueFd epoll_;
  UniqueFd wakeup_;  // eventfd: post() and stop() wake epoll_wait
  std::atomic<std::thread::id> loop_thread_{};  // set when run() starts
  bool stopping_ = false;  // loop thread only
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<Watch>> watches_;  // by id (epoll data)
  std::unordered_map<int, std::uint64_t> watch_by_fd_;
  std::multimap<Clock::time_point, std::pair<std::uint64_t, std::function<void()>>> timers_;

  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;
  bool stop_requested_ = false;  // guarded by posted_mutex_
};

}  // namespace vhostd
