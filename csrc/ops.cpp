// The fft_tensor op library: every schema is declared here, once.
// Backends register implementations in csrc/<op>/cpu.cpp and csrc/<op>/cuda.cu with
// TORCH_LIBRARY_IMPL; fake kernels live in fft_tensor/ops.py, autograd there (phase_rotate) or in
// csrc/<op>/autograd.cpp (causal_conv).
#include <Python.h>
#include <torch/library.h>

#include "chunk_decode/common.h"

extern "C" {
// Importing fft_tensor._C runs the static registrations below; the module itself is empty
// (no pybind11: the ops are reached through torch.ops.fft_tensor.*).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fft_tensor, m) {
  // z * exp(i*theta); z complex, theta real and broadcastable to z.
  m.def("phase_rotate(Tensor z, Tensor theta) -> Tensor");
  // (grad_z, grad_theta) with grad_theta reduced to theta's shape.
  m.def("phase_rotate_backward(Tensor grad, Tensor z, Tensor theta) -> (Tensor, Tensor)");

  // y[b,d,t] = sum_{s<=min(t,Lk-1)} k[d,s] u[b,d,t-s] + skip[d] u[b,d,t].
  // u: (B, D, L) float32/bfloat16/float16/float64; k: (D, Lk); skip: (D,) or None.
  m.def("causal_conv(Tensor u, Tensor k, Tensor? skip=None) -> Tensor");
  // (grad_u, grad_k): grad_u like u, grad_k (D, Lk) like k; each is an empty (0,) tensor when not
  // asked for. grad_skip is grad_k[:, 0] (the skip term is a tap at lag 0).
  m.def("causal_conv_backward(Tensor grad_y, Tensor u, Tensor k, Tensor? skip, bool need_u, bool need_k) -> (Tensor, Tensor)");

  // One streaming step: x = cat(state, u) along time, y[b,d,t] = sum_{s<Lk} k[d,s] x[b,d,S+t-s] + skip[d] u[b,d,t]
  // for the T new inputs u (B, D, T); state (B, D, S >= Lk-1, float32) is shifted by T in place.
  // Inference only (no autograd).
  // gate (B, D, T) of u's dtype, when given: returns y.to(u.dtype) * silu(gate) instead of y (the gated
  // conv mixer's product, rounded as the unfused torch expression rounds it).
  m.def("causal_conv_update(Tensor u, Tensor(a!) state, Tensor k, Tensor? skip=None, Tensor? gate=None) -> Tensor");

  // Over the last dim: s * rsqrt(mean(s^2) + eps) * weight in out_dtype (default x's), s = x, or
  // s = x + delta (in x's dtype, returned too: the residual stream's next value).
  m.def("rms_norm(Tensor x, Tensor weight, float eps, ScalarType? out_dtype=None) -> Tensor");
  m.def("add_rms_norm(Tensor x, Tensor delta, Tensor weight, float eps, ScalarType? out_dtype=None) -> (Tensor, Tensor)");

  // A ChunkLM decoder's whole chunk (fft_lm/chunk.py): K slots through `layers` pre-norm blocks of
  // causal self-attention + GELU MLP, each slot's byte picked (argmax, or inverse-CDF sampling at
  // uniforms[:, j]) and fed to the next slot. Returns (logits (N, K, 256) float32, bytes (N, K) int64).
  // Inference only (no autograd).
  m.def("chunk_decode(Tensor context, Tensor first, Tensor uniforms, Tensor byte_emb, Tensor slot_emb, "
        "Tensor[] norm1, Tensor[] qkv, Tensor[] proj, Tensor[] norm2, Tensor[] fc, Tensor[] fc_proj, "
        "Tensor norm_f, Tensor head, int heads, float eps, float temperature, int top_k) -> (Tensor, Tensor)");
  // Shared memory per block chunk_decode's CUDA kernel needs for a decoder of width C, MLP width F and
  // `layers` blocks decoding `slots` slots (callers compare it with the device's opt-in limit).
  m.def("chunk_decode_smem_bytes(int C, int F, int heads, int slots, int layers) -> int",
        &fft_tensor::chunk_decode_smem_bytes);
  // Why chunk_decode cannot run a decoder of these sizes on CPU or CUDA ("" when it can); shared
  // memory aside (chunk_decode_smem_bytes).
  m.def("chunk_decode_unsupported(int C, int F, int heads, int layers, ScalarType weight_dtype, bool cuda) -> str",
        &fft_tensor::chunk_decode_unsupported);
}
