"""rms_norm / add_rms_norm: the fused norm of a pre-norm residual stream, CPU and CUDA.

Against the float64 reference (fft_tensor.reference.rms_norm_reference) and F.rms_norm, odd and long
rows, strided inputs, every dtype pair the model uses, gradcheck, opcheck, torch.compile and bad input."""
import pytest
import torch
import torch.nn.functional as F

import fft_tensor
from conftest import DEVICES, assert_rejected_eagerly_and_traced, rel_err, requires_cuda, tolerance
from fft_tensor.reference import rms_norm_reference

ops = torch.ops.fft_tensor

SHAPES = [(1,), (7,), (3, 33), (2, 5, 528), (16, 4097), (1, 1, 1)]
# (x dtype, delta dtype, out dtype): the float32 residual stream of an autocast model and pure low precision
DTYPE_SETS = [(torch.float32, torch.float32, torch.float32), (torch.float32, torch.bfloat16, torch.bfloat16),
              (torch.float32, torch.float16, torch.float16), (torch.float32, torch.bfloat16, torch.float32),
              (torch.bfloat16, torch.bfloat16, torch.bfloat16), (torch.float16, torch.float16, torch.float32),
              (torch.float64, torch.float64, torch.float64), (torch.float64, torch.float32, torch.float64)]


def out_tolerance(exact, dtype):
    return tolerance(exact, dtype, fp64=1e-13, fp32=2e-6, multiple=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtypes", DTYPE_SETS, ids=lambda d: "-".join(str(t).split(".")[1] for t in d))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_values(shape, dtypes, device):
    xt, dt, ot = dtypes
    acc = torch.float64 if xt == torch.float64 else torch.float32
    x = (3 * torch.randn(shape, device=device)).to(xt)
    delta = torch.randn(shape, device=device).to(dt)
    w = torch.randn(shape[-1], device=device, dtype=acc)
    s, n = fft_tensor.add_rms_norm(x, delta, w, 1e-5, ot)
    s_ref, n_ref = rms_norm_reference(x, w, 1e-5, delta)
    assert s.dtype == xt and n.dtype == ot and s.shape == n.shape == x.shape
    assert torch.equal(s, s_ref)  # the sum is ATen's x + delta, bit for bit
    assert rel_err(n, n_ref) <= out_tolerance(n_ref, ot)
    n1 = fft_tensor.rms_norm(x, w, 1e-5, ot)
    _, n1_ref = rms_norm_reference(x, w, 1e-5)
    assert n1.dtype == ot and rel_err(n1, n1_ref) <= out_tolerance(n1_ref, ot)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_torch_rms_norm(device):
    """float32 rows of a 29m model's width: within a few ulps of F.rms_norm (different summation order)."""
    x = torch.randn(16, 528, device=device)
    w = torch.randn(528, device=device)
    torch.testing.assert_close(fft_tensor.rms_norm(x, w, 1e-6), F.rms_norm(x, (528,), w, 1e-6), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_strided(device):
    base = torch.randn(4, 40, 3, device=device)
    x = base.transpose(1, 2)  # (4, 3, 40), last dim strided
    delta = torch.randn(4, 40, 3, device=device).bfloat16().transpose(1, 2)
    w = torch.randn(40, device=device)
    s, n = fft_tensor.add_rms_norm(x, delta, w, 1e-6, torch.bfloat16)
    s_ref, n_ref = rms_norm_reference(x, w, 1e-6, delta)
    assert torch.equal(s, s_ref) and rel_err(n, n_ref) <= out_tolerance(n_ref, torch.bfloat16)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_rows(device):
    x = torch.randn(0, 5, device=device)
    s, n = fft_tensor.add_rms_norm(x, x.clone(), torch.ones(5, device=device))
    assert s.shape == n.shape == (0, 5)


# gradgradcheck: the backward is torch ops, so second derivatives come through autograd
@pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck],
                         ids=["gradcheck", "gradgradcheck"])
def test_gradcheck(check):
    x = torch.randn(3, 2, 11, dtype=torch.float64, requires_grad=True)
    d = torch.randn(3, 2, 11, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, dtype=torch.float64, requires_grad=True)
    assert check(lambda a, b, c: fft_tensor.add_rms_norm(a, b, c, 1e-5), (x, d, w))
    assert check(lambda a, c: fft_tensor.rms_norm(a, c, 1e-5), (x, w))
    # only the normed output used: grad_sum arrives as None
    assert check(lambda a, b, c: fft_tensor.add_rms_norm(a, b, c, 1e-5)[1], (x, d, w))
    # an eps that matters against the mean square (unit-variance rows make 1e-5 invisible to gradcheck)
    assert check(lambda a, b, c: fft_tensor.add_rms_norm(a, b, c, 0.5), (x, d, w))
    assert check(lambda a, c: fft_tensor.rms_norm(a, c, 0.5), (x, w))


@pytest.mark.parametrize("device", DEVICES)
def test_grad_matches_torch(device):
    """Mixed dtypes (the float32 stream plus a bfloat16 branch): gradients as autograd of the torch ops."""
    x = torch.randn(5, 64, device=device, requires_grad=True)
    d = torch.randn(5, 64, device=device).bfloat16().requires_grad_()
    w = torch.randn(64, device=device, requires_grad=True)
    gs, gn = torch.randn(5, 64, device=device), torch.randn(5, 64, device=device)
    s, n = fft_tensor.add_rms_norm(x, d, w, 1e-6)
    grads = torch.autograd.grad((s * gs).sum() + (n * gn).sum(), (x, d, w))
    s2 = x + d
    n2 = F.rms_norm(s2, (64,), w, 1e-6)
    grads_ref = torch.autograd.grad((s2 * gs).sum() + (n2 * gn).sum(), (x, d, w))
    for g, g_ref in zip(grads, grads_ref):
        assert g.dtype == g_ref.dtype
        torch.testing.assert_close(g.float(), g_ref.float(), rtol=1e-2 if g.dtype == torch.bfloat16 else 1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    x = torch.randn(3, 5, 37, device=device)
    w = torch.randn(37, device=device)
    torch.library.opcheck(ops.rms_norm.default, (x, w, 1e-6, torch.bfloat16))
    torch.library.opcheck(ops.add_rms_norm.default, (x, torch.randn_like(x).bfloat16(), w, 1e-6, None))
    xr = x.clone().requires_grad_()
    torch.library.opcheck(ops.add_rms_norm.default, (xr, torch.randn_like(x), w, 1e-6, None))


@pytest.mark.parametrize("device", DEVICES)
def test_compile(device):
    def block(x, d, w1, w2):
        s, n = fft_tensor.add_rms_norm(x, d, w1, 1e-6)
        return s + fft_tensor.rms_norm(n.sin(), w2, 1e-6, torch.float32)

    args = (torch.randn(4, 48, device=device), torch.randn(4, 48, device=device).bfloat16(),
            torch.randn(48, device=device), torch.randn(48, device=device))
    torch.testing.assert_close(torch.compile(block, fullgraph=True)(*args), block(*args))


def _f(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


BAD = {
    "x 0-d": (lambda: (torch.tensor(1.0), torch.tensor(1.0), _f(1)), "at least one dimension"),
    "x integer": (lambda: (torch.ones(2, 3, dtype=torch.int64), _f(2, 3), _f(3)), "expected x of dtype"),
    "x complex": (lambda: (_f(2, 3).to(torch.complex64), _f(2, 3), _f(3)), "expected x of dtype"),
    "empty row": (lambda: (_f(2, 0), _f(2, 0), _f(0)), "non-empty last dimension"),
    "delta shape": (lambda: (_f(2, 3), _f(3, 3), _f(3)), "expected delta of x's shape"),
    "delta wider": (lambda: (_f(2, 3, dtype=torch.bfloat16), _f(2, 3), _f(3)), "promote to x's"),
    "weight shape": (lambda: (_f(2, 3), _f(2, 3), _f(4)), "expected weight of shape"),
    "weight dtype": (lambda: (_f(2, 3), _f(2, 3), _f(3, dtype=torch.bfloat16)), "expected weight of dtype"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_inputs(name):
    make_args, match = BAD[name]
    assert_rejected_eagerly_and_traced(fft_tensor.add_rms_norm, make_args, match)


def test_bad_out_dtype():
    with pytest.raises(RuntimeError, match="out_dtype float64 exactly when x is float64"):
        fft_tensor.rms_norm(_f(2, 3), _f(3), 1e-6, torch.float64)
    with pytest.raises(RuntimeError, match="eps >= 0"):
        fft_tensor.rms_norm(_f(2, 3), _f(3), -1.0)


@requires_cuda
def test_devices_differ_cuda():
    x = torch.randn(2, 3, device="cuda")
    with pytest.raises(RuntimeError, match="weight on x's device"):
        fft_tensor.rms_norm(x, torch.ones(3))
    with pytest.raises(RuntimeError, match="delta on x's device"):
        fft_tensor.add_rms_norm(x, torch.ones(2, 3), torch.ones(3, device="cuda"))
