"""Generation throughput (new bytes/s, batch 1) against context length, through fft_lm.generation's stepping.

    python benchmarks/bench_generation.py                      # H100: 29M models, contexts 1K/8K/64K, bf16
    python benchmarks/bench_generation.py --no-cuda-graphs     # the same, every step eager
    python benchmarks/bench_generation.py --device cpu --preset tiny --contexts 256,1024 --budget-s 0.5

Rows: ChunkLM (backbone once per `chunk` bytes, then its chunk decoder over the chunk: one fused
fft_tensor.chunk_decode call, and for comparison `chunk` calls of the decoder module, "decoder calls")
and SpectralLM (one byte per step), each with overlap-save streaming and with full recompute of the context every step,
and the GPT baseline with its KV cache (and recompute). Presets are matched by parameter count
(random init: throughput does not depend on the weights). Greedy decoding.

On CUDA the fixed-shape steps replay CUDA graphs (fft_lm.generation.StepGraphs): the overlap-save
backbone step with its byte pick (the GPT's KV-cache step too), and the ChunkLM decoder's whole chunk with its picks (in both modes;
one graph per chunk). No step waits for the host. The "graphs" column says what was replayed
in that row; --no-cuda-graphs runs everything eager.

Per setting: the prompt (= the context) is consumed first (prefill, not timed), 2 warm-up steps,
then steps are timed until --new-bytes bytes or --budget-s seconds, whichever comes first
(full recompute at 64K is slow, so it gets fewer bytes). Prints a markdown table and the ratios;
writes $OUT/bench_generation.md when OUT is set.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_lm  # noqa: E402
from common import write_out  # noqa: E402
from fft_lm.generation import ByteStream  # noqa: E402

# (row name, family class name, preset) per --preset: matched parameter counts
MODEL_SETS = {
    "29m": [("ChunkLM", "ChunkLM", "29m"), ("SpectralLM", "SpectralLM", "base512"), ("GPT", "GPT", "29m")],
    "tiny": [("ChunkLM", "ChunkLM", "tiny"), ("SpectralLM", "SpectralLM", "tiny"), ("GPT", "GPT", "tiny")],
    # the backbones with two attention blocks of eight (each streams its last seq_len - 1 inputs)
    "29m-hybrid": [("ChunkLM", "ChunkLM", "29m-hybrid"), ("SpectralLM", "SpectralLM", "29m-hybrid"),
                   ("GPT", "GPT", "29m")],
}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def graphs_used(stream):
    """What this stream replayed as CUDA graphs: "backbone+decoder", "backbone", "decoder" or "no"."""
    if stream.graphs is None or stream.graph_replays == 0:
        return "no"
    # keys are ((name, ...), shapes, autocast) or (name, shapes, autocast): the step's name first
    kinds = {k[0] if isinstance(k, tuple) else k for k in (key[0] for key in stream.graphs.graphs)}
    return "+".join(k for k in ("backbone", "decoder") if k in kinds)


@torch.no_grad()
def measure(model, context, mode, device, autocast, new_bytes, budget_s, cuda_graphs):
    """(bytes/s, bytes timed, prefill seconds, graphs used) for one setting."""
    g = torch.Generator().manual_seed(0)
    prompt = bytes(torch.randint(0, 256, (context,), generator=g).tolist())
    stream = ByteStream(model, prompt, new_bytes + 3 * getattr(model, "chunk", 1), mode=mode, temperature=0,
                        cuda_graphs=cuda_graphs)
    with autocast():
        sync(device)
        t0 = time.perf_counter()
        stream.step()  # prefill (overlap_save) or first full pass (recompute)
        sync(device)
        prefill_s = time.perf_counter() - t0
        for _ in range(2):  # warm-up: plans and kernels for the incremental shapes, CUDA graphs recorded
            stream.step()
        # stream.n_out, not len(stream.out): reading the bytes is a host sync the steps themselves avoid
        start_bytes = stream.n_out
        sync(device)
        t0 = time.perf_counter()
        while stream.n_out - start_bytes < new_bytes and time.perf_counter() - t0 < budget_s:
            stream.step()
        sync(device)
        dt = time.perf_counter() - t0
    n = stream.n_out - start_bytes
    return n / dt, n, prefill_s, graphs_used(stream)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="29m", choices=sorted(MODEL_SETS))
    p.add_argument("--contexts", default="1024,8192,65536", help="comma-separated context lengths in bytes")
    p.add_argument("--new-bytes", type=int, default=512, help="bytes timed per setting (at most)")
    p.add_argument("--budget-s", type=float, default=2.5, help="seconds timed per setting (at most)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="autocast dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--skip-gpt-recompute", action="store_true", help="leave out GPT full recompute")
    p.add_argument("--no-cuda-graphs", action="store_true", help="every step eager (no CUDA graph replays)")
    p.add_argument("--no-low-precision-weights", action="store_true",
                   help="run the models themselves under autocast (weights cast every step), not the "
                        "low-precision copy (fft_lm.generation.LOW_PRECISION_WEIGHTS)")
    p.add_argument("--no-fused-decode", action="store_true",
                   help="ChunkLM's decoder as `chunk` module calls, not the fused fft_tensor.chunk_decode op "
                        "(fft_lm.generation.FUSED_CHUNK_DECODE; by default both are measured)")
    args = p.parse_args()
    if args.no_low_precision_weights:
        fft_lm.generation.LOW_PRECISION_WEIGHTS = False
    device = torch.device(args.device)
    cuda_graphs = device.type == "cuda" and not args.no_cuda_graphs
    contexts = [int(c) for c in args.contexts.split(",")]
    use_bf16 = args.dtype == "bfloat16"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731

    rows = []  # (name, params, mode, {context: (bytes/s, n, prefill_s)})
    t_start = time.time()
    for name, cls_name, preset in MODEL_SETS[args.preset]:
        torch.manual_seed(0)
        model = getattr(fft_lm, cls_name).from_preset(preset).to(device).eval()
        params = sum(q.numel() for q in model.parameters())
        fused = not args.no_fused_decode  # a ChunkLM's decoder through fft_tensor.chunk_decode
        modes = [("overlap_save", "KV cache" if cls_name == "GPT" else "overlap-save", fused),
                 ("recompute", "recompute", fused)]
        if cls_name == "GPT" and args.skip_gpt_recompute:
            modes = modes[:1]
        if cls_name == "ChunkLM" and fused:  # the decoder as chunk module calls, for comparison
            modes.insert(1, ("overlap_save", "overlap-save, decoder calls", False))
        for mode, label, fused_decode in modes:
            results = {}
            fft_lm.generation.FUSED_CHUNK_DECODE = fused_decode
            for ctx in contexts:
                try:
                    results[ctx] = measure(model, ctx, mode, device, autocast, args.new_bytes, args.budget_s,
                                           cuda_graphs)
                except torch.OutOfMemoryError:
                    results[ctx] = None
                    torch.cuda.empty_cache()
                r = results[ctx]
                print(f"{name:10s} {label:12s} ctx {ctx:6d}: " +
                      (f"{r[0]:9.1f} bytes/s ({r[1]} bytes timed, prefill {r[2] * 1e3:.1f} ms, "
                       f"CUDA graphs: {r[3]})" if r else "OOM"), flush=True)
            rows.append((name, params, label, results))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def rate(name, label, ctx):
        for n, _, l, res in rows:
            if n == name and l == label and res.get(ctx):
                return res[ctx][0]
        return None

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    graphs_note = "CUDA graphs on" if cuda_graphs else "no CUDA graphs"
    graphs_note += ", low-precision weight copy" if fft_lm.generation.LOW_PRECISION_WEIGHTS else ", fp32 weights cast per step"
    lines = [f"## Generation throughput, new bytes/s, batch 1, greedy ({gpu}, {args.dtype} autocast, "
             f"torch {torch.__version__}, preset {args.preset}, {graphs_note})", "",
             "| model | params | mode | graphs | " + " | ".join(f"ctx {c}" for c in contexts) + " |",
             "|---|---|---|---|" + "---|" * len(contexts)]
    for name, params, label, res in rows:
        cells = [f"{res[c][0]:,.0f}" if res.get(c) else "OOM" for c in contexts]
        used = sorted({res[c][3] for c in contexts if res.get(c)}) or ["n/a"]
        lines.append(f"| {name} | {params / 1e6:.1f}M | {label} | {', '.join(used)} | " + " | ".join(cells) + " |")
    lines.append("")

    def ratio(a, b):
        return f"{a / b:.2f}x" if a and b else "n/a"

    mid = 8192 if 8192 in contexts else contexts[len(contexts) // 2]
    top = contexts[-1]
    for name in ("ChunkLM", "SpectralLM"):
        os_mid, os_lo, os_top = (rate(name, "overlap-save", c) for c in (mid, contexts[0], top))
        lines.append(f"- {name}: overlap-save vs recompute at {mid}: {ratio(os_mid, rate(name, 'recompute', mid))}; "
                     f"vs GPT KV cache at {mid}: {ratio(os_mid, rate('GPT', 'KV cache', mid))}, at {top}: "
                     f"{ratio(os_top, rate('GPT', 'KV cache', top))}; flatness (ctx {top} / ctx {contexts[0]}): "
                     f"{ratio(os_top, os_lo)}")
    lines.append(f"- total benchmark time {time.time() - t_start:.0f} s")
    table = "\n".join(lines)
    print()
    print(table)
    write_out("bench_generation", table + "\n")


if __name__ == "__main__":
    main()
