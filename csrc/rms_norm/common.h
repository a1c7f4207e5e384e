// rms_norm / add_rms_norm: argument checks and the dtype rules shared by the CPU and CUDA backends
// (fft_tensor/ops.py mirrors them in the fake kernels).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "../shape_str.h"

namespace fft_tensor {

inline bool rms_norm_dtype_ok(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

// The float type sums and norms are computed in: float64 when x is float64, else float32.
inline at::ScalarType rms_norm_acc_type(at::ScalarType x) { return x == at::kDouble ? at::kDouble : at::kFloat; }

// Checks every argument and returns the dtype of the normed output.
inline at::ScalarType check_rms_norm_args(const char* op, const at::Tensor& x, const at::Tensor* delta,
                                          const at::Tensor& weight, double eps,
                                          const c10::optional<at::ScalarType>& out_dtype) {
  TORCH_CHECK(x.dim() >= 1, op, ": expected x with at least one dimension (..., D), got a 0-d tensor");
  TORCH_CHECK(rms_norm_dtype_ok(x.scalar_type()), op, ": expected x of dtype float32, bfloat16, float16 or float64, got ",
              x.scalar_type());
  const int64_t D = x.size(-1);
  TORCH_CHECK(D >= 1, op, ": expected x with a non-empty last dimension, got x.shape ", shape_str(x.sizes()));
  if (delta != nullptr) {
    TORCH_CHECK(delta->sizes() == x.sizes(), op, ": expected delta of x's shape ", shape_str(x.sizes()), ", got ",
                shape_str(delta->sizes()));
    TORCH_CHECK(rms_norm_dtype_ok(delta->scalar_type()), op,
                ": expected delta of dtype float32, bfloat16, float16 or float64, got ", delta->scalar_type());
    TORCH_CHECK(at::promote_types(x.scalar_type(), delta->scalar_type()) == x.scalar_type(), op,
                ": expected delta's dtype to promote to x's (the sum keeps x's dtype), got x ", x.scalar_type(),
                " and delta ", delta->scalar_type());
    TORCH_CHECK(delta->device() == x.device(), op, ": expected delta on x's device (", x.device(), "), got ",
                delta->device());
  }
  const auto acc = rms_norm_acc_type(x.scalar_type());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == D, op, ": expected weight of shape (D,) = (", std::to_string(D),
              ",), got ", shape_str(weight.sizes()));
  TORCH_CHECK(weight.scalar_type() == acc, op, ": expected weight of dtype ", acc, " (for x of ", x.scalar_type(),
              "), got ", weight.scalar_type());
  TORCH_CHECK(weight.device() == x.device(), op, ": expected weight on x's device (", x.device(), "), got ",
              weight.device());
  // (numbers reach the message through std::to_string: streaming them into it crashed on the device)
  TORCH_CHECK(eps >= 0, op, ": expected eps >= 0, got ", std::to_string(eps));
  const auto out = out_dtype.value_or(x.scalar_type());
  TORCH_CHECK(rms_norm_dtype_ok(out), op, ": expected out_dtype float32, bfloat16, float16 or float64, got ", out);
  TORCH_CHECK((out == at::kDouble) == (x.scalar_type() == at::kDouble), op,
              ": expected out_dtype float64 exactly when x is float64, got x ", x.scalar_type(), " and out_dtype ", out);
  return out;
}

}  // namespace fft_tensor
