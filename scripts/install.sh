#!/usr/bin/env bash
# Install everything fft-tensor needs on a fresh machine (Debian 12, Python 3.11, optional nvcc):
# torch from PyPI, the Python deps, and the extension built in place with --no-build-isolation.
# Safe to run twice: it rebuilds only when `import fft_tensor` says the build is missing or stale.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.11.0"
fi
"$PY" -m pip install --quiet numpy tqdm matplotlib pytest ninja "setuptools>=64" wheel

if ! "$PY" -c "import fft_tensor" 2>/dev/null; then
  # CUDA kernels are compiled when torch has CUDA and a matching nvcc exists (FFT_TENSOR_CUDA=0 to skip).
  MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
"$PY" -c "import fft_tensor; print('fft_tensor ready; CUDA kernels built:', fft_tensor.WITH_CUDA)"
