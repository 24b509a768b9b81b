// vhostd vhost: the vhost-user byte-stream codec.
//
// Owns: turning a Unix stream socket into whole Messages (reassembling arbitrary fragments,
// collecting SCM_RIGHTS fds, refusing framing violations before reading or allocating
// anything by them), sending a Message with its fds, and building replies. Which payloads
// are acceptable for which request is message.hpp's validate_request(); what a request
// does is the session's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "vhostd/vhost/message.hpp"

namespace vhostd {

// Incremental reader for one connection. It keeps the partial message between calls, so a
// message may arrive in any number of fragments (one byte at a time included). It never reads
// past the end of the current message, so the next message's bytes and fds stay queued.
class MessageReader {
 public:
  enum class Status {
    message,  // `out` holds one whole message (payload bytes past header.size are zero)
    again,    // no more data for now (the socket would block); call again when readable
    closed,   // the peer closed the stream (also mid-message: the partial message is dropped)
  };

  // Reads without blocking (MSG_DONTWAIT), whatever the fd's mode. Received fds are
  // close-on-exec and owned by `out.fds` (or closed if the message is dropped).
  // Throws FatalProtocolError (connection must be closed; any fds received so far are closed)
  // for: header version != 1, size > kMaxPayloadSize, more than kMaxFdsPerMessage fds, or a
  // truncated control message. Throws Error for socket errors other than EAGAIN / EINTR;
  // ECONNRESET counts as the peer closing (closed).
  Status read(int fd, Message& out);

  // True while part of a message has been read.
  bool mid_message() const noexcept { return header_got_ != 0; }

 private:
  void reset() noexcept;

  Message pending_;               // header + payload + fds assembled so far
  std::size_t header_got_ = 0;    // header bytes received (0..12)
  std::size_t payload_got_ = 0;   // payload bytes received (0..header.size)
};

// Reads one whole message, waiting as long as it takes (for blocking sockets, tests and the
// backend channel's acks). Throws Error if the peer closes first, FatalProtocolError as read().
Message read_message_blocking(int fd);

// Sends the header, the payload (header.size bytes) and `fds` as SCM_RIGHTS with the first
// byte. Loops over partial writes and EINTR; on a non-blocking socket that is full, waits up
// to kSendTimeoutMs for room, then throws Error. Never raises SIGPIPE (MSG_NOSIGNAL).
inline constexpr int kSendTimeoutMs = 5000;
void send_message(int fd, const MessageHeader& header, const void* payload, std::span<const int> fds);
void send_message(int fd, const Message& message);

// A reply to `request`: same request id, flags exactly kReplyFlags (0x5), empty payload.
Message make_reply(const Message& request);
// A reply carrying one u64 (GET_* answers, REPLY_ACK status: 0 = success).
Message make_u64_reply(const Message& request, std::uint64_t value);

}  // namespace vhostd
