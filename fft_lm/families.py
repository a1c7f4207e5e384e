"""Model families by name, so checkpoints can say which class rebuilds them.

A checkpoint stores {"family": name, "model_config": dict}; `model_class(name)` imports the class.
Every family class provides:
  family: str                                   its name here
  config_class                                  its dataclass config
  from_config(cfg) / from_preset(name, **overrides)
  forward(idx[B,T] long, targets[B,T] long | None = None, *, cache=None) -> (logits, loss | None)
      loss: mean cross-entropy in nats per predicted byte (bits per byte = loss / ln 2)
  features(idx, *, cache=None) -> hidden[B,T,D]  final-normed states before the head
  init_cache(batch_size, device=None, max_len=None) -> cache
                                                streaming state for generation (see fft_lm.generation)
      a cache has .pos (positions consumed) and, for CUDA-graph steps (fft_lm.generation.StepGraphs):
      own_buffers(), state_tensors() (updated in place, never moved while a graph records),
      graph_tensors() (what a recorded step touches: a new address means recording again),
      snapshot() / restore(snap) (undo a recording's warm-up steps)
  set_grad_checkpoint(enabled)                  activation checkpointing per block
"""
import importlib

FAMILIES = {
    "spectral": ("fft_lm.model", "SpectralLM"),
    "gpt": ("fft_lm.gpt", "GPT"),
    "chunk": ("fft_lm.chunk", "ChunkLM"),
}


def model_class(family: str):
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}")
    module, name = FAMILIES[family]
    return getattr(importlib.import_module(module), name)
