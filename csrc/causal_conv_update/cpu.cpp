// causal_conv_update on the CPU: one streaming step of causal_conv (fft_tensor/ops.py says what it
// computes). Rows (b, d) in parallel; float32 arithmetic (float64 for float64 u).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../cpu_clones.h"
#include "common.h"

namespace fft_tensor {
namespace {

// sum_{s < Lk} k[s] * x[-s] for x pointing at the newest input: 8 partial sums, so the sum is not one
// chain of dependent adds (the one-byte generation step, T = 1, is this dot product per channel; the
// taps meet the inputs in reverse, unlike cpu_dot.h's dot8). Cloned per instruction set (cpu_clones.h).
template <typename acc_t>
FFT_TENSOR_CPU_CLONES acc_t dot_reversed(const acc_t* k, const acc_t* x, int64_t Lk) {
  acc_t part[8] = {};
  int64_t s = 0;
  for (; s + 8 <= Lk; s += 8)
    for (int j = 0; j < 8; ++j) part[j] += k[s + j] * x[-(s + j)];
  for (int j = 0; s < Lk; ++s, ++j) part[j] += k[s] * x[-s];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7]));
}

// The one-step output: skip * x_new + (k[0] * x_new + sum_{s >= 1} k[s] * past[1 - s]), past pointing
// at the input before x_new (both T = 1 branches of update_rows: one order, the same bits).
template <typename acc_t>
inline acc_t step_output(const acc_t* k, int64_t Lk, const acc_t* past, acc_t x_new, const acc_t* skip) {
  const acc_t taps = Lk > 1 ? dot_reversed(k + 1, past, Lk - 1) : acc_t(0);
  return (skip ? *skip * x_new : acc_t(0)) + (k[0] * x_new + taps);
}

template <typename acc_t>
void update_rows(const at::Tensor& u_acc, at::Tensor& state, const at::Tensor& k, const at::Tensor& skip,
                 at::Tensor& y_acc) {
  // u_acc, k and y_acc contiguous (the caller); state in place, any strides
  const int64_t B = u_acc.size(0), D = u_acc.size(1), T = u_acc.size(2), S = state.size(2), Lk = k.size(1);
  const int64_t sb = state.stride(0), sd = state.stride(1), si = state.stride(2);
  const acc_t* up = u_acc.data_ptr<acc_t>();
  const acc_t* kp = k.data_ptr<acc_t>();
  acc_t* sp = state.data_ptr<acc_t>();
  acc_t* yp = y_acc.data_ptr<acc_t>();
  const acc_t* sk = skip.defined() ? skip.data_ptr<acc_t>() : nullptr;  // contiguous (caller)
  at::parallel_for(0, B * D, 16, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> x(S + T);  // the row's past S inputs, then its T new ones
    std::vector<acc_t> acc(T);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / D, d = r % D;
      acc_t* st = sp + b * sb + d * sd;
      const acc_t* kd = kp + d * Lk;
      const acc_t* ur = up + r * T;
      if (T == 1 && si == 1) {  // the generation step: read the state in place, then shift it by one
        const acc_t x_new = ur[0];
        yp[r] = step_output(kd, Lk, st + S - 1, x_new, sk ? sk + d : nullptr);
        if (S > 0) {
          std::copy(st + 1, st + S, st);
          st[S - 1] = x_new;
        }
        continue;
      }
      if (si == 1) {
        std::copy(st, st + S, x.data());
      } else {
        for (int64_t i = 0; i < S; ++i) x[i] = st[i * si];
      }
      std::copy(ur, ur + T, x.data() + S);
      if (T == 1) {  // as the in-place step above
        yp[r] = step_output(kd, Lk, x.data() + S - 1, x[S], sk ? sk + d : nullptr);
      } else {
        // every output sums skip * x, then the taps; with the tap loop outside, the loop over outputs
        // is contiguous in x and vectorises (the T = 16 step of a ChunkLM)
        for (int64_t t = 0; t < T; ++t) acc[t] = sk ? sk[d] * x[S + t] : acc_t(0);
        for (int64_t s = 0; s < Lk; ++s) {
          const acc_t ks = kd[s];
          const acc_t* xs = x.data() + (S - s);
          for (int64_t t = 0; t < T; ++t) acc[t] += ks * xs[t];
        }
        std::copy(acc.begin(), acc.end(), yp + r * T);
      }
      if (si == 1) {
        std::copy(x.data() + T, x.data() + T + S, st);
      } else {
        for (int64_t i = 0; i < S; ++i) st[i * si] = x[T + i];
      }
    }
  });
}

at::Tensor causal_conv_update_cpu(const at::Tensor& u, at::Tensor& state, const at::Tensor& k,
                                  const c10::optional<at::Tensor>& skip, const c10::optional<at::Tensor>& gate) {
  check_causal_conv_update_args(u, state, k, skip, gate);
  const auto acc = state.scalar_type();
  const at::Tensor u_acc = u.to(acc).contiguous();
  const at::Tensor k_c = k.contiguous();
  at::Tensor y_acc = at::empty(u.sizes(), u.options().dtype(acc));
  const at::Tensor skip_c = skip.has_value() ? skip->contiguous() : at::Tensor();
  if (acc == at::kDouble)
    update_rows<double>(u_acc, state, k_c, skip_c, y_acc);
  else
    update_rows<float>(u_acc, state, k_c, skip_c, y_acc);
  at::Tensor y = y_acc.to(u.scalar_type());
  // the gated mixer's product, as ATen rounds the unfused expression (silu, then the product, each
  // rounded to u's dtype)
  return gate.has_value() ? at::mul(y, at::silu(*gate)) : y;
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) { m.impl("causal_conv_update", &causal_conv_update_cpu); }

}  // namespace fft_tensor
