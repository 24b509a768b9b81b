// vhostd base: logging for the control path.
//
// One line per event on stderr, with a level prefix. The data path does not log; it counts.
#pragma once

#include <string>

#include "vhostd/base/error.hpp"

namespace vhostd {

enum class LogLevel { debug = 0, info = 1, warning = 2, error = 3, none = 4 };

void set_log_level(LogLevel level) noexcept;
LogLevel log_level() noexcept;
void log_line(LogLevel level, const std::string& line);

template <typename... Parts>
void log_debug(Parts&&... parts) {
  if (log_level() <= LogLevel::debug) log_line(LogLevel::debug, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_info(Parts&&... parts) {
  if (log_level() <= LogLevel::info) log_line(LogLevel::info, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_warning(Parts&&... parts) {
  if (log_level() <= LogLevel::warning)
    log_line(LogLevel::warning, str_cat(std::forward<Parts>(parts)...));
}
template <typename... Parts>
void log_error(Parts&&... parts) {
  if (log_level() <= LogLevel::error) log_line(LogLevel::error, str_cat(std::forward<Parts>(parts)...));
}

}  // namespace vhostd
