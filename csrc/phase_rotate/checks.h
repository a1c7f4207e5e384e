// Argument checks shared by the CPU and CUDA phase_rotate kernels. Every message names the
// argument, what was expected and what was given; fft_tensor/ops.py mirrors them in the fake kernel.
#pragma once
#include <ATen/ATen.h>

namespace fft_tensor {

void check_phase_rotate_args(const at::Tensor& z, const at::Tensor& theta, const char* op);

void check_same_shape_grad(const at::Tensor& grad, const at::Tensor& z);

// Sum a full-size per-element gradient down to theta's (broadcast) shape.
at::Tensor sum_to_theta(const at::Tensor& g, const at::Tensor& theta);

}  // namespace fft_tensor
