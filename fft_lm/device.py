"""The --device flag of the training and generation commands, parsed one way for both."""
from __future__ import annotations

import torch


def resolve_device(value: str | None, *, allow_auto: bool) -> torch.device:
    """torch.device for a --device value. None (and "auto" where allow_auto: the training flag takes it)
    means cuda when torch sees a GPU, else cpu. Anything torch.device does not take, or cuda without a
    visible GPU, is a ValueError naming the flag and the value."""
    automatic = value is None or (allow_auto and value == "auto")
    name = ("cuda" if torch.cuda.is_available() else "cpu") if automatic else value
    try:
        device = torch.device(name)
    except RuntimeError as e:
        expected = "auto, cpu, cuda or cuda:N" if allow_auto else "cpu, cuda or cuda:N"
        raise ValueError(f"--device: expected {expected}, got {value!r}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        fallback = "--device cpu or auto" if allow_auto else "--device cpu (or leave it out)"
        raise ValueError(f"--device {value}: no CUDA GPU is visible to torch; use {fallback}")
    return device
