"""One forward and one backward of causal_conv per shape, bracketed for Nsight Compute.

    ncu --profile-from-start off --kernel-name 'regex:conv_|columns_|rows_' --section SpeedOfLight \
        --section Occupancy python benchmarks/profile_causal_conv.py

The shapes are bench_causal_conv.py's (B=8, D=768, fp32 unless --dtype bf16): the fused one-block FFT at L=1K (Lk=L and
Lk=128) and 4K, and the four-step FFT (fourstep.cuh: columns_*, rows_* kernels) at 16K and 64K. Each shape runs once unprofiled first (plans,
lazy init), then once between cudaProfilerStart/Stop. Prints nothing useful itself; ncu's report is
the output (device_run.sh's `ncu` stage keeps it in $OUT/ncu.txt).

    python benchmarks/profile_causal_conv.py --breakdown

prints instead, per shape and for the forward and forward+backward: the time per call seen by CUDA
events (what bench_causal_conv.py reports), the same call replayed from a CUDA graph (GPU time
without host launch gaps), host wall time per call, and each kernel's device time from
torch.profiler: where a call's time goes, host overhead included.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fft_tensor  # noqa: E402
from common import record_cuda_graph  # noqa: E402
from fft_tensor import ops  # noqa: E402

SHAPES = [(1024, 1024), (1024, 128), (4096, 4096), (16384, 16384), (65536, 65536)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--max-length", type=int, default=65536, help="skip shapes with L above this")
    p.add_argument("--breakdown", action="store_true", help="torch.profiler / CUDA graph breakdown instead of ncu brackets")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--shapes", default=None, metavar="L:Lk,...",
                   help="shapes instead of the default list, e.g. 1024:128,4096:128")
    args = p.parse_args()
    if args.shapes:
        try:
            args.shape_list = [tuple(int(v) for v in item.split(":")) for item in args.shapes.split(",")]
        except ValueError:
            p.error(f"--shapes: expected L:Lk pairs separated by commas, got {args.shapes!r}")
        if any(len(t) != 2 or min(t) < 1 for t in args.shape_list):
            p.error(f"--shapes: expected positive L:Lk pairs, got {args.shapes!r}")
    else:
        args.shape_list = SHAPES
    if args.breakdown:
        return breakdown(args)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    for L, Lk in args.shape_list:
        if L > args.max_length:
            continue
        u = torch.randn(args.batch, args.dim, L, device="cuda", dtype=dtype)
        k = torch.randn(args.dim, Lk, device="cuda") / Lk ** 0.5
        gy = torch.randn_like(u)
        for profiled in (False, True):
            torch.cuda.synchronize()
            if profiled:
                torch.cuda.cudart().cudaProfilerStart()
            fft_tensor.causal_conv(u, k)
            torch.ops.fft_tensor.causal_conv_backward(gy, u, k, None, True, True)
            torch.cuda.synchronize()
            if profiled:
                torch.cuda.cudart().cudaProfilerStop()
        print(f"profiled L={L} Lk={Lk} plan={ops.causal_conv_plan(L, Lk)}", flush=True)
        del u, k, gy


def _event_ms(fn, reps=50):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _wall_ms(fn, reps=50):
    import time
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    t1 = time.perf_counter()  # host time to issue reps calls (the GPU may still be busy)
    torch.cuda.synchronize()
    return (t1 - t0) * 1e3 / reps


def _graph_ms(fn, reps=50):
    return _event_ms(record_cuda_graph(fn).replay, reps)


def _kernel_ms(fn, reps=10):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
        if t > 0:
            rows.append((t / 1e3 / reps, e.count // reps, e.key))
    return sorted(rows, reverse=True)


def breakdown(args):
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    print(f"# causal_conv breakdown, B={args.batch} D={args.dim} {args.dtype}, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for L, Lk in args.shape_list:
        if L > args.max_length:
            continue
        u = torch.randn(args.batch, args.dim, L, device="cuda", dtype=dtype)
        k = torch.randn(args.dim, Lk, device="cuda") / Lk ** 0.5
        gy = torch.randn_like(u)
        uq, kq = u.clone().requires_grad_(), k.clone().requires_grad_()
        fwd = lambda: torch.ops.fft_tensor.causal_conv(u, k, None)  # noqa: E731
        fwd_py = lambda: fft_tensor.causal_conv(u, k)  # noqa: E731
        bwd = lambda: torch.ops.fft_tensor.causal_conv_backward(gy, u, k, None, True, True)  # noqa: E731

        def fwd_bwd():  # autograd.grad, as the benchmark: .backward would add a gradient-accumulation kernel
            torch.autograd.grad(fft_tensor.causal_conv(uq, kq), (uq, kq), gy)

        print(f"\n## L={L} Lk={Lk} plan={ops.causal_conv_plan(L, Lk)}")
        for name, fn in (("fwd (fft_tensor.causal_conv)", fwd_py), ("fwd (torch.ops, no autograd layer)", fwd),
                         ("bwd op (grad_u and grad_k)", bwd), ("fwd+bwd (autograd)", fwd_bwd)):
            fn()
            ev, wall = _event_ms(fn), _wall_ms(fn)
            try:
                gr = f"{_graph_ms(fn):.4f}" if name != "fwd+bwd (autograd)" else "n/a"
            except Exception as e:  # graph capture of autograd .backward is not attempted
                gr = f"n/a ({type(e).__name__})"
            print(f"{name}: events {ev:.4f} ms, CUDA graph {gr} ms, host wall per call {wall:.4f} ms")
            for t, n, key in _kernel_ms(fn):
                print(f"    {t:8.4f} ms  x{n}  {key[:110]}")
        del u, k, gy, uq, kq


if __name__ == "__main__":
    main()
