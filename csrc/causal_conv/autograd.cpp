// causal_conv's autograd, in C++: the forward saves (u, k, skip) and the backward is one call of
// causal_conv_backward, so neither direction runs Python per call (torch.library.register_autograd
// did: measured as most of a forward+backward's wall time at L=1K on the H100, where the kernels
// take about 0.15 ms). torch.compile traces through it like any C++ autograd kernel (the ops below
// have fake kernels in fft_tensor/ops.py).
//
// causal_conv_backward has an autograd kernel too, so derivatives of every order work
// (create_graph=True: gradient penalties, Hessian-vector products). The op is bilinear in (u, k + skip
// at tap 0), so the backward of its backward is again causal_conv and causal_conv_backward (see
// CausalConvBackwardFunction::backward); no new kernels.
#include <torch/autograd.h>
#include <torch/library.h>

namespace fft_tensor {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ConvOp = at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
using ConvBackwardOp = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                          const c10::optional<at::Tensor>&, bool, bool);

// The ops through the dispatcher, autograd included: called from a backward under create_graph, they
// record their own nodes (the next order of derivatives).
const c10::TypedOperatorHandle<ConvOp>& conv_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("fft_tensor::causal_conv", "").typed<ConvOp>();
  return op;
}

const c10::TypedOperatorHandle<ConvBackwardOp>& conv_backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fft_tensor::causal_conv_backward", "")
                             .typed<ConvBackwardOp>();
  return op;
}

c10::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// A cotangent of one of causal_conv_backward's outputs, or undefined when it carries nothing: autograd
// passes undefined for unused outputs, and an output not asked for is an empty (0,) placeholder.
at::Tensor cotangent(const at::Tensor& g, const at::Tensor& like) {
  return g.defined() && g.sizes() == like.sizes() ? g : at::Tensor();
}

class CausalConvFunction : public torch::autograd::Function<CausalConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& k,
                            const c10::optional<at::Tensor>& skip) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({u, k, skip.has_value() ? *skip : at::Tensor()});
    return conv_op().call(u, k, skip);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &k = saved[1];
    const c10::optional<at::Tensor> skip = optional_of(saved[2]);
    const bool need_u = ctx->needs_input_grad(0), need_k = ctx->needs_input_grad(1);
    const bool need_skip = skip.has_value() && ctx->needs_input_grad(2);
    const at::Tensor grad_y = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(u);
    const auto [grad_u, grad_k] = conv_backward_op().call(grad_y, u, k, skip, need_u, need_k || need_skip);
    // grad_skip is tap 0 of grad_k (the skip term is a tap at lag 0), copied: a view would let an
    // in-place change of one gradient (a hook, manual clipping) change the other
    return {need_u ? grad_u : at::Tensor(), need_k ? grad_k : at::Tensor(),
            need_skip ? grad_k.select(1, 0).clone() : at::Tensor()};
  }
};

// causal_conv_backward(g, u, k, skip) = (C(k')^T g, corr(g, u)) with k' = k plus skip at tap 0, C(k') the
// causal convolution by k' and corr(g, u)[d, s] = sum_{b,t} g[b,d,t] u[b,d,t-s]. Its vector-Jacobian
// product for cotangents (gu, gk):
//   d grad_y = C(k') gu + C(gk) u        two causal_conv calls
//   d u      = C(gk)^T g                 } one causal_conv_backward(g, gu, gk) call: its grad_u is
//   d k'     = corr(g, gu)               } C(gk)^T g and its grad_k corr(g, gu); d skip = d k'[:, 0]
class CausalConvBackwardFunction : public torch::autograd::Function<CausalConvBackwardFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& grad_y, const at::Tensor& u,
                               const at::Tensor& k, const c10::optional<at::Tensor>& skip, bool need_u,
                               bool need_k) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({grad_y, u, k, skip.has_value() ? *skip : at::Tensor()});
    const auto [grad_u, grad_k] = conv_backward_op().call(grad_y, u, k, skip, need_u, need_k);
    return {grad_u, grad_k};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &grad_y = saved[0], &u = saved[1], &k = saved[2];
    const c10::optional<at::Tensor> skip = optional_of(saved[3]);
    const at::Tensor gu = cotangent(grad_outputs[0], u), gk = cotangent(grad_outputs[1], k);
    const bool need_grad_y = ctx->needs_input_grad(0), need_skip = skip.has_value() && ctx->needs_input_grad(3);
    const bool need_u = ctx->needs_input_grad(1) && gk.defined();
    const bool need_k = (ctx->needs_input_grad(2) || need_skip) && gu.defined();
    at::Tensor d_grad_y, d_u, d_k, d_skip;
    if (need_grad_y && (gu.defined() || gk.defined())) {
      if (gu.defined()) d_grad_y = conv_op().call(gu, k, skip);
      if (gk.defined()) {
        const at::Tensor part = conv_op().call(u, gk, c10::nullopt);
        d_grad_y = d_grad_y.defined() ? d_grad_y.add(part) : part;
      }
      d_grad_y = d_grad_y.to(grad_y.scalar_type());
    }
    if (need_u || need_k) {
      // one call for both: gu stands in for u (only its shape is read when need_k is false) and gk
      // for k (only its shape when need_u is false)
      const auto [from_gk, from_gu] = conv_backward_op().call(grad_y, gu.defined() ? gu : u,
                                                              gk.defined() ? gk : k, c10::nullopt, need_u, need_k);
      if (need_u) d_u = from_gk;
      if (need_k) {
        if (ctx->needs_input_grad(2)) d_k = from_gu;
        if (need_skip) d_skip = from_gu.select(1, 0).clone();
      }
    }
    return {d_grad_y, d_u, d_k, d_skip, at::Tensor(), at::Tensor()};
  }
};

at::Tensor causal_conv_autograd(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  return CausalConvFunction::apply(u, k, skip);
}

std::tuple<at::Tensor, at::Tensor> causal_conv_backward_autograd(const at::Tensor& grad_y, const at::Tensor& u,
                                                                const at::Tensor& k,
                                                                const c10::optional<at::Tensor>& skip, bool need_u,
                                                                bool need_k) {
  const variable_list out = CausalConvBackwardFunction::apply(grad_y, u, k, skip, need_u, need_k);
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, Autograd, m) {
  m.impl("causal_conv", &causal_conv_autograd);
  m.impl("causal_conv_backward", &causal_conv_backward_autograd);
}

}  // namespace fft_tensor
