// vhostd runtime: pinned lcore threads.
#include "vhostd/runtime/lcore_thread.hpp"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <utility>

#include "vhostd/base/error.hpp"
#include "vhostd/base/log.hpp"
#include "vhostd/runtime/core_list.hpp"

namespace vhostd {

void pin_current_thread(const std::vector<unsigned>& cpus) {
  if (cpus.empty()) throw_error("cannot pin a thread to an empty cpu set");
  unsigned max_cpu = 0;
  for (unsigned cpu : cpus) max_cpu = std::max(max_cpu, cpu);
  int ncpus = static_cast<int>(max_cpu) + 1;
  cpu_set_t* set = CPU_ALLOC(ncpus);
  if (set == nullptr) throw_error("CPU_ALLOC(", ncpus, ") failed");
  std::size_t size = CPU_ALLOC_SIZE(ncpus);
  CPU_ZERO_S(size, set);
  for (unsigned cpu : cpus) CPU_SET_S(cpu, size, set);
  int rc = pthread_setaffinity_np(pthread_self(), size, set);
  CPU_FREE(set);
  if (rc != 0) {
    throw_error("cannot pin thread to cpus ", format_id_list(cpus), ": ", std::strerror(rc));
  }
}

void set_current_thread_name(const std::string& name) noexcept {
  char buf[16] = {};
  std::size_t n = std::min(name.size(), sizeof buf - 1);
  std::memcpy(buf, name.data(), n);
  (void)pthread_setname_np(pthread_self(), buf);
}

LcoreThread::LcoreThread(unsigned lcore_id, std::vector<unsigned> cpus, Body body,
                         std::string name)
    : lcore_id_(lcore_id),
      cpus_(std::move(cpus)),
      name_(name.empty() ? str_cat("lcore-", lcore_id) : std::move(name)) {
  if (cpus_.empty()) throw_error("lcore ", lcore_id_, ": empty cpu set");
  if (!body) throw_error("lcore ", lcore_id_, ": no thread body");
  std::promise<void> started;
  std::future<void> started_result = started.get_future();
  thread_ = std::jthread([this, body = std::move(body),
                          started = std::move(started)](std::stop_token stop) mutable {
    set_current_thread_name(name_);
    try {
      pin_current_thread(cpus_);
    } catch (...) {
      started.set_exception(std::current_exception());
      return;
    }
    started.set_value();
    try {
      body(std::move(stop));
    } catch (const std::exception& e) {
      log_error("lcore ", lcore_id_, " (", name_, "): body threw: ", e.what());
      body_error_ = std::current_exception();
    } catch (...) {
      log_error("lcore ", lcore_id_, " (", name_, "): body threw a non-standard exception");
      body_error_ = std::current_exception();
    }
  });
  try {
    started_result.get();
  } catch (const std::exception& e) {
    thread_.join();
    throw_error("lcore ", lcore_id_, ": ", e.what());
  }
}

LcoreThread::~LcoreThread() {
  thread_.request_stop();
  if (thread_.joinable()) thread_.join();
}

void LcoreThread::join() {
  if (thread_.joinable()) thread_.join();
  if (body_error_) std::rethrow_exception(std::exchange(body_error_, nullptr));
}

}  // namespace vhostd
