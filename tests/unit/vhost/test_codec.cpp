// Unit tests for the vhost-user message definitions and codec (lib/vhost/message.*, codec.*),
// over real AF_UNIX stream socketpairs with real memfds and eventfds as the passed fds. Every
// test that receives fds checks the process fd count against a baseline: a leaked fd is a bug.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "vhostd/base/fd.hpp"
#include "vhostd/vhost/codec.hpp"
#include "vhostd/vhost/message.hpp"

namespace vhostd {
namespace {

// ---- helpers ----

struct Pair {
  UniqueFd tx;  // the "frontend" end (blocking)
  UniqueFd rx;  // the backend end (non-blocking, as the daemon uses it)
};

Pair make_socket_pair() {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) throw_errno("socketpair");
  Pair p{UniqueFd(sv[0]), UniqueFd(sv[1])};
  int flags = ::fcntl(p.rx.get(), F_GETFL);
  ::fcntl(p.rx.get(), F_SETFL, flags | O_NONBLOCK);
  return p;
}

UniqueFd make_memfd(std::size_t size = 4096) {
  UniqueFd fd(static_cast<int>(::memfd_create("vhostd-test", MFD_CLOEXEC)));
  if (!fd || ::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) throw_errno("memfd");
  return fd;
}

Message make_msg(std::uint32_t request, std::uint32_t flags = kMessageVersion) {
  Message m;
  m.header.request = request;
  m.header.flags = flags;
  m.header.size = 0;
  return m;
}
Message make_msg(Request request) { return make_msg(static_cast<std::uint32_t>(request)); }

// Raw bytes of a header followed by `size` payload bytes from `payload`.
std::vector<std::uint8_t> serialize(const MessageHeader& h, const void* payload, std::size_t size) {
  std::vector<std::uint8_t> bytes(sizeof h + size);
  std::memcpy(bytes.data(), &h, sizeof h);
  if (size) std::memcpy(bytes.data() + sizeof h, payload, size);
  return bytes;
}

// Sends bytes with any number of fds (bypassing send_message's limit of 8), all at once.
void raw_send(int fd, const void* data, std::size_t len, const std::vector<int>& fds = {}) {
  iovec iov{const_cast<void*>(data), len};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<unsigned char> control(CMSG_SPACE(sizeof(int) * fds.size()) + 1);
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  if (n != static_cast<ssize_t>(len)) throw_errno("raw_send");
}

// Reads until a whole message arrives (failing the test after 2 s of nothing).
Message receive(MessageReader& reader, int fd) {
  Message m;
  for (int spins = 0; spins < 2000; ++spins) {
    MessageReader::Status s = reader.read(fd, m);
    if (s == MessageReader::Status::message) return m;
    if (s == MessageReader::Status::closed) throw Error("receive: closed");
    pollfd p{fd, POLLIN, 0};
    ::poll(&p, 1, 1);
  }
  throw Error("receive: timed out");
}

// True if `received` and `original` name the same eventfd: a signal through one is seen on the other.
bool same_eventfd(int received, int original) {
  eventfd_signal(received);
  return eventfd_drain(original);
}

bool same_file(int a, int b) {
  struct stat sa {}, sb {};
  if (::fstat(a, &sa) != 0 || ::fstat(b, &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

template <class T>
Message round_trip(std::uint32_t request, const T& payload, std::vector<UniqueFd> fds = {}) {
  Pair p = make_socket_pair();
  Message m = make_msg(request);
  m.set_payload(payload);
  m.fds = std::move(fds);
  send_message(p.tx.get(), m);
  MessageReader reader;
  Message got = receive(reader, p.rx.get());
  EXPECT_EQ(got.header.request, request);
  EXPECT_EQ(got.header.flags, kMessageVersion);
  EXPECT_EQ(got.header.size, sizeof(T));
  EXPECT_EQ(std::memcmp(got.payload.data(), &payload, sizeof(T)), 0);
  EXPECT_EQ(got.fds.size(), m.fds.size());
  for (std::size_t i = 0; i < got.fds.size() && i < m.fds.size(); ++i) {
    EXPECT_TRUE(same_file(got.fds[i].get(), m.fds[i].get())) << "fd " << i;
    EXPECT_NE(got.fds[i].get(), m.fds[i].get());
  }
  Message dummy;
  EXPECT_EQ(reader.read(p.rx.get(), dummy), MessageReader::Status::again);
  return got;
}

// ---- definitions ----

TEST(MessageDefs, LayoutMatchesTheWire) {
  EXPECT_EQ(sizeof(MessageHeader), 12u);
  EXPECT_EQ(offsetof(MessageHeader, flags), 4u);
  EXPECT_EQ(offsetof(MessageHeader, size), 8u);
  EXPECT_EQ(sizeof(VringStatePayload), 8u);
  EXPECT_EQ(sizeof(VringAddrPayload), 40u);
  EXPECT_EQ(offsetof(VringAddrPayload, desc_user_addr), 8u);
  EXPECT_EQ(offsetof(VringAddrPayload, used_user_addr), 16u);
  EXPECT_EQ(offsetof(VringAddrPayload, avail_user_addr), 24u);
  EXPECT_EQ(offsetof(VringAddrPayload, log_guest_addr), 32u);
  EXPECT_EQ(sizeof(MemoryRegionPayload), 32u);
  EXPECT_EQ(offsetof(MemoryRegionPayload, mmap_offset), 24u);
  EXPECT_EQ(offsetof(MemTablePayload, regions), 8u);
  EXPECT_EQ(sizeof(MemTablePayload), 8u + 8 * 32);
  EXPECT_EQ(sizeof(MemRegPayload), 40u);
  EXPECT_EQ(offsetof(MemRegPayload, region), 8u);
  EXPECT_EQ(sizeof(LogPayload), 16u);
  EXPECT_EQ(sizeof(ConfigPayloadHeader), 12u);
  EXPECT_EQ(sizeof(InflightPayload), 24u);
  EXPECT_EQ(offsetof(InflightPayload, num_queues), 16u);
  EXPECT_EQ(offsetof(InflightPayload, queue_size), 18u);
  EXPECT_EQ(sizeof(VringAreaPayload), 24u);
}

TEST(MessageDefs, RequestIdsAndNames) {
  EXPECT_EQ(static_cast<std::uint32_t>(Request::get_features), 1u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::set_mem_table), 5u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::set_backend_req_fd), 21u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::get_inflight_fd), 31u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::vring_kick), 35u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::rem_mem_reg), 38u);
  EXPECT_EQ(static_cast<std::uint32_t>(Request::get_shmem_config), kMaxRequest);
  EXPECT_EQ(static_cast<std::uint32_t>(BackendRequest::vring_call), 4u);
  EXPECT_EQ(static_cast<std::uint32_t>(BackendRequest::shared_object_lookup), 8u);
  EXPECT_STREQ(request_name(1), "GET_FEATURES");
  EXPECT_STREQ(request_name(5), "SET_MEM_TABLE");
  EXPECT_STREQ(request_name(21), "SET_BACKEND_REQ_FD");
  EXPECT_STREQ(request_name(38), "REM_MEM_REG");
  EXPECT_STREQ(request_name(44), "GET_SHMEM_CONFIG");
  EXPECT_STREQ(request_name(0), "UNKNOWN");
  EXPECT_STREQ(request_name(45), "UNKNOWN");
  EXPECT_STREQ(request_name(0xffffffffu), "UNKNOWN");
  for (std::uint32_t id = 1; id <= kMaxRequest; ++id) EXPECT_STRNE(request_name(id), "UNKNOWN") << id;
}

TEST(MessageDefs, FeatureBits) {
  EXPECT_EQ(kVhostUserFProtocolFeatures, 1ull << 30);
  EXPECT_EQ(kVirtioFLogAll, 1ull << 26);
  EXPECT_EQ(kVirtioFVersion1, 1ull << 32);
  EXPECT_EQ(kVirtioFRingPacked, 1ull << 34);
  EXPECT_EQ(kVirtioFNotificationData, 1ull << 38);
  EXPECT_EQ(protocol_bit(ProtocolFeature::mq), 1ull);
  EXPECT_EQ(protocol_bit(ProtocolFeature::reply_ack), 1ull << 3);
  EXPECT_EQ(protocol_bit(ProtocolFeature::backend_req), 1ull << 5);
  EXPECT_EQ(protocol_bit(ProtocolFeature::config), 1ull << 9);
  EXPECT_EQ(protocol_bit(ProtocolFeature::configure_mem_slots), 1ull << 15);
  EXPECT_EQ(protocol_bit(ProtocolFeature::status), 1ull << 16);
  EXPECT_EQ(protocol_bit(ProtocolFeature::device_state), 1ull << 19);
  EXPECT_EQ(protocol_bit(ProtocolFeature::shmem), 1ull << 22);
  EXPECT_EQ(kReplyFlags, 0x5u);
}

TEST(MessageDefs, PayloadHelpers) {
  Message m = make_msg(Request::set_features);
  m.set_u64(0x1122334455667788ull);
  EXPECT_EQ(m.header.size, 8u);
  EXPECT_EQ(m.u64(), 0x1122334455667788ull);
  m.set_payload(VringStatePayload{3, 256});
  EXPECT_EQ(m.header.size, 8u);
  EXPECT_EQ(m.payload_as<VringStatePayload>().index, 3u);
  EXPECT_EQ(m.payload_as<VringStatePayload>().num, 256u);
  EXPECT_FALSE(m.need_reply());
  m.header.flags |= kFlagNeedReply;
  EXPECT_TRUE(m.need_reply());
  EXPECT_EQ(m.request(), Request::set_features);
}

// ---- replies ----

TEST(Replies, FlagsAreExactlyReplyAndVersion) {
  Message request = make_msg(Request::get_features);
  request.header.flags = kMessageVersion | kFlagNeedReply;
  Message reply = make_reply(request);
  EXPECT_EQ(reply.header.flags, 0x5u);
  EXPECT_EQ(reply.header.request, static_cast<std::uint32_t>(Request::get_features));
  EXPECT_EQ(reply.header.size, 0u);
  EXPECT_TRUE(reply.fds.empty());

  Message u64 = make_u64_reply(make_msg(Request::get_vring_base), 42);
  EXPECT_EQ(u64.header.flags, 0x5u);
  EXPECT_EQ(u64.header.request, static_cast<std::uint32_t>(Request::get_vring_base));
  EXPECT_EQ(u64.header.size, 8u);
  EXPECT_EQ(u64.u64(), 42u);

  // And on the wire.
  Pair p = make_socket_pair();
  send_message(p.rx.get(), u64);
  Message got = read_message_blocking(p.tx.get());
  EXPECT_EQ(got.header.flags, 0x5u);
  EXPECT_EQ(got.header.request, static_cast<std::uint32_t>(Request::get_vring_base));
  EXPECT_EQ(got.u64(), 42u);
}

// ---- round trips ----

TEST(Codec, RoundTripEveryPayload) {
  const int baseline = count_open_fds();
  {
    round_trip(static_cast<std::uint32_t>(Request::set_features), std::uint64_t{0x1'4000'0000ull});
    round_trip(static_cast<std::uint32_t>(Request::set_vring_num), VringStatePayload{1, 1024});
    round_trip(static_cast<std::uint32_t>(Request::set_vring_addr),
               VringAddrPayload{1, 1, 0x7f0000001000, 0x7f0000003000, 0x7f0000002000, 0x103000});
    round_trip(static_cast<std::uint32_t>(Request::set_log_base), LogPayload{0x2000, 0x1000}, [] {
      std::vector<UniqueFd> v;
      v.push_back(make_memfd());
      return v;
    }());
    round_trip(static_cast<std::uint32_t>(Request::add_mem_reg),
               MemRegPayload{0, {0x100000, 0x200000, 0x7f0000000000, 0x1000}}, [] {
                 std::vector<UniqueFd> v;
                 v.push_back(make_memfd());
                 return v;
               }());
    round_trip(static_cast<std::uint32_t>(Request::rem_mem_reg),
               MemRegPayload{0, {0x100000, 0x200000, 0x7f0000000000, 0}});
    InflightPayload inflight{};
    inflight.mmap_size = 0x3000;
    inflight.mmap_offset = 0;
    inflight.num_queues = 2;
    inflight.queue_size = 256;
    round_trip(static_cast<std::uint32_t>(Request::set_inflight_fd), inflight, [] {
      std::vector<UniqueFd> v;
      v.push_back(make_memfd());
      return v;
    }());
    round_trip(static_cast<std::uint32_t>(BackendRequest::vring_host_notifier_msg),
               VringAreaPayload{1, 4096, 8192});
    round_trip(static_cast<std::uint32_t>(Request::get_config), ConfigPayloadHeader{0, 0, 0});
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, RoundTripMemTableWithRegionFds) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    MemTablePayload table{};
    table.num_regions = 3;
    std::vector<UniqueFd> memfds;
    for (std::uint32_t i = 0; i < 3; ++i) {
      table.regions[i] = {0x100000ull * (i + 1), 0x100000, 0x7f0000000000ull + 0x100000ull * i, 0};
      memfds.push_back(make_memfd(4096 * (i + 1)));
    }
    Message m = make_msg(Request::set_mem_table);
    m.set_payload(table);
    m.header.size = 8 + 3 * sizeof(MemoryRegionPayload);  // only the used entries go on the wire
    for (auto& f : memfds) m.fds.push_back(UniqueFd(::dup(f.get())));
    send_message(p.tx.get(), m);

    MessageReader reader;
    Message got = receive(reader, p.rx.get());
    EXPECT_EQ(validate_request(got), "");
    auto t = got.payload_as<MemTablePayload>();
    ASSERT_EQ(t.num_regions, 3u);
    for (std::uint32_t i = 0; i < 3; ++i) {
      EXPECT_EQ(t.regions[i].guest_phys_addr, table.regions[i].guest_phys_addr);
      EXPECT_EQ(t.regions[i].userspace_addr, table.regions[i].userspace_addr);
    }
    // Bytes past header.size are zero, not stale: regions[3..] read as zero.
    EXPECT_EQ(t.regions[3].memory_size, 0u);
    ASSERT_EQ(got.fds.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
      // The fds arrive in order: each maps the file of its region (sizes differ per file).
      struct stat st {};
      ASSERT_EQ(::fstat(got.fds[i].get(), &st), 0);
      EXPECT_EQ(st.st_size, static_cast<off_t>(4096 * (i + 1)));
      EXPECT_TRUE(same_file(got.fds[i].get(), memfds[i].get()));
      // And the mapping works through the received fd.
      void* map = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, got.fds[i].get(), 0);
      ASSERT_NE(map, MAP_FAILED);
      static_cast<char*>(map)[0] = static_cast<char>('a' + i);
      ::munmap(map, 4096);
      char c = 0;
      ASSERT_EQ(::pread(memfds[i].get(), &c, 1, 0), 1);
      EXPECT_EQ(c, static_cast<char>('a' + i));
    }
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, SetConfigWithVariablePayload) {
  Pair p = make_socket_pair();
  Message m = make_msg(Request::set_config);
  ConfigPayloadHeader h{4, 6, 0};
  std::memcpy(m.payload.data(), &h, sizeof h);
  const std::uint8_t data[6] = {1, 2, 3, 4, 5, 6};
  std::memcpy(m.payload.data() + sizeof h, data, sizeof data);
  m.header.size = sizeof h + sizeof data;
  send_message(p.tx.get(), m);
  MessageReader reader;
  Message got = receive(reader, p.rx.get());
  EXPECT_EQ(got.header.size, 18u);
  EXPECT_EQ(validate_request(got), "");
  EXPECT_EQ(std::memcmp(got.payload.data() + 12, data, sizeof data), 0);
}

TEST(Codec, ReceivedFdsAreUsableAndCloexec) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    UniqueFd kick = make_eventfd();
    Message m = make_msg(Request::set_vring_kick);
    m.set_u64(1);
    const int raw = kick.get();
    send_message(p.tx.get(), m.header, m.payload.data(), std::span<const int>(&raw, 1));
    MessageReader reader;
    Message got = receive(reader, p.rx.get());
    EXPECT_EQ(validate_request(got), "");
    ASSERT_EQ(got.fds.size(), 1u);
    EXPECT_TRUE(same_eventfd(got.fds[0].get(), kick.get()));
    EXPECT_FALSE(eventfd_drain(kick.get()));  // drained exactly once
    EXPECT_NE(::fcntl(got.fds[0].get(), F_GETFD) & FD_CLOEXEC, 0);
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, ByteAtATimeWithFdsOnFirstByte) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    UniqueFd a = make_eventfd(), b = make_eventfd();
    MemTablePayload table{};
    table.num_regions = 2;
    table.regions[0] = {0, 0x1000, 0x10000, 0};
    table.regions[1] = {0x1000, 0x1000, 0x20000, 0};
    MessageHeader h{static_cast<std::uint32_t>(Request::set_mem_table), kMessageVersion | kFlagNeedReply,
                    8 + 2 * 32};
    auto bytes = serialize(h, &table, h.size);
    MessageReader reader;
    Message got;
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      if (i == 0) {
        raw_send(p.tx.get(), &bytes[0], 1, {a.get(), b.get()});
      } else {
        raw_send(p.tx.get(), &bytes[i], 1);
      }
      MessageReader::Status s = reader.read(p.rx.get(), got);
      if (i + 1 < bytes.size()) {
        ASSERT_EQ(s, MessageReader::Status::again) << "byte " << i;
        EXPECT_TRUE(reader.mid_message());
      } else {
        ASSERT_EQ(s, MessageReader::Status::message);
      }
    }
    EXPECT_FALSE(reader.mid_message());
    EXPECT_EQ(got.header.request, h.request);
    EXPECT_EQ(got.header.flags, h.flags);
    EXPECT_TRUE(got.need_reply());
    EXPECT_EQ(got.header.size, h.size);
    EXPECT_EQ(std::memcmp(got.payload.data(), &table, h.size), 0);
    ASSERT_EQ(got.fds.size(), 2u);
    EXPECT_TRUE(same_eventfd(got.fds[0].get(), a.get()));
    EXPECT_TRUE(same_eventfd(got.fds[1].get(), b.get()));
    EXPECT_EQ(validate_request(got), "");
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, FdsOnALaterFragmentAreAccepted) {
  Pair p = make_socket_pair();
  UniqueFd e = make_eventfd();
  MessageHeader h{static_cast<std::uint32_t>(Request::set_vring_call), kMessageVersion, 8};
  std::uint64_t value = 0;
  auto bytes = serialize(h, &value, 8);
  raw_send(p.tx.get(), bytes.data(), 14);
  raw_send(p.tx.get(), bytes.data() + 14, bytes.size() - 14, {e.get()});
  MessageReader reader;
  Message got = receive(reader, p.rx.get());
  ASSERT_EQ(got.fds.size(), 1u);
  EXPECT_TRUE(same_eventfd(got.fds[0].get(), e.get()));
}

TEST(Codec, TwoMessagesInOneWrite) {
  Pair p = make_socket_pair();
  MessageHeader h1{static_cast<std::uint32_t>(Request::set_vring_num), kMessageVersion, 8};
  VringStatePayload s1{0, 256};
  MessageHeader h2{static_cast<std::uint32_t>(Request::get_features), kMessageVersion | kFlagNeedReply, 0};
  auto bytes = serialize(h1, &s1, sizeof s1);
  auto second = serialize(h2, nullptr, 0);
  bytes.insert(bytes.end(), second.begin(), second.end());
  raw_send(p.tx.get(), bytes.data(), bytes.size());

  MessageReader reader;
  Message m;
  ASSERT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::message);
  EXPECT_EQ(m.request(), Request::set_vring_num);
  EXPECT_EQ(m.payload_as<VringStatePayload>().num, 256u);
  ASSERT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::message);
  EXPECT_EQ(m.request(), Request::get_features);
  EXPECT_EQ(m.header.size, 0u);
  EXPECT_TRUE(m.need_reply());
  // The reused Message's stale payload is gone.
  EXPECT_EQ(m.u64(), 0u);
  EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::again);
}

TEST(Codec, BackToBackMessagesKeepTheirOwnFds) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    UniqueFd a = make_eventfd(), b = make_eventfd();
    Message m = make_msg(Request::set_vring_kick);
    m.set_u64(0);
    int fa = a.get(), fb = b.get();
    send_message(p.tx.get(), m.header, m.payload.data(), std::span<const int>(&fa, 1));
    m.set_u64(1);
    send_message(p.tx.get(), m.header, m.payload.data(), std::span<const int>(&fb, 1));
    Message none = make_msg(Request::set_vring_num);
    none.set_payload(VringStatePayload{0, 8});
    send_message(p.tx.get(), none);

    MessageReader reader;
    Message first = receive(reader, p.rx.get());
    Message second = receive(reader, p.rx.get());
    Message third = receive(reader, p.rx.get());
    ASSERT_EQ(first.fds.size(), 1u);
    ASSERT_EQ(second.fds.size(), 1u);
    EXPECT_EQ(third.fds.size(), 0u);
    EXPECT_EQ(first.u64(), 0u);
    EXPECT_EQ(second.u64(), 1u);
    EXPECT_TRUE(same_eventfd(first.fds[0].get(), a.get()));
    EXPECT_TRUE(same_eventfd(second.fds[0].get(), b.get()));
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

// ---- framing violations ----

TEST(Codec, BadVersionIsFatal) {
  for (std::uint32_t flags : {0u, 2u, 3u, 0x6u}) {
    const int baseline = count_open_fds();
    {
      Pair p = make_socket_pair();
      UniqueFd e = make_eventfd();
      MessageHeader h{static_cast<std::uint32_t>(Request::set_vring_call), flags, 8};
      std::uint64_t v = 0;
      auto bytes = serialize(h, &v, 8);
      raw_send(p.tx.get(), bytes.data(), bytes.size(), {e.get()});
      MessageReader reader;
      Message m;
      EXPECT_THROW(reader.read(p.rx.get(), m), FatalProtocolError) << "flags " << flags;
    }
    EXPECT_EQ(count_open_fds(), baseline) << "flags " << flags;
  }
}

TEST(Codec, ReplyFlagOnARequestIsAccepted) {
  Pair p = make_socket_pair();
  MessageHeader h{static_cast<std::uint32_t>(Request::get_features), kReplyFlags, 0};
  raw_send(p.tx.get(), &h, sizeof h);
  MessageReader reader;
  Message m;
  EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::message);
}

TEST(Codec, OversizedPayloadIsFatalWithoutReadingIt) {
  Pair p = make_socket_pair();
  MessageHeader h{static_cast<std::uint32_t>(Request::set_config), kMessageVersion, kMaxPayloadSize + 1};
  raw_send(p.tx.get(), &h, sizeof h);
  const char tail[16] = "not-a-payload!!";
  raw_send(p.tx.get(), tail, sizeof tail);
  MessageReader reader;
  Message m;
  try {
    reader.read(p.rx.get(), m);
    FAIL() << "expected FatalProtocolError";
  } catch (const FatalProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("4097"), std::string::npos) << e.what();
  }
  // Nothing past the header was consumed.
  char buf[32] = {};
  EXPECT_EQ(::recv(p.rx.get(), buf, sizeof buf, MSG_DONTWAIT), static_cast<ssize_t>(sizeof tail));
  EXPECT_STREQ(buf, tail);

  // The largest legal size is accepted.
  Pair q = make_socket_pair();
  MessageHeader big{static_cast<std::uint32_t>(Request::create_crypto_session), kMessageVersion, kMaxPayloadSize};
  std::vector<std::uint8_t> payload(kMaxPayloadSize, 0xab);
  send_message(q.tx.get(), big, payload.data(), {});
  MessageReader r2;
  Message got = receive(r2, q.rx.get());
  EXPECT_EQ(got.header.size, kMaxPayloadSize);
  EXPECT_EQ(got.payload[kMaxPayloadSize - 1], 0xab);
}

TEST(Codec, HugeSizeIsFatal) {
  Pair p = make_socket_pair();
  MessageHeader h{static_cast<std::uint32_t>(Request::set_mem_table), kMessageVersion, 0xffffffffu};
  raw_send(p.tx.get(), &h, sizeof h);
  MessageReader reader;
  Message m;
  EXPECT_THROW(reader.read(p.rx.get(), m), FatalProtocolError);
}

void expect_too_many_fds_closed(std::size_t count) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    std::vector<UniqueFd> events;
    std::vector<int> raw;
    for (std::size_t i = 0; i < count; ++i) {
      events.push_back(make_eventfd());
      raw.push_back(events.back().get());
    }
    MessageHeader h{static_cast<std::uint32_t>(Request::set_mem_table), kMessageVersion, 8};
    std::uint64_t v = 1;
    auto bytes = serialize(h, &v, 8);
    raw_send(p.tx.get(), bytes.data(), bytes.size(), raw);
    events.clear();  // only the in-flight copies remain
    MessageReader reader;
    Message m;
    EXPECT_THROW(reader.read(p.rx.get(), m), FatalProtocolError) << count << " fds";
    EXPECT_TRUE(m.fds.empty());
  }
  EXPECT_EQ(count_open_fds(), baseline) << count << " fds";
}

TEST(Codec, NineOrMoreFdsAreFatalAndAllClosed) {
  expect_too_many_fds_closed(9);
  expect_too_many_fds_closed(12);
  expect_too_many_fds_closed(64);
}

TEST(Codec, ExactlyEightFdsAreAccepted) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    std::vector<UniqueFd> events;
    std::vector<int> raw;
    for (int i = 0; i < 8; ++i) {
      events.push_back(make_eventfd());
      raw.push_back(events.back().get());
    }
    MessageHeader h{static_cast<std::uint32_t>(Request::get_features), kMessageVersion, 0};
    raw_send(p.tx.get(), &h, sizeof h, raw);
    MessageReader reader;
    Message m = receive(reader, p.rx.get());
    EXPECT_EQ(m.fds.size(), 8u);
    EXPECT_NE(validate_request(m), "");  // GET_FEATURES takes no fds
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, TruncatedControlDataIsFatalAndReceivedFdsClosed) {
  // With SO_PASSCRED the kernel puts credentials ahead of the fds, so the kernel's maximum
  // batch (253 fds) no longer fits the reader's control buffer: MSG_CTRUNC.
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    int on = 1;
    ASSERT_EQ(::setsockopt(p.rx.get(), SOL_SOCKET, SO_PASSCRED, &on, sizeof on), 0);
    UniqueFd e = make_eventfd();
    std::vector<int> raw(253, e.get());
    MessageHeader h{static_cast<std::uint32_t>(Request::get_features), kMessageVersion, 0};
    raw_send(p.tx.get(), &h, sizeof h, raw);
    MessageReader reader;
    Message m;
    try {
      reader.read(p.rx.get(), m);
      FAIL() << "expected FatalProtocolError";
    } catch (const FatalProtocolError& error) {
      EXPECT_NE(std::string(error.what()).find("truncated"), std::string::npos) << error.what();
    }
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, TenThousandFdMessagesLeakNothing) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    UniqueFd call = make_eventfd();
    const int raw = call.get();
    MessageReader reader;
    Message m = make_msg(Request::set_vring_call);
    for (int i = 0; i < 10000; ++i) {
      m.set_u64(static_cast<std::uint64_t>(i & 0xff));
      send_message(p.tx.get(), m.header, m.payload.data(), std::span<const int>(&raw, 1));
      Message got = receive(reader, p.rx.get());
      ASSERT_EQ(got.fds.size(), 1u) << i;
      ASSERT_EQ(validate_request(got), "");
    }
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

// ---- end of stream ----

TEST(Codec, EofIsClosed) {
  Pair p = make_socket_pair();
  MessageReader reader;
  Message m;
  EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::again);
  p.tx.reset();
  EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::closed);
}

TEST(Codec, EofMidMessageIsClosedAndDropsFds) {
  const int baseline = count_open_fds();
  {
    Pair p = make_socket_pair();
    UniqueFd e = make_eventfd();
    MessageHeader h{static_cast<std::uint32_t>(Request::set_vring_kick), kMessageVersion, 8};
    std::uint64_t v = 0;
    auto bytes = serialize(h, &v, 8);
    raw_send(p.tx.get(), bytes.data(), 15, {e.get()});  // header + 3 of 8 payload bytes
    MessageReader reader;
    Message m;
    EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::again);
    EXPECT_TRUE(reader.mid_message());
    p.tx.reset();
    EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::closed);
    EXPECT_FALSE(reader.mid_message());
    EXPECT_TRUE(m.fds.empty());
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

TEST(Codec, EofMidHeaderIsClosed) {
  Pair p = make_socket_pair();
  MessageHeader h{1, kMessageVersion, 0};
  raw_send(p.tx.get(), &h, 5);
  p.tx.reset();
  MessageReader reader;
  Message m;
  EXPECT_EQ(reader.read(p.rx.get(), m), MessageReader::Status::closed);
}

TEST(Codec, ReadMessageBlockingThrowsOnEof) {
  Pair p = make_socket_pair();
  MessageHeader h{1, kMessageVersion, 0};
  raw_send(p.tx.get(), &h, 5);
  p.tx.reset();
  EXPECT_THROW(read_message_blocking(p.rx.get()), Error);
}

TEST(Codec, ReadMessageBlockingWaitsForTheRest) {
  Pair p = make_socket_pair();
  MessageHeader h{static_cast<std::uint32_t>(Request::set_features), kMessageVersion, 8};
  std::uint64_t v = 0xabcdef;
  auto bytes = serialize(h, &v, 8);
  raw_send(p.tx.get(), bytes.data(), 7);
  std::thread writer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    raw_send(p.tx.get(), bytes.data() + 7, bytes.size() - 7);
  });
  Message m = read_message_blocking(p.rx.get());
  writer.join();
  EXPECT_EQ(m.u64(), 0xabcdefu);
}

// ---- sending ----

TEST(Codec, SendWaitsForRoomOnANonBlockingSocket) {
  Pair p = make_socket_pair();
  // Make the sender non-blocking with a tiny buffer so most sends hit EAGAIN mid-message.
  int flags = ::fcntl(p.tx.get(), F_GETFL);
  ::fcntl(p.tx.get(), F_SETFL, flags | O_NONBLOCK);
  int small = 4096;
  ::setsockopt(p.tx.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
  constexpr int kCount = 200;
  std::vector<std::uint8_t> payload(kMaxPayloadSize);
  std::thread reader_thread([&] {
    for (int i = 0; i < kCount; ++i) {
      Message m = read_message_blocking(p.rx.get());
      ASSERT_EQ(m.header.size, kMaxPayloadSize);
      ASSERT_EQ(m.payload[0], static_cast<std::uint8_t>(i));
      ASSERT_EQ(m.payload[kMaxPayloadSize - 1], static_cast<std::uint8_t>(i));
    }
  });
  for (int i = 0; i < kCount; ++i) {
    std::fill(payload.begin(), payload.end(), static_cast<std::uint8_t>(i));
    MessageHeader h{static_cast<std::uint32_t>(Request::create_crypto_session), kMessageVersion, kMaxPayloadSize};
    send_message(p.tx.get(), h, payload.data(), {});
  }
  reader_thread.join();
}

TEST(Codec, SendRejectsBadArguments) {
  Pair p = make_socket_pair();
  MessageHeader h{1, kMessageVersion, kMaxPayloadSize + 1};
  std::vector<std::uint8_t> payload(kMaxPayloadSize + 1);
  EXPECT_THROW(send_message(p.tx.get(), h, payload.data(), {}), Error);
  h.size = 8;
  EXPECT_THROW(send_message(p.tx.get(), h, nullptr, {}), Error);
  std::vector<int> nine(9, 0);
  h.size = 0;
  EXPECT_THROW(send_message(p.tx.get(), h, nullptr, nine), Error);
  // A closed peer is an Error, not SIGPIPE.
  p.rx.reset();
  EXPECT_THROW(send_message(p.tx.get(), h, nullptr, {}), Error);
}

// ---- validate_request ----

struct Shape {
  Request request;
  std::uint32_t size;
  std::size_t fds;
};

Message shaped(Request request, std::uint32_t size, std::size_t fds, int fd_source) {
  Message m = make_msg(request);
  m.header.size = size;
  for (std::size_t i = 0; i < fds; ++i) m.fds.emplace_back(::dup(fd_source));
  return m;
}

TEST(Validate, FixedShapesAcceptedAndEveryDeviationRejected) {
  UniqueFd source = make_eventfd();
  const Shape shapes[] = {
      {Request::get_features, 0, 0},          {Request::set_features, 8, 0},
      {Request::set_owner, 0, 0},             {Request::reset_owner, 0, 0},
      {Request::set_log_base, 16, 1},         {Request::set_log_fd, 0, 1},
      {Request::set_vring_num, 8, 0},         {Request::set_vring_addr, 40, 0},
      {Request::set_vring_base, 8, 0},        {Request::get_vring_base, 8, 0},
      {Request::get_protocol_features, 0, 0}, {Request::set_protocol_features, 8, 0},
      {Request::get_queue_num, 0, 0},         {Request::set_vring_enable, 8, 0},
      {Request::send_rarp, 8, 0},             {Request::net_set_mtu, 8, 0},
      {Request::set_backend_req_fd, 0, 1},    {Request::iotlb_msg, 32, 0},
      {Request::set_vring_endian, 8, 0},      {Request::close_crypto_session, 8, 0},
      {Request::postcopy_advise, 0, 0},       {Request::postcopy_listen, 0, 0},
      {Request::postcopy_end, 0, 0},          {Request::get_inflight_fd, 24, 0},
      {Request::set_inflight_fd, 24, 1},      {Request::gpu_set_socket, 0, 1},
      {Request::reset_device, 0, 0},          {Request::vring_kick, 8, 0},
      {Request::get_max_mem_slots, 0, 0},     {Request::add_mem_reg, 40, 1},
      {Request::set_status, 8, 0},            {Request::get_status, 0, 0},
      {Request::get_shared_object, 16, 0},    {Request::set_device_state_fd, 8, 1},
      {Request::check_device_state, 0, 0},    {Request::get_shmem_config, 0, 0},
  };
  for (const Shape& s : shapes) {
    const char* name = request_name(static_cast<std::uint32_t>(s.request));
    EXPECT_EQ(validate_request(shaped(s.request, s.size, s.fds, source.get())), "") << name;
    for (std::uint32_t bad : {s.size + 1, s.size == 0 ? 4u : s.size - 1, s.size + 8, kMaxPayloadSize}) {
      std::string reason = validate_request(shaped(s.request, bad, s.fds, source.get()));
      EXPECT_NE(reason, "") << name << " size " << bad;
      EXPECT_NE(reason.find(name), std::string::npos) << reason;
      EXPECT_NE(reason.find(std::to_string(bad)), std::string::npos) << reason;
    }
    std::string reason = validate_request(shaped(s.request, s.size, s.fds + 1, source.get()));
    EXPECT_NE(reason, "") << name << " with an extra fd";
    EXPECT_NE(reason.find(name), std::string::npos) << reason;
    if (s.fds > 0) {
      EXPECT_NE(validate_request(shaped(s.request, s.size, s.fds - 1, source.get())), "") << name << " missing fd";
    }
  }
}

TEST(Validate, RemMemRegAcceptsZeroOrOneFd) {
  UniqueFd source = make_eventfd();
  EXPECT_EQ(validate_request(shaped(Request::rem_mem_reg, 40, 0, source.get())), "");
  EXPECT_EQ(validate_request(shaped(Request::rem_mem_reg, 40, 1, source.get())), "");
  EXPECT_NE(validate_request(shaped(Request::rem_mem_reg, 40, 2, source.get())), "");
  EXPECT_NE(validate_request(shaped(Request::rem_mem_reg, 32, 0, source.get())), "");
}

Message vring_fd_msg(Request request, std::uint64_t value, std::size_t fds, int source) {
  Message m = shaped(request, 0, fds, source);
  m.set_u64(value);
  return m;
}

TEST(Validate, VringFdRequestsAndTheNoFdBit) {
  UniqueFd source = make_eventfd();
  for (Request r : {Request::set_vring_kick, Request::set_vring_call, Request::set_vring_err}) {
    const char* name = request_name(static_cast<std::uint32_t>(r));
    EXPECT_EQ(validate_request(vring_fd_msg(r, 3, 1, source.get())), "") << name;
    EXPECT_EQ(validate_request(vring_fd_msg(r, 3 | kVringNoFdMask, 0, source.get())), "") << name;
    EXPECT_NE(validate_request(vring_fd_msg(r, 3, 0, source.get())), "") << name << ": fd missing";
    EXPECT_NE(validate_request(vring_fd_msg(r, 3, 2, source.get())), "") << name << ": two fds";
    std::string reason = validate_request(vring_fd_msg(r, 3 | kVringNoFdMask, 1, source.get()));
    EXPECT_NE(reason, "") << name << ": NOFD with an fd";
    EXPECT_NE(reason.find("NOFD"), std::string::npos) << reason;
    Message short_msg = vring_fd_msg(r, 3, 1, source.get());
    short_msg.header.size = 4;
    EXPECT_NE(validate_request(short_msg), "") << name << ": 4-byte payload";
  }
}

Message mem_table(std::uint32_t num_regions, std::uint32_t size, std::size_t fds, int source) {
  Message m = shaped(Request::set_mem_table, size, fds, source);
  std::memcpy(m.payload.data(), &num_regions, sizeof num_regions);
  return m;
}

TEST(Validate, SetMemTable) {
  UniqueFd source = make_eventfd();
  for (std::uint32_t n = 1; n <= 8; ++n) {
    EXPECT_EQ(validate_request(mem_table(n, 8 + 32 * n, n, source.get())), "") << n;
    EXPECT_NE(validate_request(mem_table(n, 8 + 32 * n, n - 1, source.get())), "") << n << " regions, 1 fd less";
    if (n < 8) {
      EXPECT_NE(validate_request(mem_table(n, 8 + 32 * n, n + 1, source.get())), "") << n << " regions, 1 fd more";
    }
    EXPECT_NE(validate_request(mem_table(n, 8 + 32 * n + 1, n, source.get())), "") << n << " size + 1";
    EXPECT_NE(validate_request(mem_table(n, 8 + 32 * (n - 1), n, source.get())), "") << n << " size short";
  }
  std::string zero = validate_request(mem_table(0, 8, 0, source.get()));
  EXPECT_NE(zero, "");
  EXPECT_NE(zero.find("SET_MEM_TABLE"), std::string::npos) << zero;
  std::string nine = validate_request(mem_table(9, 8 + 32 * 9, 8, source.get()));
  EXPECT_NE(nine, "");
  EXPECT_NE(nine.find("9 regions"), std::string::npos) << nine;
  EXPECT_NE(validate_request(mem_table(0xffffffffu, 8, 0, source.get())), "");
  // Too short to hold num_regions: rejected without reading it.
  EXPECT_NE(validate_request(mem_table(1, 4, 1, source.get())), "");
  EXPECT_NE(validate_request(mem_table(1, 0, 1, source.get())), "");
}

Message config_msg(Request request, std::uint32_t config_size, std::uint32_t payload_size) {
  Message m = make_msg(request);
  ConfigPayloadHeader h{0, config_size, 0};
  std::memcpy(m.payload.data(), &h, sizeof h);
  m.header.size = payload_size;
  return m;
}

TEST(Validate, Config) {
  for (Request r : {Request::get_config, Request::set_config}) {
    EXPECT_EQ(validate_request(config_msg(r, 0, 12)), "");
    EXPECT_EQ(validate_request(config_msg(r, 6, 18)), "");
    EXPECT_EQ(validate_request(config_msg(r, 256, 12 + 256)), "");
    EXPECT_NE(validate_request(config_msg(r, 257, 12 + 257)), "");
    EXPECT_NE(validate_request(config_msg(r, 6, 17)), "");
    EXPECT_NE(validate_request(config_msg(r, 6, 19)), "");
    EXPECT_NE(validate_request(config_msg(r, 0xffffffffu, 12)), "");
    EXPECT_NE(validate_request(config_msg(r, 0, 8)), "");  // shorter than the config header
    UniqueFd e = make_eventfd();
    Message with_fd = config_msg(r, 0, 12);
    with_fd.fds.push_back(std::move(e));
    EXPECT_NE(validate_request(with_fd), "");
  }
}

TEST(Validate, UnknownRequests) {
  for (std::uint32_t id : {0u, 45u, 200u, 0xffffffffu}) {
    Message m = make_msg(id);
    std::string reason = validate_request(m);
    EXPECT_NE(reason.find("unknown request"), std::string::npos) << id << ": " << reason;
    EXPECT_NE(reason.find(std::to_string(id)), std::string::npos) << reason;
  }
}

TEST(Validate, OversizedOrOverfullMessagesBuiltInMemory) {
  UniqueFd source = make_eventfd();
  Message m = shaped(Request::create_crypto_session, kMaxPayloadSize, 0, source.get());
  EXPECT_EQ(validate_request(m), "");
  m.header.size = kMaxPayloadSize + 1;
  EXPECT_NE(validate_request(m), "");
  EXPECT_NE(validate_request(shaped(Request::create_crypto_session, 8, 9, source.get())), "");
}

// ---- fuzz ----

TEST(Fuzz, RandomMessagesThroughReaderAndValidator) {
  const int baseline = count_open_fds();
  {
    std::mt19937_64 rng(0x5eed'1234'abcdull);
    auto pick = [&](std::uint64_t n) { return static_cast<std::uint32_t>(rng() % n); };
    std::vector<UniqueFd> pool;
    for (int i = 0; i < 10; ++i) pool.push_back(make_eventfd());
    Pair p = make_socket_pair();
    MessageReader reader;
    std::vector<std::uint8_t> bytes;
    int messages = 0, fatal = 0, closed = 0, valid = 0;
    for (int iter = 0; iter < 20000; ++iter) {
      MessageHeader h{};
      h.request = pick(10) == 0 ? static_cast<std::uint32_t>(rng()) : pick(kMaxRequest + 4);
      h.flags = pick(8) == 0 ? static_cast<std::uint32_t>(rng()) : (kMessageVersion | (pick(2) ? kFlagNeedReply : 0));
      switch (pick(6)) {
        case 0: h.size = 0; break;
        case 1: h.size = 8; break;
        case 2: h.size = 8 + 32 * pick(10); break;
        case 3: h.size = pick(kMaxPayloadSize + 1); break;
        case 4: h.size = pick(64); break;
        default: h.size = pick(12) == 0 ? static_cast<std::uint32_t>(rng()) : 12 + pick(300); break;
      }
      // Payload: random bytes, with a plausible num_regions / config size now and then.
      const std::size_t body = std::min<std::size_t>(h.size, kMaxPayloadSize);
      bytes.assign(sizeof h + body, 0);
      for (std::size_t i = sizeof h; i < bytes.size(); ++i) bytes[i] = static_cast<std::uint8_t>(rng());
      if (body >= 4 && pick(2)) {
        std::uint32_t plausible = pick(10);
        std::memcpy(bytes.data() + sizeof h + (pick(2) ? 0 : 4), &plausible, 4);
      }
      std::memcpy(bytes.data(), &h, sizeof h);
      std::vector<int> fds;
      const std::size_t nfds = pick(4) == 0 ? pick(11) : pick(3);
      for (std::size_t i = 0; i < nfds; ++i) fds.push_back(pool[pick(pool.size())].get());
      const bool hang_up = pick(200) == 0;
      const std::size_t send_len = hang_up ? pick(bytes.size()) + 1 : bytes.size();

      // Deliver in random fragments, the fds with the first one, reading after each.
      std::size_t off = 0;
      bool done = false;
      while (off < send_len && !done) {
        std::size_t chunk = std::min<std::size_t>(send_len - off, pick(3) == 0 ? 1 + pick(4) : 1 + pick(2000));
        raw_send(p.tx.get(), bytes.data() + off, chunk, off == 0 ? fds : std::vector<int>{});
        off += chunk;
        if (hang_up && off == send_len) p.tx.reset();
        for (;;) {
          Message m;
          MessageReader::Status s;
          try {
            s = reader.read(p.rx.get(), m);
          } catch (const FatalProtocolError&) {
            ++fatal;
            done = true;
            break;
          }
          if (s == MessageReader::Status::again) break;
          if (s == MessageReader::Status::closed) {
            ++closed;
            done = true;
            break;
          }
          ++messages;
          EXPECT_LE(m.header.size, kMaxPayloadSize);
          EXPECT_LE(m.fds.size(), kMaxFdsPerMessage);
          if (validate_request(m).empty()) ++valid;
        }
      }
      if (done) {
        // A framing violation or hang-up ends the connection: start a fresh one.
        p = make_socket_pair();
        reader = MessageReader();
      }
    }
    // The fuzz must have exercised every outcome.
    EXPECT_GT(messages, 1000);
    EXPECT_GT(fatal, 100);
    EXPECT_GT(closed, 10);
    EXPECT_GT(valid, 50);
  }
  EXPECT_EQ(count_open_fds(), baseline);
}

}  // namespace
}  // namespace vhostd
