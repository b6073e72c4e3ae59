#include "train/grad_reducer.h"

#include "core/backend.h"
#include "core/error.h"

namespace dg::train {

GradientReducer::GradientReducer(const nn::NamedTensors& params, Device dev, int64_t cap_bytes,
                                 const std::map<std::string, Tensor>& masks)
    : masks_(masks) {
  DG_CHECK(cap_bytes > 0, "gradient buckets: the cap must be positive, got ", cap_bytes, " bytes");
  std::vector<nn::NamedTensors> cut(1);
  int64_t bytes = 0;
  for (auto it = params.rbegin(); it != params.rend(); ++it) {  // reverse registration order
    const int64_t b = it->second.numel() * int64_t(sizeof(float));
    if (!cut.back().empty() && bytes + b > cap_bytes) cut.emplace_back(), bytes = 0;  // a larger tensor: alone
    cut.back().push_back(*it);
    bytes += b;
  }
  for (auto& part : cut) {
    if (part.empty()) continue;  // no trainable tensor at all
    for (size_t k = 0; k < part.size(); ++k) slot_of_[part[k].second.impl()] = {buckets_.size(), k};
    buckets_.push_back(std::make_unique<GradientBucket>(part, dev));
  }
}

int64_t GradientReducer::floats() const {
  int64_t n = 0;
  for (auto& b : buckets_) n += b->floats();
  return n;
}

void GradientReducer::begin(Comm& comm, double weight) {
  comm_ = &comm, weight_ = weight;
  filled_.assign(buckets_.size(), {});
  waiting_.clear();
  for (size_t i = 0; i < buckets_.size(); ++i) {
    filled_[i].assign(buckets_[i]->params().size(), false);
    waiting_.push_back(buckets_[i]->params().size());
  }
  requests_.clear();
  next_ = 0;
}

void GradientReducer::fill(const Slot& s) {
  GradientBucket& b = *buckets_[s.bucket];
  DG_CHECK(!filled_[s.bucket][s.index], "gradient buckets: '", b.params()[s.index].first,
           "' was reported final twice in one step");
  auto& [name, p] = b.params()[s.index];
  if (auto m = masks_.find(name); m != masks_.end() && p.grad().defined()) {
    Tensor g = p.grad();
    backend_of(g).binary(BinaryOp::Mul, g, m->second, g);
  }
  b.copy_in(s.index);
  filled_[s.bucket][s.index] = true;
  --waiting_[s.bucket];
}

void GradientReducer::start_ready() {
  for (; next_ < buckets_.size() && waiting_[next_] == 0; ++next_)
    requests_.push_back(buckets_[next_]->start(*comm_, weight_));
}

void GradientReducer::leaf_final(Tensor& leaf) {
  DG_CHECK(comm_, "gradient buckets: a gradient was reported before begin()");
  auto it = slot_of_.find(leaf.impl());
  if (it == slot_of_.end()) return;  // not trainable here
  fill(it->second);
  start_ready();
}

void GradientReducer::record_done() {
  for (auto& r : requests_) r->test();  // MPI progresses inside MPI calls; finished ones return at once
}

GradientReducer::Overlap GradientReducer::finish() {
  DG_CHECK(comm_, "gradient buckets: finish() without begin()");
  Overlap o{next_, 0};
  for (auto& r : requests_) o.done += r->test();
  for (size_t b = next_; b < buckets_.size(); ++b)
    for (size_t k = 0; k < filled_[b].size(); ++k)
      if (!filled_[b][k]) fill({b, k});
  start_ready();
  for (size_t b = 0; b < buckets_.size(); ++b) {
    requests_[b]->wait();
    buckets_[b]->restore();
  }
  requests_.clear();
  comm_ = nullptr;
  return o;
}

}  // namespace dg::train
