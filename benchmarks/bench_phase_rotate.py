"""phase_rotate on the GPU: 64M complex64 values (rows x cols) with theta broadcast over the rows.

Forward and backward of the op against z * torch.polar(ones, theta) and the abs/angle/polar form,
in ms, GB/s of the bytes that must move, and % of the device-to-device copy bandwidth measured in
the same run.

    python benchmarks/bench_phase_rotate.py [--rows 8] [--cols 8388608] [--quick]
"""
import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402
from fft_tensor.reference import phase_rotate_reference  # noqa: E402
from common import DEVICE, append_results, command_line, copy_bandwidth_gbs, markdown_table, rel_err, time_ms  # noqa: E402

ops = torch.ops.fft_tensor


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8, help="leading dim theta is broadcast over")
    p.add_argument("--cols", type=int, default=8 * 1024 * 1024, help="theta's length")
    p.add_argument("--quick", action="store_true", help="shorter timing (smoke test)")
    args = p.parse_args()
    budget = 100.0 if args.quick else 500.0
    R, P = args.rows, args.cols

    bw = copy_bandwidth_gbs()
    z = torch.randn(R, P, dtype=torch.complex64, device=DEVICE)
    theta = 4 * math.pi * torch.randn(P, device=DEVICE)
    grad = torch.randn_like(z)
    ones = torch.ones_like(theta)
    zb, tb = z.numel() * 8, theta.numel() * 4
    fwd_bytes = 2 * zb + tb  # read z and theta, write out
    bwd_bytes = 3 * zb + 2 * tb  # read grad, z, theta; write grad_z, grad_theta

    def polar_mul(z, theta):
        return z * torch.polar(ones, theta)

    def abs_angle_polar(z, theta):
        return torch.polar(z.abs(), z.angle() + theta)

    # Check before timing: every method computes the same function.
    ref = phase_rotate_reference(z[:2].cdouble(), theta.double())
    for name, f in [("op", fft_tensor.phase_rotate), ("polar", polar_mul), ("abs/angle", abs_angle_polar)]:
        err = rel_err(torch.view_as_real(f(z[:2], theta)).double(), torch.view_as_real(ref))
        assert err < 1e-5, f"{name}: relative error {err:.2e} vs the complex128 reference"
    gz, gt = ops.phase_rotate_backward(grad, z, theta)
    zr, tr = z.detach().requires_grad_(), theta.detach().requires_grad_()
    rgz, rgt = torch.autograd.grad(polar_mul(zr, tr), (zr, tr), grad)
    assert rel_err(torch.view_as_real(gz), torch.view_as_real(rgz)) < 1e-5 and rel_err(gt, rgt) < 1e-4

    def autograd_backward(f):
        zr, tr = z.detach().requires_grad_(), theta.detach().requires_grad_()
        out = f(zr, tr)
        return lambda: torch.autograd.grad(out, (zr, tr), grad, retain_graph=True)

    rows = []

    def add(name, fn, nbytes):
        ms = time_ms(fn, budget_ms=budget)
        gbs = nbytes / (ms * 1e-3) / 1e9
        rows.append([name, ms, gbs, 100 * gbs / bw])

    add("fft_tensor.phase_rotate fwd", lambda: fft_tensor.phase_rotate(z, theta), fwd_bytes)
    add("z * torch.polar(ones, theta) fwd", lambda: polar_mul(z, theta), fwd_bytes)
    add("torch.polar(z.abs(), z.angle() + theta) fwd", lambda: abs_angle_polar(z, theta), fwd_bytes)
    add("phase_rotate_backward op", lambda: ops.phase_rotate_backward(grad, z, theta), bwd_bytes)
    add("fft_tensor.phase_rotate bwd (autograd)", autograd_backward(fft_tensor.phase_rotate), bwd_bytes)
    add("z * torch.polar(ones, theta) bwd (autograd)", autograd_backward(polar_mul), bwd_bytes)
    add("abs/angle/polar bwd (autograd)", autograd_backward(abs_angle_polar), bwd_bytes)
    rows.append(["memory floor fwd (bytes / copy bandwidth)", fwd_bytes / (bw * 1e9) * 1e3, bw, 100.0])
    rows.append(["memory floor bwd", bwd_bytes / (bw * 1e9) * 1e3, bw, 100.0])

    table = markdown_table(["method", "ms", "GB/s", "% of copy bw"], rows)
    notes = (f"z: ({R}, {P}) complex64 ({z.numel() / 2**20:.0f}M values), theta: ({P},) float32 broadcast over the rows. "
             f"GB/s counts the bytes that must move (fwd {fwd_bytes / 1e9:.3f} GB, bwd {bwd_bytes / 1e9:.3f} GB) "
             f"for every method; device-to-device copy measured in this run: {bw:.0f} GB/s.")
    append_results(f"phase_rotate, {z.numel() / 2**20:.0f}M complex64", command_line(), table, notes=notes)
    print(notes)
    print(table)


if __name__ == "__main__":
    main()
