// What keeps a run directory safe: one writer at a time (a lock held for the life of a run),
// a metrics log that a resume cuts back to the checkpointed position (so a finished file is
// the uninterrupted run's, row for row), and the checks a checkpoint must pass before a run
// continues from it (the same base, data and batch; finite values).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"
#include "nn/module.h"

namespace dg::train {

// RUN_DIR/run.lock, held with flock(2) for this object's life; the holder's pid is written
// inside. The kernel drops the lock when its process dies (kill -9 included), so a lock file
// left by a dead process is taken over (with a notice on stderr); a live holder makes the
// constructor throw, naming the directory and the holder's pid. On release the pid is
// cleared, so a lock file that still names a pid marks a run that did not end cleanly.
class RunDirLock {
 public:
  explicit RunDirLock(const std::string& dir);
  ~RunDirLock();
  RunDirLock(const RunDirLock&) = delete;
  RunDirLock& operator=(const RunDirLock&) = delete;
  static constexpr const char* kFile = "run.lock";

 private:
  int fd_ = -1;
};

// Where a run stands: the next step to run is `step` of `epoch` (both 0-based; step may equal
// the steps per epoch: every step ran, the epoch's summary and evaluation did not), and the
// running sums of that epoch so far (its summary row averages the whole epoch across resumes).
struct RunPosition {
  int64_t epoch = 0, step = 0;
  double loss_sum = 0;
  int64_t correct = 0, seen = 0;
  double seconds = 0;  // training time of the run up to here, across resumes
  int64_t global_step(int64_t steps_per_epoch) const { return epoch * steps_per_epoch + step; }
};

// One epoch's summary: its mean training loss and accuracy, and the validation accuracy
// (-1 when the epoch was not evaluated).
struct EpochResult {
  int64_t epoch;
  double train_loss, train_acc, val_acc;
};

// What a run logged so far, in memory: every step's loss and every epoch's summary (the
// curves are drawn from it, resumed parts included).
struct MetricsHistory {
  std::vector<double> step_losses;
  std::vector<EpochResult> epochs;
};

// metrics.csv: a header, then "step,epoch,global_step,loss,,lr," per step (losses with 9 digits) and
// "epoch,epoch,global_step,train_loss,train_acc,lr,val_acc" per epoch. Rows are buffered and
// written (and fsynced) by flush(), which the trainer calls before every checkpoint, so every
// row before a checkpoint's position is on disk when the checkpoint is. A write error (a full
// disk) throws, naming the file.
class MetricsLog {
 public:
  static constexpr const char* kHeader = "kind,epoch,step,loss,acc,lr,val_acc";
  // A fresh log (header only), or, with `resume_at`, the existing file cut back atomically to
  // the complete rows before that position (torn last lines and rows written after the
  // checkpoint are dropped; a note on stderr says how many). `steps_per_epoch` maps positions
  // to rows.
  MetricsLog(const std::string& path, const RunPosition* resume_at, int64_t steps_per_epoch);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;
  void add_step(int64_t epoch, int64_t global_step, double loss, double lr);  // epoch 1-based
  void add_epoch(const EpochResult& e, int64_t global_step, double lr);     // val_acc < 0: not evaluated
  void flush();
  // The rows kept at a resume and every row added since.
  const MetricsHistory& history() const { return history_; }

 private:
  std::string path_, pending_;
  MetricsHistory history_;
  void add(const std::string& row);  // without the newline
  int fd_ = -1;
};

// The rows of a metrics.csv text that come before `pos`: the header, step rows with a global
// step below the position's, epoch rows of epochs already summarised. `dropped` counts the
// lines left out (incomplete or after the position); `kept`, when given, receives the kept rows'
// values. Pure, for the tests.
std::string metrics_rows_before(const std::string& text, const RunPosition& pos, int64_t steps_per_epoch,
                                int64_t* dropped = nullptr, MetricsHistory* kept = nullptr);

// A 64-bit content hash of tensors (names, shapes and every value's bytes), hex: which
// weights a run started from. Cheap enough for any ViT (a multiply-xor per 8 bytes).
std::string weights_hash(const nn::NamedTensors& tensors);

// Throws when any element of the named tensors is NaN or Inf, naming `what` and the tensor.
void check_finite(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& what);

// Resume's check that a checkpoint belongs to the run that continues it: the run config the
// checkpoint was written with (`then`) against the one resuming (`now`), and the base weights'
// identity (names and shapes) and content hash recorded then against now's. Different base
// weights, model config, PEFT config, data spec or batch size throw, naming both sides;
// epochs may grow (to train longer) and the rest may change. Checkpoints from before these
// fields were recorded pass on what they have.
void check_resume_matches(const std::string& ckpt, const nlohmann::json& then, const nlohmann::json& now,
                          const std::string& identity_then, const std::string& identity_now,
                          const std::string& hash_then, const std::string& hash_now);

// When to write a checkpoint inside an epoch: every `every` global steps and/or once
// `minutes` have passed since the last one (0 turns either off).
bool checkpoint_due(int64_t global_step_done, int64_t every, double minutes, double seconds_since_last);

}  // namespace dg::train
