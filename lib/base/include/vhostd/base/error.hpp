// vhostd base: the control-path error type.
//
// Control-path code reports failure by throwing vhostd::Error (or a subclass); the data path
// never throws and reports through counters and ring state instead. Messages name the
// offending request, ring and value so a log line alone explains a disconnect.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace vhostd {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds a message from streamable parts: str_cat("ring ", idx, " size ", n).
template <typename... Parts>
std::string str_cat(Parts&&... parts) {
  std::ostringstream out;
  (out << ... << std::forward<Parts>(parts));
  return out.str();
}

// Throws Error with the streamed parts as message; errno text is added by throw_errno.
template <typename... Parts>
[[noreturn]] void throw_error(Parts&&... parts) {
  throw Error(str_cat(std::forward<Parts>(parts)...));
}

// Like throw_error, appending ": <strerror(errno)>"; reads errno before formatting.
[[noreturn]] void throw_errno_message(const std::string& what);
template <typename... Parts>
[[noreturn]] void throw_errno(Parts&&... parts) {
  int saved = errno;
  std::string msg = str_cat(std::forward<Parts>(parts)...);
  errno = saved;
  throw_errno_message(msg);
}

}  // namespace vhostd
