"""fft-tensor: fast spectral sequence operators for PyTorch.

The ops are C++/CUDA custom ops registered as torch.ops.fft_tensor.*; this package holds thin
typed wrappers (fft_tensor.ops) and pure-torch reference definitions (fft_tensor.reference). The
layers and language models built on them are in the fft_lm package.
"""
from ._loader import load as _load

_build_info = _load()
WITH_CUDA = _build_info.WITH_CUDA

from .ops import (add_rms_norm, causal_conv, causal_conv_fft_size, causal_conv_update, chunk_decode,  # noqa: E402
                  chunk_decode_smem_bytes, chunk_decode_unsupported, phase_rotate, rms_norm)

__all__ = ["phase_rotate", "causal_conv", "causal_conv_update", "causal_conv_fft_size", "chunk_decode",
           "chunk_decode_smem_bytes", "chunk_decode_unsupported", "rms_norm", "add_rms_norm", "WITH_CUDA"]
__version__ = "0.1.0"
