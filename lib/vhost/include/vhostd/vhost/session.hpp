// vhostd vhost: one frontend connection's protocol state machine.
//
// Owns: the negotiated features, the guest memory of the connection, every ring's
// configuration and its started/enabled state, and the mapping from each front-end request
// to its effect and reply. It does no I/O of its own: the runtime feeds it whole messages
// (handle()), kicks (on_kick()) and the disconnect (teardown()), and runs its rings through
// the RingHost interface.
//
// Ring layout: split until SET_FEATURES acks VIRTIO_F_RING_PACKED; from then on every ring is
// packed (SET_VRING_NUM takes any size, SET_VRING_ADDR carries the descriptor ring and the two
// event areas, SET/GET_VRING_BASE the packed encoding). The layout cannot change while a ring runs.
//
// Ring states (vhost-user spec "Ring states"): a ring is polled exactly when it is started
// (first kick, NOFD kick) and enabled (SET_VRING_ENABLE 1, or SET_FEATURES without
// VHOST_USER_F_PROTOCOL_FEATURES) and not in error. GET_VRING_BASE stops it. Any change of a
// running ring's configuration (call fd, addresses, log flag) happens with the ring taken off
// its poller, so the poller never sees a half-updated ring.
//
// Errors: a request that is malformed, out of range or not negotiated throws vhostd::Error
// inside handle(), which turns it into an error reply (REPLY_ACK u64 1, or a size-0 body for
// requests with a reply) plus a log line; FatalProtocolError propagates: close the connection.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "vhostd/base/quiescence.hpp"
#include "vhostd/memory/guest_memory.hpp"
#include "vhostd/vhost/backend.hpp"
#include "vhostd/vhost/message.hpp"
#include "vhostd/virtqueue/vring.hpp"

namespace vhostd {

// What the session needs from whoever runs its rings (the runtime's daemon).
class RingHost {
 public:
  virtual ~RingHost() = default;
  // Watch the kick fd until the first kick; then call Session::on_kick(index).
  virtual void watch_kick(std::uint16_t index, int fd) = 0;
  virtual void unwatch_kick(std::uint16_t index, int fd) = 0;
  // Hand a ring to a poller; take it back. stop_polling returns only once no poller can still
  // touch the ring.
  virtual void start_polling(std::uint16_t index, Vring& ring) = 0;
  virtual void stop_polling(std::uint16_t index, Vring& ring) = 0;
};

class Session {
 public:
  Session(std::string name, Backend& backend, RingHost& host, QsbrDomain& domain);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Handles one message; returns the reply to send, if one is due.
  // Throws FatalProtocolError when the connection must be closed.
  std::optional<Message> handle(Message& message);
  // The kick fd of ring `index` became readable (the first kick starts the ring).
  void on_kick(std::uint16_t index);
  // Control lcore, every so often while connected: a running ring the guest broke (a hostile
  // descriptor, see RingError) is taken off the data path, the reason logged and the ring's
  // error eventfd (SET_VRING_ERR) signalled. It stays stopped until the frontend reconfigures
  // it or resets the device; the other rings keep running. Returns how many it stopped.
  std::size_t check_ring_errors();
  // Frontend gone: rings stopped, memory unmapped, every fd closed, backend reset. The session
  // is then back in its initial state, ready for a new connection.
  void teardown();

  // ---- introspection (control lcore; tests and stats) ----
  const std::string& name() const noexcept { return name_; }
  std::size_t num_rings() const noexcept { return rings_.size(); }
  Vring& ring(std::size_t index) noexcept { return *rings_[index].vring; }
  bool ring_started(std::size_t index) const noexcept { return rings_[index].started; }
  bool ring_enabled(std::size_t index) const noexcept { return rings_[index].enabled; }
  bool ring_polled(std::size_t index) const noexcept { return rings_[index].polled; }
  // SET_VRING_ADDR's addresses of ring `index` (frontend virtual), or nullptr before it came.
  const VringAddresses* ring_addresses(std::size_t index) const noexcept {
    return rings_[index].addresses_set ? &rings_[index].addresses : nullptr;
  }
  const GuestMemory& memory() const noexcept { return memory_; }
  std::uint64_t acked_features() const noexcept { return acked_features_; }
  std::uint64_t acked_protocol_features() const noexcept { return acked_protocol_features_; }
  std::uint64_t offered_features() const noexcept;
  std::uint64_t offered_protocol_features() const noexcept;
  // Counts requests answered with an error (for stats and tests).
  std::uint64_t failed_requests() const noexcept { return failed_requests_; }
  // Rings stopped by check_ring_errors() on this connection.
  std::uint64_t broken_rings() const noexcept { return broken_rings_; }

 private:
  struct RingSlot {
    std::unique_ptr<Vring> vring;
    std::uint32_t size = 0;  // 0: SET_VRING_NUM not seen
    VringAddresses addresses{};
    bool addresses_set = false;
    bool started = false;
    bool enabled = false;
    bool polled = false;
    bool kick_watched = false;
    bool kick_nofd = false;
    std::uint64_t errors_at_start = 0;  // the ring's error counters when it was last started
  };

  std::optional<Message> dispatch(Message& message);
  bool negotiated(ProtocolFeature feature) const noexcept;
  void require(ProtocolFeature feature, const Message& message) const;
  RingSlot& slot_for(std::uint32_t index, const Message& message);

  void set_features(std::uint64_t features);
  // Puts every ring in `layout` (RING_PACKED negotiated or not); rings are stopped.
  void set_layout(RingLayout layout);
  void set_mem_table(Message& message);
  void set_vring_num(const Message& message);
  void set_vring_addr(const Message& message);
  void set_vring_base(const Message& message);
  Message get_vring_base(const Message& message);
  void set_vring_fd(Message& message);
  void set_vring_enable(const Message& message);
  void set_log_base(Message& message);
  Message get_config(const Message& message);
  void set_config(const Message& message);

  // Starts, stops and re-hands rings so that polled == started && enabled && !error.
  void update_polling(std::uint16_t index);
  void start_ring(std::uint16_t index);
  void stop_ring(std::uint16_t index);
  // Runs fn with the ring off its poller (if it was polled), then hands it back.
  template <typename Fn>
  void with_ring_paused(std::uint16_t index, Fn&& fn);
  void reset_rings();

  std::string name_;
  Backend& backend_;
  RingHost& host_;
  GuestMemory memory_;
  std::vector<RingSlot> rings_;
  std::uint64_t acked_features_ = 0;
  std::uint64_t acked_protocol_features_ = 0;
  bool features_set_ = false;
  RingLayout layout_ = RingLayout::split;  // of every ring: VIRTIO_F_RING_PACKED acked or not
  bool owner_set_ = false;
  std::uint8_t status_ = 0;
  UniqueFd log_call_fd_;  // SET_LOG_FD
  std::uint64_t failed_requests_ = 0;
  std::uint64_t broken_rings_ = 0;
};

}  // namespace vhostd
