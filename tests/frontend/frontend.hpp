// vhostd tests: the in-tree vhost-user test frontend (the QEMU side of the socket).
//
// TestFrontend speaks the vhost-user wire protocol to a daemon over a real Unix socket. It
// encodes messages itself (its own wire structs, independent of lib/vhost's codec, so a codec
// bug cannot hide behind a symmetric one), passes fds with SCM_RIGHTS and reads replies with a
// deadline: a missing or malformed reply throws vhostd::Error, which fails the calling test.
//
// Three levels:
//   - raw: send() any request id with any payload, fds and flags (send_bytes() for malformed
//     framing); read_reply() / wait_closed();
//   - typed: one helper per request (get_features, set_mem_table, set_vring_addr, ...); in
//     reply_ack mode every request without a reply body carries NEED_REPLY and its u64 ack is
//     checked to be 0;
//   - setup_device(): the whole QEMU-like handshake over memfd guest memory, after which the
//     test drives the rings through GuestRing (guest_ring.hpp: a split DriverRing, or a
//     PackedDriverRing when DeviceOptions::packed acks RING_PACKED), kick() and wait_call().
#pragma once

#include <chrono>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "guest_ring.hpp"
#include "vhostd/base/fd.hpp"
#include "vhostd/vhost/endpoint.hpp"
#include "vhostd/vhost/message.hpp"

namespace vhostd::test {

using namespace std::chrono_literals;

// How long any reply or condition may take before the test fails.
inline constexpr std::chrono::milliseconds kReplyTimeout = 5000ms;

// ---- wire structs (vhost-user spec, native byte order) ----
namespace wire {

inline constexpr std::uint32_t kVersion = 0x1;
inline constexpr std::uint32_t kFlagReply = 0x4;
inline constexpr std::uint32_t kFlagNeedReply = 0x8;
inline constexpr std::uint64_t kVringNoFd = 1ull << 8;

struct Header {
  std::uint32_t request;
  std::uint32_t flags;
  std::uint32_t size;
};
static_assert(sizeof(Header) == 12);

struct VringState {
  std::uint32_t index;
  std::uint32_t num;
};

struct VringAddr {
  std::uint32_t index;
  std::uint32_t flags;
  std::uint64_t desc_user_addr;
  std::uint64_t used_user_addr;
  std::uint64_t avail_user_addr;
  std::uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40);

struct MemoryRegion {
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;
  std::uint64_t mmap_offset;
};
static_assert(sizeof(MemoryRegion) == 32);

struct MemRegPayload {
  std::uint64_t padding;
  MemoryRegion region;
};

struct LogPayload {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
};

struct ConfigHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;
};

}  // namespace wire

// One message read from the daemon.
struct RawReply {
  wire::Header header{};
  std::vector<std::uint8_t> payload;
  std::vector<UniqueFd> fds;

  // The u64 body (ack or value); throws Error when the body is not exactly 8 bytes.
  std::uint64_t u64() const;
  template <typename T>
  T as() const {
    if (payload.size() < sizeof(T)) {
      throw_error("reply to request ", header.request, ": payload ", payload.size(), " bytes, expected ",
                  sizeof(T));
    }
    T value;
    std::memcpy(&value, payload.data(), sizeof(T));
    return value;
  }
};

// A region of the guest memory as the frontend describes it, with its fd.
struct RegionSpec {
  wire::MemoryRegion region;
  int fd;  // not owned; duplicated by the kernel when sent
};

// What setup_device() negotiates and builds.
struct DeviceOptions {
  std::size_t num_rings = 2;
  std::uint16_t queue_size = 256;
  std::size_t memory_bytes = 16u << 20;
  // Negotiate VHOST_USER_F_PROTOCOL_FEATURES (and then the protocol features below).
  bool protocol_features = true;
  // Protocol features to ack, intersected with what the daemon offers.
  std::uint64_t protocol_feature_mask = ~0ull;
  // Virtio features to ack, intersected with what the daemon offers (LOG_ALL never by default).
  // RING_PACKED (34) and IN_ORDER (35) only through `packed` and `in_order` below.
  std::uint64_t feature_mask = ~((1ull << 26) | (1ull << 34) | (1ull << 35));
  // Ack VIRTIO_F_RING_PACKED (the daemon must offer it) and build packed driver rings; the
  // queue size may then be any value in [1, max].
  bool packed = false;
  // Ack VIRTIO_F_IN_ORDER (the daemon must offer it): the driver rings use descriptors in ring
  // order and accept batched used elements.
  bool in_order = false;
  // Send NEED_REPLY on every request without a reply body and check the ack (needs REPLY_ACK).
  bool reply_ack = true;
  // Split the guest memory into this many SET_MEM_TABLE regions (same memfd, mmap_offset).
  std::size_t mem_regions = 1;
  // Describe the memory with ADD_MEM_REG instead of SET_MEM_TABLE (CONFIGURE_MEM_SLOTS).
  bool add_mem_reg = false;
  // Send SET_VRING_ENABLE 1 per ring (only with protocol features).
  bool enable_rings = true;
  // Send SET_VRING_CALL / SET_VRING_KICK eventfds.
  bool call_fds = true;
};

class TestFrontend {
 public:
  // Connects to a daemon listening on `path` (retrying until kReplyTimeout).
  static TestFrontend connect(const std::string& path);
  // Wraps an already connected socket (a frontend that listens: see accept_from()).
  static TestFrontend adopt(UniqueFd fd);
  // Client-mode daemons: waits up to `timeout` for the daemon to connect to `listener`.
  static TestFrontend accept_from(UnixListener& listener, std::chrono::milliseconds timeout = kReplyTimeout);

  TestFrontend(TestFrontend&&) noexcept;
  TestFrontend& operator=(TestFrontend&&) noexcept;
  ~TestFrontend();

  int fd() const noexcept { return sock_.get(); }
  // Closes the socket (the daemon sees a disconnect). Guest memory stays mapped here.
  void close();

  // ---- raw messages ----
  // Sends one message: header {request, version 1 | NEED_REPLY?, payload size}, payload, fds.
  void send(Request request, std::span<const std::uint8_t> payload, std::span<const int> fds = {},
            bool need_reply = false);
  // Sends a message with an arbitrary header (malformed framing tests).
  void send_header(const wire::Header& header, std::span<const std::uint8_t> payload,
                   std::span<const int> fds = {});
  template <typename T>
  void send_struct(Request request, const T& payload, std::span<const int> fds = {}, bool need_reply = false) {
    send(request, std::span(reinterpret_cast<const std::uint8_t*>(&payload), sizeof(T)), fds, need_reply);
  }
  void send_u64(Request request, std::uint64_t value, std::span<const int> fds = {}, bool need_reply = false) {
    send_struct(request, value, fds, need_reply);
  }
  // Reads the next message; throws Error on timeout, EOF, bad flags (not exactly 0x5) or a
  // request id other than `expected`.
  RawReply read_reply(Request expected, std::chrono::milliseconds timeout = kReplyTimeout);
  // Reads the next message whatever it is; nullopt on timeout; throws Error on EOF.
  std::optional<RawReply> try_read(std::chrono::milliseconds timeout);
  // Waits until the daemon closes the connection (EOF); any data received first is discarded.
  // Returns false on timeout.
  bool wait_closed(std::chrono::milliseconds timeout = kReplyTimeout);
  // Sends the request with NEED_REPLY and returns the u64 ack (0 = success).
  std::uint64_t request_ack(Request request, std::span<const std::uint8_t> payload,
                            std::span<const int> fds = {});
  template <typename T>
  std::uint64_t request_ack_struct(Request request, const T& payload, std::span<const int> fds = {}) {
    return request_ack(request, std::span(reinterpret_cast<const std::uint8_t*>(&payload), sizeof(T)), fds);
  }
  // Proves the daemon has nothing pending for us: a GET_FEATURES round trip must come back as
  // the very next message.
  void expect_in_sync();

  // In reply_ack mode, typed helpers for requests without a reply body set NEED_REPLY and
  // require ack 0. Turn it on only after REPLY_ACK was negotiated.
  void set_reply_ack(bool on) noexcept { reply_ack_ = on; }
  bool reply_ack() const noexcept { return reply_ack_; }

  // ---- typed requests ----
  std::uint64_t get_features();
  void set_features(std::uint64_t features);
  void set_owner();
  void reset_owner();
  std::uint64_t get_protocol_features();
  void set_protocol_features(std::uint64_t features);
  std::uint64_t get_queue_num();
  void set_mem_table(std::span<const RegionSpec> regions);
  void add_mem_reg(const RegionSpec& region);
  void rem_mem_reg(const wire::MemoryRegion& region);
  std::uint64_t get_max_mem_slots();
  void set_vring_num(std::uint32_t index, std::uint32_t num);
  void set_vring_addr(const wire::VringAddr& addr);
  void set_vring_base(std::uint32_t index, std::uint32_t base);
  std::uint32_t get_vring_base(std::uint32_t index);
  // fd < 0: NOFD (bit 8) with no fd attached.
  void set_vring_kick(std::uint32_t index, int fd);
  void set_vring_call(std::uint32_t index, int fd);
  void set_vring_err(std::uint32_t index, int fd);
  void set_vring_enable(std::uint32_t index, bool enable);
  // nullopt when the daemon answered with a size-0 body (out of range / refused).
  std::optional<std::vector<std::uint8_t>> get_config(std::uint32_t offset, std::uint32_t size);
  void set_status(std::uint8_t status);
  std::uint8_t get_status();
  void reset_device();
  // SET_LOG_BASE: always answered with a u64 (LOG_SHMFD); returns it.
  std::uint64_t set_log_base(int fd, std::uint64_t size, std::uint64_t offset = 0);

  // ---- the device set up by setup_device() ----
  // Each ring gets a data arena of fixed chain slots (one per request in flight) so traffic of
  // any length reuses the same guest memory.
  static constexpr std::uint64_t kSlotBytes = 16384;
  static constexpr std::uint32_t kMaxSlots = 128;
  struct Ring {
    std::unique_ptr<GuestRing> driver;
    UniqueFd kick;
    UniqueFd call;
    std::uint64_t data_gpa = 0;
    std::vector<std::uint32_t> free_slots;
  };

  // The QEMU-like handshake (see DeviceOptions). Returns the acked virtio features.
  std::uint64_t setup_device(const DeviceOptions& options = {});
  // Negotiation only: GET_FEATURES, SET_OWNER, protocol features, SET_FEATURES.
  std::uint64_t negotiate(const DeviceOptions& options);
  // Allocates guest memory (if not yet) and describes it to the daemon per options.
  void send_memory(const DeviceOptions& options);
  // SET_VRING_NUM/ADDR/BASE, CALL, KICK (and ENABLE) for ring `index`, building its GuestRing
  // in the layout the acked features say (packed with RING_PACKED, in order with IN_ORDER).
  void setup_ring(std::uint32_t index, const DeviceOptions& options);
  // The virtio features `options` ack out of `offered` (throws if `packed` / `in_order` ask for
  // a feature that is not offered). Without protocol features, bit 30 is left out.
  static std::uint64_t features_for(const DeviceOptions& options, std::uint64_t offered);
  // The layout the acked features give the rings.
  RingLayout layout() const noexcept {
    return (acked_features_ & kVirtioFRingPacked) ? RingLayout::packed : RingLayout::split;
  }

  TestGuestMemory& memory() { return *memory_; }
  bool has_memory() const noexcept { return memory_ != nullptr; }
  // The SET_MEM_TABLE regions describing the whole guest memory split into `n` regions.
  std::vector<RegionSpec> memory_regions(std::size_t n) const;
  wire::VringAddr ring_addresses(std::uint32_t index, std::uint32_t flags = 0) const;
  std::size_t num_rings() const noexcept { return rings_.size(); }
  GuestRing& ring(std::size_t index) { return *rings_.at(index).driver; }
  Ring& ring_fds(std::size_t index) { return rings_.at(index); }
  std::uint64_t acked_features() const noexcept { return acked_features_; }
  std::uint64_t acked_protocol_features() const noexcept { return acked_protocol_features_; }

  // Signals ring `index`'s kick eventfd.
  void kick(std::size_t index);
  // Waits for (and drains) ring `index`'s call eventfd; false on timeout.
  bool wait_call(std::size_t index, std::chrono::milliseconds timeout = kReplyTimeout);
  // Drains the call eventfd without waiting; true if it had been signalled.
  bool drain_call(std::size_t index);

 private:
  explicit TestFrontend(UniqueFd sock);
  void send_simple_u64(Request request, std::uint64_t value, std::span<const int> fds = {});
  template <typename T>
  void send_simple(Request request, const T& payload, std::span<const int> fds = {});
  void send_simple_bytes(Request request, std::span<const std::uint8_t> payload, std::span<const int> fds);
  void read_exact(void* dst, std::size_t n, std::chrono::steady_clock::time_point deadline,
                  std::vector<UniqueFd>* fds, bool* eof);

  UniqueFd sock_;
  bool reply_ack_ = false;
  std::uint64_t acked_features_ = 0;
  std::uint64_t acked_protocol_features_ = 0;
  std::unique_ptr<TestGuestMemory> memory_;
  std::vector<Ring> rings_;
};

// ---- pushing requests through the echo device ----

// One request chain: the readable segments carry `request` split at `readable_sizes`; the
// writable segments have `writable_sizes`. `indirect` puts the chain in an indirect table.
struct EchoChain {
  std::vector<std::uint8_t> request;
  std::vector<std::uint32_t> readable_sizes;  // sums to request.size()
  std::vector<std::uint32_t> writable_sizes;
  bool indirect = false;
};

// A chain made available to the device, with what its completion must look like.
struct PendingEcho {
  std::uint16_t head = 0;
  std::uint32_t slot = 0;
  std::vector<std::uint8_t> request;
  // Writable buffers (guest-physical address, length) in chain order.
  std::vector<std::pair<std::uint64_t, std::uint32_t>> writable;
  std::uint32_t writable_bytes = 0;
  std::uint32_t expected_len() const noexcept {
    return std::min<std::uint32_t>(static_cast<std::uint32_t>(request.size()), writable_bytes);
  }
};

// Builds the chain in guest memory and publishes it in the avail ring (no kick).
PendingEcho push_echo(TestFrontend& frontend, std::size_t ring, const EchoChain& chain);
// Waits for the used elements of `pending` (in order) and checks each one (id, len, bytes);
// frees their buffers. Throws Error on timeout or mismatch.
void complete_echoes(TestFrontend& frontend, std::size_t ring, std::vector<PendingEcho>& pending,
                     std::chrono::milliseconds timeout = kReplyTimeout);
// Split rings only: the used index the device published / the avail index the driver published.
std::uint16_t device_used_idx(TestFrontend& frontend, std::size_t ring);
std::uint16_t driver_avail_idx(TestFrontend& frontend, std::size_t ring);
// Split rings only: waits until the device's used index reaches `idx` (16-bit compare); false
// on timeout.
bool wait_used_idx(TestFrontend& frontend, std::size_t ring, std::uint16_t idx,
                   std::chrono::milliseconds timeout = kReplyTimeout);
// Split rings only, hostile: publishes `head` as the next avail entry as is (no descriptor
// written).
void push_raw_head(TestFrontend& frontend, std::size_t ring, std::uint16_t head);
// Hostile, either layout: makes one entry naming head / buffer id `id` available as is, no
// bookkeeping (split: push_raw_head(); packed: one descriptor at the next avail slot carrying
// `id`, over 64 bytes of the ring's data arena, device-writable if `writable`).
void push_hostile_id(TestFrontend& frontend, std::size_t ring, std::uint16_t id, bool writable = false);
// A random chain shape for a request of 1..max_bytes bytes (1-4 readable segments, 1-3
// writable ones, sometimes too short for the whole response, sometimes indirect).
EchoChain random_chain(std::uint64_t& rng_state, std::uint32_t max_bytes, bool allow_indirect);

// Pushes each chain, kicks once, waits for every used element and checks each response: used
// len == min(request bytes, writable bytes) and the writable buffers hold the request's first
// bytes. Throws Error (naming the chain) on any mismatch or timeout.
void echo_burst(TestFrontend& frontend, std::size_t ring, std::span<const EchoChain> chains);
// One small request of `size` bytes (pattern derived from `seed`) through ring `ring`.
void echo_one(TestFrontend& frontend, std::size_t ring, std::uint32_t size = 64, std::uint32_t seed = 0);

// Polls `condition` every millisecond until it holds or `timeout` passes.
template <typename Fn>
bool wait_until(Fn&& condition, std::chrono::milliseconds timeout = kReplyTimeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    struct timespec ts {0, 1'000'000};
    ::nanosleep(&ts, nullptr);
  }
}

}  // namespace vhostd::test
