#include "core/error.h"

namespace dg {

std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string o;
  o.reserve(s.size());
  auto escape = [&](unsigned char b) {
    const char e[4] = {'\\', 'x', hex[b >> 4], hex[b & 15]};
    o.append(e, 4);
  };
  for (size_t i = 0; i < s.size();) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b >= 0x20 && b < 0x7f) {
      o += char(b), ++i;
      continue;
    }
    if (b == '\n') o += "\\n", ++i;
    else if (b == '\t') o += "\\t", ++i;
    else if (b < 0x80) escape(b), ++i;
    else {
      // A well-formed UTF-8 sequence (no overlong forms, no surrogates, at most U+10FFFF) is kept.
      const size_t n = b >= 0xc2 && b <= 0xdf ? 2 : b >= 0xe0 && b <= 0xef ? 3 : b >= 0xf0 && b <= 0xf4 ? 4 : 0;
      bool ok = n > 0 && i + n <= s.size();
      for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(s[i + k]) & 0xc0) == 0x80;
      if (ok && n >= 3) {
        const auto b1 = static_cast<unsigned char>(s[i + 1]);
        ok = !(b == 0xe0 && b1 < 0xa0) && !(b == 0xed && b1 >= 0xa0) && !(b == 0xf0 && b1 < 0x90) &&
             !(b == 0xf4 && b1 >= 0x90);
      }
      if (ok) o.append(s, i, n), i += n;
      else escape(b), ++i;
    }
  }
  return o;
}

}  // namespace dg
