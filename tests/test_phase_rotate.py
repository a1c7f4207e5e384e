"""fft_tensor.phase_rotate: values and gradients against a complex128 reference, gradcheck,
opcheck, torch.compile, bad inputs. CUDA variants (ids contain "cuda") skip without a GPU.

The reference is z * exp(1j * theta) computed by torch in complex128 on the CPU: independent of
the kernels (and of fft_tensor.reference, which uses torch.polar).
"""
import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import fft_tensor
from conftest import DEVICES, HAS_CUDA, rel_err, requires_cuda

ops = torch.ops.fft_tensor


def reference(z, theta):
    return z.detach().cpu().to(torch.complex128) * torch.exp(1j * theta.detach().cpu().double())


def make_z(shape, layout="contiguous", dtype=torch.complex64, device="cpu"):
    """Random complex z of `shape` with the given memory layout (values never zero)."""
    n = math.prod(shape)
    if layout == "contiguous":
        return torch.randn(shape, dtype=dtype, device=device)
    if layout == "transposed":  # every dim reversed in memory
        return torch.randn(shape[::-1], dtype=dtype, device=device).permute(*reversed(range(len(shape))))
    if layout == "sliced":  # stride 2 in the last dim, storage offset 1
        return torch.randn(*shape[:-1], 2 * shape[-1] + 1, dtype=dtype, device=device)[..., 1::2]
    if layout == "misaligned":  # contiguous, but the data pointer is off 16-byte alignment
        return torch.randn(n + 1, dtype=dtype, device=device)[1:].view(shape)
    raise ValueError(layout)


def make_theta(shape, dtype=torch.float32, device="cpu", transposed=False):
    """Angles over several turns, so the kernel's sin/cos range reduction is exercised."""
    if transposed and len(shape) >= 2:
        return (4 * math.pi * torch.randn(shape[::-1], dtype=dtype, device=device)).permute(*reversed(range(len(shape))))
    return 4 * math.pi * torch.randn(shape, dtype=dtype, device=device)


# (z.shape, theta.shape). On CUDA the fast path needs contiguous z, theta equal to z's trailing
# dims after dropping its leading 1s, and an even column count; the others take the general path.
CASES = [
    ((7,), (7,)),
    ((7,), ()),  # scalar-shaped theta
    ((3, 5, 7), (3, 5, 7)),  # theta of z.shape
    ((3, 5, 7), (5, 7)),  # trailing dims
    ((3, 5, 7), (7,)),
    ((3, 5, 7), (5, 1)),  # size-1 dim inside
    ((3, 5, 7), (1, 5, 1)),  # leading size-1 dim
    ((3, 5, 7), (3, 1, 7)),
    ((3, 5, 7), (1, 1, 1)),
    ((2, 3, 4, 6), (4, 6)),  # even columns: CUDA fast path when contiguous
    ((8, 1000), (1, 1000)),  # fast path, theta with a leading 1
    ((9, 999), (999,)),  # odd columns: general path
]
LAYOUTS = ["contiguous", "transposed", "sliced", "misaligned"]


def case_id(c):
    return f"z{'x'.join(map(str, c[0]))}-t{'x'.join(map(str, c[1])) or 'scalar'}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_values(case, layout, device):
    z = make_z(case[0], layout, device=device)
    theta = make_theta(case[1], device=device, transposed=(layout == "transposed"))
    out = fft_tensor.phase_rotate(z, theta)
    assert out.shape == z.shape and out.dtype == torch.complex64 and out.device == z.device
    assert out.is_contiguous()
    torch.testing.assert_close(out.cpu().to(torch.complex128), reference(z, theta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_complex128(device):
    z = make_z((4, 6, 9), "sliced", dtype=torch.complex128, device=device)
    theta = make_theta((6, 1), dtype=torch.float64, device=device)
    out = fft_tensor.phase_rotate(z, theta)
    assert out.dtype == torch.complex128
    torch.testing.assert_close(out.cpu(), reference(z, theta), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_empty(device):
    z = torch.randn(0, 4, dtype=torch.complex64, device=device, requires_grad=True)
    theta = torch.randn(4, device=device, requires_grad=True)
    out = fft_tensor.phase_rotate(z, theta)
    assert out.shape == (0, 4)
    gz, gt = torch.autograd.grad(out, (z, theta), torch.randn_like(out))
    assert gz.shape == (0, 4) and gt.shape == (4,) and (gt == 0).all()


def grads_reference(z, theta, grad_out):
    """(grad_z, grad_theta) by complex autograd through the complex128 reference."""
    z64 = z.detach().cpu().to(torch.complex128).requires_grad_()
    t64 = theta.detach().cpu().double().requires_grad_()
    return torch.autograd.grad(z64 * torch.exp(1j * t64), (z64, t64), grad_out.cpu().to(torch.complex128))


def assert_grad_theta_close(gt, ref_gt, z, theta, grad_out, factor):
    """grad_theta entries are sums of n = z.numel() / theta.numel() terms Im(grad conj(z) e^{-i theta})
    that cancel: their float32 error scales with n * eps * sum |grad||z|, not with the (possibly much
    smaller) sum itself. factor absorbs the few roundings inside each term."""
    terms = (grad_out.detach().abs() * z.detach().abs()).double().cpu()
    scale = terms.sum_to_size(theta.shape) if theta.dim() else terms.sum()
    n = max(1, z.numel() // max(1, theta.numel()))
    bound = factor * n * torch.finfo(torch.float32).eps * scale + 1e-12
    err = (gt.detach().double().cpu() - ref_gt).abs()
    assert (err <= bound).all(), f"max error {err.max().item():.3g}, bound there {bound.flatten()[err.argmax()].item():.3g}"


def check_backward(z_shape, theta_shape, layout, device, grad_factor=8):
    z = make_z(z_shape, layout, device=device).requires_grad_()
    theta = make_theta(theta_shape, device=device).requires_grad_()
    grad_out = torch.randn(z_shape, dtype=torch.complex64, device=device)
    ref_gz, ref_gt = grads_reference(z, theta, grad_out)
    out = fft_tensor.phase_rotate(z, theta)
    gz, gt = torch.autograd.grad(out, (z, theta), grad_out)
    assert gz.shape == z.shape and gt.shape == theta.shape
    assert rel_err(gz, ref_gz) < 1e-6
    assert_grad_theta_close(gt, ref_gt, z, theta, grad_out, grad_factor)
    # Only z needs a gradient: the wrapper rotates by -theta instead of calling the backward op.
    (gz_only,) = torch.autograd.grad(fft_tensor.phase_rotate(z, theta.detach()), (z,), grad_out)
    assert rel_err(gz_only, ref_gz) < 1e-6
    (gt_only,) = torch.autograd.grad(fft_tensor.phase_rotate(z.detach(), theta), (theta,), grad_out)
    assert_grad_theta_close(gt_only, ref_gt, z, theta, grad_out, grad_factor)
    # The backward op itself.
    gz_op, gt_op = ops.phase_rotate_backward(grad_out, z.detach(), theta.detach())
    assert rel_err(gz_op, ref_gz) < 1e-6
    assert_grad_theta_close(gt_op, ref_gt, z, theta, grad_out, grad_factor)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "misaligned"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_backward(case, layout, device):
    check_backward(case[0], case[1], layout, device)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck(device):
    # gradcheck wants double; complex64 is covered by test_backward against complex autograd.
    for z_shape, t_shape in [((3, 4, 5), (4, 1)), ((3, 4, 5), ()), ((2, 3), (2, 3)), ((2, 6), (6,))]:
        z = torch.randn(z_shape, dtype=torch.complex128, device=device, requires_grad=True)
        theta = torch.randn(t_shape, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradcheck(fft_tensor.phase_rotate, (z, theta))


@pytest.mark.parametrize("device", DEVICES)
def test_gradgradcheck(device):
    # create_graph=True: the backward is built from differentiable pieces, so second (and higher)
    # derivatives are right, for z, theta and the incoming gradient alike.
    for z_shape, t_shape in [((3, 4, 5), (4, 1)), ((2, 3), (2, 3)), ((2, 6), (6,))]:
        z = torch.randn(z_shape, dtype=torch.complex128, device=device, requires_grad=True)
        theta = torch.randn(t_shape, dtype=torch.float64, device=device, requires_grad=True)
        assert torch.autograd.gradgradcheck(fft_tensor.phase_rotate, (z, theta))
        assert torch.autograd.gradgradcheck(lambda t: fft_tensor.phase_rotate(z.detach(), t), (theta,))
        # gradgradcheck checks the double backward against the first one, not the first one's values:
        # the create_graph=True first derivatives against plain complex autograd of z * exp(i theta)
        g = torch.randn(z_shape, dtype=torch.complex128, device=device)
        got = torch.autograd.grad(fft_tensor.phase_rotate(z, theta), (z, theta), g, create_graph=True)
        z_ref, t_ref = z.detach().requires_grad_(), theta.detach().requires_grad_()
        want = torch.autograd.grad(z_ref * torch.exp(1j * t_ref), (z_ref, t_ref), g)
        for a, b in zip(got, want):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def opcheck_samples(device):
    yield torch.randn(3, 4, dtype=torch.complex64, device=device), torch.randn(4, device=device)
    yield torch.randn(5, 3, dtype=torch.complex64, device=device).t(), torch.randn(3, 1, device=device)
    yield torch.randn(2, 3, 4, dtype=torch.complex128, device=device), torch.randn((), dtype=torch.float64, device=device)
    yield (torch.randn(2, 3, 4, dtype=torch.complex64, device=device, requires_grad=True),
           torch.randn(3, 4, device=device, requires_grad=True))
    yield (torch.randn(7, 9, dtype=torch.complex128, device=device, requires_grad=True),
           torch.randn(7, 1, dtype=torch.float64, device=device, requires_grad=True))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for z, theta in opcheck_samples(device):
        torch.library.opcheck(ops.phase_rotate.default, (z, theta))
        grad = torch.randn_like(z.detach())
        torch.library.opcheck(ops.phase_rotate_backward.default, (grad, z.detach(), theta.detach()))


@pytest.mark.parametrize("device", DEVICES)
def test_compile(device):
    def loss_fn(z, theta, weight):
        return (torch.view_as_real(fft_tensor.phase_rotate(z, theta)) * weight).sum()

    compiled = torch.compile(loss_fn, fullgraph=True)
    for z_shape, t_shape in [((4, 6), (6,)), ((3, 5, 7), (5, 1))]:
        z = torch.randn(z_shape, dtype=torch.complex64, device=device, requires_grad=True)
        theta = torch.randn(t_shape, device=device, requires_grad=True)
        weight = torch.randn(*z_shape, 2, device=device)
        loss = compiled(z, theta, weight)
        gz, gt = torch.autograd.grad(loss, (z, theta))
        ref_loss = loss_fn(z, theta, weight)
        ref_gz, ref_gt = torch.autograd.grad(ref_loss, (z, theta))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(gz, ref_gz, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gt, ref_gt, rtol=1e-5, atol=1e-4)



# The CPU row path (contiguous z, theta over z's trailing dims, >= 16 columns and >= 2 rows) splits
# the elements into parallel chunks of 2^15 that start mid-row, and the backward into column blocks
# of 2^15 / rows columns: sizes above those grains, with more threads than the machine has cores so
# the split happens here too. Odd column counts, so no chunk boundary falls on a row boundary.
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
@pytest.mark.parametrize("z_shape,t_shape", [((7, 10007), (10007,)), ((3, 5, 4099), (1, 5, 4099)),
                                             ((40000, 17), (17,))],
                         ids=["rows7", "theta-leading-1", "many-rows"])
def test_cpu_row_path_parallel_chunks(z_shape, t_shape, dtype):
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        z = make_z(z_shape, dtype=dtype)
        theta = make_theta(t_shape, dtype=real)
        out = fft_tensor.phase_rotate(z, theta)
        assert rel_err(out, reference(z, theta)) < tol
        assert (out.cpu().to(torch.complex128) - reference(z, theta)).abs().max().item() < 10 * tol
        grad_out = torch.randn(z_shape, dtype=dtype)
        ref_gz, ref_gt = grads_reference(z, theta, grad_out)
        gz, gt = ops.phase_rotate_backward(grad_out, z, theta)
        assert gz.shape == z.shape and gt.shape == theta.shape and gt.dtype == real
        assert rel_err(gz, ref_gz) < tol and rel_err(gt, ref_gt) < 10 * tol
        # A non-contiguous grad takes the general path: same values.
        grad_t = torch.randn(z_shape[::-1], dtype=dtype).permute(*reversed(range(len(z_shape))))
        grad_t.copy_(grad_out)
        gz2, gt2 = ops.phase_rotate_backward(grad_t, z, theta)
        assert rel_err(gz2, ref_gz) < tol and rel_err(gt2, ref_gt) < 10 * tol
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128], ids=["c64", "c128"])
def test_cpu_row_path_threshold_both_sides(dtype):
    # 15 columns (general path) and 16 columns (row path); one row (general) and two rows (row path).
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    tol = 1e-5 if dtype == torch.complex64 else 1e-12
    for z_shape, t_shape in [((5, 15), (15,)), ((5, 16), (16,)), ((1, 16), (16,)), ((2, 16), (16,)),
                             ((2, 1, 16), (1, 16))]:
        z = make_z(z_shape, dtype=dtype).requires_grad_()
        theta = make_theta(t_shape, dtype=real).requires_grad_()
        out = fft_tensor.phase_rotate(z, theta)
        assert rel_err(out, reference(z, theta)) < tol, z_shape
        grad_out = torch.randn(z_shape, dtype=dtype)
        ref_gz, ref_gt = grads_reference(z, theta, grad_out)
        gz, gt = torch.autograd.grad(out, (z, theta), grad_out)
        assert rel_err(gz, ref_gz) < tol and rel_err(gt, ref_gt) < tol, z_shape

# (z, theta, regex the message must match): each names the argument at fault.
BAD_INPUTS = [
    ("real z", lambda: (torch.randn(3, 4), torch.randn(4)), r"expected z to be complex64 or complex128, got (Float|torch.float32)"),
    ("complex theta", lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.randn(4, dtype=torch.complex64)),
     r"expected theta to be float32 or float64"),
    ("integer theta", lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.ones(4, dtype=torch.int64)),
     r"expected theta to be float32 or float64"),
    ("complex64 z with float64 theta",
     lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.randn(4, dtype=torch.float64)),
     r"expected theta's dtype to match z's precision"),
    ("complex128 z with float32 theta",
     lambda: (torch.randn(3, 4, dtype=torch.complex128), torch.randn(4)), r"expected theta's dtype to match"),
    ("theta not broadcastable", lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.randn(3)),
     r"expected theta broadcastable to z.shape"),
    ("theta of more dims", lambda: (torch.randn(3, 4, dtype=torch.complex64), torch.randn(2, 3, 4)),
     r"expected theta broadcastable to z.shape"),
    ("theta broadcast the wrong way", lambda: (torch.randn(3, 1, dtype=torch.complex64), torch.randn(3, 4)),
     r"expected theta broadcastable to z.shape"),
]


@pytest.mark.parametrize("name,make,match", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(name, make, match):
    z, theta = make()
    with pytest.raises(RuntimeError, match=match):
        fft_tensor.phase_rotate(z, theta)
    with pytest.raises(RuntimeError, match=match):
        ops.phase_rotate_backward(torch.zeros_like(z) if z.is_complex() else z, z, theta)
    # The fake kernel (what torch.compile traces) says the same.
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=match):
        fft_tensor.phase_rotate(mode.from_tensor(z), mode.from_tensor(theta))


def test_bad_grad_shape():
    z, theta = torch.randn(3, 4, dtype=torch.complex64), torch.randn(4)
    bad = torch.randn(3, 5, dtype=torch.complex64)
    match = r"phase_rotate_backward: expected grad of shape \(?\[?3, 4"
    with pytest.raises(RuntimeError, match=match):
        ops.phase_rotate_backward(bad, z, theta)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=match):
        ops.phase_rotate_backward(mode.from_tensor(bad), mode.from_tensor(z), mode.from_tensor(theta))


def test_bad_grad_dtype():
    z, theta = torch.randn(3, 4, dtype=torch.complex64), torch.randn(4)
    grad = torch.randn(3, 4, dtype=torch.complex128)
    with pytest.raises(RuntimeError, match=r"phase_rotate_backward: expected grad of dtype"):
        ops.phase_rotate_backward(grad, z, theta)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=r"phase_rotate_backward: expected grad of dtype"):
        ops.phase_rotate_backward(mode.from_tensor(grad), mode.from_tensor(z), mode.from_tensor(theta))


@requires_cuda
def test_devices_differ_cuda():
    z_cpu, theta_cpu = torch.randn(3, 4, dtype=torch.complex64), torch.randn(4)
    for z, theta in [(z_cpu.cuda(), theta_cpu), (z_cpu, theta_cpu.cuda())]:
        with pytest.raises(RuntimeError, match=r"expected z and theta on the same device"):
            fft_tensor.phase_rotate(z, theta)


# ---------------------------------------------------------------- CUDA: the two kernel paths, sizes

# Sizes that are not multiples of the thread block (256 threads x 2 columns) nor of the row unroll (4).
BIG_CASES = [
    ((1_000_003,), ()),  # general path, 1e6+3 elements
    ((1_000_003,), (1_000_003,)),  # odd columns: general path
    ((5, 200_002), (200_002,)),  # fast path: 100001 column pairs, 5 rows
    ((1027, 1002), (1002,)),  # fast path, many rows split across blockIdx.y
    ((3, 7, 514), (1, 7, 514)),  # fast path, theta over two trailing dims with a leading 1
    ((6, 2, 1000), (2, 1)),  # general path: theta not over whole trailing dims
]


@requires_cuda
@pytest.mark.parametrize("layout", ["contiguous", "sliced", "misaligned"])
@pytest.mark.parametrize("case", BIG_CASES, ids=case_id)
def test_cuda_large_values_and_backward(case, layout):
    z = make_z(case[0], layout, device="cuda")
    theta = make_theta(case[1], device="cuda")
    out = fft_tensor.phase_rotate(z, theta)
    torch.testing.assert_close(out.cpu().to(torch.complex128), reference(z, theta), rtol=1e-5, atol=1e-5)
    # grad_theta sums up to 1e6 float32 products: allow for that rounding.
    check_backward(case[0], case[1], layout, "cuda", grad_factor=32)


@requires_cuda
def test_cuda_matches_cpu():
    z = make_z((16, 4096), device="cuda")
    theta = make_theta((4096,), device="cuda")
    assert rel_err(fft_tensor.phase_rotate(z, theta), fft_tensor.phase_rotate(z.cpu(), theta.cpu())) < 1e-6


@requires_cuda
def test_cuda_on_current_stream():
    z = make_z((64, 4096), device="cuda")
    theta = make_theta((4096,), device="cuda")
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        out = fft_tensor.phase_rotate(z, theta)
        gz, gt = ops.phase_rotate_backward(out, z, theta)
    stream.synchronize()
    torch.testing.assert_close(out.cpu().to(torch.complex128), reference(z, theta), rtol=1e-5, atol=1e-5)
    # Rotating back gives z again; grad_theta of |out|^2-like pairing Im(out * conj(out)) is 0.
    torch.testing.assert_close(gz, z, rtol=1e-5, atol=1e-5)
    # exactly 0 in exact arithmetic; float32 rounding of sum_rows |z|^2 bounds what is left
    assert (gt.abs() <= 1e-5 * (z.abs() ** 2).sum(0) + 1e-6).all()
