"""Training throughput (bytes/s) of SpectralLM vs the GPT baseline, preset "base512" (d=512, 8 layers).

One training step = forward + backward + AdamW step under bf16 autocast, torch.compile on by default.
Median over --steps timed steps after --warmup steps (the warm-up includes compilation), CUDA-synced;
--rounds R > 1 builds both families first and alternates R timing windows between them, so a change
in the host's speed during the run (the 1K step is host-bound) reaches both alike.
Prints a markdown table with the ratio and the ANCHORS.md figures; writes $OUT/bench_lm_throughput.md.

    python benchmarks/bench_lm_throughput.py                    # the ANCHORS.md grid, ~3-4 min on an H100
    python benchmarks/bench_lm_throughput.py --lengths 1024,4096 --steps 20 --no-compile
    python benchmarks/bench_lm_throughput.py --device cpu --lengths 256 --batch 2 --steps 2 --no-compile  # smoke

--compile-scope blocks (default) compiles each residual block (all blocks share one compiled graph, so
each length compiles once per family, in seconds); --compile-scope model compiles the whole model.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from common import command_line, write_out  # noqa: E402
from fft_lm.gpt import GPT  # noqa: E402
from fft_lm.model import PRESETS as SPECTRAL_PRESETS, SpectralLM, SpectralLMConfig  # noqa: E402
from fft_lm.train import inductor_cpp_wrapper, parse_model_set  # noqa: E402

DEFAULT_BATCH = {1024: 32, 4096: 8, 16384: 2, 65536: 1}  # the ANCHORS.md shapes: 32K bytes per step up to 16K
# ANCHORS.md, measured on the device's H100: (GPT with SDPA, torch.fft gated long-conv LM), M bytes/s
ANCHORS = {1024: (1.64, 0.84), 4096: (1.24, 0.81), 16384: (0.63, 0.69), 65536: (0.21, 0.57)}
FAMILIES = {"spectral": SpectralLM, "gpt": GPT}
# GPU kernel name -> part of the step, for --profile's breakdown (first match wins; lower-case substrings)
KERNEL_PARTS = [
    ("causal_conv", ("conv_window", "conv_grad_k", "kernel_spectrum", "conv_direct", "grad_k_taps", "conv_cluster",
                     "conv_tiled", "conv_mma")),
    ("attention", ("flash", "fmha", "attention")),
    ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "splitk")),
    ("optimizer", ("multi_tensor", "adam")),
    ("triton (fused pointwise, norms, reductions)", ("triton",)),
]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", default="1024,4096,16384,65536", help="comma-separated sequence lengths L")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size for every L (default: 32/8/2/1 at 1K/4K/16K/64K, else max(1, 32768 // L))")
    p.add_argument("--steps", type=int, default=10, help="timed steps per (family, L); the median is reported")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--rounds", type=int, default=1,
                   help="timing windows of --steps steps per family; above 1 the families' windows alternate "
                   "and the table adds each round's ratio (both families are resident at once: at long L a "
                   "family that fits alone may run out of memory)")
    p.add_argument("--preset", default="base512", help="preset of both families")
    p.add_argument("--gpt-preset", default=None,
                   help="the GPT's preset when it differs (default: --preset), e.g. --preset 29m-hybrid "
                   "--gpt-preset base512 for the 8-layer ANCHORS.md GPT instead of the matched 9-layer one")
    p.add_argument("--families", default="spectral,gpt", help="comma-separated subset of spectral,gpt")
    p.add_argument("--spectral-set", default="", help="SpectralLM config fields on top of the preset, name=value,... "
                   "(train's --model-set), e.g. attn_blocks=1")
    p.add_argument("--no-compile", action="store_true", help="run eagerly")
    p.add_argument("--compile-scope", choices=["blocks", "model"], default="blocks",
                   help="compile each block (fast to compile) or the whole model")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                   help="torch.compile mode (reduce-overhead: CUDA graphs, no host launch overhead)")
    p.add_argument("--cpp-wrapper", action="store_true",
                   help="Inductor's C++ wrapper (train's --cpp-wrapper): the compiled graphs launch their "
                   "kernels from C++ instead of Python, less host time per step")
    p.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16", help="autocast dtype (fp32 = none)")
    p.add_argument("--profile", action="store_true",
                   help="after timing, print the top GPU kernels and host time of 3 more steps (torch.profiler)")
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds: expected an int >= 1, got {args.rounds}")
    if args.steps < 1:
        p.error(f"--steps: expected an int >= 1, got {args.steps}")
    if args.cpp_wrapper and args.no_compile:
        p.error("--cpp-wrapper: applies to torch.compile's graphs; drop --no-compile")
    # presets are checked here, not in the grid (which reports a family's failure and goes on): a
    # misspelt preset would otherwise surface only after the other family's rows had run
    families = args.families.split(",")
    wanted = [("--preset", args.preset, SpectralLM)] if "spectral" in families else []
    if "gpt" in families:
        wanted.append(("--gpt-preset", args.gpt_preset, GPT) if args.gpt_preset else ("--preset", args.preset, GPT))
    for flag, name, cls in wanted:
        if name not in cls.presets:
            p.error(f"{flag}: expected one of {sorted(cls.presets)} for {cls.__name__}, got {name!r}")
    return args


def build(family, args, device):
    overrides = parse_model_set(args.spectral_set, SpectralLMConfig) if family == "spectral" else {}
    preset = args.gpt_preset if family == "gpt" and args.gpt_preset else args.preset
    model = FAMILIES[family].from_preset(preset, **overrides).to(device)
    model.set_grad_checkpoint(args.grad_checkpoint)
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=fused)
    runner = model
    if not args.no_compile:
        if args.compile_scope == "model":
            runner = torch.compile(model, dynamic=False, mode=args.compile_mode)
        else:
            for block in model.blocks:
                block.compile(dynamic=False, mode=args.compile_mode)
    return model, runner, optimizer


class FamilyRun:
    """One family at one length: built, compiled and warmed up on construction; time(n) runs n
    CUDA-synced training steps and returns their seconds. peak_gib is the memory this family itself
    allocated at its peak (weights, optimizer, activations), whatever else is resident."""

    def __init__(self, family, L, batch, args, device):
        self.family, self.L = family, L
        cuda = device.type == "cuda"
        self.sync = torch.cuda.synchronize if cuda else (lambda: None)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        torch.manual_seed(0)
        self.model, runner, optimizer = build(family, args, device)
        x = torch.randint(0, 256, (batch, L), device=device)
        y = torch.randint(0, 256, (batch, L), device=device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")

        def step():
            with autocast:
                _, loss = runner(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        self.step = step
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            loss = step()
        self.sync()
        self.warmup_s = time.perf_counter() - t0
        if not torch.isfinite(loss):
            raise RuntimeError(f"{family} L={L}: non-finite loss {loss.item()}")
        self.peak_gib = (torch.cuda.max_memory_allocated() - before) / 2**30 if cuda else float("nan")
        self.params = self.model.num_params()

    def time(self, n):
        times = []
        for _ in range(n):
            self.sync()
            t = time.perf_counter()
            self.step()
            self.sync()
            times.append(time.perf_counter() - t)
        return times

    def profile(self, step_ms):
        """torch.profiler over 3 more steps: top GPU kernels, host time, GPU time by part."""
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                self.step()
            self.sync()
        table = prof.key_averages()
        title = f"{self.family} L={self.L}"
        print(f"{title}: top GPU kernels over 3 steps")
        print(table.table(sort_by="self_device_time_total", row_limit=30, max_name_column_width=90))
        # where the host time of a step goes (the GPU idles when this exceeds its kernel time)
        print(f"{title}: top host (CPU) time over 3 steps")
        print(table.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=90))
        print(f"{title}: host time by operator incl. children")
        print(table.table(sort_by="cpu_time_total", row_limit=25, max_name_column_width=90))
        print_gpu_parts(title, table, steps=3, step_ms=step_ms)
        print_launch_sources(title, prof, key_averages=table, steps=3)


def print_launch_sources(title, prof, key_averages, steps):
    """Kernels per step by name (the host pays per launch), and which host ops issue the memsets and
    copies (each runtime call's chain of enclosing ops): what to cut when the step waits on the host."""
    kernels = [(evt.count / steps, evt.self_device_time_total / steps, evt.key) for evt in key_averages
               if evt.device_type == torch.autograd.DeviceType.CUDA and evt.self_device_time_total > 0]
    print(f"{title}: kernels per step by name ({sum(n for n, _, _ in kernels):.0f} in all)")
    print("| per step | us/step | kernel |")
    print("|---|---|---|")
    for n, us, name in sorted(kernels, reverse=True)[:60]:
        print(f"| {n:.0f} | {us:.0f} | {name[:110]} |")
    sources = {}
    for evt in prof.events():
        if evt.name not in ("cudaMemsetAsync", "cudaMemcpyAsync"):
            continue
        chain, parent = [], evt.cpu_parent
        while parent is not None and len(chain) < 4:
            chain.append(parent.name[:60])
            parent = parent.cpu_parent
        key = (evt.name, " < ".join(chain) or "(no enclosing op)")
        sources[key] = sources.get(key, 0) + 1
    print(f"{title}: memsets and copies per step by the ops that issue them")
    for (name, chain), n in sorted(sources.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {n / steps:5.1f}  {name}: {chain}")


def print_gpu_parts(title, key_averages, steps, step_ms):
    """GPU kernel time per step by part (KERNEL_PARTS), against the timed step: where the GPU time goes,
    and how much of the step the GPU idles waiting for the host."""
    parts = {}
    for evt in key_averages:
        if evt.device_type != torch.autograd.DeviceType.CUDA or evt.self_device_time_total <= 0:
            continue
        name = evt.key.lower()
        part = next((p for p, keys in KERNEL_PARTS if any(k in name for k in keys)), "other")
        n, us = parts.get(part, (0, 0.0))
        parts[part] = (n + evt.count, us + evt.self_device_time_total)
    busy = sum(us for _, us in parts.values()) / steps / 1e3
    print(f"{title}: GPU kernel time per step by part (timed step {step_ms:.1f} ms, GPU busy {busy:.1f} ms, "
          f"idle {max(0.0, step_ms - busy):.1f} ms)")
    print("| part | ms/step | kernels/step | share of GPU time |")
    print("|---|---|---|---|")
    for part, (n, us) in sorted(parts.items(), key=lambda kv: -kv[1][1]):
        print(f"| {part} | {us / steps / 1e3:.2f} | {n / steps:.0f} | {us / steps / 1e3 / busy:.0%} |")


def main():
    args = parse_args()
    device = torch.device(args.device)
    lengths = [int(s) for s in args.lengths.split(",") if s]
    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in FAMILIES:
            raise SystemExit(f"--families: expected names from {sorted(FAMILIES)}, got {f!r}")
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):  # one static compile per length is intended
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    started = time.perf_counter()
    results = {}
    with inductor_cpp_wrapper(args.cpp_wrapper):
        run_grid(args, device, lengths, families, results)
    write_table(args, device, lengths, families, results, started)


def run_grid(args, device, lengths, families, results):
    """results[(family, L)] = (bytes/s, s/step, peak GiB) or an error string; results[("rounds", L)] =
    the spectral/GPT ratio of each round's medians when --rounds > 1."""
    for L in lengths:
        batch = args.batch or DEFAULT_BATCH.get(L, max(1, 32768 // L))
        runs, times = {}, {}

        def fail(family, e):
            results[(family, L)] = "OOM" if isinstance(e, torch.cuda.OutOfMemoryError) else f"error: {type(e).__name__}"
            print(f"{family:8s} L={L:6d} batch={batch:3d}: {type(e).__name__}: {e}", flush=True)

        def report(family):
            run = runs[family]
            sec = statistics.median(times[family])
            results[(family, L)] = (batch * L / sec, sec, run.peak_gib)
            print(f"{family:8s} L={L:6d} batch={batch:3d}: {batch * L / sec / 1e6:7.3f} M bytes/s, "
                  f"{sec * 1e3:8.1f} ms/step, peak {run.peak_gib:.1f} GiB, warm-up {run.warmup_s:.0f} s, "
                  f"{run.params / 1e6:.1f}M params", flush=True)
            if args.profile and device.type == "cuda":
                try:
                    run.profile(sec * 1e3)
                except Exception as e:  # the timing stands; the profile is extra
                    print(f"{family:8s} L={L:6d}: profile failed: {type(e).__name__}: {e}", flush=True)
            free(family)

        def free(family):
            runs.pop(family, None)
            if device.type == "cuda":
                torch.cuda.empty_cache()

        # --rounds 1: each family alone on the GPU, built, timed and freed in turn. More rounds: every
        # family is built first and their timing windows alternate, so a drift of the host's speed
        # during the run reaches both families alike.
        for family in families:
            failed = False
            try:
                runs[family] = FamilyRun(family, L, batch, args, device)
                times[family] = []
                if args.rounds == 1:
                    times[family] = runs[family].time(args.steps)
                    report(family)
            except Exception as e:  # keep the rest of the grid; the table shows the failure
                fail(family, e)
                failed = True
            if failed:
                free(family)  # after the except block, whose traceback holds the failed run's tensors
        if args.rounds > 1:
            medians = {family: [] for family in runs}
            for r in range(args.rounds):
                for family in list(runs):
                    try:
                        window = runs[family].time(args.steps)
                    except Exception as e:
                        fail(family, e)
                        window = None
                    if window is None:
                        free(family)
                        continue
                    times[family] += window
                    medians[family].append(statistics.median(window))
            if all(len(medians.get(f, ())) == args.rounds for f in ("spectral", "gpt")):
                results[("rounds", L)] = [g / s for s, g in zip(medians["spectral"], medians["gpt"])]
                print(f"L={L}: spectral / GPT per round: "
                      + ", ".join(f"{v:.2f}x" for v in results[("rounds", L)]), flush=True)
            for family in list(runs):
                report(family)


def spectral_context_note(args):
    """How far back the SpectralLM sees: kernel_len - 1 inputs per conv block, window - 1 per attention
    block (the preset's seq_len unless --spectral-set gives attn_window), where the GPT sees all of L."""
    cfg = SpectralLMConfig(**{**SPECTRAL_PRESETS[args.preset], **parse_model_set(args.spectral_set, SpectralLMConfig)})
    n_attn, window = cfg.attn_blocks, cfg.attn_window or cfg.seq_len
    reach = (cfg.n_layers - n_attn) * (cfg.kernel_len - 1) + n_attn * (window - 1)
    return (f"SpectralLM context: at most {reach} bytes back ({cfg.n_layers - n_attn} conv blocks of "
            f"{cfg.kernel_len} taps" + (f", {n_attn} attention block{'s' if n_attn > 1 else ''} of window {window}" if n_attn else "")
            + "); the GPT attends over all of L, so at longer L the two do not compute the same function.")


def write_table(args, device, lengths, families, results, started):
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    compile_note = "eager" if args.no_compile else (f"torch.compile ({args.compile_scope}"
                                                    + ("" if args.compile_mode == "default" else f", {args.compile_mode}")
                                                    + (", C++ wrapper" if args.cpp_wrapper else "") + ")")
    lines = [
        f"## LM training throughput, preset {args.preset}"
        f"{f' (GPT: preset {args.gpt_preset})' if args.gpt_preset else ''}"
        f"{f' (SpectralLM: {args.spectral_set})' if args.spectral_set else ''}, {args.dtype} autocast, AdamW, {compile_note}"
        f"{', grad checkpointing' if args.grad_checkpoint else ''}",
        f"{gpu}, torch {torch.__version__}; median of "
        f"{f'{args.rounds} alternating windows of {args.steps}' if args.rounds > 1 else args.steps} steps "
        f"after {args.warmup} warm-up; "
        f"total wall time {time.perf_counter() - started:.0f} s.",
        f"Command: `{command_line()}`",
    ] + ([spectral_context_note(args)] if "spectral" in families else []) + [
        "",
        "| L | batch | SpectralLM M bytes/s | GPT (SDPA) M bytes/s | spectral / GPT | SpectralLM ms/step | GPT ms/step "
        "| peak GiB (spectral / GPT) | anchor GPT M/s | anchor torch.fft LM M/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(family, L, i, fmt):
        r = results.get((family, L))
        if r is None:
            return "-"
        return r if isinstance(r, str) else fmt(r[i])

    for L in lengths:
        batch = args.batch or DEFAULT_BATCH.get(L, max(1, 32768 // L))
        s, g = results.get(("spectral", L)), results.get(("gpt", L))
        ratio = f"{s[0] / g[0]:.2f}x" if isinstance(s, tuple) and isinstance(g, tuple) else "-"
        rounds = results.get(("rounds", L))
        if rounds and ratio != "-":
            ratio += f" (rounds {min(rounds):.2f}-{max(rounds):.2f}x)"
        anchor = ANCHORS.get(L)
        lines.append(
            f"| {L} | {batch} | {cell('spectral', L, 0, lambda v: f'{v / 1e6:.3f}')} "
            f"| {cell('gpt', L, 0, lambda v: f'{v / 1e6:.3f}')} | {ratio} "
            f"| {cell('spectral', L, 1, lambda v: f'{v * 1e3:.1f}')} | {cell('gpt', L, 1, lambda v: f'{v * 1e3:.1f}')} "
            f"| {cell('spectral', L, 2, lambda v: f'{v:.1f}')} / {cell('gpt', L, 2, lambda v: f'{v:.1f}')} "
            f"| {anchor[0] if anchor else '-'} | {anchor[1] if anchor else '-'} |")
    table = "\n".join(lines)
    print()
    print(table)
    write_out("bench_lm_throughput", table + "\n")


if __name__ == "__main__":
    main()
