// vhostd tests: the in-tree vhost-user test frontend (see frontend.hpp).
#include "frontend.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "vhostd/base/error.hpp"

namespace vhostd::test {

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kMaxFds = 8;
constexpr std::uint64_t kProtocolFeaturesBit = 1ull << 30;
constexpr std::uint64_t kReplyAckBit = 1ull << 3;

int remaining_ms(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

std::uint32_t req_id(Request request) { return static_cast<std::uint32_t>(request); }

}  // namespace

std::uint64_t RawReply::u64() const {
  if (payload.size() != sizeof(std::uint64_t)) {
    throw_error("reply to request ", header.request, ": expected a u64 body, got ", payload.size(), " bytes");
  }
  std::uint64_t value;
  std::memcpy(&value, payload.data(), sizeof value);
  return value;
}

// ---- connection ----

TestFrontend::TestFrontend(UniqueFd sock) : sock_(std::move(sock)) {}
TestFrontend::TestFrontend(TestFrontend&&) noexcept = default;
TestFrontend& TestFrontend::operator=(TestFrontend&&) noexcept = default;
TestFrontend::~TestFrontend() = default;

TestFrontend TestFrontend::connect(const std::string& path) {
  return TestFrontend(connect_with_retry(path, kReplyTimeout));
}

TestFrontend TestFrontend::adopt(UniqueFd fd) {
  if (!fd) throw_error("TestFrontend::adopt: invalid fd");
  return TestFrontend(std::move(fd));
}

TestFrontend TestFrontend::accept_from(UnixListener& listener, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    UniqueFd fd = listener.accept();
    if (fd) {
      // accept4 gave a non-blocking socket; the frontend's reads poll with deadlines anyway.
      return TestFrontend(std::move(fd));
    }
    if (Clock::now() >= deadline) {
      throw_error("no daemon connected to ", listener.path(), " within ", timeout.count(), " ms");
    }
    pollfd pfd{listener.fd(), POLLIN, 0};
    ::poll(&pfd, 1, std::min(remaining_ms(deadline), 100));
  }
}

void TestFrontend::close() { sock_.reset(); }

// ---- raw messages ----

void TestFrontend::send(Request request, std::span<const std::uint8_t> payload, std::span<const int> fds,
                        bool need_reply) {
  wire::Header header{req_id(request), wire::kVersion | (need_reply ? wire::kFlagNeedReply : 0u),
                      static_cast<std::uint32_t>(payload.size())};
  send_header(header, payload, fds);
}

void TestFrontend::send_header(const wire::Header& header, std::span<const std::uint8_t> payload,
                               std::span<const int> fds) {
  if (!sock_) throw_error("send: the frontend is not connected");
  if (fds.size() > kMaxFds) throw_error("send: ", fds.size(), " fds (at most ", kMaxFds, ")");
  const auto* header_bytes = reinterpret_cast<const std::uint8_t*>(&header);
  std::vector<std::uint8_t> bytes(header_bytes, header_bytes + sizeof header);
  bytes.insert(bytes.end(), payload.begin(), payload.end());

  std::size_t sent = 0;
  bool fds_sent = fds.empty();
  while (sent < bytes.size()) {
    iovec iov{bytes.data() + sent, bytes.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
    if (!fds_sent) {
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
      cmsg->cmsg_level = SOL_SOCKET;
      cmsg->cmsg_type = SCM_RIGHTS;
      cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
    }
    ssize_t n = ::sendmsg(sock_.get(), &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        pollfd pfd{sock_.get(), POLLOUT, 0};
        if (::poll(&pfd, 1, static_cast<int>(kReplyTimeout.count())) <= 0) {
          throw_error("send request ", header.request, ": socket not writable within ", kReplyTimeout.count(),
                      " ms");
        }
        continue;
      }
      throw_errno("send request ", header.request);
    }
    fds_sent = true;
    sent += static_cast<std::size_t>(n);
  }
}

void TestFrontend::read_exact(void* dst, std::size_t n, Clock::time_point deadline, std::vector<UniqueFd>* fds,
                              bool* eof) {
  auto* out = static_cast<std::uint8_t*>(dst);
  std::size_t got = 0;
  *eof = false;
  while (got < n) {
    pollfd pfd{sock_.get(), POLLIN, 0};
    int rc = ::poll(&pfd, 1, remaining_ms(deadline));
    if (rc < 0) {
      if (errno == EINTR) continue;
      throw_errno("poll on the vhost-user socket");
    }
    if (rc == 0) throw_error("timeout");
    iovec iov{out + got, n - got};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)] = {};
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    ssize_t r = ::recvmsg(sock_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      if (errno == ECONNRESET) {
        *eof = true;
        return;
      }
      throw_errno("recvmsg on the vhost-user socket");
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (fds) fds->emplace_back(fd); else ::close(fd);
      }
    }
    if (r == 0) {
      *eof = true;
      return;
    }
    got += static_cast<std::size_t>(r);
  }
}

std::optional<RawReply> TestFrontend::try_read(std::chrono::milliseconds timeout) {
  if (!sock_) throw_error("read: the frontend is not connected");
  const auto deadline = Clock::now() + timeout;
  RawReply reply;
  bool eof = false;
  {
    pollfd pfd{sock_.get(), POLLIN, 0};
    int rc;
    do {
      rc = ::poll(&pfd, 1, remaining_ms(deadline));
    } while (rc < 0 && errno == EINTR);
    if (rc == 0) return std::nullopt;
  }
  try {
    read_exact(&reply.header, sizeof reply.header, deadline, &reply.fds, &eof);
  } catch (const Error&) {
    throw_error("reply header not complete within ", timeout.count(), " ms");
  }
  if (eof) throw_error("the daemon closed the connection");
  if (reply.header.size > 4096) throw_error("reply to request ", reply.header.request, ": size ", reply.header.size);
  reply.payload.resize(reply.header.size);
  if (reply.header.size > 0) {
    try {
      read_exact(reply.payload.data(), reply.payload.size(), deadline, &reply.fds, &eof);
    } catch (const Error&) {
      throw_error("reply to request ", reply.header.request, ": payload not complete within ", timeout.count(),
                  " ms");
    }
    if (eof) throw_error("the daemon closed the connection in the middle of a reply");
  }
  return reply;
}

RawReply TestFrontend::read_reply(Request expected, std::chrono::milliseconds timeout) {
  std::optional<RawReply> reply = try_read(timeout);
  if (!reply) {
    throw_error("no reply to ", "request", " (", req_id(expected), ") within ", timeout.count(),
                " ms");
  }
  if (reply->header.request != req_id(expected)) {
    throw_error("expected the reply to ", "request", " (", req_id(expected),
                "), got a message for request ", reply->header.request);
  }
  if (reply->header.flags != (wire::kVersion | wire::kFlagReply)) {
    throw_error("reply to ", "request", ": flags 0x", std::hex, reply->header.flags,
                " (must be exactly 0x5)");
  }
  return std::move(*reply);
}

bool TestFrontend::wait_closed(std::chrono::milliseconds timeout) {
  if (!sock_) return true;
  const auto deadline = Clock::now() + timeout;
  std::uint8_t sink[4096];
  for (;;) {
    pollfd pfd{sock_.get(), POLLIN, 0};
    int rc = ::poll(&pfd, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc <= 0) return false;
    ssize_t n = ::recv(sock_.get(), sink, sizeof sink, MSG_DONTWAIT);
    if (n == 0) return true;
    if (n < 0 && errno == ECONNRESET) return true;
    if (n < 0 && errno != EAGAIN && errno != EINTR) throw_errno("recv");
  }
}

std::uint64_t TestFrontend::request_ack(Request request, std::span<const std::uint8_t> payload,
                                        std::span<const int> fds) {
  send(request, payload, fds, true);
  return read_reply(request).u64();
}

void TestFrontend::expect_in_sync() {
  send(Request::get_features, {}, {}, false);
  RawReply reply = read_reply(Request::get_features);
  (void)reply.u64();
}

void TestFrontend::send_simple_bytes(Request request, std::span<const std::uint8_t> payload,
                                     std::span<const int> fds) {
  if (!reply_ack_) {
    send(request, payload, fds, false);
    return;
  }
  std::uint64_t ack = request_ack(request, payload, fds);
  if (ack != 0) throw_error("request", ": the daemon answered ack ", ack);
}

template <typename T>
void TestFrontend::send_simple(Request request, const T& payload, std::span<const int> fds) {
  send_simple_bytes(request, std::span(reinterpret_cast<const std::uint8_t*>(&payload), sizeof(T)), fds);
}

void TestFrontend::send_simple_u64(Request request, std::uint64_t value, std::span<const int> fds) {
  send_simple(request, value, fds);
}

// ---- typed requests ----

std::uint64_t TestFrontend::get_features() {
  send(Request::get_features, {});
  return read_reply(Request::get_features).u64();
}

void TestFrontend::set_features(std::uint64_t features) {
  send_simple_u64(Request::set_features, features);
  acked_features_ = features;
}

void TestFrontend::set_owner() { send_simple_bytes(Request::set_owner, {}, {}); }
void TestFrontend::reset_owner() { send_simple_bytes(Request::reset_owner, {}, {}); }

std::uint64_t TestFrontend::get_protocol_features() {
  send(Request::get_protocol_features, {});
  return read_reply(Request::get_protocol_features).u64();
}

void TestFrontend::set_protocol_features(std::uint64_t features) {
  // REPLY_ACK is not in force until this very request is handled: never ask for an ack here.
  send_u64(Request::set_protocol_features, features);
  acked_protocol_features_ = features;
}

std::uint64_t TestFrontend::get_queue_num() {
  send(Request::get_queue_num, {});
  return read_reply(Request::get_queue_num).u64();
}

void TestFrontend::set_mem_table(std::span<const RegionSpec> regions) {
  if (regions.size() > kMaxFds) throw_error("set_mem_table: ", regions.size(), " regions");
  std::vector<std::uint8_t> payload(8 + regions.size() * sizeof(wire::MemoryRegion), 0);
  const auto count = static_cast<std::uint32_t>(regions.size());
  std::memcpy(payload.data(), &count, sizeof count);
  std::vector<int> fds;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    std::memcpy(payload.data() + 8 + i * sizeof(wire::MemoryRegion), &regions[i].region,
                sizeof(wire::MemoryRegion));
    fds.push_back(regions[i].fd);
  }
  send_simple_bytes(Request::set_mem_table, payload, fds);
}

void TestFrontend::add_mem_reg(const RegionSpec& region) {
  wire::MemRegPayload payload{0, region.region};
  int fd = region.fd;
  send_simple(Request::add_mem_reg, payload, std::span(&fd, 1));
}

void TestFrontend::rem_mem_reg(const wire::MemoryRegion& region) {
  wire::MemRegPayload payload{0, region};
  send_simple(Request::rem_mem_reg, payload);
}

std::uint64_t TestFrontend::get_max_mem_slots() {
  send(Request::get_max_mem_slots, {});
  return read_reply(Request::get_max_mem_slots).u64();
}

void TestFrontend::set_vring_num(std::uint32_t index, std::uint32_t num) {
  send_simple(Request::set_vring_num, wire::VringState{index, num});
}

void TestFrontend::set_vring_addr(const wire::VringAddr& addr) { send_simple(Request::set_vring_addr, addr); }

void TestFrontend::set_vring_base(std::uint32_t index, std::uint32_t base) {
  send_simple(Request::set_vring_base, wire::VringState{index, base});
}

std::uint32_t TestFrontend::get_vring_base(std::uint32_t index) {
  send_struct(Request::get_vring_base, wire::VringState{index, 0});
  RawReply reply = read_reply(Request::get_vring_base);
  if (reply.payload.size() != sizeof(wire::VringState)) {
    throw_error("GET_VRING_BASE ring ", index, ": reply body ", reply.payload.size(), " bytes");
  }
  auto state = reply.as<wire::VringState>();
  if (state.index != index) throw_error("GET_VRING_BASE ring ", index, ": reply names ring ", state.index);
  return state.num;
}

void TestFrontend::set_vring_kick(std::uint32_t index, int fd) {
  if (fd < 0) {
    send_simple_u64(Request::set_vring_kick, index | wire::kVringNoFd);
  } else {
    send_simple_u64(Request::set_vring_kick, index, std::span(&fd, 1));
  }
}

void TestFrontend::set_vring_call(std::uint32_t index, int fd) {
  if (fd < 0) {
    send_simple_u64(Request::set_vring_call, index | wire::kVringNoFd);
  } else {
    send_simple_u64(Request::set_vring_call, index, std::span(&fd, 1));
  }
}

void TestFrontend::set_vring_err(std::uint32_t index, int fd) {
  if (fd < 0) {
    send_simple_u64(Request::set_vring_err, index | wire::kVringNoFd);
  } else {
    send_simple_u64(Request::set_vring_err, index, std::span(&fd, 1));
  }
}

void TestFrontend::set_vring_enable(std::uint32_t index, bool enable) {
  send_simple(Request::set_vring_enable, wire::VringState{index, enable ? 1u : 0u});
}

std::optional<std::vector<std::uint8_t>> TestFrontend::get_config(std::uint32_t offset, std::uint32_t size) {
  std::vector<std::uint8_t> payload(sizeof(wire::ConfigHeader) + size, 0);
  wire::ConfigHeader header{offset, size, 0};
  std::memcpy(payload.data(), &header, sizeof header);
  send(Request::get_config, payload);
  RawReply reply = read_reply(Request::get_config);
  if (reply.payload.empty()) return std::nullopt;
  if (reply.payload.size() != sizeof header + size) {
    throw_error("GET_CONFIG offset ", offset, " size ", size, ": reply body ", reply.payload.size(), " bytes");
  }
  auto echoed = reply.as<wire::ConfigHeader>();
  if (echoed.offset != offset || echoed.size != size) {
    throw_error("GET_CONFIG offset ", offset, " size ", size, ": reply header says offset ", echoed.offset,
                " size ", echoed.size);
  }
  return std::vector<std::uint8_t>(reply.payload.begin() + sizeof header, reply.payload.end());
}

void TestFrontend::set_status(std::uint8_t status) { send_simple_u64(Request::set_status, status); }

std::uint8_t TestFrontend::get_status() {
  send(Request::get_status, {});
  std::uint64_t status = read_reply(Request::get_status).u64();
  if (status > 0xff) throw_error("GET_STATUS: ", status, " is not a u8");
  return static_cast<std::uint8_t>(status);
}

void TestFrontend::reset_device() { send_simple_bytes(Request::reset_device, {}, {}); }

std::uint64_t TestFrontend::set_log_base(int fd, std::uint64_t size, std::uint64_t offset) {
  send_struct(Request::set_log_base, wire::LogPayload{size, offset}, std::span(&fd, 1));
  return read_reply(Request::set_log_base).u64();
}

// ---- device setup ----

std::uint64_t TestFrontend::features_for(const DeviceOptions& options, std::uint64_t offered) {
  std::uint64_t features = offered & options.feature_mask & ~(kVirtioFRingPacked | kVirtioFInOrder);
  if (options.packed) {
    if (!(offered & kVirtioFRingPacked)) throw_error("the daemon does not offer VIRTIO_F_RING_PACKED");
    features |= kVirtioFRingPacked;
  }
  if (options.in_order) {
    if (!(offered & kVirtioFInOrder)) throw_error("the daemon does not offer VIRTIO_F_IN_ORDER");
    features |= kVirtioFInOrder;
  }
  if (options.protocol_features) {
    features |= kProtocolFeaturesBit;
  } else {
    features &= ~kProtocolFeaturesBit;
  }
  return features;
}

std::uint64_t TestFrontend::negotiate(const DeviceOptions& options) {
  const std::uint64_t offered = get_features();
  set_owner();
  const std::uint64_t features = features_for(options, offered);
  if (options.protocol_features) {
    if (!(offered & kProtocolFeaturesBit)) throw_error("the daemon does not offer VHOST_USER_F_PROTOCOL_FEATURES");
    const std::uint64_t protocol = get_protocol_features() & options.protocol_feature_mask;
    set_protocol_features(protocol);
    reply_ack_ = options.reply_ack && (protocol & kReplyAckBit) != 0;
  } else {
    reply_ack_ = false;
  }
  set_features(features);
  return features;
}

std::uint64_t TestFrontend::setup_device(const DeviceOptions& options) {
  std::uint64_t features = negotiate(options);
  send_memory(options);
  for (std::uint32_t i = 0; i < options.num_rings; ++i) setup_ring(i, options);
  return features;
}

std::vector<RegionSpec> TestFrontend::memory_regions(std::size_t n) const {
  if (!memory_) throw_error("memory_regions: no guest memory yet");
  std::vector<MemoryRegionInfo> infos = n <= 1 ? memory_->regions() : memory_->split_regions(n);
  std::vector<RegionSpec> specs;
  for (const MemoryRegionInfo& r : infos) {
    specs.push_back(RegionSpec{{r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset}, memory_->fd()});
  }
  return specs;
}

void TestFrontend::send_memory(const DeviceOptions& options) {
  if (!memory_) memory_ = TestGuestMemory::create({{0, options.memory_bytes}});
  std::vector<RegionSpec> regions = memory_regions(options.mem_regions);
  if (options.add_mem_reg) {
    for (const RegionSpec& region : regions) add_mem_reg(region);
  } else {
    set_mem_table(regions);
  }
}

wire::VringAddr TestFrontend::ring_addresses(std::uint32_t index, std::uint32_t flags) const {
  const GuestRing& ring = *rings_.at(index).driver;
  VringAddresses a = ring.addresses(flags);
  return wire::VringAddr{index, a.flags, a.desc_user_addr, a.used_user_addr, a.avail_user_addr, a.log_guest_addr};
}

void TestFrontend::setup_ring(std::uint32_t index, const DeviceOptions& options) {
  if (!memory_) throw_error("setup_ring: no guest memory yet");
  if (rings_.size() <= index) rings_.resize(index + 1);
  Ring& ring = rings_[index];
  ring.driver = GuestRing::allocate(*memory_, options.queue_size, layout(), (acked_features_ & kVirtioFInOrder) != 0);
  const std::uint32_t slots = std::min<std::uint32_t>(options.queue_size, kMaxSlots);
  ring.data_gpa = memory_->alloc(slots * kSlotBytes, kSlotBytes);
  ring.free_slots.clear();
  for (std::uint32_t i = slots; i-- > 0;) ring.free_slots.push_back(i);

  set_vring_num(index, options.queue_size);
  set_vring_addr(ring_addresses(index));
  set_vring_base(index, GuestRing::initial_base(layout()));
  if (options.call_fds) {
    ring.call = make_eventfd();
    set_vring_call(index, ring.call.get());
    ring.kick = make_eventfd();
    set_vring_kick(index, ring.kick.get());
  }
  if (options.protocol_features && options.enable_rings) set_vring_enable(index, true);
}

void TestFrontend::kick(std::size_t index) {
  Ring& ring = rings_.at(index);
  if (!ring.kick) throw_error("kick: ring ", index, " has no kick eventfd");
  eventfd_signal(ring.kick.get());
}

bool TestFrontend::wait_call(std::size_t index, std::chrono::milliseconds timeout) {
  Ring& ring = rings_.at(index);
  if (!ring.call) throw_error("wait_call: ring ", index, " has no call eventfd");
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (eventfd_drain(ring.call.get())) return true;
    pollfd pfd{ring.call.get(), POLLIN, 0};
    int rc = ::poll(&pfd, 1, remaining_ms(deadline));
    if (rc < 0 && errno == EINTR) continue;
    if (rc == 0) return eventfd_drain(ring.call.get());
  }
}

bool TestFrontend::drain_call(std::size_t index) {
  Ring& ring = rings_.at(index);
  if (!ring.call) throw_error("drain_call: ring ", index, " has no call eventfd");
  return eventfd_drain(ring.call.get());
}

// ---- echo traffic ----

namespace {

constexpr std::uint8_t kUnwritten = 0xee;
constexpr std::uint64_t kIndirectTableBytes = 256;

std::uint64_t next_random(std::uint64_t& state) {
  state = state * 6364136223846793005ull + 1442695040888963407ull;
  return state >> 33;
}

// Splits `total` into `parts` positive sizes (parts <= total).
std::vector<std::uint32_t> split_sizes(std::uint64_t& rng, std::uint32_t total, std::size_t parts) {
  std::vector<std::uint32_t> sizes;
  std::uint32_t left = total;
  for (std::size_t i = 0; i + 1 < parts; ++i) {
    const std::uint32_t max = left - static_cast<std::uint32_t>(parts - 1 - i);
    std::uint32_t take = 1 + static_cast<std::uint32_t>(next_random(rng) % max);
    sizes.push_back(take);
    left -= take;
  }
  sizes.push_back(left);
  return sizes;
}

}  // namespace

EchoChain random_chain(std::uint64_t& rng, std::uint32_t max_bytes, bool allow_indirect) {
  EchoChain chain;
  const std::uint32_t size = 1 + static_cast<std::uint32_t>(next_random(rng) % max_bytes);
  chain.request.resize(size);
  for (auto& b : chain.request) b = static_cast<std::uint8_t>(next_random(rng));
  const std::size_t readable = 1 + next_random(rng) % std::min<std::uint32_t>(4, size);
  chain.readable_sizes = split_sizes(rng, size, readable);
  // One chain in eight gets a response buffer too short for the whole echo.
  const bool short_response = next_random(rng) % 8 == 0;
  std::uint32_t writable_total = short_response ? 1 + static_cast<std::uint32_t>(next_random(rng) % size)
                                                : size + static_cast<std::uint32_t>(next_random(rng) % 512);
  const std::size_t writable = 1 + next_random(rng) % std::min<std::uint32_t>(3, writable_total);
  chain.writable_sizes = split_sizes(rng, writable_total, writable);
  chain.indirect = allow_indirect && next_random(rng) % 4 == 0;
  return chain;
}

PendingEcho push_echo(TestFrontend& frontend, std::size_t index, const EchoChain& chain) {
  TestFrontend::Ring& ring = frontend.ring_fds(index);
  TestGuestMemory& memory = frontend.memory();
  if (ring.free_slots.empty()) throw_error("push_echo: ring ", index, ": every chain slot is in flight");
  std::uint64_t bytes = kIndirectTableBytes;
  for (auto s : chain.readable_sizes) bytes += s;
  for (auto s : chain.writable_sizes) bytes += s;
  const std::size_t segments = chain.readable_sizes.size() + chain.writable_sizes.size();
  if (bytes > TestFrontend::kSlotBytes || segments * 16 > kIndirectTableBytes) {
    throw_error("push_echo: chain of ", bytes, " bytes / ", segments, " segments does not fit a slot");
  }

  PendingEcho pending;
  pending.slot = ring.free_slots.back();
  ring.free_slots.pop_back();
  pending.request = chain.request;
  const std::uint64_t base = ring.data_gpa + pending.slot * TestFrontend::kSlotBytes;
  std::uint64_t cursor = base + kIndirectTableBytes;
  std::vector<DriverBuffer> buffers;
  std::size_t consumed = 0;
  for (std::uint32_t len : chain.readable_sizes) {
    if (consumed + len > chain.request.size()) throw_error("push_echo: readable sizes exceed the request");
    memory.write(cursor, chain.request.data() + consumed, len);
    buffers.push_back(DriverBuffer{cursor, len, false});
    consumed += len;
    cursor += len;
  }
  if (consumed != chain.request.size()) throw_error("push_echo: readable sizes do not cover the request");
  for (std::uint32_t len : chain.writable_sizes) {
    memory.fill(cursor, kUnwritten, len);
    buffers.push_back(DriverBuffer{cursor, len, true});
    pending.writable.emplace_back(cursor, len);
    pending.writable_bytes += len;
    cursor += len;
  }
  if (!ring.driver->has_room(chain.indirect ? 1 : static_cast<std::uint32_t>(buffers.size()))) {
    ring.free_slots.push_back(pending.slot);
    throw_error("push_echo: ring ", index, ": no room for a chain of ", buffers.size(), " descriptors (",
                ring.driver->describe(), ")");
  }
  pending.head = chain.indirect ? ring.driver->add_indirect(buffers, base) : ring.driver->add_chain(buffers);
  return pending;
}

void complete_echoes(TestFrontend& frontend, std::size_t index, std::vector<PendingEcho>& pending,
                     std::chrono::milliseconds timeout) {
  TestFrontend::Ring& ring = frontend.ring_fds(index);
  TestGuestMemory& memory = frontend.memory();
  GuestRing& driver = *ring.driver;
  const auto deadline = Clock::now() + timeout;
  for (std::size_t i = 0; i < pending.size(); ++i) {
    const PendingEcho& p = pending[i];
    while (!driver.has_used()) {
      if (Clock::now() >= deadline) {
        throw_error("ring ", index, ": request ", i, " of ", pending.size(), " (head ", p.head,
                    ") not completed within ", timeout.count(), " ms (", driver.describe(), ")");
      }
      struct timespec ts {0, 20'000};
      ::nanosleep(&ts, nullptr);
    }
    const UsedBuffer elem = *driver.pop_used();
    if (elem.id != p.head) {
      throw_error("ring ", index, ": used element ", i, " names head ", elem.id, ", expected ", p.head);
    }
    if (elem.len != p.expected_len()) {
      throw_error("ring ", index, ": head ", p.head, ": used len ", elem.len, ", expected ", p.expected_len(),
                  " (request ", p.request.size(), " bytes, writable ", p.writable_bytes, ")");
    }
    std::size_t offset = 0;
    for (const auto& [gpa, len] : p.writable) {
      std::vector<std::uint8_t> got = memory.bytes(gpa, len);
      for (std::uint32_t k = 0; k < len; ++k, ++offset) {
        const std::uint8_t want = offset < p.expected_len() ? p.request[offset] : kUnwritten;
        if (got[k] != want) {
          throw_error("ring ", index, ": head ", p.head, ": response byte ", offset, " is 0x", std::hex,
                      unsigned{got[k]}, ", expected 0x", unsigned{want}, std::dec, " (request ", p.request.size(),
                      " bytes, used len ", elem.len, ")");
        }
      }
    }
    ring.free_slots.push_back(p.slot);
  }
  pending.clear();
}

void echo_burst(TestFrontend& frontend, std::size_t ring, std::span<const EchoChain> chains) {
  std::vector<PendingEcho> pending;
  for (const EchoChain& chain : chains) pending.push_back(push_echo(frontend, ring, chain));
  frontend.kick(ring);
  complete_echoes(frontend, ring, pending);
}

void echo_one(TestFrontend& frontend, std::size_t ring, std::uint32_t size, std::uint32_t seed) {
  EchoChain chain;
  chain.request.resize(size);
  for (std::uint32_t i = 0; i < size; ++i) chain.request[i] = static_cast<std::uint8_t>(seed * 131 + i * 7 + 1);
  chain.readable_sizes = {size};
  chain.writable_sizes = {size};
  echo_burst(frontend, ring, std::span(&chain, 1));
}

std::uint16_t device_used_idx(TestFrontend& frontend, std::size_t ring) {
  return frontend.ring(ring).split().used_idx();
}
std::uint16_t driver_avail_idx(TestFrontend& frontend, std::size_t ring) {
  return frontend.ring(ring).split().avail_idx();
}

bool wait_used_idx(TestFrontend& frontend, std::size_t ring, std::uint16_t idx, std::chrono::milliseconds timeout) {
  DriverRing& driver = frontend.ring(ring).split();
  return wait_until([&] { return driver.used_idx() == idx; }, timeout);
}

void push_raw_head(TestFrontend& frontend, std::size_t ring, std::uint16_t head) {
  frontend.ring(ring).split().publish_head(head);
}

void push_hostile_id(TestFrontend& frontend, std::size_t ring, std::uint16_t id, bool writable) {
  GuestRing& driver = frontend.ring(ring);
  if (!driver.is_packed()) {
    driver.split().publish_head(id);
    return;
  }
  PackedDriverRing& packed = driver.packed();
  // The arena's last chain slot: a mapped buffer no well-behaved chain of the test uses yet.
  const TestFrontend::Ring& fds = frontend.ring_fds(ring);
  const std::uint64_t gpa = fds.data_gpa + (fds.free_slots.empty() ? 0 : fds.free_slots.front()) * TestFrontend::kSlotBytes;
  packed.put(packed.next_avail(),
             PackedDesc{gpa, 64, id, static_cast<std::uint16_t>(packed.avail_bits() | (writable ? kVringDescFWrite : 0))});
}

}  // namespace vhostd::test
