// phase_rotate on the CPU: one TensorIterator pass (any strides, broadcasting), parallel
// over chunks through at::parallel_for inside TensorIterator.
#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/TensorIterator.h>
#include <ATen/native/cpu/Loops.h>
#include <c10/util/complex.h>
#include <cmath>
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

at::Tensor phase_rotate_cpu(const at::Tensor& z, const at::Tensor& theta) {
  check_phase_rotate_args(z, theta, "phase_rotate");
  auto out = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
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
