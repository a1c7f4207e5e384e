"""Training loop for every fft_lm family (spectral, gpt, chunk): one flat loop, nanoGPT style.

    python -m fft_lm.train_fixed_full --preset tiny --seq-len 256 --steps-per-epoch 500
    torchrun --nproc_per_node 8 -m fft_lm.train_fixed_full --preset 29m --dtype bfloat16 --compile

Every flag is a field of TrainConfig (its comment is the --help text). Steps are optimizer steps;
one step = accum_steps micro-batches of batch_size windows of seq_len bytes on each rank, so a step
sees batch_size * accum_steps * world_size * seq_len bytes. Losses are in bits per byte (bpb).

Schedules (pure functions of the step, so resume is exact):
  learning rate   linear warmup over warmup_steps, then cosine decay to lr * min_lr_frac at the last
                  step; with max_time_s > 0, progress = max(step / total_steps, elapsed / max_time_s),
                  so a wall-clock budget still ends at the bottom of the cosine (not bit-exact on resume).
  curriculum      for models with set_freq_cutoff (SpectralLM): the cutoff starts at
                  curriculum_start_bins and grows geometrically, cutoff(t) = start * (full / start) **
                  (t / (curriculum_frac * total_steps)), reaching the full band (model.freq_bins) at
                  curriculum_frac of the run and staying there; curriculum_frac = 0 switches it off.
                  With max_time_s > 0 the run's progress is also measured in time, as for the lr.
Reuse: train(cfg, model=my_model) trains any module that follows the fft_lm.families protocol;
subclass TrainConfig to add fields and pass the subclass to build_arg_parser / config_from_args.
"""
import contextlib
import dataclasses
import inspect
import io
import json
import math
import os
import sys
import time
import tokenize
from dataclasses import dataclass

import torch

from fft_lm.atomic import atomic_write, remove_stale_temp_files
from fft_lm.checkpoint import (CheckpointError, load_weights, model_from_checkpoint, read_checkpoint,
                               save_checkpoint, set_rng_state, to_plain)
from fft_lm.data import ByteCorpus
from fft_lm.device import resolve_device
from fft_lm.families import model_class
from fft_lm.plot import plot_metrics

LN2 = math.log(2.0)


@dataclass
class TrainConfig:
    # data
    data: str = ""  # corpus: a text file, a .gz file or a directory of files ("" = the Jargon File)
    val_frac: float = 0.1  # held-out tail of the corpus used for validation
    # model
    family: str = "spectral"  # model family: spectral | gpt | chunk (scripts.train_chunk_head has the chunk head's own flags)
    preset: str = "tiny"  # model preset: tiny | small | 29m | base512 | 29m-hybrid
    seq_len: int = 0  # context length in bytes of each training window (0 = the preset's, 1024 for 29m)
    kernel_len: int = 0  # conv kernel taps for the spectral family (0 = the preset's value)
    model_set: str = ""  # model config fields set on top of the preset, "name=value,..." (e.g. "pre_gate=true,dropout=0.1")
    grad_checkpoint: bool = False  # activation checkpointing per block (long contexts on one GPU)
    # optimizer
    lr: float = 1e-3  # peak learning rate (AdamW)
    min_lr_frac: float = 0.1  # final learning rate as a fraction of --lr
    warmup_steps: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # AdamW weight decay on nn.Linear weights only (not norms, embeddings, kernels)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    # loop
    batch_size: int = 8  # windows per micro-batch per rank
    accum_steps: int = 1  # micro-batches accumulated per optimizer step
    steps_per_epoch: int = 1000  # optimizer steps per epoch
    epochs: int = 1  # total steps = steps_per_epoch * epochs
    max_time_s: float = 0.0  # wall-clock budget in seconds: stop and evaluate when exceeded (0 = none)
    stop_after_steps: int = 0  # stop (and checkpoint) after this many steps in this run, schedule unchanged (0 = off)
    # curriculum
    curriculum_start_bins: int = 128  # frequency cutoff at step 0, in FFT bins (spectral family)
    curriculum_frac: float = 0.5  # fraction of the run over which the cutoff grows to the full band (0 = off)
    # evaluation and logging
    eval_every: int = 500  # validate (and checkpoint) every this many steps (0 = only at the end)
    eval_batches: int = 20  # validation batches per evaluation: batch_size * eval_batches evenly spaced held-out windows, so compare runs at equal --batch-size and --eval-batches
    log_every_steps: int = 10  # write a train metrics line every this many steps
    # I/O
    ckpt_path: str = "runs/train/ckpt.pt"  # checkpoint file ("" = no checkpoints; metrics and plot then go to runs/train/ unless --metrics-path/--plot-path)
    metrics_path: str = ""  # JSONL metrics ("" = metrics.jsonl next to the checkpoint)
    plot_path: str = ""  # PNG of train/val bpb ("" = curves.png next to the checkpoint, "-" = no plot)
    resume: bool = False  # continue the run saved at --ckpt-path (model, optimizer, step, RNG, data) with its own settings; flags given with it change them
    overwrite: bool = False  # start a new run even if --ckpt-path holds one (its checkpoint and metrics are deleted at the start); without it that is an error
    keep_best: bool = True  # also keep the weights of the best validation point so far in <ckpt-path stem>.best.pt (weights only; fft_lm.load_checkpoint reads it): on a small corpus a model memorises, and the last checkpoint is then not the best
    # system
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    dtype: str = "float32"  # float32 | bfloat16 (autocast; the conv op keeps its FFTs in fp32)
    compile: bool = False  # torch.compile the model
    compile_mode: str = "default"  # torch.compile mode with --compile: default | reduce-overhead (CUDA graphs: less host time per step) | max-autotune-no-cudagraphs
    cpp_wrapper: bool = False  # with --compile: Inductor's C++ wrapper launches the compiled kernels from C++ (less host time per step; slower first compile)
    seed: int = 1337  # seeds the model init and the data stream
    progress: bool = True  # tqdm progress bar (redrawn every 0.5 s on a terminal, every 30 s into a file)

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.epochs


# ----------------------------------------------------------------------------- command line

def field_comments(cls):
    """{field: comment} from the `name: type = default  # comment` lines of cls and its bases."""
    helps = {}
    for klass in reversed(cls.__mro__):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                line = tok.line.strip()
                name = line.split(":", 1)[0].strip()
                if name.isidentifier() and ":" in line and not line.startswith("#"):
                    helps[name] = tok.string.lstrip("# ").strip()
    return helps


def build_arg_parser(config_cls=TrainConfig, *, aliases=None, description=None, hidden=()):
    """An argparse parser with one --flag-name per dataclass field (bools get --no-flag too).

    aliases: {field: ["--other-name", ...]} extra spellings (e.g. the chunk script's --ckpt).
    hidden: fields whose flags --help leaves out (a script that fixes them; given, they still parse).
    """
    import argparse
    parser = argparse.ArgumentParser(description=description or (config_cls.__doc__ or "").strip() or None,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    helps = field_comments(config_cls)
    aliases = aliases or {}
    for f in dataclasses.fields(config_cls):
        flags = ["--" + f.name.replace("_", "-")] + list(aliases.get(f.name, []))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        kind = type(default)
        text = argparse.SUPPRESS if f.name in hidden else helps.get(f.name, f.name)
        if kind is bool:
            parser.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=text)
        else:
            parser.add_argument(*flags, dest=f.name, type=kind, default=default, help=text)
    if any(f.name == "dtype" for f in dataclasses.fields(config_cls)):
        parser.add_argument("--amp", dest="dtype", action="store_const", const="bfloat16",
                            help="alias for --dtype bfloat16")
    return parser


def config_from_args(argv=None, config_cls=TrainConfig, **parser_kwargs):
    args = build_arg_parser(config_cls, **parser_kwargs).parse_args(argv)
    return config_cls(**vars(args))


def parse_config(parser, config_cls, argv=None):
    """(config, the names of the fields the command line set, whatever their values)."""
    cfg = config_cls(**vars(parser.parse_args(argv)))
    unset = object()
    dests = {a.dest for a in parser._actions if a.dest != "help"}
    defaults = {d: parser.get_default(d) for d in dests}
    parser.set_defaults(**{d: unset for d in dests})
    try:
        given = {name for name, value in vars(parser.parse_args(argv)).items() if value is not unset}
    finally:
        parser.set_defaults(**defaults)
    return cfg, given


# What one invocation decides for itself; --resume takes every other field from the run it continues.
PER_INVOCATION_FIELDS = frozenset({"resume", "overwrite", "stop_after_steps", "ckpt_path", "device", "compile",
                                   "compile_mode", "cpp_wrapper", "progress", "init_backbone"})
# What the resumed run's model is: the checkpoint rebuilds it, so a flag may only repeat these.
RUN_MODEL_FIELDS = ("family", "preset", "kernel_len")


def saved_kernel_len(ckpt):
    """The kernel taps of a checkpoint's model (a ChunkLM's are its backbone's); None when it has none."""
    config = ckpt.get("model_config") or {}
    return config.get("kernel_len", (config.get("backbone") or {}).get("kernel_len"))


def resume_config(cfg, given):
    """With --resume: cfg with the run's own settings (its checkpoint's train_config) for every field the
    command line did not set, so a bare `--resume --ckpt-path P` continues the run as it was (batch size,
    schedule, curriculum, data, preset...). Returns (cfg, {field: (run's value, given value)}) for the
    flags that change a setting of the run. A flag that would change the run's model (--family, --preset,
    --kernel-len: the checkpoint rebuilds the model, so it would be ignored) is a ConfigError. An
    unreadable checkpoint is left to train() to report."""
    if not cfg.resume or not cfg.ckpt_path:
        return cfg, {}
    try:
        ckpt = read_checkpoint(cfg.ckpt_path, map_location="cpu", mmap=True)
    except (CheckpointError, OSError):
        return cfg, {}
    saved = ckpt.get("train_config") or {}
    fields = {f.name for f in dataclasses.fields(cfg)} - PER_INVOCATION_FIELDS
    inherited = {name: saved[name] for name in fields - set(given) if name in saved}
    changed = {name: (saved[name], getattr(cfg, name)) for name in fields & set(given)
               if name in saved and saved[name] != getattr(cfg, name)}
    model_values = {"family": ckpt.get("family"), "preset": saved.get("preset"), "kernel_len": saved_kernel_len(ckpt)}
    for name in RUN_MODEL_FIELDS:
        value = getattr(cfg, name)
        if name == "kernel_len" and value == 0:  # 0 = the preset's: not a change
            continue
        differs = value != model_values[name] and (model_values[name] is not None or name == "kernel_len")
        if name in given and differs:
            raise ConfigError(f"--{name.replace('_', '-')} {value!r} differs from the run being resumed "
                              f"({name}={model_values[name]!r}; --resume rebuilds its model from {cfg.ckpt_path}): "
                              f"leave it out, or start a new run with another --ckpt-path")
        changed.pop(name, None)  # given and equal to the model's (a saved 0 means the preset's value)
    return dataclasses.replace(cfg, **inherited), changed


def announce_resume(cfg, changed):
    if cfg.resume and int(os.environ.get("RANK", 0)) == 0:
        what = ", ".join(f"--{k.replace('_', '-')} {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        print(f"--resume: the run's own settings from {cfg.ckpt_path}" + (f"; changed here: {what}" if what else ""))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def validate_config(cfg):
    checks = [("batch_size", cfg.batch_size >= 1), ("accum_steps", cfg.accum_steps >= 1),
              ("seq_len", cfg.seq_len >= 0), ("steps_per_epoch", cfg.steps_per_epoch >= 1),
              ("epochs", cfg.epochs >= 1), ("lr", cfg.lr > 0), ("eval_batches", cfg.eval_batches >= 1),
              ("curriculum_frac", 0 <= cfg.curriculum_frac <= 1), ("log_every_steps", cfg.log_every_steps >= 1),
              ("lr", math.isfinite(cfg.lr)), ("min_lr_frac", 0 <= cfg.min_lr_frac <= 1),
              ("warmup_steps", cfg.warmup_steps >= 0), ("weight_decay", cfg.weight_decay >= 0),
              ("beta1", 0 <= cfg.beta1 < 1), ("beta2", 0 <= cfg.beta2 < 1), ("grad_clip", cfg.grad_clip >= 0),
              ("eval_every", cfg.eval_every >= 0), ("stop_after_steps", cfg.stop_after_steps >= 0),
              ("max_time_s", cfg.max_time_s >= 0), ("val_frac", 0 < cfg.val_frac < 1)]
    for name, ok in checks:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')}: got {getattr(cfg, name)!r}, which is out of range")
    if cfg.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"--dtype: expected float32 or bfloat16, got {cfg.dtype!r}")
    if cfg.compile_mode not in COMPILE_MODES:
        raise ValueError(f"--compile-mode: expected one of {COMPILE_MODES}, got {cfg.compile_mode!r}")
    if cfg.cpp_wrapper and not cfg.compile:
        raise ValueError("--cpp-wrapper: applies to torch.compile's graphs; add --compile")
    if cfg.resume and not cfg.ckpt_path:
        raise ValueError("--resume needs --ckpt-path pointing at the run to continue")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite: give one (--resume continues the run at --ckpt-path, "
                         "--overwrite starts a new run in its place)")


@contextlib.contextmanager
def inductor_cpp_wrapper(enabled: bool):
    """Inductor's C++ wrapper (compiled graphs launch their kernels from C++, not Python) for graphs
    compiled inside the block, restored after. torch.compile compiles lazily, at the first forward and
    backward, so the setting must hold while the model runs. (Passing it as a per-call torch.compile
    option instead failed on the GPU: "CudaKernelParamCache not populated" for the Triton kernels.)"""
    if not enabled:
        yield
        return
    import torch._inductor.config as inductor_config
    with inductor_config.patch(cpp_wrapper=True):
        yield


# ----------------------------------------------------------------------------- schedules

def lr_at(cfg, step, elapsed_s=0.0):
    """Learning rate for optimizer step `step` (0-based): warmup, then cosine to lr * min_lr_frac."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.total_steps - 1 - cfg.warmup_steps)  # 1 at the last step
    if cfg.max_time_s > 0:
        progress = max(progress, elapsed_s / cfg.max_time_s)
    progress = min(1.0, progress)
    min_lr = cfg.lr * cfg.min_lr_frac
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def cutoff_at(cfg, step, full_bins, elapsed_s=0.0):
    """Curriculum frequency cutoff in bins at `step`; None means the full band (see module docstring)."""
    start = cfg.curriculum_start_bins
    if cfg.curriculum_frac <= 0 or start <= 0 or start >= full_bins:
        return None
    t = step / (cfg.curriculum_frac * cfg.total_steps)
    if cfg.max_time_s > 0:
        t = max(t, elapsed_s / (cfg.curriculum_frac * cfg.max_time_s))
    if t >= 1.0:
        return None
    return min(full_bins, max(1, round(start * (full_bins / start) ** t)))


# ----------------------------------------------------------------------------- model and optimizer

def build_model(cfg):
    """A fresh model of cfg.family from cfg.preset, with seq_len / kernel_len applied where the config has them."""
    try:
        cls = model_class(cfg.family)
    except ValueError as e:
        raise ValueError(f"--family: {e}") from e
    if cfg.preset not in cls.presets:
        raise ValueError(f"--preset: unknown preset {cfg.preset!r} for family {cfg.family!r}; "
                         f"expected one of {sorted(cls.presets)}")
    names = {f.name for f in dataclasses.fields(cls.config_class)}
    overrides = {"seq_len": cfg.seq_len} if cfg.seq_len and "seq_len" in names else {}
    if cfg.kernel_len:
        if "kernel_len" not in names:
            raise ValueError(f"--kernel-len: family {cfg.family!r} has no kernel_len (its config has {sorted(names)})")
        overrides["kernel_len"] = cfg.kernel_len
    for name, value in parse_model_set(cfg.model_set, cls.config_class).items():
        if name in overrides:
            raise ValueError(f"--model-set: {name} is also given by --{name.replace('_', '-')}; give it once")
        overrides[name] = value
    return cls.from_preset(cfg.preset, **overrides)


def parse_model_set(text, config_class):
    """{field: value} from "name=value,name=value" for config_class's fields, each value read as the
    type of the field's default (bool: true/false/1/0/yes/no; a None default: none, an int, a float or
    the text). The config's own checks run when the model is built."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        name, sep, raw = (x.strip() for x in item.partition("="))
        if not sep or not name:
            raise ValueError(f"--model-set: expected name=value, got {item!r}")
        if name not in fields:
            raise ValueError(f"--model-set: {config_class.__name__} has no field {name!r}; expected one of {sorted(fields)}")
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        try:
            if isinstance(default, bool):
                lowered = raw.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = lowered in ("true", "1", "yes")
            elif default is None:
                value = None if raw.lower() == "none" else _number_or_text(raw)
            else:
                value = type(default)(raw)
        except ValueError:
            raise ValueError(f"--model-set: {name} expects a {type(default).__name__}, got {raw!r}") from None
        out[name] = value
    return out


def _number_or_text(raw):
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def model_seq_len(model):
    """The model's training context: config.seq_len, or its backbone's for a ChunkLM (config dict)."""
    config = getattr(model, "config", None)
    seq_len = getattr(config, "seq_len", None)
    if not isinstance(seq_len, int):
        seq_len = (getattr(config, "backbone", None) or {}).get("seq_len")
    if not isinstance(seq_len, int):
        raise ValueError(f"--seq-len: {type(model).__name__}'s config has no seq_len; pass --seq-len")
    return seq_len


def make_optimizer(model, cfg, fused=False):
    """AdamW; weight decay only on nn.Linear weights. Norms, biases, embeddings and the spectral
    kernel coefficients get none (decay would shrink the bins the curriculum masks off)."""
    linear = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    linear -= {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}  # tied heads
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if id(p) in linear else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=fused or None)


def load_optimizer_state(optimizer, state):
    """A checkpoint's AdamW moments and step counts. The hyperparameters stay this invocation's (its
    --weight-decay, --beta1, --beta2, and fused as its device allows): load_state_dict alone would put the
    saved ones back, so a flag that resume_config reports as changing them would be silently ignored."""
    own = [{k: v for k, v in g.items() if k not in ("params", "param_names")} for g in optimizer.param_groups]
    # merged before loading, not set after: load_state_dict places the step counts by the groups' fused /
    # capturable flags (a CPU run's checkpoint resumed by a fused CUDA optimizer needs them on the GPU)
    groups = [{**saved, **settings} for saved, settings in zip(state["param_groups"], own)]
    optimizer.load_state_dict({**state, "param_groups": groups})


def enable_grad_checkpointing(model):
    """Activation checkpointing per block, through the family protocol's set_grad_checkpoint."""
    if not hasattr(model, "set_grad_checkpoint"):
        raise ValueError(f"--grad-checkpoint: {type(model).__name__} has no set_grad_checkpoint(enabled)")
    model.set_grad_checkpoint(True)


def setup_distributed(cfg):
    """(rank, world_size, local_rank, device); init_process_group under torchrun."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = resolve_device(cfg.device, allow_auto=True)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, local, device


class NonFiniteLossError(RuntimeError):
    pass


class ConfigError(ValueError):
    """A bad flag, corpus or checkpoint found while setting up a run; main() prints it without a traceback."""


def best_ckpt_path(ckpt_path):
    """Where --keep-best writes the best validation point's weights: runs/x/ckpt.pt -> runs/x/ckpt.best.pt."""
    root, ext = os.path.splitext(ckpt_path)
    return root + ".best" + (ext or ".pt")


def check_output_paths(paths, create):
    """Each output path (flag -> path, "" = none) must name a file, and its directory must exist or be
    creatable (create: make it now), so that a bad path fails before the first step, not at the end."""
    for flag, path in paths.items():
        if not path:
            continue
        if os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: is a directory, expected a file path")
        if create:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            except OSError as e:
                raise ConfigError(f"{flag} {path}: cannot create its directory: {e}") from e


@contextlib.contextmanager
def setup_errors():
    """Turn the user-facing errors of the setup phase (bad flags, --data, --ckpt-path) into ConfigError."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        raise ConfigError(str(e)) from e


# ----------------------------------------------------------------------------- evaluation and metrics

@torch.no_grad()
def evaluate(model, corpus, cfg, device, autocast, split="val"):
    """Mean loss in bits per byte over cfg.eval_batches fixed windows of `split`."""
    was_training = model.training
    model.eval()
    total = 0.0
    for x, y in corpus.fixed_batches(split, cfg.batch_size, cfg.seq_len, cfg.eval_batches, device=device):
        with autocast():
            _, loss = model(x, y)
        total += float(loss)
    model.train(was_training)
    return total / cfg.eval_batches / LN2


# ----------------------------------------------------------------------------- the loop

def train(cfg, model=None):
    """Train per cfg; returns the final metrics (step, val_bpb, train_eval_bpb, best_val_bpb, bytes_seen, ...).

    model=None builds cfg.family / cfg.preset; a given model must follow the fft_lm.families protocol.
    Raises NonFiniteLossError (after keeping the last good checkpoint) when the loss goes non-finite.
    """
    with setup_errors():
        validate_config(cfg)
        rank, world, _, device = setup_distributed(cfg)
    master = rank == 0
    try:
        with inductor_cpp_wrapper(cfg.cpp_wrapper):
            result = _train(cfg, model, rank, world, device, master)
        if world > 1:  # rank 0 writes the metrics and the plot after the last collective: every rank
            torch.distributed.barrier()  # waits for that before any of them tears gloo/NCCL down
        return result
    finally:
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg, model, rank, world, device, master):
    torch.manual_seed(cfg.seed)
    ckpt_dir = os.path.dirname(os.path.abspath(cfg.ckpt_path or "runs/train/ckpt.pt"))
    metrics_path = cfg.metrics_path or os.path.join(ckpt_dir, "metrics.jsonl")
    plot_path = cfg.plot_path or os.path.join(ckpt_dir, "curves.png")

    with setup_errors():
        check_output_paths({"--ckpt-path": cfg.ckpt_path, "--metrics-path": metrics_path, "--plot-path": plot_path},
                           create=master)
        best_file = best_ckpt_path(cfg.ckpt_path) if cfg.ckpt_path else ""
        best_path = best_file if cfg.keep_best else ""
        ckpt_files = [p for p in (cfg.ckpt_path, best_path) if p]  # the checkpoints this run writes
        # a new run refuses to replace an earlier run's files, its best checkpoint too, with --no-keep-best
        # as well (left beside this run's checkpoint, it would pass for this run's best weights)
        held = [p for p in (cfg.ckpt_path, best_file) if p and os.path.exists(p)]
        if not cfg.resume and not cfg.overwrite and held:
            raise ConfigError(f"--ckpt-path {cfg.ckpt_path} already holds a checkpoint ({', '.join(held)}): pass "
                              f"--resume to continue that run, --overwrite to start a new one in its place (its "
                              f"checkpoints and metrics are replaced), or another --ckpt-path")
        try:
            ckpt = read_checkpoint(cfg.ckpt_path, map_location="cpu") if cfg.resume else None
        except CheckpointError as e:
            raise ConfigError(f"--resume (--ckpt-path): {e}") from e
        rebuilt = model is None and ckpt is not None
        if rebuilt:
            model = model_from_checkpoint(ckpt, cfg.ckpt_path)  # family, config and weights
            # the run continues with its own config: --model-set may only repeat it
            for name, value in parse_model_set(cfg.model_set, type(model.config)).items():
                if getattr(model.config, name) != value:
                    raise ConfigError(f"--model-set {name}={value!r} differs from the run being resumed "
                                      f"({name}={getattr(model.config, name)!r}); leave it out with --resume")
        else:
            model = model if model is not None else build_model(cfg)
            if ckpt is not None:
                load_weights(model, ckpt["model"], cfg.ckpt_path)
        model.to(device)
        seq_len = cfg.seq_len
        if not seq_len and ckpt is not None:  # resume: the run's own window length, so the stream continues
            seq_len = (ckpt.get("train_config") or {}).get("seq_len") or 0
        cfg = dataclasses.replace(cfg, seq_len=seq_len or model_seq_len(model))  # resolve "0 = the preset's"
        raw = model  # the plain module: eval, curriculum and checkpoints go through it
        if cfg.grad_checkpoint:
            enable_grad_checkpointing(raw)
        elif rebuilt and hasattr(raw, "set_grad_checkpoint"):  # the checkpoint's model config holds the last run's choice; this run's flag decides
            raw.set_grad_checkpoint(False)
        n_params = sum(p.numel() for p in raw.parameters())
        corpus = ByteCorpus(cfg.data or None, val_frac=cfg.val_frac)
        corpus.check_seq_len(cfg.seq_len)  # fail here, with the flag's name, not at the first batch

    optimizer = make_optimizer(raw, cfg, fused=device.type == "cuda")
    start_step, elapsed0, best_val, bytes_seen = 0, 0.0, float("inf"), 0
    best_step = None  # the step of best_val
    loss_window = (0.0, 0)
    if ckpt is not None:
        with setup_errors():
            if not ckpt.get("optimizer") or not ckpt.get("rng"):
                raise ConfigError(f"--resume: {cfg.ckpt_path} holds no optimizer or RNG state (a weights-only "
                                  f"checkpoint?); start a new run from it instead")
            extra = ckpt.get("extra") or {}
            check_same_stream(extra.get("data") or {}, corpus, cfg, world, master)
        load_optimizer_state(optimizer, ckpt["optimizer"])
        start_step = ckpt["step"]
        elapsed0, bytes_seen = extra.get("elapsed_s", 0.0), extra.get("bytes_seen", 0)
        best_val = extra.get("best_val_bpb") or float("inf")
        best_step = extra.get("best_step")
        loss_window = tuple(extra.get("train_loss_window") or (0.0, 0))
        set_rng_state(ckpt["rng"], cuda_device=device if device.type == "cuda" else None)
        if master:
            print(f"resumed {cfg.ckpt_path} at step {start_step}")
            if start_step >= cfg.total_steps:
                print(f"note: that run is complete ({start_step} of {cfg.total_steps} steps): nothing to train; "
                      f"raise --epochs or --steps-per-epoch to train past its end")
    del ckpt

    if cfg.compile:
        model = torch.compile(model, mode=cfg.compile_mode)
    if world > 1:
        ddp_ids = [device.index] if device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ddp_ids)
    use_bf16 = cfg.dtype == "bfloat16"
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)  # noqa: E731
    full_bins = getattr(raw, "freq_bins", None) if hasattr(raw, "set_freq_cutoff") else None
    bytes_per_step = cfg.batch_size * cfg.accum_steps * cfg.seq_len * world

    if master:
        print(f"{raw.family} preset={cfg.preset} params={n_params:,} ({n_params / 1e6:.2f}M) device={device} "
              f"dtype={cfg.dtype} world={world} corpus={corpus.source} ({len(corpus):,} bytes, "
              f"{corpus.n_val:,} held out)")
        if cfg.warmup_steps >= cfg.total_steps:
            print(f"note: --warmup-steps {cfg.warmup_steps} >= this run's {cfg.total_steps} steps: the lr ramps "
                  f"up all run and never reaches --lr {cfg.lr:g}")
        for path in ckpt_files:
            for stale in remove_stale_temp_files(path):
                print(f"removed {stale}, left by a run killed while saving")
        if not cfg.resume:
            for old in held if cfg.overwrite else ():
                # first, so that a crash before this run's first save cannot pair the old checkpoint
                # with this run's metrics
                os.remove(old)
                print(f"--overwrite: deleted the previous run's checkpoint {old}")
            open(metrics_path, "w").close()
        else:  # rows past the checkpoint (a crash, a non-finite stop) are logged again from here on
            truncate_metrics(metrics_path, start_step)
    metrics_file = open(metrics_path, "a") if master else None

    def log(record):
        if master:
            metrics_file.write(json.dumps(record) + "\n")
            metrics_file.flush()

    def save_best(step, record):
        """The weights at a new best validation point (before the run's checkpoint: a crash between the
        two resumes at the older checkpoint, whose replay reaches this point again)."""
        if master and best_path:
            save_checkpoint(best_path, model=raw, step=step, train_config=cfg,
                            extra={"best_val_bpb": record["val_bpb"], "metrics": record, "n_params": n_params,
                                   "run_ckpt_path": cfg.ckpt_path})

    def save(step, last):
        if master and cfg.ckpt_path:
            extra = {"data": {**corpus.state(), "seed": cfg.seed, "next_step": step, "world_size": world},
                     "best_val_bpb": best_val if math.isfinite(best_val) else None, "best_step": best_step,
                     "metrics": last,
                     "elapsed_s": elapsed, "bytes_seen": bytes_seen, "n_params": n_params,
                     "train_loss_window": [loss_sum, loss_count]}
            save_checkpoint(cfg.ckpt_path, model=raw, optimizer=optimizer, scheduler=None, step=step,
                            train_config=cfg, extra=extra)

    bar = None
    if master and cfg.progress:
        from tqdm import tqdm
        # redraws at most every 0.5 s on a terminal; into a file or pipe (torchrun, a batch job's log) every
        # 30 s, where every redraw is kept (the postfix is set without a redraw each step, below)
        every = 0.5 if sys.stderr.isatty() else 30.0
        if cfg.max_time_s > 0:  # the clock ends this run, not the step count: show the time budget
            budget = int(math.ceil(cfg.max_time_s))
            bar = tqdm(total=budget, initial=min(int(elapsed0), budget), dynamic_ncols=True, desc="train",
                       mininterval=every, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} s of budget{postfix}")
        else:
            bar = tqdm(total=cfg.total_steps, initial=start_step, dynamic_ncols=True, desc="train", mininterval=every)
    step, elapsed, last_metrics = start_step, elapsed0, {}
    noted = set()  # the kinds of note_worse_validation already printed
    (loss_sum, loss_count), window_start, window_bytes = loss_window, time.time(), 0
    stop_step = min(cfg.total_steps, start_step + cfg.stop_after_steps) if cfg.stop_after_steps else cfg.total_steps
    t_run = time.time() - elapsed0
    cutoff, applied_cutoff = None, object()  # object(): the model's own cutoff is set on the first step
    model.train()
    while step < stop_step:
        lr = lr_at(cfg, step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if full_bins is not None:
            cutoff = cutoff_at(cfg, step, full_bins, elapsed)
            if cutoff != applied_cutoff:  # a few small launches per conv block: only when the cutoff moves
                raw.set_freq_cutoff(cutoff)
                applied_cutoff = cutoff
        step_loss = torch.zeros((), device=device)
        for micro in range(cfg.accum_steps):
            x, y = corpus.train_batch(cfg.batch_size, cfg.seq_len, seed=cfg.seed, step=step, rank=rank,
                                      micro_step=micro, device=device)
            sync = world == 1 or micro == cfg.accum_steps - 1
            with contextlib.nullcontext() if sync else model.no_sync():  # all-reduce grads once per step
                with autocast():
                    _, loss = model(x, y)
                (loss / cfg.accum_steps).backward()
            step_loss += loss.detach().float() / cfg.accum_steps
        grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        # one collective per step: every rank sees the same mean loss and the same clock, so the
        # non-finite check, lr, cutoff and time-budget stop agree across ranks
        shared = torch.stack([step_loss.double(), torch.tensor(time.time() - t_run, dtype=torch.float64, device=device)])
        if world > 1:
            torch.distributed.all_reduce(shared)
            shared /= world
        loss_value, elapsed = shared.tolist()
        out_of_time = cfg.max_time_s > 0 and elapsed > cfg.max_time_s
        if not math.isfinite(loss_value) or not math.isfinite(float(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            if bar is not None:
                bar.close()
            where = f"the last good checkpoint is {cfg.ckpt_path} (step {load_step(cfg.ckpt_path)})" \
                if cfg.ckpt_path and os.path.exists(cfg.ckpt_path) else "no checkpoint was written yet"
            raise NonFiniteLossError(f"non-finite loss at step {step} (loss {loss_value}, grad norm "
                                     f"{float(grad_norm)}, lr {lr:.3g}); stopping. {where}. Try a lower --lr "
                                     f"or --grad-clip.")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bytes_seen += bytes_per_step
        loss_sum, loss_count, window_bytes = loss_sum + loss_value, loss_count + 1, window_bytes + bytes_per_step
        if bar is not None:
            bar.update(min(int(elapsed), bar.total) - bar.n if cfg.max_time_s > 0 else 1)
            bar.set_postfix(step=step, bpb=f"{loss_value / LN2:.3f}", lr=f"{lr:.2e}", cutoff=cutoff or "full",
                            Bps=f"{window_bytes / max(1e-9, time.time() - window_start):.3g}", refresh=False)
        if step % cfg.log_every_steps == 0:
            now = time.time()
            last_metrics = {"step": step, "time_s": round(elapsed, 3), "train_bpb": loss_sum / loss_count / LN2,
                            "lr": lr, "bytes_per_s": window_bytes / max(1e-9, now - window_start),
                            "cutoff": cutoff, "bytes_seen": bytes_seen,
                            "grad_norm": float(grad_norm)}  # this step's, before clipping
            log(last_metrics)
            loss_sum, loss_count, window_start, window_bytes = 0.0, 0, now, 0
        final = step >= stop_step or out_of_time
        if final or (cfg.eval_every and step % cfg.eval_every == 0):  # the same decision on every rank
            t_eval = time.time()
            if master:
                val = evaluate(raw, corpus, cfg, device, autocast, "val")
                train_eval = evaluate(raw, corpus, cfg, device, autocast, "train") if final else None
                improved = val < best_val
                record = {"step": step, "time_s": round(elapsed, 3), "val_bpb": val, "train_eval_bpb": train_eval,
                          "cutoff": cutoff, "bytes_seen": bytes_seen}
                log(record)
                last_metrics = {**last_metrics, **record}
                say = bar.write if bar is not None else print  # --no-progress: plain lines
                say(f"step {step}: val {val:.4f} bpb" + (f", train (eval) {train_eval:.4f} bpb" if final else ""))
                if improved:
                    best_val, best_step = val, step
                    save_best(step, record)
                elif val > best_val + max(0.02, 0.01 * best_val):
                    note_worse_validation(say, val, best_val, best_step, bytes_seen / max(1, corpus.n_train),
                                          corpus.n_train, best_path, noted)
                save(step, last_metrics)
            # evaluation time does not count against the budget or bytes/s. Only rank 0 evaluates; the
            # others wait for it (here), so every rank takes rank 0's evaluation time off its clock.
            eval_s = time.time() - t_eval if master else 0.0
            if world > 1:  # a sum, not a broadcast: no rank leaves before every rank has arrived
                shared_eval = torch.tensor(eval_s, dtype=torch.float64, device=device)
                torch.distributed.all_reduce(shared_eval)
                eval_s = shared_eval.item()
            t_run += eval_s
            window_start += eval_s
        if out_of_time:
            break
    if bar is not None:
        bar.close()
    if master:
        metrics_file.close()
        if cfg.plot_path != "-":
            plot_metrics(metrics_path, plot_path)
    write_param_checksum(raw, rank)
    # the latest training loss: the steps since the last metrics row when there are any (a run shorter
    # than --log-every-steps wrote none), else that row's
    train_bpb = loss_sum / loss_count / LN2 if loss_count else last_metrics.get("train_bpb")
    return {"step": step, "val_bpb": last_metrics.get("val_bpb"), "train_eval_bpb": last_metrics.get("train_eval_bpb"),
            "train_bpb": train_bpb, "best_val_bpb": best_val if math.isfinite(best_val) else None,
            "bytes_seen": bytes_seen, "elapsed_s": elapsed, "n_params": n_params, "ckpt_path": cfg.ckpt_path,
            "best_ckpt_path": best_path if best_path and os.path.exists(best_path) else None,
            "metrics_path": metrics_path, "plot_path": plot_path, "family": raw.family}


def note_worse_validation(say, val, best_val, best_step, passes, n_train, best_path, noted):
    """Say once per kind why validation rose above its best: memorising (after a pass over the training
    bytes) or, before that, held-out bytes unlike the training bytes or an unstable run."""
    kind = "memorising" if passes >= 1 else "early"
    if kind in noted:
        return
    noted.add(kind)
    where = f" at step {best_step}" if best_step is not None else ""
    text = f"note: validation {val:.3f} bits/byte is above its best ({best_val:.3f}{where}) after {passes:.1f} " \
           f"passes over the {n_train:,} training bytes: "
    if kind == "memorising":
        text += ("the model is fitting its training bytes rather than the language (memorising); more data, a "
                 "smaller model, fewer steps or dropout (--model-set dropout=0.1: spectral and gpt families) help.")
    else:
        text += ("too early for memorising: the held-out bytes may differ from the training bytes (--data, "
                 "--val-frac), or the run is unstable (a lower --lr).")
    say(text + (f" The best weights are kept in {best_path}." if best_path else ""))


def check_same_stream(saved, corpus, cfg, world, master):
    """--resume continues the run's data stream: the same corpus split and seed (a ConfigError
    otherwise); another world size changes which batches each rank draws (a warning)."""
    now = corpus.state()
    for key in ("n_bytes", "n_train", "n_val"):
        if key in saved and saved[key] != now[key]:
            raise ConfigError(f"--data / --val-frac: the corpus split differs from the run being resumed "
                              f"({key} {saved[key]:,} then, {now[key]:,} now); resume with the same data")
    if saved.get("fingerprint") not in (None, now["fingerprint"]):  # (checkpoints before it have none)
        raise ConfigError(f"--data: the corpus has the run's size but other bytes than the run being resumed "
                          f"(fingerprint {saved['fingerprint']} then, {now['fingerprint']} now); resume with the "
                          f"same data")
    if "seed" in saved and saved["seed"] != cfg.seed:
        raise ConfigError(f"--seed: the run being resumed used --seed {saved['seed']}, got {cfg.seed}; pass "
                          f"--seed {saved['seed']} to continue its data stream")
    if master and "world_size" in saved and saved["world_size"] != world:
        print(f"warning: resuming a run of {saved['world_size']} processes with {world}: the data stream "
              f"continues with other batches per rank (not the exact continuation)")


def truncate_metrics(path, last_step):
    """Keep the metrics rows of steps <= last_step (atomically, fft_lm.atomic.atomic_write)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip()]
    keep = []
    for line in rows:
        try:
            step = json.loads(line).get("step", 0)
        except json.JSONDecodeError:  # a torn last line from a crash
            continue
        if step <= last_step:
            keep.append(line if line.endswith("\n") else line + "\n")
    with atomic_write(path) as f:
        f.write("".join(keep).encode())


def load_step(path):
    try:
        return read_checkpoint(path)["step"]
    except Exception:  # only for the error message
        return "?"


def write_param_checksum(model, rank):
    """With FFT_LM_PARAM_CHECKSUM_DIR set, each rank writes a digest of its parameters (DDP sync test)."""
    out = os.environ.get("FFT_LM_PARAM_CHECKSUM_DIR")
    if not out:
        return
    import hashlib
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "sha256": h.hexdigest()}, f)


def main(argv=None):
    parser = build_arg_parser(TrainConfig, description="Train a byte-level LM (spectral or GPT) on a byte corpus.")
    cfg, given = parse_config(parser, TrainConfig, argv)
    try:
        cfg, changed = resume_config(cfg, given)
        announce_resume(cfg, changed)
        metrics = train(cfg)
    except ConfigError as e:
        parser.error(str(e))  # usage + message, exit status 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(to_plain(metrics)))
    return metrics


if __name__ == "__main__":
    main()
