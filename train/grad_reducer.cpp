#include "train/grad_reducer.h"

#include <algorithm>
#include <sstream>

#include "core/backend.h"
#include "core/error.h"

namespace dg::train {

GradientReducer::GradientReducer(const nn::NamedTensors& params, Device dev, int64_t cap_bytes,
                                 const std::map<std::string, Tensor>& masks)
    : params_(params), dev_(dev), cap_bytes_(cap_bytes), masks_(masks) {
  DG_CHECK(cap_bytes > 0, "gradient buckets: the cap must be positive, got ", cap_bytes, " bytes");
  for (size_t i = 0; i < params_.size(); ++i) index_of_[params_[i].second.impl()] = i;
  std::vector<size_t> reverse(params_.size());
  for (size_t i = 0; i < reverse.size(); ++i) reverse[i] = reverse.size() - 1 - i;
  build(reverse);
}

void GradientReducer::build(const std::vector<size_t>& order) {
  buckets_.clear(), slot_of_.clear();  // the old buffers go before the new ones are made
  std::vector<nn::NamedTensors> cut(1);
  int64_t bytes = 0;
  for (size_t i : order) {
    const auto& named = params_[i];
    const int64_t b = named.second.numel() * int64_t(sizeof(float));
    if (!cut.back().empty() && bytes + b > cap_bytes_) cut.emplace_back(), bytes = 0;  // a larger tensor: alone
    cut.back().push_back(named);
    bytes += b;
  }
  for (auto& part : cut) {
    if (part.empty()) continue;  // no trainable tensor at all
    for (size_t k = 0; k < part.size(); ++k) slot_of_[part[k].second.impl()] = {buckets_.size(), k};
    buckets_.push_back(std::make_unique<GradientBucket>(part, dev_));
  }
  order_ = order;
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
  complete_at_.assign(buckets_.size(), 0), started_at_.assign(buckets_.size(), 0);
  reported_.clear();
  requests_.clear();
  next_ = 0, records_ = 0;
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
  if (--waiting_[s.bucket] == 0) complete_at_[s.bucket] = records_;
}

void GradientReducer::start_ready() {
  for (; next_ < buckets_.size() && waiting_[next_] == 0; ++next_) {
    started_at_[next_] = records_;
    requests_.push_back(buckets_[next_]->start(*comm_, weight_));
  }
}

void GradientReducer::leaf_final(Tensor& leaf) {
  DG_CHECK(comm_, "gradient buckets: a gradient was reported before begin()");
  auto it = slot_of_.find(leaf.impl());
  if (it == slot_of_.end()) return;  // not trainable here
  reported_.push_back(index_of_.at(leaf.impl()));
  fill(it->second);
  start_ready();
}

void GradientReducer::record_done() {
  ++records_;
  for (auto& r : requests_) r->test();  // MPI progresses inside MPI calls; finished ones return at once
}

GradientReducer::Overlap GradientReducer::finish() {
  DG_CHECK(comm_, "gradient buckets: finish() without begin()");
  Overlap o;
  for (auto& r : requests_) o.done += r->test();
  for (size_t b = next_; b < buckets_.size(); ++b)
    for (size_t k = 0; k < filled_[b].size(); ++k)
      if (!filled_[b][k]) fill({b, k});
  start_ready();  // (these start "at record records_": after the backward)
  // a bucket started while the tape retired record k (0-based) of records_ hid the rest behind it
  for (size_t b = 0; b < buckets_.size(); ++b) {
    o.started += started_at_[b] + 1 < records_;
    o.held += complete_at_[b] < started_at_[b];
    o.held_records += started_at_[b] - complete_at_[b];
  }
  for (size_t b = 0; b < buckets_.size(); ++b) {
    requests_[b]->wait();
    buckets_[b]->restore();
  }
  requests_.clear();
  comm_ = nullptr;
  return o;
}

std::vector<size_t> GradientReducer::observed_order() const {
  std::vector<size_t> order = reported_;
  std::vector<bool> seen(params_.size(), false);
  for (size_t i : order) seen[i] = true;
  for (size_t i = params_.size(); i-- > 0;)
    if (!seen[i]) order.push_back(i);
  return order;
}

void GradientReducer::rebuild(const std::vector<size_t>& order) {
  DG_CHECK(!comm_, "gradient buckets: rebuilt between begin() and finish()");
  std::vector<size_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  bool permutation = sorted.size() == params_.size();
  for (size_t i = 0; permutation && i < sorted.size(); ++i) permutation = sorted[i] == i;
  DG_CHECK(permutation, "gradient buckets: a new order must name each of the ", params_.size(),
           " trainable tensors once, got ", order.size(), " indices");
  build(order);
}

bool GradientReducer::rebuild_from_rank0(Comm& host) {
  std::string text;
  if (host.rank() == 0) {
    std::ostringstream os;
    for (size_t i : observed_order()) os << i << ' ';
    text = os.str();
  }
  host.broadcast(text, 0);
  std::vector<size_t> order;
  std::istringstream is(text);
  for (size_t i; is >> i;) order.push_back(i);
  DG_CHECK(order.size() == params_.size(), "gradient buckets: rank 0's order names ", order.size(),
           " trainable tensors, rank ", host.rank(), " has ", params_.size());
  if (order == order_) return false;
  rebuild(order);
  return true;
}

}  // namespace dg::train
