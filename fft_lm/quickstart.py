"""`python -m fft_lm.quickstart`: train a small SpectralLM on the Jargon File, then generate from it.

A smoke test of the whole pipeline, not a good language model:
  CPU: preset "tiny" (~1M params), 256-byte context, about 2 minutes of training;
  GPU: preset "small" (~6M params), 512-byte context, bf16, about 3 minutes.
Training goes through fft_lm.train (same loop, curriculum, checkpoints as train_fixed_full); the
model is then loaded back with fft_lm.load_checkpoint and sampled with fft_lm.generate.
Outputs under --out (default ./runs/quickstart/): ckpt.pt, metrics.jsonl, curves.png.
"""
import argparse
import os

import numpy as np
import torch

import fft_lm
from fft_lm.data import ByteCorpus
from fft_lm.device import resolve_device
from fft_lm.generation import generate
from fft_lm.train import LN2, ConfigError, TrainConfig, train


def unigram_bpb(corpus):
    """Bits per byte on the validation tail of a byte-frequency model fitted to the training split:
    the floor any LM must beat to have learned more than letter frequencies."""
    counts = np.bincount(np.asarray(corpus.train), minlength=256).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    val = np.bincount(np.asarray(corpus.val), minlength=256)
    return float(-(val * logp).sum() / val.sum() / LN2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", default="", help="corpus file/directory (default: the Jargon File)")
    parser.add_argument("--out", default=os.path.join("runs", "quickstart"), help="output directory")
    parser.add_argument("--budget-s", type=float, default=0.0,
                        help="training wall-clock budget in seconds (0 = 120 on CPU, 180 on a GPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--prompt", default="The hacker ", help="text the generated paragraph continues")
    parser.add_argument("--gen-bytes", type=int, default=400, help="bytes to generate")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device, allow_auto=True)
    except ValueError as e:  # a bad --device, or cuda without a GPU: usage and the message, no traceback
        parser.error(str(e))
    on_gpu = device.type == "cuda"
    common = dict(data=args.data, device=args.device, seed=args.seed, eval_every=0, log_every_steps=10,
                  ckpt_path=os.path.join(args.out, "ckpt.pt"), overwrite=True,  # each quickstart starts over
                  curriculum_start_bins=16, curriculum_frac=0.5,
                  steps_per_epoch=100_000,  # the time budget ends the run; lr and curriculum follow the clock
                  keep_best=False)  # one evaluation, at the end: the best weights are the checkpoint's
    if on_gpu:
        cfg = TrainConfig(preset="small", seq_len=512, batch_size=32, lr=2e-3, warmup_steps=100,
                          dtype="bfloat16", eval_batches=20, max_time_s=args.budget_s or 180.0, **common)
    else:
        if not os.environ.get("OMP_NUM_THREADS"):  # every core, unless the user chose a thread count
            torch.set_num_threads(max(1, os.cpu_count() or 1))
        cfg = TrainConfig(preset="tiny", seq_len=256, batch_size=8, lr=3e-3, warmup_steps=20,
                          eval_batches=8, max_time_s=args.budget_s or 120.0, **common)

    try:  # fails early: a missing corpus is a usage error naming --data (and how to install the default)
        corpus = ByteCorpus(cfg.data or None, val_frac=cfg.val_frac)
    except (FileNotFoundError, ValueError) as e:
        parser.error(str(e))
    print(f"quickstart: training SpectralLM preset {cfg.preset!r} on {corpus.source} for {cfg.max_time_s:.0f} s "
          f"({'GPU' if on_gpu else 'CPU'}), frequency curriculum from {cfg.curriculum_start_bins} bins to full band")
    try:
        result = train(cfg)
    except ConfigError as e:  # a bad --data or setting: usage and the message, no traceback
        parser.error(str(e))

    model, meta = fft_lm.load_checkpoint(cfg.ckpt_path)
    model.to(device)
    text = generate(model, args.prompt.encode("utf-8"), args.gen_bytes, mode="overlap_save",
                           temperature=0.8, top_k=40, seed=args.seed)

    print("\n--- sample (temperature 0.8, top-k 40) ---")
    print(args.prompt + text.decode("utf-8", errors="replace"))
    print("--- end of sample ---\n")
    print(f"steps: {result['step']}, bytes seen: {result['bytes_seen']:,}, params: {result['n_params']:,}")
    print(f"validation bits per byte: {result['val_bpb']:.3f} "
          f"(train windows, same measure: {result['train_eval_bpb']:.3f}; "
          f"byte-frequency baseline: {unigram_bpb(corpus):.3f}; uniform bytes: 8.000)")
    print("This tiny model, trained for a few minutes, is a smoke test of the pipeline, not a useful LM.")
    print(f"checkpoint: {os.path.abspath(cfg.ckpt_path)}")
    print(f"metrics:    {os.path.abspath(result['metrics_path'])}")
    print(f"plot:       {os.path.abspath(result['plot_path'])}")
    return result


if __name__ == "__main__":
    main()
