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

// ||a - b|| / ||b|| over the whole tensor (both read as f64 on the host)
static double whole_rel_err(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector(), y = b.to_vector();
  double num = 0, den = 0;
  for (size_t i = 0; i < x.size(); ++i) num += (x[i] - y[i]) * (x[i] - y[i]), den += y[i] * y[i];
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

DeviceCheckResult device_check(const GradCheckCase& c, Device dev, DType dtype, double tol) {
  DeviceCheckResult res;
  std::ostringstream rep;
  auto compare = [&](const std::string& what, const Tensor& on_dev, const Tensor& on_cpu) {
    if (on_dev.shape() != on_cpu.shape()) {
      res.ok = false;
      rep << what << ": shape " << shape_str(on_dev.shape()) << " on the device, " << shape_str(on_cpu.shape()) << " on the CPU\n";
      return;
    }
    const double e = whole_rel_err(on_dev.to(Device::CPU), on_cpu);
    res.max_err = std::max(res.max_err, e);
    if (!(e <= tol)) res.ok = false, rep << what << ": relative error " << e << " > " << tol << "\n";
  };
  const std::vector<Tensor> made = c.make_inputs();
  auto copies = [&](Device d) {
    std::vector<Tensor> out;
    for (const Tensor& t : made) {
      if (!t.defined()) {
        out.push_back(t);
        continue;
      }
      Tensor x = (is_float(t.dtype()) ? t.to(dtype) : t).to(d).clone();  // a fresh leaf on each side
      if (t.requires_grad()) x.set_requires_grad(true);
      out.push_back(x);
    }
    return out;
  };
  std::vector<Tensor> on_cpu = copies(Device::CPU), on_dev = copies(dev);
  tape().clear();
  Tensor y_cpu = c.fn(on_cpu);
  DG_CHECK(y_cpu.requires_grad(), "device check '", c.label, "': output was not recorded on the tape");
  Tensor w = randn64(y_cpu.shape(), 12345, false).to(y_cpu.dtype());
  tape().backward(y_cpu, w);
  Tensor y_dev = c.fn(on_dev);
  if (y_dev.device() != dev) res.ok = false, rep << "output is on " << device_name(y_dev.device()) << "\n";
  tape().backward(y_dev, w.to(dev));
  compare("output", y_dev, y_cpu);
  for (size_t k = 0; k < made.size(); ++k) {
    if (!made[k].defined() || !made[k].requires_grad()) continue;
    if (!on_dev[k].grad().defined()) {
      res.ok = false, rep << "input " << k << ": no gradient on the device\n";
      continue;
    }
    compare("gradient of input " + std::to_string(k), on_dev[k].grad(), on_cpu[k].grad());
  }
  res.report = rep.str();
  return res;
}

}  // namespace dg
