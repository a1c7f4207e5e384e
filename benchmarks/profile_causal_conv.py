"""One forward and one backward of causal_conv per shape, bracketed for Nsight Compute.

    ncu --profile-from-start off --kernel-name regex:conv_ --section SpeedOfLight --section Occupancy \
        python benchmarks/profile_causal_conv.py

The shapes are bench_causal_conv.py's (B=8, D=768, fp32): the fused one-block FFT at L=1K (Lk=L and
Lk=128) and 4K, and the cluster FFT at 16K and 64K. Each shape runs once unprofiled first (plans,
lazy init), then once between cudaProfilerStart/Stop. Prints nothing useful itself; ncu's report is
the output (device_run.sh's `ncu` stage keeps it in $OUT/ncu.txt).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fft_tensor
from fft_tensor import ops

SHAPES = [(1024, 1024), (1024, 128), (4096, 4096), (16384, 16384), (65536, 65536)]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--max-length", type=int, default=65536, help="skip shapes with L above this")
    args = p.parse_args()
    for L, Lk in SHAPES:
        if L > args.max_length:
            continue
        u = torch.randn(args.batch, args.dim, L, device="cuda")
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


if __name__ == "__main__":
    main()
