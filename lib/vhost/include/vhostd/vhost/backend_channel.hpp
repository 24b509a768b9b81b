// vhostd vhost: the backend-request channel (SET_BACKEND_REQ_FD), backend → frontend.
//
// Sends CONFIG_CHANGE_MSG and VRING_CALL. When REPLY_ACK was negotiated each message asks for
// an ack and waits for it (bounded), so a device knows the frontend saw the change. Callable
// from any thread: sends are serialised by a mutex (control path only).
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>

#include "vhostd/base/fd.hpp"

namespace vhostd {

class BackendChannel {
 public:
  BackendChannel(UniqueFd fd, bool reply_ack, std::chrono::milliseconds ack_timeout = std::chrono::seconds(5));

  // Tells the frontend the device config space changed. Throws Error on a send failure, a
  // non-zero ack or an ack timeout.
  void config_change();
  // Asks the frontend to notify the guest for ring `index` (in-band call).
  void vring_call(std::uint16_t index);

  int fd() const noexcept { return fd_.get(); }

 private:
  void send(std::uint32_t request, const void* payload, std::uint32_t size);

  std::mutex mutex_;
  UniqueFd fd_;
  bool reply_ack_;
  std::chrono::milliseconds ack_timeout_;
};

}  // namespace vhostd
