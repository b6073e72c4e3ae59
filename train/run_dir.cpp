#include "train/run_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/backend.h"
#include "core/error.h"
#include "core/safetensors.h"

namespace dg::train {

using nlohmann::json;

namespace {

std::string read_fd(int fd) {
  std::string s;
  char buf[256];
  ssize_t n;
  off_t at = 0;
  while ((n = ::pread(fd, buf, sizeof buf, at)) > 0) s.append(buf, size_t(n)), at += n;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

void write_all(int fd, const std::string& bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t w = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (w < 0 && errno == EINTR) continue;
    DG_CHECK(w > 0, "cannot write '", path, "': ", std::strerror(errno));
    done += size_t(w);
  }
}

bool parse_int(const std::string& s, int64_t& v) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  v = std::strtoll(s.c_str(), &end, 10);
  return errno == 0 && end == s.c_str() + s.size();
}

}  // namespace

// ---- the lock --------------------------------------------------------------------------

RunDirLock::RunDirLock(const std::string& dir) {
  const std::string path = dir + "/" + kFile;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  DG_CHECK(fd_ >= 0, "cannot open the lock file '", path, "': ", std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int e = errno;
    const std::string holder = read_fd(fd_);
    ::close(fd_);
    fd_ = -1;
    DG_CHECK(e != EWOULDBLOCK, "run dir '", dir, "' is in use by another run (process ",
             holder.empty() ? std::string("?") : holder, ", lock file '", path,
             "'): two runs must not write one run dir; wait for that run to end or choose another --out");
    throw Error(str("cannot lock '", path, "': ", std::strerror(e)));
  }
  const std::string previous = read_fd(fd_);
  if (!previous.empty())
    std::fprintf(stderr, "deltagrad: taking over the lock of '%s' from process %s, which no longer holds it "
                 "(that run did not end cleanly)\n", dir.c_str(), previous.c_str());
  const std::string me = std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, me.data(), me.size(), 0) != ssize_t(me.size())) {
    const int e = errno;
    ::close(fd_);
    fd_ = -1;
    throw Error(str("cannot write the lock file '", path, "': ", std::strerror(e)));
  }
}

RunDirLock::~RunDirLock() {
  if (fd_ < 0) return;
  [[maybe_unused]] int r = ::ftruncate(fd_, 0);  // a clean end: no pid left behind
  ::close(fd_);                                  // releases the flock
}

// ---- metrics.csv -----------------------------------------------------------------------

std::string metrics_rows_before(const std::string& text, const RunPosition& pos, int64_t spe, int64_t* dropped,
                                MetricsHistory* kept) {
  std::string out = std::string(MetricsLog::kHeader) + "\n";
  int64_t n_dropped = 0, next_step = 0, next_epoch = 1;
  size_t at = 0;
  bool first = true;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    if (nl == std::string::npos) {  // a torn last line (the process died while writing it)
      ++n_dropped;
      break;
    }
    const std::string line = text.substr(at, nl - at);
    at = nl + 1;
    if (first && line == MetricsLog::kHeader) {
      first = false;
      continue;
    }
    first = false;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (!line.empty() && line.back() == ',') f.push_back("");
    // a row is kept when it is before the position and next in sequence (a duplicate or a
    // row out of order cannot come from one run, and is dropped with the rest)
    int64_t epoch1 = 0, gstep = 0;
    const bool parsed = f.size() == 7 && parse_int(f[1], epoch1) && parse_int(f[2], gstep);
    const bool step_ok = parsed && f[0] == "step" && gstep < pos.global_step(spe) && gstep == next_step;
    const bool epoch_ok = parsed && f[0] == "epoch" && epoch1 <= pos.epoch && epoch1 == next_epoch;
    if (step_ok) ++next_step;
    if (epoch_ok) ++next_epoch;
    if (step_ok || epoch_ok) out += line + "\n";
    else ++n_dropped;
    try {
      if (kept && step_ok) kept->step_losses.push_back(std::stod(f[3]));
      if (kept && epoch_ok)
        kept->epochs.push_back({epoch1, std::stod(f[3]), std::stod(f[4]), f[6].empty() ? -1.0 : std::stod(f[6])});
    } catch (const std::exception&) {
      throw Error(str("metrics.csv: row '", line, "' has a value that is not a number"));
    }
  }
  if (dropped) *dropped = n_dropped;
  return out;
}

MetricsLog::MetricsLog(const std::string& path, const RunPosition* resume_at, int64_t spe) : path_(path) {
  std::string start = std::string(kHeader) + "\n";
  if (resume_at) {
    std::ifstream in(path, std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    int64_t dropped = 0;
    start = metrics_rows_before(text, *resume_at, spe, &dropped, &history_);
    if (dropped > 0)
      std::fprintf(stderr, "deltagrad: '%s': %lld row(s) after the checkpoint or incomplete removed\n", path.c_str(),
                   (long long)dropped);
  }
  write_file_atomic(path, start);
  fd_ = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  DG_CHECK(fd_ >= 0, "cannot open '", path, "' for appending: ", std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  try {
    flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deltagrad: %s\n", e.what());
  }
  if (fd_ >= 0) ::close(fd_);
}

void MetricsLog::add(const std::string& row) {
  pending_ += row;
  pending_ += '\n';
  if (pending_.size() > (1u << 16)) {  // bound the buffer in long epochs; durability comes with flush()
    write_all(fd_, pending_, path_);
    pending_.clear();
  }
}

// A loss with 9 significant digits: a float's value, so two runs' logs compare to 1e-7, not
// to the 6 digits of a stream's default.
static std::string loss_text(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

void MetricsLog::add_step(int64_t epoch, int64_t gstep, double loss, double lr) {
  add(str("step,", epoch, ",", gstep, ",", loss_text(loss), ",,", lr, ","));
  history_.step_losses.push_back(loss);
}

void MetricsLog::add_epoch(const EpochResult& e, int64_t gstep, double lr) {
  add(str("epoch,", e.epoch, ",", gstep, ",", loss_text(e.train_loss), ",", e.train_acc, ",", lr, ",",
          e.val_acc >= 0 ? str(e.val_acc) : std::string()));  // empty: not evaluated
  history_.epochs.push_back(e);
}

void MetricsLog::flush() {
  if (fd_ < 0) return;
  write_all(fd_, pending_, path_);
  pending_.clear();
  DG_CHECK(::fsync(fd_) == 0, "cannot write '", path_, "' to disk: ", std::strerror(errno));
}

// ---- checkpoint checks -----------------------------------------------------------------

std::string weights_hash(const nn::NamedTensors& tensors) {
  uint64_t h = 0x9e3779b97f4a7c15ull;
  auto mix = [&](uint64_t w) {
    h ^= w;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
  };
  for (auto& [name, t0] : tensors) {
    for (unsigned char c : name + shape_str(t0.shape())) mix(c);
    const Tensor t = t0.to(Device::CPU).contiguous();
    const unsigned char* p = static_cast<const unsigned char*>(t.raw());
    const size_t n = t.nbytes();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      mix(w);
    }
    for (; i < n; ++i) mix(p[i]);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

void check_finite(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& what) {
  for (auto& [n, t] : tensors) {
    if (t.dtype() != DType::F32 && t.dtype() != DType::F64) continue;
    // NaN or Inf anywhere makes the sum of squares non-finite (f32 values square well inside f64)
    DG_CHECK(std::isfinite(backend_of(t).sum_squares(t)), what, ": '", n, "' contains NaN or Inf");
  }
}

void check_resume_matches(const std::string& ckpt, const json& then, const json& now, const std::string& identity_then,
                          const std::string& identity_now, const std::string& hash_then, const std::string& hash_now) {
  auto base_name = [](const json& rc) {
    const std::string m = rc.value("model", "");
    return m.empty() ? str("a random initialisation (seed ", rc.value("seed", uint64_t(0)), ")") : "'" + m + "'";
  };
  const std::string head = str("cannot resume from '", ckpt, "': ");
  DG_CHECK(identity_then.empty() || identity_then == identity_now, head, "it was trained on base ", base_name(then),
           " (tensor names and shapes ", identity_then, "), the run now builds base ", base_name(now), " (",
           identity_now, ")");
  if (!hash_then.empty())
    DG_CHECK(hash_then == hash_now, head, "it was trained on the base weights ", base_name(then), " (content hash ",
             hash_then, "), the run now starts from ", base_name(now), " (content hash ", hash_now,
             "): resume onto the same weights, or start a new run");
  else
    DG_CHECK(then.value("model", "") == now.value("model", ""), head, "it was trained on base ", base_name(then),
             ", the run now names ", base_name(now));
  for (const char* key : {"model_config", "peft", "data", "batch"}) {
    if (!then.contains(key)) continue;
    DG_CHECK(now.contains(key) && then[key] == now[key], head, "it was trained with ", key, " ", then[key].dump(),
             ", the run now has ", key, " ", now.contains(key) ? now[key].dump() : std::string("(none)"));
  }
}

bool checkpoint_due(int64_t done, int64_t every, double minutes, double since_last) {
  return (every > 0 && done % every == 0) || (minutes > 0 && since_last >= minutes * 60.0);
}

}  // namespace dg::train
