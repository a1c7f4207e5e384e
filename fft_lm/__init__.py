"""fft_lm: byte-level language models on fft_tensor's causal FFT convolution.

Public API (imported lazily so `import fft_lm` stays cheap):
  SpectralLM, SpectralLMConfig   the causal FFT-conv backbone      (fft_lm.model)
  GPT, GPTConfig                 the SDPA transformer baseline      (fft_lm.gpt)
  ChunkLM, ChunkLMConfig         backbone + chunk ("piston") head   (fft_lm.chunk)
  load_checkpoint, save_checkpoint                                  (fft_lm.checkpoint)
  generate                       byte generation, overlap-save or recompute (fft_lm.generation)
"""
import importlib

_EXPORTS = {
    "SpectralLM": "fft_lm.model",
    "SpectralLMConfig": "fft_lm.model",
    "GPT": "fft_lm.gpt",
    "GPTConfig": "fft_lm.gpt",
    "ChunkLM": "fft_lm.chunk",
    "ChunkLMConfig": "fft_lm.chunk",
    "load_checkpoint": "fft_lm.checkpoint",
    "save_checkpoint": "fft_lm.checkpoint",
    "generate": "fft_lm.generation",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fft_lm' has no attribute {name!r}")
