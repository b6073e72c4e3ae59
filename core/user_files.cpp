#include "core/user_files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "core/error.h"

namespace dg {

namespace {

// "a directory", "a FIFO", ...: what a non-regular file is, for the message.
const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  if (S_ISSOCK(m)) return "a socket";
  return "not a plain file";
}

[[noreturn]] void refuse_errno(const std::string& path, const std::string& what, int e) {
  if (e == ENOENT || e == ENOTDIR) throw Error(str("cannot open ", what, " '", path, "': no such file"));
  throw Error(str("cannot open ", what, " '", path, "': ", std::strerror(e)));
}

void require_regular(const struct stat& st, const std::string& path, const std::string& what) {
  DG_CHECK(S_ISREG(st.st_mode), "cannot open ", what, " '", path, "': not a regular file (", kind_of(st.st_mode), ")");
}

}  // namespace

void check_regular_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) refuse_errno(path, what, errno);
  require_regular(st, path, what);
}

std::string read_regular_file(const std::string& path, const std::string& what, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) refuse_errno(path, what, errno);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) refuse_errno(path, what, errno);
  require_regular(st, path, what);
  const uint64_t size = uint64_t(st.st_size);
  DG_CHECK(size <= max_bytes, what, " '", path, "': ", size, " bytes, more than the ", max_bytes,
           " such a file may have");
  std::string bytes;
  try {
    bytes.resize(size);
  } catch (const std::bad_alloc&) {
    throw OutOfMemory(str("reading ", what, " '", path, "' (", size, " bytes)"));
  }
  uint64_t got = 0;
  while (got < size) {
    const ssize_t r = ::read(fd, bytes.data() + got, size_t(size - got));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw Error(str("cannot read ", what, " '", path, "': ", std::strerror(errno)));
    if (r == 0) break;
    got += uint64_t(r);
  }
  DG_CHECK(got == size, what, " '", path, "': read ", got, " of ", size, " bytes (file changed while reading?)");
  return bytes;
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  const std::string text = read_regular_file(path, what, uint64_t(256) << 20);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw Error(str(what, " '", path, "': invalid JSON at byte ", e.byte, ": ", printable(e.what())));
  }
}

std::string valid_utf8(const std::string& s) {
  const nlohmann::json j(s);
  return nlohmann::json::parse(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)).get<std::string>();
}

}  // namespace dg
