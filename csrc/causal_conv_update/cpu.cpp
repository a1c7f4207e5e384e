// causal_conv_update on the CPU: one streaming step of causal_conv (fft_tensor/ops.py says what it
// computes). Rows (b, d) in parallel; float32 arithmetic (float64 for float64 u).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common.h"

namespace fft_tensor {
namespace {

template <typename acc_t>
void update_rows(const at::Tensor& u_acc, at::Tensor& state, const at::Tensor& k, const at::Tensor& skip,
                 at::Tensor& y_acc) {
  const int64_t B = u_acc.size(0), D = u_acc.size(1), T = u_acc.size(2), S = state.size(2), Lk = k.size(1);
  const auto u = u_acc.accessor<acc_t, 3>();
  auto st = state.accessor<acc_t, 3>();
  const auto kk = k.accessor<acc_t, 2>();
  auto y = y_acc.accessor<acc_t, 3>();
  const acc_t* sk = skip.defined() ? skip.data_ptr<acc_t>() : nullptr;  // contiguous (caller)
  at::parallel_for(0, B * D, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(S + T);  // the row's past S inputs, then its T new ones
    std::vector<acc_t> acc(T);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      for (int64_t i = 0; i < S; ++i) x[i] = st[b][d][i];
      for (int64_t t = 0; t < T; ++t) x[S + t] = u[b][d][t];
      // every output sums skip * x, then taps s = 0, 1, ... in order; with the tap loop outside, the
      // loop over outputs is contiguous in x and vectorises (the T = 16 step of a ChunkLM)
      for (int64_t t = 0; t < T; ++t) acc[t] = sk ? sk[d] * x[S + t] : acc_t(0);
      for (int64_t s = 0; s < Lk; ++s) {
        const acc_t ks = kk[d][s];
        const acc_t* xs = x.data() + (S - s);
        for (int64_t t = 0; t < T; ++t) acc[t] += ks * xs[t];
      }
      for (int64_t t = 0; t < T; ++t) y[b][d][t] = acc[t];
      for (int64_t i = 0; i < S; ++i) st[b][d][i] = x[T + i];
    }
  });
}

at::Tensor causal_conv_update_cpu(const at::Tensor& u, at::Tensor& state, const at::Tensor& k,
                                  const c10::optional<at::Tensor>& skip, const c10::optional<at::Tensor>& gate) {
  check_causal_conv_update_args(u, state, k, skip, gate);
  const auto acc = state.scalar_type();
  const at::Tensor u_acc = u.to(acc);
  at::Tensor y_acc = at::empty(u.sizes(), u.options().dtype(acc));
  const at::Tensor skip_c = skip.has_value() ? skip->contiguous() : at::Tensor();
  if (acc == at::kDouble)
    update_rows<double>(u_acc, state, k, skip_c, y_acc);
  else
    update_rows<float>(u_acc, state, k, skip_c, y_acc);
  at::Tensor y = y_acc.to(u.scalar_type());
  // the gated mixer's product, as ATen rounds the unfused expression (silu, then the product, each
  // rounded to u's dtype)
  return gate.has_value() ? at::mul(y, at::silu(*gate)) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) { m.impl("causal_conv_update", &causal_conv_update_cpu); }

}  // namespace fft_tensor
