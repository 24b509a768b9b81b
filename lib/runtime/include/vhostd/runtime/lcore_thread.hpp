// vhostd runtime: LcoreThread, one pinned OS thread per lcore.
//
// The thread names itself ("lcore-N" unless a name is given; Linux keeps 15 characters) and
// pins itself to the lcore's CPUs before the body runs. Pinning happens inside the new thread
// and its outcome is handed back through a promise, so the constructor throws vhostd::Error
// when the CPUs cannot be used and the body never runs unpinned. The body gets a stop token
// and is expected to poll it; request_stop() sets it and the destructor stops and joins.
#pragma once

#include <exception>
#include <functional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

namespace vhostd {

class LcoreThread {
 public:
  using Body = std::function<void(std::stop_token)>;

  // Starts the thread and waits until it is named and pinned. Throws Error if `cpus` is empty
  // or names a cpu that cannot be used (the thread is then joined; the body never ran).
  // An empty `name` means "lcore-<lcore_id>".
  LcoreThread(unsigned lcore_id, std::vector<unsigned> cpus, Body body, std::string name = {});
  LcoreThread(const LcoreThread&) = delete;
  LcoreThread& operator=(const LcoreThread&) = delete;
  // Requests stop and joins.
  ~LcoreThread();

  void request_stop() noexcept { thread_.request_stop(); }
  bool stop_requested() const noexcept { return thread_.get_stop_token().stop_requested(); }
  // Waits for the body to return. If the body threw, the exception (already logged) is
  // rethrown here once. Idempotent; the destructor calls it without rethrowing.
  void join();

  unsigned lcore_id() const noexcept { return lcore_id_; }
  const std::vector<unsigned>& cpus() const noexcept { return cpus_; }
  const std::string& name() const noexcept { return name_; }

 private:
  unsigned lcore_id_;
  std::vector<unsigned> cpus_;
  std::string name_;
  std::exception_ptr body_error_;  // written by the thread before it exits, read after join
  std::jthread thread_;            // last: started once everything above is set
};

// Pins the calling thread to `cpus`; throws Error naming the cpus on failure.
void pin_current_thread(const std::vector<unsigned>& cpus);
// Names the calling thread (truncated to the 15 characters Linux keeps); errors are ignored.
void set_current_thread_name(const std::string& name) noexcept;

}  // namespace vhostd
