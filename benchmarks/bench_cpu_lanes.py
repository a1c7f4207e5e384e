"""causal_conv's CPU direct path at each channels-in-lanes width (cpu_direct.h), one run, back to back.

    python benchmarks/bench_cpu_lanes.py [--batch 4] [--dim 64] [--lengths 1024,4096,16384]
        [--kernels 32,64,128] [--dtypes fp32,bf16] [--widths 16,8,0] [--threads N] [--budget-s 0.3] [--out t.md]

Each width is FFT_TENSOR_CONV_CPU_LANES (the op reads it on every call and caps it at what the CPU has:
16 lanes need AVX-512, 8 AVX2; 0 = the time-in-lanes loops). Columns: the forward, the backward for both
gradients, and grad_k alone (torch.ops.fft_tensor.causal_conv_backward), host wall-clock medians after
two warm-up calls (bench_causal_conv_cpu.time_ms). Every width's results are first checked equal to the
first width's (each lane sums its channel in the same order; the time-in-lanes grad_k differs in the last
bits, so that comparison is to float32 rounding). Nothing here belongs in a test.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402
from bench_causal_conv_cpu import DTYPES, parse_shape_args, time_ms  # noqa: E402

ops = torch.ops.fft_tensor


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", default="16,8,0", help="FFT_TENSOR_CONV_CPU_LANES values, compared in this order")
    args = parse_shape_args(p, "32,64,128", "comma-separated taps", budget_s=0.3)
    widths = args.widths.split(",")
    os.environ["FFT_TENSOR_CONV_DIRECT_MAX_TAPS"] = "128"  # the direct path for every row here
    cols = " | ".join(f"{kind} ms, {w}" for kind in ("fwd", "bwd", "grad_k") for w in widths)
    lines = [f"| L | taps | dtype | {cols} |", "|" + "---|" * (3 + 3 * len(widths))]
    torch.manual_seed(0)
    for L in map(int, args.lengths.split(",")):
        for T in map(int, args.kernels.split(",")):
            for name in args.dtypes.split(","):
                dt = DTYPES[name]
                u = torch.randn(args.batch, args.dim, L).to(dt)
                gy = torch.randn(args.batch, args.dim, L).to(dt)
                k = torch.randn(args.dim, T) / T**0.5
                calls = (lambda: fft_tensor.causal_conv(u, k),
                         lambda: ops.causal_conv_backward(gy, u, k, None, True, True),
                         lambda: ops.causal_conv_backward(gy, u, k, None, False, True))
                times, first = {}, None
                for w in widths:
                    os.environ["FFT_TENSOR_CONV_CPU_LANES"] = w
                    got = (calls[0](), *calls[1]())
                    if first is None:
                        first = got
                    for a, b in zip(got, first):
                        err = float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
                        assert err < (1e-5 if dt == torch.float32 else 1e-2), (L, T, name, w, err)
                    for i, f in enumerate(calls):
                        times[i, w] = time_ms(f, args.budget_s)
                row = " | ".join(f"{times[i, w]:.3f}" for i in range(3) for w in widths)
                lines.append(f"| {L} | {T} | {name} | {row} |")
                print(lines[-1], flush=True)
    os.environ.pop("FFT_TENSOR_CONV_CPU_LANES", None)
    table = "\n".join(lines)
    print("\n" + table)
    print(f"\nB={args.batch}, D={args.dim}, {torch.get_num_threads()} threads, torch {torch.__version__}; widths are "
          "FFT_TENSOR_CONV_CPU_LANES, capped at the CPU's own (16: AVX-512, 8: AVX2).")
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
