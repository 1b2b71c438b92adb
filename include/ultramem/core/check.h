// One error type for the whole library: what was expected, what was found, and where
// (a file, a JSON key path, a tensor name, or a source location for internal checks).
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace um {

class Error : public std::runtime_error {
 public:
  Error(std::string where, std::string expected, std::string found)
      : std::runtime_error(format(where, expected, found)),
        where_(std::move(where)), expected_(std::move(expected)), found_(std::move(found)) {}
  const std::string& where() const { return where_; }
  const std::string& expected() const { return expected_; }
  const std::string& found() const { return found_; }

 private:
  static std::string format(const std::string& w, const std::string& e, const std::string& f) {
    std::string s = w + ": expected " + e;
    if (!f.empty()) s += ", found " + f;
    return s;
  }
  std::string where_, expected_, found_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace um

#define UM_STRINGIFY2(x) #x
#define UM_STRINGIFY(x) UM_STRINGIFY2(x)
#define UM_HERE (std::string(__FILE__ ":" UM_STRINGIFY(__LINE__)))

// UM_CHECK(cond, "what was expected", found...) throws um::Error located at the call site.
#define UM_CHECK(cond, expected, ...)                                                       \
  do {                                                                                      \
    if (!(cond)) throw ::um::Error(UM_HERE, (expected), ::um::detail::concat(__VA_ARGS__)); \
  } while (0)
