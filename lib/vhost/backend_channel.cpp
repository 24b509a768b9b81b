// vhostd vhost: the backend-request channel (see backend_channel.hpp).
#include "vhostd/vhost/backend_channel.hpp"

#include <poll.h>

#include "vhostd/base/error.hpp"
#include "vhostd/vhost/codec.hpp"
#include "vhostd/vhost/message.hpp"

namespace vhostd {

BackendChannel::BackendChannel(UniqueFd fd, bool reply_ack, std::chrono::milliseconds ack_timeout)
    : fd_(std::move(fd)), reply_ack_(reply_ack), ack_timeout_(ack_timeout) {}

void BackendChannel::config_change() {
  send(static_cast<std::uint32_t>(BackendRequest::config_change_msg), nullptr, 0);
}

void BackendChannel::vring_call(std::uint16_t index) {
  VringStatePayload state{index, 0};
  send(static_cast<std::uint32_t>(BackendRequest::vring_call), &state, sizeof state);
}

void BackendChannel::send(std::uint32_t request, const void* payload, std::uint32_t size) {
  std::lock_guard lock(mutex_);
  MessageHeader header{request, kMessageVersion | (reply_ack_ ? kFlagNeedReply : 0u), size};
  send_message(fd_.get(), header, payload, {});
  if (!reply_ack_) return;
  pollfd waiter{fd_.get(), POLLIN, 0};
  int ready = ::poll(&waiter, 1, static_cast<int>(ack_timeout_.count()));
  if (ready < 0) throw_errno("backend channel: waiting for the ack of request ", request);
  if (ready == 0) throw_error("backend channel: no ack for request ", request, " within ", ack_timeout_.count(), " ms");
  Message ack = read_message_blocking(fd_.get());
  if (ack.header.request != request || ack.header.size != sizeof(std::uint64_t)) {
    throw_error("backend channel: malformed ack for request ", request);
  }
  if (ack.u64() != 0) throw_error("backend channel: frontend refused request ", request, " (", ack.u64(), ")");
}

}  // namespace vhostd
