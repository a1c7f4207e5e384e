// chunk_decode: argument checks and sizes shared by the CPU and CUDA backends (fft_tensor/ops.py
// mirrors the checks in the fake kernel).
#pragma once
#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <string>
#include <vector>

#include "../shape_str.h"

namespace fft_tensor {

constexpr int kDecodeVocab = 256;     // bytes
constexpr int kDecodeMaxLayers = 8;   // decoder blocks one launch takes (kernel arguments hold the pointers)
// The CUDA kernel sums the MLP's second product over this many column groups of the hidden vector, in a
// fixed order, whatever the cluster size (1 to 16 blocks, each owning 16 / G groups): same bits.
constexpr int kDecodeColumnGroups = 16;

// The CUDA kernel's shared memory per block (floats, then doubles): the launcher allocates bytes(),
// and fft_lm asks chunk_decode_smem_bytes whether a decoder fits before it picks the op. Offsets are
// int in the kernel; the host computes the same layout in int64 first (chunk_decode_smem_bytes), so
// sizes whose offsets would overflow int are refused there. Every array starts on 16 bytes (the
// exchanges store 4 floats at once), and key and value rows are padded to kv_stride(C) floats: a
// multiple of 4 that is 4 mod 8, so 8 lanes loading 16 bytes of 8 different keys hit 32 distinct banks.
// The launcher may add a weight staging area after bytes() (not counted here: it is optional).
template <typename index_t>
struct SmemLayoutT {
  index_t x, a, y, q, hid, part, logit, kc, vc, scores, norms, red, end_floats;
  C10_HOST_DEVICE static index_t align4(index_t n) { return (n + 3) / 4 * 4; }
  C10_HOST_DEVICE static index_t kv_stride(index_t C) {
    const index_t p = align4(C);
    return p % 8 == 4 ? p : p + 4;
  }
  C10_HOST_DEVICE static SmemLayoutT of(index_t C, index_t F, index_t H, index_t K, index_t layers) {
    SmemLayoutT s;
    index_t o = 0;
    s.x = o; o += align4(C);
    s.a = o; o += align4(C);
    s.y = o; o += align4(C);
    s.q = o; o += align4(C);
    s.hid = o; o += align4(F);
    s.part = o; o += align4(kDecodeColumnGroups * C);  // the MLP output's column-group partial sums
    s.logit = o; o += kDecodeVocab;
    s.kc = o; o += layers * K * kv_stride(C);
    s.vc = o; o += layers * K * kv_stride(C);
    s.scores = o; o += align4(H * K);
    s.norms = o; o += align4((2 * layers + 1) * C);  // norm1[l], norm2[l] per layer, then norm_f
    s.red = o; o += 32;
    s.end_floats = o;  // doubles after (8-byte aligned: o is a multiple of 4)
    return s;
  }
  // then kDecodeVocab + 32 doubles of scratch, the pick (8 bytes) and the 2 exchange mbarriers
  C10_HOST_DEVICE size_t bytes() const { return (size_t)end_floats * 4 + (kDecodeVocab + 32 + 1 + 2) * 8; }
};
using SmemLayout = SmemLayoutT<int>;

inline int64_t chunk_decode_smem_bytes(int64_t C, int64_t F, int64_t heads, int64_t slots, int64_t layers) {
  TORCH_CHECK(C >= 1 && F >= 1 && heads >= 1 && slots >= 1 && layers >= 1,
              "chunk_decode_smem_bytes: expected positive sizes, got C = ", std::to_string(C), ", F = ",
              std::to_string(F), ", heads = ", std::to_string(heads), ", slots = ", std::to_string(slots),
              ", layers = ", std::to_string(layers));
  const auto layout = SmemLayoutT<int64_t>::of(C, F, heads, slots, layers);
  TORCH_CHECK(layout.end_floats < (int64_t(1) << 28), "chunk_decode_smem_bytes: sizes too large (",
              std::to_string(layout.end_floats), " floats of state)");
  return (int64_t)layout.bytes();
}

// The op's size rules, each returning why a decoder breaks it ("" when it holds).
inline std::string decode_layers_rule(int64_t layers) {
  if (layers >= 1 && layers <= kDecodeMaxLayers) return "";
  return "expected 1 to " + std::to_string(kDecodeMaxLayers) + " decoder layers (qkv tensors), got " +
         std::to_string(layers);
}
inline std::string decode_heads_rule(int64_t C, int64_t heads) {
  if (heads >= 1 && C % heads == 0) return "";
  return "expected heads >= 1 dividing C = " + std::to_string(C) + ", got heads = " + std::to_string(heads);
}
inline std::string decode_dtype_rule(at::ScalarType weight_dtype) {
  if (weight_dtype == at::kFloat || weight_dtype == at::kBFloat16 || weight_dtype == at::kHalf) return "";
  return std::string("expected linear weights of dtype float32, bfloat16 or float16, got ") +
         c10::toString(weight_dtype);
}
// The CUDA kernel's 16-byte weight rows.
inline std::string decode_cuda_rows_rule(int64_t C, int64_t F, at::ScalarType weight_dtype) {
  const int vec = weight_dtype == at::kFloat ? 4 : 8;
  if (C % vec == 0 && F % vec == 0) return "";
  return "on CUDA expected C and F divisible by " + std::to_string(vec) + " (16-byte weight rows), got C = " +
         std::to_string(C) + ", F = " + std::to_string(F);
}

// Why chunk_decode cannot run a decoder of these sizes, "" when it can: the rules above, which the
// op's checks enforce. Whether the state fits a block's shared memory is the caller's to compare
// (chunk_decode_smem_bytes against the device). weight_dtype: the linear weights' dtype; cuda: the
// CUDA kernel's row rule applies.
inline std::string chunk_decode_unsupported(int64_t C, int64_t F, int64_t heads, int64_t layers,
                                            at::ScalarType weight_dtype, bool cuda) {
  for (const std::string& why : {decode_layers_rule(layers), decode_heads_rule(C, heads), decode_dtype_rule(weight_dtype),
                                 cuda ? decode_cuda_rows_rule(C, F, weight_dtype) : std::string()}) {
    if (!why.empty()) return why;
  }
  return "";
}

// The decoder's sizes, read from the weights: C model width, F MLP width, H heads, K slots decoded.
struct DecodeShape {
  int64_t N, C, F, H, K, layers;
};

inline void check_decode_vector(const at::Tensor& t, const char* name, int64_t C, const at::Device& dev) {
  constexpr const char* op = "chunk_decode";
  TORCH_CHECK(t.dim() == 1 && t.size(0) == C, op, ": expected ", name, " of shape (", std::to_string(C),
              ",), got ", shape_str(t.sizes()));
  TORCH_CHECK(t.is_floating_point(), op, ": expected ", name, " to be floating point, got ", t.scalar_type());
  TORCH_CHECK(t.device() == dev, op, ": expected ", name, " on ", dev.str(), ", got ", t.device().str());
}

inline void check_decode_matrix(const at::Tensor& t, const std::string& name, int64_t rows, int64_t cols,
                                at::ScalarType dtype, const at::Device& dev) {
  constexpr const char* op = "chunk_decode";
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols, op, ": expected ", name, " of shape (",
              std::to_string(rows), ", ", std::to_string(cols), "), got ", shape_str(t.sizes()));
  TORCH_CHECK(t.scalar_type() == dtype, op, ": expected ", name, " of dtype ", dtype,
              " (every linear weight in one dtype, qkv[0]'s), got ", t.scalar_type());
  TORCH_CHECK(t.device() == dev, op, ": expected ", name, " on ", dev.str(), ", got ", t.device().str());
}

inline DecodeShape check_chunk_decode_args(const at::Tensor& context, const at::Tensor& first,
                                           const at::Tensor& uniforms, const at::Tensor& byte_emb,
                                           const at::Tensor& slot_emb, at::TensorList norm1, at::TensorList qkv,
                                           at::TensorList proj, at::TensorList norm2, at::TensorList fc,
                                           at::TensorList fc_proj, const at::Tensor& norm_f,
                                           const at::Tensor& head, int64_t heads, double temperature,
                                           int64_t top_k) {
  constexpr const char* op = "chunk_decode";
  TORCH_CHECK(context.dim() == 2, op, ": expected context of shape (N, C), got ", shape_str(context.sizes()));
  TORCH_CHECK(context.scalar_type() == at::kFloat, op, ": expected context of dtype float32, got ",
              context.scalar_type());
  const at::Device dev = context.device();
  DecodeShape s{context.size(0), context.size(1), 0, heads, 0, (int64_t)qkv.size()};
  TORCH_CHECK(s.C >= 1, op, ": expected context with C >= 1 columns, got ", shape_str(context.sizes()));
  TORCH_CHECK(first.dim() == 1 && first.size(0) == s.N, op, ": expected first of shape (N,) = (",
              std::to_string(s.N), ",), got ", shape_str(first.sizes()));
  TORCH_CHECK(first.scalar_type() == at::kLong, op, ": expected first of dtype int64 (bytes), got ",
              first.scalar_type());
  TORCH_CHECK(uniforms.dim() == 2 && uniforms.size(0) == s.N && uniforms.size(1) >= 1, op,
              ": expected uniforms of shape (N, K) = (", std::to_string(s.N), ", K >= 1), got ",
              shape_str(uniforms.sizes()));
  TORCH_CHECK(uniforms.scalar_type() == at::kDouble, op, ": expected uniforms of dtype float64, got ",
              uniforms.scalar_type());
  s.K = uniforms.size(1);
  TORCH_CHECK(byte_emb.dim() == 2 && byte_emb.size(0) == kDecodeVocab && byte_emb.size(1) == s.C, op,
              ": expected byte_emb of shape (256, ", std::to_string(s.C), "), got ", shape_str(byte_emb.sizes()));
  TORCH_CHECK(slot_emb.dim() == 2 && slot_emb.size(0) >= s.K && slot_emb.size(1) == s.C, op,
              ": expected slot_emb of shape (>= K = ", std::to_string(s.K), ", ", std::to_string(s.C), "), got ",
              shape_str(slot_emb.sizes()));
  for (const auto* t : {&first, &uniforms, &byte_emb, &slot_emb, &head}) {
    TORCH_CHECK(t->device() == dev, op, ": expected every argument on context's device (", dev.str(), "), got ",
                t->device().str());
  }
  TORCH_CHECK(byte_emb.is_floating_point() && slot_emb.is_floating_point(), op,
              ": expected floating-point embeddings, got byte_emb ", byte_emb.scalar_type(), " and slot_emb ",
              slot_emb.scalar_type());
  const std::string layers_why = decode_layers_rule(s.layers);
  TORCH_CHECK(layers_why.empty(), op, ": ", layers_why);
  for (auto list : {norm1, proj, norm2, fc, fc_proj}) {
    TORCH_CHECK((int64_t)list.size() == s.layers, op, ": expected one tensor per layer in every weight list (",
                std::to_string(s.layers), ", as qkv), got a list of ", std::to_string(list.size()));
  }
  const std::string heads_why = decode_heads_rule(s.C, heads);
  TORCH_CHECK(heads_why.empty(), op, ": ", heads_why);
  TORCH_CHECK(fc[0].dim() == 2, op, ": expected fc[0] of shape (F, C), got ", shape_str(fc[0].sizes()));
  s.F = fc[0].size(0);
  TORCH_CHECK(s.F >= 1, op, ": expected fc[0] of shape (F, C) with F >= 1 hidden units, got ", shape_str(fc[0].sizes()));
  const auto wt = qkv[0].scalar_type();
  const std::string dtype_why = decode_dtype_rule(wt);
  TORCH_CHECK(dtype_why.empty(), op, ": ", dtype_why);
  for (int64_t l = 0; l < s.layers; ++l) {
    const std::string i = "[" + std::to_string(l) + "]";
    check_decode_vector(norm1[l], "norm1", s.C, dev);
    check_decode_vector(norm2[l], "norm2", s.C, dev);
    check_decode_matrix(qkv[l], "qkv" + i, 3 * s.C, s.C, wt, dev);
    check_decode_matrix(proj[l], "proj" + i, s.C, s.C, wt, dev);
    check_decode_matrix(fc[l], "fc" + i, s.F, s.C, wt, dev);
    check_decode_matrix(fc_proj[l], "fc_proj" + i, s.C, s.F, wt, dev);
  }
  check_decode_vector(norm_f, "norm_f", s.C, dev);
  check_decode_matrix(head, "head", kDecodeVocab, s.C, wt, dev);
  // 0 = greedy; else at least 1e-30 (fft_tensor/ops.py MIN_TEMPERATURE): logits / temperature overflows
  // double (inf - inf = NaN) only far below it, and no sampling needs to go under it.
  TORCH_CHECK(temperature == 0 || (temperature >= 1e-30 && temperature < INFINITY), op,
              ": expected temperature 0 (greedy) or a finite number >= 1e-30, got ", std::to_string(temperature));
  TORCH_CHECK(top_k >= 0, op, ": expected top_k >= 0 (0: no top-k filter), got ", std::to_string(top_k));
  return s;
}

}  // namespace fft_tensor
