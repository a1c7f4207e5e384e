// chunk_decode on the CPU: the same computation as the CUDA kernel (fft_tensor/ops.py says what it
// computes), one row at a time, rows in parallel. float32 arithmetic, the byte pick in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../cpu_dot.h"
#include "common.h"

namespace fft_tensor {
namespace {

struct CpuWeights {
  std::vector<const float*> norm1, norm2;
  const float *byte_emb, *slot_emb, *norm_f;
};

// out = W v, each row a dot8 (csrc/cpu_dot.h). Rows are split over threads (one launch has one row
// of the batch at generation); every row is summed the same way whatever the thread count.
template <typename w_t>
void matvec(const w_t* W, const float* v, int64_t rows, int64_t cols, float* out) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 32768 / cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) out[r] = dot8<float>(W + r * cols, v, cols);
  });
}

void rms_norm(const float* x, const float* w, int64_t C, double eps, float* out) {
  float ss = 0.f;
  for (int64_t i = 0; i < C; ++i) ss += x[i] * x[i];
  const float r = 1.f / std::sqrt(ss / (float)C + (float)eps);
  for (int64_t i = 0; i < C; ++i) out[i] = x[i] * r * w[i];
}

// The byte drawn from one slot's logits: fft_lm.generation.sample_bytes's rule (argmax, first index
// on ties and NaN as the largest, when temperature == 0; else inverse CDF at u of softmax(logits /
// temperature) over the top_k largest).
int64_t pick_byte(const float* logits, double u, double temperature, int64_t top_k) {
  constexpr int V = kDecodeVocab;
  if (temperature == 0) {
    int best = 0;
    for (int i = 1; i < V; ++i) {
      const bool nan_i = std::isnan(logits[i]), nan_b = std::isnan(logits[best]);
      if ((nan_i && !nan_b) || (!nan_b && logits[i] > logits[best])) best = i;
    }
    return best;
  }
  double s[V];
  for (int i = 0; i < V; ++i) s[i] = (double)logits[i] / temperature;
  if (top_k > 0 && top_k < V) {
    double masked[V];
    for (int i = 0; i < V; ++i) {
      int greater = 0;  // s[i] is among the top_k iff fewer than top_k scores exceed it
      for (int j = 0; j < V; ++j) greater += s[j] > s[i];
      masked[i] = greater < top_k ? s[i] : -std::numeric_limits<double>::infinity();
    }
    for (int i = 0; i < V; ++i) s[i] = masked[i];
  }
  double m = s[0];
  for (int i = 1; i < V; ++i) m = std::max(m, s[i]);
  double total = 0;
  for (int i = 0; i < V; ++i) total += (s[i] = std::exp(s[i] - m));
  double cdf[V], run = 0;
  for (int i = 0; i < V; ++i) cdf[i] = (run += s[i] / total);
  const double target = u * cdf[V - 1];
  for (int i = 0; i < V; ++i)
    if (cdf[i] > target) return i;
  return V - 1;
}

template <typename w_t>
void decode_rows(const DecodeShape& s, const at::Tensor& context, const at::Tensor& first, const at::Tensor& uniforms,
                 const CpuWeights& cw, at::TensorList qkv, at::TensorList proj, at::TensorList fc,
                 at::TensorList fc_proj, const at::Tensor& head, double eps, double temperature, int64_t top_k,
                 at::Tensor& logits, at::Tensor& bytes) {
  const int64_t C = s.C, F = s.F, K = s.K, H = s.H, Dh = C / H, V = kDecodeVocab;
  const float* ctx = context.data_ptr<float>();
  const int64_t* first_p = first.data_ptr<int64_t>();
  const double* uni = uniforms.data_ptr<double>();
  float* logits_p = logits.data_ptr<float>();
  int64_t* bytes_p = bytes.data_ptr<int64_t>();
  std::vector<const w_t*> Wqkv, Wproj, Wfc, Wfcp;
  for (int64_t l = 0; l < s.layers; ++l) {
    Wqkv.push_back(qkv[l].data_ptr<w_t>());
    Wproj.push_back(proj[l].data_ptr<w_t>());
    Wfc.push_back(fc[l].data_ptr<w_t>());
    Wfcp.push_back(fc_proj[l].data_ptr<w_t>());
  }
  const w_t* Whead = head.data_ptr<w_t>();
  const float scale = 1.f / std::sqrt((float)Dh);
  at::parallel_for(0, s.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> x(C), a(C), y(C), qkv_out(3 * C), hid(F), delta(C), scores(K);
    std::vector<float> kc(s.layers * K * C), vc(s.layers * K * C);
    for (int64_t n = begin; n < end; ++n) {
      int64_t byte = first_p[n];
      TORCH_CHECK(byte >= 0 && byte < V, "chunk_decode: expected first bytes in [0, 255], got ", std::to_string(byte),
                  " at row ", std::to_string(n));
      for (int64_t j = 0; j < K; ++j) {
        for (int64_t i = 0; i < C; ++i)
          x[i] = cw.byte_emb[byte * C + i] + cw.slot_emb[j * C + i] + ctx[n * C + i];
        for (int64_t l = 0; l < s.layers; ++l) {
          float* kl = kc.data() + l * K * C;
          float* vl = vc.data() + l * K * C;
          rms_norm(x.data(), cw.norm1[l], C, eps, a.data());
          matvec(Wqkv[l], a.data(), 3 * C, C, qkv_out.data());
          std::copy(qkv_out.begin() + C, qkv_out.begin() + 2 * C, kl + j * C);
          std::copy(qkv_out.begin() + 2 * C, qkv_out.end(), vl + j * C);
          for (int64_t h = 0; h < H; ++h) {  // causal attention of slot j over slots 0..j
            const float* q = qkv_out.data() + h * Dh;
            float m = -INFINITY;
            for (int64_t i = 0; i <= j; ++i) {
              float dot = 0.f;
              for (int64_t d = 0; d < Dh; ++d) dot += q[d] * kl[i * C + h * Dh + d];
              scores[i] = dot * scale;
              m = std::max(m, scores[i]);
            }
            float total = 0.f;
            for (int64_t i = 0; i <= j; ++i) total += (scores[i] = std::exp(scores[i] - m));
            for (int64_t d = 0; d < Dh; ++d) {
              float acc = 0.f;
              for (int64_t i = 0; i <= j; ++i) acc += scores[i] * vl[i * C + h * Dh + d];
              y[h * Dh + d] = acc / total;
            }
          }
          matvec(Wproj[l], y.data(), C, C, delta.data());
          for (int64_t i = 0; i < C; ++i) x[i] += delta[i];
          rms_norm(x.data(), cw.norm2[l], C, eps, a.data());
          matvec(Wfc[l], a.data(), F, C, hid.data());
          for (auto& v : hid) v = 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));  // exact GELU
          matvec(Wfcp[l], hid.data(), C, F, delta.data());
          for (int64_t i = 0; i < C; ++i) x[i] += delta[i];
        }
        rms_norm(x.data(), cw.norm_f, C, eps, a.data());
        float* out = logits_p + (n * K + j) * V;
        matvec(Whead, a.data(), V, C, out);
        byte = pick_byte(out, uni[n * K + j], temperature, top_k);
        bytes_p[n * K + j] = byte;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> chunk_decode_cpu(const at::Tensor& context, const at::Tensor& first,
                                                    const at::Tensor& uniforms, const at::Tensor& byte_emb,
                                                    const at::Tensor& slot_emb, at::TensorList norm1,
                                                    at::TensorList qkv, at::TensorList proj, at::TensorList norm2,
                                                    at::TensorList fc, at::TensorList fc_proj,
                                                    const at::Tensor& norm_f, const at::Tensor& head, int64_t heads,
                                                    double eps, double temperature, int64_t top_k) {
  const DecodeShape s = check_chunk_decode_args(context, first, uniforms, byte_emb, slot_emb, norm1, qkv, proj, norm2,
                                                fc, fc_proj, norm_f, head, heads, temperature, top_k);
  auto f32 = [](const at::Tensor& t) { return t.to(at::kFloat).contiguous(); };
  std::vector<at::Tensor> keep;  // owners of the float32 copies the raw pointers below read
  CpuWeights cw;
  keep.push_back(f32(byte_emb));
  cw.byte_emb = keep.back().data_ptr<float>();
  keep.push_back(f32(slot_emb));
  cw.slot_emb = keep.back().data_ptr<float>();
  keep.push_back(f32(norm_f));
  cw.norm_f = keep.back().data_ptr<float>();
  for (int64_t l = 0; l < s.layers; ++l) {
    keep.push_back(f32(norm1[l]));
    cw.norm1.push_back(keep.back().data_ptr<float>());
    keep.push_back(f32(norm2[l]));
    cw.norm2.push_back(keep.back().data_ptr<float>());
  }
  std::vector<at::Tensor> qkv_c, proj_c, fc_c, fcp_c;
  for (int64_t l = 0; l < s.layers; ++l) {
    qkv_c.push_back(qkv[l].contiguous());
    proj_c.push_back(proj[l].contiguous());
    fc_c.push_back(fc[l].contiguous());
    fcp_c.push_back(fc_proj[l].contiguous());
  }
  const at::Tensor head_c = head.contiguous(), ctx = context.contiguous(), first_c = first.contiguous(),
                   uni = uniforms.contiguous();
  at::Tensor logits = at::empty({s.N, s.K, kDecodeVocab}, context.options());
  at::Tensor bytes = at::empty({s.N, s.K}, first.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, qkv[0].scalar_type(), "chunk_decode", [&] {
    decode_rows<scalar_t>(s, ctx, first_c, uni, cw, qkv_c, proj_c, fc_c, fcp_c, head_c, eps, temperature, top_k,
                          logits, bytes);
  });
  return {logits, bytes};
}

}  // namespace

TORCH_LIBRARY_IMPL(fft_tensor, CPU, m) { m.impl("chunk_decode", &chunk_decode_cpu); }

}  // namespace fft_tensor
