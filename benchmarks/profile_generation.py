"""Where a generation step's time goes: host wall time per step against the GPU kernels it runs.

    python benchmarks/profile_generation.py                         # H100: base512 SpectralLM and 29m ChunkLM, ctx 8K
    python benchmarks/profile_generation.py --models spectral --no-cuda-graphs
    python benchmarks/profile_generation.py --modes overlap_save,recompute   # GPU time of both modes

Per model: prefill a random context, warm up (CUDA graphs recorded), then time --steps steps (wall
clock, synced) and profile as many more with torch.profiler: kernels per step, summed kernel time per
step, and the top kernels by total time. Wall time minus kernel time is launch and host overhead.
Weights as bench_generation.py runs them: bf16 autocast, the stream's bf16 copy of the nn.Linear weights.
With recompute, the GPU time per byte against overlap-save's is the ratio without the host: full
recompute runs eagerly (no CUDA graphs: its shapes grow with the context), so below 64K its wall time
is mostly host work.
"""
import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_lm  # noqa: E402
import fft_lm.generation as generation  # noqa: E402
from fft_lm.generation import ByteStream  # noqa: E402

MODELS = {"spectral": ("SpectralLM", "base512"), "chunk": ("ChunkLM", "29m"), "gpt": ("GPT", "29m")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="spectral,chunk")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--steps", type=int, default=64, help="steps timed, then as many profiled")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--modes", default="overlap_save", help="comma list: overlap_save, recompute")
    p.add_argument("--no-low-precision-weights", action="store_true",
                   help="keep fp32 weights (autocast casts them every step)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_generation.py: needs a CUDA GPU (it profiles CUDA kernels)")
    device = torch.device("cuda")
    prompt = bytes(torch.randint(0, 256, (args.context,), generator=torch.Generator().manual_seed(0)).tolist())
    if args.no_low_precision_weights:
        generation.LOW_PRECISION_WEIGHTS = False
    for key in args.models.split(","):
        cls_name, preset = MODELS[key]
        torch.manual_seed(0)
        model = getattr(fft_lm, cls_name).from_preset(preset).to(device).eval()
        chunk = getattr(model, "chunk", 1)
        for mode in args.modes.split(","):
            profile_mode(model, cls_name, preset, chunk, mode, prompt, args)
        del model
        torch.cuda.empty_cache()


def profile_mode(model, cls_name, preset, chunk, mode, prompt, args):
    stream = ByteStream(model, prompt, (2 * args.steps + 4) * chunk, mode=mode, temperature=0,
                        cuda_graphs=not args.no_cuda_graphs)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):  # prefill, then graph recording
            stream.step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            stream.step()
        torch.cuda.synchronize()
        wall_ms = (time.perf_counter() - t0) * 1e3 / args.steps
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(args.steps):
                stream.step()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA" and e.self_device_time_total > 0]
    total_us = sum(e.self_device_time_total for e in events)
    count = sum(e.count for e in events)
    per = args.steps
    graphs = "eager" if args.no_cuda_graphs else f"CUDA graphs ({stream.graph_replays} replays)"
    print(f"\n## {cls_name} ({preset}), {mode.replace('_', '-')} step at ctx {args.context}, {graphs}: "
          f"{chunk} byte(s) per step")
    print(f"wall {wall_ms:.3f} ms/step ({chunk / wall_ms * 1e3:,.0f} bytes/s); kernels {count / per:.0f}/step, "
          f"GPU time {total_us / per / 1e3:.3f} ms/step ({chunk / (total_us / per) * 1e6:,.0f} bytes/s of GPU time)")
    print("| kernel | calls/step | us/step |\n|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.top]:
        print(f"| {e.key[:90]} | {e.count / per:.1f} | {e.self_device_time_total / per:.1f} |")


if __name__ == "__main__":
    main()
