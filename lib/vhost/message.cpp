// vhostd vhost: request names and per-request shape validation (see message.hpp).
#include "vhostd/vhost/message.hpp"

#include <cstddef>

namespace vhostd {

namespace {

constexpr const char* kRequestNames[kMaxRequest + 1] = {
    "UNKNOWN",
    "GET_FEATURES",
    "SET_FEATURES",
    "SET_OWNER",
    "RESET_OWNER",
    "SET_MEM_TABLE",
    "SET_LOG_BASE",
    "SET_LOG_FD",
    "SET_VRING_NUM",
    "SET_VRING_ADDR",
    "SET_VRING_BASE",
    "GET_VRING_BASE",
    "SET_VRING_KICK",
    "SET_VRING_CALL",
    "SET_VRING_ERR",
    "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES",
    "GET_QUEUE_NUM",
    "SET_VRING_ENABLE",
    "SEND_RARP",
    "NET_SET_MTU",
    "SET_BACKEND_REQ_FD",
    "IOTLB_MSG",
    "SET_VRING_ENDIAN",
    "GET_CONFIG",
    "SET_CONFIG",
    "CREATE_CRYPTO_SESSION",
    "CLOSE_CRYPTO_SESSION",
    "POSTCOPY_ADVISE",
    "POSTCOPY_LISTEN",
    "POSTCOPY_END",
    "GET_INFLIGHT_FD",
    "SET_INFLIGHT_FD",
    "GPU_SET_SOCKET",
    "RESET_DEVICE",
    "VRING_KICK",
    "GET_MAX_MEM_SLOTS",
    "ADD_MEM_REG",
    "REM_MEM_REG",
    "SET_STATUS",
    "GET_STATUS",
    "GET_SHARED_OBJECT",
    "SET_DEVICE_STATE_FD",
    "CHECK_DEVICE_STATE",
    "GET_SHMEM_CONFIG",
};

// Payload sizes of requests that have no struct of their own here (handled, if at all, by
// devices): VhostUserIOTLB is 3 x u64 + 2 x u8, padded to 32; VhostUserShared is a 16-byte
// UUID; VhostUserTransferDeviceState is 2 x u32.
constexpr std::uint32_t kIotlbPayloadSize = 32;
constexpr std::uint32_t kSharedObjectPayloadSize = 16;
constexpr std::uint32_t kDeviceStatePayloadSize = 8;

// Checks one request against an expected size and fd-count range; builds the reason lazily.
class Checker {
 public:
  explicit Checker(const Message& m)
      : id_(m.header.request), size_(m.header.size), fds_(m.fds.size()) {}

  std::string prefix() const { return str_cat(request_name(id_), " (", id_, "): "); }

  std::string size_is(std::uint32_t expected) const {
    if (size_ == expected) return {};
    return str_cat(prefix(), "payload size ", size_, ", expected ", expected);
  }
  std::string fds_in(std::size_t lo, std::size_t hi) const {
    if (fds_ >= lo && fds_ <= hi) return {};
    if (lo == hi) return str_cat(prefix(), fds_, " fds, expected ", lo);
    return str_cat(prefix(), fds_, " fds, expected ", lo, " to ", hi);
  }
  // Size first: a wrong size makes the fd count meaningless to report.
  std::string shape(std::uint32_t size, std::size_t fds_lo, std::size_t fds_hi) const {
    std::string reason = size_is(size);
    return reason.empty() ? fds_in(fds_lo, fds_hi) : reason;
  }
  std::string shape(std::uint32_t size, std::size_t fds) const { return shape(size, fds, fds); }

 private:
  std::uint32_t id_;
  std::uint32_t size_;
  std::size_t fds_;
};

std::string validate_mem_table(const Message& m, const Checker& check) {
  constexpr std::uint32_t kTableHeader = offsetof(MemTablePayload, regions);
  // Read num_regions only once the payload is known to hold it.
  if (m.header.size < kTableHeader) {
    return str_cat(check.prefix(), "payload size ", m.header.size, " is shorter than the ",
                   kTableHeader, "-byte table header");
  }
  const auto num_regions = m.payload_as<std::uint32_t>();
  if (num_regions < 1 || num_regions > kMaxMemTableRegions) {
    return str_cat(check.prefix(), num_regions, " regions, expected 1 to ", kMaxMemTableRegions);
  }
  std::string reason = check.size_is(kTableHeader + num_regions * sizeof(MemoryRegionPayload));
  if (!reason.empty()) return str_cat(reason, " for ", num_regions, " regions");
  // One fd per region, in order: a mismatch would pair regions with the wrong files.
  return check.fds_in(num_regions, num_regions);
}

std::string validate_config(const Message& m, const Checker& check) {
  constexpr std::uint32_t kHeader = sizeof(ConfigPayloadHeader);
  if (m.header.size < kHeader) {
    return str_cat(check.prefix(), "payload size ", m.header.size, " is shorter than the ", kHeader,
                   "-byte config header");
  }
  const auto config = m.payload_as<ConfigPayloadHeader>();
  if (config.size > kMaxConfigSize) {
    return str_cat(check.prefix(), "config size ", config.size, " exceeds ", kMaxConfigSize);
  }
  std::string reason = check.size_is(kHeader + config.size);
  if (!reason.empty()) return str_cat(reason, " for config size ", config.size);
  return check.fds_in(0, 0);
}

std::string validate_vring_fd(const Message& m, const Checker& check) {
  std::string reason = check.size_is(sizeof(std::uint64_t));
  if (!reason.empty()) return reason;
  const bool nofd = (m.u64() & kVringNoFdMask) != 0;
  if (nofd && !m.fds.empty()) {
    return str_cat(check.prefix(), "NOFD bit set (value 0x", std::hex, m.u64(), std::dec, ") but ",
                   m.fds.size(), " fds attached");
  }
  return nofd ? std::string() : check.fds_in(1, 1);
}

}  // namespace

const char* request_name(std::uint32_t id) noexcept {
  return id >= 1 && id <= kMaxRequest ? kRequestNames[id] : kRequestNames[0];
}

std::string validate_request(const Message& m) {
  const Checker check(m);
  // A Message built outside the reader could claim more than its buffer holds.
  if (m.header.size > kMaxPayloadSize) {
    return str_cat(check.prefix(), "payload size ", m.header.size, " exceeds ", kMaxPayloadSize);
  }
  if (m.fds.size() > kMaxFdsPerMessage) {
    return str_cat(check.prefix(), m.fds.size(), " fds, at most ", kMaxFdsPerMessage);
  }
  if (m.header.request < 1 || m.header.request > kMaxRequest) {
    return str_cat("unknown request ", m.header.request);
  }

  constexpr std::uint32_t kU64 = sizeof(std::uint64_t);
  constexpr std::uint32_t kState = sizeof(VringStatePayload);
  switch (m.request()) {
    // No payload, no fds: QEMU and DPDK virtio-user send size 0; anything else is malformed.
    case Request::get_features:
    case Request::set_owner:
    case Request::reset_owner:
    case Request::get_protocol_features:
    case Request::get_queue_num:
    case Request::reset_device:
    case Request::get_max_mem_slots:
    case Request::get_status:
    case Request::postcopy_advise:
    case Request::postcopy_listen:
    case Request::postcopy_end:
    case Request::check_device_state:
    case Request::get_shmem_config:
      return check.shape(0, 0);

    // One u64 (SEND_RARP: the MAC in the low 6 bytes of it).
    case Request::set_features:
    case Request::set_protocol_features:
    case Request::set_status:
    case Request::net_set_mtu:
    case Request::send_rarp:
    case Request::close_crypto_session:
      return check.shape(kU64, 0);

    case Request::set_vring_num:
    case Request::set_vring_base:
    case Request::get_vring_base:
    case Request::set_vring_enable:
    case Request::set_vring_endian:
    case Request::vring_kick:
      return check.shape(kState, 0);

    case Request::set_vring_addr:
      return check.shape(sizeof(VringAddrPayload), 0);

    case Request::set_vring_kick:
    case Request::set_vring_call:
    case Request::set_vring_err:
      return validate_vring_fd(m, check);

    case Request::set_mem_table:
      return validate_mem_table(m, check);
    case Request::add_mem_reg:
      return check.shape(sizeof(MemRegPayload), 1);
    case Request::rem_mem_reg:
      // The spec says no fd; QEMU before 7.1 and libvhost-user sent one. Accept, never use it.
      return check.shape(sizeof(MemRegPayload), 0, 1);

    case Request::set_log_base:
      return check.shape(sizeof(LogPayload), 1);
    case Request::set_log_fd:
    case Request::set_backend_req_fd:
    case Request::gpu_set_socket:
      return check.shape(0, 1);

    case Request::get_config:
    case Request::set_config:
      return validate_config(m, check);

    case Request::get_inflight_fd:
      return check.shape(sizeof(InflightPayload), 0);
    case Request::set_inflight_fd:
      return check.shape(sizeof(InflightPayload), 1);

    case Request::iotlb_msg:
      return check.shape(kIotlbPayloadSize, 0);
    case Request::get_shared_object:
      return check.shape(kSharedObjectPayloadSize, 0);
    case Request::set_device_state_fd:
      return check.shape(kDeviceStatePayloadSize, 1);

    case Request::create_crypto_session:
      // Variable-length session parameters; the size was bounded above.
      return check.fds_in(0, 0);
  }
  return str_cat("unknown request ", m.header.request);
}

}  // namespace vhostd
