"""Checkpoints: one file per run, written atomically, loaded with torch.load(weights_only=True).

A checkpoint is a dict of tensors, dicts, lists, strings and numbers only:
  format, version        "fft_lm.checkpoint", 1 (tells our files from foreign ones)
  family, model_config   the family name (fft_lm.families) and its config dataclass as a dict
  model                  state dict (without the "module." / "_orig_mod." prefixes of DDP / compile)
  optimizer, scheduler   their state dicts (or None)
  step                   optimizer steps done
  rng                    torch, cuda, numpy and python RNG states
  train_config           the TrainConfig as a dict
  extra                  anything else the trainer keeps (data position, best val, metrics, elapsed time)
Writing goes to a temporary file in the same directory, is flushed and fsynced, then os.replace'd over
the old file: a crash or error mid-save leaves the previous checkpoint untouched.
"""
import dataclasses
import os
import pickle
import random
import zipfile

import numpy as np
import torch

from fft_lm.atomic import atomic_write
from fft_lm.families import model_class

FORMAT = "fft_lm.checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used (missing, truncated, corrupted or not ours)."""


def unwrap_model(model):
    """The plain module under DDP (.module) and torch.compile (._orig_mod) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def clean_state_dict(state_dict):
    """Drop the "module." (DDP) and "_orig_mod." (torch.compile) parts of parameter names."""
    out = {}
    for key, value in state_dict.items():
        parts = [p for p in key.split(".") if p != "_orig_mod"]
        while parts and parts[0] == "module":
            parts = parts[1:]
        out[".".join(parts)] = value
    return out


def to_plain(obj):
    """Dataclasses, tuples and numpy values as dicts, lists and Python numbers (weights_only-safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def model_config_dict(model):
    model = unwrap_model(model)
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"model: expected a module with a dataclass .config (fft_lm family protocol), "
                        f"got {type(model).__name__} with config={config!r}")
    return to_plain(config)


def rng_state():
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        # the current device's: what a DDP rank resumes on its own device (every rank is seeded alike,
        # so an unbroken run has each rank's device generator where rank 0's is)
        "cuda_current": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def set_rng_state(state, cuda_device=None):
    """Restore rng_state(); cuda_device (a DDP rank's device) takes the saved current-device state."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if cuda_device is not None and state.get("cuda_current") is not None:
        torch.cuda.set_rng_state(state["cuda_current"], cuda_device)
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path, *, model, optimizer=None, scheduler=None, step=0, train_config=None, extra=None):
    """Write a checkpoint to `path` atomically (see the module docstring for the contents)."""
    path = os.fspath(path)
    plain = unwrap_model(model)
    family = getattr(plain, "family", None)
    if not isinstance(family, str):
        raise TypeError(f"model: expected a class with a string .family attribute, got {type(plain).__name__}")
    ckpt = {
        "format": FORMAT,
        "version": VERSION,
        "family": family,
        "model_config": model_config_dict(plain),
        "model": clean_state_dict(plain.state_dict()),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "step": int(step),
        "rng": rng_state(),
        "train_config": to_plain(train_config) if train_config is not None else {},
        "extra": to_plain(extra or {}),
    }
    with atomic_write(path) as f:
        torch.save(ckpt, f)
    return path


def read_checkpoint(path, map_location="cpu", mmap=False):
    """The raw checkpoint dict, validated; CheckpointError naming the path if it is unusable (a file
    whose bytes changed after writing too: every record's CRC-32 is checked). mmap=True maps the tensors
    instead of reading them, for a look at the metadata, and skips the CRC check (it reads every byte)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r}: is a directory, expected a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r}: no such file")
    try:
        if not mmap and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:  # torch.load does not check the stored CRC-32s
                damaged = archive.testzip()  # (one more read of the file)
            if damaged is not None:
                raise CheckpointError(f"checkpoint {path!r} ({os.path.getsize(path)} bytes) cannot be read: truncated, "
                                      f"corrupted or not a torch.save file (its record {damaged!r} fails its "
                                      f"CRC-32 check: its bytes changed after it was written)")
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except CheckpointError:
        raise
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError, ValueError, KeyError,
            AttributeError, ImportError, IndexError, TypeError, OSError) as e:
        size = os.path.getsize(path)
        detail = str(e).splitlines()[0] if str(e) else ""
        if "weights_only" in str(e) or "Weights only" in str(e):  # torch's advice to unpickle anyway does not apply
            detail = "torch.load(weights_only=True) refused it"
        raise CheckpointError(
            f"checkpoint {path!r} ({size} bytes) cannot be read: truncated, corrupted or not a torch.save file "
            f"({type(e).__name__}: {detail})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path!r} is not an fft_lm checkpoint: expected a dict with "
                              f"format={FORMAT!r}, got {got}")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path!r}: expected format version {VERSION}, got {ckpt.get('version')!r}")
    missing = [k for k in ("family", "model_config", "model", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path!r} is incomplete: missing {missing}")
    wrong = [f"{k} ({type(ckpt[k]).__name__})" for k in ("model", "model_config") if not isinstance(ckpt[k], dict)]
    if wrong:
        raise CheckpointError(f"checkpoint {path!r} is malformed: expected dicts for model and model_config, got "
                              f"{', '.join(wrong)}")
    return ckpt


def model_from_checkpoint(ckpt, path="<checkpoint>"):
    """Rebuild the model a checkpoint dict describes (family, config) and load its weights."""
    try:
        cls = model_class(ckpt["family"])
        model = cls.from_config(ckpt["model_config"])
    except (ValueError, TypeError) as e:  # unknown family, or a config this version cannot build
        raise CheckpointError(f"checkpoint {path!r}: cannot rebuild the model: {e}") from e
    load_weights(model, ckpt["model"], path)
    return model


def load_weights(model, state_dict, path="<checkpoint>"):
    try:
        unwrap_model(model).load_state_dict(clean_state_dict(state_dict))
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path!r}: weights do not fit the model: {e}") from e


def load_checkpoint(path, map_location="cpu"):
    """(model, meta): the model rebuilt from its family and config, weights loaded, in eval mode.

    meta: family, model_config, train_config, step, metrics, best_val_bpb and the rest of "extra".
    """
    ckpt = read_checkpoint(path, map_location)
    model = model_from_checkpoint(ckpt, path).eval()
    extra = ckpt.get("extra") or {}
    meta = {"family": ckpt["family"], "model_config": ckpt["model_config"],
            "train_config": ckpt.get("train_config") or {}, "step": ckpt["step"],
            "metrics": extra.get("metrics", {}), "best_val_bpb": extra.get("best_val_bpb"), "extra": extra,
            "path": os.fspath(path)}
    return model, meta
