// Errors are exceptions whose messages say what was expected and what was found.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dg {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

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
