// rms_norm / add_rms_norm on the CPU: rows in parallel, float32 arithmetic (float64 for float64 x).
// The sum is ATen's own x + delta (the same bits as the unfused expression).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../cpu_dot.h"
#include "common.h"

namespace fft_tensor {
namespace {

template <typename acc_t>
void normalize_rows(const at::Tensor& s, const at::Tensor& w, at::Tensor& out, int64_t rows, int64_t D, double eps) {
  const acc_t* sp = s.data_ptr<acc_t>();
  const acc_t* wp = w.data_ptr<acc_t>();
  acc_t* op = out.data_ptr<acc_t>();
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const acc_t* x = sp + r * D;
      const acc_t total = dot8<acc_t>(x, x, D);
      const acc_t rstd = acc_t(1) / std::sqrt(total / acc_t(D) + acc_t(eps));
      for (int64_t c = 0; c < D; ++c) op[r * D + c] = x[c] * rstd * wp[c];
    }
  });
}

at::Tensor normed_of(const at::Tensor& sum, const at::Tensor& weight, double eps, at::ScalarType out_dtype) {
  const auto acc = rms_norm_acc_type(sum.scalar_type());
  const at::Tensor s = sum.to(acc).contiguous();
  const at::Tensor w = weight.contiguous();
  const int64_t D = sum.size(-1), rows = D == 0 ? 0 : sum.numel() / D;
  at::Tensor out = at::empty(sum.sizes(), sum.options().dtype(acc));
  if (acc == at::kDouble)
    normalize_rows<double>(s, w, out, rows, D, eps);
  else
    normalize_rows<float>(s, w, out, rows, D, eps);
  return out.to(out_dtype);
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps,
                        c10::optional<at::ScalarType> out_dtype) {
  const auto out = check_rms_norm_args("rms_norm", x, nullptr, weight, eps, out_dtype);
  return normed_of(x, weight, eps, out);
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& delta,
                                                    const at::Tensor& weight, double eps,
                                                    c10::optional<at::ScalarType> out_dtype) {
  const auto out = check_rms_norm_args("add_rms_norm", x, &delta, weight, eps, out_dtype);
  at::Tensor sum = at::add(x, delta).contiguous();
  return {sum, normed_of(sum, weight, eps, out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("add_rms_norm", &add_rms_norm_cpu);
}

}  // namespace fft_tensor
