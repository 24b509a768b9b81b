// vhostd vhost: the vhost-user message definitions.
//
// Owns: request ids (front-end and backend channel), header flags and limits, the payload
// structs laid out exactly as on the wire, feature-bit constants, the in-memory Message, and
// validate_request(), which checks a request's payload size and fd count for its type before
// any handler looks at the payload. The byte stream itself is the codec's (codec.hpp).
//
// Wire reference: QEMU docs/interop/vhost-user.rst. All integers are native byte order.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "vhostd/base/error.hpp"
#include "vhostd/base/fd.hpp"

namespace vhostd {

// ---- request ids ----

// Front-end -> backend requests (ids 1..44, in spec order; the numbering is the wire value).
enum class Request : std::uint32_t {
  get_features = 1,
  set_features,
  set_owner,
  reset_owner,
  set_mem_table,
  set_log_base,
  set_log_fd,
  set_vring_num,
  set_vring_addr,
  set_vring_base,
  get_vring_base,
  set_vring_kick,
  set_vring_call,
  set_vring_err,
  get_protocol_features,
  set_protocol_features,
  get_queue_num,
  set_vring_enable,
  send_rarp,
  net_set_mtu,
  set_backend_req_fd,
  iotlb_msg,
  set_vring_endian,
  get_config,
  set_config,
  create_crypto_session,
  close_crypto_session,
  postcopy_advise,
  postcopy_listen,
  postcopy_end,
  get_inflight_fd,
  set_inflight_fd,
  gpu_set_socket,
  reset_device,
  vring_kick,
  get_max_mem_slots,
  add_mem_reg,
  rem_mem_reg,
  set_status,
  get_status,
  get_shared_object,
  set_device_state_fd,
  check_device_state,
  get_shmem_config,
};
inline constexpr std::uint32_t kMaxRequest = 44;
static_assert(static_cast<std::uint32_t>(Request::get_shmem_config) == kMaxRequest);

// Backend -> front-end requests, sent on the SET_BACKEND_REQ_FD channel.
enum class BackendRequest : std::uint32_t {
  iotlb_msg = 1,
  config_change_msg,
  vring_host_notifier_msg,
  vring_call,
  vring_err,
  shared_object_add,
  shared_object_remove,
  shared_object_lookup,
};

// "SET_MEM_TABLE" for 5; "UNKNOWN" for an id outside 1..kMaxRequest. For log lines and errors.
const char* request_name(std::uint32_t id) noexcept;

// ---- header ----

struct MessageHeader {
  std::uint32_t request;
  std::uint32_t flags;
  std::uint32_t size;  // payload bytes that follow the header
};
static_assert(sizeof(MessageHeader) == 12 && std::is_trivially_copyable_v<MessageHeader>);

inline constexpr std::uint32_t kMessageVersion = 1;
inline constexpr std::uint32_t kFlagVersionMask = 0x3;
inline constexpr std::uint32_t kFlagReply = 0x4;
inline constexpr std::uint32_t kFlagNeedReply = 0x8;
// Exactly what a reply carries: QEMU rejects a reply whose flags are anything else.
inline constexpr std::uint32_t kReplyFlags = kMessageVersion | kFlagReply;
static_assert(kReplyFlags == 0x5);
// Larger than every payload the protocol defines (the biggest, SET_MEM_TABLE, is 264 bytes);
// a header announcing more is a framing violation, refused before anything is read or allocated.
inline constexpr std::uint32_t kMaxPayloadSize = 4096;
inline constexpr std::size_t kMaxFdsPerMessage = 8;

// ---- payloads (layout exactly as on the wire) ----

// SET_VRING_NUM / SET_VRING_BASE / GET_VRING_BASE / SET_VRING_ENABLE / SET_VRING_ENDIAN /
// VRING_KICK, and the backend channel's VRING_CALL / VRING_ERR.
struct VringStatePayload {
  std::uint32_t index;
  std::uint32_t num;
};
static_assert(sizeof(VringStatePayload) == 8);

// SET_VRING_ADDR. Addresses are front-end virtual addresses (log_guest_addr is guest-physical).
struct VringAddrPayload {
  std::uint32_t index;
  std::uint32_t flags;  // bit 0: log used-ring writes
  std::uint64_t desc_user_addr;
  std::uint64_t used_user_addr;
  std::uint64_t avail_user_addr;
  std::uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddrPayload) == 40);

// One memory region (VhostUserMemoryRegion).
struct MemoryRegionPayload {
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;
  std::uint64_t mmap_offset;
};
static_assert(sizeof(MemoryRegionPayload) == 32);

// SET_MEM_TABLE. Only num_regions entries are on the wire: size = 8 + 32 * num_regions.
inline constexpr std::uint32_t kMaxMemTableRegions = 8;
struct MemTablePayload {
  std::uint32_t num_regions;
  std::uint32_t padding;
  MemoryRegionPayload regions[kMaxMemTableRegions];
};
static_assert(sizeof(MemTablePayload) == 8 + 32 * kMaxMemTableRegions);

// ADD_MEM_REG / REM_MEM_REG (VhostUserMemRegMsg).
struct MemRegPayload {
  std::uint64_t padding;
  MemoryRegionPayload region;
};
static_assert(sizeof(MemRegPayload) == 40);

// SET_LOG_BASE (with LOG_SHMFD): the dirty log's size and offset in the attached fd.
struct LogPayload {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
};
static_assert(sizeof(LogPayload) == 16);

// GET_CONFIG / SET_CONFIG: this header, then `size` bytes of config space.
inline constexpr std::uint32_t kMaxConfigSize = 256;  // VHOST_USER_MAX_CONFIG_SIZE
struct ConfigPayloadHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;
};
static_assert(sizeof(ConfigPayloadHeader) == 12);

// GET_INFLIGHT_FD / SET_INFLIGHT_FD (VhostUserInflight). Not packed in QEMU: natural alignment
// pads it to 24 bytes, and QEMU sends sizeof (24), so the 4 trailing bytes are on the wire.
struct InflightPayload {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
  std::uint16_t num_queues;
  std::uint16_t queue_size;
  std::uint32_t padding = 0;  // explicit so a copy never leaks stack bytes onto the wire
};
static_assert(sizeof(InflightPayload) == 24);

// Backend channel VRING_HOST_NOTIFIER_MSG (VhostUserVringArea): u64 = ring index | NOFD.
struct VringAreaPayload {
  std::uint64_t u64;
  std::uint64_t size;
  std::uint64_t offset;
};
static_assert(sizeof(VringAreaPayload) == 24);

// ---- feature bits ----

inline constexpr std::uint64_t kVirtioFNotifyOnEmpty = 1ull << 24;
inline constexpr std::uint64_t kVirtioFLogAll = 1ull << 26;  // VHOST_F_LOG_ALL
inline constexpr std::uint64_t kVirtioFRingIndirectDesc = 1ull << 28;
inline constexpr std::uint64_t kVirtioFRingEventIdx = 1ull << 29;
inline constexpr std::uint64_t kVhostUserFProtocolFeatures = 1ull << 30;
inline constexpr std::uint64_t kVirtioFVersion1 = 1ull << 32;
inline constexpr std::uint64_t kVirtioFAccessPlatform = 1ull << 33;
inline constexpr std::uint64_t kVirtioFRingPacked = 1ull << 34;
inline constexpr std::uint64_t kVirtioFInOrder = 1ull << 35;
inline constexpr std::uint64_t kVirtioFNotificationData = 1ull << 38;

// Protocol feature bit numbers (GET/SET_PROTOCOL_FEATURES).
enum class ProtocolFeature : unsigned {
  mq = 0,
  log_shmfd,
  rarp,
  reply_ack,
  net_mtu,
  backend_req,
  cross_endian,
  crypto_session,
  pagefault,
  config,
  backend_send_fd,
  host_notifier,
  inflight_shmfd,
  reset_device,
  inband_notifications,
  configure_mem_slots,
  status,
  xen_mmap,
  shared_object,
  device_state,
  get_vring_base_inflight,
  gpa_addresses,
  shmem,
};
constexpr std::uint64_t protocol_bit(ProtocolFeature f) noexcept {
  return 1ull << static_cast<unsigned>(f);
}
static_assert(protocol_bit(ProtocolFeature::shmem) == 1ull << 22);

// SET_VRING_KICK / CALL / ERR u64: ring index in bits 0-7; bit 8 = no fd attached.
inline constexpr std::uint64_t kVringIndexMask = 0xff;
inline constexpr std::uint64_t kVringNoFdMask = 1ull << 8;

// ---- the message ----

struct Message {
  MessageHeader header{};
  std::array<std::uint8_t, kMaxPayloadSize> payload{};
  std::vector<UniqueFd> fds;  // received with the message; whoever keeps one moves it out

  Request request() const noexcept { return static_cast<Request>(header.request); }
  bool need_reply() const noexcept { return (header.flags & kFlagNeedReply) != 0; }

  // The first sizeof(T) payload bytes as T. The caller has validated header.size (see
  // validate_request); bytes past header.size are zero or stale, never out of bounds.
  template <class T>
  T payload_as() const noexcept {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxPayloadSize);
    T value;
    std::memcpy(&value, payload.data(), sizeof(T));
    return value;
  }
  // Copies `value` into the payload and sets header.size to sizeof(T).
  template <class T>
  void set_payload(const T& value) noexcept {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= kMaxPayloadSize);
    std::memcpy(payload.data(), &value, sizeof(T));
    header.size = static_cast<std::uint32_t>(sizeof(T));
  }
  std::uint64_t u64() const noexcept { return payload_as<std::uint64_t>(); }
  void set_u64(std::uint64_t value) noexcept { set_payload(value); }
};

// A framing violation (bad version, oversized payload, too many or truncated fds): the byte
// stream can no longer be trusted, so the connection must be closed, not answered.
class FatalProtocolError : public Error {
 public:
  using Error::Error;
};

// "" when the request's payload size and fd count are right for its type; otherwise a reason
// naming the request and the values ("SET_VRING_NUM (8): payload size 4, expected 8"). It
// checks shape only (sizes, counts, the KICK NOFD bit, SET_MEM_TABLE's region count, the
// config size), never semantics such as ring indices or feature negotiation.
std::string validate_request(const Message& message);

}  // namespace vhostd
