// vhostd drivers/echo: the sample echo device (see echo_backend.hpp).
#include "vhostd/echo/echo_backend.hpp"

#include <cstring>

#include "vhostd/vhost/message.hpp"

namespace vhostd {

EchoBackend::EchoBackend(std::size_t num_queues, std::uint32_t max_queue_size, VringLocking locking)
    : num_queues_(num_queues), max_queue_size_(max_queue_size), locking_(locking) {}

std::uint64_t EchoBackend::features() const {
  return kVirtioFVersion1 | kVirtioFRingIndirectDesc | kVirtioFRingEventIdx | kVirtioFRingPacked |
         kVirtioFInOrder;
}

std::uint64_t EchoBackend::protocol_features() const {
  return protocol_bit(ProtocolFeature::config) | protocol_bit(ProtocolFeature::mq);
}

std::vector<std::uint8_t> EchoBackend::get_config(std::uint32_t offset, std::uint32_t size) {
  std::uint32_t config[2] = {static_cast<std::uint32_t>(num_queues_), max_queue_size_};
  if (offset > sizeof config || size > sizeof config - offset) return {};
  std::vector<std::uint8_t> bytes(size);
  std::memcpy(bytes.data(), reinterpret_cast<const std::uint8_t*>(config) + offset, size);
  return bytes;
}

void EchoBackend::handle_queue(std::uint16_t, VringState& ring) noexcept {
  // Written once for both ring layouts: visit() instantiates it for each.
  ring.visit([](auto& queue) noexcept {
    // One chain object per lcore thread: no allocation on the data path, and big enough for
    // any chain the ring accepts.
    static thread_local DescriptorChain chain;
    for (unsigned n = 0; n < kBurst && queue.pop(chain); ++n) {
      ChainWriter writer(chain, *queue.table());
      for (const ChainSegment& segment : chain.readable()) {
        if (writer.write(segment.host, segment.len) < segment.len) break;  // response buffer full
      }
      queue.push_used(chain.head, static_cast<std::uint32_t>(writer.written()));
    }
    queue.flush_used();
    queue.notify();
  });
}

}  // namespace vhostd
