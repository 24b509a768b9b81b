// vhostd vhost: the per-connection protocol state machine (see session.hpp).
#include "vhostd/vhost/session.hpp"

#include <cstring>

#include "vhostd/base/log.hpp"
#include "vhostd/vhost/backend_channel.hpp"
#include "vhostd/vhost/codec.hpp"

namespace vhostd {

namespace {

// Protocol features the framework implements for every device.
constexpr std::uint64_t kFrameworkProtocolFeatures =
    protocol_bit(ProtocolFeature::log_shmfd) | protocol_bit(ProtocolFeature::reply_ack) |
    protocol_bit(ProtocolFeature::backend_req) | protocol_bit(ProtocolFeature::reset_device) |
    protocol_bit(ProtocolFeature::configure_mem_slots) | protocol_bit(ProtocolFeature::status);

// Protocol features a device may add because the framework hands them to it.
constexpr std::uint64_t kDeviceProtocolFeatures =
    protocol_bit(ProtocolFeature::mq) | protocol_bit(ProtocolFeature::rarp) |
    protocol_bit(ProtocolFeature::net_mtu) | protocol_bit(ProtocolFeature::config);

constexpr bool is_power_of_two(std::uint32_t v) { return v != 0 && (v & (v - 1)) == 0; }

// Requests whose reply carries a body: a failure still answers, with an empty body.
bool has_reply_body(Request request) {
  switch (request) {
    case Request::get_features:
    case Request::get_protocol_features:
    case Request::get_queue_num:
    case Request::get_vring_base:
    case Request::get_config:
    case Request::get_max_mem_slots:
    case Request::get_status:
    case Request::set_log_base:
    case Request::get_inflight_fd:
    case Request::get_shared_object:
    case Request::check_device_state:
    case Request::set_device_state_fd:
    case Request::get_shmem_config:
    case Request::postcopy_advise:
      return true;
    default:
      return false;
  }
}

}  // namespace

Session::Session(std::string name, Backend& backend, RingHost& host, QsbrDomain& domain)
    : name_(std::move(name)), backend_(backend), host_(host), memory_(domain) {
  rings_.resize(backend_.num_queues());
  for (auto& slot : rings_) slot.vring = std::make_unique<Vring>(backend_.vring_locking());
}

Session::~Session() { teardown(); }

std::uint64_t Session::offered_features() const noexcept {
  return backend_.features() | kVhostUserFProtocolFeatures | kVirtioFLogAll;
}

std::uint64_t Session::offered_protocol_features() const noexcept {
  return kFrameworkProtocolFeatures | (backend_.protocol_features() & kDeviceProtocolFeatures);
}

bool Session::negotiated(ProtocolFeature feature) const noexcept {
  return (acked_protocol_features_ & protocol_bit(feature)) != 0;
}

void Session::require(ProtocolFeature feature, const Message& message) const {
  if (!negotiated(feature)) {
    throw_error(request_name(message.header.request), ": protocol feature ",
                static_cast<unsigned>(feature), " not negotiated");
  }
}

Session::RingSlot& Session::slot_for(std::uint32_t index, const Message& message) {
  if (index >= rings_.size()) {
    throw_error(request_name(message.header.request), ": ring index ", index, " out of range (device has ",
                rings_.size(), " rings)");
  }
  return rings_[index];
}

std::optional<Message> Session::handle(Message& message) {
  const bool need_reply = message.need_reply();
  const Request request = message.request();
  try {
    log_debug(name_, ": ", request_name(message.header.request), " size ", message.header.size, " fds ",
              message.fds.size(), need_reply ? " need-reply" : "");
    std::string invalid = validate_request(message);
    if (!invalid.empty()) throw Error(invalid);
    std::optional<Message> reply = dispatch(message);
    if (reply) return reply;
    if (need_reply && negotiated(ProtocolFeature::reply_ack)) return make_u64_reply(message, 0);
    return std::nullopt;
  } catch (const FatalProtocolError&) {
    throw;
  } catch (const Error& error) {
    ++failed_requests_;
    log_warning(name_, ": ", error.what());
    if (has_reply_body(request)) return make_reply(message);  // size-0 body: the request failed
    if (need_reply && negotiated(ProtocolFeature::reply_ack)) return make_u64_reply(message, 1);
    return std::nullopt;
  }
}

std::optional<Message> Session::dispatch(Message& message) {
  switch (message.request()) {
    case Request::get_features:
      return make_u64_reply(message, offered_features());
    case Request::set_features:
      set_features(message.u64());
      return std::nullopt;
    case Request::set_owner:
      owner_set_ = true;
      return std::nullopt;
    case Request::reset_owner:
      reset_rings();
      acked_features_ = 0;
      features_set_ = false;
      backend_.reset();
      return std::nullopt;
    case Request::get_protocol_features:
      return make_u64_reply(message, offered_protocol_features());
    case Request::set_protocol_features: {
      std::uint64_t features = message.u64();
      if (features & ~offered_protocol_features()) {
        throw_error("SET_PROTOCOL_FEATURES 0x", std::hex, features, ": bits 0x",
                    features & ~offered_protocol_features(), " were not offered");
      }
      acked_protocol_features_ = features;
      backend_.acked_protocol_features(features);
      return std::nullopt;
    }
    case Request::get_queue_num:
      require(ProtocolFeature::mq, message);
      return make_u64_reply(message, backend_.queue_num());
    case Request::set_mem_table:
      set_mem_table(message);
      return std::nullopt;
    case Request::set_log_base:
      set_log_base(message);
      return make_u64_reply(message, 0);
    case Request::set_log_fd:
      require(ProtocolFeature::log_shmfd, message);
      log_call_fd_ = std::move(message.fds.at(0));
      return std::nullopt;
    case Request::set_vring_num:
      set_vring_num(message);
      return std::nullopt;
    case Request::set_vring_addr:
      set_vring_addr(message);
      return std::nullopt;
    case Request::set_vring_base:
      set_vring_base(message);
      return std::nullopt;
    case Request::get_vring_base:
      return get_vring_base(message);
    case Request::set_vring_kick:
    case Request::set_vring_call:
    case Request::set_vring_err:
      set_vring_fd(message);
      return std::nullopt;
    case Request::set_vring_enable:
      set_vring_enable(message);
      return std::nullopt;
    case Request::get_config:
      return get_config(message);
    case Request::set_config:
      set_config(message);
      return std::nullopt;
    case Request::set_backend_req_fd:
      require(ProtocolFeature::backend_req, message);
      backend_.set_backend_channel(std::make_shared<BackendChannel>(
          std::move(message.fds.at(0)), negotiated(ProtocolFeature::reply_ack)));
      return std::nullopt;
    case Request::reset_device:
      require(ProtocolFeature::reset_device, message);
      reset_rings();
      acked_features_ = 0;
      features_set_ = false;
      status_ = 0;
      memory_.set_log_all(false);
      backend_.reset();
      return std::nullopt;
    case Request::get_max_mem_slots:
      require(ProtocolFeature::configure_mem_slots, message);
      return make_u64_reply(message, kMaxMemSlots);
    case Request::add_mem_reg: {
      require(ProtocolFeature::configure_mem_slots, message);
      auto region = message.payload_as<MemRegPayload>().region;
      memory_.add_region({region.guest_phys_addr, region.memory_size, region.userspace_addr,
                          region.mmap_offset},
                         std::move(message.fds.at(0)));
      backend_.update_memory(memory_);
      return std::nullopt;
    }
    case Request::rem_mem_reg: {
      require(ProtocolFeature::configure_mem_slots, message);
      auto region = message.payload_as<MemRegPayload>().region;
      memory_.remove_region({region.guest_phys_addr, region.memory_size, region.userspace_addr,
                             region.mmap_offset});
      backend_.update_memory(memory_);
      return std::nullopt;
    }
    case Request::set_status: {
      require(ProtocolFeature::status, message);
      std::uint64_t status = message.u64();
      if (status > 0xff) throw_error("SET_STATUS ", status, ": not a u8 device status");
      status_ = static_cast<std::uint8_t>(status);
      backend_.set_status(status_);
      return std::nullopt;
    }
    case Request::get_status:
      require(ProtocolFeature::status, message);
      return make_u64_reply(message, status_);
    case Request::net_set_mtu: {
      require(ProtocolFeature::net_mtu, message);
      std::uint64_t mtu = message.u64();
      if (mtu > 0xffff) throw_error("NET_SET_MTU ", mtu, ": out of range");
      backend_.set_mtu(static_cast<std::uint16_t>(mtu));
      return std::nullopt;
    }
    case Request::send_rarp: {
      require(ProtocolFeature::rarp, message);
      std::uint8_t mac[6];
      std::memcpy(mac, message.payload.data(), sizeof mac);
      backend_.send_rarp(mac);
      return std::nullopt;
    }
    default:
      throw_error(request_name(message.header.request), " (", message.header.request,
                  "): not implemented");
  }
}

void Session::set_features(std::uint64_t features) {
  std::uint64_t unknown = features & ~offered_features();
  if (unknown) throw_error("SET_FEATURES 0x", std::hex, features, ": bits 0x", unknown, " were not offered");
  const RingLayout layout = (features & kVirtioFRingPacked) ? RingLayout::packed : RingLayout::split;
  if (layout != layout_) {
    for (std::uint16_t i = 0; i < rings_.size(); ++i) {
      if (rings_[i].started || rings_[i].polled) {
        throw_error("SET_FEATURES 0x", std::hex, features, ": RING_PACKED cannot change while ring ", std::dec, i,
                    " is running");
      }
    }
  }
  const bool changed = !features_set_ || features != acked_features_;
  acked_features_ = features;
  features_set_ = true;
  if (layout != layout_) set_layout(layout);
  if (changed) {
    log_info(name_, ": features 0x", std::hex, features, std::dec, ": ",
             layout == RingLayout::packed ? "packed" : "split", " rings",
             (features & kVirtioFInOrder) ? ", in-order" : "", (features & kVirtioFRingEventIdx) ? ", event-idx" : "",
             (features & kVirtioFRingIndirectDesc) ? ", indirect" : "", (features & kVirtioFLogAll) ? ", log-all" : "");
  }
  // Toggling LOG_ALL is how migration starts and ends: it must never stop or reset a ring.
  memory_.set_log_all((features & kVirtioFLogAll) != 0);
  backend_.acked_features(features);
  backend_.set_event_idx((features & kVirtioFRingEventIdx) != 0);
  if (!(features & kVhostUserFProtocolFeatures)) {
    // Without protocol features rings are enabled as soon as features are set (spec).
    for (std::uint16_t i = 0; i < rings_.size(); ++i) {
      if (!rings_[i].enabled) {
        rings_[i].enabled = true;
        rings_[i].vring->with_mut([](VringState& ring) { ring.set_enabled(true); });
        update_polling(i);
      }
    }
  }
}

void Session::set_layout(RingLayout layout) {
  layout_ = layout;
  // Frontends configure rings after SET_FEATURES (QEMU, DPDK and cloud-hypervisor all do);
  // whatever came before is carried over where it fits the new layout. The vring base is not:
  // its encoding differs, and it is sent after the size in any case.
  for (RingSlot& slot : rings_) {
    if (layout == RingLayout::split && !is_power_of_two(slot.size)) slot.size = 0;
    slot.vring->with_mut([&](VringState& ring) {
      ring.set_layout(layout);
      ring.visit([&](auto& queue) {
        if (slot.size != 0) queue.set_size(slot.size);
        queue.set_addresses(slot.addresses);
      });
    });
  }
}

void Session::set_mem_table(Message& message) {
  auto table = message.payload_as<MemTablePayload>();
  std::vector<MemoryRegionInfo> regions;
  regions.reserve(table.num_regions);
  for (std::uint32_t i = 0; i < table.num_regions; ++i) {
    const auto& r = table.regions[i];
    regions.push_back({r.guest_phys_addr, r.memory_size, r.userspace_addr, r.mmap_offset});
  }
  // Running rings keep polling: they pick the new table up at their next batch (re-translating
  // their ring addresses); set_regions returns only once no poller holds the old table, so the
  // ack that follows is honest.
  memory_.set_regions(regions, std::move(message.fds));
  backend_.update_memory(memory_);
  // A ring kicked before its memory was mapped can start now.
  for (std::uint16_t i = 0; i < rings_.size(); ++i) update_polling(i);
}

void Session::set_log_base(Message& message) {
  require(ProtocolFeature::log_shmfd, message);
  auto log = message.payload_as<LogPayload>();
  memory_.set_log(DirtyLog::map(std::move(message.fds.at(0)), log.mmap_size, log.mmap_offset));
}

void Session::set_vring_num(const Message& message) {
  auto state = message.payload_as<VringStatePayload>();
  RingSlot& slot = slot_for(state.index, message);
  if (slot.started) throw_error("SET_VRING_NUM ring ", state.index, ": ring is running");
  const std::uint32_t limit = std::min<std::uint32_t>(backend_.max_queue_size(), kMaxQueueSize);
  if (layout_ == RingLayout::packed) {
    // Packed rings need not be powers of two (virtio 1.2 §2.8.10.1).
    if (state.num == 0 || state.num > limit) {
      throw_error("SET_VRING_NUM ring ", state.index, ": size ", state.num, " is not in [1, ", limit, "]");
    }
  } else if (!is_power_of_two(state.num) || state.num > limit) {
    throw_error("SET_VRING_NUM ring ", state.index, ": size ", state.num,
                " is not a power of two in [1, ", limit, "]");
  }
  slot.size = state.num;
  slot.vring->with_mut([&](VringState& ring) { ring.visit([&](auto& queue) { queue.set_size(state.num); }); });
}

void Session::set_vring_addr(const Message& message) {
  auto addr = message.payload_as<VringAddrPayload>();
  RingSlot& slot = slot_for(addr.index, message);
  if (addr.flags & ~kVringFLog) throw_error("SET_VRING_ADDR ring ", addr.index, ": unknown flags 0x", std::hex, addr.flags);
  // Split: descriptor table 16, avail ring 2, used ring 4. Packed: descriptor ring 16, both
  // event suppression areas 4 (the avail and used addresses carry the driver and device areas).
  const std::uint64_t avail_alignment = layout_ == RingLayout::packed ? 4 : 2;
  if ((addr.desc_user_addr & 15) || (addr.avail_user_addr & (avail_alignment - 1)) || (addr.used_user_addr & 3)) {
    throw_error("SET_VRING_ADDR ring ", addr.index, ": misaligned ring address");
  }
  VringAddresses addresses{addr.flags, addr.desc_user_addr, addr.used_user_addr, addr.avail_user_addr,
                           addr.log_guest_addr};
  if (slot.size != 0 && memory_.current()->num_regions() != 0) {
    // Validate now so a bad address is refused with the request that carried it.
    auto check = [&](auto& probe) {
      probe.set_size(slot.size);
      probe.set_addresses(addresses);
      probe.check_addresses(*memory_.current());
    };
    if (layout_ == RingLayout::packed) {
      PackedQueue probe;
      check(probe);
    } else {
      SplitQueue probe;
      check(probe);
    }
  }
  // QEMU re-sends SET_VRING_ADDR on a running ring to switch used-ring logging on for
  // migration: take the ring off its poller for the change, and keep it running.
  with_ring_paused(static_cast<std::uint16_t>(addr.index), [&](VringState& ring) {
    ring.visit([&](auto& queue) { queue.set_addresses(addresses); });
  });
  slot.addresses = addresses;
  slot.addresses_set = true;
  update_polling(static_cast<std::uint16_t>(addr.index));  // it may have been kicked already
}

void Session::set_vring_base(const Message& message) {
  auto state = message.payload_as<VringStatePayload>();
  RingSlot& slot = slot_for(state.index, message);
  if (slot.started) throw_error("SET_VRING_BASE ring ", state.index, ": ring is running");
  if (layout_ == RingLayout::packed) {
    // Both positions and wrap counters (checked against the size by the queue; throws).
    slot.vring->with_mut([&](VringState& ring) { ring.packed_queue().set_vring_base(state.num); });
    return;
  }
  if (state.num > 0xffff) throw_error("SET_VRING_BASE ring ", state.index, ": index ", state.num, " exceeds 16 bits");
  slot.vring->with_mut([&](VringState& ring) {
    ring.split_queue().set_last_avail_idx(static_cast<std::uint16_t>(state.num));
  });
}

Message Session::get_vring_base(const Message& message) {
  auto state = message.payload_as<VringStatePayload>();
  RingSlot& slot = slot_for(state.index, message);
  const auto index = static_cast<std::uint16_t>(state.index);
  // Stopping the ring first means the index below is final: no poller consumes after this.
  stop_ring(index);
  const std::uint32_t next = slot.vring->with_mut([&](VringState& ring) {
    // Split: the next avail index. Packed: both positions and wrap counters (vring base form).
    const std::uint32_t last = ring.packed() ? ring.packed_queue().vring_base() : ring.split_queue().last_avail_idx();
    // The frontend sends fresh kick/call fds when it restarts the ring.
    ring.set_kick(UniqueFd());
    ring.set_call(UniqueFd());
    return last;
  });
  Message reply = make_reply(message);
  reply.set_payload(VringStatePayload{state.index, next});
  return reply;
}

void Session::set_vring_fd(Message& message) {
  const std::uint64_t value = message.u64();
  const auto index = static_cast<std::uint32_t>(value & kVringIndexMask);
  RingSlot& slot = slot_for(index, message);
  const bool nofd = (value & kVringNoFdMask) != 0;
  UniqueFd fd = nofd ? UniqueFd() : std::move(message.fds.at(0));
  const auto ring_index = static_cast<std::uint16_t>(index);

  switch (message.request()) {
    case Request::set_vring_call:
      // The poller reads the call fd: swap it with the ring off the poller (QEMU changes it
      // on a running ring when the guest masks or unmasks the vector).
      with_ring_paused(ring_index, [&](VringState& ring) { ring.set_call(std::move(fd)); });
      return;
    case Request::set_vring_err:
      slot.vring->with_mut([&](VringState& ring) { ring.set_err(std::move(fd)); });
      return;
    default:
      break;
  }
  // SET_VRING_KICK
  if (slot.kick_watched) {
    host_.unwatch_kick(ring_index, slot.vring->unlocked().kick_fd());
    slot.kick_watched = false;
  }
  slot.kick_nofd = nofd;
  const int kick = fd.get();
  // A poller that sleeps waits on the kick fd: swap it with the ring off the poller.
  with_ring_paused(ring_index, [&](VringState& ring) { ring.set_kick(std::move(fd)); });
  if (nofd) {
    // No kick fd: the frontend expects the ring to be polled; it starts now.
    slot.started = true;
    update_polling(ring_index);
  } else if (!slot.started) {
    host_.watch_kick(ring_index, kick);
    slot.kick_watched = true;
  }
}

void Session::on_kick(std::uint16_t index) {
  if (index >= rings_.size()) return;
  RingSlot& slot = rings_[index];
  int kick = slot.vring->unlocked().kick_fd();
  if (kick >= 0) eventfd_drain(kick);
  if (slot.kick_watched) {
    host_.unwatch_kick(index, kick);
    slot.kick_watched = false;
  }
  if (slot.started) return;
  slot.started = true;
  update_polling(index);
}

void Session::set_vring_enable(const Message& message) {
  if (!(acked_features_ & kVhostUserFProtocolFeatures)) {
    throw_error("SET_VRING_ENABLE: VHOST_USER_F_PROTOCOL_FEATURES not negotiated");
  }
  auto state = message.payload_as<VringStatePayload>();
  RingSlot& slot = slot_for(state.index, message);
  if (state.num > 1) throw_error("SET_VRING_ENABLE ring ", state.index, ": value ", state.num, " is not 0 or 1");
  slot.enabled = state.num == 1;
  slot.vring->with_mut([&](VringState& ring) { ring.set_enabled(state.num == 1); });
  // A kick that came while disabled is not lost: the ring was started by it, and the poller
  // finds the pending avail entries as soon as it is enabled.
  update_polling(static_cast<std::uint16_t>(state.index));
}

Message Session::get_config(const Message& message) {
  require(ProtocolFeature::config, message);
  auto header = message.payload_as<ConfigPayloadHeader>();
  std::vector<std::uint8_t> data = backend_.get_config(header.offset, header.size);
  if (data.size() != header.size) {
    throw_error("GET_CONFIG offset ", header.offset, " size ", header.size, ": out of the device's config space");
  }
  Message reply = make_reply(message);
  std::memcpy(reply.payload.data(), &header, sizeof header);
  std::memcpy(reply.payload.data() + sizeof header, data.data(), data.size());
  reply.header.size = static_cast<std::uint32_t>(sizeof header + data.size());
  return reply;
}

void Session::set_config(const Message& message) {
  require(ProtocolFeature::config, message);
  auto header = message.payload_as<ConfigPayloadHeader>();
  backend_.set_config(header.offset, std::span<const std::uint8_t>(
                                         message.payload.data() + sizeof header, header.size));
}

void Session::update_polling(std::uint16_t index) {
  RingSlot& slot = rings_[index];
  const bool want = slot.started && slot.enabled && slot.size != 0 && slot.addresses_set;
  if (want == slot.polled) return;
  if (want) {
    // Read only while no poller owns the ring: a ring in error stays off until it is reset.
    const bool in_error = slot.vring->with_ref([](const VringState& ring) { return ring.in_error(); });
    if (!in_error) start_ring(index);
  } else {
    host_.stop_polling(index, *slot.vring);
    slot.polled = false;
    slot.vring->with_mut([&](VringState& ring) { backend_.queue_stopped(index, ring); });
  }
}

void Session::start_ring(std::uint16_t index) {
  RingSlot& slot = rings_[index];
  CallCoalescing coalescing = backend_.call_coalescing(index);
  if (coalescing.enabled() && slot.vring->locking() != VringLocking::none) {
    log_warning(name_, ": ring ", index, ": call coalescing needs VringLocking::none (a held call is made ",
                "outside the ring lock); its calls are made at once");
    coalescing = {};
  }
  bool ok = slot.vring->with_mut([&](VringState& ring) {
    const bool configured = ring.visit([&](auto& queue) {
      try {
        queue.check_addresses(*memory_.current());
      } catch (const Error& error) {
        log_warning(name_, ": ring ", index, " not started: ", error.what());
        return false;
      }
      queue.set_memory(&memory_);
      queue.set_event_idx((acked_features_ & kVirtioFRingEventIdx) != 0);
      queue.set_in_order((acked_features_ & kVirtioFInOrder) != 0);
      queue.set_call_coalescing(coalescing);
      // The poller spins on the ring: guest kicks would only cost the guest exits.
      queue.disable_notifications();
      return true;
    });
    if (configured) backend_.queue_started(index, ring);
    return configured;
  });
  if (!ok) return;
  slot.errors_at_start = slot.vring->unlocked().stats().error_total();
  host_.start_polling(index, *slot.vring);
  slot.polled = true;
}

std::size_t Session::check_ring_errors() {
  std::size_t stopped = 0;
  for (std::uint16_t i = 0; i < rings_.size(); ++i) {
    RingSlot& slot = rings_[i];
    // The counters are atomics the owner bumps when it puts the ring in error: safe to read
    // while the ring runs (its error field is not, until the ring is off the data path).
    if (!slot.polled || slot.vring->unlocked().stats().error_total() == slot.errors_at_start) continue;
    host_.stop_polling(i, *slot.vring);
    slot.polled = false;
    slot.vring->with_mut([&](VringState& ring) {
      backend_.queue_stopped(i, ring);
      log_warning(name_, ": ring ", i, " stopped: the guest broke its ", ring.packed() ? "packed" : "split",
                  " ring (", to_string(ring.error()), "); it stays stopped until the frontend resets it");
      if (ring.err_fd() >= 0) eventfd_signal(ring.err_fd());
    });
    ++broken_rings_;
    ++stopped;
  }
  return stopped;
}

void Session::stop_ring(std::uint16_t index) {
  RingSlot& slot = rings_[index];
  if (slot.kick_watched) {
    host_.unwatch_kick(index, slot.vring->unlocked().kick_fd());
    slot.kick_watched = false;
  }
  slot.started = false;
  update_polling(index);
}

template <typename Fn>
void Session::with_ring_paused(std::uint16_t index, Fn&& fn) {
  RingSlot& slot = rings_[index];
  const bool was_polled = slot.polled;
  if (was_polled) {
    host_.stop_polling(index, *slot.vring);
    slot.polled = false;
  }
  slot.vring->with_mut(std::forward<Fn>(fn));
  if (was_polled) {
    host_.start_polling(index, *slot.vring);
    slot.polled = true;
  }
}

void Session::reset_rings() {
  for (std::uint16_t i = 0; i < rings_.size(); ++i) {
    RingSlot& slot = rings_[i];
    stop_ring(i);
    slot.vring->with_mut([](VringState& ring) { ring.reset(); });
    slot = RingSlot{std::move(slot.vring)};
  }
  layout_ = RingLayout::split;  // the rings were reset to split with the features they forget
}

void Session::teardown() {
  reset_rings();
  memory_.clear();
  log_call_fd_.reset();
  backend_.set_backend_channel(nullptr);
  backend_.reset();
  acked_features_ = 0;
  acked_protocol_features_ = 0;
  features_set_ = false;
  owner_set_ = false;
  status_ = 0;
}

}  // namespace vhostd
