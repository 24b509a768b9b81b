// vhostd perf: the command line of the perf load generators (echo-load, idle-guests): the usage
// message on a bad command line (exit status 2) and bounded decimal numbers.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace vhostd::perf {

// One program's command line: its name, which starts every message, and its usage text.
struct Cli {
  const char* program;
  const char* usage_text;  // "usage: PROGRAM ...\n", printed under the error

  // Prints "PROGRAM: ERROR" and the usage text to stderr, and exits with status 2.
  [[noreturn]] void usage(const std::string& error) const {
    std::fprintf(stderr, "%s: %s\n%s", program, error.c_str(), usage_text);
    std::exit(2);
  }

  // VALUE, the argument of OPTION, as a decimal number in [MIN, MAX]; usage() when it is not.
  unsigned long number(const std::string& option, const std::string& value, unsigned long min,
                       unsigned long max) const {
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || errno != 0) usage(option + ": '" + value + "' is not a number");
    if (n < min || n > max) usage(option + ": " + value + " is not in [" + std::to_string(min) + ", " + std::to_string(max) + "]");
    return n;
  }
};

}  // namespace vhostd::perf
