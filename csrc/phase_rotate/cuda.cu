// phase_rotate on CUDA.
// Fast path (complex64, z contiguous, theta contiguous over z's trailing dims and broadcast over
// the leading ones, the usual "per-channel angle shared by the batch"): z is viewed as R rows of
// P columns; each thread owns two adjacent columns, computes sincos once and streams the rows
// with 16-byte loads and stores. The backward also reduces grad_theta over the rows in registers,
// so neither direction materialises a broadcast theta. Everything else goes through
// TensorIterator (any strides, broadcasting, 64-bit sizes split into 32-bit pieces).
#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/native/cuda/Loops.cuh>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include "common.h"

namespace fft_tensor {
namespace {

constexpr int kThreads = 256;
constexpr int kRowUnroll = 4;

// Rows of z (and out) are P complex64 = 2P floats; thread j handles floats [4j, 4j+4) of every row.
__global__ void phase_rotate_rows_kernel(const float4* __restrict__ z, const float2* __restrict__ theta,
                                         float4* __restrict__ out, int64_t pairs_per_row, int64_t rows,
                                         int64_t rows_per_block) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= pairs_per_row) return;
  const float2 t = theta[j];
  float s0, c0, s1, c1;
  sincosf(t.x, &s0, &c0);
  sincosf(t.y, &s1, &c1);
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_block;
  const int64_t r1 = min(rows, r0 + rows_per_block);
  int64_t r = r0;
  for (; r + kRowUnroll <= r1; r += kRowUnroll) {
    float4 v[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) v[u] = z[(r + u) * pairs_per_row + j];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      const float4 a = v[u];
      out[(r + u) * pairs_per_row + j] =
          make_float4(a.x * c0 - a.y * s0, a.x * s0 + a.y * c0, a.z * c1 - a.w * s1, a.z * s1 + a.w * c1);
    }
  }
  for (; r < r1; ++r) {
    const float4 a = z[r * pairs_per_row + j];
    out[r * pairs_per_row + j] =
        make_float4(a.x * c0 - a.y * s0, a.x * s0 + a.y * c0, a.z * c1 - a.w * s1, a.z * s1 + a.w * c1);
  }
}

// grad_z = g * exp(-i t); partial[blockIdx.y, 2j..2j+1] = sum over this block's rows of
// Im(g * exp(-i t) * conj(z)).
__global__ void phase_rotate_rows_backward_kernel(const float4* __restrict__ g, const float4* __restrict__ z,
                                                  const float2* __restrict__ theta, float4* __restrict__ grad_z,
                                                  float2* __restrict__ partial, int64_t pairs_per_row, int64_t rows,
                                                  int64_t rows_per_block) {
  const int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= pairs_per_row) return;
  const float2 t = theta[j];
  float s0, c0, s1, c1;
  sincosf(t.x, &s0, &c0);
  sincosf(t.y, &s1, &c1);
  const int64_t r0 = (int64_t)blockIdx.y * rows_per_block;
  const int64_t r1 = min(rows, r0 + rows_per_block);
  float acc0 = 0.f, acc1 = 0.f;
  int64_t r = r0;
  auto step = [&](const float4 gg, const float4 a, int64_t idx) {
    const float4 gz = make_float4(gg.x * c0 + gg.y * s0, gg.y * c0 - gg.x * s0, gg.z * c1 + gg.w * s1,
                                  gg.w * c1 - gg.z * s1);
    grad_z[idx] = gz;
    acc0 += gz.y * a.x - gz.x * a.y;
    acc1 += gz.w * a.z - gz.z * a.w;
  };
  for (; r + kRowUnroll <= r1; r += kRowUnroll) {
    float4 gv[kRowUnroll], zv[kRowUnroll];
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) {
      gv[u] = g[(r + u) * pairs_per_row + j];
      zv[u] = z[(r + u) * pairs_per_row + j];
    }
#pragma unroll
    for (int u = 0; u < kRowUnroll; ++u) step(gv[u], zv[u], (r + u) * pairs_per_row + j);
  }
  for (; r < r1; ++r) step(g[r * pairs_per_row + j], z[r * pairs_per_row + j], r * pairs_per_row + j);
  partial[(int64_t)blockIdx.y * pairs_per_row + j] = make_float2(acc0, acc1);
}

// The CUDA row path also wants complex64, an even column count (two per thread) and 16-byte
// aligned buffers. Returns P (columns) or 0 when it does not apply.
int64_t rows_fast_path_columns(const at::Tensor& z, const at::Tensor& theta,
                               std::initializer_list<const at::Tensor*> others = {}) {
  if (z.scalar_type() != at::kComplexFloat) return 0;
  for (auto* t : others)
    if (!t->is_contiguous() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16) return 0;
  const int64_t P = broadcast_columns(z, theta);
  // Narrow rows would leave most of each 256-thread block idle walking rows: TensorIterator is better.
  if (P < 128 || P % 2) return 0;
  if (reinterpret_cast<uintptr_t>(z.data_ptr()) % 16 || reinterpret_cast<uintptr_t>(theta.data_ptr()) % 8) return 0;
  return P;
}

struct RowGrid {
  dim3 grid;
  int64_t rows_per_block;
};

RowGrid row_grid(int64_t pairs, int64_t rows) {
  const int64_t bx = (pairs + kThreads - 1) / kThreads;
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // Enough blocks to fill the GPU several times over; rows split evenly among blockIdx.y.
  const int64_t want_y = std::max<int64_t>(1, (int64_t)sms * 8 / std::max<int64_t>(bx, 1));
  const int64_t by = std::min<int64_t>({rows, want_y, 65535});
  const int64_t per = (rows + by - 1) / by;
  return {dim3((unsigned)bx, (unsigned)((rows + per - 1) / per)), per};
}

}  // namespace

at::Tensor phase_rotate_cuda(const at::Tensor& z, const at::Tensor& theta) {
  check_phase_rotate_args(z, theta, "phase_rotate");
  c10::cuda::CUDAGuard guard(z.device());
  auto out = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
  if (z.numel() == 0) return out;
  if (const int64_t P = rows_fast_path_columns(z, theta, {&out})) {
    const int64_t pairs = P / 2, rows = z.numel() / P;
    auto g = row_grid(pairs, rows);
    phase_rotate_rows_kernel<<<g.grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float4*>(z.data_ptr()), reinterpret_cast<const float2*>(theta.data_ptr()),
        reinterpret_cast<float4*>(out.data_ptr()), pairs, rows, g.rows_per_block);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
  }
  auto iter = rotate_iter(out, z, theta);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_cuda", [&] {
    using C = c10::complex<scalar_t>;
    at::native::gpu_kernel(iter, [] GPU_LAMBDA(C a, scalar_t t) -> C {
      scalar_t s, c;
      ::sincos(t, &s, &c);
      return C(a.real() * c - a.imag() * s, a.real() * s + a.imag() * c);
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> phase_rotate_backward_cuda(const at::Tensor& grad, const at::Tensor& z,
                                                              const at::Tensor& theta) {
  check_phase_rotate_args(z, theta, "phase_rotate_backward");
  check_same_shape_grad(grad, z);
  c10::cuda::CUDAGuard guard(z.device());
  auto grad_z = at::empty(z.sizes(), z.options().memory_format(at::MemoryFormat::Contiguous));
  if (z.numel() == 0) return {grad_z, at::zeros_like(theta, at::MemoryFormat::Contiguous)};
  if (const int64_t P = rows_fast_path_columns(z, theta, {&grad, &grad_z})) {
    const int64_t pairs = P / 2, rows = z.numel() / P;
    auto g = row_grid(pairs, rows);
    auto partial = at::empty({(int64_t)g.grid.y, P}, theta.options());
    phase_rotate_rows_backward_kernel<<<g.grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<const float4*>(grad.data_ptr()), reinterpret_cast<const float4*>(z.data_ptr()),
        reinterpret_cast<const float2*>(theta.data_ptr()), reinterpret_cast<float4*>(grad_z.data_ptr()),
        reinterpret_cast<float2*>(partial.data_ptr()), pairs, rows, g.rows_per_block);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return {grad_z, partial.sum(0).reshape(theta.sizes())};
  }
  auto g_theta = at::empty(z.sizes(), theta.options().memory_format(at::MemoryFormat::Contiguous));
  auto iter = rotate_backward_iter(grad_z, g_theta, grad, z, theta);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "phase_rotate_backward_cuda", [&] {
    using C = c10::complex<scalar_t>;
    at::native::gpu_kernel_multiple_outputs(iter, [] GPU_LAMBDA(C gr, C a, scalar_t t) -> thrust::tuple<C, scalar_t> {
      scalar_t s, c;
      ::sincos(t, &s, &c);
      C gz(gr.real() * c + gr.imag() * s, gr.imag() * c - gr.real() * s);
      return thrust::make_tuple(gz, gz.imag() * a.real() - gz.real() * a.imag());
    });
  });
  return {grad_z, sum_to_theta(g_theta, theta)};
}

TORCH_LIBRARY_IMPL(fft_tensor, CUDA, m) {
  m.impl("phase_rotate", &phase_rotate_cuda);
  m.impl("phase_rotate_backward", &phase_rotate_backward_cuda);
}

}  // namespace fft_tensor
