// What the CPU and CUDA phase_rotate backends share (defined in cpu.cpp): argument checks, whose
// messages name the argument, what was expected and what was given (fft_tensor/ops.py mirrors them
// in the fake kernel), and the TensorIterators of the general (any strides, broadcast) path.
#pragma once
#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>

namespace fft_tensor {

void check_phase_rotate_args(const at::Tensor& z, const at::Tensor& theta, const char* op);

void check_same_shape_grad(const at::Tensor& grad, const at::Tensor& z);

// P when z is contiguous and theta is a contiguous tensor over z's trailing dims (its leading dims,
// if any, of size 1), so z is rows x P and theta one row broadcast over them; else 0.
int64_t broadcast_columns(const at::Tensor& z, const at::Tensor& theta);

// out = f(z, theta) elementwise, theta broadcast.
at::TensorIterator rotate_iter(const at::Tensor& out, const at::Tensor& z, const at::Tensor& theta);
// (grad_z, g_theta) = f(grad, z, theta) elementwise; g_theta full size, summed by sum_to_theta.
at::TensorIterator rotate_backward_iter(const at::Tensor& grad_z, const at::Tensor& g_theta, const at::Tensor& grad,
                                        const at::Tensor& z, const at::Tensor& theta);

// Sum a full-size per-element gradient down to theta's (broadcast) shape.
at::Tensor sum_to_theta(const at::Tensor& g, const at::Tensor& theta);

}  // namespace fft_tensor
