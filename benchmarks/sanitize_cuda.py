"""Small CUDA runs of every kernel path, for compute-sanitizer (memcheck, racecheck, synccheck).

    compute-sanitizer --tool memcheck python benchmarks/sanitize_cuda.py
    compute-sanitizer --tool racecheck python benchmarks/sanitize_cuda.py --quick

Each case also checks the values against the float64 CPU path, so a run under the sanitizer proves
both "no invalid access or race" and "right answer" for the shapes it covers: every causal_conv plan
(overlap-save windows, one window, minimum and maximum fused FFT sizes, the cuFFT fallback), odd B,
taps > L, float32/bfloat16/float16, forward, grad_u and grad_k; phase_rotate's row fast path and its
TensorIterator path, forward and backward. Not a test (tests/ has those); a debugging aid.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the in-place build, uninstalled
import fft_tensor  # noqa: E402
from fft_tensor.ops import causal_conv_plan  # noqa: E402

CONV_CASES = [  # (B, D, L, Lk): plan noted for the default policy
    (3, 2, 7, 3),        # N = 64, the smallest fused FFT, one window
    (1, 3, 1000, 1000),  # one window, N = 2048
    (3, 2, 2049, 2000),  # one window, N = 4096, L > N/2, odd B: the fused backward's full window
    (3, 1, 4096, 4096),  # one window, N = 8192: the fused backward's half window, its largest size
    (3, 2, 2500, 100),   # overlap-save, N = 1024, 3 windows, odd B
    (2, 2, 100, 300),    # taps > L
    (1, 1, 8192, 8192),  # N = 16384, 1024 threads, the largest fused FFT (grad_k: the one-row kernel, kHalf)
    (2, 1, 8193, 8000),  # N = 16384, L > N/2: the one-row grad_k kernel's full window
    (2, 1, 20000, 20000),  # N = 65536: the four-step kernels, on 3 x 16384 points (FOURSTEP3: R = 3)
]
# and the one-row grad_k kernel's kHalf variant with 3 rows per block (its per-row maxima double buffer)
# and the four-step kernels on 3 x 16384 points (FOURSTEP3: R = 3, N2 = 256), odd B
QUICK = CONV_CASES[:6] + [(3, 1, 5000, 5000), (3, 1, 16385, 16385)]
# grad_k with several groups per channel (FFT_TENSOR_CONV_GRAD_K_GROUPS=3, at most the items): the
# default rule gives one group to the one-window plans above. Row pairs: 2 and 3 groups (the fused
# backward kernel and the pair grad_k kernel); then the one-row kernel (N = 16384), 3 groups.
GROUPS = [(3, 2, 2049, 2000), (5, 1, 1000, 1000), (3, 1, 5000, 5000)]
QUICK_GROUPS = GROUPS[:2]
# clusters of 2 and 4 blocks (sm_90). By default (9000, 9000) takes the padded kernel and the other two
# the general one; FFT_TENSOR_CONV_CLUSTER_PADDED=1 or =exchange sends (20000, 20000) to the padded ones.
# They run with FFT_TENSOR_CONV_FOURSTEP=0 (the four-step kernels are the default there).
CLUSTER = [(3, 1, 9000, 9000), (2, 1, 20000, 20000), (1, 1, 20000, 9000)]
# the four-step kernels: N = 32K (N1 = 64, N2 = 512, odd B), 64K (20000: 3 x 16K points, FOURSTEP3's R = 3),
# 128K (taps < L), 1M (300000: 3 x 256K points, R = 3, N2 = 4096)
FOURSTEP = [(3, 1, 9000, 9000), (2, 2, 20000, 20000), (3, 1, 70000, 60000), (1, 1, 300000, 300000)]
# the real-window kernels: one-window 32K-point plans (the smallest, Lk > L, Lk < L, the largest): the
# forward, grad_u alone (the forward kernel backwards in time) and every gradient (the channel kernel).
REAL_WINDOW = [(1, 2, 8193, 8193), (3, 1, 10000, 12000), (2, 1, 12000, 10000), (2, 2, 16384, 16384), (1, 2, 24576, 8193)]
# the radix-3 windows (FFT_TENSOR_CONV_RADIX3=1): 3072 points (odd B, kHalf), 6144 (L > N/2: the general
# kernel), 12288 (kHalf; grad_k beside it: the one-row kernel of 16384 points), and the spectrum kernel's
# last odd channel (D = 3).
# Then the real-window plans' 24576 real points (kHalf; L > 12288: the general kernel).
RADIX3 = [(3, 3, 1500, 1500), (2, 1, 4000, 2000), (1, 1, 6144, 6144), (2, 1, 12288, 12288), (1, 2, 14000, 9000)]


def rel_err(a, b):
    t = torch.complex128 if a.is_complex() else torch.float64
    a, b = a.detach().to(t), b.detach().to(t)
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def check_conv(B, D, L, Lk, dtype):
    u = torch.randn(B, D, L, device="cuda", dtype=dtype, requires_grad=True)
    k = (torch.randn(D, Lk, device="cuda") / Lk ** 0.5).requires_grad_()
    skip = torch.randn(D, device="cuda", requires_grad=True)
    y = fft_tensor.causal_conv(u, k, skip)
    gy = torch.randn_like(y)
    gu, gk, gs = torch.autograd.grad(y, (u, k, skip), gy)
    u64, k64, s64 = (t.detach().double().cpu().requires_grad_() for t in (u, k, skip))
    y64 = fft_tensor.causal_conv(u64, k64, s64)
    ref = torch.autograd.grad(y64, (u64, k64, s64), gy.double().cpu())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    errs = [rel_err(y.cpu(), y64)] + [rel_err(a.cpu(), b) for a, b in zip((gu, gk, gs), ref)]
    ok = all(e < tol for e in errs)
    print(f"causal_conv B={B} D={D} L={L} Lk={Lk} {str(dtype)[6:]:8s} plan={causal_conv_plan(L, Lk)} "
          f"rel err y/gu/gk/gskip = {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def check_conv_grad_u(B, D, L, Lk, dtype):
    """Forward and grad_u alone (no grad_k): the paths that serve input gradients of frozen taps."""
    u = torch.randn(B, D, L, device="cuda", dtype=dtype)
    k = torch.randn(D, Lk, device="cuda") / Lk ** 0.5
    skip = torch.randn(D, device="cuda")
    gy = torch.randn_like(u)
    y = fft_tensor.causal_conv(u, k, skip)
    gu = torch.ops.fft_tensor.causal_conv_backward(gy, u, k, skip, True, False)[0]
    u64, k64, s64 = (t.double().cpu().requires_grad_() for t in (u, k, skip))
    y64 = fft_tensor.causal_conv(u64, k64, s64)
    gu64 = torch.autograd.grad(y64, u64, gy.double().cpu())[0]
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    errs = [rel_err(y.cpu(), y64), rel_err(gu.cpu(), gu64)]
    ok = all(e < tol for e in errs)
    print(f"causal_conv B={B} D={D} L={L} Lk={Lk} {str(dtype)[6:]:8s} plan={causal_conv_plan(L, Lk)} "
          f"rel err y/gu (grad_u alone) = {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def check_phase_rotate(shape, theta_shape, contiguous):
    z = torch.randn(*shape, dtype=torch.complex64, device="cuda")
    if not contiguous:
        z = z.transpose(0, 1)
    theta = torch.randn(*theta_shape, device="cuda", requires_grad=True)
    z.requires_grad_()
    w = fft_tensor.phase_rotate(z, theta)
    g = torch.randn_like(w)
    gz, gt = torch.autograd.grad(w, (z, theta), g)
    z64, t64 = z.detach().cdouble().cpu().requires_grad_(), theta.detach().double().cpu().requires_grad_()
    w64 = z64 * torch.polar(torch.ones_like(t64), t64)
    rz, rt = torch.autograd.grad(w64, (z64, t64), g.cdouble().cpu())
    errs = [rel_err(w.cpu(), w64), rel_err(gz.cpu(), rz), rel_err(gt.cpu(), rt)]
    ok = all(e < 1e-5 for e in errs)
    print(f"phase_rotate z{tuple(z.shape)} theta{tuple(theta_shape)} contiguous={contiguous} "
          f"rel err w/gz/gtheta = {' '.join(f'{e:.1e}' for e in errs)} {'ok' if ok else 'FAIL'}", flush=True)
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="only the small cases (racecheck is slow)")
    p.add_argument("--cluster", action="store_true", help="only the thread-block cluster cases, float32")
    p.add_argument("--fourstep", action="store_true", help="only the four-step cases, float32 and bfloat16")
    p.add_argument("--radix3", action="store_true",
                   help="only the radix-3 window cases (FFT_TENSOR_CONV_RADIX3=1: forward, grad_u alone, every "
                        "gradient), float32 and bfloat16")
    p.add_argument("--real-window", action="store_true",
                   help="only the real-window cases (forward, grad_u alone, every gradient), float32 and bfloat16, "
                        "both variants (FFT_TENSOR_CONV_REAL_WINDOW_REGS=0 and 1)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("sanitize_cuda.py needs a CUDA GPU")
    torch.manual_seed(0)
    ok = True
    if args.radix3:
        os.environ["FFT_TENSOR_CONV_RADIX3"] = "1"
        os.environ["FFT_TENSOR_CONV_REAL_WINDOW"] = "1"  # the real-window backward for these few channels
        for case in RADIX3:
            for dtype in (torch.float32, torch.bfloat16):
                ok &= check_conv_grad_u(*case, dtype)
                ok &= check_conv(*case, dtype)
        print("ALL OK" if ok else "SOME CASES FAILED")
        sys.exit(0 if ok else 1)
    if args.real_window:
        os.environ["FFT_TENSOR_CONV_REAL_WINDOW"] = "1"
        for regs in ("0", "1"):  # the shared-memory and the register variants of both kernels
            os.environ["FFT_TENSOR_CONV_REAL_WINDOW_REGS"] = regs
            print(f"FFT_TENSOR_CONV_REAL_WINDOW_REGS={regs}", flush=True)
            for case in REAL_WINDOW:
                for dtype in (torch.float32, torch.bfloat16):
                    ok &= check_conv_grad_u(*case, dtype)
                    ok &= check_conv(*case, dtype)
        print("ALL OK" if ok else "SOME CASES FAILED")
        sys.exit(0 if ok else 1)
    if args.cluster or args.fourstep:
        os.environ["FFT_TENSOR_CONV_REAL_WINDOW"] = "0"  # (9000, 9000) is a 32K-point plan
        os.environ["FFT_TENSOR_CONV_FOURSTEP"] = "0" if args.cluster else "1"
        for case in CLUSTER if args.cluster else FOURSTEP:
            for dtype in (torch.float32,) if args.cluster else (torch.float32, torch.bfloat16):
                ok &= check_conv(*case, dtype)
        print("ALL OK" if ok else "SOME CASES FAILED")
        sys.exit(0 if ok else 1)
    for case in (QUICK if args.quick else CONV_CASES):
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            ok &= check_conv(*case, dtype)
    os.environ["FFT_TENSOR_CONV_GRAD_K_GROUPS"] = "3"
    print("FFT_TENSOR_CONV_GRAD_K_GROUPS=3", flush=True)
    for case in (QUICK_GROUPS if args.quick else GROUPS):
        for dtype in (torch.float32, torch.bfloat16):
            ok &= check_conv(*case, dtype)
    del os.environ["FFT_TENSOR_CONV_GRAD_K_GROUPS"]
    ok &= check_phase_rotate((6, 1000), (1000,), True)       # row fast path, theta broadcast
    ok &= check_phase_rotate((5, 7, 33), (7, 33), True)       # odd columns: TensorIterator path
    ok &= check_phase_rotate((8, 6, 10), (8, 1), False)       # non-contiguous z (6, 8, 10), size-1 theta dim
    torch.cuda.synchronize()
    print("ALL OK" if ok else "SOME CASES FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
