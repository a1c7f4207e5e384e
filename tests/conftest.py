"""Shared test helpers: a fresh random seed per test (printed, so a failure can be replayed) and
the devices to run on.

Replay a failing test with the seed it printed: FFT_TENSOR_TEST_SEED=1234 python -m pytest ...
"""
import os
import random

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")

# Parametrize over these; the CUDA entry skips itself without a GPU, and its test id contains "cuda"
# so `pytest -k cuda` selects exactly the GPU tests.
DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda)]


def devices():
    """The devices present on this machine (for loops inside a test)."""
    return ["cpu"] + (["cuda"] if HAS_CUDA else [])


@pytest.fixture(autouse=True)
def seed():
    """Seed torch (CPU and CUDA) with a fresh value each test; pytest shows the print on failure."""
    value = int(os.environ.get("FFT_TENSOR_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    print(f"seed = {value} (replay with FFT_TENSOR_TEST_SEED={value})")
    return value


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 (complex allowed); inf if out has NaN/inf."""
    out = out.detach().cpu().to(torch.complex128 if out.is_complex() else torch.float64)
    ref = ref.detach().cpu().to(out.dtype)
    if not torch.isfinite(out).all():
        return float("inf")
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


@pytest.fixture
def one_thread():
    """Tiny models, many small ops (one byte per call in generation): thread start-up costs more than
    the math, and a lot on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def tolerance(exact, dtype, *, fp64=1e-12, fp32=1e-5, multiple=4):
    """Relative-error bound for an output of `dtype` against the float64 `exact`: fixed for float64 and
    float32, else a small multiple of the error of rounding `exact` itself to `dtype` (bf16, fp16)."""
    if dtype == torch.float64:
        return fp64
    if dtype == torch.float32:
        return fp32
    return multiple * rel_err(exact.to(dtype), exact) + 1e-6


def assert_rejected_eagerly_and_traced(fn, make_args, match):
    """fn(*make_args()) raises RuntimeError matching `match`, and so does fn on fake copies of the
    arguments (the op's fake kernel, what torch.compile meets while tracing). None stays None."""
    with pytest.raises(RuntimeError, match=match):
        fn(*make_args())
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as mode:
        fake_args = [None if a is None else mode.from_tensor(a) for a in make_args()]
        with pytest.raises(RuntimeError, match=match):
            fn(*fake_args)


def write_word_corpus(path, n_words):
    """A small synthetic text corpus: n_words words from a 9-word vocabulary, fixed seed."""
    rng = np.random.default_rng(0)
    words = [b"spectral", b"bytes", b"kernel", b"the", b"a", b"of", b"fft", b"model", b"\n"]
    path.write_bytes(b" ".join(words[i] for i in rng.integers(0, len(words), n_words)))
    return str(path)
