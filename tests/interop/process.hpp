// A small process harness for the interop tests: runs a program in its own process group with
// stdout+stderr captured to a file, optionally fed commands on a stdin pipe; waits with
// timeouts; signals; and never leaves anything running (the destructor kills the group, and a
// child dies with the test binary through PR_SET_PDEATHSIG, e.g. when meson's timeout fires).
// Plus the line parsing the tests need.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace vhostd::interop {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Process {
 public:
  struct Options {
    std::vector<std::string> argv;  // argv[0] is looked up in PATH when it has no '/'
    std::string log_path;           // stdout and stderr go here (truncated first)
    bool stdin_pipe = false;        // false: stdin is /dev/null
  };

  // Starts the process; on failure to fork or open the log, throws std::system_error. A failed
  // exec shows as exit status 127 with the reason in the log.
  explicit Process(Options options);
  ~Process();  // kill()
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return options_.log_path; }
  const std::string& name() const { return options_.argv.front(); }
  std::string command_line() const;

  // Whether it still runs (reaps it when it has exited).
  bool running();
  // The raw wait status once it has exited.
  std::optional<int> status() const { return status_; }
  // Waits for it to exit; the raw wait status, or nullopt on timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);
  // Sends `sig` to the process itself (not its group); false when it has already exited.
  bool signal(int sig);
  // SIGKILL to the whole process group, then reaps. Idempotent.
  void kill();
  // `sig` (SIGINT, SIGTERM), wait up to `timeout`, then kill(): the wait status, or nullopt
  // when it had to be killed.
  std::optional<int> terminate(int sig, std::chrono::milliseconds timeout);

  // Writes to the stdin pipe; false when there is none or the process closed it.
  bool write_stdin(std::string_view data);
  void close_stdin();

  // Everything it has written so far.
  std::string output() const;
  // Waits until `ready(output)` holds: true; false on timeout or when the process exits first
  // (ready is checked once more after the exit).
  bool wait_for(const std::function<bool(const std::string&)>& ready,
                std::chrono::milliseconds timeout);
  // Waits until `needle` appears at or after byte `from` of the output.
  bool wait_for_text(std::string_view needle, std::chrono::milliseconds timeout,
                     std::size_t from = 0);
  // The last `lines` lines of the output, for failure messages.
  std::string tail(std::size_t lines = 60) const;

 private:
  Options options_;
  pid_t pid_ = -1;
  int stdin_fd_ = -1;
  std::optional<int> status_;
};

// "exited 0", "killed by signal 9 (Killed)", ...
std::string describe_status(int status);
// Whether a wait status is a normal exit with code `code`.
bool exited_with(const std::optional<int>& status, int code);
// Whether a wait status is termination by `sig`.
bool killed_by(const std::optional<int>& status, int sig);

std::vector<std::string> split_lines(std::string_view text);
bool starts_with(std::string_view s, std::string_view prefix);
std::string trim(std::string_view s);

// The numeric fields of a line written as `key: N` or `key N` (counter lines of testpmd and of
// vhostd-fwd): "RX-packets: 5  RX-dropped: 0" -> {RX-packets: 5, RX-dropped: 0};
// "total port 0: rx-packets 123 drops 3" -> {port: 0, rx-packets: 123, drops: 3}.
// The first occurrence of a key wins.
std::map<std::string, std::uint64_t> parse_counters(std::string_view line);

// Searches PATH for an executable; empty when not found.
std::string find_in_path(const std::string& name);

// A private temporary directory (mkdtemp), removed with its contents by the destructor unless
// keep() was called.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "/tmp/vhostd-interop-");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }
  void keep() { keep_ = true; }

 private:
  std::string path_;
  bool keep_ = false;
};

}  // namespace vhostd::interop
