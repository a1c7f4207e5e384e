"""causal_conv on the CPU against the torch.fft reference and torch's own depthwise conv1d (oneDNN).

    python benchmarks/bench_causal_conv_cpu.py [--batch 4] [--dim 64] [--lengths 1024,4096,16384]
        [--kernels 4,32,128,L] [--dtypes fp32,bf16] [--threads N] [--budget-s 0.5] [--out table.md]

The CPU path picks a direct sum over the taps for kernels of up to 128 taps and pocketfft (through ATen)
beyond (README, "causal_conv"). "ours, FFT path" is the same op with FFT_TENSOR_CONV_DIRECT_MAX_TAPS=0
(the op reads it on every call), measured in the same run, back to back with the others.
Timings are host wall-clock medians (time.perf_counter) after two warm-up calls, each method's
output checked against the float64 direct sum first. "fwd+bwd" is the forward plus the backward for
u and k (and the same for the baselines). Nothing here belongs in a test.
"""
import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402
from fft_tensor.reference import causal_conv_fft_reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def time_ms(fn, budget_s, min_reps=5, max_reps=200):
    for _ in range(2):
        fn()
    times = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_reps or (len(times) < max_reps and time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def conv1d_depthwise(u, k):
    """torch's own CPU route: a depthwise conv1d (oneDNN), the kernel flipped, the row padded on the left."""
    Lk = min(k.shape[-1], u.shape[-1])
    w = k[:, :Lk].flip(-1).unsqueeze(1).to(u.dtype)
    return F.conv1d(F.pad(u, (Lk - 1, 0)), w, groups=u.shape[1])


def fft_path(f):
    """f with the op's direct paths off for the duration of each call."""
    def run(*args):
        old = os.environ.get("FFT_TENSOR_CONV_DIRECT_MAX_TAPS")
        os.environ["FFT_TENSOR_CONV_DIRECT_MAX_TAPS"] = "0"
        try:
            return f(*args)
        finally:
            if old is None:
                del os.environ["FFT_TENSOR_CONV_DIRECT_MAX_TAPS"]
            else:
                os.environ["FFT_TENSOR_CONV_DIRECT_MAX_TAPS"] = old
    return run


def with_backward(f):
    def run(u, k, gy):
        y = f(u, k)
        torch.autograd.grad(y, (u, k), gy)
    return run


def parse_shape_args(p, kernels, kernels_help, budget_s):
    """The CPU benchmarks' shared flags (shapes, dtypes, threads, timing budget, output file) added to p,
    then parsed; --threads applied."""
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--lengths", default="1024,4096,16384")
    p.add_argument("--kernels", default=kernels, help=kernels_help)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--budget-s", type=float, default=budget_s, help="timed seconds per measurement")
    p.add_argument("--out", default=None, help="also write the table to this file")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args = parse_shape_args(p, "4,32,128,L", "comma-separated Lk; 'L' means Lk = L", budget_s=0.5)
    methods = {
        "ours": lambda u, k: fft_tensor.causal_conv(u, k),
        "ours, FFT path": lambda u, k: fft_tensor.causal_conv(u, k),  # run under fft_path, backward included
        "torch.fft": causal_conv_fft_reference,
        "conv1d": conv1d_depthwise,
    }
    switches = " ".join(f"{n}={v}" for n, v in sorted(os.environ.items()) if n.startswith("FFT_TENSOR_CONV_"))
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch}, D={args.dim}"
             + (f", {switches}" if switches else ""),
             "",
             "| L | Lk | dtype | ours fwd ms | ours, FFT path fwd | torch.fft fwd | conv1d fwd | ours fwd+bwd ms"
             " | ours, FFT path fwd+bwd | torch.fft fwd+bwd | conv1d fwd+bwd | fwd vs torch.fft | fwd+bwd vs torch.fft"
             " | fwd vs conv1d | fwd+bwd vs conv1d |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    torch.manual_seed(0)
    for L in [int(x) for x in args.lengths.split(",")]:
        for ks in args.kernels.split(","):
            Lk = L if ks == "L" else int(ks)
            for dn in args.dtypes.split(","):
                dtype = DTYPES[dn]
                u = torch.randn(args.batch, args.dim, L).to(dtype).requires_grad_()
                k = (torch.randn(args.dim, Lk) / Lk ** 0.5).requires_grad_()
                gy = torch.randn_like(u)
                exact = fft_tensor.reference.causal_conv_reference(u.detach(), k.detach()) if L * Lk <= 2 ** 22 \
                    else causal_conv_fft_reference(u.detach().double(), k.detach().double())
                fwd, both = {}, {}
                for name, f in methods.items():
                    wrap = fft_path if name == "ours, FFT path" else (lambda g: g)
                    with torch.no_grad():
                        y = wrap(f)(u, k).double()
                    err = ((y - exact).norm() / exact.norm()).item()
                    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
                    if not err < tol:
                        raise SystemExit(f"{name} L={L} Lk={Lk} {dn}: relative error {err:.2e} > {tol}")
                    with torch.no_grad():
                        fwd[name] = time_ms(lambda: wrap(f)(u, k), args.budget_s)
                    both[name] = time_ms(lambda: wrap(with_backward(f))(u, k, gy), args.budget_s)
                lines.append(
                    f"| {L} | {Lk} | {dn} | {fwd['ours']:.3f} | {fwd['ours, FFT path']:.3f} | {fwd['torch.fft']:.3f} | "
                    f"{fwd['conv1d']:.3f} | {both['ours']:.3f} | {both['ours, FFT path']:.3f} | "
                    f"{both['torch.fft']:.3f} | {both['conv1d']:.3f} | "
                    f"{fwd['torch.fft'] / fwd['ours']:.2f}x | {both['torch.fft'] / both['ours']:.2f}x | "
                    f"{fwd['conv1d'] / fwd['ours']:.2f}x | {both['conv1d'] / both['ours']:.2f}x |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
