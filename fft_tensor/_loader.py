"""Import the compiled op library, or say exactly how to rebuild it."""
import glob
import hashlib
import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = ("Rebuild it from the repository root with:\n"
           "    pip install --no-build-isolation -e .\n"
           "(or `python setup.py build_ext --inplace`; FFT_TENSOR_CUDA=0 for a CPU-only build).")


def _sources_sha1():
    # The csrc/ hash setup.py records in _build_info.py (it loads this file by path); only meaningful in a
    # source checkout.
    h = hashlib.sha1()
    for path in sorted(glob.glob(os.path.join(_ROOT, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            h.update(os.path.relpath(path, _ROOT).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def _file_sha1(path):
    """sha1 of one file's bytes (None when it is missing): setup.py records the built module's and its own
    in _build_info.py, and benchmarks/prebuilt_ok.py compares them."""
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def load():
    import torch
    try:
        from . import _build_info
    except ImportError:
        raise ImportError("fft_tensor: the compiled module fft_tensor._C has not been built. " + REBUILD) from None
    if _build_info.TORCH_VERSION != torch.__version__:
        raise ImportError(f"fft_tensor: fft_tensor._C was built against torch {_build_info.TORCH_VERSION} but "
                          f"torch {torch.__version__} is installed; the build is stale. " + REBUILD)
    if os.path.isdir(os.path.join(_ROOT, "csrc")) and os.environ.get("FFT_TENSOR_SKIP_STALE_CHECK") != "1":
        if _sources_sha1() != _build_info.SOURCES_SHA1:
            raise ImportError("fft_tensor: the C++/CUDA sources under csrc/ changed since fft_tensor._C was built; "
                              "the build is stale (set FFT_TENSOR_SKIP_STALE_CHECK=1 to load it anyway). " + REBUILD)
    try:
        from . import _C  # noqa: F401  (importing registers torch.ops.fft_tensor.*)
    except ImportError as e:
        raise ImportError(f"fft_tensor: could not load the compiled module fft_tensor._C ({e}). " + REBUILD) from e
    return _build_info
