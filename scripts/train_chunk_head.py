r"""Train a ChunkLM: the spectral backbone plus the chunk head that predicts `--chunk` bytes per step.

    python -m scripts.train_chunk_head --preset tiny --seq-len 256 --chunk 16 --steps-per-epoch 300
    python -m scripts.train_chunk_head --preset 29m --seq-len 1024 --kernel-len 128 --chunk 16 \
        --batch-size 32 --dtype bfloat16 --compile --ckpt runs/chunk/ckpt.pt
    python -m scripts.train_chunk_head --init-backbone runs/train/ckpt.pt --chunk 16 ...   # from a trained backbone

The loop is fft_lm.train's (data, curriculum, resume, progress bar, metrics, plot, DDP, compile);
the flags are its flags plus --chunk, --init-backbone and the head sizes. The original pipeline's spellings
--ckpt and --log-every are aliases of --ckpt-path and --log-every-steps. Reported losses are the
per-byte cross-entropy over every byte of every predicted chunk, in bits per byte.
"""
import json
import os
import sys
from dataclasses import dataclass

import torch

from fft_lm.checkpoint import read_checkpoint
from fft_lm.chunk import PRESETS, ChunkLM
from fft_lm.train import (ConfigError, NonFiniteLossError, TrainConfig, announce_resume, build_arg_parser,
                          parse_config, resume_config, to_plain, train)


@dataclass
class ChunkTrainConfig(TrainConfig):
    family: str = "chunk"  # model family (this script trains the chunk family only)
    ckpt_path: str = "runs/chunk/ckpt.pt"  # checkpoint file ("" = no checkpoints)
    chunk: int = 16  # bytes the head predicts per backbone step
    init_backbone: str = ""  # start the backbone from this SpectralLM (or ChunkLM) checkpoint ("" = random init)
    head_dim: int = 0  # chunk decoder width (0 = the preset's)
    head_layers: int = 0  # chunk decoder transformer blocks (0 = the preset's)
    head_heads: int = 0  # chunk decoder attention heads (0 = the preset's)


HEAD_FIELDS = ("head_dim", "head_layers", "head_heads")


def head_overrides(cfg):
    return {name: getattr(cfg, name) for name in HEAD_FIELDS if getattr(cfg, name)}


def check_resume_flags(cfg, given=frozenset()):
    """--resume continues the ChunkLM in --ckpt with its own sizes: a checkpoint of another family, or
    model flags that differ from the run's (the head sizes; --chunk when given), are errors rather than
    silently ignored."""
    ckpt = read_checkpoint(cfg.ckpt_path, mmap=True)  # metadata only: train() reads the weights
    if ckpt.get("family") != "chunk":
        raise ValueError(f"--resume: {cfg.ckpt_path} is a {ckpt.get('family')!r} checkpoint, not a ChunkLM "
                         f"(continue it with python -m fft_lm.train_fixed_full --resume)")
    have = ckpt.get("model_config") or {}
    model_flags = head_overrides(cfg)
    if "chunk" in given:  # its default (16) is not "the run's": only a --chunk on this command line is checked
        model_flags["chunk"] = cfg.chunk
    for name, value in model_flags.items():  # (fft_lm.train.resume_config checks --kernel-len)
        run = have.get(name)
        if run is not None and run != value:
            raise ValueError(f"--{name.replace('_', '-')} {value} differs from the run being resumed "
                             f"({name}={run}); leave it out with --resume")


def build_chunk_model(cfg):
    """The ChunkLM to train, or None on --resume (fft_lm.train rebuilds it from the checkpoint)."""
    if cfg.model_set:
        raise ValueError("--model-set: not supported by train_chunk_head (its model flags are --seq-len, "
                         "--kernel-len, --chunk, --head-dim, --head-layers and --head-heads)")
    if cfg.resume:  # main() has checked the checkpoint's family and head flags (check_resume_flags)
        return None
    torch.manual_seed(cfg.seed)
    if cfg.init_backbone:
        head = {name: PRESETS[cfg.preset][name] for name in HEAD_FIELDS}  # "0 = the preset's", as without it
        head.update(head_overrides(cfg))
        model = ChunkLM.from_backbone_checkpoint(cfg.init_backbone, chunk=cfg.chunk, **head)
        have = model.backbone.config.kernel_len
        if cfg.kernel_len and cfg.kernel_len != have:
            raise ValueError(f"--kernel-len {cfg.kernel_len} does not match the backbone checkpoint "
                             f"{cfg.init_backbone!r} (kernel_len={have}); leave it out")
        return model
    overrides = dict(chunk=cfg.chunk, **head_overrides(cfg))
    if cfg.seq_len:  # 0 = the preset's
        overrides["seq_len"] = cfg.seq_len
    if cfg.kernel_len:
        overrides["kernel_len"] = cfg.kernel_len
    return ChunkLM.from_preset(cfg.preset, **overrides)


def main(argv=None):
    parser = build_arg_parser(ChunkTrainConfig, aliases={"ckpt_path": ["--ckpt"], "log_every_steps": ["--log-every"]},
                              description=__doc__.strip().splitlines()[0], hidden=("family", "model_set"))
    cfg, given = parse_config(parser, ChunkTrainConfig, argv)
    try:
        if cfg.resume:  # first: a checkpoint of another family names itself, not the --family it would pass on
            check_resume_flags(cfg, given)
        cfg, changed = resume_config(cfg, given)  # --resume: the run's own settings for flags not given
    except (ValueError, RuntimeError) as e:  # ConfigError is a ValueError, CheckpointError a RuntimeError
        parser.error(str(e))
    if cfg.family != "chunk":
        parser.error(f"--family: this script trains family 'chunk', got {cfg.family!r} (use fft_lm.train_fixed_full)")
    if cfg.preset not in PRESETS:
        parser.error(f"--preset: expected one of {sorted(PRESETS)}, got {cfg.preset!r}")
    if cfg.chunk < 1:
        parser.error(f"--chunk: expected an int >= 1, got {cfg.chunk}")
    if cfg.init_backbone and cfg.resume:
        parser.error("--init-backbone and --resume: give one (resume continues the ChunkLM in --ckpt)")
    announce_resume(cfg, changed)
    try:
        model = build_chunk_model(cfg)
    except (ValueError, RuntimeError) as e:  # CheckpointError is a RuntimeError
        parser.error(str(e))
    if model is not None and int(os.environ.get("RANK", 0)) == 0:
        print(model.describe() + (f" (backbone from {cfg.init_backbone})" if cfg.init_backbone else ""))
    try:
        metrics = train(cfg, model=model)
    except ConfigError as e:
        parser.error(str(e))
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(to_plain(metrics)))


if __name__ == "__main__":
    main()
