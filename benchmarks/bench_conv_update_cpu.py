"""causal_conv_update on the CPU: microseconds per streaming step, the op alone.

    python benchmarks/bench_conv_update_cpu.py [--shapes 528:1:127:128,512:16:127:128] [--threads 1]
        [--calls 400] [--repeats 5]

Each shape is D:T:S:Lk for a batch of one (D channels, T new inputs, a state of S past inputs, Lk taps):
528:1:127:128 is the 29m SpectralLM's one-byte generation step per layer, 512:16:127:128 a ChunkLM's
16-byte step. Reported: the minimum over --repeats of the mean over --calls calls (host clock; the op
runs synchronously on the CPU), so a busy machine's slow repeats drop out. Run two builds alternately to
compare them (PYTHONPATH=<tree>).
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402,F401  (registers torch.ops.fft_tensor)
from common import markdown_table  # noqa: E402


def per_call_us(fn, calls, repeats):
    for _ in range(min(calls, 30)):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t) / calls * 1e6)
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="528:1:127:128,512:1:127:128,256:1:63:64,512:16:127:128",
                   help="comma-separated D:T:S:Lk")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--calls", type=int, default=400)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        shapes = [tuple(int(v) for v in s.split(":")) for s in args.shapes.split(",")]
        assert all(len(s) == 4 for s in shapes)
    except (ValueError, AssertionError):
        p.error(f"--shapes: expected comma-separated D:T:S:Lk, got {args.shapes!r}")
    op = torch.ops.fft_tensor.causal_conv_update.default
    rows = []
    with torch.no_grad():
        for D, T, S, Lk in shapes:
            u, state = torch.randn(1, D, T), torch.randn(1, D, S)
            k, skip = torch.randn(D, Lk) / Lk ** 0.5, torch.randn(D)
            rows.append([D, T, S, Lk, per_call_us(lambda: op(u, state, k, skip, None), args.calls, args.repeats)])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(markdown_table(["D", "T", "S", "Lk", "us per call"], rows))


if __name__ == "__main__":
    main()
