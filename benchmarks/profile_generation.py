"""Where a generation step's time goes: host wall time per step against the GPU kernels it runs.

    python benchmarks/profile_generation.py                         # H100: base512 SpectralLM and 29m ChunkLM, ctx 8K
    python benchmarks/profile_generation.py --models spectral --no-cuda-graphs

Per model: prefill a random context, warm up (CUDA graphs recorded), then time --steps steps (wall
clock, synced) and profile as many more with torch.profiler: kernels per step, summed kernel time per
step, and the top kernels by total time. Wall time minus kernel time is launch and host overhead.
"""
import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fft_lm  # noqa: E402
from fft_lm.generation import ByteStream  # noqa: E402

MODELS = {"spectral": ("SpectralLM", "base512"), "chunk": ("ChunkLM", "29m"), "gpt": ("GPT", "29m")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="spectral,chunk")
    p.add_argument("--context", type=int, default=8192)
    p.add_argument("--steps", type=int, default=64, help="steps timed, then as many profiled")
    p.add_argument("--no-cuda-graphs", action="store_true")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    device = torch.device("cuda")
    prompt = bytes(torch.randint(0, 256, (args.context,), generator=torch.Generator().manual_seed(0)).tolist())
    for key in args.models.split(","):
        cls_name, preset = MODELS[key]
        torch.manual_seed(0)
        model = getattr(fft_lm, cls_name).from_preset(preset).to(device).eval()
        chunk = getattr(model, "chunk", 1)
        stream = ByteStream(model, prompt, (2 * args.steps + 4) * chunk, mode="overlap_save", temperature=0,
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
        print(f"\n## {cls_name} ({preset}), overlap-save step at ctx {args.context}, "
              f"{'eager' if args.no_cuda_graphs else 'CUDA graphs'}: {chunk} byte(s) per step")
        print(f"wall {wall_ms:.3f} ms/step ({chunk / wall_ms * 1e3:,.0f} bytes/s); kernels {count / per:.0f}/step, "
              f"GPU time {total_us / per / 1e3:.3f} ms/step")
        print("| kernel | calls/step | us/step |\n|---|---|---|")
        for e in sorted(events, key=lambda e: -e.self_device_time_total)[:args.top]:
            print(f"| {e.key[:90]} | {e.count / per:.1f} | {e.self_device_time_total / per:.1f} |")
        del model, stream
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
