// phase_rotate on the CPU: a table-based row path for theta broadcast over leading dims (below),
// else one TensorIterator pass (any strides, broadcasting), parallel through at::parallel_for.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/TensorIterator.h>
#include <ATen/native/cpu/Loops.h>
#include <c10/util/complex.h>
#include <cmath>
#include <vector>
#include <torch/library.h>

#include "../shape_str.h"
#include "common.h"

namespace fft_tensor {

void check_phase_rotate_args(const at::Tensor& z, const at::Tensor& theta, const char* op) {
  TORCH_CHECK(z.scalar_type() == at::kComplexFloat || z.scalar_type() == at::kComplexDouble, op,
              ": expected z to be complex64 or complex128, got ", z.scalar_type());
  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble, op,
              ": expected theta to be float32 or float64 (a real angle), got ", theta.scalar_type());
  TORCH_CHECK(theta.scalar_type() == c10::toRealValueType(z.scalar_type()), op,
              ": expected theta's dtype to match z's precision (", c10::toRealValueType(z.scalar_type()),
              " for z of ", z.scalar_type(), "), got ", theta.scalar_type());
  TORCH_CHECK(z.device() == theta.device(), op, ": expected z and theta on the same device, got z on ",
              z.device(), " and theta on ", theta.device());
  TORCH_CHECK(theta.dim() <= z.dim(), op, ": expected theta broadcastable to z.shape ", shape_str(z.sizes()),
              ", got theta.shape ", shape_str(theta.sizes()));
  auto zs = z.sizes();
  auto ts = theta.sizes();
  const int64_t off = z.dim() - theta.dim();
  for (int64_t i = 0; i < theta.dim(); ++i) {
    TORCH_CHECK(ts[i] == 1 || ts[i] == zs[off + i], op, ": expected theta broadcastable to z.shape ", shape_str(zs),
                ", got theta.shape ", shape_str(ts),
                " (dimension " + std::to_string(off + i) + ": " + std::to_string(ts[i]) + " vs " +
                    std::to_string(zs[off + i]) + ")");
  }
}

void check_same_shape_grad(const at::Tensor& grad, const at::Tensor& z) {
  TORCH_CHECK(grad.sizes() == z.sizes(), "phase_rotate_backward: expected grad of shape ", shape_str(z.sizes()), ", got ",
              shape_str(grad.sizes()));
  TORCH_CHECK(grad.scalar_type() == z.scalar_type(), "phase_rotate_backward: expected grad of dtype ",
              z.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == z.device(), "phase_rotate_backward: expected grad on ", z.device(), ", got ",
              grad.device());
}

int64_t broadcast_columns(const at::Tensor& z, const at::Tensor& theta) {
  if (!z.is_contiguous() || !theta.is_contiguous() || z.numel() == 0) return 0;
  int64_t first = 0;  // theta's leading size-1 dims are broadcast; the rest must be z's trailing dims
  while (first < theta.dim() && theta.size(first) == 1) ++first;
  const int64_t tail = theta.dim() - first;
  for (int64_t i = 0; i < tail; ++i)
    if (theta.size(first + i) != z.size(z.dim() - tail + i)) return 0;
  return theta.numel();
}

at::TensorIterator rotate_iter(const at::Tensor& out, const at::Tensor& z, const at::Tensor& theta) {
  return at::TensorIteratorConfig()
      .add_output(out)
      .add_const_input(z)
      .add_const_input(theta)
      .check_all_same_dtype(false)
      .resize_outputs(false)
      .build();
}

at::TensorIterator rotate_backward_iter(const at::Tensor& grad_z, const at::Tensor& g_theta, const at::Tensor& grad,
                                        const at::Tensor& z, const at::Tensor& theta) {
  return at::TensorIteratorConfig()
      .add_output(grad_z)
      .add_output(g_theta)
      .add_const_input(grad)
      .add_const_input(z)
      .add_const_input(theta)
      .check_all_same_dtype(false)
      .resize_outputs(false)
      .build();
}

at::Tensor sum_to_theta(const at::Tensor& g, const at::Tensor& theta) {
  std::vector<int64_t> reduce;
  const int64_t off = g.dim() - theta.dim();
  for (int64_t i = 0; i < g.dim(); ++i) {
    if (i < off || theta.size(i - off) == 1) reduce.push_back(i);
  }
  at::Tensor r = reduce.empty() ? g : g.sum(reduce, /*keepdim=*/true);
  return r.reshape(theta.sizes()).contiguous();
}

namespace {

// The CPU row path: theta is one row of P angles broadcast over R >= 2 rows of z (a learned
// per-channel angle shared by the batch). cos and sin are computed once per column, then each row
// is a complex multiply by that table: a plain loop over contiguous arrays, which the compiler
// vectorises. Used from 16 columns and 2 rows up; everything else goes through TensorIterator.
constexpr int64_t kMinRowColumns = 16;

int64_t cpu_row_columns(const at::Tensor& z, const at::Tensor& theta) {
  const int64_t P = broadcast_columns(z, theta);
  return (P >= kMinRowColumns && z.numel() >= 2 * P) ? P : 0;
}

template <typename scalar_t>
void cos_sin_table(const scalar_t* theta, int64_t P, std::vector<scalar_t>& c, std::vector<scalar_t>& s) {
  c.resize(P);
  s.resize(P);
  at::parallel_for(0, P, 1 << 12, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      c[j] = std::cos(theta[j]);
      s[j] = std::sin(theta[j]);
    }
  });
}

template <typename scalar_t>
void rotate_rows_cpu(const at::Tensor& z, const at::Tensor& theta, const at::Tensor& out, int64_t P) {
  std::vector<scalar_t> cs, sn;
  cos_sin_table(theta.const_data_ptr<scalar_t>(), P, cs, sn);
  const scalar_t* zr = reinterpret_cast<const scalar_t*>(z.const_data_ptr());  // interleaved (re, im)
  scalar_t* o = reinterpret_cast<scalar_t*>(out.data_ptr());
  at::parallel_for(0, z.numel(), 1 << 15, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end;) {  // runs of consecutive columns within one row
      const int64_t j0 = i % P, run = std::min(P - j0, end - i);
      const scalar_t* __restrict__ zi = zr + 2 * i;
      scalar_t* __restrict__ oi = o + 2 * i;
      const scalar_t* __restrict__ c = cs.data() + j0;
      const scalar_t* __restrict__ sn_j = sn.data() + j0;
      for (int64_t k = 0; k < run; ++k) {
        const scalar_t a = zi[2 * k], b = zi[2 * k + 1];
        oi[2 * k] = a * c[k] - b * sn_j[k];
        oi[2 * k + 1] = a * sn_j[k] + b * c[k];
      }
      i += run;
    }
  });
}

// grad_z = g * exp(-i theta) row by row; grad_theta[j] = sum over rows of Im(grad_z * conj(z)).
// Parallel over blocks of columns, each summing its columns over every row in a fixed order (in
// double): deterministic, no reduction across threads.
template <typename scalar_t>
void rotate_rows_backward_cpu(const at::Tensor& grad, const at::Tensor& z, const at::Tensor& theta,
                              const at::Tensor& grad_z, const at::Tensor& grad_theta, int64_t P) {
  std::vector<scalar_t> cs, sn;
  cos_sin_table(theta.const_data_ptr<scalar_t>(), P, cs, sn);
  const int64_t rows = z.numel() / P;
  const scalar_t* g = reinterpret_cast<const scalar_t*>(grad.const_data_ptr());
  const scalar_t* zr = reinterpret_cast<const scalar_t*>(z.const_data_ptr());
  scalar_t* gz = reinterpret_cast<scalar_t*>(grad_z.data_ptr());
  scalar_t* gt = grad_theta.data_ptr<scalar_t>();
  at::parallel_for(0, P, std::max<int64_t>(1, (1 << 15) / rows), [&](int64_t j0, int64_t j1) {
    std::vector<double> acc(j1 - j0, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t base = 2 * (r * P);
      for (int64_t j = j0; j < j1; ++j) {
        const scalar_t a = g[base + 2 * j], b = g[base + 2 * j + 1];
        const scalar_t re = a * cs[j] + b * sn[j], im = b * cs[j] - a * sn[j];
        gz[base + 2 * j] = re;
        gz[base + 2 * j + 1] = im;
        acc[j - j0] += (double)(im * zr[base + 2 * j] - re * zr[base + 2 * j + 1]);
      }
    }
    for (int64_t j = j0; j < j1; ++j) gt[j] = (scalar_t)acc[j - j0];
  });
}

}  // namespace

at::Tensor phase_rotate_cpu(const at::Tensor& z, const at::Tensor& theta) {
  check_phase_rotate_args(z, theta, "phase_rotate");
  auto out = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
  if (const int64_t P = cpu_row_columns(z, theta)) {
    AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_rows_cpu",
                               [&] { rotate_rows_cpu<scalar_t>(z, theta, out, P); });
    return out;
  }
  auto iter = rotate_iter(out, z, theta);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_cpu", [&] {
    using C = c10::complex<scalar_t>;
    at::native::cpu_kernel(iter, [](C a, scalar_t t) -> C {
      const scalar_t c = std::cos(t), s = std::sin(t);
      return C(a.real() * c - a.imag() * s, a.real() * s + a.imag() * c);
    });
  });
  return out;
}

// grad_z = grad * exp(-i theta); per element g_theta = Im(grad * conj(z * exp(i theta))),
// then summed over the dimensions theta was broadcast along.
std::tuple<at::Tensor, at::Tensor> phase_rotate_backward_cpu(const at::Tensor& grad, const at::Tensor& z,
                                                             const at::Tensor& theta) {
  check_phase_rotate_args(z, theta, "phase_rotate_backward");
  check_same_shape_grad(grad, z);
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
  if (const int64_t P = grad.is_contiguous() ? cpu_row_columns(z, theta) : 0) {
    auto grad_theta = at::empty(theta.sizes(), theta.options());
    AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_rows_backward_cpu",
                               [&] { rotate_rows_backward_cpu<scalar_t>(grad, z, theta, grad_z, grad_theta, P); });
    return {grad_z, grad_theta};
  }
  auto g_theta = at::empty(z.sizes(), theta.options().memory_format(at::MemoryFormat::Contiguous));
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_backward_cpu", [&] {
    using C = c10::complex<scalar_t>;
    auto iter = rotate_backward_iter(grad_z, g_theta, grad, z, theta);
    at::native::cpu_kernel_multiple_outputs(iter, [](C g, C a, scalar_t t) -> std::tuple<C, scalar_t> {
      const scalar_t c = std::cos(t), s = std::sin(t);
      // g * exp(-i t)
      C gz(g.real() * c + g.imag() * s, g.imag() * c - g.real() * s);
      // Im(g * conj(a)) rotated: Im(gz * conj(a)) = Im(g conj(a) e^{-it})
      scalar_t gt = gz.imag() * a.real() - gz.real() * a.imag();
      return std::make_tuple(gz, gt);
    });
  });
  return {grad_z, sum_to_theta(g_theta, theta)};
}

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) {
  m.impl("phase_rotate", &phase_rotate_cpu);
  m.impl("phase_rotate_backward", &phase_rotate_backward_cpu);
}

}  // namespace fft_tensor
