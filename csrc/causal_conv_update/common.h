// causal_conv_update: argument checks shared by the CPU and CUDA backends (fft_tensor/ops.py mirrors
// them in the fake kernel).
#pragma once
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>

#include <string>

#include "../shape_str.h"

namespace fft_tensor {

inline void check_causal_conv_update_args(const at::Tensor& u, const at::Tensor& state, const at::Tensor& k,
                                          const c10::optional<at::Tensor>& skip,
                                          const c10::optional<at::Tensor>& gate = c10::nullopt) {
  constexpr const char* op = "causal_conv_update";
  TORCH_CHECK(u.dim() == 3, op, ": expected u of shape (B, D, T), got a ", std::to_string(u.dim()),
              "-d tensor of shape ", shape_str(u.sizes()));
  const auto ut = u.scalar_type();
  TORCH_CHECK(ut == at::kFloat || ut == at::kBFloat16 || ut == at::kHalf || ut == at::kDouble, op,
              ": expected u of dtype float32, bfloat16, float16 or float64, got ", ut);
  TORCH_CHECK(u.size(2) >= 1, op, ": expected u with T >= 1 new steps, got u.shape ", shape_str(u.sizes()));
  TORCH_CHECK(k.dim() == 2, op, ": expected k of shape (D, Lk), got a ", std::to_string(k.dim()), "-d tensor of shape ",
              shape_str(k.sizes()));
  const auto acc = ut == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(k.scalar_type() == acc, op, ": expected k of dtype ", acc, " (for u of ", ut, "), got ", k.scalar_type());
  TORCH_CHECK(k.size(0) == u.size(1), op, ": expected k.shape[0] == u.shape[1] (D = ", std::to_string(u.size(1)),
              "), got k.shape ", shape_str(k.sizes()));
  TORCH_CHECK(k.size(1) >= 1, op, ": expected k with at least one tap (Lk >= 1), got k.shape ", shape_str(k.sizes()));
  TORCH_CHECK(state.dim() == 3 && state.size(0) == u.size(0) && state.size(1) == u.size(1), op,
              ": expected state of shape (B, D, S) = (", std::to_string(u.size(0)), ", ", std::to_string(u.size(1)),
              ", S), got ", shape_str(state.sizes()));
  TORCH_CHECK(state.size(2) >= k.size(1) - 1, op, ": expected state with S >= Lk - 1 = ",
              std::to_string(k.size(1) - 1), " past inputs (the taps reach that far back), got state.shape ",
              shape_str(state.sizes()));
  TORCH_CHECK(state.scalar_type() == acc, op, ": expected state of dtype ", acc,
              " (it keeps u's past inputs exactly), got ", state.scalar_type());
  // written in place: rows must not share memory (an expanded state would let one row overwrite another's)
  TORCH_CHECK(at::has_internal_overlap(state) != at::MemOverlap::Yes, op,
              ": expected a state whose elements do not share memory (it is written in place), got one with "
              "strides ", shape_str(state.strides()), " (an expand()ed tensor?); pass a contiguous copy");
  for (const auto* t : {&k, &state}) {
    TORCH_CHECK(t->device() == u.device(), op, ": expected ", t == &k ? "k" : "state", " on the same device as u (",
                u.device(), "), got ", t->device());
  }
  if (skip.has_value()) {
    const auto& s = *skip;
    TORCH_CHECK(s.dim() == 1 && s.size(0) == u.size(1), op, ": expected skip of shape (D,) = (",
                std::to_string(u.size(1)), ",), got ", shape_str(s.sizes()));
    TORCH_CHECK(s.scalar_type() == acc, op, ": expected skip of dtype ", acc, ", got ", s.scalar_type());
    TORCH_CHECK(s.device() == u.device(), op, ": expected skip on the same device as u (", u.device(), "), got ",
                s.device());
  }
  if (gate.has_value()) {
    const auto& g = *gate;
    TORCH_CHECK(g.sizes() == u.sizes(), op, ": expected gate of u's shape ", shape_str(u.sizes()), ", got ",
                shape_str(g.sizes()));
    TORCH_CHECK(g.scalar_type() == ut, op, ": expected gate of u's dtype (", ut, "), got ", g.scalar_type());
    TORCH_CHECK(g.device() == u.device(), op, ": expected gate on the same device as u (", u.device(), "), got ",
                g.device());
  }
}

}  // namespace fft_tensor
