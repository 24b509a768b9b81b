// vhostd vhost: the vhost-user byte-stream codec (see codec.hpp).
#include "vhostd/vhost/codec.hpp"

#include <poll.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "vhostd/base/error.hpp"

namespace vhostd {

namespace {

// The control buffer has room for the kernel's per-message maximum (SCM_MAX_FD), not just for
// kMaxFdsPerMessage: an oversized batch is then received whole, counted in the error, and
// closed by us, rather than arriving as an anonymous truncation.
constexpr std::size_t kControlFds = 253;

// Moves every fd of every SCM_RIGHTS control message into `fds` (as UniqueFd, so they are
// closed whatever happens next). Done before any check, including MSG_CTRUNC: the fds the
// kernel did install are ours to close.
void take_fds(msghdr& msg, std::vector<UniqueFd>& fds) {
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    if (c->cmsg_len < CMSG_LEN(0)) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    const unsigned char* data = CMSG_DATA(c);
    for (std::size_t i = 0; i < count; ++i) {
      int raw;
      std::memcpy(&raw, data + i * sizeof(int), sizeof raw);  // CMSG_DATA may be unaligned
      fds.emplace_back(raw);
    }
  }
}

void wait_fd(int fd, short events, int timeout_ms, const char* what) {
  for (;;) {
    pollfd p{fd, events, 0};
    int ready = ::poll(&p, 1, timeout_ms);
    if (ready > 0) return;
    if (ready == 0) throw_error(what, ": socket not ready within ", timeout_ms, " ms");
    if (errno != EINTR) throw_errno(what, ": poll");
  }
}

}  // namespace

void MessageReader::reset() noexcept {
  pending_.header = {};
  pending_.payload.fill(0);
  pending_.fds.clear();  // closes them
  header_got_ = 0;
  payload_got_ = 0;
}

MessageReader::Status MessageReader::read(int fd, Message& out) {
  constexpr std::size_t kHeaderSize = sizeof(MessageHeader);
  for (;;) {
    // Ask for exactly what the current message still lacks: never a byte of the next one.
    iovec iov{};
    if (header_got_ < kHeaderSize) {
      iov.iov_base = reinterpret_cast<std::uint8_t*>(&pending_.header) + header_got_;
      iov.iov_len = kHeaderSize - header_got_;
    } else {
      iov.iov_base = pending_.payload.data() + payload_got_;
      iov.iov_len = pending_.header.size - payload_got_;
    }
    alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kControlFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;

    const ssize_t n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return Status::again;
      if (errno == ECONNRESET) {
        reset();
        return Status::closed;
      }
      const int saved = errno;
      reset();
      errno = saved;
      throw_errno("vhost-user socket ", fd, ": recvmsg");
    }

    take_fds(msg, pending_.fds);
    if (msg.msg_flags & MSG_CTRUNC) {
      const std::size_t got = pending_.fds.size();
      reset();
      throw FatalProtocolError(str_cat("vhost-user message: control data truncated (", got,
                                       " fds received so far; at most ", kMaxFdsPerMessage, " allowed)"));
    }
    if (pending_.fds.size() > kMaxFdsPerMessage) {
      const std::size_t got = pending_.fds.size();
      const std::uint32_t request = header_got_ >= kHeaderSize ? pending_.header.request : 0;
      reset();
      throw FatalProtocolError(str_cat("vhost-user message ", request_name(request), ": ", got,
                                       " fds attached, at most ", kMaxFdsPerMessage));
    }
    if (n == 0) {
      reset();  // EOF, possibly mid-message: the partial message and its fds are dropped
      return Status::closed;
    }

    if (header_got_ < kHeaderSize) {
      header_got_ += static_cast<std::size_t>(n);
      if (header_got_ < kHeaderSize) continue;
      // Judge the header before reading a payload byte: its size is untrusted.
      const MessageHeader h = pending_.header;
      if ((h.flags & kFlagVersionMask) != kMessageVersion) {
        reset();
        throw FatalProtocolError(str_cat("vhost-user message ", request_name(h.request), " (", h.request,
                                         "): version ", h.flags & kFlagVersionMask, " (flags 0x", std::hex,
                                         h.flags, std::dec, "), expected ", kMessageVersion));
      }
      if (h.size > kMaxPayloadSize) {
        reset();
        throw FatalProtocolError(str_cat("vhost-user message ", request_name(h.request), " (", h.request,
                                         "): payload size ", h.size, " exceeds ", kMaxPayloadSize));
      }
    } else {
      payload_got_ += static_cast<std::size_t>(n);
    }

    if (header_got_ == kHeaderSize && payload_got_ == pending_.header.size) {
      // pending_'s payload was zero past what we wrote, so out's is too.
      out = std::move(pending_);
      pending_ = Message{};
      header_got_ = 0;
      payload_got_ = 0;
      return Status::message;
    }
  }
}

Message read_message_blocking(int fd) {
  MessageReader reader;
  Message message;
  for (;;) {
    switch (reader.read(fd, message)) {
      case MessageReader::Status::message:
        return message;
      case MessageReader::Status::closed:
        throw_error("vhost-user socket ", fd, ": peer closed the connection before a whole message");
      case MessageReader::Status::again:
        wait_fd(fd, POLLIN, -1, "vhost-user read");
        break;
    }
  }
}

void send_message(int fd, const MessageHeader& header, const void* payload, std::span<const int> fds) {
  if (header.size > kMaxPayloadSize) {
    throw_error("send message ", header.request, ": payload size ", header.size, " exceeds ", kMaxPayloadSize);
  }
  if (header.size != 0 && payload == nullptr) {
    throw_error("send message ", header.request, ": payload size ", header.size, " but no payload");
  }
  if (fds.size() > kMaxFdsPerMessage) {
    throw_error("send message ", header.request, ": ", fds.size(), " fds, at most ", kMaxFdsPerMessage);
  }

  const MessageHeader h = header;
  const std::size_t total = sizeof h + h.size;
  std::size_t sent = 0;
  alignas(cmsghdr) unsigned char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  while (sent < total) {
    iovec iov[2];
    int iovcnt = 0;
    if (sent < sizeof h) {
      iov[iovcnt++] = {const_cast<std::uint8_t*>(reinterpret_cast<const std::uint8_t*>(&h)) + sent,
                       sizeof h - sent};
      if (h.size != 0) iov[iovcnt++] = {const_cast<void*>(payload), h.size};
    } else {
      iov[iovcnt++] = {const_cast<std::uint8_t*>(static_cast<const std::uint8_t*>(payload)) + (sent - sizeof h),
                       total - sent};
    }
    msghdr msg{};
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<std::size_t>(iovcnt);
    // The fds ride with the first byte only; a retry after a partial write must not resend them.
    if (sent == 0 && !fds.empty()) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        wait_fd(fd, POLLOUT, kSendTimeoutMs, "vhost-user send");
        continue;
      }
      throw_errno("send message ", h.request, " (", total, " bytes, ", fds.size(), " fds) on socket ", fd);
    }
    sent += static_cast<std::size_t>(n);
  }
}

void send_message(int fd, const Message& message) {
  std::vector<int> raw;
  raw.reserve(message.fds.size());
  for (const UniqueFd& f : message.fds) raw.push_back(f.get());
  if (message.header.size > kMaxPayloadSize) {
    throw_error("send message ", message.header.request, ": payload size ", message.header.size,
                " exceeds ", kMaxPayloadSize);
  }
  send_message(fd, message.header, message.payload.data(), raw);
}

Message make_reply(const Message& request) {
  Message reply;
  reply.header = MessageHeader{request.header.request, kReplyFlags, 0};
  return reply;
}

Message make_u64_reply(const Message& request, std::uint64_t value) {
  Message reply = make_reply(request);
  reply.set_u64(value);
  return reply;
}

}  // namespace vhostd
