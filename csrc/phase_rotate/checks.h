// Argument checks shared by the CPU and CUDA phase_rotate kernels. Every message names the
// argument, what was expected and what was given; fft_tensor/ops.py mirrors them in the fake kernel.
#pragma once
#include <ATen/ATen.h>

#include "../shape_str.h"
#include <ATen/ExpandUtils.h>

namespace fft_tensor {

inline void check_phase_rotate_args(const at::Tensor& z, const at::Tensor& theta, const char* op) {
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
                ", got theta.shape ", shape_str(ts), " (dimension ", off + i, ": ", ts[i], " vs ", zs[off + i], ")");
  }
}

inline void check_same_shape_grad(const at::Tensor& grad, const at::Tensor& z) {
  TORCH_CHECK(grad.sizes() == z.sizes(), "phase_rotate_backward: expected grad of shape ", shape_str(z.sizes()), ", got ",
              shape_str(grad.sizes()));
  TORCH_CHECK(grad.scalar_type() == z.scalar_type(), "phase_rotate_backward: expected grad of dtype ",
              z.scalar_type(), ", got ", grad.scalar_type());
  TORCH_CHECK(grad.device() == z.device(), "phase_rotate_backward: expected grad on ", z.device(), ", got ",
              grad.device());
}

// Sum a full-size per-element gradient down to theta's (broadcast) shape.
inline at::Tensor sum_to_theta(const at::Tensor& g, const at::Tensor& theta) {
  std::vector<int64_t> reduce;
  const int64_t off = g.dim() - theta.dim();
  for (int64_t i = 0; i < g.dim(); ++i) {
    if (i < off || theta.size(i - off) == 1) reduce.push_back(i);
  }
  at::Tensor r = reduce.empty() ? g : g.sum(reduce, /*keepdim=*/true);
  return r.reshape(theta.sizes()).contiguous();
}

}  // namespace fft_tensor
