// vhostd runtime: the daemon object (see daemon.hpp).
#include "vhostd/runtime/daemon.hpp"

#include <fcntl.h>

#include "vhostd/base/log.hpp"

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
      r.lcore = ring_poller_[i] < 0 ? -1 : static_cast<int>(runtime_.poller(ring_poller_[i]).lcore_id());
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

std::size_t Daemon::poller_for(std::uint16_t index) const {
  const std::size_t n = runtime_.num_pollers();
  auto plan = backend_->queues_per_lcore();
  for (std::size_t lcore = 0; lcore < plan.size(); ++lcore) {
    for (std::uint16_t q : plan[lcore]) {
      if (q == index) return lcore % n;
    }
  }
  return runtime_.least_loaded_poller();
}

void Daemon::start_polling(std::uint16_t index, Vring& ring) {
  if (ring_poller_.size() <= index) ring_poller_.resize(index + 1u, kDetached);
  backend_->ring_attached(index, ring.unlocked());
  if (!backend_->queue_polled(index)) {
    ring_poller_[index] = kAttachedUnpolled;
    return;
  }
  std::size_t p = poller_for(index);
  runtime_.poller(p).add({backend_.get(), index, &ring});
  ring_poller_[index] = static_cast<int>(p);
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
