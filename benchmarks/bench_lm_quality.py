"""Quality after a fixed wall-clock budget: SpectralLM vs GPT, same preset scale, same training loop.

    python benchmarks/bench_lm_quality.py --data /path/to/gcide.txt --budget-s 120

Each family is trained by fft_lm.train.train (the code path of train_fixed_full) for --budget-s
seconds of training (evaluation excluded): L=1024, batch 32, bf16 autocast, AdamW 1e-3 with warmup
and a cosine that ends when the budget does, no torch.compile unless --compile. SpectralLM uses its
frequency curriculum (from --curriculum-start-bins to the full band over the first half of the
budget). Then both are evaluated on the same fixed windows: validation = the corpus's held-out 10%
tail, "train" = windows of the training split measured the same way (memorisation shows as train
far below val). A short greedy sample of each model is printed too.
--seeds 1,2,3 repeats the pair once per seed (spectral then GPT each time, so both see the same
machine state) and adds per-family means and the per-seed difference: how far one run's ranking can
be trusted.
Prints a markdown table last; writes $OUT/bench_lm_quality.md (and per-model metrics JSONL / PNG)
when $OUT is set. Checkpoints go to --ckpt-dir (not $OUT: they are large).
"""
import argparse
import gc
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import fft_lm  # noqa: E402
from fft_lm.generation import generate  # noqa: E402
from fft_lm.train import TrainConfig, train  # noqa: E402

PROMPT = b"The meaning of the word "


def run_one(family, seed, args, out_dir, tag=""):
    cfg = TrainConfig(
        data=args.data, family=family, preset=args.preset, seq_len=args.seq_len, batch_size=args.batch_size,
        lr=args.lr, warmup_steps=args.warmup_steps, dtype=args.dtype, compile=args.compile, seed=seed,
        max_time_s=args.budget_s, steps_per_epoch=10_000_000, eval_every=args.eval_every, eval_batches=args.eval_batches,
        log_every_steps=25, curriculum_start_bins=args.curriculum_start_bins,
        curriculum_frac=args.curriculum_frac if family == "spectral" else 0.0,
        model_set=args.spectral_set if family == "spectral" else args.gpt_set,
        ckpt_path=os.path.join(args.ckpt_dir, family + tag, "ckpt.pt"), overwrite=True,  # a benchmark run starts over
        metrics_path=os.path.join(out_dir, f"bench_lm_quality_{family}{tag}.jsonl"),
        plot_path=os.path.join(out_dir, f"bench_lm_quality_{family}{tag}.png"))
    result = train(cfg)
    result["best_val"] = best_validation(cfg.metrics_path)
    model, _ = fft_lm.load_checkpoint(cfg.ckpt_path)
    model.to(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    sample = generate(model, PROMPT, args.sample_bytes, mode="overlap_save", temperature=0)
    result["sample"] = (PROMPT + sample).decode("utf-8", errors="replace")
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def warm_up_process():
    """CUDA context, cuBLAS handles, SDPA and our op's first launches, outside every model's budget (the
    clock starts before a run's first step, so otherwise the first model would pay them)."""
    if not torch.cuda.is_available():  # the runs train on the default device: the GPU when there is one
        return
    import fft_tensor
    import torch.nn.functional as F
    x = torch.randn(2, 64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(64, 128, device="cuda", requires_grad=True)
    torch.autograd.grad(fft_tensor.causal_conv(x, k).float().sum() + (x.flatten(1) @ x.flatten(1).t()).float().sum(),
                        (x, k))
    q = torch.randn(2, 4, 256, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    torch.autograd.grad(F.scaled_dot_product_attention(q, q, q, is_causal=True).float().sum(), q)
    torch.cuda.synchronize()


def best_validation(metrics_path):
    """(val bits per byte, step, seconds) of the run's best evaluation, from its metrics JSONL."""
    with open(metrics_path) as f:
        evals = [r for r in map(json.loads, f) if r.get("val_bpb") is not None]
    best = min(evals, key=lambda r: r["val_bpb"])
    return best["val_bpb"], best["step"], best["time_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="", help="corpus: text file, .gz or directory (default: the Jargon File)")
    p.add_argument("--budget-s", type=float, default=120.0, help="training seconds per model")
    p.add_argument("--preset", default="29m", help="preset for both families (29m: ~28.6M each)")
    p.add_argument("--families", default="spectral,gpt")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--curriculum-start-bins", type=int, default=128)
    p.add_argument("--curriculum-frac", type=float, default=0.5)
    p.add_argument("--eval-batches", type=int, default=50, help="fixed batches of seq-len windows per split")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also validate every this many steps (0: at the end only); adds the best validation "
                        "bits per byte and when it was reached (the early-stopping figure: on a small corpus "
                        "both families memorise, and the final value then says how far, not how good). "
                        "Evaluation time does not count against the budget")
    p.add_argument("--sample-bytes", type=int, default=200)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--seeds", default="", help="comma-separated seeds: one run of every family per seed "
                   "(replaces --seed), with means and per-seed differences")
    p.add_argument("--spectral-set", default="", help="SpectralLM config fields on top of the preset, "
                   "name=value,... (train's --model-set), e.g. pre_gate=true")
    p.add_argument("--gpt-set", default="", help="the same for the GPT")
    p.add_argument("--no-context-use", action="store_true",
                   help="skip the table of validation bits per byte by position and copyability (context_use.py)")
    p.add_argument("--ckpt-dir", default="/tmp/bench_lm_quality")
    args = p.parse_args()

    out_dir = os.environ.get("OUT") or os.path.join(args.ckpt_dir, "out")
    os.makedirs(out_dir, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    families = args.families.split(",")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v] or [args.seed]
    except ValueError:
        p.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    multi = len(seeds) > 1
    runs = {}  # (family, seed) -> result
    warm_up_process()
    for i, seed in enumerate(seeds):
        for family in (families if i % 2 == 0 else families[::-1]):  # alternate which model runs first
            runs[family, seed] = run_one(family, seed, args, out_dir, tag=f"_seed{seed}" if multi else "")
    results = {family: runs[family, seeds[-1]] for family in families}  # samples and context use: last seed

    samples = []
    for family, r in results.items():
        samples += [f"{family} greedy sample{f' (seed {seeds[-1]})' if multi else ''}:", "```", r["sample"], "```", ""]
    lines = [f"## LM quality after {args.budget_s:.0f} s of training each ({device}, torch {torch.__version__})", "",
             f"corpus: {args.data or 'Jargon File (default)'}; preset {args.preset}; L={args.seq_len}, "
             f"batch {args.batch_size}, {args.dtype}, AdamW lr {args.lr} warmup {args.warmup_steps} + cosine to the "
             f"budget, compile={args.compile}; val = held-out 10% tail, {args.eval_batches} fixed batches per split",
             "", "| model | params | steps | bytes seen | train bytes/s | train bpb (eval) | val bpb |"
             + (" best val bpb (step, s) |" if args.eval_every else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if args.eval_every else "")]
    sets = {"spectral": args.spectral_set, "gpt": args.gpt_set}
    for (family, seed), r in runs.items():
        label = f"{family} ({sets[family]})" if sets.get(family) else family
        label += f", seed {seed}" if multi else ""
        lines.append(f"| {label} | {r['n_params'] / 1e6:.1f}M | {r['step']} | {r['bytes_seen'] / 1e6:.1f}M | "
                     f"{r['bytes_seen'] / max(1e-9, r['elapsed_s']) / 1e6:.2f}M | {r['train_eval_bpb']:.3f} | "
                     f"{r['val_bpb']:.3f} |" + (" {:.3f} ({}, {:.0f}) |".format(*r["best_val"]) if args.eval_every else ""))
    if multi:
        lines += ["", "| model | seeds | val bpb mean | min | max |", "|---|---|---|---|---|"]
        for family in families:
            vals = [runs[family, seed]["val_bpb"] for seed in seeds]
            lines.append(f"| {family} | {len(vals)} | {sum(vals) / len(vals):.3f} | {min(vals):.3f} | {max(vals):.3f} |")
        if "spectral" in families and "gpt" in families:
            diffs = [runs["spectral", seed]["val_bpb"] - runs["gpt", seed]["val_bpb"] for seed in seeds]
            lines += ["", "spectral - gpt val bpb per seed: " + ", ".join(f"{d:+.3f}" for d in diffs)
                      + f" (mean {sum(diffs) / len(diffs):+.3f}; negative: spectral better)"]
    table = "\n".join(lines)
    if not args.no_context_use:
        from context_use import context_table
        ckpts = [r["ckpt_path"] for r in results.values()]
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
        table += "\n\n" + context_table(ckpts, args.data, args.seq_len, max_windows=256, device=device_name).replace(
            "## Validation", "### Validation")
    with open(os.path.join(out_dir, "bench_lm_quality.md"), "w") as f:
        f.write(table + "\n\n" + "\n".join(samples))
    print("\n".join(samples))
    print(table)


if __name__ == "__main__":
    main()
