// CUDA: device context (stream, cuBLAS), the caching allocator, copies and fills, and the
// backend's registration (only when a GPU is present).
#include <cuda_bf16.h>

#include <map>
#include <mutex>
#include <vector>

#include "cuda/cuda_api.h"
#include "cuda/cuda_backend.h"

namespace dg::cuda {

namespace {
struct Context {
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  bool tf32 = false;
  // caching allocator: blocks rounded up to 512 B (small) or 2 MiB (large), kept per size
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;
  size_t in_use = 0, peak = 0, cached = 0;
};
Context& ctx() {
  static Context c;
  return c;
}
size_t round_size(size_t n) {
  const size_t q = n < (1u << 20) ? 512 : (2u << 20);
  return (n + q - 1) / q * q;
}
}  // namespace

cudaStream_t stream() {
  Context& c = ctx();
  if (!c.stream) DG_CUDA(cudaStreamCreateWithFlags(&c.stream, cudaStreamNonBlocking));
  return c.stream;
}
cublasHandle_t cublas() {
  Context& c = ctx();
  if (!c.blas) {
    DG_CUBLAS(cublasCreate(&c.blas));
    DG_CUBLAS(cublasSetStream(c.blas, stream()));
  }
  return c.blas;
}
bool tf32_enabled() { return ctx().tf32; }

Strided strided_of(const Tensor& t, const Shape& shape) {
  Strided s;
  strided_joint(shape, {{&t, &s}});
  return s;
}

void strided_joint(const Shape& shape, std::initializer_list<std::pair<const Tensor*, Strided*>> ts) {
  std::vector<Shape> st;  // each tensor's strides over `shape`
  for (auto& [t, s] : ts) st.push_back(t->shape() == shape ? t->strides() : view::expand(*t, shape).strides());
  Shape sh;                          // the merged shape
  std::vector<Shape> ms(st.size());  // and strides
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool merge = !sh.empty();
    for (size_t k = 0; k < st.size() && merge; ++k) merge = ms[k].back() == st[k][d] * shape[d];
    if (merge) {
      sh.back() *= shape[d];
      for (size_t k = 0; k < st.size(); ++k) ms[k].back() = st[k][d];
    } else {
      sh.push_back(shape[d]);
      for (size_t k = 0; k < st.size(); ++k) ms[k].push_back(st[k][d]);
    }
  }
  if (sh.empty()) {  // one element
    sh.push_back(1);
    for (auto& m : ms) m.push_back(0);
  }
  DG_CHECK(sh.size() <= 8, "cuda: tensors of more than 8 non-contiguous dims are not supported (shape ",
           shape_str(shape), ")");
  size_t k = 0;
  for (auto& [t, s] : ts) {
    s->nd = int(sh.size());
    for (int i = 0; i < s->nd; ++i) s->shape[i] = sh[size_t(i)], s->stride[i] = ms[k][size_t(i)];
    ++k;
  }
}

void* CudaBackend::alloc(size_t nbytes) {
  Context& c = ctx();
  const size_t n = round_size(nbytes);
  {
    std::lock_guard<std::mutex> lk(c.mu);
    auto it = c.free_blocks.find(n);
    if (it != c.free_blocks.end() && !it->second.empty()) {
      void* p = it->second.back();
      it->second.pop_back();
      c.cached -= n;
      c.in_use += n;
      c.peak = std::max(c.peak, c.in_use);
      return p;
    }
  }
  void* p = nullptr;
  if (cudaMalloc(&p, n) != cudaSuccess) {
    (void)cudaGetLastError();
    // out of memory: give the cache back to the driver and try once more
    std::lock_guard<std::mutex> lk(c.mu);
    DG_CUDA(cudaStreamSynchronize(stream()));
    for (auto& [sz, v] : c.free_blocks)
      for (void* q : v) cudaFree(q);
    c.free_blocks.clear();
    c.cached = 0;
    DG_CUDA(cudaMalloc(&p, n));
  }
  std::lock_guard<std::mutex> lk(c.mu);
  c.in_use += n;
  c.peak = std::max(c.peak, c.in_use);
  return p;
}

void CudaBackend::free(void* p, size_t nbytes) {
  // Blocks go back to the cache, never to the driver: the stream orders later reuse after
  // any kernel still reading them.
  Context& c = ctx();
  const size_t n = round_size(nbytes);
  std::lock_guard<std::mutex> lk(c.mu);
  c.free_blocks[n].push_back(p);
  c.in_use -= n;
  c.cached += n;
}

void CudaBackend::synchronize() { DG_CUDA(cudaStreamSynchronize(stream())); }

// ---- copies ----
// Element conversion; bf16 goes through f32 (round to nearest even, as the CPU's f32_to_bf16).
template <class D, class S>
__device__ D convert(S v) {
  return D(v);
}
template <>
__device__ __nv_bfloat16 convert<__nv_bfloat16, float>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ float convert<float, __nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __nv_bfloat16 convert<__nv_bfloat16, __nv_bfloat16>(__nv_bfloat16 v) {
  return v;
}

template <class S, class D>
__global__ void copy_kernel(const S* src, Strided ss, D* dst, Strided ds, long long n) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, so = 0, dof = 0;
    for (int d = ss.nd - 1; d >= 0; --d) {
      const long long k = r % ss.shape[d];
      r /= ss.shape[d];
      so += k * ss.stride[d];
      dof += k * ds.stride[d];
    }
    dst[dof] = convert<D>(src[so]);
  }
}

template <class S, class D>
static void launch_copy(const Tensor& src, const Tensor& dst) {
  const long long n = dst.numel();
  if (!n) return;
  Strided ss, ds;
  strided_joint(dst.shape(), {{&src, &ss}, {&dst, &ds}});
  copy_kernel<S, D><<<blocks_for(n), 256, 0, stream()>>>(static_cast<const S*>(src.raw()), ss, static_cast<D*>(dst.raw()),
                                                         ds, n);
  DG_LAUNCH_CHECK();
}

// device -> device, any strides, dtype conversion among f32/f64/i64/i32, and f32 <-> bf16
static void device_copy(const Tensor& src, const Tensor& dst) {
  if (src.dtype() == dst.dtype() && src.is_contiguous() && dst.is_contiguous()) {
    DG_CUDA(cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream()));
    return;
  }
#define DG_PAIR(ST, SE, DT, DE) \
  if (src.dtype() == SE && dst.dtype() == DE) return launch_copy<ST, DT>(src, dst);
#define DG_ROW(ST, SE)                                                                    \
  DG_PAIR(ST, SE, float, DType::F32) DG_PAIR(ST, SE, double, DType::F64)                  \
  DG_PAIR(ST, SE, long long, DType::I64) DG_PAIR(ST, SE, int, DType::I32)
  DG_ROW(float, DType::F32)
  DG_ROW(double, DType::F64)
  DG_ROW(long long, DType::I64)
  DG_ROW(int, DType::I32)
  DG_PAIR(float, DType::F32, __nv_bfloat16, DType::BF16)  // mixed precision (autograd/autocast.h)
  DG_PAIR(__nv_bfloat16, DType::BF16, float, DType::F32)
  DG_PAIR(__nv_bfloat16, DType::BF16, __nv_bfloat16, DType::BF16)
#undef DG_ROW
#undef DG_PAIR
  throw Error(str("cuda copy: ", dtype_name(src.dtype()), " -> ", dtype_name(dst.dtype()), " is not supported"));
}

void CudaBackend::copy(const Tensor& src, const Tensor& dst) {
  DG_CHECK(src.shape() == dst.shape(), "cuda copy: shapes ", shape_str(src.shape()), " vs ", shape_str(dst.shape()));
  const bool sd = src.device() == Device::CUDA, dd = dst.device() == Device::CUDA;
  if (sd && dd) return device_copy(src, dst);
  if (!sd && dd) {  // host -> device: stage contiguous in dst's dtype on the host, then strided on device
    Tensor h = src.to(dst.dtype()).contiguous();
    Tensor d = dst.is_contiguous() ? dst : Tensor::empty(dst.shape(), dst.dtype(), Device::CUDA);
    DG_CUDA(cudaMemcpyAsync(d.raw(), h.raw(), h.nbytes(), cudaMemcpyHostToDevice, stream()));
    DG_CUDA(cudaStreamSynchronize(stream()));  // h is freed when we return
    if (!dst.is_contiguous()) device_copy(d, dst);
    return;
  }
  if (sd && !dd) {  // device -> host
    Tensor d = src.is_contiguous() ? src : src.contiguous();
    Tensor h = Tensor::empty(src.shape(), src.dtype(), Device::CPU);
    DG_CUDA(cudaMemcpyAsync(h.raw(), d.raw(), d.nbytes(), cudaMemcpyDeviceToHost, stream()));
    DG_CUDA(cudaStreamSynchronize(stream()));
    backend(Device::CPU).copy(h, dst);
    return;
  }
  backend(Device::CPU).copy(src, dst);
}

template <class T>
__global__ void fill_kernel(T* dst, Strided ds, long long n, T v) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
    long long r = i, o = 0;
    for (int d = ds.nd - 1; d >= 0; --d) {
      o += (r % ds.shape[d]) * ds.stride[d];
      r /= ds.shape[d];
    }
    dst[o] = v;
  }
}

void CudaBackend::fill(const Tensor& dst, double v) {
  const long long n = dst.numel();
  if (!n) return;
  Strided s = strided_of(dst, dst.shape());
  switch (dst.dtype()) {
    case DType::F32: fill_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<float*>(dst.raw()), s, n, float(v)); break;
    case DType::F64: fill_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<double*>(dst.raw()), s, n, v); break;
    case DType::I64: fill_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<long long*>(dst.raw()), s, n, (long long)v); break;
    case DType::I32: fill_kernel<<<blocks_for(n), 256, 0, stream()>>>(static_cast<int*>(dst.raw()), s, n, int(v)); break;
    default: throw Error(str("cuda fill: dtype ", dtype_name(dst.dtype()), " is not supported"));
  }
  DG_LAUNCH_CHECK();
}

// ---- public API and registration ----
bool device_present() { return backend_available(Device::CUDA); }
size_t bytes_in_use() { return ctx().in_use; }
size_t peak_bytes() { return ctx().peak; }
size_t bytes_cached() { return ctx().cached; }
void reset_peak() { ctx().peak = ctx().in_use; }
void set_tf32(bool on) {
  ctx().tf32 = on;
  if (device_present()) DG_CUBLAS(cublasSetMathMode(cublas(), on ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
}
const char* device_name() {
  static char name[256] = "none";
  static bool done = false;
  if (!done && device_present()) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) snprintf(name, sizeof name, "%s", p.name);
    done = true;
  }
  return name;
}

namespace {
struct Registrar {
  Registrar() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      (void)cudaGetLastError();
      return;  // no GPU: backend(Device::CUDA) keeps saying so
    }
    static CudaBackend b;
    register_backend(Device::CUDA, &b);
  }
} registrar;
}  // namespace

}  // namespace dg::cuda
