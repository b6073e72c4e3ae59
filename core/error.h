// Errors are exceptions whose messages say what was expected and what was found.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dg {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An allocation that failed; the message names what was being allocated (a tensor's shape and
// bytes, a library's work buffers). The CLI reports it as "out of memory" with its own exit code.
struct OutOfMemory : Error {
  using Error::Error;
};

// `s` with every byte that is not printable text escaped: control characters as \n, \t, \xNN,
// and bytes that are not part of valid UTF-8 as \xNN. Messages quote file contents (a JSON
// parser's "last read: ...", tensor names, dtype strings); this keeps them one readable line.
std::string printable(const std::string& s);

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& t, const R&... r) {
  os << t;
  cat(os, r...);
}
}  // namespace detail

// str("matmul: ", a, " vs ", b) -> one string; anything with operator<< works.
template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  detail::cat(os, a...);
  return os.str();
}

}  // namespace dg

// DG_CHECK(cond, parts...): throw dg::Error(parts...) unless cond holds.
#define DG_CHECK(cond, ...)                                  \
  do {                                                       \
    if (!(cond)) throw ::dg::Error(::dg::str(__VA_ARGS__));  \
  } while (0)
