// A device built outside the tree: completes every request with zero bytes written.
// Run with `null-device SOCKET` to serve it; with no argument it only checks it links.
#include <cstdio>
#include <memory>

#include "vhostd/runtime/daemon.hpp"

class NullDevice : public vhostd::Backend {
 public:
  std::size_t num_queues() const override { return 1; }
  std::uint32_t max_queue_size() const override { return 256; }
  std::uint64_t features() const override { return vhostd::kVirtioFVersion1; }
  void handle_queue(std::uint16_t, vhostd::VringState& ring) noexcept override {
    ring.visit([](auto& queue) noexcept {
      static thread_local vhostd::DescriptorChain chain;
      while (queue.pop(chain)) queue.push_used(chain.head, 0);
      queue.flush_used();
      queue.notify();
    });
  }
};

int main(int argc, char** argv) {
  if (argc < 2) {
    std::puts("null-device: linked against vhostd");
    return 0;
  }
  vhostd::Runtime runtime(vhostd::Runtime::default_cores());
  vhostd::Daemon daemon("null", std::make_shared<NullDevice>(), runtime);
  daemon.start_server(argv[1]);
  daemon.wait();
  return 0;
}
