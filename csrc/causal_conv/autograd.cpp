// causal_conv's autograd, in C++: the forward saves (u, k, skip) and the backward is one call of
// causal_conv_backward, so neither direction runs Python per call (torch.library.register_autograd
// did: measured as most of a forward+backward's wall time at L=1K on the H100, where the kernels
// take about 0.15 ms). torch.compile traces through it like any C++ autograd kernel (the ops below
// have fake kernels in fft_tensor/ops.py).
#include <torch/autograd.h>
#include <torch/library.h>

namespace fft_tensor {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class CausalConvFunction : public torch::autograd::Function<CausalConvFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& k,
                            const c10::optional<at::Tensor>& skip) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fft_tensor::causal_conv", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    ctx->save_for_backward({u, k, skip.has_value() ? *skip : at::Tensor()});
    return op.call(u, k, skip);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("fft_tensor::causal_conv_backward", "")
                               .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                         const at::Tensor&,
                                                                         const c10::optional<at::Tensor>&, bool, bool)>();
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &k = saved[1];
    const c10::optional<at::Tensor> skip = saved[2].defined() ? c10::optional<at::Tensor>(saved[2]) : c10::nullopt;
    const bool need_u = ctx->needs_input_grad(0), need_k = ctx->needs_input_grad(1);
    const bool need_skip = skip.has_value() && ctx->needs_input_grad(2);
    const at::Tensor grad_y = grad_outputs[0].defined() ? grad_outputs[0] : at::zeros_like(u);
    const auto [grad_u, grad_k] = op.call(grad_y, u, k, skip, need_u, need_k || need_skip);
    // grad_skip is tap 0 of grad_k (the skip term is a tap at lag 0), copied: a view would let an
    // in-place change of one gradient (a hook, manual clipping) change the other
    return {need_u ? grad_u : at::Tensor(), need_k ? grad_k : at::Tensor(),
            need_skip ? grad_k.select(1, 0).clone() : at::Tensor()};
  }
};

at::Tensor causal_conv_autograd(const at::Tensor& u, const at::Tensor& k, const c10::optional<at::Tensor>& skip) {
  return CausalConvFunction::apply(u, k, skip);
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, Autograd, m) { m.impl("causal_conv", &causal_conv_autograd); }

}  // namespace fft_tensor
