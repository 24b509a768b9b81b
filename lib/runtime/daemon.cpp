// vhostd runtime: the daemon object (see daemon.hpp).
#include "vhostd/runtime/daemon.hpp"

#include <fcntl.h>

#include "vhostd/base/log.hpp"
#include "vhostd/runtime/placement.hpp"

namespace vhostd {

namespace {
constexpr std::chrono::milliseconds kMaxReconnectDelay{1000};
// How often a connected daemon looks for rings the guest broke (Session::check_ring_errors).
constexpr std::chrono::milliseconds kRingCheckPeriod{100};
}

Daemon::Daemon(std::string name, std::shared_ptr<Backend> backend, Runtime& runtime)
    : name_(std::move(name)), backend_(std::move(backend)), runtime_(runtime), exit_event_(make_eventfd()) {
  runtime_.control().call([this] {
    runtime_.control().watch(exit_event_.get(), [this](std::uint32_t) {
      eventfd_drain(exit_event_.get());
      shutdown();
    });
  });
}

Daemon::~Daemon() {
  stop();
  wait();
}

void Daemon::start_server(const std::string& path, ListenOptions options) {
  runtime_.control().call([&] {
    if (listener_ || !client_path_.empty()) throw_error(name_, ": already started");
    listener_.emplace(UnixListener::listen(path, options));
    runtime_.control().watch(listener_->fd(), [this](std::uint32_t) { on_listener_ready(); });
    log_info(name_, ": listening on ", path);
  });
}

void Daemon::start_client(const std::string& path) {
  runtime_.control().call([&] {
    if (listener_ || !client_path_.empty()) throw_error(name_, ": already started");
    client_path_ = path;
    try_connect();
  });
}

void Daemon::wait() {
  std::unique_lock lock(stopped_mutex_);
  stopped_cv_.wait(lock, [this] { return stopped_; });
}

void Daemon::stop() { eventfd_signal(exit_event_.get()); }

void Daemon::with_session(const std::function<void(Session*)>& fn) {
  runtime_.control().call([&] { fn(session_.get()); });
}

std::vector<RingReport> Daemon::ring_reports() {
  std::vector<RingReport> reports;
  with_session([&](Session* session) {
    if (session == nullptr) return;
    for (std::size_t i = 0; i < session->num_rings(); ++i) {
      RingReport r;
      r.index = static_cast<std::uint16_t>(i);
      r.started = session->ring_started(i);
      r.enabled = session->ring_enabled(i);
      r.polled = session->ring_polled(i);
      if (ring_poller_[i] >= 0) {
        const Poller& poller = runtime_.poller(static_cast<std::size_t>(ring_poller_[i]));
        r.lcore = static_cast<int>(poller.lcore_id());
        r.lcore_node = poller.numa_node();
      }
      r.memory_node = ring_memory_node(static_cast<std::uint16_t>(i));
      r.attached = ring_poller_[i] != kDetached;
      // Counters are single-writer relaxed atomics: safe to read while the poller runs.
      // The layout is only changed here, on the control lcore.
      const VringState& ring = session->ring(i).unlocked();
      const RingStats& stats = ring.stats();
      r.error = ring.error();
      r.requests = stats.requests.load(std::memory_order_relaxed);
      r.batches = stats.batches.load(std::memory_order_relaxed);
      r.empty_polls = stats.empty_polls.load(std::memory_order_relaxed);
      r.busy_cycles = stats.busy_cycles.load(std::memory_order_relaxed);
      r.notifications = stats.notifications.load(std::memory_order_relaxed);
      r.errors = stats.error_total();
      reports.push_back(r);
    }
  });
  return reports;
}

// ---- RingHost: called by the session on the control lcore ----

void Daemon::watch_kick(std::uint16_t index, int fd) {
  runtime_.control().watch(fd, [this, index](std::uint32_t) {
    if (session_) session_->on_kick(index);
  });
}

void Daemon::unwatch_kick(std::uint16_t, int fd) { runtime_.control().unwatch(fd); }

void Daemon::set_lcore(unsigned lcore_id) {
  runtime_.control().call([&] {
    for (std::size_t p = 0; p < runtime_.num_pollers(); ++p) {
      if (runtime_.poller(p).lcore_id() == lcore_id) {
        explicit_lcore_ = lcore_id;
        last_placement_.assign(last_placement_.size(), LastPlacement{});  // a restart re-places
        return;
      }
    }
    throw_error(name_, ": lcore ", lcore_id, " is not a data lcore (data lcores: ",
                format_id_list(runtime_.cores().data_lcores()), ")");
  });
}

void Daemon::set_memory_node_probe(MemoryNodeProbe probe) {
  runtime_.control().call([&] { memory_node_probe_ = std::move(probe); });
}

int Daemon::ring_memory_node(std::uint16_t index) const {
  if (!session_) return -1;
  const std::shared_ptr<const MemoryTable> table = session_->memory().snapshot();
  if (table->num_regions() == 0) return -1;
  const MappedRegion* region = nullptr;
  if (const VringAddresses* addresses = session_->ring_addresses(index)) {
    region = table->region_of_uva(addresses->desc_user_addr);
  }
  if (region == nullptr) region = &table->region(0);  // the lowest guest-physical region
  return memory_node_probe_ ? memory_node_probe_(*region) : region->numa_node();
}

namespace {
std::string node_text(int node) { return node < 0 ? std::string("an unknown node") : str_cat("node ", node); }
}  // namespace

std::size_t Daemon::place(std::uint16_t index, int memory_node) const {
  const std::size_t n = runtime_.num_pollers();
  std::size_t chosen = n;
  const char* rule = "";
  auto plan = backend_->queues_per_lcore();
  for (std::size_t lcore = 0; lcore < plan.size() && chosen == n; ++lcore) {
    for (std::uint16_t q : plan[lcore]) {
      if (q == index) {
        chosen = lcore % n;
        rule = "; backend's plan";
        break;
      }
    }
  }
  if (chosen == n) {
    std::vector<LcoreLoad> loads;
    loads.reserve(n);
    for (std::size_t p = 0; p < n; ++p) {
      const Poller& poller = runtime_.poller(p);
      loads.push_back({poller.lcore_id(), poller.numa_node(), poller.num_rings()});
    }
    const Placement placement = place_ring(loads, memory_node, explicit_lcore_);
    chosen = placement.lcore;
    if (explicit_lcore_) rule = "; explicit lcore";
    if (placement.cross_node) {
      log_warning(name_, ": ring ", index, ": no data lcore on NUMA node ", memory_node,
                  " of its guest memory; polled cross-NUMA from lcore ", loads[chosen].lcore_id, " on ",
                  node_text(loads[chosen].node));
    }
  }
  const Poller& poller = runtime_.poller(chosen);
  log_info(name_, ": ring ", index, " -> lcore ", poller.lcore_id(), " (cpu ", format_id_list(poller.cpus()), ", ",
           node_text(poller.numa_node()), "; guest memory on ", node_text(memory_node), rule, ")");
  return chosen;
}

void Daemon::start_polling(std::uint16_t index, Vring& ring) {
  if (ring_poller_.size() <= index) ring_poller_.resize(index + 1u, kDetached);
  if (last_placement_.size() <= index) last_placement_.resize(index + 1u);
  if (!backend_->queue_polled(index)) {
    backend_->ring_attached(index, ring.unlocked());
    ring_poller_[index] = kAttachedUnpolled;
    return;
  }
  // A ring handed back after a pause (a reconfiguration) keeps its lcore: moving it would only
  // follow the load the pause itself removed.
  const int memory_node = ring_memory_node(index);
  LastPlacement& last = last_placement_[index];
  std::size_t p = 0;
  if (last.poller >= 0 && last.memory_node == memory_node) {
    p = static_cast<std::size_t>(last.poller);
  } else {
    p = place(index, memory_node);
  }
  // Refused before the backend sees the ring attached, so a failure leaves nothing to undo.
  if (runtime_.poller(p).num_rings() >= Poller::kMaxRings) {
    throw_error(name_, ": ring ", index, ": lcore ", runtime_.poller(p).lcore_id(), " already polls ",
                Poller::kMaxRings, " rings");
  }
  backend_->ring_attached(index, ring.unlocked());
  runtime_.poller(p).add({backend_.get(), index, &ring});
  ring_poller_[index] = static_cast<int>(p);
  last = LastPlacement{static_cast<int>(p), memory_node};
}

void Daemon::stop_polling(std::uint16_t index, Vring& ring) {
  if (index >= ring_poller_.size() || ring_poller_[index] == kDetached) return;
  backend_->ring_detached(index);
  if (ring_poller_[index] == kAttachedUnpolled) {
    // Another ring's handler may still hold the pointer it loaded before ring_detached().
    runtime_.qsbr().synchronize();
  } else {
    runtime_.poller(ring_poller_[index]).remove(&ring);  // synchronizes every data lcore
  }
  ring_poller_[index] = kDetached;
}

// ---- connection handling (control lcore) ----

void Daemon::on_listener_ready() {
  for (;;) {
    UniqueFd fd = listener_->accept();
    if (!fd) return;
    if (connection_) {
      // vhost-user is one frontend per socket: a second one is refused, the first keeps going.
      log_warning(name_, ": refusing a second frontend connection");
      continue;
    }
    attach(std::move(fd));
  }
}

void Daemon::attach(UniqueFd connection) {
  int flags = ::fcntl(connection.get(), F_GETFL);
  if (flags < 0 || ::fcntl(connection.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
    throw_errno(name_, ": making the connection non-blocking");
  }
  connection_ = std::move(connection);
  reader_ = MessageReader();
  ring_poller_.assign(backend_->num_queues(), kDetached);
  last_placement_.assign(backend_->num_queues(), LastPlacement{});
  RingHost& host = *this;  // private base: converted here, where it is accessible
  session_ = std::make_unique<Session>(name_, *backend_, host, runtime_.qsbr());
  runtime_.control().watch(connection_.get(), [this](std::uint32_t) { on_connection_ready(); });
  connections_.fetch_add(1, std::memory_order_acq_rel);
  connected_.store(true, std::memory_order_release);
  log_info(name_, ": frontend connected");
  ring_check_timer_ = runtime_.control().add_timer(kRingCheckPeriod, [this] { check_rings(); });
}

void Daemon::check_rings() {
  ring_check_timer_ = 0;
  if (!session_) return;
  session_->check_ring_errors();
  ring_check_timer_ = runtime_.control().add_timer(kRingCheckPeriod, [this] { check_rings(); });
}

void Daemon::on_connection_ready() {
  for (;;) {
    Message message;
    MessageReader::Status status;
    try {
      status = reader_.read(connection_.get(), message);
    } catch (const Error& error) {
      disconnect(error.what());
      return;
    }
    if (status == MessageReader::Status::again) return;
    if (status == MessageReader::Status::closed) {
      disconnect("frontend closed the connection");
      return;
    }
    try {
      std::optional<Message> reply = session_->handle(message);
      if (reply) send_message(connection_.get(), *reply);
    } catch (const Error& error) {
      disconnect(error.what());
      return;
    }
  }
}

void Daemon::disconnect(const std::string& reason) {
  if (!connection_) return;
  log_info(name_, ": disconnecting: ", reason);
  runtime_.control().unwatch(connection_.get());
  if (ring_check_timer_) runtime_.control().cancel_timer(ring_check_timer_);
  ring_check_timer_ = 0;
  session_.reset();  // stops rings, unmaps memory, closes ring fds, resets the backend
  connection_.reset();
  connected_.store(false, std::memory_order_release);
  if (!client_path_.empty() && !shut_down_) {
    reconnect_delay_ = std::chrono::milliseconds(10);
    reconnect_timer_ = runtime_.control().add_timer(reconnect_delay_, [this] { try_connect(); });
  }
}

void Daemon::try_connect() {
  reconnect_timer_ = 0;
  if (shut_down_ || connection_) return;
  try {
    attach(connect_unix(client_path_));
    return;
  } catch (const Error& error) {
    log_debug(name_, ": connecting to ", client_path_, ": ", error.what());
  }
  reconnect_timer_ = runtime_.control().add_timer(reconnect_delay_, [this] { try_connect(); });
  reconnect_delay_ = std::min(reconnect_delay_ * 2, kMaxReconnectDelay);
}

void Daemon::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  if (reconnect_timer_) runtime_.control().cancel_timer(reconnect_timer_);
  disconnect("daemon stopped");
  if (listener_) {
    runtime_.control().unwatch(listener_->fd());
    listener_.reset();
  }
  runtime_.control().unwatch(exit_event_.get());
  {
    std::lock_guard lock(stopped_mutex_);
    stopped_ = true;
  }
  stopped_cv_.notify_all();
}

}  // namespace vhostd
