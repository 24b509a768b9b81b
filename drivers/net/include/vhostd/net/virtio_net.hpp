// vhostd drivers/net: the virtio-net wire definitions (virtio 1.2 §5.1).
//
// Feature bits, the virtio-net header that precedes every packet, the control-queue commands
// and the config-space layout. Definitions only: the device is in net_port.hpp.
#pragma once

#include <cstdint>

namespace vhostd::net {

// ---- feature bits (§5.1.3) ----
inline constexpr std::uint64_t kNetFCsum = 1ull << 0;        // device handles partial csum (guest TX)
inline constexpr std::uint64_t kNetFGuestCsum = 1ull << 1;   // guest handles partial csum (guest RX)
inline constexpr std::uint64_t kNetFMtu = 1ull << 3;
inline constexpr std::uint64_t kNetFMac = 1ull << 5;
inline constexpr std::uint64_t kNetFGuestTso4 = 1ull << 7;
inline constexpr std::uint64_t kNetFGuestTso6 = 1ull << 8;
inline constexpr std::uint64_t kNetFGuestEcn = 1ull << 9;
inline constexpr std::uint64_t kNetFHostTso4 = 1ull << 11;
inline constexpr std::uint64_t kNetFHostTso6 = 1ull << 12;
inline constexpr std::uint64_t kNetFHostEcn = 1ull << 13;
inline constexpr std::uint64_t kNetFMrgRxbuf = 1ull << 15;
inline constexpr std::uint64_t kNetFStatus = 1ull << 16;
inline constexpr std::uint64_t kNetFCtrlVq = 1ull << 17;
inline constexpr std::uint64_t kNetFCtrlRx = 1ull << 18;
inline constexpr std::uint64_t kNetFGuestAnnounce = 1ull << 21;
inline constexpr std::uint64_t kNetFMq = 1ull << 22;
inline constexpr std::uint64_t kNetFCtrlMacAddr = 1ull << 23;

// ---- the header (§5.1.6) ----
inline constexpr std::uint8_t kNetHdrFNeedsCsum = 1;
inline constexpr std::uint8_t kNetHdrFDataValid = 2;
inline constexpr std::uint8_t kNetHdrGsoNone = 0;
inline constexpr std::uint8_t kNetHdrGsoTcpv4 = 1;
inline constexpr std::uint8_t kNetHdrGsoUdp = 3;
inline constexpr std::uint8_t kNetHdrGsoTcpv6 = 4;
inline constexpr std::uint8_t kNetHdrGsoEcn = 0x80;

// With VERSION_1 or MRG_RXBUF the header is 12 bytes (num_buffers included); a legacy device
// without MRG_RXBUF uses the first 10.
struct VirtioNetHeader {
  std::uint8_t flags;
  std::uint8_t gso_type;
  std::uint16_t hdr_len;
  std::uint16_t gso_size;
  std::uint16_t csum_start;
  std::uint16_t csum_offset;
  std::uint16_t num_buffers;
};
static_assert(sizeof(VirtioNetHeader) == 12);
inline constexpr std::uint32_t kNetHeaderLen = 12;
inline constexpr std::uint32_t kNetLegacyHeaderLen = 10;

// ---- config space (§5.1.4), the part this device exposes ----
inline constexpr std::uint16_t kNetSLinkUp = 1;
inline constexpr std::uint16_t kNetSAnnounce = 2;

struct VirtioNetConfig {
  std::uint8_t mac[6];
  std::uint16_t status;
  std::uint16_t max_virtqueue_pairs;
  std::uint16_t mtu;
};
static_assert(sizeof(VirtioNetConfig) == 12);

// ---- control virtqueue (§5.1.6.5) ----
inline constexpr std::uint8_t kNetOk = 0;
inline constexpr std::uint8_t kNetErr = 1;

inline constexpr std::uint8_t kNetCtrlRx = 0;
inline constexpr std::uint8_t kNetCtrlRxPromisc = 0;
inline constexpr std::uint8_t kNetCtrlRxAllmulti = 1;
inline constexpr std::uint8_t kNetCtrlRxAlluni = 2;
inline constexpr std::uint8_t kNetCtrlRxNomulti = 3;
inline constexpr std::uint8_t kNetCtrlRxNouni = 4;
inline constexpr std::uint8_t kNetCtrlRxNobcast = 5;
inline constexpr std::uint8_t kNetCtrlMac = 1;
inline constexpr std::uint8_t kNetCtrlMacTableSet = 0;
inline constexpr std::uint8_t kNetCtrlMacAddrSet = 1;
inline constexpr std::uint8_t kNetCtrlAnnounce = 3;
inline constexpr std::uint8_t kNetCtrlAnnounceAck = 0;
inline constexpr std::uint8_t kNetCtrlMq = 4;
inline constexpr std::uint8_t kNetCtrlMqVqPairsSet = 0;
inline constexpr std::uint16_t kNetCtrlMqVqPairsMin = 1;
inline constexpr std::uint16_t kNetCtrlMqVqPairsMax = 0x8000;

// ---- Ethernet ----
inline constexpr std::uint32_t kEthHeaderLen = 14;
inline constexpr std::uint32_t kEthAddrLen = 6;
inline constexpr std::uint16_t kEthMinMtu = 68;    // NET_SET_MTU below this is refused
inline constexpr std::uint16_t kEthDefaultMtu = 1500;

}  // namespace vhostd::net
