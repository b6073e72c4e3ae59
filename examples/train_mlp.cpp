// Train a 2-layer MLP on a synthetic 2-class spiral with plain SGD: the smallest
// end-to-end use of the engine (tensors, ops, tape, backward).
#include <cmath>
#include <cstdio>

#include "autograd/ops.h"
#include "core/backend.h"

using namespace dg;

int main() {
  const int64_t N = 256, H = 32;
  std::vector<float> xs(static_cast<size_t>(N * 2));
  std::vector<int64_t> ys(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) {  // two interleaved spirals
    const int64_t c = i % 2;
    const double t = double(i / 2) / double(N / 2) * 3.0 + 0.3;
    xs[size_t(2 * i)] = float(t * std::cos(t * 2 + c * M_PI) / 3.3);
    xs[size_t(2 * i + 1)] = float(t * std::sin(t * 2 + c * M_PI) / 3.3);
    ys[size_t(i)] = c;
  }
  Tensor x = Tensor::from_vector(xs, {N, 2}), y = Tensor::from_vector(ys, {N});
  auto init = [](Shape s, uint64_t seed, double std) {
    Tensor t = Tensor::empty(s);
    backend(Device::CPU).random_normal(t, seed, 0, 0.0, std);
    return t.set_requires_grad(true);
  };
  Tensor W1 = init({H, 2}, 1, 1.0), b1 = Tensor::zeros({H}).set_requires_grad(true);
  Tensor W2 = init({H, H}, 2, 1.0 / std::sqrt(H)), b2 = Tensor::zeros({H}).set_requires_grad(true);
  Tensor W3 = init({2, H}, 3, 1.0 / std::sqrt(H)), b3 = Tensor::zeros({2}).set_requires_grad(true);
  std::vector<Tensor> params{W1, b1, W2, b2, W3, b3};
  double loss_v = 0;
  for (int step = 0; step <= 600; ++step) {
    Tensor h = tanh(linear(x, W1, b1));
    h = tanh(linear(h, W2, b2));
    Tensor logits = linear(h, W3, b3);
    Tensor loss = cross_entropy(logits, y);
    loss_v = loss.item();
    backward(loss);
    {
      NoGradGuard ng;
      for (Tensor& p : params) {  // p -= lr * grad
        p.copy_(sub(p, mul_scalar(p.grad(), 0.5)));
        p.zero_grad();
      }
    }
    if (step % 100 == 0) {
      NoGradGuard ng;
      std::vector<double> pred = argmax(logits, 1).to_vector();
      int correct = 0;
      for (int64_t i = 0; i < N; ++i) correct += int64_t(pred[size_t(i)]) == ys[size_t(i)];
      std::printf("step %4d  loss %.4f  train acc %.1f%%\n", step, loss_v, 100.0 * correct / N);
    }
  }
  return loss_v < 0.3 ? 0 : 1;
}
