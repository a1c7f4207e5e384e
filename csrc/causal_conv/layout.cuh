// Rows made contiguous: (B, D, L) with time contiguous, from a channels-contiguous u (a transposed
// (B, L, D) activation, stride(1) == 1, the layout an LM's projections produce). Tensor::contiguous()
// copies that with a generic strided elementwise kernel whose reads or writes are uncoalesced: on the
// H100 it took 118 us for a (32, 512, 1024) bfloat16 tensor (0.55 TB/s; three such copies per layer
// were 11% of the base512 LM's training step at L = 1K). A tiled transpose through shared memory
// reads and writes whole sectors on both sides.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

namespace fft_tensor {
namespace layout {

constexpr int kTile = 32, kRowsPerPass = 8;

// in[b, d, t] at in + b*sb + d + t*st (channels contiguous); out[b, d, t] contiguous (B, D, L).
// grid (ceil(L/32), ceil(D/32), B), block (32, 8).
template <typename scalar_t>
__global__ void __launch_bounds__(kTile * kRowsPerPass)
    channels_to_rows_kernel(const scalar_t* __restrict__ in, int64_t sb, int64_t st, scalar_t* __restrict__ out,
                            int64_t D, int64_t L) {
  __shared__ scalar_t tile[kTile][kTile + 1];  // +1: the column reads hit 32 different banks
  const int64_t b = blockIdx.z, d0 = (int64_t)blockIdx.y * kTile, t0 = (int64_t)blockIdx.x * kTile;
  const scalar_t* src = in + b * sb;
  for (int r = threadIdx.y; r < kTile; r += kRowsPerPass) {  // r: time, threadIdx.x: channel (coalesced)
    const int64_t t = t0 + r, d = d0 + threadIdx.x;
    if (t < L && d < D) tile[r][threadIdx.x] = src[d + t * st];
  }
  __syncthreads();
  scalar_t* dst = out + b * D * L;
  for (int r = threadIdx.y; r < kTile; r += kRowsPerPass) {  // r: channel, threadIdx.x: time (coalesced)
    const int64_t d = d0 + r, t = t0 + threadIdx.x;
    if (t < L && d < D) dst[d * L + t] = tile[threadIdx.x][r];
  }
}

// t as a contiguous (B, D, L) tensor: t itself when it already is, the tiled transpose when its
// channels are contiguous (float32 / bfloat16 / float16), Tensor::contiguous() otherwise.
inline at::Tensor rows_contiguous(const at::Tensor& t) {
  if (t.is_contiguous()) return t;
  const auto type = t.scalar_type();
  if (t.dim() != 3 || t.stride(1) != 1 || t.numel() == 0 ||
      !(type == at::kFloat || type == at::kBFloat16 || type == at::kHalf))
    return t.contiguous();
  const int64_t B = t.size(0), D = t.size(1), L = t.size(2);
  if (B > 65535 || (D + kTile - 1) / kTile > 65535) return t.contiguous();
  at::Tensor out = at::empty(t.sizes(), t.options().memory_format(at::MemoryFormat::Contiguous));
  const dim3 grid((unsigned)((L + kTile - 1) / kTile), (unsigned)((D + kTile - 1) / kTile), (unsigned)B);
  const dim3 block(kTile, kRowsPerPass);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, type, "rows_contiguous", [&] {
    channels_to_rows_kernel<scalar_t><<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
        t.data_ptr<scalar_t>(), t.stride(0), t.stride(2), out.data_ptr<scalar_t>(), D, L);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace layout
}  // namespace fft_tensor
