#include "autograd/gradcheck.h"

#include <cmath>
#include <sstream>

#include "autograd/tape.h"
#include "core/backend.h"

namespace dg {

Tensor randn64(const Shape& shape, uint64_t seed, bool requires_grad) {
  Tensor t = Tensor::empty(shape, DType::F64);
  backend(Device::CPU).random_normal(t, seed, 0, 0.0, 1.0);
  t.set_requires_grad(requires_grad);
  return t;
}

Tensor rand64(const Shape& shape, uint64_t seed, double lo, double hi, bool requires_grad) {
  Tensor t = Tensor::empty(shape, DType::F64);
  backend(Device::CPU).random_uniform(t, seed, 0, lo, hi);
  t.set_requires_grad(requires_grad);
  return t;
}

static double weighted_sum(const Tensor& out, const Tensor& w) {
  std::vector<double> o = out.to_vector(), wv = w.to_vector();
  double s = 0;
  for (size_t i = 0; i < o.size(); ++i) s += o[i] * wv[i];
  return s;
}

GradCheckResult gradcheck(const GradCheckCase& c, double h, double atol) {
  GradCheckResult res;
  std::vector<Tensor> in = c.make_inputs();
  for (const Tensor& t : in)
    DG_CHECK(!t.defined() || !is_float(t.dtype()) || t.dtype() == DType::F64, "gradcheck '", c.label,
             "': inputs must be f64, got ", t.desc());
  tape().clear();
  Tensor out = c.fn(in);
  DG_CHECK(out.requires_grad(), "gradcheck '", c.label, "': output was not recorded on the tape");
  Tensor w = randn64(out.shape(), 12345, false);
  tape().backward(out, w);

  std::ostringstream rep;
  int shown = 0;
  NoGradGuard ng;
  for (size_t k = 0; k < in.size(); ++k) {
    Tensor x = in[k];
    if (!x.defined() || !x.requires_grad()) continue;
    Tensor g = x.grad();
    if (!g.defined()) {
      res.ok = false;
      rep << "input " << k << ": no gradient was accumulated\n";
      continue;
    }
    std::vector<double> ga = g.to_vector();
    DG_CHECK(x.is_contiguous(), "gradcheck '", c.label, "': input ", k, " must be contiguous");
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double orig = p[i];
      p[i] = orig + h;
      const double lp = weighted_sum(c.fn(in), w);
      p[i] = orig - h;
      const double lm = weighted_sum(c.fn(in), w);
      p[i] = orig;
      const double num = (lp - lm) / (2 * h), ana = ga[size_t(i)];
      const double err = std::abs(num - ana), rel = err / std::max(std::abs(num), 1e-12);
      res.max_abs_err = std::max(res.max_abs_err, err);
      if (err > atol) res.max_rel_err = std::max(res.max_rel_err, rel);
      ++res.checked;
      if (err > atol + c.tol * std::abs(num)) {
        res.ok = false;
        if (shown++ < 5) rep << "input " << k << " element " << i << ": analytic " << ana << ", numeric " << num << "\n";
      }
    }
  }
  res.report = rep.str();
  return res;
}

}  // namespace dg
