// vhostd drivers/echo: a minimal sample device.
//
// Every request chain's device-readable bytes are copied into its device-writable buffers and
// the chain is returned with the number of bytes written. It exists to show what a device
// built on the framework looks like and to let the tests and the README's first command
// exercise the whole stack (socket, memory, rings, pollers) without a device model in the way.
// Its config space is 8 bytes: u32 number of queues, u32 max queue size (read-only).
#pragma once

#include <cstdint>

#include "vhostd/vhost/backend.hpp"

namespace vhostd {

class EchoBackend : public Backend {
 public:
  // Requests handled per poll of one ring before the used ring is published.
  static constexpr unsigned kBurst = 32;

  explicit EchoBackend(std::size_t num_queues = 2, std::uint32_t max_queue_size = 1024,
                       VringLocking locking = VringLocking::none);

  std::size_t num_queues() const override { return num_queues_; }
  std::uint32_t max_queue_size() const override { return max_queue_size_; }
  std::uint64_t features() const override;
  std::uint64_t protocol_features() const override;
  VringLocking vring_locking() const override { return locking_; }
  // Every ring's call coalescing (off by default); set before the device is served.
  void set_call_coalescing(const CallCoalescing& setting) noexcept { coalescing_ = setting; }
  CallCoalescing call_coalescing(std::uint16_t) const override { return coalescing_; }
  std::vector<std::uint8_t> get_config(std::uint32_t offset, std::uint32_t size) override;
  void handle_queue(std::uint16_t index, VringState& ring) noexcept override;

 private:
  std::size_t num_queues_;
  std::uint32_t max_queue_size_;
  VringLocking locking_;
  CallCoalescing coalescing_{};
};

}  // namespace vhostd
