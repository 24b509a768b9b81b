#include "process.hpp"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <thread>

namespace vhostd::interop {

namespace {

[[noreturn]] void throw_errno(const std::string& what) {
  throw std::system_error(errno, std::generic_category(), what);
}

// Writes a message to fd 2 from the forked child (async-signal-safe).
void child_write(const char* a, const char* b) {
  auto put = [](const char* s) {
    if (s == nullptr) return;
    ssize_t ignored = ::write(2, s, ::strlen(s));
    (void)ignored;
  };
  put(a);
  put(b);
  put("\n");
}

}  // namespace

Process::Process(Options options) : options_(std::move(options)) {
  if (options_.argv.empty()) throw std::invalid_argument("Process: empty argv");
  // A child that died with our end of its stdin open must not kill us with SIGPIPE.
  ::signal(SIGPIPE, SIG_IGN);

  const int log_fd = ::open(options_.log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) throw_errno("open " + options_.log_path);
  int in_pipe[2] = {-1, -1};
  if (options_.stdin_pipe) {
    if (::pipe2(in_pipe, O_CLOEXEC) != 0) {
      ::close(log_fd);
      throw_errno("pipe2");
    }
  }

  // Everything the child needs is prepared before fork: it only calls async-signal-safe
  // functions afterwards.
  std::vector<char*> argv;
  for (auto& arg : options_.argv) argv.push_back(arg.data());
  argv.push_back(nullptr);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    const int saved = errno;
    ::close(log_fd);
    if (in_pipe[0] >= 0) ::close(in_pipe[0]), ::close(in_pipe[1]);
    errno = saved;
    throw_errno("fork");
  }
  if (pid == 0) {
    ::setpgid(0, 0);
    // Dies with the test binary (the forking thread), whatever kills it.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    const int in_fd = options_.stdin_pipe ? in_pipe[0] : ::open("/dev/null", O_RDONLY);
    if (in_fd < 0 || ::dup2(in_fd, 0) < 0 || ::dup2(log_fd, 1) < 0 || ::dup2(log_fd, 2) < 0) {
      ::_exit(127);
    }
    // Dispositions that exec would carry over and the child must not inherit.
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    for (int sig : {SIGINT, SIGTERM, SIGPIPE, SIGQUIT, SIGHUP}) ::sigaction(sig, &dfl, nullptr);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execvp(argv[0], argv.data());
    child_write("exec failed: ", argv[0]);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also done by the child: whichever runs first
  pid_ = pid;
  ::close(log_fd);
  if (options_.stdin_pipe) {
    ::close(in_pipe[0]);
    stdin_fd_ = in_pipe[1];
  }
}

Process::~Process() {
  kill();
  close_stdin();
}

std::string Process::command_line() const {
  std::string line;
  for (const auto& arg : options_.argv) {
    if (!line.empty()) line += ' ';
    const bool quote = arg.find_first_of(" '\"(),") != std::string::npos;
    line += quote ? "'" + arg + "'" : arg;
  }
  return line;
}

bool Process::running() {
  if (status_ || pid_ < 0) return false;
  // Peek without reaping: while the leader is a zombie its pid (and the group id) cannot be
  // reused, so whatever it left behind in its group can still be killed safely.
  siginfo_t info {};
  if (::waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
      info.si_pid != pid_) {
    return true;
  }
  ::kill(-pid_, SIGKILL);
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  status_ = status;
  return false;
}

std::optional<int> Process::wait(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (running()) {
    if (Clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(5ms);
  }
  return status_;
}

bool Process::signal(int sig) {
  if (!running()) return false;
  return ::kill(pid_, sig) == 0;
}

void Process::kill() {
  if (pid_ < 0 || status_) return;
  ::kill(-pid_, SIGKILL);  // the group: the program and anything it started
  ::kill(pid_, SIGKILL);   // in case it left its group
  int status = 0;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  status_ = status;
}

std::optional<int> Process::terminate(int sig, std::chrono::milliseconds timeout) {
  signal(sig);
  auto status = wait(timeout);
  if (!status) kill();
  return status;
}

bool Process::write_stdin(std::string_view data) {
  if (stdin_fd_ < 0) return false;
  while (!data.empty()) {
    const ssize_t n = ::write(stdin_fd_, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data.remove_prefix(static_cast<std::size_t>(n));
  }
  return true;
}

void Process::close_stdin() {
  if (stdin_fd_ >= 0) ::close(stdin_fd_);
  stdin_fd_ = -1;
}

std::string Process::output() const {
  std::ifstream in(options_.log_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

bool Process::wait_for(const std::function<bool(const std::string&)>& ready,
                       std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const bool alive = running();
    if (ready(output())) return true;
    if (!alive || Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
}

bool Process::wait_for_text(std::string_view needle, std::chrono::milliseconds timeout,
                            std::size_t from) {
  return wait_for(
      [&](const std::string& out) {
        return out.size() > from && out.find(needle, from) != std::string::npos;
      },
      timeout);
}

std::string Process::tail(std::size_t lines) const {
  const auto all = split_lines(output());
  std::string text;
  const std::size_t first = all.size() > lines ? all.size() - lines : 0;
  for (std::size_t i = first; i < all.size(); ++i) text += "  | " + all[i] + "\n";
  return text;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return "exited " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" +
           ::strsignal(WTERMSIG(status)) + ")";
  }
  return "wait status " + std::to_string(status);
}

bool exited_with(const std::optional<int>& status, int code) {
  return status && WIFEXITED(*status) && WEXITSTATUS(*status) == code;
}

bool killed_by(const std::optional<int>& status, int sig) {
  return status && WIFSIGNALED(*status) && WTERMSIG(*status) == sig;
}

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  while (!text.empty()) {
    const auto end = text.find('\n');
    std::string_view line = text.substr(0, end);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.emplace_back(line);
    if (end == std::string_view::npos) break;
    text.remove_prefix(end + 1);
  }
  return lines;
}

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

std::string trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return std::string(s);
}

std::map<std::string, std::uint64_t> parse_counters(std::string_view line) {
  std::vector<std::string> words;
  std::istringstream in{std::string(line)};
  for (std::string word; in >> word;) words.push_back(word);
  std::map<std::string, std::uint64_t> fields;
  for (std::size_t i = 1; i < words.size(); ++i) {
    const std::string& value = words[i];
    if (value.empty() || value.size() > 20 ||
        value.find_first_not_of("0123456789") != std::string::npos) {
      continue;
    }
    std::string key = words[i - 1];
    if (!key.empty() && key.back() == ':') key.pop_back();
    if (key.empty() || std::isdigit(static_cast<unsigned char>(key.front()))) continue;
    fields.try_emplace(key, std::stoull(value));
  }
  return fields;
}

std::string find_in_path(const std::string& name) {
  if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
  const char* path = ::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (dir.empty()) continue;
    const std::string candidate = dir + "/" + name;
    struct stat st {};
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
  }
  return {};
}

TempDir::TempDir(const std::string& prefix) {
  std::string tmpl = prefix + "XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) throw_errno("mkdtemp " + tmpl);
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (keep_) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace vhostd::interop
