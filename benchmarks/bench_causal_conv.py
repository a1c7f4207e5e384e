"""causal_conv on the GPU against the torch.fft reference, SDPA causal attention, NVIDIA's
fft_causal_conv1d (subquadratic-ops-torch) and the memory floor. Shapes from ANCHORS.md:
B=8, D=768, L in {1K, 4K, 16K, 64K}, Lk in {L, 128}, fp32 and bf16 input (k is float32).

    python benchmarks/bench_causal_conv.py [--lengths 1024,4096] [--kernels L,128] [--dtypes fp32,bf16]
        [--quick] [--install-wheels .whl] [--no-peer] [--no-sdpa] [--graphs]

--install-wheels DIR installs DIR/*.whl into /tmp/site (pip --no-index --no-deps) and puts it on
sys.path: how the NVIDIA peer travels to a GPU box without network (see the report / README).
No skip term anywhere (the peer has none). Each method's output is checked before it is timed;
a mismatch, an OOM or an unsupported case prints n/a with the reason below the tables.
"""
import argparse
import ctypes
import glob
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_tensor  # noqa: E402
from common import (DEVICE, append_results, command_line, copy_bandwidth_gbs, input_sets,  # noqa: E402
                    markdown_table, peak_extra_bytes, rel_err, saved_for_backward_bytes, tensor_bytes, time_graph_ms,
                    time_ms)
from fft_tensor.reference import causal_conv_fft_reference  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SDPA_HEADS, SDPA_HEAD_DIM = 12, 64


def install_wheels(folder, target="/tmp/site"):
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        raise SystemExit(f"--install-wheels: no .whl files in {folder}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", target, *wheels], check=True)
    sys.path.insert(0, target)


def load_peer():
    """NVIDIA's fft_causal_conv1d(x, weight): x (B, D, L), weight (D, K) of x's dtype, no skip term.
    Returns (fn, None) or (None, reason)."""
    # The peer's library links libcudart.so.13 and libnvrtc.so.13; torch's wheel ships both but loads
    # nvrtc lazily, so load them globally first from torch's nvidia/cu13/lib when present.
    for site in sys.path:
        for name in ("libcudart.so.13", "libnvrtc.so.13"):
            for path in glob.glob(os.path.join(site, "nvidia", "cu13", "lib", name)):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass
    try:
        from subquadratic_ops_torch.fft_causal_conv1d import fft_causal_conv1d
    except Exception as e:  # ImportError, or the library failing to load
        return None, f"subquadratic_ops_torch not importable: {type(e).__name__}: {str(e)[:200]}"
    return fft_causal_conv1d, None


def describe(e):
    """An exception for the n/a reasons: its type and the first line of its message (if any)."""
    text = str(e)
    return f"{type(e).__name__}: {text.splitlines()[0][:160] if text else ''}"


def measure(fn, arg_sets, budget_ms, reasons, label, graph=False):
    """time_ms (time_graph_ms with graph: CUDA-graph replays), or None with the reason recorded (OOM,
    unsupported, a capture the method does not allow)."""
    try:
        return (time_graph_ms if graph else time_ms)(fn, arg_sets, budget_ms=budget_ms)
    except Exception as e:  # torch.cuda.OutOfMemoryError is a RuntimeError
        reasons.append(f"{label}: {describe(e)}")
        torch.cuda.empty_cache()
        return None


def fwd_bwd(f):
    """(u, k, gy) -> grads of f(u, k) w.r.t. u and k, like one training step's conv."""
    def run(u, k, gy):
        return torch.autograd.grad(f(u, k), (u, k), gy)
    return run


def bench_sdpa(B, L, budget_ms, reasons, graphs=False):
    """(fwd ms, fwd+bwd ms, and with graphs their CUDA-graph replay ms, else None, None)."""
    try:
        shape = (B, SDPA_HEADS, L, SDPA_HEAD_DIM)

        def make():
            return tuple(torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        # q, k, v, out and grad_out: 5 x B*12*L*64*2 bytes, 63 MB at B=8, L=1K, about the L2 size: rotate
        # sets as the conv's are, so neither side runs from L2
        sets = input_sets(make, 5 * B * SDPA_HEADS * L * SDPA_HEAD_DIM * 2)
        go = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16)
        fwd_sets = [tuple(t.detach() for t in qkv) for qkv in sets]  # forward alone: no autograd graph, as ours
        fwd = measure(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), fwd_sets, budget_ms,
                      reasons, f"SDPA L={L} fwd")
        def fwd_bwd_sdpa(q, k, v):
            return torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, is_causal=True), (q, k, v), go)
        fb = measure(fwd_bwd_sdpa, sets, budget_ms, reasons, f"SDPA L={L} fwd+bwd")
        g_fwd = g_fb = None
        if graphs:
            g_fwd = measure(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), fwd_sets,
                            budget_ms, reasons, f"SDPA L={L} fwd (graph)", graph=True)
            g_fb = measure(fwd_bwd_sdpa, sets, budget_ms, reasons, f"SDPA L={L} fwd+bwd (graph)", graph=True)
        del sets, fwd_sets, go
        return fwd, fb, g_fwd, g_fb
    except torch.cuda.OutOfMemoryError as e:
        reasons.append(f"SDPA L={L}: OOM ({str(e).splitlines()[0][:100]})")
        return None, None, None, None
    finally:
        torch.cuda.empty_cache()


def check(out, ref, tol):
    err = rel_err(out, ref)
    return err, (err < tol)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,4096,16384,65536", help="comma-separated L")
    p.add_argument("--kernels", default="L,128", help="comma-separated Lk; 'L' means Lk = L")
    p.add_argument("--dtypes", default="fp32,bf16", help="input dtypes (k is float32 for our op)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--quick", action="store_true", help="short timing budget (smoke test)")
    p.add_argument("--install-wheels", default=None, metavar="DIR", help="pip-install DIR/*.whl into /tmp/site first")
    p.add_argument("--no-peer", action="store_true", help="skip NVIDIA's fft_causal_conv1d")
    p.add_argument("--no-sdpa", action="store_true",
                   help="skip SDPA attention (its columns n/a): at 64K it is most of the run's time")
    p.add_argument("--channels-last", action="store_true",
                   help="u and grad_y as transposed (B, L, D) tensors, the layout a model's projections give")
    p.add_argument("--graphs", action="store_true",
                   help="also time every method as CUDA-graph replays (a third table): the GPU's time without "
                   "the host's launch gaps, which decide the eager 1K rows and move between runs")
    args = p.parse_args()
    if args.install_wheels:
        install_wheels(args.install_wheels)
    budget = 60.0 if args.quick else 300.0
    B, D = args.batch, args.dim
    lengths = [int(x) for x in args.lengths.split(",")]
    peer, peer_reason = (None, "--no-peer") if args.no_peer else load_peer()
    reasons = [] if peer else [f"NVIDIA fft_causal_conv1d: {peer_reason}"]
    if args.no_sdpa:
        reasons.append("SDPA: --no-sdpa")

    bw = copy_bandwidth_gbs()
    gpu = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "no GPU: smoke test of the script, numbers mean nothing"
    print(f"device-to-device copy: {bw:.0f} GB/s; {gpu}; torch {torch.__version__}", flush=True)
    time_rows, ratio_rows, graph_rows = [], [], []
    for L in lengths:
        sdpa_f, sdpa_fb, g_sdpa_f, g_sdpa_fb = ((None,) * 4 if args.no_sdpa
                                                else bench_sdpa(B, L, budget, reasons, args.graphs))
        for kspec in args.kernels.split(","):
            Lk = L if kspec.strip() == "L" else int(kspec)
            for dname in args.dtypes.split(","):
                dtype = DTYPES[dname]
                tag = f"L={L} Lk={Lk} {dname}"
                try:
                    row = bench_conv(B, D, L, Lk, dtype, peer, bw, budget, reasons, tag, args.channels_last,
                                     args.graphs)
                except torch.cuda.OutOfMemoryError as e:
                    reasons.append(f"{tag}: OOM ({str(e).splitlines()[0][:100]})")
                    row = dict(ours_f=None, ours_fb=None, ref_f=None, ref_fb=None, peer_f=None, peer_fb=None,
                               floor_f=None, floor_fb=None, peak=None, peak_fb=None, err=None)
                torch.cuda.empty_cache()

                def ratio(a, b):
                    return None if a is None or b is None else a / b
                time_rows.append([L, Lk, dname, row["ours_f"], row["ours_fb"], row["ref_f"], row["ref_fb"], sdpa_f,
                                  sdpa_fb, row["peer_f"], row["peer_fb"], row["floor_f"], row["floor_fb"]])
                ratio_rows.append([L, Lk, dname, ratio(row["ref_f"], row["ours_f"]), ratio(row["ref_fb"], row["ours_fb"]),
                                   ratio(sdpa_f, row["ours_f"]), ratio(sdpa_fb, row["ours_fb"]),
                                   ratio(row["peer_f"], row["ours_f"]), ratio(row["peer_fb"], row["ours_fb"]),
                                   ratio(row["ours_f"], row["floor_f"]), row["peak"], row["peak_fb"], row.get("saved"),
                                   row.get("peer_peak_fb"), row.get("peer_saved"), row["err"], row.get("peer_err")])
                if args.graphs:
                    g = {key: row.get("g_" + key) for key in ("ours_f", "ours_fb", "ref_f", "ref_fb", "peer_f", "peer_fb")}
                    graph_rows.append([L, Lk, dname, g["ours_f"], g["ours_fb"], g["ref_f"], g["ref_fb"], g_sdpa_f,
                                       g_sdpa_fb, g["peer_f"], g["peer_fb"], ratio(g["ref_f"], g["ours_f"]),
                                       ratio(g["ref_fb"], g["ours_fb"]), ratio(g_sdpa_f, g["ours_f"]),
                                       ratio(g_sdpa_fb, g["ours_fb"]), ratio(g["peer_f"], g["ours_f"]),
                                       ratio(g["peer_fb"], g["ours_fb"])])
                print(markdown_table(["L", "Lk", "dtype", "ours fwd", "ours f+b", "ref fwd", "ref f+b"],
                                     [time_rows[-1][:7]]).splitlines()[-1], flush=True)

    times = markdown_table(["L", "Lk", "u dtype", "ours fwd ms", "ours fwd+bwd ms", "torch.fft ref fwd ms",
                            "ref fwd+bwd ms", "SDPA bf16 fwd ms", "SDPA fwd+bwd ms", "NVIDIA fwd ms",
                            "NVIDIA fwd+bwd ms", "floor fwd ms", "floor fwd+bwd ms"], time_rows)
    ratios = markdown_table(["L", "Lk", "u dtype", "ref/ours fwd", "ref/ours fwd+bwd", "SDPA/ours fwd",
                             "SDPA/ours fwd+bwd", "NVIDIA/ours fwd", "NVIDIA/ours fwd+bwd", "ours fwd / floor",
                             "peak mem / (in+out)", "fwd+bwd peak / (in+out)", "saved for bwd / u",
                             "NVIDIA fwd+bwd peak / (in+out)", "NVIDIA saved for bwd / u", "rel err vs ref",
                             "NVIDIA rel err vs ref"], ratio_rows)
    notes = (f"B={B}, D={D}, no skip. Ours: fft_tensor.causal_conv (k float32). torch.fft ref: "
             f"fft_tensor.reference.causal_conv_fft_reference (n=2L, bf16 input upcast inside). SDPA: "
             f"F.scaled_dot_product_attention(is_causal=True), bf16, H={SDPA_HEADS}, Dh={SDPA_HEAD_DIM}, same B and L "
             f"(independent of Lk and of u's dtype). NVIDIA: subquadratic_ops_torch fft_causal_conv1d(u, k.to(u.dtype)). "
             f"Floor: bytes that must move / measured copy bandwidth ({bw:.0f} GB/s); fwd moves u, k, y; "
             f"fwd+bwd adds grad_y, u, k read and grad_u, grad_k written. Peak mem: our forward's peak allocation "
             f"(inputs + outputs + workspace) over inputs + outputs; fwd+bwd peak: the same for forward and "
             f"backward (inputs u, k, grad_y; outputs y, grad_u, grad_k); NVIDIA's likewise. Saved for bwd: bytes a forward "
             f"with autograd keeps allocated until the backward beyond y (saved inputs excluded: the caller holds them), "
             f"over u's bytes. SDPA's inputs rotate like the conv's, "
             f"and its forward is timed on inputs without autograd, like the others. rel err: ours vs the torch.fft "
             f"reference; NVIDIA's vs the reference on its kernel (k rounded to u's dtype).")
    if args.graphs:
        ratios += "\n\nCUDA-graph replays (ms, and ratios of them):\n\n" + markdown_table(
            ["L", "Lk", "u dtype", "ours fwd", "ours fwd+bwd", "ref fwd", "ref fwd+bwd", "SDPA fwd", "SDPA fwd+bwd",
             "NVIDIA fwd", "NVIDIA fwd+bwd", "ref/ours fwd", "ref/ours fwd+bwd", "SDPA/ours fwd", "SDPA/ours fwd+bwd",
             "NVIDIA/ours fwd", "NVIDIA/ours fwd+bwd"], graph_rows)
    if reasons:
        notes += "\n\nn/a reasons:\n" + "\n".join(f"- {r}" for r in reasons)
    layout = ", u as transposed (B, L, D)" if args.channels_last else ""
    append_results(f"causal_conv, B={B}, D={D}{layout}", command_line(), times + "\n\n" + ratios, notes=notes)
    print(notes)
    print(times)
    print()
    print(ratios)


def bench_conv(B, D, L, Lk, dtype, peer, bw, budget, reasons, tag, channels_last=False, graphs=False):
    def make():
        if channels_last:  # (B, D, L) views of (B, L, D) storage: channels are the contiguous dimension
            u = torch.randn(B, L, D, device=DEVICE).to(dtype).transpose(1, 2).detach().requires_grad_()
            return u, (torch.randn(B, L, D, device=DEVICE) / 4).to(dtype).transpose(1, 2)
        u = torch.randn(B, D, L, device=DEVICE).to(dtype).requires_grad_()
        return u, (torch.randn(B, D, L, device=DEVICE) / 4).to(dtype)

    # Rotate input sets when one set (u, grad_y, y) fits in L2 several times over.
    sets = input_sets(make, 3 * B * D * L * torch.tensor([], dtype=dtype).element_size())
    k = (torch.randn(D, Lk, device=DEVICE) / Lk**0.5).requires_grad_()
    k_peer = k.detach().to(dtype).requires_grad_()  # the peer wants k in u's dtype
    fwd_sets = [(u.detach(), k.detach()) for u, _ in sets]  # forward alone: no autograd graph
    fb_sets = [(u, k, gy) for u, gy in sets]
    u0 = sets[0][0]

    y_ours = fft_tensor.causal_conv(u0, k)
    y_ref = causal_conv_fft_reference(u0.detach(), k.detach())
    err, ok = check(y_ours, y_ref, 1e-5 if dtype == torch.float32 else 1e-2)
    if not ok:
        reasons.append(f"{tag}: ours differs from the torch.fft reference (rel err {err:.2e}); timed anyway")
    del y_ours, y_ref

    in_out = tensor_bytes(u0, k) + tensor_bytes(u0)
    row = dict(err=err, floor_f=in_out / (bw * 1e9) * 1e3,
               floor_fb=(in_out + 2 * tensor_bytes(u0, k) + tensor_bytes(u0)) / (bw * 1e9) * 1e3)
    with torch.no_grad():
        extra = peak_extra_bytes(fft_tensor.causal_conv, u0, k)
    row["peak"] = None if extra is None else (tensor_bytes(u0, k) + extra) / in_out
    # forward+backward: inputs u, k, grad_y; outputs y, grad_u, grad_k (y lives until the backward)
    gy0 = sets[0][1]

    def fwd_bwd_peak(op, kk):
        extra = peak_extra_bytes(fwd_bwd(op), u0, kk, gy0)
        inputs = tensor_bytes(u0, kk, gy0)
        return None if extra is None else (inputs + extra) / (inputs + tensor_bytes(u0, u0, kk))

    row["peak_fb"] = fwd_bwd_peak(fft_tensor.causal_conv, k)
    saved = saved_for_backward_bytes(fft_tensor.causal_conv, u0, k)  # what the autograd graph holds until backward
    row["saved"] = None if saved is None else saved / tensor_bytes(u0)

    row["ours_f"] = measure(lambda u, k: fft_tensor.causal_conv(u, k), fwd_sets, budget, reasons, f"{tag} ours fwd")
    row["ours_fb"] = measure(fwd_bwd(fft_tensor.causal_conv), fb_sets, budget, reasons, f"{tag} ours fwd+bwd")
    row["ref_f"] = measure(causal_conv_fft_reference, fwd_sets, budget, reasons, f"{tag} ref fwd")
    row["ref_fb"] = measure(fwd_bwd(causal_conv_fft_reference), fb_sets, budget, reasons, f"{tag} ref fwd+bwd")
    if graphs:
        row["g_ours_f"] = measure(lambda u, k: fft_tensor.causal_conv(u, k), fwd_sets, budget, reasons,
                                  f"{tag} ours fwd (graph)", graph=True)
        row["g_ours_fb"] = measure(fwd_bwd(fft_tensor.causal_conv), fb_sets, budget, reasons,
                                   f"{tag} ours fwd+bwd (graph)", graph=True)
        row["g_ref_f"] = measure(causal_conv_fft_reference, fwd_sets, budget, reasons, f"{tag} ref fwd (graph)",
                                 graph=True)
        row["g_ref_fb"] = measure(fwd_bwd(causal_conv_fft_reference), fb_sets, budget, reasons,
                                  f"{tag} ref fwd+bwd (graph)", graph=True)
    torch.cuda.empty_cache()

    row["peer_f"] = row["peer_fb"] = None
    if peer is not None:
        try:
            # Same function? Compare with our op on the peer's (rounded) kernel.
            y_peer = peer(u0.detach(), k_peer.detach())
            perr, pok = check(y_peer, fft_tensor.causal_conv(u0.detach(), k_peer.detach().float()),
                              1e-3 if dtype == torch.float32 else 3e-2)
            row["peer_err"] = rel_err(y_peer, causal_conv_fft_reference(u0.detach(), k_peer.detach().float()))
            del y_peer
            if not pok:
                reasons.append(f"{tag} NVIDIA: output differs from ours (rel err {perr:.2e}); not timed")
            else:
                psets = [(u.detach(), k_peer.detach()) for u, _ in sets]
                row["peer_f"] = measure(peer, psets, budget, reasons, f"{tag} NVIDIA fwd")
                row["peer_fb"] = measure(fwd_bwd(peer), [(u, k_peer, gy) for u, gy in sets], budget, reasons,
                                         f"{tag} NVIDIA fwd+bwd")
                if graphs:  # last: a capture the peer does not allow is reported, not fatal
                    row["g_peer_f"] = measure(peer, psets, budget, reasons, f"{tag} NVIDIA fwd (graph)", graph=True)
                    row["g_peer_fb"] = measure(fwd_bwd(peer), [(u, k_peer, gy) for u, gy in sets], budget, reasons,
                                               f"{tag} NVIDIA fwd+bwd (graph)", graph=True)
        except Exception as e:
            reasons.append(f"{tag} NVIDIA: {describe(e)}")
        torch.cuda.empty_cache()
        try:  # its memory after its timings, so a failure here loses no time column
            saved = saved_for_backward_bytes(peer, u0, k_peer)
            row["peer_saved"] = None if saved is None else saved / tensor_bytes(u0)
            row["peer_peak_fb"] = fwd_bwd_peak(peer, k_peer)
        except Exception as e:
            reasons.append(f"{tag} NVIDIA memory: {describe(e)}")
        torch.cuda.empty_cache()
    return row


if __name__ == "__main__":
    main()
